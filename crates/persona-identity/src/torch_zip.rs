//! `torch.save` archives (the zip format torch has written since 1.6): `<name>/data.pkl` holds the pickled
//! object, `<name>/data/<key>` the raw little-endian bytes of each storage. The pickle is read by the
//! non-executing reader in [`super::pickle`]; tensors are then cut out of their storages here.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use zip::ZipArchive;

use super::error::{IdentityError, Result};
use super::pickle::{self, StorageDtype, TensorRef, Value};

/// Largest `data.pkl` accepted: an embedding file's is a few hundred bytes, a whole checkpoint's a few MB.
const MAX_PICKLE_BYTES: u64 = 16 << 20;

/// The storages of an open archive, read on demand and kept as f32 (several tensors may share one storage).
pub(crate) struct Storages {
    path: PathBuf,
    zip: ZipArchive<BufReader<File>>,
    prefix: String,
    file_len: u64,
    cache: HashMap<String, Vec<f32>>,
}

/// Opens a torch zip archive and parses its pickle, refusing anything that is not plain data.
pub(crate) fn open(path: &Path) -> Result<(Value, Storages)> {
    let file = File::open(path).map_err(|e| IdentityError::io(path, e))?;
    let file_len = file
        .metadata()
        .map_err(|e| IdentityError::io(path, e))?
        .len();
    let mut zip = ZipArchive::new(BufReader::new(file))
        .map_err(|e| IdentityError::file(path, format!("not a torch zip archive: {e}")))?;
    let prefix = archive_prefix(&zip, path)?;
    check_byte_order(&mut zip, &prefix, path)?;
    let pickle = read_entry(
        &mut zip,
        &format!("{prefix}/data.pkl"),
        MAX_PICKLE_BYTES,
        path,
    )?;
    let root = pickle::parse(&pickle).map_err(|e| IdentityError::file(path, e))?;
    Ok((
        root,
        Storages {
            path: path.to_owned(),
            zip,
            prefix,
            file_len,
            cache: HashMap::new(),
        },
    ))
}

/// The archive's top folder: torch names it after the file and puts exactly one `data.pkl` in it.
fn archive_prefix(zip: &ZipArchive<BufReader<File>>, path: &Path) -> Result<String> {
    let prefixes: Vec<String> = zip
        .file_names()
        .filter_map(|name| name.ok()?.strip_suffix("/data.pkl").map(str::to_owned))
        .filter(|prefix| !prefix.contains('/'))
        .collect();
    match prefixes.as_slice() {
        [prefix] => Ok(prefix.clone()),
        [] => Err(IdentityError::file(
            path,
            "zip archive without a data.pkl: not a torch.save file",
        )),
        _ => Err(IdentityError::file(
            path,
            "zip archive with several data.pkl files",
        )),
    }
}

/// Storages are raw bytes in the writer's byte order; torch records it in `byteorder` (absent = little-endian).
fn check_byte_order(
    zip: &mut ZipArchive<BufReader<File>>,
    prefix: &str,
    path: &Path,
) -> Result<()> {
    let name = format!("{prefix}/byteorder");
    if zip.index_for_name(&name).is_none() {
        return Ok(());
    }
    match read_entry(zip, &name, 16, path)?.as_slice() {
        b"little" => Ok(()),
        other => Err(IdentityError::file(
            path,
            format!(
                "storages are {:?}-endian; only little-endian is supported",
                String::from_utf8_lossy(other)
            ),
        )),
    }
}

fn read_entry(
    zip: &mut ZipArchive<BufReader<File>>,
    name: &str,
    max: u64,
    path: &Path,
) -> Result<Vec<u8>> {
    let entry = zip.by_name(name).map_err(|e| {
        IdentityError::file(path, format!("cannot open {name} in the archive: {e}"))
    })?;
    if entry.size() > max {
        return Err(IdentityError::file(
            path,
            format!(
                "{name} is {} bytes, more than the {max} accepted",
                entry.size()
            ),
        ));
    }
    let mut bytes = Vec::with_capacity(entry.size() as usize);
    entry.take(max).read_to_end(&mut bytes).map_err(|e| {
        IdentityError::file(path, format!("cannot read {name} in the archive: {e}"))
    })?;
    Ok(bytes)
}

impl Storages {
    /// The tensor a [`TensorRef`] describes, as f32 on the CPU.
    pub(crate) fn tensor(&mut self, t: &TensorRef) -> Result<Tensor> {
        let path = self.path.clone();
        let storage = self.storage(t)?;
        let data = gather(storage, t).map_err(|e| IdentityError::file(&path, e))?;
        Ok(Tensor::from_vec(data, t.size.as_slice(), &Device::Cpu)?)
    }

    fn storage(&mut self, t: &TensorRef) -> Result<&[f32]> {
        let key = &t.storage.key;
        if !self.cache.contains_key(key) {
            let values = self.read_storage(t)?;
            self.cache.insert(key.clone(), values);
        }
        Ok(self.cache.get(key).map(Vec::as_slice).unwrap_or_default())
    }

    fn read_storage(&mut self, t: &TensorRef) -> Result<Vec<f32>> {
        let dtype = match t.storage.dtype {
            StorageDtype::F32 => DType::F32,
            StorageDtype::F16 => DType::F16,
            StorageDtype::Bf16 => DType::BF16,
            StorageDtype::F64 => DType::F64,
        };
        let name = format!("{}/data/{}", self.prefix, t.storage.key);
        let bytes_len = t
            .storage
            .numel
            .checked_mul(dtype.size_in_bytes())
            .filter(|&n| n as u64 <= self.file_len);
        let Some(bytes_len) = bytes_len else {
            return Err(IdentityError::file(
                &self.path,
                format!("storage {name} claims more data than the file holds"),
            ));
        };
        let bytes = read_entry(&mut self.zip, &name, bytes_len as u64, &self.path)?;
        if bytes.len() != bytes_len {
            return Err(IdentityError::file(
                &self.path,
                format!(
                    "storage {name} holds {} bytes, expected {bytes_len}",
                    bytes.len()
                ),
            ));
        }
        let values = Tensor::from_raw_buffer(&bytes, dtype, &[t.storage.numel], &Device::Cpu)?;
        Ok(values.to_dtype(DType::F32)?.to_vec1::<f32>()?)
    }
}

/// Copies the elements of a strided view out of its storage, checking every bound first.
fn gather(storage: &[f32], t: &TensorRef) -> std::result::Result<Vec<f32>, String> {
    let count = t
        .size
        .iter()
        .try_fold(1usize, |acc, &s| acc.checked_mul(s))
        .ok_or("tensor size overflows")?;
    if count == 0 {
        return Ok(Vec::new());
    }
    let last = t
        .size
        .iter()
        .zip(&t.stride)
        .try_fold(t.offset, |acc, (&size, &stride)| {
            acc.checked_add((size - 1).checked_mul(stride)?)
        })
        .ok_or("tensor view overflows")?;
    if last >= storage.len() || count > storage.len() {
        return Err(format!(
            "tensor view {:?} (offset {}, stride {:?}) lies outside its storage of {} elements",
            t.size,
            t.offset,
            t.stride,
            storage.len()
        ));
    }
    let mut out = Vec::with_capacity(count);
    let mut index = vec![0usize; t.size.len()];
    for _ in 0..count {
        let at = t.offset
            + index
                .iter()
                .zip(&t.stride)
                .map(|(i, s)| i * s)
                .sum::<usize>();
        out.push(storage[at]);
        for dim in (0..index.len()).rev() {
            index[dim] += 1;
            if index[dim] < t.size[dim] {
                break;
            }
            index[dim] = 0;
        }
    }
    Ok(out)
}
