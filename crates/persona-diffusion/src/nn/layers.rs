//! The layers every model is made of, named as PyTorch names their parameters (`weight`, `bias`).
//!
//! Every layer has two paths. When no gradient can flow through the input (`!track_op()`, plain generation)
//! it runs candle's fast kernels and builds no graph. When the input is tracked (training), the same value is
//! computed on the detached input and attached through [`super::grad::input_grad_only`], whose backward
//! computes only the input gradient: frozen weights never get one, and fused kernels without a backward
//! can still be used for the forward.

use candle_core::{DType, Module, Tensor, D};

use super::conv;
use super::few_rows;
use super::grad::{in_f32, input_grad_only, normalized_backward, upcast};
use super::norm_cpu::{self, Norm};
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
        let bias = if bias {
            Some(w.get(out_dim, "bias")?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    pub fn from_parts(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

impl Linear {
    fn value(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let k = x.dim(D::Minus1)?;
        let rows = x.reshape((x.elem_count() / k.max(1), k))?;
        let y = if few_rows::applies(&rows, &self.weight) {
            few_rows::linear(&rows, &self.weight, self.bias.as_ref())?
        } else {
            let y = rows.matmul(&self.weight.t()?)?;
            match &self.bias {
                Some(b) => y.broadcast_add(b)?,
                None => y,
            }
        };
        let mut dims = x.dims().to_vec();
        dims.pop();
        dims.push(self.weight.dim(0)?);
        y.reshape(dims)
    }

    /// The gradient of the layer's input from its output's gradient `g` (the weight is frozen).
    fn input_grad(&self, g: &Tensor) -> candle_core::Result<Tensor> {
        let mut dims = g.dims().to_vec();
        let out = dims.pop().unwrap_or(1);
        let rows = g.elem_count() / out.max(1);
        dims.push(self.weight.dim(1)?);
        g.reshape((rows, out))?.matmul(&self.weight)?.reshape(dims)
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = &to_weight_dtype(x, &self.weight)?;
        let value = self.value(&x.detach())?;
        let layer = self.clone();
        input_grad_only(x, value, move |_, _, g| layer.input_grad(g))
    }
}

/// `out(h · gelu(g))` with `[h, g]` the halves of `hg`, a GEGLU feed-forward's second half, keeping only `hg`
/// for the backward: as two layers the graph would also keep the GEGLU's output, half `hg`'s size, for the
/// linear layer (which needs it only to form its weight's gradient, never wanted here). f32 on the CPU, where
/// both halves have kernels; otherwise the two layers.
pub fn geglu_linear(hg: &Tensor, out: &Linear) -> candle_core::Result<Tensor> {
    if !(super::kernels::serves(hg) && out.weight.dtype() == DType::F32) {
        return out.forward(&super::grad::geglu(hg)?);
    }
    let value = out.value(&super::kernels::geglu_f32(&hg.detach())?)?;
    let out = out.clone();
    input_grad_only(hg, value, move |hg, _, g| {
        super::kernels::geglu_backward_f32(hg, &out.input_grad(g)?)
    })
}

/// `x` in the dtype of the layer's weight: what enters a reduced-precision model (latents, a learned
/// condition, a method's f32 module output) is cast on the way in, with a gradient cast back on the way out.
fn to_weight_dtype(x: &Tensor, weight: &Tensor) -> candle_core::Result<Tensor> {
    if x.dtype() == weight.dtype() {
        Ok(x.clone())
    } else {
        x.to_dtype(weight.dtype())
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
    pub fn load(
        w: &Weights,
        cin: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let weight = w.get((cout, cin, kernel, kernel), "weight")?;
        // The CPU kernel reads a tap-major kernel in place instead of repacking it on every call.
        let weight = if kernel > 1 && weight.device().is_cpu() && weight.dtype() == DType::F32 {
            conv::tap_major(&weight)?
        } else {
            weight
        };
        let bias = Some(w.get(cout, "bias")?);
        Ok(Self {
            weight,
            bias,
            stride,
            padding,
        })
    }
}

impl Conv2d {
    /// The dtype the layer computes in (its weight's).
    pub fn dtype(&self) -> DType {
        self.weight.dtype()
    }

    /// The kernel `[out, in, k, k]` as the layer keeps it (on the CPU in f32 a tap-major view, which the
    /// convolution kernels read in place).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    fn is_pointwise(&self) -> candle_core::Result<bool> {
        Ok(self.weight.dim(2)? == 1 && self.stride == 1 && self.padding == 0)
    }

    fn value(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let bias = self.bias.as_ref();
        if !self.is_pointwise()? {
            return conv2d(x, &self.weight, bias, self.padding, self.stride);
        }
        // A 1×1 convolution is a matrix product over channels; a convolution kernel would copy for nothing.
        let (b, c, h, wd) = x.dims4()?;
        let w = self.weight.squeeze(3)?.squeeze(2)?;
        let y = w
            .broadcast_matmul(&x.reshape((b, c, h * wd))?)?
            .reshape((b, (), h, wd))?;
        add_channel_bias(y, bias)
    }
}

/// How the input gradient of a strided convolution (a transposed convolution) is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StridedGrad {
    /// candle's `conv_transpose2d`.
    Transposed,
    /// A stride-1 convolution of the zero-dilated gradient with the flipped kernel (one convolution, with
    /// (s² − 1)/s² of the products on zeros).
    Dilated,
}

impl StridedGrad {
    /// The faster on `device`, by `persona bench conv-grad`: on the CPU candle's transposed convolution
    /// (0.5–0.9× the dilated one's time for SD's three downsamplers at batch 8, even with the dilated one on
    /// the implicit-GEMM kernel, 2026-11-30); on a GPU the dilated
    /// convolution, since candle's CUDA transposed convolution is a direct kernel without tiling or tensor
    /// cores, where the dilated one is im2col + cuBLAS.
    pub fn for_device(device: &candle_core::Device) -> Self {
        if device.is_cpu() {
            Self::Transposed
        } else {
            Self::Dilated
        }
    }
}

/// Gradient of a convolution's input (of height and width `input_hw`) from the output gradient `g`: a
/// transposed convolution with the same kernel. Stride 1 is a plain convolution with the flipped,
/// channel-transposed kernel (on the CPU the implicit-GEMM kernel, elsewhere candle's im2col path; both much
/// faster than candle's direct transposed convolution); larger strides as [`StridedGrad::for_device`] says.
pub fn conv_input_grad(
    g: &Tensor,
    input_hw: (usize, usize),
    w: &Tensor,
    stride: usize,
    padding: usize,
) -> candle_core::Result<Tensor> {
    conv_input_grad_with(
        StridedGrad::for_device(g.device()),
        g,
        input_hw,
        w,
        stride,
        padding,
    )
}

/// [`conv_input_grad`] with the strided method chosen (benchmarks and tests compare the two).
pub fn conv_input_grad_with(
    method: StridedGrad,
    g: &Tensor,
    (h, wd): (usize, usize),
    w: &Tensor,
    stride: usize,
    padding: usize,
) -> candle_core::Result<Tensor> {
    let k = w.dim(2)?;
    if stride > 1 && method == StridedGrad::Transposed {
        // Rows/columns the strided forward skipped at the end come back as output padding; candle takes one
        // value for both dimensions, so pad by the larger and trim.
        let reach = |out: usize| (out - 1) * stride + k - 2 * padding;
        let out_padding = (h - reach(g.dim(2)?)).max(wd - reach(g.dim(3)?));
        return g
            .conv_transpose2d(w, padding, out_padding, stride, 1)?
            .narrow(2, 0, h)?
            .narrow(3, 0, wd);
    }
    if stride == 1 && conv::applies(g) {
        // The implicit-GEMM kernel reads the kernel flipped and transposed as it repacks it.
        return in_cpu_f32(g, |g| conv::conv2d_input_grad(g, w, padding));
    }
    let rev = Tensor::new((0..k as u32).rev().collect::<Vec<_>>(), w.device())?;
    let flipped = w
        .index_select(&rev, 2)?
        .index_select(&rev, 3)?
        .transpose(0, 1)?
        .contiguous()?;
    if stride == 1 {
        return conv2d(g, &flipped, None, k - 1 - padding, 1);
    }
    // Rows/columns the strided forward skipped at the end get their (zero-input) share through extra
    // padding at the bottom/right; the result is trimmed to the input's size.
    let g = dilate(g, stride)?;
    let lo = k - 1 - padding;
    let extra = |out: usize, size: usize| (size + k - 1).saturating_sub(out + 2 * lo);
    let (eh, ew) = (extra(g.dim(2)?, h), extra(g.dim(3)?, wd));
    let padded = g
        .pad_with_zeros(2, lo, lo + eh)?
        .pad_with_zeros(3, lo, lo + ew)?;
    conv2d(&padded, &flipped, None, 0, 1)?
        .narrow(2, 0, h)?
        .narrow(3, 0, wd)
}

/// `conv2d(x, w) + bias`: on the CPU the implicit-GEMM kernel ([`conv`]), elsewhere candle's.
fn conv2d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
    stride: usize,
) -> candle_core::Result<Tensor> {
    if conv::applies(x) {
        return in_cpu_f32(x, |x| conv::conv2d(x, w, bias, stride, padding));
    }
    add_channel_bias(x.conv2d(w, padding, stride, 1, 1)?, bias)
}

/// `y + bias` over the channels of `[B, C, H, W]`.
fn add_channel_bias(y: Tensor, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
    match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?),
        None => Ok(y),
    }
}

/// `f(x)` computed in f32 and returned in `x`'s dtype: the CPU convolution kernel is f32 only (candle's own
/// bf16 `matmul` on the CPU widens the same way).
fn in_cpu_f32(
    x: &Tensor,
    f: impl FnOnce(&Tensor) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Tensor> {
    if x.dtype() == DType::F32 {
        return f(x);
    }
    f(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype())
}

/// `[B, C, H, W]` → `[B, C, (H−1)s+1, (W−1)s+1]` with `s − 1` zeros between neighbouring values.
fn dilate(g: &Tensor, s: usize) -> candle_core::Result<Tensor> {
    let (b, c, h, w) = g.dims4()?;
    let spread = |t: &Tensor, dim: usize| -> candle_core::Result<Tensor> {
        let mut parts = vec![t.clone()];
        parts.resize(s, t.zeros_like()?);
        Tensor::stack(&parts, dim + 1)
    };
    let cols = spread(g, 3)?
        .reshape((b, c, h, w * s))?
        .narrow(3, 0, (w - 1) * s + 1)?;
    spread(&cols, 2)?
        .reshape((b, c, h * s, (w - 1) * s + 1))?
        .narrow(2, 0, (h - 1) * s + 1)
}

impl Conv2d {
    /// The gradient of the layer's input, of height and width `input_hw`, from its output's gradient `g` (the
    /// weights are frozen: no gradient of theirs is ever formed).
    fn input_grad(&self, g: &Tensor, input_hw: (usize, usize)) -> candle_core::Result<Tensor> {
        if self.is_pointwise()? {
            let (b, co, h, wd) = g.dims4()?;
            let wt = self.weight.squeeze(3)?.squeeze(2)?.t()?;
            return wt
                .broadcast_matmul(&g.reshape((b, co, h * wd))?)?
                .reshape((b, (), h, wd));
        }
        conv_input_grad(g, input_hw, &self.weight, self.stride, self.padding)
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = &to_weight_dtype(x, &self.weight)?;
        let value = self.value(&x.detach())?;
        let conv = self.clone();
        input_grad_only(x, value, move |x, _, g| {
            conv.input_grad(g, (x.dim(2)?, x.dim(3)?))
        })
    }
}

/// `conv(act(norm(x)))`, the two halves of a ResNet block, keeping only `x` for the backward. Composed of
/// three layers, the graph would keep `norm(x)` for the activation's backward and `act(norm(x))` for the
/// convolution's as well: two more activations of the block's full size, which is where a training step's
/// memory goes. The backward recomputes `norm(x)` (two passes) instead. Fused for SiLU on f32 CPU tensors
/// (with the kernels of `norm_cpu` and `kernels`); otherwise the three layers.
pub fn norm_act_conv(
    norm: &GroupNorm,
    act: Activation,
    conv: &Conv2d,
    x: &Tensor,
) -> candle_core::Result<Tensor> {
    let fused = matches!(act, Activation::Silu | Activation::Swish)
        && super::kernels::serves(x)
        && conv.dtype() == DType::F32
        && norm.weight.dtype() == DType::F32;
    if !fused {
        return conv.forward(&act.forward(&norm.forward(x)?)?);
    }
    let value = conv.value(&super::kernels::silu_f32(&norm.value_f32(&x.detach())?)?)?;
    let (norm, conv) = (norm.clone(), conv.clone());
    input_grad_only(x, value, move |x, _, g| {
        let d_act = conv.input_grad(g, (x.dim(2)?, x.dim(3)?))?;
        let d_norm = super::kernels::silu_backward_f32(&norm.value_f32(x)?, &d_act)?;
        norm_cpu::norm_backward_f32(x, &d_norm, &norm.weight, Norm::Group(norm.groups), norm.eps)
    })
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
        Ok(Self {
            weight: w.get(channels, "weight")?,
            bias: w.get(channels, "bias")?,
            groups,
            eps,
        })
    }
}

impl GroupNorm {
    /// The value of an f32 CPU `x`, by the kernel of `norm_cpu`.
    fn value_f32(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        norm_cpu::group_norm_f32(x, &self.weight, &self.bias, self.groups, self.eps)
    }
}

/// `[C]` → `[1, C, 1, …]` so a per-channel vector broadcasts over `[B, C, …]`.
fn per_channel(v: &Tensor, rank: usize) -> candle_core::Result<Tensor> {
    let mut shape = vec![1, v.dim(0)?];
    shape.resize(rank, 1);
    v.reshape(shape)
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, rank, groups, eps) = (x.dim(0)?, x.rank(), self.groups, self.eps);
        let (gamma, beta) = (
            per_channel(&self.weight, rank)?,
            per_channel(&self.bias, rank)?,
        );
        let xd = x.detach();
        let value = if super::kernels::serves(&xd) {
            self.value_f32(&xd)?
        } else {
            in_f32(&xd, |x| {
                let normed =
                    normalize_last_dim(&x.reshape((b, groups, ()))?, eps)?.reshape(x.shape())?;
                normed
                    .broadcast_mul(&upcast(&gamma)?)?
                    .broadcast_add(&upcast(&beta)?)
            })?
        };
        let weight = self.weight.clone();
        input_grad_only(x, value, move |x, _, g| {
            if super::kernels::serves(x) && super::kernels::serves(g) {
                return norm_cpu::norm_backward_f32(x, g, &weight, Norm::Group(groups), eps);
            }
            let g_hat = g.broadcast_mul(&gamma)?.reshape((b, groups, ()))?;
            normalized_backward(&x.reshape((b, groups, ()))?, &g_hat, eps)?.reshape(x.shape())
        })
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
        Ok(Self {
            weight: w.get(dim, "weight")?,
            bias: w.get(dim, "bias")?,
            eps,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let xd = x.detach().contiguous()?;
        // The fused kernel takes f32, and half precision on the GPU (accumulating in f32); f64 (gradient
        // tests) and half precision on the CPU take the composite, the latter upcast.
        let fused = match xd.dtype() {
            DType::F32 => true,
            DType::BF16 | DType::F16 => xd.device().is_cuda(),
            _ => false,
        };
        let value = if fused {
            candle_nn::ops::layer_norm(&xd, &self.weight, &self.bias, self.eps as f32)?
        } else {
            in_f32(&xd, |x| {
                normalize_last_dim(x, self.eps)?
                    .broadcast_mul(&upcast(&self.weight)?)?
                    .broadcast_add(&upcast(&self.bias)?)
            })?
        };
        let (gamma, eps) = (self.weight.clone(), self.eps);
        input_grad_only(x, value, move |x, _, g| {
            if super::kernels::serves(x) && super::kernels::serves(g) {
                return norm_cpu::norm_backward_f32(x, g, &gamma, Norm::Layer, eps);
            }
            normalized_backward(x, &g.broadcast_mul(&gamma)?, eps)
        })
    }
}

/// `(x − mean) / √(var + eps)` over the last dimension, biased variance as PyTorch's norms use.
fn normalize_last_dim(x: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    centered.broadcast_div(&(var + eps)?.sqrt()?)
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
            Activation::Gelu => super::grad::gelu_erf(x),
            Activation::QuickGelu => x.mul(&sigmoid(&(x * 1.702)?)?),
            Activation::Silu | Activation::Swish => silu(x),
        }
    }
}

/// `x·σ(x)`: on the CPU in f32 a vectorised kernel (candle's calls the scalar `expf`), with the backward
/// `g·σ(x)·(1 + x·(1 − σ(x)))`.
fn silu(x: &Tensor) -> candle_core::Result<Tensor> {
    if !super::kernels::serves(x) {
        return x.silu();
    }
    let value = super::kernels::silu_f32(&x.detach())?;
    input_grad_only(x, value, |x, _, g| {
        if super::kernels::serves(g) {
            return super::kernels::silu_backward_f32(x, g);
        }
        let s = sigmoid(x)?;
        let slope = ((x * (1.0 - &s)?)? + 1.0)?;
        g * (s * slope)?
    })
}

/// Nearest-neighbour resize of `[B, C, H, W]` to `th × tw` (PyTorch's `nearest`: source index
/// `⌊dst · H / th⌋`), with an input-only backward that sums each source pixel's copies (`index_add`).
/// candle's own backward is a grouped convolution with one group per channel — thousands of tiny
/// convolutions, without a bf16 CPU kernel — and it overwrites, not adds, the input's gradient.
pub fn upsample_nearest(x: &Tensor, th: usize, tw: usize) -> candle_core::Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let value = x.detach().upsample_nearest2d(th, tw)?;
    let source = |n: usize, to: usize| -> Vec<u32> {
        (0..to)
            .map(|i| ((i as f64 * n as f64 / to as f64) as usize).min(n - 1) as u32)
            .collect()
    };
    let (rows, cols) = (source(h, th), source(w, tw));
    input_grad_only(x, value, move |x, _, g| {
        let (b, c, h, w) = x.dims4()?;
        if super::kernels::serves(g) {
            return super::kernels::upsample_nearest_backward_f32(g, &rows, &cols, h, w);
        }
        let dev = g.device();
        let g = g.contiguous()?;
        let summed_cols = Tensor::zeros((b, c, g.dim(2)?, w), g.dtype(), dev)?.index_add(
            &Tensor::new(cols.as_slice(), dev)?,
            &g,
            3,
        )?;
        Tensor::zeros((b, c, h, w), g.dtype(), dev)?.index_add(
            &Tensor::new(rows.as_slice(), dev)?,
            &summed_cols,
            2,
        )
    })
}

/// Differentiable logistic function.
pub fn sigmoid(x: &Tensor) -> candle_core::Result<Tensor> {
    (x.neg()?.exp()? + 1.0)?.recip()
}
