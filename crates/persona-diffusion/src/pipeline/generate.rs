//! Text-to-image sampling, step for step as diffusers' `StableDiffusionPipeline.__call__`: encode prompt and
//! negative prompt, scale the initial noise by `init_noise_sigma`, run the scheduler with classifier-free
//! guidance `ε = ε_u + s·(ε_c − ε_u)`, decode `z / scaling_factor`.

use crate::nn::all_finite;
use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

use super::{LearnedTokens, MicroConditioning, StableDiffusion};
use crate::models::clip_text::Output;
use crate::models::AddedCond;
use crate::nn::{AttentionControl, Condition};
use crate::schedulers::{self, SchedulerKind};
use crate::{Error, Result};

/// A prompt's condition and (SDXL) pooled embeddings.
type Encoded = (Condition, Option<Tensor>);

#[derive(Clone, Debug)]
pub struct GenerateParams {
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: usize,
    pub guidance: f64,
    /// `None`: the model's own scheduler (PNDM configs sample with DDIM).
    pub scheduler: Option<SchedulerKind>,
    pub height: usize,
    pub width: usize,
    pub seed: u64,
    pub num_images: usize,
    /// Images denoised together (each costs two UNet rows with guidance).
    pub batch_size: usize,
    /// Initial latents `[num_images, C, h, w]` in place of drawn noise (scaled by `init_noise_sigma` like noise).
    pub latents: Option<Tensor>,
    pub text_output: Output,
    /// Learned pseudo-tokens the prompts may use (identities); per-stage key/value tokens (SeFi-IDE) are
    /// encoded for each step's stage.
    pub tokens: Vec<LearnedTokens>,
}

/// Reported after every denoising step.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub step: usize,
    pub steps: usize,
    pub batch: usize,
    pub batches: usize,
}

/// Standard normal values from a seeded generator: image `i` of a run draws from seed `seed + i`, so an image
/// does not depend on the batch size and can be regenerated alone.
pub fn seeded_normal(
    rng: &mut rand::rngs::StdRng,
    shape: &[usize],
    device: &Device,
) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| StandardNormal.sample(rng)).collect();
    Ok(Tensor::from_vec(v, shape, device)?)
}

impl StableDiffusion {
    /// The scheduler a run uses.
    pub fn scheduler_kind(&self, choice: Option<SchedulerKind>) -> SchedulerKind {
        choice
            .unwrap_or_else(|| SchedulerKind::for_model(&self.scheduler_config))
            .sampler()
    }

    /// Generates images; returns them as `[N, 3, H, W]` in [0, 1].
    pub fn generate(
        &self,
        p: &GenerateParams,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Tensor> {
        self.generate_with(p, None, progress)
    }

    /// [`Self::generate`] with a cross-attention plug-in (identities, heat maps).
    pub fn generate_with(
        &self,
        p: &GenerateParams,
        control: Option<&dyn AttentionControl>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Tensor> {
        self.generate_with_micro(p, &MicroConditioning::default(), control, progress)
    }

    /// [`Self::generate_with`] with SDXL's micro-conditioning (original size, crop, target size); anything
    /// but the defaults is refused for SD 1.x/2.x models.
    pub fn generate_with_micro(
        &self,
        p: &GenerateParams,
        micro: &MicroConditioning,
        control: Option<&dyn AttentionControl>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Tensor> {
        let mut images = Vec::new();
        self.generate_each(p, micro, control, progress, &mut |_, batch| {
            images.push(batch);
            Ok(())
        })?;
        Ok(Tensor::cat(&images, 0)?)
    }

    /// Warns (through `tracing`) about the words of the prompts that do not fit in the text encoder's
    /// positions and are cut, as diffusers does.
    fn warn_cut_words(&self, p: &GenerateParams) -> Result<()> {
        let mut tokenizer = self.tokenizer.clone();
        let names: Vec<String> = p.tokens.iter().flat_map(|l| l.names.clone()).collect();
        if !names.is_empty() && tokenizer.add_tokens(&names).is_err() {
            return Ok(());
        }
        for (which, text) in [
            ("prompt", &p.prompt),
            ("negative prompt", &p.negative_prompt),
        ] {
            if let Some(cut) = tokenizer.cut_words(text)? {
                tracing::warn!(
                    "the {which} is longer than the text encoder's {} tokens; cut: \"{cut}\"",
                    tokenizer.max_length()
                );
            }
        }
        Ok(())
    }

    /// [`Self::generate_with_micro`] handing each batch to `on_batch` (the index of its first image, its
    /// images `[n, 3, H, W]` in [0, 1]) as soon as it is decoded, so that a caller can write it at once. Final
    /// latents with NaN or infinite values are an error, not a black image.
    pub fn generate_each(
        &self,
        p: &GenerateParams,
        micro: &MicroConditioning,
        control: Option<&dyn AttentionControl>,
        progress: &mut dyn FnMut(Progress),
        on_batch: &mut dyn FnMut(usize, Tensor) -> Result<()>,
    ) -> Result<()> {
        if !self.is_sdxl() && !micro.is_default() {
            return Err(Error::Msg(
                "original size, crop and target size are SDXL micro-conditioning; this model is not SDXL"
                    .into(),
            ));
        }
        if p.seed
            .checked_add(p.num_images.saturating_sub(1) as u64)
            .is_none()
        {
            return Err(Error::Msg(format!(
                "seed {} with {} images runs past the largest seed (image i uses seed + i); choose a smaller seed",
                p.seed, p.num_images
            )));
        }
        if let Output::Skip(n) = p.text_output {
            let layers = self.text_encoder.config().num_hidden_layers;
            if n >= layers {
                return Err(Error::Msg(format!(
                    "clip skip {n}: the text encoder has {layers} layers, so at most {} can be skipped",
                    layers - 1
                )));
            }
        }
        let f = self.vae_scale();
        if !p.height.is_multiple_of(f)
            || !p.width.is_multiple_of(f)
            || p.height == 0
            || p.width == 0
        {
            return Err(Error::Msg(format!(
                "height and width must be positive multiples of {f}, got {}×{}",
                p.height, p.width
            )));
        }
        let shape = [self.unet.config().in_channels, p.height / f, p.width / f];
        if let Some(l) = &p.latents {
            let want = [p.num_images, shape[0], shape[1], shape[2]];
            if l.dims() != want {
                return Err(Error::Msg(format!(
                    "latents have shape {:?}, expected {want:?}",
                    l.dims()
                )));
            }
        }
        // (negative, positive) prompt conditions by the stages they were encoded for: one entry without
        // staged tokens, at most S with them.
        let mut encoded: HashMap<Vec<usize>, (Encoded, Encoded)> = HashMap::new();
        let batch = p.batch_size.max(1);
        let batches = p.num_images.div_ceil(batch);
        if p.latents
            .as_ref()
            .is_some_and(|l| !all_finite(l).unwrap_or(false))
        {
            return Err(Error::Msg(
                "the initial latents hold NaN or infinite values".into(),
            ));
        }
        self.warn_cut_words(p)?;
        for b in 0..batches {
            let first = b * batch;
            let n = batch.min(p.num_images - first);
            let mut rngs: Vec<_> = (first..first + n)
                .map(|i| rand::rngs::StdRng::seed_from_u64(p.seed.wrapping_add(i as u64)))
                .collect();
            let latents = match &p.latents {
                Some(l) => l.narrow(0, first, n)?,
                None => {
                    let rows = rngs
                        .iter_mut()
                        .map(|r| seeded_normal(r, &shape, &self.device))
                        .collect::<Result<Vec<_>>>()?;
                    Tensor::stack(&rows, 0)?
                }
            };
            let mut report = |step, steps| {
                progress(Progress {
                    step,
                    steps,
                    batch: b,
                    batches,
                })
            };
            let z = self.denoise(
                latents,
                &mut encoded,
                p,
                micro,
                control,
                &mut rngs,
                &mut report,
            )?;
            if !all_finite(&z)? {
                return Err(Error::Msg(format!(
                    "denoising produced NaN or infinite latents for image(s) {first}..{} (the model weights, an \
                     identity or the latents overflow{}); nothing was written for them",
                    first + n - 1,
                    if self.dtype == candle_core::DType::F16 { " in f16: try --dtype bf16 or f32" } else { "" }
                )));
            }
            on_batch(first, self.decode(&z)?)?;
        }
        Ok(())
    }

    /// The denoising loop for one batch of initial latents (unscaled).
    #[allow(clippy::too_many_arguments)]
    fn denoise(
        &self,
        latents: Tensor,
        encoded: &mut HashMap<Vec<usize>, (Encoded, Encoded)>,
        p: &GenerateParams,
        micro: &MicroConditioning,
        control: Option<&dyn AttentionControl>,
        rngs: &mut [rand::rngs::StdRng],
        report: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor> {
        let n = latents.dim(0)?;
        let mut sched = schedulers::build(
            self.scheduler_kind(p.scheduler),
            &self.scheduler_config,
            p.steps,
        )?;
        let guided = p.guidance > 1.0;
        let batch = |u: &Tensor, c: &Tensor| -> Result<Tensor> {
            Ok(if guided {
                Tensor::cat(&[u.repeat((n, 1, 1))?, c.repeat((n, 1, 1))?], 0)?
            } else {
                c.repeat((n, 1, 1))?
            })
        };
        let batch2 = |u: &Tensor, c: &Tensor| -> Result<Tensor> {
            Ok(if guided {
                Tensor::cat(&[u.repeat((n, 1))?, c.repeat((n, 1))?], 0)?
            } else {
                c.repeat((n, 1))?
            })
        };
        let mut batched: HashMap<Vec<usize>, (Condition, Option<AddedCond>)> = HashMap::new();
        let mut x = (latents * sched.init_noise_sigma())?;
        let timesteps = sched.timesteps().to_vec();
        for (i, &t) in timesteps.iter().enumerate() {
            let input = if guided {
                Tensor::cat(&[&x, &x], 0)?
            } else {
                x.clone()
            };
            let input = sched.scale_model_input(&input, i)?;
            let t_tensor = Tensor::new(&[t as f32], &self.device)?;
            let stages = self.stages_at(&p.tokens, t);
            if !batched.contains_key(&stages) {
                if !encoded.contains_key(&stages) {
                    let enc = |prompt: &str, negative: bool| {
                        self.encode_at(&[prompt], &p.tokens, t, p.text_output, negative)
                    };
                    let pair = (enc(&p.negative_prompt, true)?, enc(&p.prompt, false)?);
                    encoded.insert(stages.clone(), pair);
                }
                let ((u, u_pooled), (c, c_pooled)) = &encoded[&stages];
                let key = batch(&u.key, &c.key)?;
                let value = match (&u.value, &c.value) {
                    (None, None) => None,
                    _ => Some(batch(u.value(), c.value())?),
                };
                let pooled = match (u_pooled, c_pooled) {
                    (Some(u), Some(c)) => Some(batch2(u, c)?),
                    _ => None,
                };
                let added = self.added_cond(pooled.as_ref(), micro, p.height, p.width)?;
                batched.insert(stages.clone(), (Condition { key, value }, added));
            }
            let (cond, added) = &batched[&stages];
            let eps = self
                .unet
                .forward_added(&input, &t_tensor, cond, added.as_ref(), control)?;
            let eps = if guided {
                let (u, c) = (eps.narrow(0, 0, n)?, eps.narrow(0, n, n)?);
                (&u + ((c - &u)? * p.guidance)?)?
            } else {
                eps
            };
            let noise = if sched.needs_noise() {
                let dims = x.dims()[1..].to_vec();
                let rows = rngs
                    .iter_mut()
                    .map(|r| seeded_normal(r, &dims, &self.device))
                    .collect::<Result<Vec<_>>>()?;
                Some(Tensor::stack(&rows, 0)?)
            } else {
                None
            };
            x = sched.step(&eps, i, &x, noise.as_ref())?;
            report(i + 1, timesteps.len());
        }
        Ok(x)
    }

    /// Latents → images `[N, 3, H, W]` in [0, 1] (diffusers' `postprocess`: `(x/2 + 0.5).clamp(0, 1)`).
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let c = self.vae.config();
        let mut z = (z / c.scaling_factor)?;
        if let Some(shift) = c.shift_factor {
            z = (z + shift)?;
        }
        let x = self.vae.decode(&z)?;
        Ok(((x / 2.0)? + 0.5)?
            .clamp(0f32, 1f32)?
            .to_dtype(DType::F32)?)
    }
}
