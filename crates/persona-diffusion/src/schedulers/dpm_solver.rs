//! DPM-Solver++ multistep (Lu et al. 2022), orders 1 and 2 with the midpoint rule, as diffusers'
//! `DPMSolverMultistepScheduler` — "DPM++ 2M" with its defaults.

use candle_core::Tensor;
use serde::Serialize;

use super::betas::alphas_cumprod;
use super::config::{
    f64_json, require, BetaConfig, PredictionType, SchedulerConfig, SchedulerKind, TimestepSpacing,
};
use super::timesteps::{interp, np_arange_down, np_linspace, sigma_table};
use super::{check_step, lincomb, predict_x0, Scheduler};
use crate::{Error, Result};

const KIND: SchedulerKind = SchedulerKind::DpmSolverMultistep;

/// `DPMSolverMultistepScheduler`'s constructor arguments, with its defaults.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DpmSolverConfig {
    #[serde(flatten)]
    pub betas: BetaConfig,
    pub solver_order: usize,
    pub prediction_type: PredictionType,
    pub thresholding: bool,
    pub dynamic_thresholding_ratio: f64,
    pub sample_max_value: f64,
    pub algorithm_type: String,
    pub solver_type: String,
    pub lower_order_final: bool,
    pub euler_at_final: bool,
    pub use_karras_sigmas: bool,
    pub use_exponential_sigmas: bool,
    pub use_beta_sigmas: bool,
    pub use_lu_lambdas: bool,
    pub use_flow_sigmas: bool,
    pub flow_shift: f64,
    pub final_sigmas_type: String,
    #[serde(serialize_with = "f64_json")]
    pub lambda_min_clipped: f64,
    pub variance_type: Option<String>,
    pub timestep_spacing: TimestepSpacing,
    pub steps_offset: usize,
    pub use_dynamic_shifting: bool,
    pub time_shift_type: String,
}

impl DpmSolverConfig {
    /// diffusers' `DPMSolverMultistepScheduler.from_config`: known keys from `c`, defaults for the rest.
    pub fn from_config(c: &SchedulerConfig) -> Self {
        DpmSolverConfig {
            betas: BetaConfig::from_config(c),
            solver_order: c.solver_order.unwrap_or(2),
            prediction_type: c.prediction_type.unwrap_or(PredictionType::Epsilon),
            thresholding: c.thresholding.unwrap_or(false),
            dynamic_thresholding_ratio: c.dynamic_thresholding_ratio.unwrap_or(0.995),
            sample_max_value: c.sample_max_value.unwrap_or(1.0),
            algorithm_type: c
                .algorithm_type
                .clone()
                .unwrap_or_else(|| "dpmsolver++".into()),
            solver_type: c.solver_type.clone().unwrap_or_else(|| "midpoint".into()),
            lower_order_final: c.lower_order_final.unwrap_or(true),
            euler_at_final: c.euler_at_final.unwrap_or(false),
            use_karras_sigmas: c.use_karras_sigmas.unwrap_or(false),
            use_exponential_sigmas: c.use_exponential_sigmas.unwrap_or(false),
            use_beta_sigmas: c.use_beta_sigmas.unwrap_or(false),
            use_lu_lambdas: c.use_lu_lambdas.unwrap_or(false),
            use_flow_sigmas: c.use_flow_sigmas.unwrap_or(false),
            flow_shift: c.flow_shift.unwrap_or(1.0),
            final_sigmas_type: c.final_sigmas_type.clone().unwrap_or_else(|| "zero".into()),
            lambda_min_clipped: c.lambda_min_clipped.unwrap_or(f64::NEG_INFINITY),
            variance_type: c.variance_type.clone(),
            timestep_spacing: c.timestep_spacing.unwrap_or(TimestepSpacing::Linspace),
            steps_offset: c.steps_offset.unwrap_or(0),
            use_dynamic_shifting: c.use_dynamic_shifting.unwrap_or(false),
            time_shift_type: c
                .time_shift_type
                .clone()
                .unwrap_or_else(|| "exponential".into()),
        }
    }

    /// Rejects the options persona does not implement rather than sampling differently from diffusers.
    fn check_supported(&self) -> Result<()> {
        require(
            self.algorithm_type == "dpmsolver++",
            KIND,
            format!("algorithm_type {:?}", self.algorithm_type),
        )?;
        require(
            self.solver_type == "midpoint",
            KIND,
            format!("solver_type {:?}", self.solver_type),
        )?;
        require(
            matches!(self.solver_order, 1 | 2),
            KIND,
            format!("solver_order {}", self.solver_order),
        )?;
        require(!self.thresholding, KIND, "thresholding")?;
        let special_sigmas = [
            (self.use_karras_sigmas, "use_karras_sigmas"),
            (self.use_exponential_sigmas, "use_exponential_sigmas"),
            (self.use_beta_sigmas, "use_beta_sigmas"),
            (self.use_lu_lambdas, "use_lu_lambdas"),
            (self.use_flow_sigmas, "use_flow_sigmas"),
            (self.use_dynamic_shifting, "use_dynamic_shifting"),
        ];
        for (on, name) in special_sigmas {
            require(!on, KIND, name)?;
        }
        require(
            self.lambda_min_clipped == f64::NEG_INFINITY,
            KIND,
            "a finite lambda_min_clipped",
        )?;
        let learned = matches!(
            self.variance_type.as_deref(),
            Some("learned" | "learned_range")
        );
        require(!learned, KIND, "a learned variance_type")
    }
}

pub struct DpmSolverMultistepScheduler {
    config: DpmSolverConfig,
    timesteps: Vec<f64>,
    /// σ per step (float32, as diffusers stores them), plus the final σ.
    sigmas: Vec<f32>,
    /// The x̂₀ of the previous step, for the second-order update.
    previous_x0: Option<Tensor>,
    steps_done: usize,
}

impl DpmSolverMultistepScheduler {
    pub fn new(config: DpmSolverConfig, num_inference_steps: usize) -> Result<Self> {
        config.check_supported()?;
        let mut alphas_cumprod = alphas_cumprod(&config.betas)?;
        if config.betas.rescale_betas_zero_snr {
            // diffusers keeps σ finite at the last training step.
            *alphas_cumprod.last_mut().expect("non-empty schedule") = 2f32.powi(-24);
        }
        let timesteps = dpm_timesteps(&config, num_inference_steps)?;
        let table = sigma_table(&alphas_cumprod);
        let mut sigmas: Vec<f32> = timesteps
            .iter()
            .map(|&t| interp(t, &table) as f32)
            .collect();
        sigmas.push(match config.final_sigmas_type.as_str() {
            "zero" => 0.0,
            "sigma_min" => table[0],
            other => {
                return Err(Error::Msg(format!(
                    "{}: final_sigmas_type {other:?} is not supported",
                    KIND.class_name()
                )))
            }
        });
        Ok(DpmSolverMultistepScheduler {
            config,
            timesteps,
            sigmas,
            previous_x0: None,
            steps_done: 0,
        })
    }

    /// Whether this step falls back to first order: always for the first step, and at the end of short
    /// runs (`lower_order_final`, fewer than 15 steps) or when the final σ is zero.
    fn first_order(&self, step: usize) -> bool {
        let c = &self.config;
        let n = self.timesteps.len();
        let last = step == n - 1
            && (c.euler_at_final
                || (c.lower_order_final && n < 15)
                || c.final_sigmas_type == "zero");
        c.solver_order == 1 || self.previous_x0.is_none() || last
    }
}

/// diffusers' DPM-Solver grid: n + 1 points over the training range with the last dropped (unlike DDIM's).
fn dpm_timesteps(c: &DpmSolverConfig, steps: usize) -> Result<Vec<f64>> {
    let train = c.betas.num_train_timesteps;
    if steps == 0 || steps > train {
        return Err(Error::Msg(format!(
            "num_inference_steps must be in 1..={train}, got {steps}"
        )));
    }
    let mut t: Vec<f64> = match c.timestep_spacing {
        TimestepSpacing::Linspace => np_linspace(0.0, (train - 1) as f64, steps + 1)
            .into_iter()
            .rev()
            .map(f64::round_ties_even)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = train / (steps + 1);
            (0..=steps)
                .rev()
                .map(|i| (i * ratio + c.steps_offset) as f64)
                .collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = train as f64 / steps as f64;
            np_arange_down(train as f64, ratio)
                .into_iter()
                .map(|x| x.round_ties_even() - 1.0)
                .collect()
        }
    };
    if c.timestep_spacing != TimestepSpacing::Trailing {
        t.pop();
    }
    Ok(t)
}

/// α_t = 1/√(σ²+1), σ_t = σ·α_t and the half log-SNR λ = ln α_t − ln σ_t, in float32 like diffusers.
fn alpha_sigma_lambda(sigma: f32) -> (f32, f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    let sigma_t = sigma * alpha;
    (alpha, sigma_t, alpha.ln() - sigma_t.ln())
}

impl Scheduler for DpmSolverMultistepScheduler {
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
        check_step(KIND, step, self.timesteps.len())?;
        if step != self.steps_done {
            return Err(Error::Msg(format!(
                "{}: expected step {}, got {step}",
                KIND.class_name(),
                self.steps_done
            )));
        }
        let (alpha_s, sigma_s, lambda_s) = alpha_sigma_lambda(self.sigmas[step]);
        let (alpha_t, sigma_t, lambda_t) = alpha_sigma_lambda(self.sigmas[step + 1]);
        let x0 = predict_x0(
            self.config.prediction_type,
            model_output,
            sample,
            alpha_s,
            sigma_s,
        )?;
        let h = lambda_t - lambda_s;
        // At σ = 0, λ = ∞ and e^{-h} = 0: the update returns x̂₀, as in diffusers.
        let phi = alpha_t * ((-h).exp() - 1.0);
        let mut prev = lincomb(&[(sigma_t / sigma_s, sample), (-phi, &x0)])?;
        if let (false, Some(x0_prev)) = (self.first_order(step), &self.previous_x0) {
            let (_, _, lambda_prev) = alpha_sigma_lambda(self.sigmas[step - 1]);
            let r0 = (lambda_s - lambda_prev) / h;
            let d1 = (&x0 - x0_prev)?.affine((1.0 / r0) as f64, 0.0)?;
            prev = (prev - d1.affine((0.5 * phi) as f64, 0.0)?)?;
        }
        self.previous_x0 = Some(x0);
        self.steps_done += 1;
        Ok(prev)
    }

    fn needs_noise(&self) -> bool {
        false
    }
}
