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

use std::sync::{Arc, Mutex};

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Storage, Tensor, D};

type Backward = dyn Fn(&Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor> + Send + Sync;

/// A custom op whose forward returns a value computed beforehand and whose backward is a closure of
/// `(input, output, output gradient) → input gradient`.
struct Precomputed {
    value: PrecomputedValue,
    backward: Arc<Backward>,
}

impl CustomOp1 for Precomputed {
    fn name(&self) -> &'static str {
        "input-grad-only"
    }

    fn cpu_fwd(
        &self,
        _storage: &CpuStorage,
        _layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.value.cpu(self.name())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        self.value.cuda(self.name())
    }

    fn bwd(
        &self,
        arg: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some((self.backward)(arg, res, grad_res)?))
    }
}

/// A value computed beforehand, handed out once as the output storage of the custom op that attaches it to
/// a graph. The op itself lives as long as the graph: taking the value out (instead of keeping a copy in the
/// op) means each activation is held once, not twice.
pub(crate) struct PrecomputedValue(Mutex<Option<Tensor>>);

impl PrecomputedValue {
    pub(crate) fn new(value: Tensor) -> Self {
        Self(Mutex::new(Some(value)))
    }

    fn take(&self, op: &str) -> candle_core::Result<Tensor> {
        let taken = self.0.lock().map(|mut v| v.take()).unwrap_or(None);
        taken
            .ok_or_else(|| candle_core::Error::Msg(format!("{op}: precomputed value already used")))
    }

    pub(crate) fn cpu(&self, op: &str) -> candle_core::Result<(CpuStorage, Shape)> {
        let value = self.take(op)?;
        let (storage, layout) = value.storage_and_layout();
        let copy = match (&*storage, layout.contiguous_offsets()) {
            // Every activation of a training step passes here once: copied by both cores, not one.
            (Storage::Cpu(CpuStorage::F32(data)), Some((start, end))) => {
                CpuStorage::F32(super::buffers::copied(&data[start..end]))
            }
            (Storage::Cpu(s), _) => copy_storage(s, layout)?,
            _ => candle_core::bail!("{op}: value not on the CPU"),
        };
        Ok((copy, value.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    pub(crate) fn cuda(&self, op: &str) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let value = self.take(op)?;
        let (storage, layout) = value.storage_and_layout();
        match &*storage {
            Storage::Cuda(s) => Ok((copy_storage(s, layout)?, value.shape().clone())),
            _ => candle_core::bail!("{op}: value not on the GPU"),
        }
    }
}

/// A compact copy of the elements `layout` addresses in `s`, on the same device (no host round trip).
fn copy_storage<S>(s: &S, layout: &Layout) -> candle_core::Result<S>
where
    S: BackendStorage,
    S::Device: BackendDevice<Storage = S>,
{
    // SAFETY: every element of the new buffer is written by the strided copy below.
    let mut dst = unsafe { s.device().alloc_uninit(layout.shape(), s.dtype())? };
    s.copy_strided_src(&mut dst, 0, layout)?;
    Ok(dst)
}

/// Runs `f` on `x` in f32 when `x` is in half precision, and casts the result back: statistics and
/// reductions (norms, softmax row sums) accumulate in f32 as PyTorch's half-precision kernels do.
pub fn in_f32(
    x: &Tensor,
    f: impl FnOnce(&Tensor) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Tensor> {
    match x.dtype() {
        DType::BF16 | DType::F16 => f(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype()),
        _ => f(x),
    }
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
    input.apply_op1(Precomputed {
        value: PrecomputedValue::new(value),
        backward: Arc::new(backward),
    })
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

/// `x + c` where `c` is constant; either may broadcast to the other (SDXL's time embedding, tracked through
/// the pooled text, is added to activations that are not). The gradient of `x` is the output gradient summed
/// over the dimensions `x` was broadcast along.
fn add_constant(x: &Tensor, c: &Tensor) -> candle_core::Result<Tensor> {
    let value = x.detach().broadcast_add(c)?;
    let shape = x.dims().to_vec();
    input_grad_only(x, value, move |_, _, g| sum_to(g, &shape))
}

/// `g` summed down to `shape` (which broadcasts to `g`'s shape): leading dimensions away, size-1 ones kept.
fn sum_to(g: &Tensor, shape: &[usize]) -> candle_core::Result<Tensor> {
    let mut g = g.clone();
    while g.rank() > shape.len() {
        g = g.sum(0)?;
    }
    for (d, &n) in shape.iter().enumerate() {
        if n == 1 && g.dim(d)? != 1 {
            g = g.sum_keepdim(d)?;
        }
    }
    Ok(g)
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
            input_grad_only(a, Tensor::cat(&[&a.detach(), b], dim)?, move |_, _, g| {
                g.narrow(dim, 0, n)
            })
        }
        (false, true) => {
            let (off, n) = (a.dim(dim)?, b.dim(dim)?);
            input_grad_only(b, Tensor::cat(&[a, &b.detach()], dim)?, move |_, _, g| {
                g.narrow(dim, off, n)
            })
        }
    }
}

/// Softmax over the last dimension: fused forward, backward `y ⊙ (g − Σ g ⊙ y)`. Half precision
/// accumulates in f32 (candle's CUDA kernel does so itself; on the CPU the composite runs upcast).
pub fn softmax_last_dim(x: &Tensor) -> candle_core::Result<Tensor> {
    let xd = x.detach().contiguous()?;
    let fused = match xd.dtype() {
        DType::F32 => true,
        DType::BF16 | DType::F16 => xd.device().is_cuda(),
        _ => false,
    };
    let value = if super::kernels::serves(&xd) {
        super::kernels::softmax_last_dim_f32(&xd)?
    } else if fused {
        candle_nn::ops::softmax_last_dim(&xd)?
    } else {
        in_f32(&xd, |x| {
            let e = x.broadcast_sub(&x.max_keepdim(D::Minus1)?)?.exp()?;
            e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
        })?
    };
    input_grad_only(x, value, |_, y, g| {
        let dtype = y.dtype();
        let (y, g) = (upcast(y)?, upcast(g)?);
        let dot = (&g * &y)?.sum_keepdim(D::Minus1)?;
        (y * g.broadcast_sub(&dot)?)?.to_dtype(dtype)
    })
}

/// `x` in f32 when it is in half precision (f32 and f64 unchanged).
pub fn upcast(x: &Tensor) -> candle_core::Result<Tensor> {
    match x.dtype() {
        DType::BF16 | DType::F16 => x.to_dtype(DType::F32),
        _ => Ok(x.clone()),
    }
}

/// Backward of `y = γ ⊙ x̂ + β` with `x̂ = (x − μ)/σ` normalised over the last dimension of `x` (the caller
/// reshapes so that the normalised group is the last dimension): `dx = (ĝ − mean ĝ − x̂ · mean(ĝ ⊙ x̂)) / σ`
/// with `ĝ = γ ⊙ g`. Computed in f32 for half-precision inputs.
pub fn normalized_backward(x: &Tensor, g_hat: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let dtype = x.dtype();
    let (x, g_hat) = (upcast(x)?, upcast(g_hat)?);
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let rstd = ((centered.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?).recip()?;
    let x_hat = centered.broadcast_mul(&rstd)?;
    let term = g_hat
        .broadcast_sub(&g_hat.mean_keepdim(D::Minus1)?)?
        .sub(&x_hat.broadcast_mul(&(&g_hat * &x_hat)?.mean_keepdim(D::Minus1)?)?)?;
    term.broadcast_mul(&rstd)?.to_dtype(dtype)
}

/// `base` `[B, L, d]` (constant) with the rows at `positions` replaced by rows of `rows` `[n, d]`:
/// `positions[k] = (b, l, r)` puts `rows[r]` at `base[b, l]`. The gradient flows to `rows` only — this is how
/// learned token embeddings enter a frozen text encoder. Everything stays on the tensors' device.
pub fn place_rows(
    base: &Tensor,
    rows: &Tensor,
    positions: &[(usize, usize, usize)],
) -> candle_core::Result<Tensor> {
    let (b, l, d) = base.dims3()?;
    let n = rows.dim(0)?;
    let dev = base.device();
    // Row k of the flattened base reads row `source[k]` of [base rows; learned rows].
    let mut source: Vec<u32> = (0..(b * l) as u32).collect();
    for &(bi, li, r) in positions {
        if bi >= b || li >= l || r >= n {
            candle_core::bail!(
                "place_rows: position ({bi}, {li}, {r}) outside [{b}, {l}] × {n} rows"
            );
        }
        source[bi * l + li] = (b * l + r) as u32;
    }
    let table = Tensor::cat(
        &[
            &base.reshape((b * l, d))?.to_dtype(rows.dtype())?,
            &rows.detach(),
        ],
        0,
    )?;
    let value = table
        .index_select(&Tensor::new(source, dev)?, 0)?
        .reshape((b, l, d))?;
    let (targets, flat): (Vec<u32>, Vec<u32>) = positions
        .iter()
        .map(|&(bi, li, r)| (r as u32, (bi * l + li) as u32))
        .unzip();
    input_grad_only(rows, value, move |rows, _, g| {
        let picked = g
            .reshape((b * l, d))?
            .index_select(&Tensor::new(flat.as_slice(), g.device())?, 0)?;
        rows.zeros_like()?
            .index_add(&Tensor::new(targets.as_slice(), g.device())?, &picked, 0)
    })
}

/// Mean squared error with a constant target (the diffusion loss): the target gets no gradient.
pub fn mse_loss(pred: &Tensor, target: &Tensor) -> candle_core::Result<Tensor> {
    add(pred, &target.detach().neg()?)?.sqr()?.mean_all()
}

/// diffusers' GEGLU `h · gelu(g)`, `[h, g]` the two halves of `hg`'s last dimension. On the CPU in f32 one
/// fused pass (the erf as PyTorch's vectorised CPU kernel computes it, within 1.5e-7) with the backward
/// `[g_out · gelu(g), g_out · h · (Φ(g) + g·φ(g))]`; elsewhere the composite of [`gelu_erf`].
pub fn geglu(hg: &Tensor) -> candle_core::Result<Tensor> {
    let half = hg.dim(D::Minus1)? / 2;
    let halves = move |t: &Tensor| -> candle_core::Result<(Tensor, Tensor)> {
        Ok((
            t.narrow(D::Minus1, 0, half)?,
            t.narrow(D::Minus1, half, half)?,
        ))
    };
    if !super::kernels::serves(hg) {
        let (h, g) = halves(hg)?;
        return h * gelu_erf(&g)?;
    }
    let value = super::kernels::geglu_f32(&hg.detach())?;
    input_grad_only(hg, value, move |hg, _, g_out| {
        if super::kernels::serves(g_out) {
            return super::kernels::geglu_backward_f32(hg, g_out);
        }
        let (h, g) = halves(hg)?;
        let (cdf, pdf) = normal_cdf_pdf(&g)?;
        let dh = (g_out * g.gelu_erf()?)?;
        let dg = ((g_out * h)? * (cdf + (&g * pdf)?)?)?;
        Tensor::cat(&[dh, dg], D::Minus1)
    })
}

/// `Φ(x)` and `φ(x)` of the standard normal distribution.
fn normal_cdf_pdf(x: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
    let cdf = ((x / std::f64::consts::SQRT_2)?.erf()? + 1.0)? * 0.5;
    let pdf = (x.sqr()? * -0.5)?.exp()?
        * (0.5 * std::f64::consts::FRAC_2_SQRT_PI * std::f64::consts::FRAC_1_SQRT_2);
    Ok((cdf?, pdf?))
}

/// Exact (erf) GELU with an exact backward `Φ(x) + x·φ(x)`. candle's own backward rounds 1/√(2π) to six
/// digits, a 7e-7 relative error that finite-difference checks in f64 see.
pub fn gelu_erf(x: &Tensor) -> candle_core::Result<Tensor> {
    if super::kernels::serves(x) {
        let value = super::kernels::gelu_f32(&x.detach())?;
        return input_grad_only(x, value, |x, _, g| super::kernels::gelu_backward_f32(x, g));
    }
    let value = x.detach().gelu_erf()?;
    input_grad_only(x, value, |x, _, g| {
        let dtype = x.dtype();
        let (x, g) = (upcast(x)?, upcast(g)?);
        let (cdf, pdf) = normal_cdf_pdf(&x)?;
        (g * (cdf + (&x * pdf)?)?)?.to_dtype(dtype)
    })
}
