//! `persona generate`: prompt → PNGs that carry their parameters, plus `params.json`.

use std::path::PathBuf;

use crate::sampling_flags::{IdentityArgs, ModelArgs, SamplingArgs, SizeArgs};
use crate::values;
use anyhow::{bail, Context, Result};
use clap::Args;
use persona_diffusion::models::clip_text::Output;
use persona_diffusion::pipeline::image::{to_rgb8, write_atomic, write_png};
use persona_diffusion::pipeline::{
    expand_prompt, GenerateParams, MicroConditioning, StableDiffusion,
};
use persona_identity::{AdapterUse, Applied};

/// Images are written as DIR/0000.png, 0001.png, … with the generation parameters in a PNG text chunk
/// (`parameters`, as AUTOMATIC1111 writes it, and `persona` as JSON), and DIR/params.json for the whole run.
/// Image i uses seed S+i, so one image can be regenerated alone with `--seed S+i --num-images 1`.
#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  persona generate --model fixtures/sd2-tiny --prompt \"a photo of a person\" --out out/\n  \
persona generate --model stabilityai/stable-diffusion-2-1-base --prompt \"a dog\" --scheduler dpm++2m --steps 50 --guidance 7.5 --out out/"
)]
pub struct GenerateArgs {
    #[command(flatten)]
    base: ModelArgs,
    #[arg(long)]
    prompt: String,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    size: SizeArgs,
    /// How many images (image i uses seed + i).
    #[arg(long, default_value_t = 1, value_parser = values::positive)]
    num_images: usize,
    /// Images denoised together.
    #[arg(long, default_value_t = 1, value_parser = values::positive)]
    batch_size: usize,
    /// A safetensors file with one tensor `latents` [N, 4, H/f, W/f] used instead of drawn noise (scaled by
    /// the scheduler's init_noise_sigma like drawn noise), to reproduce another implementation exactly.
    #[arg(long)]
    latents: Option<PathBuf>,
    /// Take the condition this many layers before the text encoder's last (diffusers' clip_skip).
    #[arg(long)]
    clip_skip: Option<usize>,
    /// SDXL micro-conditioning: the original image size H,W the model is told (default: --height,--width).
    #[arg(long, value_parser = parse_pair, value_name = "H,W")]
    original_size: Option<(usize, usize)>,
    /// SDXL micro-conditioning: the crop's top-left corner T,L (default 0,0).
    #[arg(long, value_parser = parse_pair, value_name = "T,L")]
    crop_top_left: Option<(usize, usize)>,
    /// SDXL micro-conditioning: the target size H,W (default: --height,--width).
    #[arg(long, value_parser = parse_pair, value_name = "H,W")]
    target_size: Option<(usize, usize)>,
    #[command(flatten)]
    ids: IdentityArgs,
    /// ID-EA identities: `apply` their adapters (and cross-attention deltas) as trained, or `train-only`: use
    /// only their tokens, as the released ID-EA code does at inference.
    #[arg(long, value_enum, default_value = "apply")]
    adapter: AdapterUse,
    /// Output folder (created if missing, once the first image is made).
    #[arg(long)]
    out: PathBuf,
    /// Replace images and params.json already in --out (without it, a run that would replace any refuses).
    #[arg(long)]
    overwrite: bool,
    #[command(flatten)]
    device: crate::device_flags::DeviceArgs,
}

/// `A,B` → (A, B).
fn parse_pair(s: &str) -> std::result::Result<(usize, usize), String> {
    let parse = |v: &str| v.trim().parse::<usize>().ok();
    match s.split_once(',') {
        Some((a, b)) => parse(a).zip(parse(b)),
        None => None,
    }
    .ok_or_else(|| format!("expected two whole numbers as A,B (e.g. 1024,1024), got {s:?}"))
}

fn read_latents(path: &PathBuf) -> Result<candle_core::Tensor> {
    let mut tensors = candle_core::safetensors::load(path, &candle_core::Device::Cpu)
        .with_context(|| format!("{}: not a readable safetensors file", path.display()))?;
    let t = tensors
        .remove("latents")
        .with_context(|| format!("{}: no tensor named `latents`", path.display()))?;
    let t = t.to_dtype(candle_core::DType::F32)?;
    if !persona_diffusion::nn::all_finite(&t)? {
        bail!(
            "{}: tensor `latents` holds NaN or infinite values",
            path.display()
        );
    }
    Ok(t)
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let s = &a.sampling;
    let place = a.device.resolve()?;
    let sd = StableDiffusion::load(&a.base.model, &place.load_options(a.base.variant.clone()))?;
    place.announce();
    let micro = MicroConditioning {
        original_size: a.original_size,
        crop_top_left: a.crop_top_left.unwrap_or((0, 0)),
        target_size: a.target_size,
    };
    let micro_given =
        a.original_size.is_some() || a.crop_top_left.is_some() || a.target_size.is_some();
    if micro_given && !sd.is_sdxl() {
        bail!("--original-size, --crop-top-left and --target-size are SDXL micro-conditioning; {} is not an SDXL model", a.base.model);
    }
    let size = sd.default_size();
    let latents = a
        .latents
        .as_ref()
        .map(read_latents)
        .transpose()?
        .map(|l| l.to_device(&sd.device))
        .transpose()?;
    let identities = persona_identity::load(&sd, &a.ids.identity, a.ids.force)?;
    let applied = Applied::new(&sd, &identities, a.adapter, s.guidance > 1.0)?;
    let prompt = expand_prompt(&a.prompt, &applied.names)?;
    let negative_prompt = expand_prompt(&s.negative_prompt, &applied.names)?;
    let num_images = match &latents {
        Some(l) if a.num_images != 1 && a.num_images != l.dim(0)? => {
            bail!(
                "--num-images {} but the latents file holds {}",
                a.num_images,
                l.dim(0)?
            )
        }
        Some(l) => l.dim(0)?,
        None => a.num_images,
    };
    let (height, width) = a.size.or(size);
    let params = GenerateParams {
        prompt,
        negative_prompt,
        steps: s.steps,
        guidance: s.guidance,
        scheduler: s.scheduler,
        height,
        width,
        seed: s.seed,
        num_images,
        batch_size: a.batch_size,
        latents,
        text_output: a.clip_skip.map_or(Output::Last, Output::Skip),
        tokens: applied.tokens.clone(),
    };
    let names: Vec<String> = (0..num_images)
        .map(|i| format!("{i:04}.png"))
        .chain(["params.json".to_string()])
        .collect();
    crate::output::check_out_dir(&a.out, &names, a.overwrite, "--out")?;
    let batches = num_images.div_ceil(a.batch_size.max(1));
    let bar = crate::progress::bar((batches * s.steps) as u64, "denoising");
    let control = applied.control();
    let scheduler = sd.scheduler_kind(s.scheduler);
    let mut record = serde_json::json!({
        "model": a.base.model, "variant": a.base.variant, "prompt": a.prompt, "negative_prompt": s.negative_prompt,
        "steps": s.steps, "guidance": s.guidance, "scheduler": scheduler.cli_name(),
        "height": params.height, "width": params.width, "seed": s.seed, "num_images": num_images,
        "latents": a.latents, "clip_skip": a.clip_skip, "identities": a.ids.identity,
        "adapter": format!("{:?}", a.adapter).to_lowercase(),
        "device": place.device_name(), "dtype": place.dtype_name(),
    });
    if sd.is_sdxl() {
        let size = (params.height, params.width);
        record["original_size"] = serde_json::json!(micro.original_size.unwrap_or(size));
        record["crop_top_left"] = serde_json::json!(micro.crop_top_left);
        record["target_size"] = serde_json::json!(micro.target_size.unwrap_or(size));
    }
    // Each batch is written as soon as it is decoded: a run stopped half-way keeps the images it finished.
    let mut write_batch = |first: usize,
                           images: candle_core::Tensor|
     -> persona_diffusion::Result<()> {
        std::fs::create_dir_all(&a.out).map_err(|e| persona_diffusion::Error::io(&a.out, e))?;
        for (k, img) in to_rgb8(&images)?.iter().enumerate() {
            let i = first + k;
            let mut one = record.clone();
            one["seed"] = serde_json::json!(s.seed.wrapping_add(i as u64));
            one["index"] = serde_json::json!(i);
            let a1111 = format!(
                "{}\nNegative prompt: {}\nSteps: {}, Sampler: {}, CFG scale: {}, Seed: {}, Size: {}x{}, Model: {}, Device: {}, Dtype: {}",
                a.prompt, s.negative_prompt, s.steps, scheduler.cli_name().unwrap_or("?"), s.guidance,
                s.seed.wrapping_add(i as u64), params.width, params.height, a.base.model, place.device_name(), place.dtype_name()
            );
            write_png(
                &a.out.join(format!("{i:04}.png")),
                img,
                &[("parameters", a1111), ("persona", one.to_string())],
            )?;
        }
        Ok(())
    };
    sd.generate_each(
        &params,
        &micro,
        control,
        &mut |p| bar.set_position((p.batch * p.steps + p.step) as u64),
        &mut write_batch,
    )?;
    bar.finish_and_clear();
    write_atomic(
        &a.out.join("params.json"),
        serde_json::to_string_pretty(&record)?.as_bytes(),
    )?;
    eprintln!("wrote {num_images} image(s) to {}", a.out.display());
    Ok(())
}
