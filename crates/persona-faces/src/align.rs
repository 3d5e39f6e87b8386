//! 5-point alignment: a least-squares similarity transform onto the ArcFace template, then a
//! bilinear warp.
//!
//! A similarity (rotation, uniform scale, translation — no shear) keeps the face's proportions,
//! which the recognisers were trained with (insightface `norm_crop`, skimage
//! `SimilarityTransform.estimate`, i.e. Umeyama without reflection). In 2-D the least-squares
//! similarity has a closed form: with centred points `s`, `d`,
//! `a = Σ(s·d) / Σ|s|²`, `b = Σ(s×d) / Σ|s|²`, which is what Umeyama's SVD reduces to.

use image::RgbImage;

use crate::error::{FaceError, Result};

/// ArcFace's 5-point template for a 112×112 crop (left eye, right eye, nose, mouth corners).
pub const ARCFACE_TEMPLATE_112: [[f32; 2]; 5] = [
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041],
];

/// The template scaled to a `size`×`size` crop.
pub fn arcface_template(size: u32) -> [[f32; 2]; 5] {
    let k = size as f32 / 112.0;
    ARCFACE_TEMPLATE_112.map(|[x, y]| [x * k, y * k])
}

/// `p ↦ [[a, -b], [b, a]] p + [tx, ty]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Similarity {
    pub a: f64,
    pub b: f64,
    pub tx: f64,
    pub ty: f64,
}

impl Similarity {
    /// The least-squares similarity taking `src` points to `dst` points.
    ///
    /// `None` when fewer than 2 points are given, the counts differ, a value is not finite, or
    /// all source points coincide (no scale or rotation can be determined).
    pub fn estimate(src: &[[f32; 2]], dst: &[[f32; 2]]) -> Option<Self> {
        if src.len() != dst.len() || src.len() < 2 {
            return None;
        }
        let n = src.len() as f64;
        let mean = |p: &[[f32; 2]]| {
            let (sx, sy) = p
                .iter()
                .fold((0.0, 0.0), |(x, y), q| (x + q[0] as f64, y + q[1] as f64));
            (sx / n, sy / n)
        };
        let (msx, msy) = mean(src);
        let (mdx, mdy) = mean(dst);
        let (mut dot, mut cross, mut norm) = (0.0, 0.0, 0.0);
        for (s, d) in src.iter().zip(dst) {
            let (sx, sy) = (s[0] as f64 - msx, s[1] as f64 - msy);
            let (dx, dy) = (d[0] as f64 - mdx, d[1] as f64 - mdy);
            dot += sx * dx + sy * dy;
            cross += sx * dy - sy * dx;
            norm += sx * sx + sy * sy;
        }
        if !(norm > 1e-12) || !dot.is_finite() || !cross.is_finite() {
            return None;
        }
        let (a, b) = (dot / norm, cross / norm);
        let tx = mdx - (a * msx - b * msy);
        let ty = mdy - (b * msx + a * msy);
        Some(Self { a, b, tx, ty })
    }

    /// Applies the transform to a point.
    pub fn apply(&self, p: [f64; 2]) -> [f64; 2] {
        [
            self.a * p[0] - self.b * p[1] + self.tx,
            self.b * p[0] + self.a * p[1] + self.ty,
        ]
    }

    /// Uniform scale factor.
    pub fn scale(&self) -> f64 {
        self.a.hypot(self.b)
    }

    /// Rotation angle in radians.
    pub fn rotation(&self) -> f64 {
        self.b.atan2(self.a)
    }

    /// The inverse transform; `None` for a zero scale.
    pub fn inverse(&self) -> Option<Self> {
        let d = self.a * self.a + self.b * self.b;
        if !(d > 1e-18) {
            return None;
        }
        let (a, b) = (self.a / d, -self.b / d);
        let tx = -(a * self.tx - b * self.ty);
        let ty = -(b * self.tx + a * self.ty);
        Some(Self { a, b, tx, ty })
    }

    /// The 2×3 matrix `[[a, -b, tx], [b, a, ty]]` (OpenCV `warpAffine` convention).
    pub fn matrix(&self) -> [[f64; 3]; 2] {
        [[self.a, -self.b, self.tx], [self.b, self.a, self.ty]]
    }
}

/// Warps `img` with `m` (source → output pixel coordinates, pixel centres at integers as in
/// OpenCV) into a `width`×`height` image; bilinear sampling, samples outside the source are 0.
pub fn warp(img: &RgbImage, m: &Similarity, width: u32, height: u32) -> Result<RgbImage> {
    let inv = m
        .inverse()
        .ok_or_else(|| FaceError::InvalidInput(format!("degenerate alignment transform {m:?}")))?;
    let (iw, ih) = (img.width() as i64, img.height() as i64);
    let raw = img.as_raw();
    let mut out = RgbImage::new(width, height);
    let pixel = |x: i64, y: i64, c: usize| -> f64 {
        if x < 0 || y < 0 || x >= iw || y >= ih {
            0.0
        } else {
            raw[((y * iw + x) * 3) as usize + c] as f64
        }
    };
    for (ox, oy, px) in out.enumerate_pixels_mut() {
        let [sx, sy] = inv.apply([ox as f64, oy as f64]);
        if !(sx > -1.0 && sy > -1.0 && sx < iw as f64 && sy < ih as f64) {
            continue; // entirely outside: stays 0 (also catches NaN)
        }
        let (x0, y0) = (sx.floor(), sy.floor());
        let (fx, fy) = (sx - x0, sy - y0);
        let (x0, y0) = (x0 as i64, y0 as i64);
        for c in 0..3 {
            let top = pixel(x0, y0, c) * (1.0 - fx) + pixel(x0 + 1, y0, c) * fx;
            let bottom = pixel(x0, y0 + 1, c) * (1.0 - fx) + pixel(x0 + 1, y0 + 1, c) * fx;
            px[c] = (top * (1.0 - fy) + bottom * fy).round().clamp(0.0, 255.0) as u8;
        }
    }
    Ok(out)
}

/// The `size`×`size` crop with the 5 landmarks moved onto the (scaled) ArcFace template.
pub fn aligned_crop(img: &RgbImage, landmarks: &[[f32; 2]; 5], size: u32) -> Result<RgbImage> {
    aligned_crop_scaled(img, landmarks, size, 1.0)
}

/// Like [`aligned_crop`] with the template shrunk by `zoom` around the crop centre: `zoom < 1`
/// leaves more context around the face (FaceNet was trained on such looser crops).
pub fn aligned_crop_scaled(
    img: &RgbImage,
    landmarks: &[[f32; 2]; 5],
    size: u32,
    zoom: f32,
) -> Result<RgbImage> {
    if size == 0 || !(zoom > 0.0) {
        return Err(FaceError::InvalidInput(format!(
            "crop size {size}, zoom {zoom}"
        )));
    }
    let c = size as f32 / 2.0;
    let dst = arcface_template(size).map(|[x, y]| [c + (x - c) * zoom, c + (y - c) * zoom]);
    let m = Similarity::estimate(landmarks, &dst).ok_or_else(|| {
        FaceError::InvalidInput(format!(
            "landmarks {landmarks:?} do not define an alignment"
        ))
    })?;
    warp(img, &m, size, size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_a_known_similarity() {
        let truth = Similarity {
            a: 1.3 * 0.4f64.cos(),
            b: 1.3 * 0.4f64.sin(),
            tx: -7.0,
            ty: 12.5,
        };
        let dst: Vec<[f32; 2]> = ARCFACE_TEMPLATE_112
            .iter()
            .map(|p| truth.apply([p[0] as f64, p[1] as f64]).map(|v| v as f32))
            .collect();
        let est = Similarity::estimate(&ARCFACE_TEMPLATE_112, &dst).unwrap();
        assert!((est.scale() - 1.3).abs() < 1e-5, "{est:?}");
        assert!((est.rotation() - 0.4).abs() < 1e-5);
        assert!((est.tx + 7.0).abs() < 1e-3 && (est.ty - 12.5).abs() < 1e-3);
        let back = est.inverse().unwrap().apply(est.apply([3.0, 4.0]));
        assert!((back[0] - 3.0).abs() < 1e-9 && (back[1] - 4.0).abs() < 1e-9);
    }

    #[test]
    fn least_squares_beats_perturbed_parameters_on_noisy_points() {
        let src = ARCFACE_TEMPLATE_112;
        let noise = [
            [0.7, -0.3],
            [-0.5, 0.9],
            [0.2, 0.4],
            [-0.8, -0.6],
            [0.4, -0.2],
        ];
        let dst: Vec<[f32; 2]> = src
            .iter()
            .zip(noise)
            .map(|(p, n)| [p[0] * 2.0 + 5.0 + n[0], p[1] * 2.0 - 3.0 + n[1]])
            .collect();
        let est = Similarity::estimate(&src, &dst).unwrap();
        let cost = |m: &Similarity| -> f64 {
            src.iter()
                .zip(&dst)
                .map(|(s, d)| {
                    let p = m.apply([s[0] as f64, s[1] as f64]);
                    (p[0] - d[0] as f64).powi(2) + (p[1] - d[1] as f64).powi(2)
                })
                .sum()
        };
        let best = cost(&est);
        for (da, db, dx, dy) in [
            (1e-3, 0.0, 0.0, 0.0),
            (0.0, 1e-3, 0.0, 0.0),
            (0.0, 0.0, 0.05, 0.0),
            (0.0, 0.0, 0.0, -0.05),
        ] {
            let p = Similarity {
                a: est.a + da,
                b: est.b + db,
                tx: est.tx + dx,
                ty: est.ty + dy,
            };
            assert!(cost(&p) > best);
        }
    }

    #[test]
    fn degenerate_points_are_rejected() {
        assert!(Similarity::estimate(&[[1.0, 1.0]; 5], &ARCFACE_TEMPLATE_112).is_none());
        assert!(Similarity::estimate(&[[f32::NAN, 1.0]; 5], &ARCFACE_TEMPLATE_112).is_none());
    }

    #[test]
    fn identity_warp_copies_and_outside_is_black() {
        let mut img = RgbImage::new(8, 6);
        for (x, y, p) in img.enumerate_pixels_mut() {
            *p = image::Rgb([(x * 30) as u8, (y * 40) as u8, 7]);
        }
        let id = Similarity {
            a: 1.0,
            b: 0.0,
            tx: 0.0,
            ty: 0.0,
        };
        assert_eq!(warp(&img, &id, 8, 6).unwrap(), img);
        let shift = Similarity {
            a: 1.0,
            b: 0.0,
            tx: 2.0,
            ty: 0.0,
        };
        let w = warp(&img, &shift, 8, 6).unwrap();
        assert_eq!(w.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(w.get_pixel(5, 3), img.get_pixel(3, 3));
        // Half-pixel shift: bilinear average of neighbours.
        let half = Similarity {
            a: 1.0,
            b: 0.0,
            tx: -0.5,
            ty: 0.0,
        };
        let h = warp(&img, &half, 8, 6).unwrap();
        assert_eq!(h.get_pixel(1, 2).0[0], 45);
    }

    #[test]
    fn aligned_crop_puts_landmarks_on_template() {
        // Landmarks of a face at twice the template scale, offset: the crop must be the
        // template-sized image whose pixels come from exactly those places.
        let lm = ARCFACE_TEMPLATE_112.map(|[x, y]| [x * 2.0 + 10.0, y * 2.0 + 20.0]);
        let mut img = RgbImage::new(300, 300);
        for (x, y, p) in img.enumerate_pixels_mut() {
            *p = image::Rgb([(x % 256) as u8, (y % 256) as u8, 0]);
        }
        let crop = aligned_crop(&img, &lm, 112).unwrap();
        // Output (40, 60) samples source (2*40+10, 2*60+20) = (90, 140).
        assert_eq!(crop.get_pixel(40, 60).0, [90, 140, 0]);
        assert!(aligned_crop(&img, &lm, 0).is_err());
    }
}
