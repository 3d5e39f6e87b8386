//! `persona bench unet | text-encoder | vae-encode | vae-decode | train-step`: seconds per forward (or forward +
//! backward) of model parts.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use clap::{Args, ValueEnum};
use persona_diffusion::device::{peak_memory_gb, peak_rss_gb, reset_peak_memory};
use persona_diffusion::models::clip_text::Output;
use persona_diffusion::models::{AutoencoderKL, ClipTextModel, UNet2DConditionModel};
use persona_diffusion::nn::grad::{mse_loss, place_rows};
use persona_diffusion::nn::{AttentionControl, Condition, Weights};
use persona_identity::adapter::Adapter;
use persona_identity::kv::{self, KvDeltas};
use persona_identity::layers::Source;
use persona_train::methods::idea::enhancer::Enhancer;

use super::{emit, time, Arch, Timing};
use crate::device_flags::DeviceArgs;

#[derive(Clone, Copy, Debug)]
pub enum Which {
    Unet,
    TextEncoder,
    VaeEncode,
    VaeDecode,
    TrainStep,
}

#[derive(Args, Debug)]
pub struct ModelArgs {
    /// Which real architecture to build (random weights).
    #[arg(long, value_enum, default_value = "sd21-base")]
    pub arch: Arch,
    /// Latent size (64 = 512² images; the VAE parts encode or decode images of 8× this side).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    #[arg(long, default_value_t = 1, value_parser = crate::values::positive)]
    pub batch: usize,
    /// Timed runs after one warm-up; the best, mean and median are reported.
    #[arg(long, default_value_t = 3, value_parser = crate::values::positive)]
    pub runs: usize,
    /// train-step: what is learned (tokens: TI / Cross Init; idea: + ID-Enhancer and ID-Adapter, gate open so
    /// that every module gets its gradient; idea-kv: + the cross-attention key/value deltas).
    #[arg(long, value_enum, default_value = "tokens")]
    pub method: BenchMethod,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchMethod {
    Tokens,
    Idea,
    IdeaKv,
}

pub fn run(which: Which, a: &ModelArgs) -> Result<()> {
    let place = a.device.resolve()?;
    place.announce();
    let (dev, dtype) = (&place.device, place.dtype);
    let w = Weights::random_as(0, dev, dtype);
    let timing = match which {
        Which::VaeEncode | Which::VaeDecode => vae(which, &w, a, dev)?,
        _ if a.arch.is_sdxl() => super::sdxl::run(which, a, &w, dev)?,
        Which::Unet => {
            let c = a.arch.unet_config()?;
            let model = UNet2DConditionModel::load(&w, &c)?;
            let x = Tensor::randn(0f32, 1., (a.batch, c.in_channels, a.size, a.size), dev)?;
            let cond = Condition::new(Tensor::randn(
                0f32,
                1.,
                (a.batch, 77, c.cross_attention_dim),
                dev,
            )?);
            let t = Tensor::new(&[500f32], dev)?;
            time(dev, a.runs, || {
                model.forward(&x, &t, &cond, None)?;
                Ok(())
            })?
        }
        Which::TrainStep => train_step(&w, a, dev)?,
        Which::TextEncoder => {
            let model = ClipTextModel::load(&w, &a.arch.text_config()?)?;
            let ids = Tensor::arange(0u32, 77, dev)?
                .unsqueeze(0)?
                .repeat((a.batch, 1))?;
            time(dev, a.runs, || {
                model.forward(&ids, Output::Last)?;
                Ok(())
            })?
        }
    };
    if !timing.best.is_finite() {
        bail!("no timing");
    }
    let mut fields = serde_json::json!({
        "part": format!("{which:?}"), "method": format!("{:?}", a.method), "arch": format!("{:?}", a.arch),
        "size": a.size, "batch": a.batch, "peak_rss_gb": round2(peak_rss_gb()),
    });
    if dev.is_cuda() {
        fields["peak_gpu_gb"] = round2(peak_memory_gb(dev)).into();
    }
    emit(fields, Some(timing), dev, dtype);
    Ok(())
}

/// The VAE's encoder (the posterior, as training encodes its photos) on `[B, 3, 8S, 8S]` images, or its
/// decoder on `[B, 4, S, S]` latents (what ends every generation).
pub(super) fn vae(which: Which, w: &Weights, a: &ModelArgs, dev: &Device) -> Result<Timing> {
    let c = a.arch.vae_config()?;
    let model = AutoencoderKL::load(w, &c)?;
    let side = a.size * c.downscale_factor();
    if matches!(which, Which::VaeEncode) {
        let x = Tensor::randn(0f32, 1., (a.batch, c.in_channels, side, side), dev)?;
        time(dev, a.runs, || {
            model.encode(&x)?;
            Ok(())
        })
    } else {
        let z = Tensor::randn(0f32, 1., (a.batch, c.latent_channels, a.size, a.size), dev)?;
        time(dev, a.runs, || {
            model.decode(&z)?;
            Ok(())
        })
    }
}

fn round2(x: Option<f64>) -> Option<f64> {
    x.map(|x| (x * 100.0).round() / 100.0)
}

fn train_step(w: &Weights, a: &ModelArgs, dev: &Device) -> Result<Timing> {
    let (tc, uc) = (a.arch.text_config()?, a.arch.unet_config()?);
    let te = ClipTextModel::load(&w.pp("te"), &tc)?;
    let model = UNet2DConditionModel::load(&w.pp("unet"), &uc)?;
    let rows = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1., (2, tc.hidden_size), dev)?)?;
    let ids = Tensor::arange(0u32, 77, dev)?
        .unsqueeze(0)?
        .repeat((a.batch, 1))?;
    let base = te.embed(&ids)?;
    let positions: Vec<(usize, usize, usize)> =
        (0..a.batch).flat_map(|b| [(b, 6, 0), (b, 7, 1)]).collect();
    let x = Tensor::randn(0f32, 1., (a.batch, uc.in_channels, a.size, a.size), dev)?;
    let target = Tensor::randn(0f32, 1., (a.batch, uc.out_channels, a.size, a.size), dev)?;
    let t = Tensor::new(&[500f32], dev)?;
    let idea = match a.method {
        BenchMethod::Tokens => None,
        BenchMethod::Idea | BenchMethod::IdeaKv => Some(IdeaModules::new(
            &model,
            tc.hidden_size,
            matches!(a.method, BenchMethod::IdeaKv),
            dev,
        )?),
    };
    // The peak counts from here: weights, inputs and learned modules are held, as in diffusers' figure.
    reset_peak_memory(dev)?;
    time(dev, a.runs, || {
        let embeds = place_rows(&base, rows.as_tensor(), &positions)?;
        let y = te.forward_embeds(&embeds, Output::Last)?;
        let cond = Condition::new(match &idea {
            Some(m) => m
                .adapter
                .forward(&y, &m.enhancer.forward(&m.face, &m.anchor)?)?,
            None => y,
        });
        let control = idea
            .as_ref()
            .and_then(|m| m.kv.as_ref())
            .map(|k| k as &dyn AttentionControl);
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
    fn new(unet: &UNet2DConditionModel, d: usize, with_kv: bool, dev: &Device) -> Result<Self> {
        let mut vars = Vec::new();
        let mut src = Source::Init {
            seed: 0,
            dtype: DType::F32,
            device: dev,
            vars: &mut vars,
        };
        let enhancer = Enhancer::new(&mut src, 512, d, 8)?;
        let adapter = Adapter::new(&mut src, d, 8, 0.4)?;
        let kv = if with_kv {
            Some(KvDeltas::new(
                &mut src,
                &kv::unet_cross_attention_layers(unet, dev)?,
                kv::RANK,
            )?)
        } else {
            None
        };
        for (name, var) in &vars {
            if name == "adapter.gamma" {
                var.set(&Tensor::new(&[0.5f32], dev)?)?;
            }
        }
        let face = Tensor::randn(0f32, 1., 512, dev)?;
        let anchor = Tensor::randn(0f32, 1., (2, d), dev)?;
        Ok(Self {
            enhancer,
            adapter,
            kv,
            face,
            anchor,
        })
    }
}
