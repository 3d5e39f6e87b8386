//! `persona bench`: speed and memory of model parts and of whole generations on random weights with the real
//! architectures (to compare with the peer scripts in `tools/bench/`, see docs/performance.md), random-weight
//! pipelines on disk (`make-model`), and the CPU-vs-GPU equality check (`equality`). Every part prints one JSON
//! line on stdout (tables and notes go to stderr), so scripts such as `tools/gpu/check.sh` can collect them.

mod conv;
mod conv_grad;
mod equality;
mod generate;
mod gradcheck;
mod make_model;
mod parts;
mod sdxl;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::{DType, Device};
use clap::{Args, Subcommand, ValueEnum};
use persona_diffusion::models::{clip_text, unet, vae};

#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  persona bench unet --batch 2 --device cuda --dtype bf16\n  \
persona bench generate --steps 50 --device cuda\n  persona bench train-step --method idea --batch 8 --device cuda\n  \
persona bench make-model --arch sd21-base --out /tmp/sd21-random\n  persona bench equality --model fixtures/sd2-tiny --devices cpu,cuda\n  persona bench gradcheck --device cuda"
)]
pub struct BenchArgs {
    #[command(subcommand)]
    part: Part,
}

#[derive(Subcommand, Debug)]
enum Part {
    /// UNet forward on [B, 4, S, S] latents with a [B, 77, d] condition.
    Unet(parts::ModelArgs),
    /// Text-encoder forward on [B, 77] token ids.
    TextEncoder(parts::ModelArgs),
    /// VAE encoder on [B, 3, 8S, 8S] images (the posterior, as training encodes its photos).
    VaeEncode(parts::ModelArgs),
    /// VAE decoder on [B, 4, S, S] latents (the end of every generation).
    VaeDecode(parts::ModelArgs),
    /// One training step: text encoder with 2 learned rows (+ ID-EA's modules for --method idea / idea-kv) and
    /// UNet, forward and backward to the learned tensors (timed without the optimizer update, which is
    /// negligible). Reports peak memory: the GPU's on CUDA (weights included), the process's peak RSS on the CPU.
    TrainStep(parts::ModelArgs),
    /// One whole generation on random weights: prompt encoding, --steps DDIM steps with classifier-free guidance,
    /// VAE decode; seconds per image.
    Generate(generate::GenerateBench),
    /// Write a random-weight pipeline (seeded, as the benchmarks draw it) in the exact diffusers folder layout,
    /// loadable by `--model DIR` (and by diffusers): model_index.json, scheduler/, tokenizer/, text_encoder/,
    /// unet/, vae/. Lets a GPU machine run a whole `persona train` on the real architecture without a download.
    MakeModel(make_model::MakeModelArgs),
    /// Check that two devices compute the same thing on a (tiny) pipeline: images from the same latents with
    /// DDIM, DPM-Solver++ 2M and Euler (f32 on both; the second device in bf16 too, reported only), and one
    /// training step of ti, cross-init, idea and sefi (loss and every gradient). Prints a table; exits non-zero
    /// when an f32 tolerance is exceeded.
    Equality(equality::EqualityArgs),
    /// The building blocks' gradient checks on a device: every differentiable op in f64 against finite
    /// differences (and only the input in the gradient store), in f32 against the checked f64 (the CPU's own
    /// f32 kernels), and in bf16 and f16 against f32 (value and input gradient). The same suites `cargo test`
    /// runs on the CPU; exits non-zero when one fails.
    Gradcheck(gradcheck::GradcheckArgs),
    /// The input gradient of SD's stride-2 downsampling convolutions, two ways: persona's (zero-dilated
    /// gradient, flipped kernel, one stride-1 convolution) and candle's `conv_transpose2d`; seconds of each and
    /// their largest difference, one JSON line per downsampler.
    ConvGrad(conv_grad::ConvGradArgs),
    /// SD's 3×3 stride-1 convolutions alone (UNet levels 64² to 8², the VAE's 128 channels at 256²): forward
    /// and input gradient in GFLOP/s, best of --runs, one JSON line per shape; `tools/bench/conv.py` is the
    /// PyTorch peer.
    Conv(conv::ConvArgs),
}

/// A model architecture (random weights).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Arch {
    /// stabilityai/stable-diffusion-2-1-base.
    Sd21Base,
    /// runwayml/stable-diffusion-v1-5.
    Sd15,
    /// The tiny SD 2.x-style test pipeline's configs (fixtures/sd2-tiny): for tests and smoke runs.
    Tiny,
    /// stabilityai/stable-diffusion-xl-base-1.0 (unet, text-encoder, train-step; use --size 128 for 1024²).
    Sdxl,
    /// The tiny SDXL test pipeline's configs (fixtures/sdxl-tiny).
    SdxlTiny,
}

impl Arch {
    pub fn config_text(self, component: &str) -> &'static str {
        match (self, component) {
            (Arch::Sd21Base, "unet") => {
                include_str!("../../../../fixtures/manifests/sd21-base/unet/config.json")
            }
            (Arch::Sd21Base, "vae") => {
                include_str!("../../../../fixtures/manifests/sd21-base/vae/config.json")
            }
            (Arch::Sd21Base, _) => {
                include_str!("../../../../fixtures/manifests/sd21-base/text_encoder/config.json")
            }
            (Arch::Sd15, "unet") => {
                include_str!("../../../../fixtures/manifests/sd15/unet/config.json")
            }
            (Arch::Sd15, "vae") => {
                include_str!("../../../../fixtures/manifests/sd15/vae/config.json")
            }
            (Arch::Sd15, _) => {
                include_str!("../../../../fixtures/manifests/sd15/text_encoder/config.json")
            }
            (Arch::Tiny, "unet") => include_str!("../../../../fixtures/sd2-tiny/unet/config.json"),
            (Arch::Tiny, "vae") => include_str!("../../../../fixtures/sd2-tiny/vae/config.json"),
            (Arch::Tiny, _) => {
                include_str!("../../../../fixtures/sd2-tiny/text_encoder/config.json")
            }
            (Arch::Sdxl, "unet") => {
                include_str!("../../../../fixtures/manifests/sdxl-base/unet/config.json")
            }
            (Arch::Sdxl, "vae") => {
                include_str!("../../../../fixtures/manifests/sdxl-base/vae/config.json")
            }
            (Arch::Sdxl, "text_encoder_2") => {
                include_str!("../../../../fixtures/manifests/sdxl-base/text_encoder_2/config.json")
            }
            (Arch::Sdxl, _) => {
                include_str!("../../../../fixtures/manifests/sdxl-base/text_encoder/config.json")
            }
            (Arch::SdxlTiny, "unet") => {
                include_str!("../../../../fixtures/sdxl-tiny/unet/config.json")
            }
            (Arch::SdxlTiny, "vae") => {
                include_str!("../../../../fixtures/sdxl-tiny/vae/config.json")
            }
            (Arch::SdxlTiny, "text_encoder_2") => {
                include_str!("../../../../fixtures/sdxl-tiny/text_encoder_2/config.json")
            }
            (Arch::SdxlTiny, _) => {
                include_str!("../../../../fixtures/sdxl-tiny/text_encoder/config.json")
            }
        }
    }

    pub fn unet_config(self) -> Result<unet::Config> {
        Ok(serde_json::from_str(self.config_text("unet"))?)
    }

    pub fn text_config(self) -> Result<clip_text::Config> {
        Ok(serde_json::from_str(self.config_text("text_encoder"))?)
    }

    pub fn vae_config(self) -> Result<vae::Config> {
        Ok(serde_json::from_str(self.config_text("vae"))?)
    }

    /// The pipeline folder whose tokenizer, scheduler config and model_index.json this architecture shares:
    /// SD 2.x's (`!` padding) for sd21-base and tiny, SD 1.x's for sd15.
    pub fn companion(self) -> Result<PathBuf> {
        if self.is_sdxl() {
            bail!(
                "--arch {}: only `bench unet`, `text-encoder` and `train-step` build SDXL",
                self.name()
            );
        }
        Ok(fixtures_dir()?.join(if self == Arch::Sd15 {
            "sd1-tiny"
        } else {
            "sd2-tiny"
        }))
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::Sd21Base => "sd21-base",
            Arch::Sd15 => "sd15",
            Arch::Tiny => "tiny",
            Arch::Sdxl => "sdxl",
            Arch::SdxlTiny => "sdxl-tiny",
        }
    }

    pub fn is_sdxl(self) -> bool {
        matches!(self, Arch::Sdxl | Arch::SdxlTiny)
    }
}

/// The repository's `fixtures/`: `./fixtures` when run from a checkout's root (as tools/gpu/check.sh does),
/// else the one this binary was built from.
pub fn fixtures_dir() -> Result<PathBuf> {
    let here = PathBuf::from("fixtures");
    if here.join("sd2-tiny").is_dir() {
        return Ok(here);
    }
    let built = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures"));
    if built.join("sd2-tiny").is_dir() {
        return Ok(built);
    }
    bail!("fixtures/ not found: run from the repository's root")
}

/// Seconds of each of `runs` timed calls after one warm-up, waiting for the device to finish each.
pub fn time(device: &Device, runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<Timing> {
    f()?;
    device.synchronize()?;
    let mut times = Vec::new();
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        f()?;
        device.synchronize()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(Timing::of(times))
}

/// Best, mean and median of timed runs.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub best: f64,
    pub mean: f64,
    pub median: f64,
}

impl Timing {
    fn of(mut times: Vec<f64>) -> Self {
        times.sort_by(f64::total_cmp);
        let n = times.len();
        let median = if n % 2 == 1 {
            times[n / 2]
        } else {
            (times[n / 2 - 1] + times[n / 2]) / 2.0
        };
        Self {
            best: times[0],
            mean: times.iter().sum::<f64>() / n as f64,
            median,
        }
    }

    /// The timing's JSON fields (rounded to 0.1 ms).
    fn json(&self) -> serde_json::Value {
        let r = |x: f64| (x * 1e4).round() / 1e4;
        serde_json::json!({"best_s": r(self.best), "mean_s": r(self.mean), "median_s": r(self.median)})
    }
}

/// Prints one JSON line: `fields`, the timing, device, dtype and threads.
pub fn emit(mut fields: serde_json::Value, timing: Option<Timing>, device: &Device, dtype: DType) {
    if let Some(t) = timing {
        for (k, v) in t.json().as_object().expect("object") {
            fields[k] = v.clone();
        }
    }
    fields["device"] = persona_diffusion::device::device_name(device).into();
    fields["dtype"] = dtype.as_str().into();
    fields["threads"] = candle_core::utils::get_num_threads().into();
    println!("{fields}");
}

pub fn run(a: BenchArgs) -> Result<()> {
    match a.part {
        Part::Unet(m) => parts::run(parts::Which::Unet, &m),
        Part::TextEncoder(m) => parts::run(parts::Which::TextEncoder, &m),
        Part::VaeEncode(m) => parts::run(parts::Which::VaeEncode, &m),
        Part::VaeDecode(m) => parts::run(parts::Which::VaeDecode, &m),
        Part::TrainStep(m) => parts::run(parts::Which::TrainStep, &m),
        Part::Generate(g) => generate::run(&g),
        Part::MakeModel(m) => make_model::run(&m),
        Part::Equality(e) => equality::run(&e),
        Part::Gradcheck(g) => gradcheck::run(&g),
        Part::ConvGrad(c) => conv_grad::run(&c),
        Part::Conv(c) => conv::run(&c),
    }
}
