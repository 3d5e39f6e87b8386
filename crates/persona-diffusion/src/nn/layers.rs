//! The layers every model is made of, named as PyTorch names their parameters (`weight`, `bias`).
//!
//! Normalisations and softmax pick candle's fused kernels only when no gradient can flow through the input
//! (`!track_op()`): those kernels have no backward, so on a training path the differentiable composite is used
//! instead, with the same numerics.

use candle_core::{DType, Module, Tensor, D};

use super::weights::Weights;
use crate::Result;

/// `y = x Wᵀ + b` on the last dimension.
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn load(w: &Weights, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let weight = w.get((out_dim, in_dim), "weight")?;
        let bias = if bias { Some(w.get(out_dim, "bias")?) } else { None };
        Ok(Self { weight, bias })
    }

    pub fn from_parts(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = match x.dims() {
            [b1, b2, m, k] => x.reshape((b1 * b2 * m, *k))?.matmul(&self.weight.t()?)?.reshape((*b1, *b2, *m, ()))?,
            [b, m, k] => x.reshape((b * m, *k))?.matmul(&self.weight.t()?)?.reshape((*b, *m, ()))?,
            _ => x.matmul(&self.weight.t()?)?,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// 2-D convolution, square kernel, NCHW.
#[derive(Clone, Debug)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    padding: usize,
}

impl Conv2d {
    pub fn load(w: &Weights, cin: usize, cout: usize, kernel: usize, stride: usize, padding: usize) -> Result<Self> {
        let weight = w.get((cout, cin, kernel, kernel), "weight")?;
        let bias = Some(w.get(cout, "bias")?);
        Ok(Self { weight, bias, stride, padding })
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = if self.weight.dim(2)? == 1 && self.stride == 1 && self.padding == 0 {
            // A 1×1 convolution is a matrix product over channels; candle's im2col path would copy for nothing.
            let (b, c, h, wd) = x.dims4()?;
            let w = self.weight.squeeze(3)?.squeeze(2)?;
            w.broadcast_left(b)?.matmul(&x.reshape((b, c, h * wd))?)?.reshape((b, (), h, wd))?
        } else {
            x.conv2d(&self.weight, self.padding, self.stride, 1, 1)?
        };
        match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?),
            None => Ok(y),
        }
    }
}

/// GroupNorm over NCHW (or any `[B, C, …]`) with an affine per channel.
#[derive(Clone, Debug)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    pub fn load(w: &Weights, groups: usize, channels: usize, eps: f64) -> Result<Self> {
        Ok(Self { weight: w.get(channels, "weight")?, bias: w.get(channels, "bias")?, groups, eps })
    }
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims().to_vec();
        let (b, c) = (dims[0], dims[1]);
        let grouped = x.reshape((b, self.groups, ()))?;
        let normed = normalize_last_dim(&grouped, self.eps)?.reshape(dims.as_slice())?;
        let mut affine_shape = vec![1, c];
        affine_shape.resize(dims.len(), 1);
        normed.broadcast_mul(&self.weight.reshape(affine_shape.as_slice())?)?.broadcast_add(&self.bias.reshape(affine_shape)?)
    }
}

/// LayerNorm over the last dimension.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub fn load(w: &Weights, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self { weight: w.get(dim, "weight")?, bias: w.get(dim, "bias")?, eps })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if !x.track_op() && x.is_contiguous() {
            return candle_nn::ops::layer_norm(x, &self.weight, &self.bias, self.eps as f32);
        }
        normalize_last_dim(x, self.eps)?.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)
    }
}

/// `(x − mean) / √(var + eps)` over the last dimension, biased variance as PyTorch's norms use.
fn normalize_last_dim(x: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    centered.broadcast_div(&(var + eps)?.sqrt()?)
}

/// Softmax over the last dimension (differentiable when it needs to be, fused otherwise).
pub fn softmax_last_dim(x: &Tensor) -> candle_core::Result<Tensor> {
    if !x.track_op() && x.dtype() == DType::F32 {
        return candle_nn::ops::softmax_last_dim(x);
    }
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// The activations of the model configs (`hidden_act`, `act_fn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// Exact (erf) GELU, as PyTorch's default `gelu`.
    Gelu,
    /// `x·σ(1.702x)`, OpenAI CLIP's approximation (SD 1.x text encoder).
    QuickGelu,
    Silu,
    #[serde(alias = "swish")]
    Swish,
}

impl Module for Activation {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activation::Gelu => x.gelu_erf(),
            Activation::QuickGelu => x.mul(&sigmoid(&(x * 1.702)?)?),
            Activation::Silu | Activation::Swish => x.silu(),
        }
    }
}

/// Differentiable logistic function.
pub fn sigmoid(x: &Tensor) -> candle_core::Result<Tensor> {
    (x.neg()?.exp()? + 1.0)?.recip()
}
