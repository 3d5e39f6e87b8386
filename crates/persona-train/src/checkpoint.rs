//! Safetensors files with JSON metadata, written atomically: training checkpoints (learned tensors, optimizer
//! moments, step) and the raw material of identity files.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::{Error, Result};

/// Writes `tensors` with string `metadata` to `path` via a temporary sibling and a rename.
pub fn save(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    metadata: HashMap<String, String>,
) -> Result<()> {
    let contiguous: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.contiguous()?)))
        .collect::<candle_core::Result<_>>()?;
    let bytes = safetensors::serialize(
        contiguous.iter().map(|(k, t)| (k.as_str(), t)),
        Some(metadata),
    )
    .map_err(|e| Error::file(path, format!("cannot serialise: {e}")))?;
    persona_diffusion::pipeline::image::write_atomic(path, &bytes)
}

/// Reads every tensor (as stored) and the metadata of a safetensors file.
pub fn load(path: &Path) -> Result<(BTreeMap<String, Tensor>, HashMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::file(path, format!("not a safetensors file: {e}")))?;
    let metadata = meta.metadata().clone().unwrap_or_default();
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|e| Error::file(path, e))?;
    Ok((tensors.into_iter().collect(), metadata))
}

/// Where the checkpoint of an output file lives: `alice.safetensors` → `alice.ckpt.safetensors`.
pub fn checkpoint_path(out: &Path) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "identity".into());
    out.with_file_name(format!("{stem}.ckpt.safetensors"))
}

/// The loss log next to the output: `alice.safetensors` → `alice.loss.jsonl`.
pub fn loss_log_path(out: &Path) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "identity".into());
    out.with_file_name(format!("{stem}.loss.jsonl"))
}
