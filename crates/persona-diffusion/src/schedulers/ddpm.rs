//! DDPM ancestral sampling (Ho et al. 2020), as diffusers' `DDPMScheduler`.

use candle_core::Tensor;
use serde::Serialize;

use super::betas::alphas_cumprod;
use super::config::{
    require, BetaConfig, PredictionType, SchedulerConfig, SchedulerKind, TimestepSpacing,
};
use super::timesteps::spaced_timesteps;
use super::{check_step, lincomb, predict_x0, require_noise, Scheduler};
use crate::Result;

/// `DDPMScheduler`'s constructor arguments, with its defaults.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DdpmConfig {
    #[serde(flatten)]
    pub betas: BetaConfig,
    pub variance_type: String,
    pub clip_sample: bool,
    pub prediction_type: PredictionType,
    pub thresholding: bool,
    pub dynamic_thresholding_ratio: f64,
    pub clip_sample_range: f64,
    pub sample_max_value: f64,
    pub timestep_spacing: TimestepSpacing,
    pub steps_offset: usize,
}

impl DdpmConfig {
    /// diffusers' `DDPMScheduler.from_config`: known keys from `c`, defaults for the rest.
    pub fn from_config(c: &SchedulerConfig) -> Self {
        DdpmConfig {
            betas: BetaConfig::from_config(c),
            variance_type: c
                .variance_type
                .clone()
                .unwrap_or_else(|| "fixed_small".into()),
            clip_sample: c.clip_sample.unwrap_or(true),
            prediction_type: c.prediction_type.unwrap_or(PredictionType::Epsilon),
            thresholding: c.thresholding.unwrap_or(false),
            dynamic_thresholding_ratio: c.dynamic_thresholding_ratio.unwrap_or(0.995),
            clip_sample_range: c.clip_sample_range.unwrap_or(1.0),
            sample_max_value: c.sample_max_value.unwrap_or(1.0),
            timestep_spacing: c.timestep_spacing.unwrap_or(TimestepSpacing::Leading),
            steps_offset: c.steps_offset.unwrap_or(0),
        }
    }
}

/// The variance types whose noise scale is a fixed function of the schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Variance {
    /// β̃_t, the posterior variance (`fixed_small`, and `fixed_small_log`, which is the same up to rounding).
    Small,
    /// β_t (`fixed_large`).
    Large,
}

pub struct DdpmScheduler {
    config: DdpmConfig,
    variance: Variance,
    alphas_cumprod: Vec<f32>,
    timesteps: Vec<f64>,
}

impl DdpmScheduler {
    pub fn new(config: DdpmConfig, num_inference_steps: usize) -> Result<Self> {
        let kind = SchedulerKind::Ddpm;
        require(!config.thresholding, kind, "thresholding")?;
        let variance = match config.variance_type.as_str() {
            "fixed_small" | "fixed_small_log" => Variance::Small,
            "fixed_large" => Variance::Large,
            other => {
                return Err(crate::Error::Msg(format!(
                    "DDPMScheduler: variance_type {other:?} is not supported"
                )))
            }
        };
        let alphas_cumprod = alphas_cumprod(&config.betas)?;
        let timesteps = spaced_timesteps(
            config.timestep_spacing,
            config.betas.num_train_timesteps,
            num_inference_steps,
            config.steps_offset,
            true,
        )?;
        Ok(DdpmScheduler {
            config,
            variance,
            alphas_cumprod,
            timesteps,
        })
    }

    /// Standard deviation of the noise added when stepping from t to the previous timestep.
    fn noise_std(&self, alpha_t: f32, alpha_prev: f32) -> f32 {
        let beta_t = 1.0 - alpha_t / alpha_prev;
        let variance = match self.variance {
            Variance::Small => ((1.0 - alpha_prev) / (1.0 - alpha_t) * beta_t).max(1e-20),
            Variance::Large => beta_t,
        };
        variance.sqrt()
    }
}

impl Scheduler for DdpmScheduler {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn scale_model_input(&self, sample: &Tensor, _step: usize) -> Result<Tensor> {
        Ok(sample.clone())
    }

    /// Uses `noise` unless t = 0, the one timestep where diffusers adds none.
    fn step(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        check_step(SchedulerKind::Ddpm, step, self.timesteps.len())?;
        let t = self.timesteps[step] as usize;
        let alpha_t = self.alphas_cumprod[t];
        // diffusers' previous timestep is the next one of the grid (not t − T/n), ᾱ = 1 after the last.
        let alpha_prev = self
            .timesteps
            .get(step + 1)
            .map_or(1.0, |&p| self.alphas_cumprod[p as usize]);
        let (beta_t, beta_prev) = (1.0 - alpha_t, 1.0 - alpha_prev);
        let current_alpha = alpha_t / alpha_prev;
        let mut x0 = predict_x0(
            self.config.prediction_type,
            model_output,
            sample,
            alpha_t.sqrt(),
            beta_t.sqrt(),
        )?;
        if self.config.clip_sample {
            let r = self.config.clip_sample_range;
            x0 = x0.clamp(-r, r)?;
        }
        let x0_coeff = alpha_prev.sqrt() * (1.0 - current_alpha) / beta_t;
        let sample_coeff = current_alpha.sqrt() * beta_prev / beta_t;
        let mean = lincomb(&[(x0_coeff, &x0), (sample_coeff, sample)])?;
        if t == 0 {
            return Ok(mean);
        }
        let noise = require_noise(SchedulerKind::Ddpm, noise)?;
        Ok((mean + noise.affine(self.noise_std(alpha_t, alpha_prev) as f64, 0.0)?)?)
    }

    fn needs_noise(&self) -> bool {
        true
    }
}
