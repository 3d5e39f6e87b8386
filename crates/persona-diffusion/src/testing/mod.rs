//! Helpers for parity tests (here and in the crates above): where the committed fixtures are, and a
//! closeness check that reports the worst element.

use std::path::PathBuf;

use candle_core::Tensor;

use crate::{Error, Result};

/// The repository's `fixtures/` folder.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// `max|a − b| / max|b|`: the relative error the parity tests bound (1e-4 for modules).
pub fn rel_error(a: &Tensor, b: &Tensor) -> Result<f64> {
    if a.dims() != b.dims() {
        return Err(Error::Msg(format!(
            "shapes differ: {:?} vs {:?}",
            a.dims(),
            b.dims()
        )));
    }
    let a = a.to_dtype(candle_core::DType::F64)?;
    let b = b.to_dtype(candle_core::DType::F64)?;
    let diff = (&a - &b)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f64>()?;
    let scale = b
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f64>()?
        .max(1e-12);
    Ok(diff / scale)
}

/// Loads one reference safetensors file of the fixtures.
pub fn load_reference(rel: &str) -> Result<std::collections::HashMap<String, Tensor>> {
    let path = fixtures_dir().join(rel);
    candle_core::safetensors::load(&path, &candle_core::Device::Cpu)
        .map_err(|e| Error::file(&path, e))
}

/// How many tensors a gradient store holds. candle's `GradStore` does not expose its map, so this counts the
/// entries of its `Debug` form (one `TensorId(…)` key each).
pub fn grad_count(grads: &candle_core::backprop::GradStore) -> usize {
    format!("{grads:?}").matches("TensorId(").count()
}

pub mod gradcheck;
