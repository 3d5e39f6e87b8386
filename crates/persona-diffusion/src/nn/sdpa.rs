//! Scaled dot-product attention that never keeps its probabilities.
//!
//! The plain graph `softmax(q kᵀ) v` keeps the scores and the probabilities of every head alive until the
//! backward: at 64×64 latents that is 5 heads × 4096² floats, ~0.7 GB per self-attention layer, for each of
//! the UNet's five such layers. Here the forward runs a few heads at a time and keeps only its output; the
//! backward recomputes each block's probabilities from q and k (one extra `q kᵀ`, as flash attention does)
//! and returns the gradients of exactly the operands that need one. In f32 on the CPU both directions run
//! by blocks of query rows (`sdpa_cpu`); elsewhere by blocks of heads, as below.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor, D};

use super::grad::{softmax_last_dim, upcast, PrecomputedValue};

/// Largest score block computed at once, in elements (64 MiB of f32): one head of a 4096-token
/// self-attention, every head of a cross-attention.
pub const BLOCK_ELEMENTS: usize = 16 << 20;

/// The GPU's block: larger blocks mean fewer, fuller kernel launches, and its memory is plentiful
/// (256 MiB of bf16 scores).
pub const CUDA_BLOCK_ELEMENTS: usize = 128 << 20;

/// `softmax(q kᵀ) v` for `q` `[G, N, d]` (already scaled), `k` and `v` `[G, L, d]`, `G` = batch × heads.
pub fn sdpa(q: &Tensor, k: &Tensor, v: &Tensor) -> candle_core::Result<Tensor> {
    let block = if q.device().is_cuda() {
        CUDA_BLOCK_ELEMENTS
    } else {
        BLOCK_ELEMENTS
    };
    sdpa_blocked(q, k, v, block)
}

/// [`sdpa`] with at most `block` score elements per block (tests use tiny blocks).
pub fn sdpa_blocked(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    block: usize,
) -> candle_core::Result<Tensor> {
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let value = forward(&q.detach(), &k.detach(), &v.detach(), block)?;
    if !(q.track_op() || k.track_op() || v.track_op()) {
        return Ok(value);
    }
    q.apply_op3(
        &k,
        &v,
        Sdpa {
            value: PrecomputedValue::new(value),
            block,
        },
    )
}

/// Heads per block so that a block's scores stay within `block` elements.
fn heads_per_block(q: &Tensor, k: &Tensor, block: usize) -> candle_core::Result<usize> {
    let (n, l) = (q.dim(1)?, k.dim(1)?);
    Ok((block / (n * l).max(1)).max(1))
}

fn forward(q: &Tensor, k: &Tensor, v: &Tensor, block: usize) -> candle_core::Result<Tensor> {
    if super::kernels::serves(q) {
        // The CPU kernel blocks by query rows itself, with the scores of a block kept in cache.
        return super::sdpa_cpu::attention_f32(q, k, v);
    }
    let g = q.dim(0)?;
    let step = heads_per_block(q, k, block)?;
    let mut outs = Vec::with_capacity(g.div_ceil(step));
    for start in (0..g).step_by(step) {
        let len = step.min(g - start);
        let (qb, kb, vb) = (
            q.narrow(0, start, len)?,
            k.narrow(0, start, len)?,
            v.narrow(0, start, len)?,
        );
        let p = softmax_last_dim(&qb.matmul(&kb.t()?)?)?;
        outs.push(p.matmul(&vb)?);
    }
    Tensor::cat(&outs, 0)
}

/// The gradients of one block: `dS = P ⊙ (dO vᵀ − rowsum(dO ⊙ O))`, `dq = dS k`, `dk = dSᵀ q`, `dv = Pᵀ dO`.
fn backward_block(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    g: &Tensor,
    want: [bool; 3],
) -> candle_core::Result<[Option<Tensor>; 3]> {
    let p = softmax_last_dim(&q.matmul(&k.t()?)?)?;
    let dv = if want[2] {
        Some(p.t()?.matmul(g)?)
    } else {
        None
    };
    if !(want[0] || want[1]) {
        return Ok([None, None, dv]);
    }
    // The row sums and dS accumulate in f32 for half-precision operands, as fused attention kernels do.
    let row = (upcast(g)? * upcast(out)?)?.sum_keepdim(D::Minus1)?;
    let ds =
        (upcast(&p)? * upcast(&g.matmul(&v.t()?)?)?.broadcast_sub(&row)?)?.to_dtype(q.dtype())?;
    let dq = if want[0] { Some(ds.matmul(k)?) } else { None };
    let dk = if want[1] {
        Some(ds.t()?.matmul(q)?)
    } else {
        None
    };
    Ok([dq, dk, dv])
}

struct Sdpa {
    value: PrecomputedValue,
    block: usize,
}

impl CustomOp3 for Sdpa {
    fn name(&self) -> &'static str {
        "sdpa"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.value.cpu(self.name())
    }

    #[cfg(feature = "cuda")]
    #[allow(clippy::too_many_arguments)]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        self.value.cuda(self.name())
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let want = [q.track_op(), k.track_op(), v.track_op()];
        let (q, k, v, out, grad) = (
            q.detach(),
            k.detach(),
            v.detach(),
            out.detach(),
            grad.contiguous()?,
        );
        if [&q, &k, &v, &out, &grad]
            .iter()
            .all(|t| super::kernels::serves(t))
        {
            let grads = super::sdpa_cpu::attention_backward_f32(&q, &k, &v, &out, &grad)?;
            let [dq, dk, dv] = grads.map(Some);
            let keep = |g: Option<Tensor>, w: bool| if w { g } else { None };
            return Ok((keep(dq, want[0]), keep(dk, want[1]), keep(dv, want[2])));
        }
        let g = q.dim(0)?;
        let step = heads_per_block(&q, &k, self.block)?;
        let mut parts: [Vec<Tensor>; 3] = Default::default();
        for start in (0..g).step_by(step) {
            let len = step.min(g - start);
            let b = |t: &Tensor| t.narrow(0, start, len);
            let grads = backward_block(&b(&q)?, &b(&k)?, &b(&v)?, &b(&out)?, &b(&grad)?, want)?;
            for (part, grad) in parts.iter_mut().zip(grads) {
                part.extend(grad);
            }
        }
        let join = |p: &Vec<Tensor>| {
            if p.is_empty() {
                Ok(None)
            } else {
                Tensor::cat(p, 0).map(Some)
            }
        };
        Ok((join(&parts[0])?, join(&parts[1])?, join(&parts[2])?))
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::max_abs_error;
    use candle_core::{DType, Device, Tensor};

    /// The CPU kernel's gradients against the composite over whole heads in f64: three heads, two query
    /// blocks (the second partial), key lengths of a cross-attention (77) and of a self-attention.
    #[test]
    fn the_blocked_backward_matches_the_composite() {
        let dev = Device::Cpu;
        let n = super::super::sdpa_cpu::QUERY_BLOCK + 44;
        for l in [77, 300] {
            let r =
                |shape: (usize, usize, usize), s: f64| Tensor::randn(0f32, s as f32, shape, &dev);
            let (q, k, v) = (
                r((3, n, 8), 0.5).unwrap(),
                r((3, l, 8), 0.5).unwrap(),
                r((3, l, 5), 1.0).unwrap(),
            );
            let g = r((3, n, 5), 1.0).unwrap();
            let out = super::forward(&q, &k, &v, super::BLOCK_ELEMENTS).unwrap();
            let got = super::super::sdpa_cpu::attention_backward_f32(&q, &k, &v, &out, &g).unwrap();
            let f64s = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
            let want = super::backward_block(
                &f64s(&q),
                &f64s(&k),
                &f64s(&v),
                &f64s(&out),
                &f64s(&g),
                [true; 3],
            )
            .unwrap();
            for (got, want) in got.iter().zip(want) {
                let want = want.unwrap().to_dtype(DType::F32).unwrap();
                let scale = want
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap() as f64;
                assert!(
                    max_abs_error(got, &want).unwrap() < 1e-5 * scale,
                    "key length {l}"
                );
            }
        }
    }
}
