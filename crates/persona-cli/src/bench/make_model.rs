//! `persona bench make-model`: a random-weight pipeline in the diffusers folder layout.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use clap::Args;
use persona_diffusion::device::Precision;
use persona_diffusion::models::{AutoencoderKL, ClipTextModel, UNet2DConditionModel};
use persona_diffusion::nn::Weights;

use super::Arch;

#[derive(Args, Debug)]
pub struct MakeModelArgs {
    /// The architecture (configs from fixtures/manifests/<arch>/, tiny: fixtures/sd2-tiny).
    #[arg(long, value_enum, default_value = "sd21-base")]
    arch: Arch,
    /// The folder to write (must not exist, or be empty).
    #[arg(long)]
    out: PathBuf,
    /// The weights' dtype in the files (f32 as the hub's main files; bf16 / f16 halve size and write time).
    #[arg(long, value_name = "f32|bf16|f16", default_value = "f32", value_parser = |s: &str| s.parse::<Precision>())]
    dtype: Precision,
    /// Seeds the weights (the same values `persona bench` draws for this seed).
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Every tensor `build` reads, with its shape (the state-dict manifest), without allocating any.
fn manifest(
    build: impl FnOnce(&Weights) -> persona_diffusion::Result<()>,
) -> Result<Vec<(String, Vec<usize>)>> {
    let w = Weights::recorder();
    build(&w)?;
    Ok(w.requested().into_iter().collect())
}

/// Writes `dir/config.json` and `dir/<file>`: every tensor of the manifest, seeded random, in `dtype`.
fn write_component(
    dir: &Path,
    config: &str,
    file: &str,
    tensors: &[(String, Vec<usize>)],
    seed: u64,
    dtype: DType,
) -> Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("config.json"), config)
        .with_context(|| format!("writing {}/config.json", dir.display()))?;
    let random = Weights::random_as(seed, &Device::Cpu, dtype);
    let mut map = HashMap::new();
    let mut params = 0;
    for (name, shape) in tensors {
        params += shape.iter().product::<usize>();
        map.insert(name.clone(), random.get(shape.as_slice(), name)?);
    }
    let path = dir.join(file);
    candle_core::safetensors::save(&map, &path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(params)
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

pub fn run(a: &MakeModelArgs) -> Result<()> {
    if a.out.exists() && std::fs::read_dir(&a.out)?.next().is_some() {
        bail!(
            "{} exists and is not empty; choose another --out (nothing was overwritten)",
            a.out.display()
        );
    }
    let dtype = a.dtype.dtype();
    let start = std::time::Instant::now();
    let companion = a.arch.companion()?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    std::fs::copy(
        companion.join("model_index.json"),
        a.out.join("model_index.json"),
    )?;
    copy_dir(&companion.join("tokenizer"), &a.out.join("tokenizer"))?;
    copy_dir(&companion.join("scheduler"), &a.out.join("scheduler"))?;
    let (tc, uc, vc) = (
        a.arch.text_config()?,
        a.arch.unet_config()?,
        a.arch.vae_config()?,
    );
    let te = manifest(|w| ClipTextModel::load(w, &tc).map(drop))?;
    let mut params = write_component(
        &a.out.join("text_encoder"),
        a.arch.config_text("text_encoder"),
        "model.safetensors",
        &te,
        a.seed,
        dtype,
    )?;
    let unet = manifest(|w| UNet2DConditionModel::load(w, &uc).map(drop))?;
    params += write_component(
        &a.out.join("unet"),
        a.arch.config_text("unet"),
        "diffusion_pytorch_model.safetensors",
        &unet,
        a.seed,
        dtype,
    )?;
    let vae = manifest(|w| AutoencoderKL::load(w, &vc).map(drop))?;
    params += write_component(
        &a.out.join("vae"),
        a.arch.config_text("vae"),
        "diffusion_pytorch_model.safetensors",
        &vae,
        a.seed,
        dtype,
    )?;
    eprintln!(
        "wrote a random-weight {} pipeline ({params} parameters, {}) to {}",
        a.arch.name(),
        dtype.as_str(),
        a.out.display()
    );
    let fields = serde_json::json!({
        "part": "MakeModel", "arch": a.arch.name(), "out": a.out, "parameters": params,
        "seconds": (start.elapsed().as_secs_f64() * 100.0).round() / 100.0,
    });
    super::emit(fields, None, &Device::Cpu, dtype);
    Ok(())
}
