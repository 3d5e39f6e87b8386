//! The flags every command that loads a model or samples images shares (`generate`, `attention`, `eval`,
//! `train`): defined once, with one parser each, so that a flag means and checks the same everywhere. A
//! command whose default differs (fewer `attention` steps, `eval`'s protocol seed 42) changes only the
//! default, with `#[command(mut_arg(..))]`.

use std::path::PathBuf;

use clap::Args;
use persona_diffusion::schedulers::SchedulerKind;

use crate::values;

/// The base model.
#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// A diffusers pipeline folder, or a hub id already in the local Hugging Face cache.
    #[arg(long)]
    pub model: String,
    /// Weight variant to load (e.g. fp16 for *.fp16.safetensors).
    #[arg(long)]
    pub variant: Option<String>,
}

/// How the images are sampled.
#[derive(Args, Clone, Debug)]
pub struct SamplingArgs {
    /// What to steer away from (the unconditional branch of classifier-free guidance).
    #[arg(long, default_value = "")]
    pub negative_prompt: String,
    /// Denoising steps.
    #[arg(long, default_value_t = 50, value_parser = values::positive)]
    pub steps: usize,
    /// Classifier-free guidance scale (finite, ≥ 0); 1 or less disables guidance.
    #[arg(long, default_value_t = 7.5, value_parser = values::non_negative, allow_negative_numbers = true)]
    pub guidance: f64,
    /// Sampler: ddim, dpm++2m, euler, euler-a or ddpm (default: the model's own scheduler; PNDM configs
    /// sample with DDIM).
    #[arg(long, value_parser = parse_scheduler)]
    pub scheduler: Option<SchedulerKind>,
    /// Seed of the first image (image i uses seed + i).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// The image size.
#[derive(Args, Clone, Copy, Debug)]
pub struct SizeArgs {
    /// Image height in pixels (default: the UNet's sample_size × the VAE factor; at most 8192).
    #[arg(long, value_parser = values::image_side)]
    pub height: Option<usize>,
    /// Image width in pixels (as --height).
    #[arg(long, value_parser = values::image_side)]
    pub width: Option<usize>,
}

impl SizeArgs {
    /// (height, width), each defaulting to the model's side.
    pub fn or(self, side: usize) -> (usize, usize) {
        (self.height.unwrap_or(side), self.width.unwrap_or(side))
    }
}

/// The identities drawn.
#[derive(Args, Clone, Debug)]
pub struct IdentityArgs {
    /// An identity file (repeatable): `{}`/`{0}` in the prompt is the first identity, `{1}` the second, and
    /// each identity's name (e.g. `<alice>`) expands to its pseudo-tokens.
    #[arg(long)]
    pub identity: Vec<PathBuf>,
    /// Use an identity even if it was trained on another base model with the same text width.
    #[arg(long)]
    pub force: bool,
}

/// The one parser of `--scheduler`: the command-line names and diffusers class names.
fn parse_scheduler(s: &str) -> Result<SchedulerKind, String> {
    s.parse::<SchedulerKind>().map_err(|e| e.to_string())
}
