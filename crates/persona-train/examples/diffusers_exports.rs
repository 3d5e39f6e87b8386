//! Writes the exports `tools/identity/check_diffusers_load.py` loads into diffusers: an SD 2.x identity (on
//! fixtures/sd2-tiny) as saved, diffusers and A1111 files, an SDXL one (widths 32 / 48, fixtures/sdxl-tiny's)
//! as the diffusers pair and the A1111 clip_l / clip_g file, and the vectors each must hold.
//!
//! `cargo run -p persona-train --example diffusers_exports -- OUT_DIR`

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use persona_identity::{export_a1111, export_diffusers, import, BaseModel, Identity, IdentityMeta};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn write_expected(
    path: &Path,
    tensors: &[(&str, Tensor)],
) -> Result<(), Box<dyn std::error::Error>> {
    let data = safetensors::serialize(tensors.iter().map(|(k, v)| (*k, v.clone())), None)?;
    std::fs::write(path, data)?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or("usage: diffusers_exports OUT_DIR")?,
    );
    std::fs::create_dir_all(&out)?;

    let embeddings = Tensor::randn(0f32, 1.0, (2, 32), &Device::Cpu)?;
    let base = BaseModel::from_model_dir(repo().join("fixtures/sd2-tiny"))?;
    let meta = IdentityMeta::new("cross-init", base, serde_json::json!({ "steps": 50 }));
    let identity = Identity::new("<alice>", embeddings, meta)?;
    identity.save(out.join("identity.safetensors"))?;
    export_diffusers(&identity, out.join("diffusers.safetensors"))?;
    export_a1111(&identity, out.join("a1111.safetensors"))?;
    write_expected(
        &out.join("expected.safetensors"),
        &[("vectors", identity.embeddings.clone())],
    )?;

    let imported = import(repo().join("fixtures/identity/a1111_sdxl.safetensors"))?;
    let xl = Identity::from_imported(imported, Some("<xl>"), None)?;
    export_diffusers(&xl, out.join("sdxl_diffusers.safetensors"))?;
    export_a1111(&xl, out.join("sdxl_a1111.safetensors"))?;
    let clip_g = xl
        .rows_2()
        .ok_or("the SDXL fixture has no clip_g rows")?
        .clone();
    write_expected(
        &out.join("sdxl_expected.safetensors"),
        &[("clip_l", xl.embeddings.clone()), ("clip_g", clip_g)],
    )?;
    println!("wrote {}", out.display());
    Ok(())
}
