//! Where models run and in which precision: `--device auto|cpu|cuda[:N]` and `--dtype f32|bf16|f16`.
//!
//! Mixed precision works as diffusers' `--mixed_precision` does: the *frozen* models (text encoder, UNet,
//! VAE) hold their weights and compute in the chosen dtype, while everything that learns or accumulates —
//! learned embeddings and modules, the optimiser state, the loss, the schedulers' arithmetic, latents between
//! steps — stays f32. Models cast what enters them to their own dtype and what leaves them back to the
//! caller's, so callers never see the model's dtype.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device};

use crate::{Error, Result};

#[cfg(feature = "cuda")]
mod cuda_pool;

/// What `--device` asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceRequest {
    /// The GPU when this binary has CUDA and one answers, else the CPU.
    #[default]
    Auto,
    Cpu,
    /// A CUDA GPU by ordinal (`cuda` is `cuda:0`).
    Cuda(usize),
}

impl FromStr for DeviceRequest {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(n)) => Ok(Self::Cuda(n)),
                _ => Err(format!(
                    "unknown device {s:?}: expected auto, cpu, cuda or cuda:N"
                )),
            },
        }
    }
}

impl fmt::Display for DeviceRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Whether this binary was built with the `cuda` feature.
pub const fn cuda_compiled() -> bool {
    cfg!(feature = "cuda")
}

/// The device a request resolves to, and for `auto` on the CPU a one-line note saying why no GPU is used
/// (for the caller to print).
pub fn select(request: DeviceRequest) -> Result<(Device, Option<String>)> {
    match request {
        DeviceRequest::Cpu => Ok((Device::Cpu, None)),
        DeviceRequest::Cuda(n) => Ok((open_cuda(n)?, None)),
        DeviceRequest::Auto if !cuda_compiled() => Ok((
            Device::Cpu,
            Some("running on the CPU: this persona was built without CUDA".into()),
        )),
        DeviceRequest::Auto => match open_cuda(0) {
            Ok(d) => Ok((d, None)),
            Err(e) => Ok((Device::Cpu, Some(format!("running on the CPU: {e}")))),
        },
    }
}

fn open_cuda(ordinal: usize) -> Result<Device> {
    if !cuda_compiled() {
        return Err(Error::Msg(format!(
            "--device cuda:{ordinal}: this persona was built without CUDA (rebuild with `--features cuda`, see docs/gpu.md)"
        )));
    }
    // candle's CUDA backend panics on some driver failures instead of returning them (e.g. a stub or
    // mismatched libcuda): turn that into the same one-line error.
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let opened = std::panic::catch_unwind(|| Device::new_cuda(ordinal));
    std::panic::set_hook(quiet);
    match opened {
        Ok(Ok(d)) => {
            keep_freed_memory(ordinal);
            Ok(d)
        }
        Ok(Err(e)) => Err(no_gpu(ordinal, &e.to_string())),
        Err(_) => Err(no_gpu(ordinal, "the CUDA driver failed to initialise")),
    }
}

#[cfg(feature = "cuda")]
fn keep_freed_memory(ordinal: usize) {
    if let Err(e) = cuda_pool::keep_freed_memory(ordinal) {
        tracing::warn!("GPU memory pool left as is: {e}");
    }
}

#[cfg(not(feature = "cuda"))]
fn keep_freed_memory(_ordinal: usize) {}

/// Starts a new peak-memory measurement on `device` (a no-op on the CPU, whose peak resident memory cannot
/// be reset).
pub fn reset_peak_memory(device: &Device) -> Result<()> {
    match device.location() {
        #[cfg(feature = "cuda")]
        candle_core::DeviceLocation::Cuda { gpu_id } => {
            device.synchronize()?;
            cuda_pool::reset_peak(gpu_id)
        }
        _ => Ok(()),
    }
}

/// Peak memory in GB since [`reset_peak_memory`]: GPU memory in use at its high-water mark (as PyTorch's
/// `max_memory_allocated`), or on the CPU the process's peak resident memory; `None` where unknown.
pub fn peak_memory_gb(device: &Device) -> Option<f64> {
    match device.location() {
        #[cfg(feature = "cuda")]
        candle_core::DeviceLocation::Cuda { gpu_id } => {
            device.synchronize().ok()?;
            cuda_pool::peak_bytes(gpu_id).ok().map(|b| b as f64 / 1e9)
        }
        _ => peak_rss_gb(),
    }
}

/// Peak resident memory of this process so far (Linux `VmHWM`), in GB; `None` where `/proc` is unavailable.
pub fn peak_rss_gb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<f64>()
        .ok()?;
    Some(kb / 1e6)
}

fn no_gpu(ordinal: usize, why: &str) -> Error {
    let why = why.lines().next().unwrap_or(why).trim();
    Error::Msg(format!(
        "--device cuda:{ordinal}: no CUDA GPU answered ({why})"
    ))
}

/// What `--dtype` asked for; `None` (flag absent) means the device's default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    F32,
    Bf16,
    F16,
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" | "fp32" | "float32" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            "f16" | "fp16" | "float16" => Ok(Self::F16),
            _ => Err(format!("unknown dtype {s:?}: expected f32, bf16 or f16")),
        }
    }
}

impl Precision {
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
            Self::F16 => DType::F16,
        }
    }
}

/// The frozen models' dtype: the request, else bf16 on a GPU (as diffusers users train) and f32 on the CPU
/// (where candle's half-precision kernels are slower than f32).
pub fn model_dtype(requested: Option<Precision>, device: &Device) -> DType {
    match requested {
        Some(p) => p.dtype(),
        None if device.is_cuda() => DType::BF16,
        None => DType::F32,
    }
}

/// The dtype a model in `model` dtype answers in: f32, or f64 for the f64 models of gradient tests.
pub fn outer_dtype(model: DType) -> DType {
    if model == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// A device's name for messages and metadata (`cpu`, `cuda:0`).
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse() {
        assert_eq!("auto".parse(), Ok(DeviceRequest::Auto));
        assert_eq!("cpu".parse(), Ok(DeviceRequest::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceRequest::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceRequest::Cuda(3)));
        for bad in ["gpu", "cuda:", "cuda:x", "CPU", ""] {
            let err = bad.parse::<DeviceRequest>().unwrap_err();
            assert!(
                err.contains("expected auto, cpu, cuda or cuda:N"),
                "{bad}: {err}"
            );
        }
        assert_eq!("bf16".parse(), Ok(Precision::Bf16));
        assert!("int8".parse::<Precision>().is_err());
    }

    #[test]
    fn auto_and_cpu_resolve_without_a_gpu() {
        let (d, _) = select(DeviceRequest::Cpu).unwrap();
        assert!(d.is_cpu());
        let (d, note) = select(DeviceRequest::Auto).unwrap();
        if d.is_cpu() {
            assert!(note.unwrap().starts_with("running on the CPU"));
        }
    }

    #[test]
    fn cuda_is_a_clear_error_where_it_cannot_run() {
        if cuda_compiled() && Device::new_cuda(0).is_ok() {
            return;
        }
        let err = select(DeviceRequest::Cuda(0)).unwrap_err().to_string();
        assert!(err.starts_with("--device cuda:0: "), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }

    #[test]
    fn default_dtypes() {
        assert_eq!(model_dtype(None, &Device::Cpu), DType::F32);
        assert_eq!(
            model_dtype(Some(Precision::Bf16), &Device::Cpu),
            DType::BF16
        );
    }
}
