//! Euler ancestral sampling (k-diffusion's `sample_euler_ancestral`), as diffusers'
//! `EulerAncestralDiscreteScheduler`: an Euler step down to σ_down, then fresh noise of scale σ_up.

use candle_core::Tensor;
use serde::Serialize;

use super::config::{
    require, BetaConfig, PredictionType, SchedulerConfig, SchedulerKind, TimestepSpacing,
};
use super::euler::{euler_grid, euler_init_noise_sigma, euler_scale, euler_x0};
use super::{check_step, div, require_noise, Scheduler};
use crate::Result;

const KIND: SchedulerKind = SchedulerKind::EulerAncestral;

/// `EulerAncestralDiscreteScheduler`'s constructor arguments, with its defaults.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EulerAncestralConfig {
    #[serde(flatten)]
    pub betas: BetaConfig,
    pub prediction_type: PredictionType,
    pub timestep_spacing: TimestepSpacing,
    pub steps_offset: usize,
}

impl EulerAncestralConfig {
    /// diffusers' `EulerAncestralDiscreteScheduler.from_config`: known keys from `c`, defaults for the rest.
    pub fn from_config(c: &SchedulerConfig) -> Self {
        EulerAncestralConfig {
            betas: BetaConfig::from_config(c),
            prediction_type: c.prediction_type.unwrap_or(PredictionType::Epsilon),
            timestep_spacing: c.timestep_spacing.unwrap_or(TimestepSpacing::Linspace),
            steps_offset: c.steps_offset.unwrap_or(0),
        }
    }
}

pub struct EulerAncestralScheduler {
    config: EulerAncestralConfig,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
}

impl EulerAncestralScheduler {
    pub fn new(config: EulerAncestralConfig, num_inference_steps: usize) -> Result<Self> {
        // diffusers raises NotImplementedError for it too.
        require(
            config.prediction_type != PredictionType::Sample,
            KIND,
            "prediction_type \"sample\"",
        )?;
        let (timesteps, sigmas) = euler_grid(
            &config.betas,
            config.timestep_spacing,
            config.steps_offset,
            num_inference_steps,
            false,
        )?;
        Ok(EulerAncestralScheduler {
            config,
            timesteps,
            sigmas,
        })
    }
}

impl Scheduler for EulerAncestralScheduler {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        euler_init_noise_sigma(self.config.timestep_spacing, &self.sigmas)
    }

    fn scale_model_input(&self, sample: &Tensor, step: usize) -> Result<Tensor> {
        check_step(KIND, step, self.timesteps.len())?;
        euler_scale(sample, self.sigmas[step])
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        check_step(KIND, step, self.timesteps.len())?;
        let noise = require_noise(KIND, noise)?;
        let (sigma, sigma_to) = (self.sigmas[step], self.sigmas[step + 1]);
        let (from2, to2) = (sigma * sigma, sigma_to * sigma_to);
        let sigma_up = (to2 * (from2 - to2) / from2).sqrt();
        let sigma_down = (to2 - sigma_up * sigma_up).sqrt();
        let x0 = euler_x0(self.config.prediction_type, model_output, sample, sigma)?;
        let derivative = div(&(sample - x0)?, sigma)?;
        let prev = (sample + derivative.affine((sigma_down - sigma) as f64, 0.0)?)?;
        Ok((prev + noise.affine(sigma_up as f64, 0.0)?)?)
    }

    fn needs_noise(&self) -> bool {
        true
    }
}
