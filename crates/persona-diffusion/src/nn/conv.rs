//! Convolutions on the CPU as implicit GEMM: one matrix product per kernel tap over a shifted view of the
//! (padded) input, accumulated into the output, instead of candle's im2col.
//!
//! candle 0.11 builds, for every 512 output pixels, an im2col tile with scattered writes, converts the input
//! to NHWC with a scalar loop and scatters the product back to NCHW: its 3×3 convolutions ran at 53–124
//! GFLOP/s on this machine's two cores, where the `gemm` crate's matrix product reaches ~200 and PyTorch's
//! convolutions 150–226. Here the input is copied once (padded, and for stride s split into s² phase
//! images, so that every tap reads a plain stride-1 window), and the k² products read it in place: with the
//! output laid out on the padded width, the window of tap (ky, kx) is the padded input shifted by
//! `ky·width + kx` elements, a matrix of rows `channel` and contiguous columns. The few padding columns
//! computed on the way are dropped when the bias is added.
//!
//! A channel's images of the whole batch lie one after the other (`[phase, channel, sample, row, column]`),
//! so that one product per tap serves every sample: the columns running from one sample's image into the
//! next read padding and are dropped like the others. Per-sample products left batch 2 at 0.85× batch 1's
//! rate at 64², and at 16² (1 280 channels, 288 columns a sample) re-read the 59 MB kernel per sample.
//!
//! The same op computes a stride-1 convolution's input gradient: the kernel flipped in both spatial
//! dimensions with its channel axes swapped, read that way while it is repacked (no flipped copy).
//!
//! The products read tap t's `[out, in]` matrix from a `[out, k², in]` layout. A kernel stored that way
//! ([`tap_major`], what `Conv2d` keeps on the CPU, seen by everything else as an ordinary `[out, in, k, k]`
//! tensor with other strides) is read in place, by the forward and, with its strides swapped, by the input
//! gradient; any other kernel is repacked per call. The repack reads and writes the whole kernel, 59 MB for
//! SD's 1 280-channel convolutions, as long as the products themselves take at 8² latents.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use super::kernels::{contiguous_f32, gemm_parallelism};

/// How the op reads its `[A, B, k, k]` kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    /// A forward convolution: `A` output channels, `B` input channels.
    AsIs,
    /// The input gradient of a stride-1 convolution with this kernel: `A` is the gradient's (the forward's
    /// output) channels, `B` the result's; the taps are flipped.
    FlippedTransposed,
}

/// Where every index of one convolution lives.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    batch: usize,
    k: usize,
    s: usize,
    p: usize,
    h: usize,
    w: usize,
    /// A phase image's rows and columns: `⌈(h + 2p) / s⌉`, `⌈(w + 2p) / s⌉`.
    hq: usize,
    wq: usize,
    ho: usize,
    wo: usize,
}

impl Geometry {
    fn new(
        batch: usize,
        (h, w): (usize, usize),
        k: usize,
        s: usize,
        p: usize,
    ) -> candle_core::Result<Self> {
        let (hp, wp) = (h + 2 * p, w + 2 * p);
        if s == 0 || k == 0 || hp < k || wp < k {
            candle_core::bail!(
                "conv2d: a {k}×{k} kernel at stride {s} does not fit a {h}×{w} input padded by {p}"
            )
        }
        Ok(Self {
            batch,
            k,
            s,
            p,
            h,
            w,
            hq: hp.div_ceil(s),
            wq: wp.div_ceil(s),
            ho: (hp - k) / s + 1,
            wo: (wp - k) / s + 1,
        })
    }

    /// One sample's phase image.
    fn plane(&self) -> usize {
        self.hq * self.wq
    }

    /// One channel of a phase: the whole batch's images, a row of the products' right operands.
    fn channel(&self) -> usize {
        self.batch * self.plane()
    }

    /// Output columns the products compute: every output row of every sample on the phase width, the
    /// last one cut at its last real pixel so that no tap's window reads past its channel.
    fn columns(&self) -> usize {
        (self.batch - 1) * self.plane() + (self.ho - 1) * self.wq + self.wo
    }

    /// The phase image tap `t` reads and where its window starts in it.
    fn tap(&self, t: usize) -> (usize, usize) {
        let (ky, kx) = (t / self.k, t % self.k);
        let phase = (ky % self.s) * self.s + kx % self.s;
        (phase, (ky / self.s) * self.wq + kx / self.s)
    }

    /// The `[batch, c, h, w]` input as `s²` zero-padded phase images `[s², c, batch, hq, wq]`: phase
    /// `(a, b)` holds the padded input's pixels `(i·s + a, j·s + b)`. Every element is written once, padding
    /// included: no zeroing pass first (at the VAE's 128 channels a pass over the input costs a tenth of
    /// the products).
    fn phases(&self, x: &[f32], channels: usize) -> Vec<f32> {
        let (plane, hw) = (self.plane(), self.h * self.w);
        let len = self.s * self.s * channels * self.channel();
        let mut phases = Vec::with_capacity(len);
        phases.spare_capacity_mut()[..len]
            .par_chunks_mut(plane)
            .enumerate()
            .for_each(|(idx, dst)| {
                let (phase, c, n) = (
                    idx / (channels * self.batch),
                    idx / self.batch % channels,
                    idx % self.batch,
                );
                let (a, b) = (phase / self.s, phase % self.s);
                let src = &x[(n * channels + c) * hw..][..hw];
                for (i, out) in dst.chunks_mut(self.wq).enumerate() {
                    let row = (i * self.s + a)
                        .checked_sub(self.p)
                        .filter(|&y| y < self.h)
                        .map(|y| &src[y * self.w..(y + 1) * self.w]);
                    match row {
                        Some(row) if self.s == 1 => {
                            let (left, rest) = out.split_at_mut(self.p);
                            let (mid, right) = rest.split_at_mut(self.w);
                            left.fill(MaybeUninit::new(0.0));
                            for (o, &v) in mid.iter_mut().zip(row) {
                                o.write(v);
                            }
                            right.fill(MaybeUninit::new(0.0));
                        }
                        _ => {
                            for (j, o) in out.iter_mut().enumerate() {
                                let x = (j * self.s + b).checked_sub(self.p);
                                o.write(row.zip(x).and_then(|(r, x)| r.get(x)).map_or(0.0, |&v| v));
                            }
                        }
                    }
                }
            });
        // SAFETY: the chunks cover `len` elements and every element of every chunk was written above.
        unsafe { phases.set_len(len) };
        phases
    }

    /// Writes the products' columns `first..first + cols` (`src`, one row of `stride` per output channel
    /// in `channels`) to their pixels in the `[batch, cout, ho, wo]` output, plus the bias; the columns of
    /// padding, and those running from one sample into the next, are skipped.
    ///
    /// # Safety
    /// `out` points to `batch · cout · ho · wo` floats, and no other thread writes the pixels of these
    /// columns in these channels at the same time.
    unsafe fn scatter(
        &self,
        (src, stride): (&[f32], usize),
        (first, cols): (usize, usize),
        channels: std::ops::Range<usize>,
        (bias, out): (&[f32], *mut f32),
    ) {
        let (plane, cout) = (self.plane(), bias.len());
        for o in channels {
            let row = &src[o * stride..][..cols];
            let mut j = first;
            while j < first + cols {
                let (n, r, c) = (j / plane, j % plane / self.wq, j % self.wq);
                if r >= self.ho {
                    j = (n + 1) * plane;
                    continue;
                }
                if c >= self.wo {
                    j += self.wq - c;
                    continue;
                }
                let run = (self.wo - c).min(first + cols - j);
                let dst = out.add(((n * cout + o) * self.ho + r) * self.wo + c);
                for (i, &v) in row[j - first..][..run].iter().enumerate() {
                    dst.add(i).write(v + bias[o]);
                }
                j += run;
            }
        }
    }
}

struct ImplicitGemmConv {
    stride: usize,
    padding: usize,
    kernel: Kernel,
}

/// The left operands of the k² products: tap t's `[out, in]` matrix starts at `first + t · step` in `data`,
/// with column stride `cs` and row stride `rs`.
struct Taps<'a> {
    data: &'a [f32],
    first: usize,
    step: isize,
    cs: isize,
    rs: isize,
}

impl Taps<'_> {
    /// A `[rows, k², cols]` buffer, taps in order: the repacked kernel, or a tap-major one read forwards.
    fn in_order(data: &[f32], k: usize, cols: usize) -> Taps<'_> {
        Taps {
            data,
            first: 0,
            step: cols as isize,
            cs: 1,
            rs: (k * k * cols) as isize,
        }
    }

    fn tap(&self, t: usize) -> *const f32 {
        // `first + t·step` lies inside `data` for every tap t < k² (what each constructor sets up).
        self.data[self.first..]
            .as_ptr()
            .wrapping_offset(t as isize * self.step)
    }
}

/// `w` (`[out, in, k, k]`) stored as `[out, k, k, in]` and viewed again as `[out, in, k, k]`: the layout
/// the products read in place. Same values, same shape; other ops read it through its strides.
pub fn tap_major(w: &Tensor) -> candle_core::Result<Tensor> {
    w.permute((0, 2, 3, 1))?.contiguous()?.permute((0, 3, 1, 2))
}

/// Whether `l` is a [`tap_major`] view of a `[a, b, k, k]` kernel.
fn is_tap_major(l: &Layout) -> bool {
    match (l.shape().dims(), l.stride()) {
        (&[_, b, k, k2], &[s0, s1, s2, s3]) => {
            k == k2 && s0 == k * k * b && s1 == 1 && s2 == k * b && s3 == b
        }
        _ => false,
    }
}

impl ImplicitGemmConv {
    /// The kernel as `[out, k², in]`: tap t's matrix `[out, in]` starts at `t · in` with row stride
    /// `k² · in`, what the products read as their left operand. One task per output channel reads its
    /// weights once, in order (gathering each tap's matrix separately re-read the whole kernel k² times, 5 %
    /// of a UNet forward).
    fn repack(&self, w: &[f32], a: usize, b: usize, k: usize) -> Vec<f32> {
        let kk = k * k;
        let mut taps = vec![0f32; w.len()];
        match self.kernel {
            Kernel::AsIs => {
                // out = the kernel's first axis (a), in = its second (b).
                taps.par_chunks_mut(kk * b)
                    .zip(w.par_chunks(b * kk))
                    .for_each(|(dst, src)| {
                        for (i, weights) in src.chunks(kk).enumerate() {
                            for (t, &v) in weights.iter().enumerate() {
                                dst[t * b + i] = v;
                            }
                        }
                    });
            }
            Kernel::FlippedTransposed => {
                // out = the kernel's second axis (b), in = its first (a); tap t reads the kernel's tap
                // k² − 1 − t.
                taps.par_chunks_mut(kk * a)
                    .enumerate()
                    .for_each(|(o, dst)| {
                        for i in 0..a {
                            let weights = &w[(i * b + o) * kk..(i * b + o + 1) * kk];
                            for (t, &v) in weights.iter().rev().enumerate() {
                                dst[t * a + i] = v;
                            }
                        }
                    });
            }
        }
        taps
    }
}

impl CustomOp3 for ImplicitGemmConv {
    fn name(&self) -> &'static str {
        "implicit-gemm-conv2d"
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
        let (x, bias) = (
            contiguous_f32(s1, l1, self.name())?,
            contiguous_f32(s3, l3, self.name())?,
        );
        let (batch, cin, h, wd) = l1.shape().dims4()?;
        let (a, b, k, k2) = l2.shape().dims4()?;
        let (kin, cout) = match self.kernel {
            Kernel::AsIs => (b, a),
            Kernel::FlippedTransposed => (a, b),
        };
        if k != k2 || kin != cin || bias.len() != cout {
            candle_core::bail!(
                "conv2d: kernel {:?} and bias [{}] do not fit an input of {cin} channels",
                l2.shape(),
                bias.len()
            )
        }
        let geo = Geometry::new(batch, (h, wd), k, self.stride, self.padding)?;
        let repacked;
        let taps = if is_tap_major(l2) {
            let CpuStorage::F32(w) = s2 else {
                candle_core::bail!("{}: f32 kernel expected", self.name())
            };
            let w = &w[l2.start_offset()..][..a * b * k * k];
            match self.kernel {
                Kernel::AsIs => Taps::in_order(w, k, b),
                // Tap t is the stored tap k² − 1 − t, transposed: rows `b` apart by one, columns by k²·b.
                Kernel::FlippedTransposed => Taps {
                    data: w,
                    first: (k * k - 1) * b,
                    step: -(b as isize),
                    cs: (k * k * b) as isize,
                    rs: 1,
                },
            }
        } else {
            repacked = self.repack(contiguous_f32(s2, l2, self.name())?, a, b, k);
            Taps::in_order(&repacked, k, kin)
        };
        let phases = geo.phases(x, cin);
        let len = batch * cout * geo.ho * geo.wo;
        let mut out = Vec::with_capacity(len);
        products(&geo, &taps, &phases, cin, bias, out.as_mut_ptr());
        // SAFETY: `products` wrote every output pixel (`Geometry::columns` reaches the last one).
        unsafe { out.set_len(len) };
        let shape = Shape::from((batch, cout, geo.ho, geo.wo));
        Ok((CpuStorage::F32(out), shape))
    }
}

/// `out[n, o, r, c] = bias[o] + Σ_t Σ_i tap(t)[o, i] · phase(t)[i, col + offset(t)]` with `col` the pixel's
/// column on the phase width: the k² accumulated products, then scattered to the output's pixels.
///
/// A large output is cut into column blocks of ~4 MiB, one per thread at a time, each computed into the
/// thread's own buffer (its nine accumulations stay in cache) and scattered from there; a small one runs as
/// a whole, with the `gemm` crate's own threading, and is scattered by channels.
fn products(geo: &Geometry, taps: &Taps, phases: &[f32], cin: usize, bias: &[f32], out: *mut f32) {
    let (n, cout) = (geo.columns(), bias.len());
    let row = geo.channel() as isize;
    let threads = candle_core::utils::get_num_threads();
    let block = ((1 << 20) / cout).max(256);
    let blocks = n.div_ceil(block);
    let out = out as usize;
    // Columns `first..first + cols` into `dst`, `cout` rows of `stride`.
    let run = |first: usize, cols: usize, par: Parallelism, dst: *mut f32, stride: usize| {
        for t in 0..geo.k * geo.k {
            let (phase, offset) = geo.tap(t);
            let rhs = &phases[(phase * cin) * geo.channel() + offset + first..];
            // SAFETY: `dst` holds `cout` rows of `stride ≥ cols` floats, written by the first tap (which
            // does not read it) before later taps read them. Each tap's right operand is `cin` rows one
            // channel apart, columns `0..cols` from `offset + first`; `Geometry::columns` keeps the last
            // row's window inside its channel, so every read is inside `phases`. Tap t's left operand,
            // `cout` rows and `cin` columns with `taps`' strides from `taps.tap(t)`, lies inside its
            // `[cout, k², cin]` or transposed tap-major kernel.
            unsafe {
                gemm::gemm(
                    cout,
                    cols,
                    cin,
                    dst,
                    1,
                    stride as isize,
                    t > 0,
                    taps.tap(t),
                    taps.cs,
                    taps.rs,
                    rhs.as_ptr(),
                    1,
                    row,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    par,
                )
            }
        }
    };
    if threads > 1 && blocks >= 2 * threads {
        (0..blocks)
            .into_par_iter()
            .for_each_init(Vec::new, |buffer: &mut Vec<f32>, i| {
                let (first, cols) = (i * block, block.min(n - i * block));
                buffer.resize(cout * block, 0.0);
                run(first, cols, Parallelism::None, buffer.as_mut_ptr(), block);
                // SAFETY: blocks are disjoint column ranges, so their pixels are too.
                unsafe { geo.scatter((buffer, block), (first, cols), 0..cout, (bias, out as _)) }
            });
    } else {
        let mut full = Vec::with_capacity(cout * n);
        run(0, n, gemm_parallelism(), full.as_mut_ptr(), n);
        // SAFETY: the first tap wrote all `cout × n` products.
        unsafe { full.set_len(cout * n) };
        // Small tasks: a few large ones left a core idle (1 280 channels at 16², 13 % slower).
        const PER_TASK: usize = 16;
        (0..cout.div_ceil(PER_TASK)).into_par_iter().for_each(|t| {
            let channels = t * PER_TASK..((t + 1) * PER_TASK).min(cout);
            // SAFETY: tasks take disjoint output channels.
            unsafe { geo.scatter((&full, n), (0, n), channels, (bias, out as _)) }
        });
    }
}

/// Whether the CPU kernel serves `x`: f32, or bf16 / f16 widened to f32 by the caller. f64 (the finite-
/// difference checks) and other devices keep candle's kernels.
pub fn applies(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::BF16 | DType::F16)
}

/// `conv2d(x, w) + bias` for f32 `[B, C, H, W]` on the CPU, square kernel.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> candle_core::Result<Tensor> {
    let op = ImplicitGemmConv {
        stride,
        padding,
        kernel: Kernel::AsIs,
    };
    apply(op, x, w, bias, w.dim(0)?)
}

/// The input gradient of a stride-1 convolution with kernel `w` and `padding`, from the output gradient `g`.
pub fn conv2d_input_grad(g: &Tensor, w: &Tensor, padding: usize) -> candle_core::Result<Tensor> {
    let k = w.dim(2)?;
    if padding >= k {
        candle_core::bail!("conv2d input gradient: padding {padding} ≥ kernel {k}")
    }
    let op = ImplicitGemmConv {
        stride: 1,
        padding: k - 1 - padding,
        kernel: Kernel::FlippedTransposed,
    };
    apply(op, g, w, None, w.dim(1)?)
}

fn apply(
    op: ImplicitGemmConv,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    out_channels: usize,
) -> candle_core::Result<Tensor> {
    let bias = match bias {
        Some(b) => b.to_dtype(DType::F32)?.contiguous()?,
        None => Tensor::zeros(out_channels, DType::F32, x.device())?,
    };
    let w = w.to_dtype(DType::F32)?;
    let w = if is_tap_major(w.layout()) {
        w
    } else {
        w.contiguous()?
    };
    x.contiguous()?.apply_op3_no_bwd(&w, &bias, &op)
}

#[cfg(test)]
mod tests {
    use crate::testing::{max_abs_error, randn_f32 as randn};

    /// Every geometry the models use (3×3 at stride 1 and 2, padding 0 and 1, odd sizes, 1×1), with the
    /// kernel repacked and read in place ([`super::tap_major`]), against candle's im2col convolution plus
    /// the bias.
    #[test]
    fn implicit_gemm_matches_candle() {
        for &(cin, cout, h, w, k, s, p) in &[
            (3, 5, 9, 7, 3, 1, 1),
            (4, 6, 8, 8, 3, 2, 1),
            (4, 6, 9, 7, 3, 2, 0),
            (4, 2, 6, 5, 1, 1, 0),
            (5, 3, 7, 6, 3, 1, 0),
            (6, 4, 11, 10, 3, 2, 1),
            (3, 4, 5, 5, 5, 1, 2),
        ] {
            let x = randn(&[2, cin, h, w]);
            let wt = randn(&[cout, cin, k, k]);
            let bias = randn(&[cout]);
            let want = x
                .conv2d(&wt, p, s, 1, 1)
                .unwrap()
                .broadcast_add(&bias.reshape((1, cout, 1, 1)).unwrap())
                .unwrap();
            for wt in [wt.clone(), super::tap_major(&wt).unwrap()] {
                let got = super::conv2d(&x, &wt, Some(&bias), s, p).unwrap();
                assert_eq!(
                    got.dims(),
                    want.dims(),
                    "{cin}→{cout} {h}×{w} k{k} s{s} p{p}"
                );
                let err = max_abs_error(&got, &want).unwrap();
                assert!(err < 1e-4, "{cin}→{cout} {h}×{w} k{k} s{s} p{p}: {err}");
            }
        }
    }

    /// Column blocks (a large output: 4096 channels make the block 256 columns, two samples' 3 442 columns
    /// make 14 blocks, one across the samples' boundary), each scattered to its pixels with the bias, give
    /// the same values as candle.
    #[test]
    fn column_blocks_match_candle() {
        let x = randn(&[2, 8, 40, 40]);
        let wt = randn(&[4096, 8, 3, 3]);
        let bias = randn(&[4096]);
        let got = super::conv2d(&x, &wt, Some(&bias), 1, 1).unwrap();
        let want = x
            .conv2d(&wt, 1, 1, 1, 1)
            .unwrap()
            .broadcast_add(&bias.reshape((1, 4096, 1, 1)).unwrap())
            .unwrap();
        assert!(max_abs_error(&got, &want).unwrap() < 1e-4);
    }

    /// The stride-1 input gradient equals candle's transposed convolution with the same kernel, repacked or
    /// read in place.
    #[test]
    fn input_grad_matches_the_transposed_convolution() {
        for &(cin, cout, h, k, p) in &[(3, 5, 8, 3, 1), (4, 2, 7, 3, 0), (2, 3, 6, 1, 0)] {
            let g = randn(&[2, cout, h + 2 * p + 1 - k, h + 2 * p + 1 - k]);
            let wt = randn(&[cout, cin, k, k]);
            let want = g.conv_transpose2d(&wt, p, 0, 1, 1).unwrap();
            for wt in [wt.clone(), super::tap_major(&wt).unwrap()] {
                let got = super::conv2d_input_grad(&g, &wt, p).unwrap();
                assert_eq!(got.dims(), &[2, cin, h, h]);
                assert!(
                    max_abs_error(&got, &want).unwrap() < 1e-4,
                    "{cin}→{cout} k{k} p{p}"
                );
            }
        }
    }

    #[test]
    fn a_kernel_larger_than_the_input_is_an_error() {
        let err =
            super::conv2d(&randn(&[1, 2, 2, 2]), &randn(&[3, 2, 3, 3]), None, 1, 0).unwrap_err();
        assert!(err.to_string().contains("does not fit"), "{err}");
    }
}
