//! Named-weight lookup for model construction.
//!
//! Models ask a [`Weights`] for each tensor by its diffusers/transformers name and expected shape. Problems are
//! *collected* instead of failing on the first one, so a broken checkpoint is reported in one line that lists
//! every missing tensor, every shape mismatch and every unexpected tensor, with the file each came from.
//! Besides real safetensors files, a [`Weights`] can be backed by a recorder (names and shapes only, nothing
//! allocated: used to compare against the manifests of the real architectures) or by seeded random values
//! (benchmarks).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};

use crate::{Error, Result};

/// Where tensors come from.
enum Source {
    /// Memory-mapped safetensors files; `index` maps each tensor name to the file holding it.
    Files {
        files: Vec<(PathBuf, MmapedSafetensors)>,
        index: BTreeMap<String, usize>,
    },
    /// Names and shapes only: every tensor is a broadcast scalar, so nothing of its size is allocated.
    Record,
    /// Seeded uniform values in ±1/√fan_in (like PyTorch's default init), for benchmarks on random weights.
    Random { seed: u64 },
}

struct State {
    source: Source,
    device: Device,
    /// What every tensor is converted to (f32; f64 for finite-difference tests).
    dtype: DType,
    used: BTreeSet<String>,
    requested: BTreeMap<String, Vec<usize>>,
    missing: Vec<String>,
    mismatched: Vec<String>,
    /// Names (without any optional prefix) that the model will never read and that are not an error.
    ignored_suffixes: Vec<String>,
    label: String,
}

/// Whether every value of `t` is finite: one sum in f32 (NaN and ±inf propagate into it), so checking every
/// weight once at load costs a read of it.
pub fn all_finite(t: &Tensor) -> Result<bool> {
    let t = match t.dtype() {
        DType::F32 | DType::F64 => t.clone(),
        DType::F16 | DType::BF16 => t.to_dtype(DType::F32)?,
        _ => return Ok(true),
    };
    let sum = t.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    Ok(sum.is_finite())
}

/// A handle on a weight source at some name prefix (cheap to clone; `pp` descends one level).
#[derive(Clone)]
pub struct Weights {
    state: Rc<RefCell<State>>,
    prefix: String,
}

impl Weights {
    /// Opens safetensors files (one model component; shards allowed). Every tensor is converted to f32.
    pub fn from_files(paths: &[PathBuf], device: &Device) -> Result<Self> {
        Self::from_files_as(paths, device, DType::F32)
    }

    /// [`Weights::from_files`] converting to `dtype` (f64 lets gradient tests use tight finite differences).
    pub fn from_files_as(paths: &[PathBuf], device: &Device, dtype: DType) -> Result<Self> {
        let mut files = Vec::new();
        let mut index = BTreeMap::new();
        for path in paths {
            // SAFETY: the file is mapped read-only; persona never writes to a model file while it is loaded.
            let st = unsafe { MmapedSafetensors::new(path) }
                .map_err(|e| Error::file(path, format!("not a readable safetensors file ({e})")))?;
            for (name, _) in st.tensors() {
                index.insert(name, files.len());
            }
            files.push((path.clone(), st));
        }
        let label = match paths {
            [one] => one.display().to_string(),
            _ => paths
                .first()
                .and_then(|p| p.parent())
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        };
        Ok(Self::new(
            Source::Files { files, index },
            device,
            dtype,
            label,
        ))
    }

    /// Records requested names and shapes without allocating (see [`Weights::requested`]).
    pub fn recorder() -> Self {
        Self::new(
            Source::Record,
            &Device::Cpu,
            DType::F32,
            "<recorder>".into(),
        )
    }

    /// Seeded random weights (benchmarks, tests of shapes).
    pub fn random(seed: u64, device: &Device) -> Self {
        Self::random_as(seed, device, DType::F32)
    }

    pub fn random_as(seed: u64, device: &Device, dtype: DType) -> Self {
        Self::new(Source::Random { seed }, device, dtype, "<random>".into())
    }

    fn new(source: Source, device: &Device, dtype: DType, label: String) -> Self {
        let state = State {
            source,
            device: device.clone(),
            dtype,
            used: BTreeSet::new(),
            requested: BTreeMap::new(),
            missing: Vec::new(),
            mismatched: Vec::new(),
            ignored_suffixes: Vec::new(),
            label,
        };
        Self {
            state: Rc::new(RefCell::new(state)),
            prefix: String::new(),
        }
    }

    /// The same source, one level down (`pp("down_blocks").pp(0)`).
    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        };
        Self {
            state: self.state.clone(),
            prefix,
        }
    }

    pub fn device(&self) -> Device {
        self.state.borrow().device.clone()
    }

    fn full_name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// Tensors whose name ends with `suffix` are tolerated without being read (e.g. `position_ids`).
    pub fn ignore_suffix(&self, suffix: &str) {
        self.state
            .borrow_mut()
            .ignored_suffixes
            .push(suffix.to_string());
    }

    /// If the files store every tensor under `prefix.` (e.g. hub CLIP checkpoints' `text_model.`), descend into
    /// it; otherwise stay. Lets one model read both the prefixed and the unprefixed layout.
    pub fn optional_prefix(&self, prefix: &str) -> Self {
        let st = self.state.borrow();
        let has = match &st.source {
            Source::Files { index, .. } => {
                let want = format!("{}.", self.full_name(prefix));
                index.keys().any(|k| k.starts_with(&want))
            }
            _ => false,
        };
        drop(st);
        if has {
            self.pp(prefix)
        } else {
            self.clone()
        }
    }

    /// The tensor `name` (relative to this prefix) with exactly `shape`, as f32.
    pub fn get(&self, shape: impl Into<Shape>, name: &str) -> Result<Tensor> {
        self.get_any(shape, &[name])
    }

    /// Like [`Weights::get`], accepting legacy aliases: the first name present is used.
    pub fn get_any(&self, shape: impl Into<Shape>, names: &[&str]) -> Result<Tensor> {
        let shape = shape.into();
        let full: Vec<String> = names.iter().map(|n| self.full_name(n)).collect();
        let mut st = self.state.borrow_mut();
        st.requested.insert(full[0].clone(), shape.dims().to_vec());
        let found = match &st.source {
            Source::Files { index, .. } => full.iter().find(|n| index.contains_key(*n)).cloned(),
            _ => Some(full[0].clone()),
        };
        let Some(name) = found else {
            st.missing.push(full[0].clone());
            return Ok(placeholder(&shape)?);
        };
        st.used.insert(name.clone());
        let tensor = match &st.source {
            Source::Files { files, index } => {
                let (path, file) = &files[index[&name]];
                let t = file
                    .load(&name, &st.device)
                    .map_err(|e| Error::file(path, format!("tensor {name}: {e}")))?;
                if t.dims() != shape.dims() {
                    let msg = format!(
                        "{name} has shape {:?}, expected {:?}",
                        t.dims(),
                        shape.dims()
                    );
                    st.mismatched.push(msg);
                    return Ok(placeholder(&shape)?);
                }
                let t = t.to_dtype(st.dtype)?;
                if !all_finite(&t)? {
                    return Err(Error::file(
                        path,
                        format!(
                            "tensor {name} holds NaN or infinite values (in {:?}); the file is damaged",
                            st.dtype
                        ),
                    ));
                }
                t
            }
            Source::Record => placeholder(&shape)?,
            Source::Random { seed } => {
                random_tensor(*seed, &name, &shape, &st.device)?.to_dtype(st.dtype)?
            }
        };
        Ok(tensor)
    }

    /// Every `(name, shape)` requested so far (the model's state-dict manifest when built on a recorder).
    pub fn requested(&self) -> BTreeMap<String, Vec<usize>> {
        self.state.borrow().requested.clone()
    }

    /// Reports every problem seen while building a model, in one line naming the file(s); call once the
    /// model is built. Unexpected tensors (present in the files, never read) are errors too: they mean the
    /// config does not describe the checkpoint.
    pub fn finish(&self) -> Result<()> {
        let st = self.state.borrow();
        let mut problems = Vec::new();
        if !st.missing.is_empty() {
            problems.push(format!("missing tensors: {}", list(&st.missing)));
        }
        if !st.mismatched.is_empty() {
            problems.push(format!("wrong shapes: {}", list(&st.mismatched)));
        }
        if let Source::Files { index, .. } = &st.source {
            let unexpected: Vec<String> = index
                .keys()
                .filter(|k| {
                    !st.used.contains(*k)
                        && !st.ignored_suffixes.iter().any(|s| k.ends_with(s.as_str()))
                })
                .cloned()
                .collect();
            if !unexpected.is_empty() {
                problems.push(format!("unexpected tensors: {}", list(&unexpected)));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::file(&st.label, problems.join("; ")))
        }
    }
}

/// At most a handful of names: a whole mismatched checkpoint would otherwise print thousands.
fn list(names: &[String]) -> String {
    const SHOWN: usize = 8;
    let head = names
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        format!("{head} (and {} more)", names.len() - SHOWN)
    } else {
        head
    }
}

fn placeholder(shape: &Shape) -> candle_core::Result<Tensor> {
    Tensor::zeros((), DType::F32, &Device::Cpu)?.broadcast_as(shape.clone())
}

fn random_tensor(seed: u64, name: &str, shape: &Shape, device: &Device) -> Result<Tensor> {
    use rand::{Rng, SeedableRng};
    let name_hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ name_hash);
    let dims = shape.dims();
    let is_norm = name.contains("norm");
    let values: Vec<f32> = if is_norm && name.ends_with("weight") {
        vec![1.0; shape.elem_count()]
    } else if name.ends_with("bias") && is_norm {
        vec![0.0; shape.elem_count()]
    } else {
        let fan_in: usize = dims.iter().skip(1).product::<usize>().max(1);
        let bound = if dims.len() == 1 {
            0.02
        } else {
            (1.0 / fan_in as f32).sqrt()
        };
        (0..shape.elem_count())
            .map(|_| rng.random_range(-bound..bound))
            .collect()
    };
    Ok(Tensor::from_vec(values, shape.clone(), device)?)
}

/// Reads and parses a model's `config.json` (or any JSON config) with an error naming the file.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::file(path, format!("invalid config: {e}")))
}
