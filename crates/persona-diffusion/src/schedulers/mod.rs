//! Noise schedulers with diffusers semantics (diffusers 0.42).
//!
//! Each sampler is built the diffusers way, `Class.from_config(model_config)` then `set_timesteps(n)`
//! ([`build`]), and replays diffusers' trajectories to float32 precision (`tests/schedulers.rs`). Scalar
//! coefficients are computed in float32 wherever diffusers computes them as float32 tensors: differences
//! such as `1 − ᾱ_t/ᾱ_prev` or `λ_t − λ_s` cancel, and float64 there would drift from diffusers by more than
//! float32 rounding. Tensors stay in the caller's dtype (float32 in practice). See `docs/schedulers.md`.

mod betas;
mod config;
mod ddim;
mod ddpm;
mod dpm_solver;
mod euler;
mod euler_ancestral;
mod noise;
mod timesteps;

use candle_core::Tensor;

pub use config::{
    BetaConfig, BetaSchedule, PredictionType, SchedulerConfig, SchedulerKind, TimestepSpacing,
};
pub use ddim::{DdimConfig, DdimScheduler};
pub use ddpm::{DdpmConfig, DdpmScheduler};
pub use dpm_solver::{DpmSolverConfig, DpmSolverMultistepScheduler};
pub use euler::{EulerConfig, EulerScheduler};
pub use euler_ancestral::{EulerAncestralConfig, EulerAncestralScheduler};
pub use noise::NoiseSchedule;

use crate::{Error, Result};

/// The interface the sampling loop drives.
pub trait Scheduler: Send {
    /// Timesteps of the sampling run, as the UNet receives them (diffusers may use fractional ones).
    fn timesteps(&self) -> &[f64];
    fn init_noise_sigma(&self) -> f64;
    fn scale_model_input(&self, sample: &Tensor, step: usize) -> Result<Tensor>;
    /// One denoising step. `noise` must be Some for schedulers whose `needs_noise()` is true (drawn by the caller
    /// with the shape of `sample`); step indices are consecutive from 0.
    fn step(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor>;
    fn needs_noise(&self) -> bool;
}

/// Builds the sampler `kind` from a model's scheduler config (diffusers' `from_config` rule: the keys the
/// class knows, its own defaults for the rest) and sets `num_inference_steps` timesteps.
/// [`SchedulerKind::Pndm`] builds DDIM (see [`SchedulerKind::sampler`]).
pub fn build(
    kind: SchedulerKind,
    config: &SchedulerConfig,
    num_inference_steps: usize,
) -> Result<Box<dyn Scheduler>> {
    let n = num_inference_steps;
    Ok(match kind.sampler() {
        SchedulerKind::Ddim => Box::new(DdimScheduler::new(DdimConfig::from_config(config), n)?),
        SchedulerKind::DpmSolverMultistep => Box::new(DpmSolverMultistepScheduler::new(
            DpmSolverConfig::from_config(config),
            n,
        )?),
        SchedulerKind::Euler => Box::new(EulerScheduler::new(EulerConfig::from_config(config), n)?),
        SchedulerKind::EulerAncestral => Box::new(EulerAncestralScheduler::new(
            EulerAncestralConfig::from_config(config),
            n,
        )?),
        SchedulerKind::Ddpm => Box::new(DdpmScheduler::new(DdpmConfig::from_config(config), n)?),
        SchedulerKind::Pndm => unreachable!("SchedulerKind::sampler never returns Pndm"),
    })
}

/// `Σ cᵢ·xᵢ`, the shape of every scheduler update.
fn lincomb(terms: &[(f32, &Tensor)]) -> Result<Tensor> {
    let mut acc: Option<Tensor> = None;
    for &(c, x) in terms {
        let term = x.affine(c as f64, 0.0)?;
        acc = Some(match acc {
            Some(a) => (a + term)?,
            None => term,
        });
    }
    acc.ok_or_else(|| Error::Msg("lincomb of no terms".into()))
}

/// `x / d` as a true division: multiplying by `1/d` rounds differently, and diffusers divides.
fn div(x: &Tensor, d: f32) -> Result<Tensor> {
    let d = Tensor::new(d, x.device())?.to_dtype(x.dtype())?;
    Ok(x.broadcast_div(&d)?)
}

/// The clean-sample estimate x̂₀ from the model output, for a sample `x = α·x₀ + σ·ε`.
fn predict_x0(
    prediction: PredictionType,
    output: &Tensor,
    sample: &Tensor,
    alpha: f32,
    sigma: f32,
) -> Result<Tensor> {
    Ok(match prediction {
        PredictionType::Epsilon => div(&lincomb(&[(1.0, sample), (-sigma, output)])?, alpha)?,
        PredictionType::VPrediction => lincomb(&[(alpha, sample), (-sigma, output)])?,
        PredictionType::Sample => output.clone(),
    })
}

/// The step's index into the timesteps, or an error naming the scheduler.
fn check_step(kind: SchedulerKind, step: usize, len: usize) -> Result<()> {
    if step < len {
        Ok(())
    } else {
        Err(Error::Msg(format!(
            "{}: step {step} is past the last of {len} steps",
            kind.class_name()
        )))
    }
}

/// The noise tensor a stochastic scheduler needs, or an error saying the caller forgot it.
fn require_noise(kind: SchedulerKind, noise: Option<&Tensor>) -> Result<&Tensor> {
    noise.ok_or_else(|| {
        Error::Msg(format!(
            "{} draws noise in every step: pass `noise`",
            kind.class_name()
        ))
    })
}
