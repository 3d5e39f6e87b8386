//! Pillow's `Image.resize(…, BICUBIC)` for 8-bit RGB, reimplemented so that CLIP sees the pixels transformers'
//! PIL image processor (and OpenAI's own preprocessing) gives it.
//!
//! Pillow resamples separably, horizontal pass first: each output sample is a weighted sum of input samples under a
//! cubic kernel (a = −0.5) whose support is widened by the downscale factor (antialiasing; upscaling keeps support
//! 2). Weights are normalised to sum 1 in f64, then rounded to 22-bit fixed point; sums are rounded and clipped to
//! 8 bits after *each* pass. Every one of these steps changes output bytes, so all are reproduced.

/// Fixed-point fraction bits of the weights: 32 bits minus 8 for the sample and 2 of headroom for sums above 1.
const PRECISION_BITS: u32 = 22;

/// The input samples one output sample reads: `weights[i]` applies to input index `start + i`.
struct Taps {
    start: usize,
    weights: Vec<i32>,
}

/// Keys' cubic convolution kernel with a = −0.5 (Pillow's `bicubic_filter`), support 2.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// The taps of every output sample of one axis (`in_size` → `out_size`), as Pillow's `precompute_coeffs` and
/// `normalize_coeffs_8bpc` compute them (same operation order, C truncating casts).
fn taps(in_size: usize, out_size: usize) -> Vec<Taps> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let raw: Vec<f64> = (xmin..xmax)
                .map(|x| bicubic((x as f64 - center + 0.5) / filterscale))
                .collect();
            let total: f64 = raw.iter().sum();
            let weights = raw
                .iter()
                .map(|&w| {
                    let w = if total != 0.0 { w / total } else { w };
                    let fixed = w * f64::from(1u32 << PRECISION_BITS);
                    (if w < 0.0 { fixed - 0.5 } else { fixed + 0.5 }) as i32
                })
                .collect();
            Taps {
                start: xmin,
                weights,
            }
        })
        .collect()
}

/// Rounds a fixed-point sum (which started at one half) down to 8 bits, clipping to 0..=255.
fn clip8(sum: i64) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One output pixel: the weighted sum of the RGB pixels at `offset(i)` for each tap `i` in `src`.
fn convolve(src: &[u8], taps: &Taps, offset: impl Fn(usize) -> usize) -> [u8; 3] {
    let mut sums = [1i64 << (PRECISION_BITS - 1); 3];
    for (i, &w) in taps.weights.iter().enumerate() {
        let p = offset(taps.start + i);
        for (c, sum) in sums.iter_mut().enumerate() {
            *sum += i64::from(src[p + c]) * i64::from(w);
        }
    }
    sums.map(clip8)
}

/// Resizes `width` only: `height` rows of `src` (packed RGB, `in_width` wide) → `out_width` wide.
fn horizontal(src: &[u8], in_width: usize, height: usize, out_width: usize) -> Vec<u8> {
    let taps = taps(in_width, out_width);
    let mut out = Vec::with_capacity(out_width * height * 3);
    for y in 0..height {
        let row = &src[y * in_width * 3..(y + 1) * in_width * 3];
        for t in &taps {
            out.extend_from_slice(&convolve(row, t, |x| x * 3));
        }
    }
    out
}

/// Resizes `height` only: `src` (packed RGB, `width` wide, `in_height` rows) → `out_height` rows.
fn vertical(src: &[u8], width: usize, in_height: usize, out_height: usize) -> Vec<u8> {
    let taps = taps(in_height, out_height);
    let mut out = Vec::with_capacity(width * out_height * 3);
    for t in &taps {
        for x in 0..width {
            out.extend_from_slice(&convolve(src, t, |y| (y * width + x) * 3));
        }
    }
    out
}

/// `image.resize((out_width, out_height), Image.BICUBIC)` of Pillow for an RGB image given as packed 8-bit RGB
/// rows (`in_width × in_height`); returns the packed result. An axis whose size does not change is not resampled,
/// as in Pillow (its taps would be the identity anyway).
pub fn resize_bicubic(
    src: &[u8],
    in_width: usize,
    in_height: usize,
    out_width: usize,
    out_height: usize,
) -> Vec<u8> {
    let mut data = src.to_vec();
    if out_width != in_width {
        data = horizontal(&data, in_width, in_height, out_width);
    }
    if out_height != in_height {
        data = vertical(&data, out_width, in_height, out_height);
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::RgbImage;

    /// Same-size resampling is the identity: the taps are exactly 1.0 at the pixel and 0 elsewhere.
    #[test]
    fn unchanged_axis_is_identity() {
        let img = RgbImage::from_fn(7, 5, |x, y| {
            image::Rgb([(x * 30) as u8, (y * 50) as u8, ((x + y) * 20) as u8])
        });
        let out = vertical(img.as_raw(), 7, 5, 5);
        assert_eq!(out, img.as_raw().as_slice());
    }

    /// Fixed-point weights of one output sample sum to (almost exactly) one.
    #[test]
    fn weights_are_normalised() {
        for t in taps(256, 224).iter().chain(&taps(100, 224)) {
            let sum: i32 = t.weights.iter().sum();
            assert!(
                (sum - (1 << PRECISION_BITS)).abs() <= t.weights.len() as i32,
                "{sum}"
            );
        }
    }
}
