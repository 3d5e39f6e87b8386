//! Helpers for parity tests (here and in the crates above): where the committed fixtures are, and a
//! closeness check that reports the worst element.

use std::path::PathBuf;

use candle_core::Tensor;

use crate::{Error, Result};

/// The repository's `fixtures/` folder.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// A file or folder of `shared/` beside the checkout (models and photos too large for the repository), or
/// `None` with a message. Under `CI=true` a missing one is a failure: CI must run these tests, not skip them.
pub fn shared(rel: &str) -> Option<PathBuf> {
    let p = fixtures_dir().join("../../shared").join(rel);
    if p.exists() {
        return Some(p);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "{} is missing: CI must have shared/ beside the checkout",
            p.display()
        );
    }
    eprintln!("SKIPPED: {} not found", p.display());
    None
}

/// `max|a − b| / max|b|`: the relative error the parity tests bound (1e-4 for modules).
pub fn rel_error(a: &Tensor, b: &Tensor) -> Result<f64> {
    let scale = b
        .to_dtype(candle_core::DType::F64)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f64>()?
        .max(1e-12);
    Ok(max_abs_error(a, b)? / scale)
}

/// Standard-normal f32 values on the CPU, for kernel tests that compare two ways of computing the same thing.
pub fn randn_f32(shape: &[usize]) -> Tensor {
    Tensor::randn(0f32, 1.0, shape, &candle_core::Device::Cpu).expect("randn on the CPU")
}

/// `max|a − b|` in f64, an error when the shapes differ.
pub fn max_abs_error(a: &Tensor, b: &Tensor) -> Result<f64> {
    if a.dims() != b.dims() {
        return Err(Error::Msg(format!(
            "shapes differ: {:?} vs {:?}",
            a.dims(),
            b.dims()
        )));
    }
    let a = a.to_dtype(candle_core::DType::F64)?;
    let b = b.to_dtype(candle_core::DType::F64)?;
    Ok((&a - &b)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f64>()?)
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
