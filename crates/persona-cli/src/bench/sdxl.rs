//! `persona bench unet | text-encoder | train-step --arch sdxl`: the same figures on SDXL's architecture —
//! two text encoders whose penultimate states are concatenated (2048 wide), the pooled, projected output of
//! the second and the micro-conditioning time ids entering the UNet's time embedding.

use anyhow::{bail, Result};
use candle_core::{Device, Tensor, Var};
use persona_diffusion::models::clip_text::{self, ClipTextModelWithProjection, ProjectionConfig};
use persona_diffusion::models::{AddedCond, ClipTextModel, UNet2DConditionModel};
use persona_diffusion::nn::grad::{mse_loss, place_rows};
use persona_diffusion::nn::{Condition, Weights};
use persona_diffusion::testing::grad_count;

use super::parts::{BenchMethod, ModelArgs, Which};
use super::{time, Arch, Timing};

/// SDXL's two encoders: CLIP ViT-L and OpenCLIP bigG with its projection.
struct Encoders {
    first: ClipTextModel,
    second: ClipTextModelWithProjection,
}

impl Encoders {
    fn load(w: &Weights, arch: Arch) -> Result<Self> {
        let first = ClipTextModel::load(&w.pp("te"), &arch.text_config()?)?;
        let text = arch.config_text("text_encoder_2");
        let (c2, p2): (clip_text::Config, ProjectionConfig) =
            (serde_json::from_str(text)?, serde_json::from_str(text)?);
        let second = ClipTextModelWithProjection::load(&w.pp("te2"), &c2, &p2)?;
        Ok(Self { first, second })
    }

    /// The condition `[B, 77, d₁ + d₂]` and the pooled `text_embeds` from input embeddings of both tables.
    fn encode(&self, e1: &Tensor, e2: &Tensor, ids: &Tensor) -> Result<(Tensor, Tensor)> {
        let (h1, _) = self.first.forward_embeds_hidden(e1, 1, false)?;
        let (h2, last) = self.second.model.forward_embeds_hidden(e2, 1, true)?;
        let last = last.ok_or_else(|| anyhow::anyhow!("no final state"))?;
        let pooled = self
            .second
            .project(&last, &self.second.pool_positions(ids)?)?;
        Ok((Tensor::cat(&[&h1, &h2], 2)?, pooled))
    }
}

/// Time ids of a square `size`-latent image, neither cropped nor resized (original = target).
fn time_ids(batch: usize, size: usize, dev: &Device) -> Result<Tensor> {
    let px = (size * 8) as f32;
    Ok(Tensor::new(&[px, px, 0., 0., px, px], dev)?
        .unsqueeze(0)?
        .repeat((batch, 1))?)
}

pub fn run(which: Which, a: &ModelArgs, w: &Weights, dev: &Device) -> Result<Timing> {
    let ids = Tensor::arange(0u32, 77, dev)?
        .unsqueeze(0)?
        .repeat((a.batch, 1))?;
    match which {
        // SDXL's VAE is SD's architecture with its own config.
        Which::VaeEncode | Which::VaeDecode => super::parts::vae(which, w, a, dev),
        Which::TextEncoder => {
            let te = Encoders::load(w, a.arch)?;
            let (e1, e2) = (te.first.embed(&ids)?, te.second.model.embed(&ids)?);
            time(dev, a.runs, || te.encode(&e1, &e2, &ids).map(drop))
        }
        Which::Unet => {
            let c = a.arch.unet_config()?;
            let unet = UNet2DConditionModel::load(w, &c)?;
            let x = Tensor::randn(0f32, 1., (a.batch, c.in_channels, a.size, a.size), dev)?;
            let cond = Condition::new(Tensor::randn(
                0f32,
                1.,
                (a.batch, 77, c.cross_attention_dim),
                dev,
            )?);
            let pooled_dim = Encoders::load(&Weights::recorder(), a.arch)?
                .second
                .projection_dim();
            let added = AddedCond {
                text_embeds: Tensor::randn(0f32, 1., (a.batch, pooled_dim), dev)?,
                time_ids: time_ids(a.batch, a.size, dev)?,
            };
            let t = Tensor::new(&[500f32], dev)?;
            time(dev, a.runs, || {
                Ok(unet
                    .forward_added(&x, &t, &cond, Some(&added), None)
                    .map(drop)?)
            })
        }
        Which::TrainStep => train_step(a, w, dev, &ids),
    }
}

/// One textual-inversion step on SDXL: two learned tokens with a row in each token table, both encoders, the
/// UNet with the pooled embedding and time ids, MSE, backward to both rows.
fn train_step(a: &ModelArgs, w: &Weights, dev: &Device, ids: &Tensor) -> Result<Timing> {
    if a.method != BenchMethod::Tokens {
        bail!("--arch sdxl times --method tokens only (the added ID-EA modules are timed by the SD 2.x bench)");
    }
    let te = Encoders::load(w, a.arch)?;
    let uc = a.arch.unet_config()?;
    let unet = UNet2DConditionModel::load(&w.pp("unet"), &uc)?;
    let (d1, d2) = (
        te.first.config().hidden_size,
        te.second.model.config().hidden_size,
    );
    let rows1 = Var::from_tensor(&Tensor::randn(0f32, 1., (2, d1), dev)?)?;
    let rows2 = Var::from_tensor(&Tensor::randn(0f32, 1., (2, d2), dev)?)?;
    let (base1, base2) = (te.first.embed(ids)?, te.second.model.embed(ids)?);
    let positions: Vec<(usize, usize, usize)> =
        (0..a.batch).flat_map(|b| [(b, 6, 0), (b, 7, 1)]).collect();
    let x = Tensor::randn(0f32, 1., (a.batch, uc.in_channels, a.size, a.size), dev)?;
    let target = Tensor::randn(0f32, 1., (a.batch, uc.out_channels, a.size, a.size), dev)?;
    let t = Tensor::new(&[500f32], dev)?;
    let time_ids = time_ids(a.batch, a.size, dev)?;
    persona_diffusion::device::reset_peak_memory(dev)?;
    time(dev, a.runs, || {
        let e1 = place_rows(&base1, rows1.as_tensor(), &positions)?;
        let e2 = place_rows(&base2, rows2.as_tensor(), &positions)?;
        let (cond, pooled) = te.encode(&e1, &e2, ids)?;
        let added = AddedCond {
            text_embeds: pooled,
            time_ids: time_ids.clone(),
        };
        let pred = unet.forward_added(&x, &t, &Condition::new(cond), Some(&added), None)?;
        let grads = mse_loss(&pred, &target)?.backward()?;
        let (g1, g2, n) = (
            grads.get(rows1.as_tensor()).is_some(),
            grads.get(rows2.as_tensor()).is_some(),
            grad_count(&grads),
        );
        if !(g1 && g2 && n == 2) {
            bail!("the gradient must reach both learned tables and nothing else (table 1: {g1}, table 2: {g2}, {n} gradients)");
        }
        Ok(())
    })
}
