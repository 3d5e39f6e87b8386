//! CPU kernels for hot inference paths where candle's composite ops make many passes over memory.
//! Forward only: on a training path their value is attached through `grad::input_grad_only`, whose backward
//! is written separately (and checked by finite differences).

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

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
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("group-norm-f32: f32 input expected")
        };
        let (start, end) = layout.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg("group-norm-f32: contiguous input expected".into())
        })?;
        let x = &data[start..end];
        let dims = layout.shape().dims();
        let channels = dims[1];
        let per_channel: usize = dims[2..].iter().product();
        let block = channels / self.groups * per_channel;
        let mut out = vec![0f32; x.len()];
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

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, D};

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
        let err = (got - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(err < 1e-5, "max difference {err}");
    }
}
