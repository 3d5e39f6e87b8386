//! Safetensors files with JSON metadata, written atomically: training checkpoints (learned tensors, optimizer
//! moments, step) and the raw material of identity files.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use persona_diffusion::safetensors_file;

use crate::Result;

/// Writes `tensors` with string `metadata` to `path` via a temporary sibling and a rename.
pub fn save(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    metadata: HashMap<String, String>,
) -> Result<()> {
    Ok(safetensors_file::write(path, tensors, Some(metadata))?)
}

/// Reads every tensor (as stored) and the metadata of a safetensors file.
pub fn load(path: &Path) -> Result<(BTreeMap<String, Tensor>, HashMap<String, String>)> {
    let file = safetensors_file::read(path)?;
    Ok((file.tensors, file.metadata))
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
