//! A loaded Stable Diffusion pipeline (tokenizer, text encoder, UNet, VAE, scheduler config) and text-to-image
//! sampling with classifier-free guidance, as diffusers' `StableDiffusionPipeline` does it — or, for an SDXL
//! folder (`text_encoder_2`), as `StableDiffusionXLPipeline` does it (see [`sdxl`]).

mod generate;
pub mod image;
pub mod sdxl;
mod staged;
mod tokens;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

pub use generate::{seeded_normal, GenerateParams, Progress};
pub use sdxl::{MicroConditioning, Sdxl, TextEncoding};
pub use staged::stage_of;
pub use tokens::{expand_prompt, LearnedTokens};

use crate::loading::{component_files, resolve_model};
use crate::models::clip_text::{self, Output};
use crate::models::{unet, vae, AutoencoderKL, ClipTextModel, UNet2DConditionModel};
use crate::nn::Weights;
use crate::schedulers::SchedulerConfig;
use crate::tokenizer::ClipTokenizer;
use crate::{Error, Result};

/// Which weight files to read, onto which device, in which precision.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// e.g. `fp16` for `*.fp16.safetensors` files.
    pub variant: Option<String>,
    pub device: Device,
    /// The frozen models' dtype (see [`crate::device`]); the VAE runs f16 requests in f32, as diffusers
    /// upcasts an fp16 VAE whose config asks for it (`force_upcast`, true for SD 1.x/2.x).
    pub dtype: DType,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            variant: None,
            device: Device::Cpu,
            dtype: DType::F32,
        }
    }
}

impl LoadOptions {
    /// A variant on the CPU in f32 (tests, tools).
    pub fn variant(variant: Option<String>) -> Self {
        Self {
            variant,
            ..Self::default()
        }
    }
}

pub struct StableDiffusion {
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextModel,
    /// SDXL's second tokenizer and text encoder and its pipeline settings; `None` for SD 1.x/2.x.
    pub sdxl: Option<Sdxl>,
    pub unet: UNet2DConditionModel,
    pub vae: AutoencoderKL,
    pub scheduler_config: SchedulerConfig,
    pub dir: PathBuf,
    pub device: Device,
    /// The frozen models' dtype (the text encoder's and the UNet's).
    pub dtype: DType,
}

/// The largest default image side (`sample_size` × the VAE factor) a model may declare, in pixels: the
/// CLI's `--height`/`--width` limit.
pub const MAX_DEFAULT_SIDE: usize = 8192;

impl StableDiffusion {
    /// Loads a diffusers folder or a hub id from the local cache.
    pub fn load(model: &str, opts: &LoadOptions) -> Result<Self> {
        let dir = resolve_model(model)?;
        let (device, dtype) = (opts.device.clone(), opts.dtype);
        let variant = opts.variant.as_deref();
        let tokenizer = ClipTokenizer::from_dir(dir.join("tokenizer"))?;
        let text_encoder = load_component(
            &dir.join("text_encoder"),
            "model",
            variant,
            &device,
            dtype,
            |w, path| ClipTextModel::load(w, &clip_text::Config::read(path)?),
        )?;
        let unet = load_component(
            &dir.join("unet"),
            "diffusion_pytorch_model",
            variant,
            &device,
            dtype,
            |w, path| UNet2DConditionModel::load(w, &unet::Config::read(path)?),
        )?;
        let vae_dtype = if dtype == DType::F16 {
            DType::F32
        } else {
            dtype
        };
        let vae = load_component(
            &dir.join("vae"),
            "diffusion_pytorch_model",
            variant,
            &device,
            vae_dtype,
            |w, path| AutoencoderKL::load(w, &vae::Config::read(path)?),
        )?;
        let default_side = unet.config().sample_size * vae.config().downscale_factor();
        if default_side > MAX_DEFAULT_SIDE {
            return Err(Error::file(
                dir.join("unet/config.json"),
                format!(
                    "sample_size {} × the VAE factor {} = {default_side} pixels, over the {MAX_DEFAULT_SIDE} any image may have",
                    unet.config().sample_size,
                    vae.config().downscale_factor()
                ),
            ));
        }
        let scheduler_config =
            SchedulerConfig::from_file(dir.join("scheduler/scheduler_config.json"))?;
        let sdxl = if dir.join("text_encoder_2").is_dir() || unet.config().text_time() {
            Some(Sdxl::load(
                &dir,
                &unet,
                text_encoder.config().hidden_size,
                opts,
            )?)
        } else {
            None
        };
        Ok(Self {
            tokenizer,
            text_encoder,
            sdxl,
            unet,
            vae,
            scheduler_config,
            dir,
            device,
            dtype,
        })
    }

    /// Pixels per latent per side (8 for the real models).
    pub fn vae_scale(&self) -> usize {
        self.vae.config().downscale_factor()
    }

    /// Default image size: the UNet's `sample_size` × the VAE factor.
    pub fn default_size(&self) -> usize {
        self.unet.config().sample_size * self.vae_scale()
    }

    /// Token ids of prompts, padded to 77, as `[B, 77]` u32.
    pub fn tokenize(&self, prompts: &[&str]) -> Result<Tensor> {
        tokenize_with(&self.tokenizer, prompts, &self.device)
    }

    /// Text condition `[B, 77, d]` of prompts (SDXL: both encoders' states concatenated, `[B, 77, d1 + d2]`;
    /// [`Self::encode_text`] also gives the pooled embeddings).
    pub fn encode_prompts(&self, prompts: &[&str], output: Output) -> Result<Tensor> {
        if self.sdxl.is_some() {
            return Ok(self.encode_text(prompts, output)?.embeds);
        }
        self.text_encoder.forward(&self.tokenize(prompts)?, output)
    }

    /// Whether this is an SDXL pipeline.
    pub fn is_sdxl(&self) -> bool {
        self.sdxl.is_some()
    }
}

/// Token ids `[B, L]` u32 of prompts with one tokenizer.
fn tokenize_with(tokenizer: &ClipTokenizer, prompts: &[&str], device: &Device) -> Result<Tensor> {
    let rows = prompts
        .iter()
        .map(|p| tokenizer.encode(p))
        .collect::<Result<Vec<_>>>()?;
    let len = rows.first().map_or(0, Vec::len);
    Ok(Tensor::from_vec(
        rows.concat(),
        (prompts.len(), len),
        device,
    )?)
}

/// Opens a component folder's weights and config, builds it and reports every weight problem in one error.
fn load_component<T>(
    dir: &Path,
    stem: &str,
    variant: Option<&str>,
    device: &Device,
    dtype: DType,
    build: impl FnOnce(&Weights, &Path) -> Result<T>,
) -> Result<T> {
    let config = dir.join("config.json");
    if !config.is_file() {
        return Err(Error::file(config, "missing"));
    }
    let files = component_files(dir, stem, variant)?;
    let weights = Weights::from_files_as(&files, device, dtype)?;
    let model = build(&weights, &config)?;
    weights.finish()?;
    Ok(model)
}
