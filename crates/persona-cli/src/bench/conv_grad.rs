//! `persona bench conv-grad`: the input gradient of SD's stride-2 downsampling convolutions computed both
//! ways persona knows (`nn::StridedGrad`: candle's `conv_transpose2d`, or a stride-1 convolution of the
//! zero-dilated gradient with the flipped kernel), so that the choice per device is measured there.

use anyhow::Result;
use candle_core::{DType, Tensor};
use clap::Args;
use persona_diffusion::nn::{conv_input_grad_with, StridedGrad};

use super::{emit, time};
use crate::device_flags::DeviceArgs;

#[derive(Args, Debug)]
pub struct ConvGradArgs {
    /// Batch of the gradients (8: an ID-EA training batch).
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Latent size of the model's input (64 = 512² images): the downsamplers see 64, 32 and 16.
    #[arg(long, default_value_t = 64)]
    size: usize,
    #[arg(long, default_value_t = 3, value_parser = crate::values::positive)]
    runs: usize,
    #[command(flatten)]
    device: DeviceArgs,
}

pub fn run(a: &ConvGradArgs) -> Result<()> {
    let place = a.device.resolve()?;
    place.announce();
    let (dev, dtype) = (&place.device, place.dtype);
    // SD 1.x/2.x downsamplers: 3×3, stride 2, padding 1, channels 320, 640, 1280 at sizes S, S/2, S/4.
    for (channels, side) in [(320, a.size), (640, a.size / 2), (1280, a.size / 4)] {
        let w = (Tensor::randn(0f32, 0.02, (channels, channels, 3, 3), dev)?).to_dtype(dtype)?;
        let g = Tensor::randn(0f32, 1.0, (a.batch, channels, side / 2, side / 2), dev)?
            .to_dtype(dtype)?;
        let grad = |m| conv_input_grad_with(m, &g, (side, side), &w, 2, 1);
        let dilated = time(dev, a.runs, || Ok(grad(StridedGrad::Dilated).map(drop)?))?;
        // An error (a dtype without a kernel on this device) is reported, not fatal.
        let transposed = time(dev, a.runs, || Ok(grad(StridedGrad::Transposed).map(drop)?));
        let diff = match (grad(StridedGrad::Dilated), grad(StridedGrad::Transposed)) {
            (Ok(a), Ok(b)) => Some(
                (a.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?
                    .abs()?
                    .max_all()?
                    .to_scalar::<f32>()?,
            ),
            _ => None,
        };
        let fields = serde_json::json!({
            "part": "ConvGrad", "channels": channels, "side": side, "batch": a.batch,
            "dilated_conv_s": dilated.median, "used": format!("{:?}", StridedGrad::for_device(dev)), "conv_transpose2d_s": transposed.as_ref().ok().map(|t| t.median),
            "conv_transpose2d_error": transposed.as_ref().err().map(|e| e.to_string().lines().next().unwrap_or_default().to_string()),
            "max_abs_difference": diff,
        });
        emit(fields, None, dev, dtype);
    }
    Ok(())
}
