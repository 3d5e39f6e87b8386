//! CPU kernels for hot inference paths where candle's composite ops make many passes over memory.
//! Forward only: on a training path their value is attached through `grad::input_grad_only`, whose backward
//! is written separately (and checked by finite differences).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::buffers::zeroed;

/// `eˣ` in f32, within 1e-7 relative (measured 8.3e-8 over [−87, 0]), written without branches or calls so
/// that it vectorises: candle's CPU softmax and SiLU call libm's scalar `expf` per element, which took 9 % of
/// a UNet forward. Range reduction `x = n·ln 2 + r` (ln 2 in two parts), a degree-7 polynomial for `eʳ`
/// (Cephes' `expf`), `2ⁿ` built in the exponent bits. Results below f32's normal range are 0, NaN stays NaN.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const SHIFTER: f32 = 12_582_912.0; // 1.5·2²³: adding and subtracting it rounds to an integer
    let xc = x.clamp(-87.33, 88.0);
    let shifted = xc * std::f32::consts::LOG2_E + SHIFTER;
    let n = shifted - SHIFTER;
    let r = xc - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let mut p = 1.987_569_1e-4f32;
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ] {
        p = p * r + c;
    }
    let p = (p * r) * r + r + 1.0;
    // `shifted`'s low mantissa bits hold n + 2²² (its bits are 0x4B40_0000 + n): 2ⁿ's exponent comes from
    // them with integer operations, which vectorise (`n as i32` is a saturating conversion, which does not).
    let two_n = shifted
        .to_bits()
        .wrapping_sub(0x4B40_0000)
        .wrapping_add(127)
        << 23;
    let scaled = f32::from_bits(two_n) * p;
    if x < -87.33 {
        0.0
    } else {
        scaled
    }
}

/// Runs `$body` compiled for AVX2 + FMA when the CPU has them (the release build targets baseline x86-64,
/// whose SSE2 would vectorise four lanes at a time), else as built.
macro_rules! with_avx2 {
    ($vis:vis $name:ident ( $($arg:ident : $ty:ty),* ) $body:block) => {
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn portable($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    portable($($arg),*)
                }
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has the features `avx2` is compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            portable($($arg),*)
        }
    };
}
pub(super) use with_avx2;

/// Lanes of the row reductions: separate accumulators let the loops vectorise (one running sum would
/// have to be added in order).
pub(super) const LANES: usize = 16;

with_avx2!(pub(super) exp_rows(rows: &mut [f32], len: usize, inv_sums: &mut [f32]) {
    // Each row becomes `exp(x − max)`; its 1 / Σ goes to `inv_sums`.
    for (row, inv) in rows.chunks_mut(len).zip(inv_sums.iter_mut()) {
        let (body, tail) = row.split_at_mut(len / LANES * LANES);
        let mut m = [f32::NEG_INFINITY; LANES];
        for c in body.chunks_exact(LANES) {
            for j in 0..LANES {
                m[j] = if c[j] > m[j] { c[j] } else { m[j] };
            }
        }
        let max = m.iter().chain(tail.iter()).fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let mut acc = [0f32; LANES];
        for c in body.chunks_exact_mut(LANES) {
            for j in 0..LANES {
                c[j] = exp(c[j] - max);
                acc[j] += c[j];
            }
        }
        let mut sum: f32 = acc.iter().sum();
        for v in tail.iter_mut() {
            *v = exp(*v - max);
            sum += *v;
        }
        *inv = 1.0 / sum;
    }
});

with_avx2!(pub(super) exp_columns(t: &mut [f32], width: usize, inv_sums: &mut [f32]) {
    // `t` is `len × width`: each column becomes `exp(x − max)`, its 1 / Σ goes to `inv_sums`. Strips of
    // `LANES` columns, walked down the rows, keep a strip's maxima and sums in registers.
    let mut first = 0;
    while first + LANES <= width {
        exp_strip::<LANES>(t, width, first, &mut inv_sums[first..first + LANES]);
        first += LANES;
    }
    while first < width {
        exp_strip::<1>(t, width, first, &mut inv_sums[first..first + 1]);
        first += 1;
    }
});

/// [`exp_columns`] on columns `first..first + W`.
#[inline(always)]
fn exp_strip<const W: usize>(t: &mut [f32], width: usize, first: usize, inv_sums: &mut [f32]) {
    let mut m = [f32::NEG_INFINITY; W];
    for row in t.chunks(width) {
        let row = &row[first..first + W];
        for j in 0..W {
            m[j] = if row[j] > m[j] { row[j] } else { m[j] };
        }
    }
    let mut s = [0f32; W];
    for row in t.chunks_mut(width) {
        let row = &mut row[first..first + W];
        for j in 0..W {
            row[j] = exp(row[j] - m[j]);
            s[j] += row[j];
        }
    }
    for (inv, s) in inv_sums.iter_mut().zip(s) {
        *inv = 1.0 / s;
    }
}

with_avx2!(pub(super) softmax_backward_columns(p: &mut [f32], ds: &mut [f32], width: usize, inv: &[f32], di: &[f32]) {
    // Columns of `p` hold `exp(x − max)` (as `exp_columns` leaves them) and become the probabilities `P`;
    // columns of `ds` hold `dP` and become `dS = P ⊙ (dP − Dᵢ)`, `Dᵢ = rowsum(dO ⊙ O)` (= Σ P ⊙ dP).
    for (p, ds) in p.chunks_mut(width).zip(ds.chunks_mut(width)) {
        for ((p, ds), (&inv, &di)) in p.iter_mut().zip(ds.iter_mut()).zip(inv.iter().zip(di)) {
            *p *= inv;
            *ds = *p * (*ds - di);
        }
    }
});

with_avx2!(silu_slice(x: &[f32], out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = v / (1.0 + exp(-v));
    }
});

with_avx2!(silu_backward_slice(x: &[f32], grad: &[f32], out: &mut [f32]) {
    // d/dx x·σ(x) = σ(x)·(1 + x·(1 − σ(x))).
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(grad) {
        let s = 1.0 / (1.0 + exp(-v));
        *o = g * s * (1.0 + v * (1.0 - s));
    }
});

/// `erf(x)` as PyTorch's vectorised CPU kernels compute it (Abramowitz & Stegun 7.1.26, absolute error
/// below 1.5e-7): `sign(x)·(1 − t·P(t)·e^(−x²))`, `t = 1 / (1 + 0.3275911·|x|)`.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let mut p = 1.061_405_4f32;
    for c in [-1.453_152_1, 1.421_413_8, -0.284_496_74, 0.254_829_6] {
        p = p * t + c;
    }
    (1.0 - t * p * exp(-a * a)).copysign(x)
}

/// `Φ(x)`, the standard normal distribution function.
#[inline(always)]
fn normal_cdf(x: f32) -> f32 {
    0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// The derivative of `gelu(x) = x·Φ(x)`: `Φ(x) + x·φ(x)`, given `Φ(x)`.
#[inline(always)]
fn gelu_slope(x: f32, cdf: f32) -> f32 {
    let pdf_scale = 0.5 * std::f32::consts::FRAC_2_SQRT_PI * std::f32::consts::FRAC_1_SQRT_2;
    cdf + x * exp(-0.5 * x * x) * pdf_scale
}

with_avx2!(gelu_slice(x: &[f32], out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = v * normal_cdf(v);
    }
});

with_avx2!(gelu_backward_slice(x: &[f32], grad: &[f32], out: &mut [f32]) {
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(grad) {
        *o = g * gelu_slope(v, normal_cdf(v));
    }
});

with_avx2!(geglu_rows(hg: &[f32], out: &mut [f32], inner: usize) {
    // Row r of `out` is `h · gelu(g)` with h, g the halves of row r of `hg`.
    for (o, row) in out.chunks_mut(inner).zip(hg.chunks(2 * inner)) {
        let (h, g) = row.split_at(inner);
        for ((o, &h), &g) in o.iter_mut().zip(h).zip(g) {
            *o = h * g * normal_cdf(g);
        }
    }
});

with_avx2!(geglu_backward_rows(hg: &[f32], grad: &[f32], out: &mut [f32], inner: usize) {
    // Row r of `out` is `[dh, dg]`: `dh = dy · gelu(g)`, `dg = dy · h · (Φ(g) + g·φ(g))`.
    for ((o, row), dy) in out.chunks_mut(2 * inner).zip(hg.chunks(2 * inner)).zip(grad.chunks(inner)) {
        let (h, g) = row.split_at(inner);
        let (dh, dg) = o.split_at_mut(inner);
        for ((((dh, dg), &h), &g), &dy) in dh.iter_mut().zip(dg.iter_mut()).zip(h).zip(g).zip(dy) {
            let cdf = normal_cdf(g);
            *dh = dy * g * cdf;
            *dg = dy * h * gelu_slope(g, cdf);
        }
    }
});

/// Whether the kernels of this module (and `sdpa_cpu`) serve `x`: f32 on the CPU. Other dtypes and
/// devices keep candle's kernels.
pub fn serves(x: &Tensor) -> bool {
    x.dtype() == candle_core::DType::F32 && x.device().is_cpu()
}

pub(super) fn contiguous_f32<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = s else {
        candle_core::bail!("{op}: f32 input expected")
    };
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: contiguous input expected")))?;
    Ok(&data[start..end])
}

/// How a `gemm` call that runs alone uses the cores: candle's thread count, as its own products do.
pub(super) fn gemm_parallelism() -> gemm::Parallelism {
    match candle_core::utils::get_num_threads() {
        0 | 1 => gemm::Parallelism::None,
        threads => gemm::Parallelism::Rayon(threads),
    }
}

/// [`contiguous_f32`] of a two-input op's operands.
pub(super) fn contiguous_f32_pair<'a>(
    (s1, l1): (&'a CpuStorage, &Layout),
    (s2, l2): (&'a CpuStorage, &Layout),
    op: &str,
) -> candle_core::Result<(&'a [f32], &'a [f32])> {
    Ok((contiguous_f32(s1, l1, op)?, contiguous_f32(s2, l2, op)?))
}

struct SoftmaxF32;

impl CustomOp1 for SoftmaxF32 {
    fn name(&self) -> &'static str {
        "softmax-f32"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let len = l.shape().dims().last().copied().unwrap_or(1).max(1);
        let mut out = x.to_vec();
        // Rows in groups of ~64 KiB per task: one row per task would cost more in scheduling than a short
        // row's work.
        let group = (16384 / len).max(1) * len;
        out.par_chunks_mut(group).for_each(|rows| {
            let mut inv = vec![0f32; rows.len() / len];
            exp_rows(rows, len, &mut inv);
            for (row, inv) in rows.chunks_mut(len).zip(&inv) {
                row.iter_mut().for_each(|v| *v *= inv);
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// Softmax over the last dimension of an f32 CPU tensor.
pub fn softmax_last_dim_f32(x: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&SoftmaxF32)
}

/// An element-wise map of one f32 tensor (or, with `grad`, of a tensor and its output's gradient) in
/// parallel chunks.
struct ElementwiseF32 {
    name: &'static str,
    map: fn(&[f32], &mut [f32]),
}

/// Elements per task: enough work to outweigh the scheduling.
const CHUNK: usize = 1 << 14;

impl CustomOp1 for ElementwiseF32 {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name)?;
        let mut out = zeroed(x.len());
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(o, x)| (self.map)(x, o));
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

impl ElementwiseF32 {
    fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.contiguous()?.apply_op1_no_bwd(&self)
    }
}

struct GradientF32 {
    name: &'static str,
    map: fn(&[f32], &[f32], &mut [f32]),
}

impl GradientF32 {
    fn apply(self, x: &Tensor, grad: &Tensor) -> candle_core::Result<Tensor> {
        x.contiguous()?.apply_op2_no_bwd(&grad.contiguous()?, &self)
    }
}

impl CustomOp2 for GradientF32 {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, g) = contiguous_f32_pair((s1, l1), (s2, l2), self.name)?;
        if l1.shape() != l2.shape() {
            candle_core::bail!(
                "{}: input {:?} and gradient {:?} differ",
                self.name,
                l1.shape(),
                l2.shape()
            )
        }
        let mut out = zeroed(x.len());
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .zip(g.par_chunks(CHUNK))
            .for_each(|((o, x), g)| (self.map)(x, g, o));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `x·σ(x)` of an f32 CPU tensor.
pub fn silu_f32(x: &Tensor) -> candle_core::Result<Tensor> {
    ElementwiseF32 {
        name: "silu-f32",
        map: silu_slice,
    }
    .apply(x)
}

/// The input gradient of [`silu_f32`], `grad · σ(x) · (1 + x·(1 − σ(x)))`, in one pass (the composite made
/// ten, one of them with libm's scalar `expf`).
pub fn silu_backward_f32(x: &Tensor, grad: &Tensor) -> candle_core::Result<Tensor> {
    GradientF32 {
        name: "silu-backward-f32",
        map: silu_backward_slice,
    }
    .apply(x, grad)
}

/// Exact (erf) GELU `x·Φ(x)` of an f32 CPU tensor, with PyTorch's vectorised erf (candle's is scalar and
/// single-threaded: a tenth of SD 2.x's text-encoder forward).
pub fn gelu_f32(x: &Tensor) -> candle_core::Result<Tensor> {
    ElementwiseF32 {
        name: "gelu-f32",
        map: gelu_slice,
    }
    .apply(x)
}

/// The input gradient of [`gelu_f32`], `grad · (Φ(x) + x·φ(x))`, in one pass.
pub fn gelu_backward_f32(x: &Tensor, grad: &Tensor) -> candle_core::Result<Tensor> {
    GradientF32 {
        name: "gelu-backward-f32",
        map: gelu_backward_slice,
    }
    .apply(x, grad)
}

/// The input gradient of a nearest-neighbour resize: each source pixel sums the gradient of its copies, given
/// every output row's and column's source (`rows`, `cols`). One pass over the gradient, plane by plane.
struct UpsampleNearestBackwardF32 {
    rows: Vec<u32>,
    cols: Vec<u32>,
    h: usize,
    w: usize,
}

impl CustomOp1 for UpsampleNearestBackwardF32 {
    fn name(&self) -> &'static str {
        "upsample-nearest-backward-f32"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = contiguous_f32(s, l, self.name())?;
        let (b, c, th, tw) = l.shape().dims4()?;
        let fits =
            |v: &[u32], to: usize, n: usize| v.len() == to && v.iter().all(|&i| (i as usize) < n);
        if !fits(&self.rows, th, self.h) || !fits(&self.cols, tw, self.w) {
            candle_core::bail!(
                "upsample backward: gradient {:?} does not fit {}×{} sources",
                l.shape(),
                self.h,
                self.w
            )
        }
        let mut out = zeroed(b * c * self.h * self.w);
        out.par_chunks_mut(self.h * self.w)
            .zip(g.par_chunks(th * tw))
            .for_each(|(o, g)| {
                for (&r, g) in self.rows.iter().zip(g.chunks(tw)) {
                    let o = &mut o[r as usize * self.w..(r as usize + 1) * self.w];
                    for (&col, &v) in self.cols.iter().zip(g) {
                        o[col as usize] += v;
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((b, c, self.h, self.w))))
    }
}

/// The input gradient of an `h × w` → `rows.len() × cols.len()` nearest resize of an f32 CPU tensor, from
/// its output's gradient `g` and each output row's and column's source index.
pub fn upsample_nearest_backward_f32(
    g: &Tensor,
    rows: &[u32],
    cols: &[u32],
    h: usize,
    w: usize,
) -> candle_core::Result<Tensor> {
    let op = UpsampleNearestBackwardF32 {
        rows: rows.to_vec(),
        cols: cols.to_vec(),
        h,
        w,
    };
    g.contiguous()?.apply_op1_no_bwd(&op)
}

struct GegluF32;

impl CustomOp1 for GegluF32 {
    fn name(&self) -> &'static str {
        "geglu-f32"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let hg = contiguous_f32(s, l, self.name())?;
        let mut dims = l.shape().dims().to_vec();
        let last = dims.last_mut().filter(|d| **d % 2 == 0).ok_or_else(|| {
            candle_core::Error::Msg("geglu: the last dimension must be even".into())
        })?;
        *last /= 2;
        let inner = *last;
        let mut out = zeroed(hg.len() / 2);
        let rows = (8192 / inner).max(1);
        out.par_chunks_mut(rows * inner)
            .zip(hg.par_chunks(rows * 2 * inner))
            .for_each(|(o, hg)| geglu_rows(hg, o, inner));
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

/// diffusers' GEGLU `h · gelu(g)`, `[h, g]` the halves of the last dimension of an f32 CPU tensor, in one
/// pass (candle's erf GELU is scalar, and the halves are strided views).
pub fn geglu_f32(hg: &Tensor) -> candle_core::Result<Tensor> {
    hg.contiguous()?.apply_op1_no_bwd(&GegluF32)
}

struct GegluBackwardF32;

impl CustomOp2 for GegluBackwardF32 {
    fn name(&self) -> &'static str {
        "geglu-backward-f32"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (hg, grad) = contiguous_f32_pair((s1, l1), (s2, l2), self.name())?;
        let inner = l2.shape().dims().last().copied().unwrap_or(0);
        if inner == 0
            || hg.len() != 2 * grad.len()
            || l1.shape().dims().last() != Some(&(2 * inner))
        {
            candle_core::bail!(
                "geglu backward: input {:?} and gradient {:?} do not fit",
                l1.shape(),
                l2.shape()
            )
        }
        let mut out = zeroed(hg.len());
        let rows = (8192 / inner).max(1);
        out.par_chunks_mut(rows * 2 * inner)
            .zip(hg.par_chunks(rows * 2 * inner))
            .zip(grad.par_chunks(rows * inner))
            .for_each(|((o, hg), g)| geglu_backward_rows(hg, g, o, inner));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// The input gradient of [`geglu_f32`] given its output's gradient `grad`, in one pass (the composite made
/// a dozen, with a scalar erf).
pub fn geglu_backward_f32(hg: &Tensor, grad: &Tensor) -> candle_core::Result<Tensor> {
    hg.contiguous()?
        .apply_op2_no_bwd(&grad.contiguous()?, &GegluBackwardF32)
}

#[cfg(test)]
mod tests {
    use crate::testing::max_abs_error;
    use candle_core::{Device, Tensor, D};

    #[test]
    fn exp_is_within_a_unit_of_f32_rounding() {
        let mut worst = 0f64;
        for i in 0..200_000 {
            let x = -87.0 + i as f32 * (87.0 + 10.0) / 200_000.0;
            let want = (x as f64).exp();
            worst = worst.max(((super::exp(x) as f64 - want) / want).abs());
        }
        assert!(worst < 2e-7, "largest relative error {worst}");
        assert_eq!(super::exp(-100.0), 0.0);
        assert_eq!(super::exp(f32::NEG_INFINITY), 0.0);
        assert!(super::exp(f32::NAN).is_nan());
    }

    /// Rows longer and shorter than the lane count, and a masked entry (−inf, as causal masks give).
    #[test]
    fn softmax_and_silu_match_the_composites() {
        let dev = Device::Cpu;
        let x = (Tensor::randn(0f32, 4.0, (3, 5, 37), &dev).unwrap() + 2.0).unwrap();
        let e = x
            .broadcast_sub(&x.max_keepdim(D::Minus1).unwrap())
            .unwrap()
            .exp()
            .unwrap();
        let want = e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap();
        assert!(max_abs_error(&super::softmax_last_dim_f32(&x).unwrap(), &want).unwrap() < 1e-6);
        let masked = Tensor::new(&[[0.5f32, f32::NEG_INFINITY, -0.5]], &dev).unwrap();
        let p = super::softmax_last_dim_f32(&masked)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(p[0][1], 0.0);
        let silu = super::silu_f32(&x).unwrap();
        assert!(max_abs_error(&silu, &candle_nn::ops::silu(&x).unwrap()).unwrap() < 1e-5);
        // the backward against σ(x)·(1 + x·(1 − σ(x))) in f64 (the gradient suite's f32 tolerance: values reach 30)
        let g = Tensor::randn(0f32, 1.0, (3, 5, 37), &dev).unwrap();
        let x64 = x.to_dtype(candle_core::DType::F64).unwrap();
        let s = (x64.neg().unwrap().exp().unwrap() + 1.0)
            .unwrap()
            .recip()
            .unwrap();
        let slope = ((&x64 * (1.0 - &s).unwrap()).unwrap() + 1.0).unwrap();
        let want = (g.to_dtype(candle_core::DType::F64).unwrap() * (s * slope).unwrap()).unwrap();
        let got = super::silu_backward_f32(&x, &g).unwrap();
        let err = max_abs_error(&got.to_dtype(candle_core::DType::F64).unwrap(), &want).unwrap();
        assert!(err < 1e-5, "SiLU backward: max difference {err}");
    }

    #[test]
    fn geglu_matches_the_composite() {
        let dev = Device::Cpu;
        let hg = Tensor::randn(0f32, 2.0, (2, 3, 2 * 37), &dev).unwrap();
        let (h, g) = (hg.narrow(2, 0, 37).unwrap(), hg.narrow(2, 37, 37).unwrap());
        let want = (h * g.gelu_erf().unwrap()).unwrap();
        assert!(max_abs_error(&super::geglu_f32(&hg).unwrap(), &want).unwrap() < 2e-6);
    }
}
