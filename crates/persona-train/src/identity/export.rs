//! Writing an identity in the formats other tools load. Both are safetensors (never pickle), so whoever
//! receives the file can open it without running code.
//!
//! - diffusers `load_textual_inversion`: one tensor `[n, d]` under the token name. diffusers registers row 0 as
//!   `token` and row i as `token_i`, and expands `token` in prompts to all n of them.
//! - AUTOMATIC1111 / ComfyUI: `{"emb_params": [n, d]}`; the file stem is the prompt word. For an SDXL
//!   identity (modules `sdxl.clip_l` and `sdxl.clip_g`): `{"clip_l": [n, 768], "clip_g": [n, 1280]}`.
//!
//! Method modules other than `sdxl.*` (an ID-EA adapter, SeFi stages…) have no place in these formats and are
//! dropped with a warning: the export then holds only the pseudo-token vectors.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Tensor};

use super::error::{IdentityError, Result};
use super::{safetensors_io, Identity};

const SDXL_CLIP_L: &str = "sdxl.clip_l";
const SDXL_CLIP_G: &str = "sdxl.clip_g";

/// Writes `{token: [n, d]}` for diffusers' `load_textual_inversion`. SDXL identities are refused: diffusers
/// loads them per text encoder, from the A1111 layout (see `docs/identity.md`).
pub fn export_diffusers(identity: &Identity, out: impl AsRef<Path>) -> Result<()> {
    let out = out.as_ref();
    require_safetensors_name(out)?;
    if sdxl_pair(identity)?.is_some() {
        return Err(IdentityError::Invalid(format!(
            "identity {} is an SDXL identity (two text encoders); export it with the a1111 format, whose clip_l / clip_g \
             tensors diffusers loads with one load_textual_inversion call per text encoder",
            identity.token
        )));
    }
    warn_dropped_modules(identity, "diffusers");
    let tensors = BTreeMap::from([(
        identity.token.clone(),
        identity.embeddings.to_dtype(DType::F32)?,
    )]);
    safetensors_io::write(out, &tensors, None)
}

/// Writes `{"emb_params": [n, d]}`, or `{"clip_l", "clip_g"}` for an SDXL identity.
pub fn export_a1111(identity: &Identity, out: impl AsRef<Path>) -> Result<()> {
    let out = out.as_ref();
    require_safetensors_name(out)?;
    let tensors = match sdxl_pair(identity)? {
        Some((clip_l, clip_g)) => BTreeMap::from([
            ("clip_l".to_string(), clip_l.to_dtype(DType::F32)?),
            ("clip_g".to_string(), clip_g.to_dtype(DType::F32)?),
        ]),
        None => BTreeMap::from([(
            "emb_params".to_string(),
            identity.embeddings.to_dtype(DType::F32)?,
        )]),
    };
    warn_dropped_modules(identity, "a1111");
    safetensors_io::write(out, &tensors, None)
}

/// Both SDXL tensors, none, or an error for a half-SDXL identity.
fn sdxl_pair(identity: &Identity) -> Result<Option<(&Tensor, &Tensor)>> {
    match (identity.modules.get(SDXL_CLIP_L), identity.modules.get(SDXL_CLIP_G)) {
        (Some(l), Some(g)) => Ok(Some((l, g))),
        (None, None) => Ok(None),
        _ => Err(IdentityError::Invalid(format!(
            "identity {} has only one of {SDXL_CLIP_L} / {SDXL_CLIP_G}; an SDXL identity needs both",
            identity.token
        ))),
    }
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
