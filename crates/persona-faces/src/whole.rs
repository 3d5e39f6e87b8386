//! `--detector none`: the image itself is the face crop.
//!
//! For subjects no face detector finds — drawn portraits, dogs, objects — [`WholeImage`] "detects"
//! exactly one face: the image's largest centred square (the whole image when it is square; a
//! non-square image loses the excess of its longer side, split evenly, as training's centre crop
//! does), score 1, with the 5 landmarks on the ArcFace template scaled to that square. Everything
//! downstream works unchanged:
//!
//! * the recogniser's crop: in whole-image mode [`ModelSearch`](crate::ModelSearch) gives the
//!   recogniser [`WholeImage::CROP`], the face box with no margin, which is exactly the plain
//!   resize of that square to the recogniser's input size (area filter when shrinking, bilinear
//!   with half-pixel centres when enlarging), for any recogniser kind;
//! * the ArcFace-aligned crop of the face (a similarity from the scaled template to the template)
//!   is a pure scale of the square too, but sampled with the warp's OpenCV convention: output
//!   pixel `o` reads the square at `o·side/size`, not at a resize's `(o + ½)·side/size − ½`. So it
//!   is shifted by up to half a source pixel, point-sampled (aliased) when shrinking, and when
//!   enlarging its last row and column blend with the black outside the image — which is why the
//!   box crop is used instead ([`crate::FaceAnalyzer::aligned_crop`] does the same);
//! * training's face-centred crop of that box is the centre square.

use image::RgbImage;

use crate::align::arcface_template;
use crate::detect::{Detector, Face};
use crate::error::{FaceError, Result};
use crate::recognize::{box_crop, CropStyle};

/// The detector of whole-image mode: one face, the image's centred square.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WholeImage;

impl WholeImage {
    /// What [`Detector::name`] returns, and reports show.
    pub const NAME: &'static str = "none (whole image)";

    /// The crop style recognisers get in whole-image mode: the face box, no margin, resized.
    pub const CROP: CropStyle = CropStyle::BoxMargin { margin: 0.0 };

    /// The one face of a `width`×`height` image; `None` for an empty image.
    pub fn face(width: u32, height: u32) -> Option<Face> {
        let side = width.min(height);
        if side == 0 {
            return None;
        }
        let (x0, y0) = ((width - side) / 2, (height - side) / 2);
        let (x0, y0, s) = (x0 as f32, y0 as f32, side as f32);
        Some(Face {
            bbox: [x0, y0, x0 + s, y0 + s],
            score: 1.0,
            landmarks: arcface_template(side).map(|[x, y]| [x0 + x, y0 + y]),
        })
    }

    /// The image's centred square resized to `size`×`size`: what the recogniser sees.
    pub fn crop(img: &RgbImage, size: u32) -> Result<RgbImage> {
        let face = Self::face(img.width(), img.height())
            .ok_or_else(|| FaceError::InvalidInput("empty image".into()))?;
        box_crop(img, face.bbox, 0.0, size)
    }
}

impl Detector for WholeImage {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn detect(&self, img: &RgbImage) -> Result<Vec<Face>> {
        Ok(Self::face(img.width(), img.height()).into_iter().collect())
    }

    fn whole_image(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::align::aligned_crop;
    use crate::image_io::ImageF32;
    use crate::recognize::{make_crop, Layout, Preprocess};
    use crate::resize::{resize, Filter};

    /// A picture with structure in every channel.
    fn picture(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 255 / w.max(1)) as u8,
                (y * 255 / h.max(1)) as u8,
                ((x * 7 + y * 13) % 256) as u8,
            ])
        })
    }

    /// The plain resize of the centred square, computed directly.
    fn plain_resize(img: &RgbImage, size: u32) -> RgbImage {
        let side = img.width().min(img.height());
        let (x0, y0) = ((img.width() - side) / 2, (img.height() - side) / 2);
        let square = image::imageops::crop_imm(img, x0, y0, side, side).to_image();
        let n = size as usize;
        resize(&ImageF32::from_rgb(&square), n, n, Filter::Area).to_rgb()
    }

    fn recogniser_crop(img: &RgbImage, face: &Face, size: u32) -> RgbImage {
        let pre = Preprocess {
            size,
            layout: Layout::Nchw,
            mean: 127.5,
            std: 127.5,
            crop: WholeImage::CROP,
        };
        make_crop(img, face, &pre).unwrap()
    }

    #[test]
    fn one_face_the_centred_square_with_template_landmarks() {
        let det = WholeImage;
        assert_eq!(det.name(), "none (whole image)");
        assert!(det.whole_image());
        let faces = det.detect(&picture(64, 64)).unwrap();
        assert_eq!(faces.len(), 1);
        assert_eq!(faces[0].bbox, [0.0, 0.0, 64.0, 64.0]);
        assert_eq!(faces[0].score, 1.0);
        assert_eq!(faces[0].landmarks, arcface_template(64));
        // Wide image: the centred 48-px square starting at x = 16.
        let f = det.detect(&picture(80, 48)).unwrap()[0];
        assert_eq!(f.bbox, [16.0, 0.0, 64.0, 48.0]);
        assert_eq!(
            f.landmarks[2],
            [16.0 + 56.0252 * 48.0 / 112.0, 71.7366 * 48.0 / 112.0]
        );
        // Tall image, odd excess: the square starts at floor(excess / 2).
        assert_eq!(
            det.detect(&picture(30, 41)).unwrap()[0].bbox,
            [0.0, 5.0, 30.0, 35.0]
        );
        assert!(det.detect(&RgbImage::new(0, 5)).unwrap().is_empty());
        assert!(WholeImage::crop(&RgbImage::new(3, 0), 112).is_err());
    }

    /// The recogniser's crop of the whole-image face is the plain resize of the image (of its centred
    /// square when it is not square), enlarging and shrinking, for ArcFace's 112 and FaceNet's 160.
    #[test]
    fn recogniser_crop_is_the_plain_resize() {
        for (w, h) in [(64, 64), (80, 48), (48, 80), (300, 200), (112, 112)] {
            let img = picture(w, h);
            let face = WholeImage::face(w, h).unwrap();
            for size in [112, 160] {
                let want = plain_resize(&img, size);
                assert_eq!(
                    recogniser_crop(&img, &face, size),
                    want,
                    "{w}x{h} -> {size}"
                );
                assert_eq!(WholeImage::crop(&img, size).unwrap(), want);
            }
        }
        // Independent check of "plain resize" when enlarging: `image`'s bilinear (triangle) filter.
        let img = picture(64, 64);
        let theirs = image::imageops::resize(&img, 112, 112, image::imageops::FilterType::Triangle);
        let ours = WholeImage::crop(&img, 112).unwrap();
        let worst = ours
            .as_raw()
            .iter()
            .zip(theirs.as_raw())
            .map(|(a, b)| (*a as i32 - *b as i32).abs())
            .max()
            .unwrap();
        assert!(worst <= 1, "max difference {worst}");
        // Non-square: exactly the square's resize, so the strips outside it play no part.
        let mut img = picture(80, 48);
        for y in 0..48 {
            for x in (0..16).chain(64..80) {
                img.put_pixel(x, y, image::Rgb([255, 0, 255]));
            }
        }
        assert_eq!(
            WholeImage::crop(&img, 112).unwrap(),
            WholeImage::crop(&picture(80, 48), 112).unwrap()
        );
    }

    /// What the ArcFace-aligned crop (template → template) of the whole-image face is, precisely: the
    /// square scaled by `size/side` with output pixel `o` sampling the square at `o·side/size` (OpenCV's
    /// warp convention), bilinear; so not the plain resize, which samples `(o + ½)·side/size − ½`.
    #[test]
    fn aligned_crop_is_a_pure_scale_in_the_warp_convention() {
        // Channels linear in x and y, so bilinear sampling is exact inside the image.
        let (w, h, size) = (80u32, 48u32, 112u32);
        let img = RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 3) as u8, (y * 5) as u8, 9]));
        let face = WholeImage::face(w, h).unwrap();
        let crop = aligned_crop(&img, &face.landmarks, size).unwrap();
        let (x0, side) = (16.0f64, 48.0f64);
        let k = side / size as f64;
        for o in 0..size - 2 {
            let p = crop.get_pixel(o, o).0;
            let (sx, sy) = (x0 + o as f64 * k, o as f64 * k);
            assert!((p[0] as f64 - 3.0 * sx).abs() <= 0.5 + 1e-3, "{o}: {p:?}");
            assert!((p[1] as f64 - 5.0 * sy).abs() <= 0.5 + 1e-3, "{o}: {p:?}");
            assert_eq!(p[2], 9);
        }
        // Enlarging, the last row reads past the square's bottom edge (here the image's) and
        // blends with black; a resize would clamp to the edge instead.
        let o = size - 1;
        let frac = o as f64 * k - 47.0;
        assert!(frac > 0.0);
        assert_eq!(
            crop.get_pixel(40, o).0[2] as f64,
            (9.0 * (1.0 - frac)).round()
        );
        assert_eq!(plain_resize(&img, size).get_pixel(40, o).0[2], 9);
        assert_ne!(crop, plain_resize(&img, size));
    }
}
