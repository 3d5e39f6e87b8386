//! The training loop every method shares: sample photos, captions, posterior latents, noise and timesteps;
//! noise the latents by the DDPM schedule; predict with the frozen UNet under the method's condition;
//! minimise the mean squared error (+ the method's regulariser) with AdamW on the learned tensors only.
//!
//! Every random draw of step `s` comes from a generator seeded by `(seed, s)`, so a run resumed from a
//! checkpoint draws exactly what the uninterrupted run drew.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::PathBuf;

use candle_core::{backprop::GradStore, Tensor};
use persona_diffusion::models::vae::Posterior;
use persona_diffusion::models::AddedCond;
use persona_diffusion::nn::grad::mse_loss;
use persona_diffusion::pipeline::{seeded_normal, StableDiffusion};
use persona_diffusion::schedulers::NoiseSchedule;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::captions::Captions;
use crate::checkpoint;
use crate::data::Sample;
use crate::methods::Method;
use crate::optim::{lr_at, AdamW, AdamWConfig, Schedule};
use crate::{Error, Result};

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    pub steps: usize,
    pub batch_size: usize,
    pub grad_accum: usize,
    /// Base learning rate; with `scale_lr` multiplied by batch size × accumulation.
    pub lr: f64,
    pub scale_lr: bool,
    pub schedule: Schedule,
    pub warmup: usize,
    pub adam: AdamWConfig,
    pub seed: u64,
    /// Checkpoint every N steps (0: only at the end).
    pub save_every: usize,
    pub resolution: u32,
    /// diffusers' `--repeats`: an epoch is every photo this many times, in a seeded shuffled order, so each
    /// photo is seen equally often (default 100, diffusers').
    pub repeats: usize,
    /// The identity file; the checkpoint and loss log are written next to it.
    pub out: PathBuf,
}

/// Keeps the photo-order generator apart from the per-step draws ("orderseed" in ASCII, truncated).
const ORDER_SALT: u64 = 0x6F72_6465_7273_6565;

/// How the samples of a step are drawn: batch size, micro-batches per step, and epoch repeats.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub batch: usize,
    pub accum: usize,
    pub repeats: usize,
}

impl TrainConfig {
    pub fn plan(&self) -> Plan {
        Plan {
            batch: self.batch_size,
            accum: self.grad_accum.max(1),
            repeats: self.repeats.max(1),
        }
    }

    pub fn effective_lr(&self) -> f64 {
        if self.scale_lr {
            self.lr * (self.batch_size * self.grad_accum) as f64
        } else {
            self.lr
        }
    }
}

/// What one step trains on.
#[derive(Clone, Debug)]
pub struct StepInputs {
    /// `[B, 4, h, w]`, already × the VAE scaling factor.
    pub latents: Tensor,
    pub noise: Tensor,
    pub timesteps: Vec<usize>,
    pub captions: Vec<String>,
    /// SDXL's micro-conditioning per sample, `original_size + crop_top_left + target_size` (each (h, w)); empty
    /// means the defaults for the latents' size (no resize, no crop) and is ignored by SD 1.x/2.x models.
    pub time_ids: Vec<[f32; 6]>,
}

#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct LossParts {
    pub total: f64,
    pub diffusion: f64,
    pub reg: f64,
}

/// Reported after each optimizer step.
#[derive(Clone, Copy, Debug)]
pub struct StepReport {
    pub step: usize,
    pub steps: usize,
    pub loss: LossParts,
    pub lr: f64,
}

pub struct Trainer<'a> {
    pub sd: &'a StableDiffusion,
    pub method: Box<dyn Method + 'a>,
    samples: Vec<Sample>,
    /// Posterior of each (photo, flip), computed once: the VAE is frozen and the photo fixed.
    posteriors: Vec<[Option<Posterior>; 2]>,
    captions: Captions,
    noise: NoiseSchedule,
    seed: u64,
    /// Training seconds of earlier runs of this output (read from the checkpoint on resume) and when this
    /// run started: checkpoints record the total, so the cost counts every step across resumes.
    prior_seconds: f64,
    started: std::time::Instant,
}

impl<'a> Trainer<'a> {
    pub fn new(
        sd: &'a StableDiffusion,
        method: Box<dyn Method + 'a>,
        samples: Vec<Sample>,
        captions: Captions,
        seed: u64,
    ) -> Result<Self> {
        if samples.is_empty() {
            return Err(Error::Msg("no training images".into()));
        }
        let noise = NoiseSchedule::from_config(&sd.scheduler_config)?;
        let posteriors = samples.iter().map(|_| [None, None]).collect();
        Ok(Self {
            sd,
            method,
            samples,
            posteriors,
            captions,
            noise,
            seed,
            prior_seconds: 0.0,
            started: std::time::Instant::now(),
        })
    }

    /// Seconds spent training this output so far, earlier runs (before a resume) included.
    pub fn total_seconds(&self) -> f64 {
        self.prior_seconds + self.started.elapsed().as_secs_f64()
    }

    fn posterior(&mut self, index: usize, flip: usize) -> Result<&Posterior> {
        if self.posteriors[index][flip].is_none() {
            let px = self.samples[index].pixels[flip].unsqueeze(0)?;
            self.posteriors[index][flip] = Some(self.sd.vae.encode(&px)?);
        }
        Ok(self.posteriors[index][flip].as_ref().expect("just filled"))
    }

    /// The photo of the `g`-th sample of the run: position `g` of its epoch's seeded permutation of
    /// photos × repeats (diffusers' shuffled, repeated dataset), so it depends on `g` alone and a resumed run
    /// draws what an uninterrupted one does.
    pub fn photo_of(&self, g: usize, repeats: usize) -> usize {
        let n = self.samples.len();
        let len = n * repeats;
        let epoch = (g / len) as u64;
        let mut rng = rand::rngs::StdRng::seed_from_u64(
            self.seed ^ epoch.wrapping_mul(0xD6E8_FEB8_6659_FD93) ^ ORDER_SALT,
        );
        let mut order: Vec<usize> = (0..len).collect();
        order.shuffle(&mut rng);
        order[g % len] % n
    }

    /// The draws of micro-batch `micro` of step `step` (deterministic in seed, step, micro and the plan).
    pub fn draw(&mut self, step: usize, micro: usize, plan: &Plan) -> Result<StepInputs> {
        let batch = plan.batch;
        let mix = (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (micro as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.seed ^ mix);
        let scaling = self.sd.vae.config().scaling_factor;
        let (mut latents, mut captions, mut timesteps) = (Vec::new(), Vec::new(), Vec::new());
        let mut time_ids = Vec::new();
        let phrase = self.method.phrase();
        for j in 0..batch {
            let index = self.photo_of((step * plan.accum + micro) * batch + j, plan.repeats);
            let flip = usize::from(rng.random_bool(0.5));
            let template = rng.random_range(0..self.captions.len());
            let sample = &self.samples[index];
            time_ids.push(sample.time_ids(sample.pixels[0].dim(2)? as u32));
            let post = self.posterior(index, flip)?;
            let (mean, logvar) = (post.mean.clone(), post.logvar.clone());
            let eps = seeded_normal(&mut rng, mean.dims(), &self.sd.device)?;
            let z = (Posterior { mean, logvar }.sample(&eps)? * scaling)?;
            latents.push(z.squeeze(0)?);
            captions.push(self.captions.caption(template, &phrase));
            timesteps.push(rng.random_range(0..self.noise.num_train_timesteps()));
        }
        let latents = Tensor::stack(&latents, 0)?;
        let noise = seeded_normal(&mut rng, latents.dims(), &self.sd.device)?;
        Ok(StepInputs {
            latents,
            noise,
            timesteps,
            captions,
            time_ids,
        })
    }

    /// The loss of the current parameters on `inputs`, as a graph to differentiate.
    pub fn loss(&self, inputs: &StepInputs) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let noisy = self
            .noise
            .add_noise(&inputs.latents, &inputs.noise, &inputs.timesteps)?;
        let target = self.noise.target(
            self.noise.prediction_type(),
            &inputs.latents,
            &inputs.noise,
            &inputs.timesteps,
        )?;
        let prompts: Vec<&str> = inputs.captions.iter().map(String::as_str).collect();
        let (cond, pooled) = self.method.encode(self.sd, &prompts, &inputs.timesteps)?;
        let added = self.added_cond(inputs, pooled)?;
        let t: Vec<f32> = inputs.timesteps.iter().map(|&t| t as f32).collect();
        let t = Tensor::new(t, &self.sd.device)?;
        let pred =
            self.sd
                .unet
                .forward_added(&noisy, &t, &cond, added.as_ref(), self.method.control())?;
        let diffusion = mse_loss(&pred, &target)?;
        let reg = self.method.extra_loss()?;
        let total = match &reg {
            Some(r) => (&diffusion + r)?,
            None => diffusion.clone(),
        };
        Ok((total, diffusion, reg))
    }

    /// SDXL's added conditioning of a batch: the captions' pooled embeddings and each sample's time ids
    /// (`None` for SD 1.x/2.x).
    fn added_cond(&self, inputs: &StepInputs, pooled: Option<Tensor>) -> Result<Option<AddedCond>> {
        if !self.sd.is_sdxl() {
            return Ok(None);
        }
        let text_embeds = pooled.ok_or_else(|| {
            Error::Msg(format!(
                "method {} is not yet on SDXL (it gives no pooled text embeddings)",
                self.method.name()
            ))
        })?;
        let (b, _, h, w) = inputs.latents.dims4()?;
        let f = self.sd.vae_scale();
        let ids: Vec<f32> = if inputs.time_ids.is_empty() {
            let (h, w) = ((h * f) as f32, (w * f) as f32);
            (0..b).flat_map(|_| [h, w, 0.0, 0.0, h, w]).collect()
        } else if inputs.time_ids.len() == b {
            inputs.time_ids.iter().flatten().copied().collect()
        } else {
            return Err(Error::Msg(format!(
                "{} time-id rows for a batch of {b}",
                inputs.time_ids.len()
            )));
        };
        Ok(Some(AddedCond {
            text_embeds,
            time_ids: Tensor::from_vec(ids, (b, 6), &self.sd.device)?,
        }))
    }

    /// Loss value without building a gradient graph (evaluation batches).
    pub fn eval_loss(&self, inputs: &StepInputs) -> Result<f64> {
        let (total, _, _) = self.loss(inputs)?;
        Ok(total.to_scalar::<f32>()? as f64)
    }

    /// Forward + backward of one micro-batch, gradients scaled by `scale` and added to `acc`.
    fn accumulate(
        &self,
        inputs: &StepInputs,
        scale: f64,
        acc: &mut GradStore,
        parts: &mut LossParts,
    ) -> Result<()> {
        let (total, diffusion, reg) = self.loss(inputs)?;
        let grads = (total.clone() * scale)?.backward()?;
        for (_, var) in self.method.vars() {
            if let Some(g) = grads.get(var.as_tensor()) {
                let sum = match acc.remove(var.as_tensor()) {
                    Some(prev) => (prev + g)?,
                    None => g.clone(),
                };
                acc.insert(var.as_tensor(), sum);
            }
        }
        let scalar = |t: &Tensor| -> Result<f64> { Ok(t.to_scalar::<f32>()? as f64) };
        parts.total += scalar(&total)? * scale;
        parts.diffusion += scalar(&diffusion)? * scale;
        parts.reg += reg.as_ref().map(scalar).transpose()?.unwrap_or(0.0) * scale;
        Ok(())
    }

    /// One optimizer step on given inputs (one micro-batch per entry).
    pub fn step(&self, opt: &mut AdamW, micro: &[StepInputs], lr: f64) -> Result<LossParts> {
        let mut acc = GradStore::default();
        let mut parts = LossParts {
            total: 0.0,
            diffusion: 0.0,
            reg: 0.0,
        };
        let scale = 1.0 / micro.len() as f64;
        for inputs in micro {
            self.accumulate(inputs, scale, &mut acc, &mut parts)?;
        }
        if !parts.total.is_finite() {
            return Err(Error::Msg(format!("loss is {}", parts.total)));
        }
        for (name, var) in self.method.vars() {
            if let Some(g) = acc.get(var.as_tensor()) {
                let s = g.sqr()?.sum_all()?.to_scalar::<f32>()?;
                if !s.is_finite() {
                    return Err(Error::Msg(format!("gradient of {name} is not finite")));
                }
            }
        }
        opt.step(&acc, lr)?;
        Ok(parts)
    }

    /// Trains for `cfg.steps` optimizer steps from `start` (after a resume), checkpointing and logging.
    pub fn run(
        &mut self,
        cfg: &TrainConfig,
        opt: &mut AdamW,
        start: usize,
        report: &mut dyn FnMut(StepReport),
    ) -> Result<()> {
        if start >= cfg.steps {
            // A finished run resumed: nothing to train, and the checkpoint and log stay as they are.
            return Ok(());
        }
        self.started = std::time::Instant::now();
        let log_path = checkpoint::loss_log_path(&cfg.out);
        let mut log = open_log(&log_path, start)?;
        let base_lr = cfg.effective_lr();
        for step in start..cfg.steps {
            let micro = (0..cfg.grad_accum.max(1))
                .map(|m| self.draw(step, m, &cfg.plan()))
                .collect::<Result<Vec<_>>>()?;
            let lr = lr_at(cfg.schedule, base_lr, step, cfg.steps, cfg.warmup);
            let parts = match self.step(opt, &micro, lr) {
                Ok(p) => p,
                Err(e) => {
                    let ckpt = checkpoint::checkpoint_path(&cfg.out);
                    self.save_checkpoint(cfg, opt, step)?;
                    return Err(Error::Msg(format!(
                        "training stopped at step {step}: {e}; the last good state is in {}",
                        ckpt.display()
                    )));
                }
            };
            let line = serde_json::json!({"step": step + 1, "loss": parts.total, "loss_diffusion": parts.diffusion, "loss_reg": parts.reg, "lr": lr, "timesteps": micro[0].timesteps});
            writeln!(log, "{line}").map_err(|e| Error::io(&log_path, e))?;
            report(StepReport {
                step: step + 1,
                steps: cfg.steps,
                loss: parts,
                lr,
            });
            if cfg.save_every > 0 && (step + 1) % cfg.save_every == 0 && step + 1 < cfg.steps {
                self.save_checkpoint(cfg, opt, step + 1)?;
            }
        }
        self.save_checkpoint(cfg, opt, cfg.steps)
    }

    /// Learned tensors, optimizer state and the step reached, next to the output file.
    pub fn save_checkpoint(&self, cfg: &TrainConfig, opt: &AdamW, step: usize) -> Result<()> {
        let mut tensors: BTreeMap<String, Tensor> = opt.state();
        for (name, var) in self.method.vars() {
            tensors.insert(name, var.as_tensor().clone());
        }
        tensors.extend(self.method.extra_tensors());
        let meta = HashMap::from([
            ("step".to_string(), step.to_string()),
            ("seconds".to_string(), self.total_seconds().to_string()),
            (
                "config".to_string(),
                serde_json::to_string(&resume_key(cfg)).unwrap_or_default(),
            ),
        ]);
        checkpoint::save(&checkpoint::checkpoint_path(&cfg.out), &tensors, meta)
    }

    /// Restores a checkpoint written by [`Trainer::save_checkpoint`]; returns the step to continue from.
    pub fn resume(&mut self, cfg: &TrainConfig, opt: &mut AdamW) -> Result<usize> {
        let path = checkpoint::checkpoint_path(&cfg.out);
        let (tensors, meta) = checkpoint::load(&path)?;
        let saved: serde_json::Value = meta
            .get("config")
            .and_then(|c| serde_json::from_str(c).ok())
            .unwrap_or_default();
        if saved != resume_key(cfg) {
            return Err(Error::file(&path, "the checkpoint was written with other training settings; remove it or use the same flags"));
        }
        let step: usize = meta
            .get("step")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::file(&path, "no step in metadata"))?;
        for (name, var) in self.method.vars() {
            let t = tensors
                .get(&name)
                .ok_or_else(|| Error::file(&path, format!("missing tensor {name}")))?;
            var.set(&t.to_device(var.device())?)?;
        }
        opt.restore(&tensors, step)?;
        self.prior_seconds = meta
            .get("seconds")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0.0);
        Ok(step)
    }
}

/// The settings a resumed run must share with the run that wrote the checkpoint.
fn resume_key(cfg: &TrainConfig) -> serde_json::Value {
    serde_json::json!({"batch": cfg.batch_size, "accum": cfg.grad_accum, "lr": cfg.effective_lr(), "seed": cfg.seed,
        "resolution": cfg.resolution, "schedule": cfg.schedule, "warmup": cfg.warmup, "steps": cfg.steps,
        "repeats": cfg.repeats})
}

/// Opens the loss log for appending, first dropping entries past `start` (a resumed run rewrites them).
fn open_log(path: &std::path::Path, start: usize) -> Result<std::fs::File> {
    let kept: Vec<String> = match std::fs::read_to_string(path) {
        Ok(text) if start > 0 => text
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["step"].as_u64())
                    .is_some_and(|s| s as usize <= start)
            })
            .map(String::from)
            .collect(),
        _ => Vec::new(),
    };
    let mut text = kept.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    persona_diffusion::pipeline::image::write_atomic(path, text.as_bytes())?;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))
}
