//! Lean, exact gradients through a frozen model.
//!
//! candle's backward computes (and keeps until the end) a gradient for *every* input of every op on the
//! path, frozen weights and constant operands included: each bias add leaves an activation-sized tensor in
//! the gradient store, each convolution computes its kernel gradient. And its fused softmax / layer-norm
//! kernels have no backward at all. Personalization only needs gradients with respect to a few embeddings.
//!
//! So every op that mixes a tracked tensor with a frozen one goes through [`input_grad_only`]: the forward
//! value is computed with plain (fast, fused) kernels on the detached input, and a custom op attaches it to
//! the graph with a backward that returns the *input* gradient and nothing else. After `backward()` the
//! gradient store then holds exactly the trainable variables.

use std::sync::Arc;

use candle_core::{backend::BackendStorage, CpuStorage, CustomOp1, Layout, Shape, Storage, Tensor, D};

type Backward = dyn Fn(&Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor> + Send + Sync;

/// A custom op whose forward returns a value computed beforehand and whose backward is a closure of
/// `(input, output, output gradient) → input gradient`.
struct Precomputed {
    value: Tensor,
    backward: Arc<Backward>,
}

impl CustomOp1 for Precomputed {
    fn name(&self) -> &'static str {
        "input-grad-only"
    }

    fn cpu_fwd(&self, _storage: &CpuStorage, _layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        precomputed_output(&self.value, self.name())
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some((self.backward)(arg, res, grad_res)?))
    }
}

/// A value computed beforehand, as the output storage of the custom op `op` that attaches it to a graph.
pub(crate) fn precomputed_output(value: &Tensor, op: &str) -> candle_core::Result<(CpuStorage, Shape)> {
    let (storage, layout) = value.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("{op}: value not on the CPU");
    };
    let (start, end) = layout.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg(format!("{op}: value not contiguous")))?;
    let copied = match cpu {
        CpuStorage::F32(v) => CpuStorage::F32(v[start..end].to_vec()),
        CpuStorage::F64(v) => CpuStorage::F64(v[start..end].to_vec()),
        other => candle_core::bail!("{op}: unsupported dtype {:?}", other.dtype()),
    };
    Ok((copied, value.shape().clone()))
}

/// Attaches `value` (computed from `input.detach()`) to the graph of `input`, with `backward` giving the
/// gradient of `input` from `(input, value, gradient of value)`. Untracked inputs return `value` as is.
pub fn input_grad_only(
    input: &Tensor,
    value: Tensor,
    backward: impl Fn(&Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor> + Send + Sync + 'static,
) -> candle_core::Result<Tensor> {
    if !input.track_op() {
        return Ok(value);
    }
    let value = value.contiguous()?;
    input.apply_op1(Precomputed { value, backward: Arc::new(backward) })
}

/// `a + b` with broadcasting, where gradients flow only to the operands that track them: a constant operand
/// (a bias, a time embedding, a mask, a skip connection of the noisy latents) gets none.
pub fn add(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    match (a.track_op(), b.track_op()) {
        (true, true) | (false, false) => a.broadcast_add(b),
        (true, false) => add_constant(a, b),
        (false, true) => add_constant(b, a),
    }
}

/// `x + c` where `c` is constant and broadcasts to `x`'s shape.
fn add_constant(x: &Tensor, c: &Tensor) -> candle_core::Result<Tensor> {
    let value = x.detach().broadcast_add(c)?;
    if value.dims() != x.dims() {
        return x.broadcast_add(c);
    }
    input_grad_only(x, value, |_, _, g| Ok(g.clone()))
}

/// `a · b` (matrix product over the last two dimensions) with gradients only for tracked operands.
pub fn matmul(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    match (a.track_op(), b.track_op()) {
        (true, true) | (false, false) => a.matmul(b),
        (true, false) => {
            let bc = b.clone();
            input_grad_only(a, a.detach().matmul(b)?, move |_, _, g| g.matmul(&bc.t()?))
        }
        (false, true) => {
            let ac = a.clone();
            input_grad_only(b, a.matmul(&b.detach())?, move |_, _, g| ac.t()?.matmul(g))
        }
    }
}

/// Concatenation of two tensors along `dim`, with gradients only for tracked operands.
pub fn cat2(a: &Tensor, b: &Tensor, dim: usize) -> candle_core::Result<Tensor> {
    match (a.track_op(), b.track_op()) {
        (true, true) | (false, false) => Tensor::cat(&[a, b], dim),
        (true, false) => {
            let n = a.dim(dim)?;
            input_grad_only(a, Tensor::cat(&[&a.detach(), b], dim)?, move |_, _, g| g.narrow(dim, 0, n))
        }
        (false, true) => {
            let (off, n) = (a.dim(dim)?, b.dim(dim)?);
            input_grad_only(b, Tensor::cat(&[a, &b.detach()], dim)?, move |_, _, g| g.narrow(dim, off, n))
        }
    }
}

/// Softmax over the last dimension: fused forward, backward `y ⊙ (g − Σ g ⊙ y)`.
pub fn softmax_last_dim(x: &Tensor) -> candle_core::Result<Tensor> {
    let xd = x.detach().contiguous()?;
    let value = if xd.dtype() == candle_core::DType::F32 {
        candle_nn::ops::softmax_last_dim(&xd)?
    } else {
        let e = xd.broadcast_sub(&xd.max_keepdim(D::Minus1)?)?.exp()?;
        e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?
    };
    input_grad_only(x, value, |_, y, g| {
        let dot = (g * y)?.sum_keepdim(D::Minus1)?;
        y * g.broadcast_sub(&dot)?
    })
}

/// Backward of `y = γ ⊙ x̂ + β` with `x̂ = (x − μ)/σ` normalised over the last dimension of `x` (the caller
/// reshapes so that the normalised group is the last dimension): `dx = (ĝ − mean ĝ − x̂ · mean(ĝ ⊙ x̂)) / σ`
/// with `ĝ = γ ⊙ g`.
pub fn normalized_backward(x: &Tensor, g_hat: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let rstd = ((centered.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?).recip()?;
    let x_hat = centered.broadcast_mul(&rstd)?;
    let term = g_hat
        .broadcast_sub(&g_hat.mean_keepdim(D::Minus1)?)?
        .sub(&x_hat.broadcast_mul(&(g_hat * &x_hat)?.mean_keepdim(D::Minus1)?)?)?;
    term.broadcast_mul(&rstd)
}

/// `base` `[B, L, d]` (constant) with the rows at `positions` replaced by rows of `rows` `[n, d]`:
/// `positions[k] = (b, l, r)` puts `rows[r]` at `base[b, l]`. The gradient flows to `rows` only — this is how
/// learned token embeddings enter a frozen text encoder.
pub fn place_rows(base: &Tensor, rows: &Tensor, positions: &[(usize, usize, usize)]) -> candle_core::Result<Tensor> {
    let (b, l, d) = base.dims3()?;
    let mut value = base.to_dtype(candle_core::DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let row_values = rows.detach().to_dtype(candle_core::DType::F64)?.to_vec2::<f64>()?;
    for &(bi, li, r) in positions {
        let at = (bi * l + li) * d;
        value[at..at + d].copy_from_slice(&row_values[r]);
    }
    let value = Tensor::from_vec(value, (b, l, d), base.device())?.to_dtype(rows.dtype())?;
    let positions = positions.to_vec();
    input_grad_only(rows, value, move |rows, _, g| {
        let n = rows.dim(0)?;
        let mut per_row: Vec<Option<Tensor>> = vec![None; n];
        for &(bi, li, r) in &positions {
            let gr = g.get(bi)?.get(li)?;
            per_row[r] = Some(match per_row[r].take() {
                Some(acc) => (acc + gr)?,
                None => gr,
            });
        }
        let zeros = Tensor::zeros(d, g.dtype(), g.device())?;
        let stacked: Vec<Tensor> = per_row.into_iter().map(|t| t.unwrap_or_else(|| zeros.clone())).collect();
        Tensor::stack(&stacked, 0)
    })
}

/// Mean squared error with a constant target (the diffusion loss): the target gets no gradient.
pub fn mse_loss(pred: &Tensor, target: &Tensor) -> candle_core::Result<Tensor> {
    add(pred, &target.detach().neg()?)?.sqr()?.mean_all()
}

/// Exact (erf) GELU with an exact backward `Φ(x) + x·φ(x)`. candle's own backward rounds 1/√(2π) to six
/// digits, a 7e-7 relative error that finite-difference checks in f64 see.
pub fn gelu_erf(x: &Tensor) -> candle_core::Result<Tensor> {
    let value = x.detach().gelu_erf()?;
    input_grad_only(x, value, |x, _, g| {
        let cdf = ((x / std::f64::consts::SQRT_2)?.erf()? + 1.0)? * 0.5;
        let pdf = (x.sqr()? * -0.5)?.exp()? * (0.5 * std::f64::consts::FRAC_2_SQRT_PI * std::f64::consts::FRAC_1_SQRT_2);
        g * (cdf? + (x * pdf?)?)?
    })
}
