//! Writing an identity in the formats other tools load. Both are safetensors (never pickle), so whoever
//! receives the file can open it without running code.
//!
//! - diffusers `load_textual_inversion`: one tensor `[n, d]` under the token name. diffusers registers row 0 as
//!   `token` and row i as `token_i`, and expands `token` in prompts to all n of them.
//!   An SDXL identity becomes two such files, one per text encoder ([`diffusers_second_path`]).
//! - AUTOMATIC1111 / ComfyUI: `{"emb_params": [n, d]}`; the file stem is the prompt word. For an SDXL
//!   identity (`embeddings` and module `sdxl.clip_g`): `{"clip_l": [n, 768], "clip_g": [n, 1280]}`.
//!
//! Method modules other than `sdxl.*` (an ID-EA adapter, SeFi stages…) have no place in these formats and are
//! dropped with a warning: the export then holds only the pseudo-token vectors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};

use super::error::{IdentityError, Result};
use super::Identity;
use persona_diffusion::safetensors_file;

/// Writes `{token: [n, d]}` for diffusers' `load_textual_inversion`. An SDXL identity is two such files, one
/// per text encoder: OUT (`text_encoder`, CLIP-L rows) and [`diffusers_second_path`] (`X_2.safetensors`,
/// `text_encoder_2`, OpenCLIP bigG rows), loaded with
/// `pipe.load_textual_inversion(OUT, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)` and
/// `pipe.load_textual_inversion(X_2, text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)`.
/// Returns the files written.
pub fn export_diffusers(identity: &Identity, out: impl AsRef<Path>) -> Result<Vec<PathBuf>> {
    let out = out.as_ref();
    require_safetensors_name(out)?;
    warn_dropped_modules(identity, "diffusers");
    let one = |rows: &Tensor| -> Result<BTreeMap<String, Tensor>> {
        Ok(BTreeMap::from([(
            identity.token.clone(),
            rows.to_dtype(DType::F32)?,
        )]))
    };
    match identity.rows_2() {
        None => {
            safetensors_file::write(out, &one(&identity.embeddings)?, None)?;
            Ok(vec![out.to_path_buf()])
        }
        Some(clip_g) => {
            let second = diffusers_second_path(out);
            safetensors_file::write(out, &one(&identity.embeddings)?, None)?;
            safetensors_file::write(&second, &one(clip_g)?, None)?;
            Ok(vec![out.to_path_buf(), second])
        }
    }
}

/// The second file of an SDXL diffusers export: `X.safetensors` → `X_2.safetensors` (the names diffusers'
/// SDXL textual-inversion script gives: `learned_embeds.safetensors`, `learned_embeds_2.safetensors`).
pub fn diffusers_second_path(out: &Path) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    out.with_file_name(format!("{stem}_2.safetensors"))
}

/// Writes `{"emb_params": [n, d]}`, or for an SDXL identity exactly `{"clip_l": [n, 768], "clip_g":
/// [n, 1280]}` (the layout AUTOMATIC1111 and ComfyUI load for SDXL).
pub fn export_a1111(identity: &Identity, out: impl AsRef<Path>) -> Result<()> {
    let out = out.as_ref();
    require_safetensors_name(out)?;
    let tensors = match identity.rows_2() {
        Some(clip_g) => BTreeMap::from([
            (
                "clip_l".to_string(),
                identity.embeddings.to_dtype(DType::F32)?,
            ),
            ("clip_g".to_string(), clip_g.to_dtype(DType::F32)?),
        ]),
        None => BTreeMap::from([(
            "emb_params".to_string(),
            identity.embeddings.to_dtype(DType::F32)?,
        )]),
    };
    warn_dropped_modules(identity, "a1111");
    Ok(safetensors_file::write(out, &tensors, None)?)
}

/// AUTOMATIC1111 picks the loader by extension (`.pt`/`.bin` go to `torch.load`), so a safetensors file must be
/// named `.safetensors` to load there.
fn require_safetensors_name(out: &Path) -> Result<()> {
    match out.extension().and_then(|e| e.to_str()) {
        Some("safetensors") => Ok(()),
        _ => Err(IdentityError::file(
            out,
            "exports are safetensors files: name the output *.safetensors",
        )),
    }
}

fn warn_dropped_modules(identity: &Identity, format: &str) {
    let dropped: Vec<&str> = identity
        .modules
        .keys()
        .map(String::as_str)
        .filter(|k| !k.starts_with("sdxl."))
        .collect();
    if !dropped.is_empty() {
        tracing::warn!(
            "the {format} format holds only token vectors: identity {} (method {}) loses its modules {dropped:?}",
            identity.token,
            identity.meta.method
        );
    }
}
