//! Euler's method on the probability-flow ODE in σ (Karras et al. 2022, Algorithm 2 without churn), as
//! diffusers' `EulerDiscreteScheduler`.

use candle_core::Tensor;
use serde::Serialize;

use super::betas::alphas_cumprod;
use super::config::{
    require, BetaConfig, PredictionType, SchedulerConfig, SchedulerKind, TimestepSpacing,
};
use super::timesteps::{interp, sigma_table, spaced_timesteps};
use super::{check_step, div, Scheduler};
use crate::{Error, Result};

const KIND: SchedulerKind = SchedulerKind::Euler;

/// `EulerDiscreteScheduler`'s constructor arguments, with its defaults.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EulerConfig {
    #[serde(flatten)]
    pub betas: BetaConfig,
    pub prediction_type: PredictionType,
    pub interpolation_type: String,
    pub use_karras_sigmas: bool,
    pub use_exponential_sigmas: bool,
    pub use_beta_sigmas: bool,
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
    pub timestep_spacing: TimestepSpacing,
    pub timestep_type: String,
    pub steps_offset: usize,
    pub final_sigmas_type: String,
}

impl EulerConfig {
    /// diffusers' `EulerDiscreteScheduler.from_config`: known keys from `c`, defaults for the rest.
    pub fn from_config(c: &SchedulerConfig) -> Self {
        EulerConfig {
            betas: BetaConfig::from_config(c),
            prediction_type: c.prediction_type.unwrap_or(PredictionType::Epsilon),
            interpolation_type: c
                .interpolation_type
                .clone()
                .unwrap_or_else(|| "linear".into()),
            use_karras_sigmas: c.use_karras_sigmas.unwrap_or(false),
            use_exponential_sigmas: c.use_exponential_sigmas.unwrap_or(false),
            use_beta_sigmas: c.use_beta_sigmas.unwrap_or(false),
            sigma_min: c.sigma_min,
            sigma_max: c.sigma_max,
            timestep_spacing: c.timestep_spacing.unwrap_or(TimestepSpacing::Linspace),
            timestep_type: c.timestep_type.clone().unwrap_or_else(|| "discrete".into()),
            steps_offset: c.steps_offset.unwrap_or(0),
            final_sigmas_type: c.final_sigmas_type.clone().unwrap_or_else(|| "zero".into()),
        }
    }

    /// Rejects the options persona does not implement rather than sampling differently from diffusers.
    fn check_supported(&self) -> Result<()> {
        require(
            self.interpolation_type == "linear",
            KIND,
            format!("interpolation_type {:?}", self.interpolation_type),
        )?;
        require(!self.use_karras_sigmas, KIND, "use_karras_sigmas")?;
        require(!self.use_exponential_sigmas, KIND, "use_exponential_sigmas")?;
        require(!self.use_beta_sigmas, KIND, "use_beta_sigmas")?;
        // Continuous timesteps only change anything for v-prediction (they become ¼·ln σ).
        let continuous_v = self.timestep_type == "continuous"
            && self.prediction_type == PredictionType::VPrediction;
        require(
            !continuous_v,
            KIND,
            "timestep_type \"continuous\" with v_prediction",
        )
    }
}

/// The σ grid shared by Euler and Euler ancestral: diffusers' float32 timesteps (fractional for `linspace`)
/// and σ interpolated linearly in t, then the final σ appended: 0, or σ₀ with `final_sigma_min`.
pub(super) fn euler_grid(
    betas: &BetaConfig,
    spacing: TimestepSpacing,
    steps_offset: usize,
    num_inference_steps: usize,
    final_sigma_min: bool,
) -> Result<(Vec<f64>, Vec<f32>)> {
    let mut alphas_cumprod = alphas_cumprod(betas)?;
    if betas.rescale_betas_zero_snr {
        // diffusers keeps σ finite at the last training step.
        *alphas_cumprod.last_mut().expect("non-empty schedule") = 2f32.powi(-24);
    }
    let table = sigma_table(&alphas_cumprod);
    let timesteps: Vec<f64> = spaced_timesteps(
        spacing,
        betas.num_train_timesteps,
        num_inference_steps,
        steps_offset,
        false,
    )?
    .into_iter()
    .map(|t| t as f32 as f64)
    .collect();
    let mut sigmas: Vec<f32> = timesteps
        .iter()
        .map(|&t| interp(t, &table) as f32)
        .collect();
    sigmas.push(if final_sigma_min { table[0] } else { 0.0 });
    Ok((timesteps, sigmas))
}

/// Initial noise scale: σ_max for `linspace`/`trailing`, √(σ_max² + 1) for `leading` (diffusers' rule).
pub(super) fn euler_init_noise_sigma(spacing: TimestepSpacing, sigmas: &[f32]) -> f64 {
    let max = sigmas.iter().copied().fold(f32::MIN, f32::max);
    match spacing {
        TimestepSpacing::Linspace | TimestepSpacing::Trailing => max as f64,
        TimestepSpacing::Leading => (max * max + 1.0).sqrt() as f64,
    }
}

/// The UNet input x/√(σ²+1) of the Euler family.
pub(super) fn euler_scale(sample: &Tensor, sigma: f32) -> Result<Tensor> {
    div(sample, (sigma * sigma + 1.0).sqrt())
}

/// x̂₀ in the σ parameterisation (x = x₀ + σ·ε, UNet input scaled by 1/√(σ²+1)).
pub(super) fn euler_x0(
    prediction: PredictionType,
    output: &Tensor,
    sample: &Tensor,
    sigma: f32,
) -> Result<Tensor> {
    Ok(match prediction {
        PredictionType::Epsilon => (sample - output.affine(sigma as f64, 0.0)?)?,
        PredictionType::VPrediction => {
            let s2 = sigma * sigma + 1.0;
            (output.affine((-sigma / s2.sqrt()) as f64, 0.0)? + div(sample, s2)?)?
        }
        PredictionType::Sample => output.clone(),
    })
}

pub struct EulerScheduler {
    config: EulerConfig,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
}

impl EulerScheduler {
    pub fn new(config: EulerConfig, num_inference_steps: usize) -> Result<Self> {
        config.check_supported()?;
        let final_sigma_min = match config.final_sigmas_type.as_str() {
            "zero" => false,
            "sigma_min" => true,
            other => {
                return Err(Error::Msg(format!(
                    "{}: final_sigmas_type {other:?} is not supported",
                    KIND.class_name()
                )))
            }
        };
        let (timesteps, sigmas) = euler_grid(
            &config.betas,
            config.timestep_spacing,
            config.steps_offset,
            num_inference_steps,
            final_sigma_min,
        )?;
        Ok(EulerScheduler {
            config,
            timesteps,
            sigmas,
        })
    }
}

impl Scheduler for EulerScheduler {
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
        _noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        check_step(KIND, step, self.timesteps.len())?;
        let (sigma, sigma_next) = (self.sigmas[step], self.sigmas[step + 1]);
        let x0 = euler_x0(self.config.prediction_type, model_output, sample, sigma)?;
        let derivative = div(&(sample - x0)?, sigma)?;
        Ok((sample + derivative.affine((sigma_next - sigma) as f64, 0.0)?)?)
    }

    fn needs_noise(&self) -> bool {
        false
    }
}
