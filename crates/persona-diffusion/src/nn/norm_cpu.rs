//! CPU kernels of the normalisations (f32): GroupNorm's forward, and the input gradient GroupNorm and LayerNorm
//! share. On a training path their values are attached through `grad::input_grad_only`; the gradient suite's
//! "f32 = f64" rows hold both to the finite-difference-checked f64 blocks.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::buffers::zeroed;
use super::kernels::{contiguous_f32, contiguous_f32_pair, with_avx2, LANES};

/// GroupNorm with its per-channel affine in one pass per group (plus one for the statistics): each
/// (sample, group) block of an NCHW tensor is contiguous, so the blocks are normalised in parallel.
struct GroupNormF32 {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    groups: usize,
    eps: f64,
}

impl CustomOp1 for GroupNormF32 {
    fn name(&self) -> &'static str {
        "group-norm-f32"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, self.name())?;
        let dims = layout.shape().dims();
        let channels = dims[1];
        let per_channel: usize = dims[2..].iter().product();
        let block = channels / self.groups * per_channel;
        let mut out = zeroed(x.len());
        out.par_chunks_mut(block)
            .zip(x.par_chunks(block))
            .enumerate()
            .for_each(|(i, (o, xs))| {
                let n = xs.len() as f64;
                let mean = xs.iter().map(|&v| v as f64).sum::<f64>() / n;
                let var = xs.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
                let rstd = 1.0 / (var + self.eps).sqrt();
                let first_channel = (i % self.groups) * (channels / self.groups);
                for (c, (oc, xc)) in o
                    .chunks_mut(per_channel)
                    .zip(xs.chunks(per_channel))
                    .enumerate()
                {
                    let scale = (rstd * self.gamma[first_channel + c] as f64) as f32;
                    let shift = (self.beta[first_channel + c] as f64
                        - mean * rstd * self.gamma[first_channel + c] as f64)
                        as f32;
                    for (ov, &xv) in oc.iter_mut().zip(xc) {
                        *ov = xv * scale + shift;
                    }
                }
            });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// `GroupNorm(x)` for a contiguous f32 `[B, C, …]` on the CPU.
pub fn group_norm_f32(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    groups: usize,
    eps: f64,
) -> candle_core::Result<Tensor> {
    let op = GroupNormF32 {
        gamma: gamma.to_vec1::<f32>()?,
        beta: beta.to_vec1::<f32>()?,
        groups,
        eps,
    };
    x.contiguous()?.apply_op1_no_bwd(&op)
}

/// The input gradient of GroupNorm (`groups` groups over `[B, C, …]`, affine `gamma`) or, with `groups` = 1
/// and `x` of rank 2 or more normalised over its last dimension, of LayerNorm; f32 CPU tensors.
pub fn norm_backward_f32(
    x: &Tensor,
    grad: &Tensor,
    gamma: &Tensor,
    norm: Norm,
    eps: f64,
) -> candle_core::Result<Tensor> {
    let dims = x.dims();
    let (block, inner) = match norm {
        Norm::Group(groups) => {
            let inner: usize = dims.get(2..).map_or(1, |d| d.iter().product());
            (
                dims.get(1).copied().unwrap_or(0) / groups.max(1) * inner,
                inner,
            )
        }
        Norm::Layer => (dims.last().copied().unwrap_or(0), 1),
    };
    let op = NormBackwardF32 {
        gamma: gamma.to_vec1::<f32>()?,
        block,
        inner,
        eps,
    };
    x.contiguous()?.apply_op2_no_bwd(&grad.contiguous()?, &op)
}

/// Which normalisation [`norm_backward_f32`] differentiates.
#[derive(Clone, Copy, Debug)]
pub enum Norm {
    /// GroupNorm with this many groups over dimension 1.
    Group(usize),
    /// LayerNorm over the last dimension.
    Layer,
}

/// The input gradient of `y = γ ⊙ (x − μ)/σ + β` normalised over contiguous blocks of `x`, given `g = ∂L/∂y`:
/// `dx = (ĝ − mean ĝ − x̂ · mean(ĝ ⊙ x̂)) / σ`, `ĝ = γ ⊙ g`. Three passes over a block (μ; then σ, Σĝ and
/// Σĝ(x − μ); then dx), which stays in cache between them, where the composite made about a dozen over whole
/// activations and kept as many temporaries. A block's elements come in runs of `inner` sharing one γ: a
/// GroupNorm block is its group's channels (run = H·W), a LayerNorm block is one row (run = 1).
struct NormBackwardF32 {
    gamma: Vec<f32>,
    block: usize,
    inner: usize,
    eps: f64,
}

impl CustomOp2 for NormBackwardF32 {
    fn name(&self) -> &'static str {
        "norm-backward-f32"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, g) = contiguous_f32_pair((s1, l1), (s2, l2), self.name())?;
        let (block, inner) = (self.block, self.inner);
        let runs = block.checked_div(inner).unwrap_or(0);
        if l1.shape() != l2.shape()
            || runs == 0
            || !x.len().is_multiple_of(block)
            || !block.is_multiple_of(inner)
            || !self.gamma.len().is_multiple_of(runs)
        {
            candle_core::bail!(
                "norm backward: input {:?}, gradient {:?}, blocks of {} and {} affine weights do not fit",
                l1.shape(),
                l2.shape(),
                self.block,
                self.gamma.len()
            )
        }
        // Consecutive blocks cycle through the affine weights (a sample's groups, or one row's weights).
        let cycle = self.gamma.len() / runs;
        let per_task = (16384 / self.block).max(1);
        let mut out = zeroed(x.len());
        out.par_chunks_mut(per_task * self.block)
            .zip(x.par_chunks(per_task * self.block))
            .zip(g.par_chunks(per_task * self.block))
            .enumerate()
            .for_each(|(task, ((o, x), g))| {
                let blocks = o
                    .chunks_mut(self.block)
                    .zip(x.chunks(self.block))
                    .zip(g.chunks(self.block));
                for (k, ((o, x), g)) in blocks.enumerate() {
                    let first = (task * per_task + k) % cycle * runs;
                    let gamma = &self.gamma[first..first + runs];
                    norm_backward_block(x, g, gamma, self.inner, self.eps, o);
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Σ over `LANES` separate accumulators (so that the loop vectorises) of `f(x, g)`, added up in f64.
#[inline(always)]
fn lane_sum(x: &[f32], g: &[f32], f: impl Fn(f32, f32) -> f32) -> f64 {
    let mut acc = [0f32; LANES];
    let split = x.len() / LANES * LANES;
    for (xc, gc) in x[..split]
        .chunks_exact(LANES)
        .zip(g[..split].chunks_exact(LANES))
    {
        for j in 0..LANES {
            acc[j] += f(xc[j], gc[j]);
        }
    }
    let tail: f32 = x[split..]
        .iter()
        .zip(&g[split..])
        .map(|(&x, &g)| f(x, g))
        .sum();
    acc.iter().map(|&v| v as f64).sum::<f64>() + tail as f64
}

with_avx2!(norm_backward_block(x: &[f32], g: &[f32], gamma: &[f32], inner: usize, eps: f64, out: &mut [f32]) {
    let n = x.len() as f64;
    let mu = (lane_sum(x, x, |x, _| x) / n) as f32;
    let (mut sq, mut sg, mut sgx) = (0f64, 0f64, 0f64);
    if inner == 1 {
        // One γ per element (LayerNorm): ĝ is formed element-wise.
        sq = lane_sum(x, x, |x, _| (x - mu) * (x - mu));
        for ((xc, gc), gm) in x.chunks(LANES).zip(g.chunks(LANES)).zip(gamma.chunks(LANES)) {
            for ((&x, &g), &gm) in xc.iter().zip(gc).zip(gm) {
                sg += (gm * g) as f64;
                sgx += (gm * g * (x - mu)) as f64;
            }
        }
    } else {
        // One γ per run of `inner` elements (GroupNorm's channels): sums per run, scaled by its γ.
        for ((xc, gc), &gm) in x.chunks(inner).zip(g.chunks(inner)).zip(gamma) {
            sq += lane_sum(xc, xc, |x, _| (x - mu) * (x - mu));
            sg += gm as f64 * lane_sum(xc, gc, |_, g| g);
            sgx += gm as f64 * lane_sum(xc, gc, |x, g| g * (x - mu));
        }
    }
    let rstd = 1.0 / (sq / n + eps).sqrt();
    // dx = σ⁻¹ γ g − σ⁻¹ mean ĝ − σ⁻³ (x − μ) mean(ĝ (x − μ)): per element a product and a slope in x.
    let slope = (rstd * rstd * rstd * sgx / n) as f32;
    let offset = (-rstd * sg / n) as f32;
    let rstd = rstd as f32;
    for (((o, x), g), gm) in out.chunks_mut(inner).zip(x.chunks(inner)).zip(g.chunks(inner)).zip(gamma) {
        let scale = rstd * gm;
        for ((o, &x), &g) in o.iter_mut().zip(x).zip(g) {
            *o = scale * g + offset - slope * (x - mu);
        }
    }
});

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, D};

    use super::Norm;
    use crate::nn::grad::normalized_backward;
    use crate::testing::max_abs_error;

    #[test]
    fn group_norm_kernel_matches_the_composite() {
        let dev = Device::Cpu;
        let x = (Tensor::randn(0f32, 3.0, (2, 6, 5, 4), &dev).unwrap() + 1.5).unwrap();
        let gamma = Tensor::randn(0f32, 1.0, 6, &dev).unwrap();
        let beta = Tensor::randn(0f32, 1.0, 6, &dev).unwrap();
        let got = super::group_norm_f32(&x, &gamma, &beta, 3, 1e-5).unwrap();
        let g = x.reshape((2, 3, ())).unwrap();
        let centered = g
            .broadcast_sub(&g.mean_keepdim(D::Minus1).unwrap())
            .unwrap();
        let var = centered.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let normed = centered
            .broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap())
            .unwrap()
            .reshape((2, 6, 5, 4))
            .unwrap();
        let want = normed
            .broadcast_mul(&gamma.reshape((1, 6, 1, 1)).unwrap())
            .unwrap()
            .broadcast_add(&beta.reshape((1, 6, 1, 1)).unwrap())
            .unwrap();
        let err = max_abs_error(&got, &want).unwrap();
        assert!(err < 1e-5, "max difference {err}");
    }

    /// Both layouts against the composite backward in f64, on offset, scaled inputs (the sums must not lose
    /// the gradient to the mean).
    #[test]
    fn the_norm_backward_matches_the_composite() {
        let dev = Device::Cpu;
        let x = (Tensor::randn(0f32, 3.0, (2, 6, 5, 7), &dev).unwrap() + 4.0).unwrap();
        let g = Tensor::randn(0f32, 1.0, (2, 6, 5, 7), &dev).unwrap();
        let gamma = Tensor::randn(0f32, 1.0, 6, &dev).unwrap();
        let got = super::norm_backward_f32(&x, &g, &gamma, Norm::Group(3), 1e-5).unwrap();
        let f64s = |t: &Tensor| t.to_dtype(candle_core::DType::F64).unwrap();
        let g_hat = f64s(&g)
            .broadcast_mul(&f64s(&gamma).reshape((1, 6, 1, 1)).unwrap())
            .unwrap()
            .reshape((2, 3, ()))
            .unwrap();
        let want = normalized_backward(&f64s(&x).reshape((2, 3, ())).unwrap(), &g_hat, 1e-5)
            .unwrap()
            .reshape((2, 6, 5, 7))
            .unwrap();
        let err = max_abs_error(&f64s(&got), &want).unwrap();
        assert!(err < 1e-5, "GroupNorm: max difference {err}");

        let x = (Tensor::randn(0f32, 2.0, (3, 4, 37), &dev).unwrap() - 3.0).unwrap();
        let g = Tensor::randn(0f32, 1.0, (3, 4, 37), &dev).unwrap();
        let gamma = Tensor::randn(0f32, 1.0, 37, &dev).unwrap();
        let got = super::norm_backward_f32(&x, &g, &gamma, Norm::Layer, 1e-5).unwrap();
        let g_hat = f64s(&g).broadcast_mul(&f64s(&gamma)).unwrap();
        let want = normalized_backward(&f64s(&x), &g_hat, 1e-5).unwrap();
        let err = max_abs_error(&f64s(&got), &want).unwrap();
        assert!(err < 1e-5, "LayerNorm: max difference {err}");
    }
}
