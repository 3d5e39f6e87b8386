//! `persona bench generate`: one whole image on random weights, as a user's `persona generate` makes it.

use std::path::PathBuf;

use anyhow::Result;
use candle_core::DType;
use clap::Args;
use persona_diffusion::models::clip_text::Output;
use persona_diffusion::models::{AutoencoderKL, ClipTextModel, UNet2DConditionModel};
use persona_diffusion::nn::Weights;
use persona_diffusion::pipeline::{GenerateParams, StableDiffusion};
use persona_diffusion::schedulers::{SchedulerConfig, SchedulerKind};
use persona_diffusion::tokenizer::ClipTokenizer;

use super::{emit, time, Arch};
use crate::device_flags::{DeviceArgs, Placement};

#[derive(Args, Debug)]
pub struct GenerateBench {
    #[arg(long, value_enum, default_value = "sd21-base")]
    arch: Arch,
    /// DDIM steps.
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Latent size (64 = 512² images).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Classifier-free guidance scale (7.5: two UNet rows per step).
    #[arg(long, default_value_t = 7.5)]
    guidance: f64,
    /// Timed images after one warm-up image.
    #[arg(long, default_value_t = 2, value_parser = crate::values::positive)]
    runs: usize,
    #[command(flatten)]
    device: DeviceArgs,
}

/// A pipeline on seeded random weights assembled in memory (no files): the architecture's models on the
/// placement, the tokenizer and scheduler config of its companion fixture (the real ones of SD 2.x / 1.x).
pub fn random_pipeline(arch: Arch, place: &Placement) -> Result<StableDiffusion> {
    let (device, dtype) = (place.device.clone(), place.dtype);
    let w = Weights::random_as(0, &device, dtype);
    let text_encoder = ClipTextModel::load(&w.pp("text_encoder"), &arch.text_config()?)?;
    let unet = UNet2DConditionModel::load(&w.pp("unet"), &arch.unet_config()?)?;
    // As the loader does: an f16 VAE runs in f32 (diffusers' force_upcast).
    let vae_dtype = if dtype == DType::F16 {
        DType::F32
    } else {
        dtype
    };
    let vae = AutoencoderKL::load(
        &Weights::random_as(0, &device, vae_dtype).pp("vae"),
        &arch.vae_config()?,
    )?;
    let companion = arch.companion()?;
    let tokenizer = ClipTokenizer::from_dir(companion.join("tokenizer"))?;
    let scheduler_config =
        SchedulerConfig::from_file(companion.join("scheduler/scheduler_config.json"))?;
    let dir = PathBuf::from(format!("<random {}>", arch.name()));
    Ok(StableDiffusion {
        tokenizer,
        text_encoder,
        sdxl: None,
        unet,
        vae,
        scheduler_config,
        dir,
        device,
        dtype,
    })
}

pub fn run(a: &GenerateBench) -> Result<()> {
    let place = a.device.resolve()?;
    place.announce();
    let sd = random_pipeline(a.arch, &place)?;
    let side = a.size * sd.vae_scale();
    let params = GenerateParams {
        prompt: "a photo of an astronaut riding a horse on the moon".into(),
        negative_prompt: String::new(),
        steps: a.steps,
        guidance: a.guidance,
        scheduler: Some(SchedulerKind::Ddim),
        height: side,
        width: side,
        seed: 0,
        num_images: 1,
        batch_size: 1,
        latents: None,
        text_output: Output::Last,
        tokens: vec![],
    };
    let timing = time(&sd.device, a.runs, || {
        let images = sd.generate(&params, &mut |_| {})?;
        // The image in host memory, as `output_type="np"` gives it to a diffusers user.
        images.to_device(&candle_core::Device::Cpu)?;
        Ok(())
    })?;
    let fields = serde_json::json!({
        "part": "Generate", "arch": format!("{:?}", a.arch), "size": a.size, "steps": a.steps,
        "guidance": a.guidance, "scheduler": "ddim", "images": 1,
    });
    emit(fields, Some(timing), &sd.device, sd.dtype);
    Ok(())
}
