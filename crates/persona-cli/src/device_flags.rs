//! `--device` and `--dtype`: the one flag set of every command that runs a model.

use anyhow::Result;
use candle_core::{DType, Device};
use clap::Args;
use persona_diffusion::device::{self, DeviceRequest, Precision};
use persona_diffusion::pipeline::LoadOptions;

fn parse_device(s: &str) -> std::result::Result<DeviceRequest, String> {
    s.parse()
}

fn parse_precision(s: &str) -> std::result::Result<Precision, String> {
    s.parse()
}

/// Where the models run and in which precision.
#[derive(Args, Clone, Copy, Debug, Default)]
pub struct DeviceArgs {
    /// Where the models run: `auto` (default) takes the GPU when this persona was built with CUDA and a GPU
    /// answers, else the CPU with a one-line note on stderr; `cpu`; `cuda` or `cuda:N` (GPU N; an error if
    /// this build has no CUDA or no GPU answers).
    #[arg(long, value_name = "auto|cpu|cuda[:N]", value_parser = parse_device)]
    pub device: Option<DeviceRequest>,
    /// Precision of the frozen models (text encoder, UNet, VAE): f32, bf16 or f16 (default: bf16 on a GPU,
    /// f32 on the CPU). Learned tensors, optimiser state, loss and schedulers stay f32, as diffusers' mixed
    /// precision keeps them; the VAE runs an f16 request in f32 (diffusers' force_upcast).
    #[arg(long, value_name = "f32|bf16|f16", value_parser = parse_precision)]
    pub dtype: Option<Precision>,
}

/// A resolved device and the frozen models' dtype.
#[derive(Clone, Debug)]
pub struct Placement {
    pub device: Device,
    pub dtype: DType,
    /// Why `auto` runs on the CPU, for [`Placement::announce`].
    pub note: Option<String>,
}

impl DeviceArgs {
    /// Opens the device and picks the dtype; an unusable device is a one-line error naming the flag.
    pub fn resolve(&self) -> Result<Placement> {
        let (device, note) = device::select(self.device.unwrap_or_default())?;
        let dtype = device::model_dtype(self.dtype, &device);
        Ok(Placement {
            device,
            dtype,
            note,
        })
    }
}

impl Placement {
    /// Prints `note: running on the CPU: …` when `auto` fell back to the CPU; commands call it once their
    /// model has loaded, so that an error stays the only line of a failed run.
    pub fn announce(&self) {
        if let Some(note) = &self.note {
            eprintln!("note: {note}");
        }
    }

    pub fn load_options(&self, variant: Option<String>) -> LoadOptions {
        LoadOptions {
            variant,
            device: self.device.clone(),
            dtype: self.dtype,
        }
    }

    /// `cpu`, `cuda:0`, … (for metadata and messages).
    pub fn device_name(&self) -> String {
        device::device_name(&self.device)
    }

    /// `f32`, `bf16`, `f16`.
    pub fn dtype_name(&self) -> &'static str {
        self.dtype.as_str()
    }
}
