//! Separable image resampling matching OpenCV's `INTER_AREA` and `INTER_LINEAR`.
//!
//! The reference MTCNN (and the weights' training pipeline) resizes pyramid levels and candidate
//! crops with `cv2.resize(..., INTER_AREA)`, SCRFD's letterbox with the default `INTER_LINEAR`.
//! Using the same filters keeps the network inputs, and so the scores near the thresholds, close
//! to the reference. Both are separable, so each axis gets a table of (first source index,
//! weights) and the image is filtered horizontally, then vertically.

use crate::image_io::ImageF32;

/// Which resampling filter to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// Box filter over the exact source area of each output pixel when shrinking (anti-aliased);
    /// bilinear when enlarging, as OpenCV's `INTER_AREA` does.
    Area,
    /// Bilinear with half-pixel centres and no anti-aliasing (OpenCV `INTER_LINEAR`).
    Bilinear,
}

/// Per output index: first source index and the weights of the following source samples.
struct AxisTable {
    start: Vec<usize>,
    weights: Vec<Vec<f32>>,
}

fn axis_table(src: usize, dst: usize, filter: Filter) -> AxisTable {
    let scale = src as f64 / dst as f64;
    let mut start = Vec::with_capacity(dst);
    let mut weights = Vec::with_capacity(dst);
    if filter == Filter::Area && scale >= 1.0 {
        for i in 0..dst {
            let lo = i as f64 * scale;
            let hi = ((i + 1) as f64 * scale).min(src as f64);
            let first = lo.floor() as usize;
            let mut w = Vec::new();
            let mut j = first;
            while (j as f64) < hi && j < src {
                let overlap = (hi.min((j + 1) as f64) - lo.max(j as f64)).max(0.0);
                w.push((overlap / (hi - lo)) as f32);
                j += 1;
            }
            start.push(first);
            weights.push(w);
        }
    } else {
        for i in 0..dst {
            let mut f = (i as f64 + 0.5) * scale - 0.5;
            let mut j = f.floor();
            f -= j;
            if j < 0.0 {
                j = 0.0;
                f = 0.0;
            }
            let mut j = j as usize;
            if j + 1 >= src {
                j = src - 1;
                f = 0.0;
            }
            start.push(j);
            if f == 0.0 {
                weights.push(vec![1.0]);
            } else {
                weights.push(vec![(1.0 - f) as f32, f as f32]);
            }
        }
    }
    AxisTable { start, weights }
}

/// Resizes `img` to `new_w`×`new_h` (both ≥ 1; an empty source gives a black image).
pub fn resize(img: &ImageF32, new_w: usize, new_h: usize, filter: Filter) -> ImageF32 {
    let (w, h) = (img.width, img.height);
    if new_w == 0 || new_h == 0 {
        return ImageF32::zeros(new_w, new_h);
    }
    if w == 0 || h == 0 {
        return ImageF32::zeros(new_w, new_h);
    }
    if w == new_w && h == new_h {
        return img.clone();
    }
    let tx = axis_table(w, new_w, filter);
    let ty = axis_table(h, new_h, filter);
    // Horizontal pass: h rows of new_w pixels.
    let mut tmp = vec![0f32; h * new_w * 3];
    for y in 0..h {
        let row = &img.data[y * w * 3..(y + 1) * w * 3];
        let out = &mut tmp[y * new_w * 3..(y + 1) * new_w * 3];
        for x in 0..new_w {
            let s = tx.start[x];
            let mut acc = [0f32; 3];
            for (k, &wt) in tx.weights[x].iter().enumerate() {
                let p = &row[(s + k) * 3..(s + k) * 3 + 3];
                acc[0] += wt * p[0];
                acc[1] += wt * p[1];
                acc[2] += wt * p[2];
            }
            out[x * 3..x * 3 + 3].copy_from_slice(&acc);
        }
    }
    // Vertical pass.
    let mut out = ImageF32::zeros(new_w, new_h);
    let stride = new_w * 3;
    for y in 0..new_h {
        let s = ty.start[y];
        let dst = &mut out.data[y * stride..(y + 1) * stride];
        for (k, &wt) in ty.weights[y].iter().enumerate() {
            let src = &tmp[(s + k) * stride..(s + k + 1) * stride];
            for (d, v) in dst.iter_mut().zip(src) {
                *d += wt * v;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(w: usize, h: usize) -> ImageF32 {
        let mut img = ImageF32::zeros(w, h);
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    img.data[(y * w + x) * 3 + c] = (x * 10 + y + c) as f32;
                }
            }
        }
        img
    }

    #[test]
    fn area_halving_averages_2x2_blocks() {
        let img = ramp(4, 4);
        let r = resize(&img, 2, 2, Filter::Area);
        let expect = (img.at(0, 0, 1) + img.at(1, 0, 1) + img.at(0, 1, 1) + img.at(1, 1, 1)) / 4.0;
        assert!((r.at(0, 0, 1) - expect).abs() < 1e-5);
        let expect = (img.at(2, 2, 0) + img.at(3, 2, 0) + img.at(2, 3, 0) + img.at(3, 3, 0)) / 4.0;
        assert!((r.at(1, 1, 0) - expect).abs() < 1e-5);
    }

    #[test]
    fn area_fractional_keeps_mean_of_constant_and_linear() {
        let img = ramp(10, 7);
        let r = resize(&img, 3, 3, Filter::Area);
        // Area resampling preserves the image mean exactly.
        let mean = |i: &ImageF32| i.data.iter().sum::<f32>() / i.data.len() as f32;
        assert!(
            (mean(&img) - mean(&r)).abs() < 1e-3,
            "{} vs {}",
            mean(&img),
            mean(&r)
        );
    }

    #[test]
    fn bilinear_upscale_interpolates_between_neighbours() {
        let img = ramp(2, 1);
        let r = resize(&img, 4, 1, Filter::Bilinear);
        // Output centres map to source x = -0.25, 0.25, 0.75, 1.25 (clamped at the ends).
        assert_eq!(r.at(0, 0, 0), 0.0);
        assert!((r.at(1, 0, 0) - 2.5).abs() < 1e-5);
        assert!((r.at(2, 0, 0) - 7.5).abs() < 1e-5);
        assert_eq!(r.at(3, 0, 0), 10.0);
    }

    #[test]
    fn degenerate_sizes_do_not_panic() {
        let img = ramp(1, 1);
        assert_eq!(resize(&img, 5, 3, Filter::Area).data.len(), 45);
        assert_eq!(
            resize(&ImageF32::zeros(0, 0), 2, 2, Filter::Area).data,
            vec![0.0; 12]
        );
        assert!(resize(&img, 0, 3, Filter::Bilinear).data.is_empty());
    }
}
