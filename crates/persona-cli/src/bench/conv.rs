//! `persona bench conv`: SD's 3×3 stride-1 convolutions alone, forward and input gradient, in GFLOP/s, as
//! the models run them (a `Conv2d` loaded like a checkpoint's, so on the CPU its kernel is stored tap-major).
//! `tools/bench/conv.py` times PyTorch's `F.conv2d` and `conv2d_input` on the same shapes; together they say
//! how persona's convolution kernel stands against oneDNN's, shape by shape (docs/performance.md).

use anyhow::Result;
use candle_core::{Module, Tensor};
use clap::Args;
use persona_diffusion::nn::{conv_input_grad, Conv2d, Weights};

use super::{emit, time};
use crate::device_flags::DeviceArgs;

/// (channels, side, batch): the UNet's levels at 512² (64² to 8² latents, batch 2 as guidance runs them, and
/// 64² at batch 1 as a training step does) and the VAE decoder's 128 channels at 256².
const SHAPES: [(usize, usize, usize); 6] = [
    (320, 64, 1),
    (320, 64, 2),
    (640, 32, 2),
    (1280, 16, 2),
    (1280, 8, 2),
    (128, 256, 1),
];

#[derive(Args, Debug)]
pub struct ConvArgs {
    /// Timed runs per shape and direction (after one warm-up); the best is reported.
    #[arg(long, default_value_t = 5, value_parser = crate::values::positive)]
    runs: usize,
    #[command(flatten)]
    device: DeviceArgs,
}

pub fn run(a: &ConvArgs) -> Result<()> {
    let place = a.device.resolve()?;
    place.announce();
    let (dev, dtype) = (&place.device, place.dtype);
    for (channels, side, batch) in SHAPES {
        let conv = Conv2d::load(
            &Weights::random_as(0, dev, dtype),
            channels,
            channels,
            3,
            1,
            1,
        )?;
        let x = Tensor::randn(0f32, 1.0, (batch, channels, side, side), dev)?.to_dtype(dtype)?;
        let forward = time(dev, a.runs, || Ok(conv.forward(&x).map(drop)?))?;
        let input_grad = time(dev, a.runs, || {
            Ok(conv_input_grad(&x, (side, side), conv.weight(), 1, 1).map(drop)?)
        })?;
        let gflop = 2.0 * (batch * channels * channels * 9 * side * side) as f64 / 1e9;
        let fields = serde_json::json!({
            "part": "Conv", "channels": channels, "side": side, "batch": batch,
            "forward_gflops": (gflop / forward.best).round(),
            "input_grad_gflops": (gflop / input_grad.best).round(),
        });
        emit(fields, None, dev, dtype);
    }
    Ok(())
}
