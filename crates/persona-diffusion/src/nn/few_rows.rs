//! `x · Wᵀ + bias` (a linear layer) on the CPU for an `x` of few rows: a text encoder's 77 tokens a prompt,
//! the UNet's cross-attention keys and values of the same condition.
//!
//! The `gemm` crate runs its vectors along the output's contiguous axis, so for a row-major `[m, n]` output
//! it computes `Cᵀ = W · xᵀ` with the weight as the left operand, which it repacks on every call into
//! panels of 64 rows by a scalar strided gather: 47 % of the text encoder's forward on an AVX-512 CPU, where
//! each packed weight served only 154 columns. Asking for the column-major `Cᵀ` instead makes `x` the left
//! operand (small, packed once) and streams the weight as the right operand in place, one row per output
//! column; the `[n, m]` result is transposed back, with the bias added on the way. Measured (2 threads,
//! AVX-512, 1 024 or 4 096 inputs and outputs): 77–308 rows at 1.1–2.0× candle's rate, 462 rows and more
//! slower than candle's. The input gradient `g · W` reads the weight in the order `gemm` packs it and gains
//! nothing (candle's 340–410 GFLOP/s against 165–260 here), so it stays candle's.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::buffers::zeroed;
use super::kernels::{contiguous_f32, gemm_parallelism};

/// Up to this many rows the product runs here (see the module's measurements).
const MAX_ROWS: usize = 384;

/// Whether [`linear`] serves `x · wᵀ`: f32 on the CPU, 2-D, few rows.
pub fn applies(x: &Tensor, w: &Tensor) -> bool {
    x.device().is_cpu()
        && x.dtype() == DType::F32
        && w.dtype() == DType::F32
        && x.rank() == 2
        && w.rank() == 2
        && x.dim(0).is_ok_and(|m| m <= MAX_ROWS)
}

/// `x · wᵀ + bias` for an `[m, k]` `x`, an `[n, k]` weight and an `[n]` bias. No gradient: the caller
/// attaches its own.
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let bias = match bias {
        Some(bias) => bias.contiguous()?,
        None => Tensor::zeros(w.dim(0)?, DType::F32, w.device())?,
    };
    x.contiguous()?
        .apply_op3_no_bwd(&w.contiguous()?, &bias, &FewRows)
}

struct FewRows;

impl CustomOp3 for FewRows {
    fn name(&self) -> &'static str {
        "few-rows-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w, bias) = (
            contiguous_f32(s1, l1, self.name())?,
            contiguous_f32(s2, l2, self.name())?,
            contiguous_f32(s3, l3, self.name())?,
        );
        let (m, k) = l1.shape().dims2()?;
        let (n, kw) = l2.shape().dims2()?;
        if kw != k || bias.len() != n || m * n * k == 0 {
            candle_core::bail!(
                "{}: [{m}, {k}] · {:?}ᵀ + [{}] do not fit",
                self.name(),
                l2.shape(),
                bias.len()
            )
        }
        let mut columns = zeroed(n * m);
        // SAFETY: `columns` is `m × n` column-major (column stride m); `x` is `m × k` row-major; the right
        // operand `wᵀ` is `k × n` with row stride 1 and column stride k inside the `n × k` weight.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                columns.as_mut_ptr(),
                m as isize,
                1,
                false,
                x.as_ptr(),
                1,
                k as isize,
                w.as_ptr(),
                k as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm_parallelism(),
            )
        }
        let out = transpose_add(&columns, m, bias);
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}

/// The row-major `[m, n]` of a column-major `columns` (`[n, m]` row-major), plus `bias` on every row. Tiles
/// of 16 rows keep the reads of each column's stretch in cache.
fn transpose_add(columns: &[f32], m: usize, bias: &[f32]) -> Vec<f32> {
    const TILE: usize = 16;
    let n = bias.len();
    let mut out = zeroed(m * n);
    out.par_chunks_mut(TILE * n)
        .enumerate()
        .for_each(|(tile, rows)| {
            let first = tile * TILE;
            for (j, (column, &b)) in columns.chunks(m).zip(bias).enumerate() {
                for (i, &v) in column[first..].iter().take(rows.len() / n).enumerate() {
                    rows[i * n + j] = v + b;
                }
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use crate::testing::{max_abs_error, randn_f32 as randn};

    /// `x · Wᵀ + b` at odd sizes, with and without a bias, against candle's matmul.
    #[test]
    fn matches_candle() {
        for &(m, k, n) in &[(1, 3, 2), (17, 33, 65), (154, 96, 40), (70, 200, 129)] {
            let x = randn(&[m, k]);
            let w = randn(&[n, k]);
            let bias = randn(&[n]);
            let want = x.matmul(&w.t().unwrap()).unwrap();
            let got = super::linear(&x, &w, None).unwrap();
            assert!(max_abs_error(&got, &want).unwrap() < 1e-4, "{m}×{k}×{n}");
            let got = super::linear(&x, &w, Some(&bias)).unwrap();
            let want = want.broadcast_add(&bias).unwrap();
            assert!(
                max_abs_error(&got, &want).unwrap() < 1e-4,
                "{m}×{k}×{n} + bias"
            );
        }
    }
}
