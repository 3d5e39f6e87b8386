//! `scheduler_config.json` and diffusers' `from_config` rule.
//!
//! A model ships one scheduler config (SD 2.1 ships a `PNDMScheduler` one), but users sample with any
//! scheduler. diffusers builds scheduler X from another class's config by taking every key X's constructor
//! knows and X's own defaults for the rest; [`SchedulerConfig`] keeps every key optional so that each
//! scheduler's `from_config` can apply exactly that rule.

use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Error, Result};

/// How the β schedule is laid out over the training timesteps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    Linear,
    ScaledLinear,
    SquaredcosCapV2,
}

/// What the UNet predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    Epsilon,
    VPrediction,
    Sample,
}

/// How the inference timesteps are spread over the training ones (Table 2 of arXiv:2305.08891).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    Leading,
    Linspace,
    Trailing,
}

/// The raw content of a `scheduler_config.json`: every key optional, unknown keys ignored.
///
/// Keys whose set of values differs between scheduler classes (`algorithm_type`, `variance_type`…) stay
/// strings here: a config must load even when it names a variant only another class understands; the
/// scheduler that uses the key validates it when it is built.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,
    pub num_train_timesteps: Option<usize>,
    pub beta_start: Option<f64>,
    pub beta_end: Option<f64>,
    pub beta_schedule: Option<BetaSchedule>,
    pub trained_betas: Option<Vec<f64>>,
    pub rescale_betas_zero_snr: Option<bool>,
    pub prediction_type: Option<PredictionType>,
    pub timestep_spacing: Option<TimestepSpacing>,
    pub steps_offset: Option<usize>,
    pub set_alpha_to_one: Option<bool>,
    pub clip_sample: Option<bool>,
    pub clip_sample_range: Option<f64>,
    pub thresholding: Option<bool>,
    pub dynamic_thresholding_ratio: Option<f64>,
    pub sample_max_value: Option<f64>,
    pub variance_type: Option<String>,
    pub solver_order: Option<usize>,
    pub algorithm_type: Option<String>,
    pub solver_type: Option<String>,
    pub lower_order_final: Option<bool>,
    pub euler_at_final: Option<bool>,
    pub final_sigmas_type: Option<String>,
    #[serde(deserialize_with = "opt_f64_any", serialize_with = "opt_f64_json")]
    pub lambda_min_clipped: Option<f64>,
    pub use_karras_sigmas: Option<bool>,
    pub use_exponential_sigmas: Option<bool>,
    pub use_beta_sigmas: Option<bool>,
    pub use_lu_lambdas: Option<bool>,
    pub use_flow_sigmas: Option<bool>,
    pub flow_shift: Option<f64>,
    pub use_dynamic_shifting: Option<bool>,
    pub time_shift_type: Option<String>,
    pub interpolation_type: Option<String>,
    pub timestep_type: Option<String>,
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
}

impl SchedulerConfig {
    /// Reads a `scheduler_config.json`; errors name the file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&text).map_err(|e| Error::file(path, e))
    }

    /// Parses config JSON. Python's `json` writes `-Infinity`/`Infinity`/`NaN` (diffusers' default
    /// `lambda_min_clipped` is `-inf`), which strict JSON rejects, so those literals are accepted too.
    pub fn from_json_str(text: &str) -> Result<Self> {
        serde_json::from_str(&quote_nonfinite(text))
            .map_err(|e| Error::Msg(format!("bad scheduler config: {e}")))
    }
}

/// Wraps the bare literals `NaN`, `Infinity` and `-Infinity` outside strings in quotes, so that strict JSON
/// parsing accepts a file written by Python; [`f64_any`] turns them back into numbers.
fn quote_nonfinite(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let (mut in_string, mut escaped) = (false, false);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            in_string = escaped || c != '"';
            escaped = !escaped && c == '\\';
        } else if c == '"' {
            in_string = true;
        } else if let Some(lit) = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|l| rest.starts_with(l))
        {
            out.push('"');
            out.push_str(lit);
            out.push('"');
            rest = &rest[lit.len()..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrLiteral {
    Number(f64),
    Literal(String),
}

/// Deserializes a JSON number or one of the quoted non-finite literals of [`quote_nonfinite`].
fn f64_any<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    match NumberOrLiteral::deserialize(d)? {
        NumberOrLiteral::Number(x) => Ok(x),
        NumberOrLiteral::Literal(s) => match s.as_str() {
            "-Infinity" => Ok(f64::NEG_INFINITY),
            "Infinity" => Ok(f64::INFINITY),
            "NaN" => Ok(f64::NAN),
            other => Err(serde::de::Error::custom(format!(
                "expected a number, got {other:?}"
            ))),
        },
    }
}

fn opt_f64_any<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    struct Wrap(#[serde(deserialize_with = "f64_any")] f64);
    Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
}

/// Serializes a float the way Python's `json` does, non-finite values as the (quoted) literal.
pub(super) fn f64_json<S: Serializer>(x: &f64, s: S) -> std::result::Result<S::Ok, S::Error> {
    match *x {
        x if x.is_nan() => s.serialize_str("NaN"),
        f64::INFINITY => s.serialize_str("Infinity"),
        f64::NEG_INFINITY => s.serialize_str("-Infinity"),
        x => s.serialize_f64(x),
    }
}

fn opt_f64_json<S: Serializer>(x: &Option<f64>, s: S) -> std::result::Result<S::Ok, S::Error> {
    match x {
        Some(x) => f64_json(x, s),
        None => s.serialize_none(),
    }
}

/// The samplers persona implements, plus PNDM, which models name in their config but which we don't sample
/// with (see [`SchedulerKind::sampler`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchedulerKind {
    Ddim,
    /// DPM-Solver++ (2M with the default `solver_order` 2).
    DpmSolverMultistep,
    Euler,
    EulerAncestral,
    Ddpm,
    Pndm,
}

impl SchedulerKind {
    const ALL: [SchedulerKind; 6] = [
        SchedulerKind::Ddim,
        SchedulerKind::DpmSolverMultistep,
        SchedulerKind::Euler,
        SchedulerKind::EulerAncestral,
        SchedulerKind::Ddpm,
        SchedulerKind::Pndm,
    ];

    /// The diffusers class name (`_class_name` of a config).
    pub fn class_name(self) -> &'static str {
        match self {
            SchedulerKind::Ddim => "DDIMScheduler",
            SchedulerKind::DpmSolverMultistep => "DPMSolverMultistepScheduler",
            SchedulerKind::Euler => "EulerDiscreteScheduler",
            SchedulerKind::EulerAncestral => "EulerAncestralDiscreteScheduler",
            SchedulerKind::Ddpm => "DDPMScheduler",
            SchedulerKind::Pndm => "PNDMScheduler",
        }
    }

    /// The command-line name; PNDM has none because it can't be chosen.
    pub fn cli_name(self) -> Option<&'static str> {
        match self {
            SchedulerKind::Ddim => Some("ddim"),
            SchedulerKind::DpmSolverMultistep => Some("dpm++2m"),
            SchedulerKind::Euler => Some("euler"),
            SchedulerKind::EulerAncestral => Some("euler-a"),
            SchedulerKind::Ddpm => Some("ddpm"),
            SchedulerKind::Pndm => None,
        }
    }

    /// The command-line names, for help texts.
    pub fn cli_names() -> Vec<&'static str> {
        Self::ALL.iter().filter_map(|k| k.cli_name()).collect()
    }

    /// The scheduler that actually samples for this kind: PNDM maps to DDIM.
    ///
    /// PNDM as SD configures it (`skip_prk_steps`) is PLMS: DDIM's update rule on DDIM's timestep grid, fed
    /// with a 4th-order linear combination of past noise predictions. DDIM on the same config (same
    /// `leading` grid with `steps_offset`, same `set_alpha_to_one`) is therefore its closest deterministic
    /// relative; it is also what Celeb Basis samples with.
    pub fn sampler(self) -> SchedulerKind {
        match self {
            SchedulerKind::Pndm => SchedulerKind::Ddim,
            other => other,
        }
    }

    /// The sampler to use when the user chose none: the model config's class (via [`Self::sampler`]), or
    /// DDIM when the class is missing or one persona doesn't know (with a warning).
    pub fn for_model(config: &SchedulerConfig) -> SchedulerKind {
        match config.class_name.as_deref().map(Self::from_str) {
            Some(Ok(kind)) => kind.sampler(),
            Some(Err(_)) | None => {
                tracing::warn!(class = ?config.class_name, "unknown scheduler class in the model config; sampling with DDIM");
                SchedulerKind::Ddim
            }
        }
    }
}

impl FromStr for SchedulerKind {
    type Err = Error;

    /// Accepts the command-line names (`ddim|dpm++2m|euler|euler-a|ddpm`) and diffusers class names.
    fn from_str(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.class_name() == name || k.cli_name() == Some(name))
            .ok_or_else(|| {
                Error::Msg(format!(
                    "unknown scheduler {name:?}; expected one of {}",
                    Self::cli_names().join(", ")
                ))
            })
    }
}

impl std::fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.cli_name().unwrap_or(self.class_name()))
    }
}

/// The β-schedule keys, which every scheduler class knows with the same defaults.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BetaConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub trained_betas: Option<Vec<f64>>,
    pub rescale_betas_zero_snr: bool,
}

impl BetaConfig {
    pub fn from_config(c: &SchedulerConfig) -> Self {
        BetaConfig {
            num_train_timesteps: c.num_train_timesteps.unwrap_or(1000),
            beta_start: c.beta_start.unwrap_or(0.0001),
            beta_end: c.beta_end.unwrap_or(0.02),
            beta_schedule: c.beta_schedule.unwrap_or(BetaSchedule::Linear),
            trained_betas: c.trained_betas.clone(),
            rescale_betas_zero_snr: c.rescale_betas_zero_snr.unwrap_or(false),
        }
    }
}

/// Fails with a message naming the scheduler and the option when `supported` is false.
pub(crate) fn require(
    supported: bool,
    kind: SchedulerKind,
    option: impl std::fmt::Display,
) -> Result<()> {
    if supported {
        Ok(())
    } else {
        Err(Error::Msg(format!(
            "{}: {option} is not supported",
            kind.class_name()
        )))
    }
}
