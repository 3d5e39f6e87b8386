//! Safetensors files with a `__metadata__` header — identity files, checkpoints, exports, face embeddings —
//! read and (atomically) written in one place, so that every such file is checked and named the same way.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::safetensors::Load;
use candle_core::{Device, Tensor};
use safetensors::SafeTensors;

use crate::pipeline::image::write_atomic;
use crate::{Error, Result};

/// A safetensors file's tensors (on the CPU, by name, as stored) and its `__metadata__` header.
pub struct SafetensorsFile {
    pub tensors: BTreeMap<String, Tensor>,
    pub metadata: HashMap<String, String>,
}

/// Whether the bytes start like a safetensors file: a little-endian header length, then a JSON object.
pub fn looks_like_safetensors(bytes: &[u8]) -> bool {
    bytes.len() > 8 && bytes[8] == b'{'
}

/// Reads every tensor and the header; an error naming the file when it is not safetensors or a tensor is
/// unreadable.
pub fn read(path: &Path) -> Result<SafetensorsFile> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let not_safetensors = |e: safetensors::SafeTensorError| {
        Error::file(path, format!("not a safetensors file ({e})"))
    };
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(not_safetensors)?;
    let file = SafeTensors::deserialize(&bytes).map_err(not_safetensors)?;
    let mut tensors = BTreeMap::new();
    for (name, view) in file.tensors() {
        let tensor = view
            .load(&Device::Cpu)
            .map_err(|e| Error::file(path, format!("tensor `{name}` cannot be read: {e}")))?;
        tensors.insert(name, tensor);
    }
    Ok(SafetensorsFile {
        tensors,
        metadata: header.metadata().clone().unwrap_or_default(),
    })
}

/// Serialises tensors (moved to the CPU, made contiguous) with an optional header and writes them atomically.
pub fn write(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let mut prepared = Vec::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        prepared.push((name.as_str(), tensor.to_device(&Device::Cpu)?.contiguous()?));
    }
    let bytes = safetensors::serialize(prepared, metadata)
        .map_err(|e| Error::file(path, format!("cannot serialise: {e}")))?;
    write_atomic(path, &bytes)
}
