//! DDIM (Song et al. 2020), deterministic (η = 0), as diffusers' `DDIMScheduler`.

use candle_core::Tensor;
use serde::Serialize;

use super::betas::alphas_cumprod;
use super::config::{
    require, BetaConfig, PredictionType, SchedulerConfig, SchedulerKind, TimestepSpacing,
};
use super::timesteps::spaced_timesteps;
use super::{check_step, div, lincomb, predict_x0, Scheduler};
use crate::Result;

/// `DDIMScheduler`'s constructor arguments, with its defaults.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DdimConfig {
    #[serde(flatten)]
    pub betas: BetaConfig,
    pub clip_sample: bool,
    pub set_alpha_to_one: bool,
    pub steps_offset: usize,
    pub prediction_type: PredictionType,
    pub thresholding: bool,
    pub dynamic_thresholding_ratio: f64,
    pub clip_sample_range: f64,
    pub sample_max_value: f64,
    pub timestep_spacing: TimestepSpacing,
}

impl DdimConfig {
    /// diffusers' `DDIMScheduler.from_config`: known keys from `c`, defaults for the rest.
    pub fn from_config(c: &SchedulerConfig) -> Self {
        DdimConfig {
            betas: BetaConfig::from_config(c),
            clip_sample: c.clip_sample.unwrap_or(true),
            set_alpha_to_one: c.set_alpha_to_one.unwrap_or(true),
            steps_offset: c.steps_offset.unwrap_or(0),
            prediction_type: c.prediction_type.unwrap_or(PredictionType::Epsilon),
            thresholding: c.thresholding.unwrap_or(false),
            dynamic_thresholding_ratio: c.dynamic_thresholding_ratio.unwrap_or(0.995),
            clip_sample_range: c.clip_sample_range.unwrap_or(1.0),
            sample_max_value: c.sample_max_value.unwrap_or(1.0),
            timestep_spacing: c.timestep_spacing.unwrap_or(TimestepSpacing::Leading),
        }
    }
}

pub struct DdimScheduler {
    config: DdimConfig,
    alphas_cumprod: Vec<f32>,
    /// ᾱ used after the last step: 1 with `set_alpha_to_one`, else ᾱ₀.
    final_alpha_cumprod: f32,
    timesteps: Vec<f64>,
    /// diffusers steps from t to t − ⌊T/n⌋ whatever the spacing (so `trailing` with n ∤ T skips unevenly).
    step_ratio: i64,
}

impl DdimScheduler {
    pub fn new(config: DdimConfig, num_inference_steps: usize) -> Result<Self> {
        require(!config.thresholding, SchedulerKind::Ddim, "thresholding")?;
        let alphas_cumprod = alphas_cumprod(&config.betas)?;
        let final_alpha_cumprod = if config.set_alpha_to_one {
            1.0
        } else {
            alphas_cumprod[0]
        };
        let train = config.betas.num_train_timesteps;
        let timesteps = spaced_timesteps(
            config.timestep_spacing,
            train,
            num_inference_steps,
            config.steps_offset,
            true,
        )?;
        let step_ratio = (train / num_inference_steps) as i64;
        Ok(DdimScheduler {
            config,
            alphas_cumprod,
            final_alpha_cumprod,
            timesteps,
            step_ratio,
        })
    }

    fn alpha_at(&self, t: i64) -> f32 {
        if t >= 0 {
            self.alphas_cumprod[t as usize]
        } else {
            self.final_alpha_cumprod
        }
    }
}

impl Scheduler for DdimScheduler {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn scale_model_input(&self, sample: &Tensor, _step: usize) -> Result<Tensor> {
        Ok(sample.clone())
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        _noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        check_step(SchedulerKind::Ddim, step, self.timesteps.len())?;
        let t = self.timesteps[step] as i64;
        let alpha_t = self.alphas_cumprod[t as usize];
        let alpha_prev = self.alpha_at(t - self.step_ratio);
        let (a, s) = (alpha_t.sqrt(), (1.0 - alpha_t).sqrt());
        let mut x0 = predict_x0(self.config.prediction_type, model_output, sample, a, s)?;
        let eps = match self.config.prediction_type {
            PredictionType::Epsilon => model_output.clone(),
            PredictionType::Sample => div(&lincomb(&[(1.0, sample), (-a, &x0)])?, s)?,
            PredictionType::VPrediction => lincomb(&[(a, model_output), (s, sample)])?,
        };
        if self.config.clip_sample {
            let r = self.config.clip_sample_range;
            x0 = x0.clamp(-r, r)?;
        }
        lincomb(&[(alpha_prev.sqrt(), &x0), ((1.0 - alpha_prev).sqrt(), &eps)])
    }

    fn needs_noise(&self) -> bool {
        false
    }
}
