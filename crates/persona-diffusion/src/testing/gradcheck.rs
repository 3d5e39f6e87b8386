//! The gradient checks of every differentiable building block, as a library so that they run on every
//! device: `cargo test` runs them on the CPU, `persona bench gradcheck --device cuda` on a GPU (where no Rust
//! toolchain is needed).
//!
//! - [`finite_differences`]: in f64, the backward of each block against central differences of
//!   `mse(f(x), target)`, and the leanness rule (the gradient store holds only the variable).
//! - [`half_precision`]: each block in bf16/f16 against the same block in f32, value and input gradient.

use candle_core::{DType, Device, Module, Tensor, Var};
use rand::SeedableRng;
use rand_distr::Distribution;

use super::grad_count;
use crate::nn::grad::{add, cat2, matmul, mse_loss, place_rows, softmax_last_dim};
use crate::nn::sdpa::sdpa_blocked;
use crate::nn::{
    conv_input_grad_with, geglu_linear, norm_act_conv, upsample_nearest, Activation, Conv2d,
    GroupNorm, LayerNorm, Linear, StridedGrad, Weights,
};
use crate::Result;

/// One check's result: `error` must stay within `limit`.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub name: String,
    pub error: f64,
    pub limit: f64,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.error <= self.limit
    }
}

type Block = Box<dyn Fn(&Tensor) -> candle_core::Result<Tensor>>;

/// Seeded standard-normal values in f64 on `device`.
pub fn randn(shape: &[usize], seed: u64, device: &Device) -> Result<Tensor> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|_| rand_distr::StandardNormal.sample(&mut rng))
        .collect();
    Ok(Tensor::from_vec(v, shape, device)?)
}

/// The blocks under test, built with weights in `dtype` on `device`, with the input shape each takes.
fn blocks(device: &Device, dtype: DType) -> Result<Vec<(String, Vec<usize>, Block)>> {
    let w = Weights::random_as(3, device, dtype);
    let mut out: Vec<(String, Vec<usize>, Block)> = Vec::new();
    let mut push =
        |name: &str, shape: &[usize], f: Block| out.push((name.to_string(), shape.to_vec(), f));
    let l = Linear::load(&w.pp("l"), 6, 5, true)?;
    push("linear", &[2, 3, 6], Box::new(move |x| l.forward(x)));
    let c = Conv2d::load(&w.pp("c"), 3, 4, 3, 1, 1)?;
    push("conv 3x3", &[2, 3, 5, 6], Box::new(move |x| c.forward(x)));
    let c = Conv2d::load(&w.pp("c"), 3, 4, 3, 2, 1)?;
    let c2 = c.clone();
    push(
        "conv 3x3 stride 2 (odd width)",
        &[1, 3, 6, 7],
        Box::new(move |x| c.forward(x)),
    );
    push(
        "conv 3x3 stride 2 (even)",
        &[2, 3, 8, 6],
        Box::new(move |x| c2.forward(x)),
    );
    let c = Conv2d::load(&w.pp("c"), 3, 4, 1, 1, 0)?;
    push("conv 1x1", &[2, 3, 4, 4], Box::new(move |x| c.forward(x)));
    // Named without "norm" so the random loader gives a non-trivial affine (γ ≠ 1) to test.
    let g = GroupNorm::load(&w.pp("g"), 2, 6, 1e-5)?;
    push("group norm", &[2, 6, 3, 3], Box::new(move |x| g.forward(x)));
    // A ResNet block's half; in f32 on the CPU one fused op that recomputes the norm in its backward. Few
    // outputs: the mean-squared loss's gradient shrinks with their number, and γ is small (±0.02), so with
    // more the central differences' rounding (loss · 1e-10) would reach the 1e-6 limit.
    let (gn, c) = (
        GroupNorm::load(&w.pp("gs"), 2, 4, 1e-5)?,
        Conv2d::load(&w.pp("c"), 4, 1, 3, 1, 1)?,
    );
    push(
        "group norm → SiLU → conv 3x3",
        &[1, 4, 3, 3],
        Box::new(move |x| norm_act_conv(&gn, Activation::Silu, &c, x)),
    );
    let l = LayerNorm::load(&w.pp("l"), 7, 1e-5)?;
    push("layer norm", &[2, 3, 7], Box::new(move |x| l.forward(x)));
    push("softmax", &[2, 3, 5], Box::new(softmax_last_dim));
    push(
        "upsample nearest ×2",
        &[1, 2, 3, 4],
        Box::new(|x| upsample_nearest(x, 6, 8)),
    );
    push(
        "upsample nearest to an odd size",
        &[1, 2, 3, 4],
        Box::new(|x| upsample_nearest(x, 7, 9)),
    );
    push("geglu", &[2, 3, 8], Box::new(crate::nn::grad::geglu));
    // A feed-forward's second half; in f32 on the CPU one op that keeps only its input for the backward.
    let l = Linear::load(&w.pp("ff"), 4, 3, true)?;
    push(
        "geglu → linear",
        &[2, 3, 8],
        Box::new(move |x| geglu_linear(x, &l)),
    );
    for a in [Activation::Gelu, Activation::QuickGelu, Activation::Silu] {
        push(&format!("{a:?}"), &[3, 4], Box::new(move |x| a.forward(x)));
    }
    Ok(out)
}

/// Operations with constant operands (the constants in `dtype`, the variable cast to it).
fn constant_ops(device: &Device, dtype: DType) -> Result<Vec<(String, Vec<usize>, Block)>> {
    let c = randn(&[3, 4], 9, device)?.to_dtype(dtype)?;
    let c2 = randn(&[4, 2], 10, device)?.to_dtype(dtype)?;
    let base = randn(&[2, 5, 3], 11, device)?.to_dtype(dtype)?;
    let (q, k, v) = (
        randn(&[3, 5, 2], 11, device)?,
        randn(&[3, 4, 2], 12, device)?,
        randn(&[3, 4, 2], 13, device)?,
    );
    let (q, k, v) = (q.to_dtype(dtype)?, k.to_dtype(dtype)?, v.to_dtype(dtype)?);
    let cast = move |x: &Tensor| x.to_dtype(dtype);
    let mut out: Vec<(String, Vec<usize>, Block)> = Vec::new();
    let cc = c.clone();
    out.push((
        "add constant".into(),
        vec![3, 4],
        Box::new(move |x| add(&cast(x)?, &cc)),
    ));
    let cc = c.clone();
    out.push((
        "constant + x".into(),
        vec![3, 4],
        Box::new(move |x| add(&cc, &cast(x)?)),
    ));
    let big = randn(&[2, 3, 4], 14, device)?.to_dtype(dtype)?;
    out.push((
        "x (broadcast) + constant".into(),
        vec![3, 1],
        Box::new(move |x| add(&cast(x)?, &big)),
    ));
    let cc = c.clone();
    out.push((
        "matmul x·C".into(),
        vec![2, 3],
        Box::new(move |x| matmul(&cast(x)?, &cc)),
    ));
    out.push((
        "matmul C·x".into(),
        vec![2, 3],
        Box::new(move |x| matmul(&c2, &cast(x)?)),
    ));
    let cc = c.clone();
    out.push((
        "cat x,C".into(),
        vec![3, 4],
        Box::new(move |x| cat2(&cast(x)?, &cc, 0)),
    ));
    out.push((
        "cat C,x".into(),
        vec![3, 4],
        Box::new(move |x| cat2(&c, &cast(x)?, 1)),
    ));
    let positions = [(0, 1, 0), (1, 4, 0), (1, 2, 1)];
    out.push((
        "place_rows".into(),
        vec![2, 3],
        Box::new(move |x| place_rows(&base, &cast(x)?, &positions)),
    ));
    // Three heads, a block of 20 score elements holds one: forward and backward both run in three blocks.
    let (k1, v1) = (k.clone(), v.clone());
    out.push((
        "sdpa dq".into(),
        vec![3, 5, 2],
        Box::new(move |x| sdpa_blocked(&cast(x)?, &k1, &v1, 20)),
    ));
    let (q1, v1) = (q.clone(), v.clone());
    out.push((
        "sdpa dk".into(),
        vec![3, 4, 2],
        Box::new(move |x| sdpa_blocked(&q1, &cast(x)?, &v1, 20)),
    ));
    out.push((
        "sdpa dv".into(),
        vec![3, 4, 2],
        Box::new(move |x| sdpa_blocked(&q, &k, &cast(x)?, 20)),
    ));
    Ok(out)
}

/// Every block's backward against central differences in f64 on `device` (relative to the largest gradient
/// element; limit 1e-6), plus the leanness rule (a failed rule is reported as error 1).
pub fn finite_differences(device: &Device) -> Result<Vec<Outcome>> {
    let mut outcomes = Vec::new();
    for (name, shape, f) in blocks(device, DType::F64)?
        .into_iter()
        .chain(constant_ops(device, DType::F64)?)
    {
        outcomes.push(Outcome {
            name,
            error: fd_error(&shape, &f, device)?,
            limit: 1e-6,
        });
    }
    outcomes.extend(strided_methods_agree(device)?);
    outcomes.extend(single_precision(device)?);
    Ok(outcomes)
}

/// Every block in f32 against the same block in f64, whose gradient the finite differences above check:
/// f32 runs other kernels (on the CPU the implicit-GEMM convolution and the fused GroupNorm, which f64
/// leaves to candle), so their values and input gradients are held to the checked ones, `‖a − b‖ / ‖b‖`
/// within 1e-5 (a few units of f32 rounding over sums of a few dozen terms).
fn single_precision(device: &Device) -> Result<Vec<Outcome>> {
    let reference = blocks(device, DType::F64)?
        .into_iter()
        .chain(constant_ops(device, DType::F64)?);
    let single = blocks(device, DType::F32)?
        .into_iter()
        .chain(constant_ops(device, DType::F32)?);
    let mut outcomes = Vec::new();
    for ((name, shape, f64_block), (_, _, f32_block)) in reference.zip(single) {
        let x = Var::from_tensor(&randn(&shape, 1, device)?.to_dtype(DType::F32)?)?;
        let (y_ref, g_ref) = value_and_grad(&x, &f64_block, DType::F64, device)?;
        let (y, g) = value_and_grad(&x, &f32_block, DType::F32, device)?;
        for (what, a, b) in [("value", &y, &y_ref), ("gradient", &g, &g_ref)] {
            outcomes.push(Outcome {
                name: format!("{name} f32 = f64 {what}"),
                error: norm_error(a, b)?,
                limit: 1e-5,
            });
        }
    }
    Ok(outcomes)
}

/// The strided convolution's input gradient is computed one way on the CPU and another on a GPU (the
/// finite differences above check the device's own): both ways must agree on every device, in f64 to
/// rounding, for odd and even sizes.
fn strided_methods_agree(device: &Device) -> Result<Vec<Outcome>> {
    let w = randn(&[4, 3, 3, 3], 31, device)?;
    let mut out = Vec::new();
    for (name, side) in [("odd", (7usize, 5usize)), ("even", (8, 6))] {
        let g = randn(&[2, 4, side.0.div_ceil(2), side.1.div_ceil(2)], 33, device)?;
        let a = conv_input_grad_with(StridedGrad::Transposed, &g, side, &w, 2, 1)?;
        let b = conv_input_grad_with(StridedGrad::Dilated, &g, side, &w, 2, 1)?;
        let name = format!("stride-2 input gradient, transposed = dilated ({name})");
        out.push(Outcome {
            name,
            error: norm_error(&b, &a)?,
            limit: 1e-12,
        });
    }
    Ok(out)
}

fn fd_error(shape: &[usize], f: &Block, device: &Device) -> Result<f64> {
    let x = Var::from_tensor(&randn(shape, 1, device)?)?;
    let target = randn(f(x.as_tensor())?.dims(), 2, device)?;
    let loss = |t: &Tensor| -> Result<Tensor> { Ok(mse_loss(&f(t)?, &target)?) };
    let grads = loss(x.as_tensor())?.backward()?;
    if grad_count(&grads) != 1 {
        return Ok(1.0);
    }
    let g = grads
        .get(x.as_tensor())
        .map(|g| g.flatten_all()?.to_vec1::<f64>())
        .transpose()?
        .unwrap_or_default();
    let base = x.as_tensor().flatten_all()?.to_vec1::<f64>()?;
    let scale = g.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
    let n = base.len();
    let mut worst = 0f64;
    for k in [0, n / 3, n / 2, n - 1] {
        let at = |d: f64| -> Result<f64> {
            let mut v = base.clone();
            v[k] += d;
            Ok(loss(&Tensor::from_vec(v, shape, device)?)?.to_scalar::<f64>()?)
        };
        let fd = (at(1e-6)? - at(-1e-6)?) / 2e-6;
        worst = worst.max((g.get(k).copied().unwrap_or(f64::NAN) - fd).abs() / scale);
    }
    Ok(if worst.is_nan() { f64::INFINITY } else { worst })
}

/// Every block in `dtype` (bf16 or f16) against the same block in f32 on `device`: `‖a − b‖ / ‖b‖` of the
/// value and of the input gradient of `Σ y ⊙ r`. The limits are four units of the format's rounding
/// (2⁻⁸ for bf16, 2⁻¹¹ for f16: 1.6e-2 and 2e-3) for the value and eight for the gradient: each block rounds
/// its inputs, weights and output once or twice (seen: at most 3.8e-3 / 8.1e-3 in bf16, 4.9e-4 / 5.2e-4 in f16).
pub fn half_precision(device: &Device, dtype: DType) -> Result<Vec<Outcome>> {
    let limit = if dtype == DType::BF16 { 1.6e-2 } else { 2e-3 };
    let reference = blocks(device, DType::F32)?
        .into_iter()
        .chain(constant_ops(device, DType::F32)?);
    let half = blocks(device, dtype)?
        .into_iter()
        .chain(constant_ops(device, dtype)?);
    let mut outcomes = Vec::new();
    for ((name, shape, f32_block), (_, _, half_block)) in reference.zip(half) {
        let x = Var::from_tensor(&randn(&shape, 1, device)?.to_dtype(DType::F32)?)?;
        let (y_ref, g_ref) = value_and_grad(&x, &f32_block, DType::F32, device)?;
        let (y, g) = value_and_grad(&x, &half_block, dtype, device)?;
        outcomes.push(Outcome {
            name: format!("{name} value"),
            error: norm_error(&y, &y_ref)?,
            limit,
        });
        outcomes.push(Outcome {
            name: format!("{name} gradient"),
            error: norm_error(&g, &g_ref)?,
            limit: 2.0 * limit,
        });
    }
    Ok(outcomes)
}

/// `f(x)` with `x` cast to `dtype` (the gradient flows back through the cast), and the input gradient.
fn value_and_grad(x: &Var, f: &Block, dtype: DType, device: &Device) -> Result<(Tensor, Tensor)> {
    let y = f(&x.as_tensor().to_dtype(dtype)?)?.to_dtype(DType::F32)?;
    let r = randn(y.dims(), 5, device)?.to_dtype(DType::F32)?;
    let grads = (&y * &r)?.sum_all()?.backward()?;
    let g = grads
        .get(x.as_tensor())
        .cloned()
        .ok_or_else(|| crate::Error::Msg("no input gradient".into()))?;
    Ok((y, g))
}

/// `‖a − b‖ / ‖b‖` in f64.
pub fn norm_error(a: &Tensor, b: &Tensor) -> Result<f64> {
    let (a, b) = (a.to_dtype(DType::F64)?, b.to_dtype(DType::F64)?);
    let diff = (&a - &b)?.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    let scale = b.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt().max(1e-30);
    Ok(diff / scale)
}
