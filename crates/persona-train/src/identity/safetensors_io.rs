//! Reading and atomically writing the safetensors files identities, exports and imports use.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::safetensors::Load;
use candle_core::{Device, Tensor};
use safetensors::SafeTensors;

use super::error::{IdentityError, Result};

/// A safetensors file's tensors (on the CPU, by name) and its `__metadata__` header.
pub(crate) struct SafetensorsFile {
    pub tensors: BTreeMap<String, Tensor>,
    pub metadata: HashMap<String, String>,
}

/// Whether the bytes start like a safetensors file: a little-endian header length, then a JSON object.
pub(crate) fn looks_like_safetensors(bytes: &[u8]) -> bool {
    bytes.len() > 8 && bytes[8] == b'{'
}

pub(crate) fn read(path: &Path) -> Result<SafetensorsFile> {
    let bytes = std::fs::read(path).map_err(|e| IdentityError::io(path, e))?;
    parse(&bytes, path)
}

fn parse(bytes: &[u8], path: &Path) -> Result<SafetensorsFile> {
    let not_safetensors = |e: safetensors::SafeTensorError| {
        IdentityError::file(path, format!("not a safetensors file ({e})"))
    };
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(not_safetensors)?;
    let file = SafeTensors::deserialize(bytes).map_err(not_safetensors)?;
    let mut tensors = BTreeMap::new();
    for (name, view) in file.tensors() {
        let tensor = view.load(&Device::Cpu).map_err(|e| {
            IdentityError::file(path, format!("tensor `{name}` cannot be read: {e}"))
        })?;
        tensors.insert(name, tensor);
    }
    Ok(SafetensorsFile {
        tensors,
        metadata: header.metadata().clone().unwrap_or_default(),
    })
}

/// Serialises tensors (moved to the CPU, made contiguous) with an optional header and writes them atomically.
pub(crate) fn write(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let mut prepared = Vec::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        prepared.push((name.as_str(), tensor.to_device(&Device::Cpu)?.contiguous()?));
    }
    let bytes = safetensors::serialize(prepared, metadata)
        .map_err(|e| IdentityError::file(path, format!("cannot serialise: {e}")))?;
    write_atomic(path, &bytes)
}

/// Writes to a temporary file in the destination's folder, syncs it and renames it over the destination, so a
/// crash or a full disk never leaves a half-written file under the final name (rename is atomic on one
/// filesystem). The temporary file is removed on failure.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path)?;
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(|e| IdentityError::io(path, e))
}

/// `.<name>.tmp-<pid>-<n>` beside `path`: hidden, and unique across processes and threads.
fn temp_path(path: &Path) -> Result<PathBuf> {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| IdentityError::file(path, "not a file name"))?;
    let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp_name = format!(
        ".{}.tmp-{}-{unique}",
        name.to_string_lossy(),
        std::process::id()
    );
    Ok(path.with_file_name(tmp_name))
}
