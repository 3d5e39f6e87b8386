//! `persona bench`: seconds per forward of model parts on random weights with the real architectures, to
//! compare with the PyTorch peer scripts in `tools/bench/` (see docs/performance.md).

use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use clap::{Args, ValueEnum};
use persona_diffusion::models::clip_text::{self, Output};
use persona_diffusion::models::{unet, ClipTextModel, UNet2DConditionModel};
use persona_diffusion::nn::grad::{mse_loss, place_rows};
use persona_diffusion::nn::{AttentionControl, Condition, Weights};
use persona_train::methods::idea::adapter::Adapter;
use persona_train::methods::idea::enhancer::Enhancer;
use persona_train::methods::idea::kv::{self, KvDeltas};
use persona_train::methods::idea::modules::Source;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Part {
    /// UNet forward on [B, 4, S, S] latents with a [B, 77, d] condition.
    Unet,
    /// Text-encoder forward on [B, 77] token ids.
    TextEncoder,
    /// One textual-inversion training step: text encoder with 2 learned rows + UNet, forward and backward
    /// to the rows (timed without the optimizer update, which is negligible). Reports peak memory too.
    TrainStep,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Arch {
    Sd21Base,
    Sd15,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    part: Part,
    /// Which real architecture to build (random weights).
    #[arg(long, value_enum, default_value = "sd21-base")]
    arch: Arch,
    /// Latent size (64 = 512² images).
    #[arg(long, default_value_t = 64)]
    size: usize,
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Timed runs after one warm-up; the best and the mean are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// train-step: what is learned (tokens: TI / Cross Init; idea: + ID-Enhancer and ID-Adapter, gate open so
    /// that every module gets its gradient; idea-kv: + the cross-attention key/value deltas).
    #[arg(long, value_enum, default_value = "tokens")]
    method: BenchMethod,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum BenchMethod {
    Tokens,
    Idea,
    IdeaKv,
}

fn config_text(arch: Arch, component: &str) -> &'static str {
    match (arch, component) {
        (Arch::Sd21Base, "unet") => include_str!("../../../fixtures/manifests/sd21-base/unet/config.json"),
        (Arch::Sd21Base, _) => include_str!("../../../fixtures/manifests/sd21-base/text_encoder/config.json"),
        (Arch::Sd15, "unet") => include_str!("../../../fixtures/manifests/sd15/unet/config.json"),
        (Arch::Sd15, _) => include_str!("../../../fixtures/manifests/sd15/text_encoder/config.json"),
    }
}

fn time(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<(f64, f64)> {
    f()?;
    let mut times = Vec::new();
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    let best = times.iter().cloned().fold(f64::INFINITY, f64::min);
    Ok((best, times.iter().sum::<f64>() / times.len() as f64))
}

pub fn run(a: BenchArgs) -> Result<()> {
    let dev = Device::Cpu;
    let w = Weights::random(0, &dev);
    let (best, mean) = match a.part {
        Part::Unet => {
            let c: unet::Config = serde_json::from_str(config_text(a.arch, "unet"))?;
            let model = UNet2DConditionModel::load(&w, &c)?;
            let x = Tensor::randn(0f32, 1., (a.batch, c.in_channels, a.size, a.size), &dev)?;
            let cond = Condition::new(Tensor::randn(0f32, 1., (a.batch, 77, c.cross_attention_dim), &dev)?);
            let t = Tensor::new(&[500f32], &dev)?;
            time(a.runs, || {
                model.forward(&x, &t, &cond, None)?;
                Ok(())
            })?
        }
        Part::TrainStep => train_step(&w, &a)?,
        Part::TextEncoder => {
            let c: clip_text::Config = serde_json::from_str(config_text(a.arch, "text_encoder"))?;
            let model = ClipTextModel::load(&w, &c)?;
            let ids = Tensor::arange(0u32, 77, &dev)?.unsqueeze(0)?.repeat((a.batch, 1))?;
            time(a.runs, || {
                model.forward(&ids, Output::Last)?;
                Ok(())
            })?
        }
    };
    let peak = persona_train::recipe::peak_rss_gb().unwrap_or(0.0);
    if !best.is_finite() {
        bail!("no timing");
    }
    println!(
        "{{\"part\": \"{:?}\", \"method\": \"{:?}\", \"arch\": \"{:?}\", \"size\": {}, \"batch\": {}, \"threads\": {}, \"best_s\": {best:.3}, \"mean_s\": {mean:.3}, \"peak_rss_gb\": {peak:.2}}}",
        a.part, a.method, a.arch, a.size, a.batch, candle_core::utils::get_num_threads()
    );
    Ok(())
}

fn train_step(w: &Weights, a: &BenchArgs) -> Result<(f64, f64)> {
    let dev = Device::Cpu;
    let tc: clip_text::Config = serde_json::from_str(config_text(a.arch, "text_encoder"))?;
    let uc: unet::Config = serde_json::from_str(config_text(a.arch, "unet"))?;
    let te = ClipTextModel::load(&w.pp("te"), &tc)?;
    let model = UNet2DConditionModel::load(&w.pp("unet"), &uc)?;
    let rows = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1., (2, tc.hidden_size), &dev)?)?;
    let ids = Tensor::arange(0u32, 77, &dev)?.unsqueeze(0)?.repeat((a.batch, 1))?;
    let base = te.embed(&ids)?;
    let positions: Vec<(usize, usize, usize)> = (0..a.batch).flat_map(|b| [(b, 6, 0), (b, 7, 1)]).collect();
    let x = Tensor::randn(0f32, 1., (a.batch, uc.in_channels, a.size, a.size), &dev)?;
    let target = Tensor::randn(0f32, 1., (a.batch, uc.out_channels, a.size, a.size), &dev)?;
    let t = Tensor::new(&[500f32], &dev)?;
    let idea = match a.method {
        BenchMethod::Tokens => None,
        BenchMethod::Idea | BenchMethod::IdeaKv => Some(IdeaModules::new(&model, tc.hidden_size, matches!(a.method, BenchMethod::IdeaKv))?),
    };
    time(a.runs, || {
        let embeds = place_rows(&base, rows.as_tensor(), &positions)?;
        let y = te.forward_embeds(&embeds, Output::Last)?;
        let cond = Condition::new(match &idea {
            Some(m) => m.adapter.forward(&y, &m.enhancer.forward(&m.face, &m.anchor)?)?,
            None => y,
        });
        let control = idea.as_ref().and_then(|m| m.kv.as_ref()).map(|k| k as &dyn AttentionControl);
        let pred = model.forward(&x, &t, &cond, control)?;
        let grads = mse_loss(&pred, &target)?.backward()?;
        if grads.get(rows.as_tensor()).is_none() {
            bail!("no gradient reached the learned rows");
        }
        Ok(())
    })
}

/// ID-EA's trainable modules on random values (8 heads, a 512-wide face embedding, 2 tokens), γ = 0.5.
struct IdeaModules {
    enhancer: Enhancer,
    adapter: Adapter,
    kv: Option<KvDeltas>,
    face: Tensor,
    anchor: Tensor,
}

impl IdeaModules {
    fn new(unet: &UNet2DConditionModel, d: usize, with_kv: bool) -> Result<Self> {
        let dev = Device::Cpu;
        let mut vars = Vec::new();
        let mut src = Source::Init { seed: 0, dtype: candle_core::DType::F32, device: &dev, vars: &mut vars };
        let enhancer = Enhancer::new(&mut src, 512, d, 8)?;
        let adapter = Adapter::new(&mut src, d, 8, 0.4)?;
        let kv = if with_kv { Some(KvDeltas::new(&mut src, &kv::unet_cross_attention_layers(unet, &dev)?, kv::RANK)?) } else { None };
        for (name, var) in &vars {
            if name == "adapter.gamma" {
                var.set(&Tensor::new(&[0.5f32], &dev)?)?;
            }
        }
        let face = Tensor::randn(0f32, 1., 512, &dev)?;
        let anchor = Tensor::randn(0f32, 1., (2, d), &dev)?;
        Ok(Self { enhancer, adapter, kv, face, anchor })
    }
}
