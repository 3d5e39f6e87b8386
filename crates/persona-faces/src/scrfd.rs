//! SCRFD (insightface `det_10g.onnx` and relatives): anchor-free detector with 5 keypoints.
//!
//! The image is letterboxed into the network input (default 640×640: scaled to fit, placed
//! top-left, black elsewhere), normalised `(x - 127.5) / 128` as RGB NCHW. For each stride
//! (8/16/32, or 8…128 for 5-level models) the graph returns per anchor a score, four distances
//! (left, top, right, bottom) and ten keypoint offsets, all in units of the stride. Anchors sit
//! at `(col * stride, row * stride)` of the stride's feature map, `A` anchors per location
//! (2 for det_10g), anchor-fastest. This follows insightface's `scrfd.py`: NMS IoU 0.4 with
//! inclusive-pixel areas, score threshold 0.5.
//!
//! Outputs are matched by shape rather than by position: channels 1/4/10 say score, box or
//! keypoints, and the row count (larger = finer) gives the stride, so graphs that list their
//! outputs in another order still decode.

use std::path::Path;

use image::RgbImage;

use crate::boxes::{nms, Overlap};
use crate::detect::{Detector, Face};
use crate::error::{FaceError, Result};
use crate::image_io::ImageF32;
use crate::onnx::OnnxModel;
use crate::resize::{resize, Filter};

/// Detection parameters; defaults are insightface's.
#[derive(Clone, Debug, PartialEq)]
pub struct ScrfdConfig {
    /// Network input `(width, height)` when the graph leaves it open.
    pub input_size: (usize, usize),
    pub score_threshold: f32,
    pub nms_threshold: f64,
}

impl Default for ScrfdConfig {
    fn default() -> Self {
        Self {
            input_size: (640, 640),
            score_threshold: 0.5,
            nms_threshold: 0.4,
        }
    }
}

/// An SCRFD detector.
#[derive(Debug)]
pub struct Scrfd {
    model: OnnxModel,
    pub config: ScrfdConfig,
}

/// One decoded anchor, in network-input pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RawDetection {
    pub bbox: [f64; 4],
    pub score: f32,
    pub kps: [[f64; 2]; 5],
}

/// Where the image landed in the network input: `input = image * scale`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Letterbox {
    pub scale: f64,
    pub width: usize,
    pub height: usize,
}

/// insightface's letterbox geometry for an image of `w`×`h` into `in_w`×`in_h`.
pub fn letterbox_geometry(w: usize, h: usize, in_w: usize, in_h: usize) -> Letterbox {
    let im_ratio = h as f64 / w as f64;
    let model_ratio = in_h as f64 / in_w as f64;
    let (nw, nh) = if im_ratio > model_ratio {
        (((in_h as f64) / im_ratio) as usize, in_h)
    } else {
        (in_w, ((in_w as f64) * im_ratio) as usize)
    };
    let (nw, nh) = (nw.clamp(1, in_w), nh.clamp(1, in_h));
    Letterbox {
        scale: nh as f64 / h as f64,
        width: nw,
        height: nh,
    }
}

/// Decodes raw SCRFD outputs (each `[N, C]` or `[1, N, C]`) for an `in_w`×`in_h` input into the
/// anchors scoring at least `threshold`, in input pixels, not yet suppressed.
pub fn decode(
    outputs: &[(Vec<usize>, Vec<f32>)],
    in_w: usize,
    in_h: usize,
    threshold: f32,
) -> std::result::Result<Vec<RawDetection>, String> {
    let mut groups: [Vec<(usize, &[f32])>; 3] = Default::default();
    for (shape, data) in outputs {
        let (rows, ch) = match shape.as_slice() {
            [n, c] => (*n, *c),
            [1, n, c] => (*n, *c),
            other => return Err(format!("unexpected output shape {other:?}")),
        };
        let g = match ch {
            1 => 0,
            4 => 1,
            10 => 2,
            c => return Err(format!("unexpected output with {c} channels")),
        };
        if data.len() != rows * ch {
            return Err(format!("output {shape:?} holds {} values", data.len()));
        }
        groups[g].push((rows, data.as_slice()));
    }
    let levels = groups[0].len();
    if groups.iter().any(|g| g.len() != levels) || !(levels == 3 || levels == 5) {
        return Err(format!(
            "need 3 or 5 levels of scores, boxes and keypoints; got {}/{}/{} outputs",
            groups[0].len(),
            groups[1].len(),
            groups[2].len()
        ));
    }
    for g in groups.iter_mut() {
        g.sort_by_key(|o| std::cmp::Reverse(o.0));
    }
    let mut dets = Vec::new();
    #[allow(clippy::needless_range_loop)] // `level` also gives the stride
    for level in 0..levels {
        let stride = 8usize << level;
        let (fw, fh) = (in_w / stride, in_h / stride);
        let (rows, scores) = groups[0][level];
        if fw * fh == 0
            || rows % (fw * fh) != 0
            || groups[1][level].0 != rows
            || groups[2][level].0 != rows
        {
            return Err(format!(
                "level stride {stride}: {rows} anchors for a {fw}x{fh} map"
            ));
        }
        let anchors = rows / (fw * fh);
        let (boxes, kps) = (groups[1][level].1, groups[2][level].1);
        let s = stride as f64;
        for (i, &score) in scores.iter().enumerate() {
            if !(score >= threshold) {
                continue;
            }
            let loc = i / anchors;
            let (cx, cy) = ((loc % fw) as f64 * s, (loc / fw) as f64 * s);
            let d = &boxes[i * 4..i * 4 + 4];
            let k = &kps[i * 10..i * 10 + 10];
            let mut p = [[0f64; 2]; 5];
            for (j, q) in p.iter_mut().enumerate() {
                *q = [cx + k[2 * j] as f64 * s, cy + k[2 * j + 1] as f64 * s];
            }
            dets.push(RawDetection {
                bbox: [
                    cx - d[0] as f64 * s,
                    cy - d[1] as f64 * s,
                    cx + d[2] as f64 * s,
                    cy + d[3] as f64 * s,
                ],
                score,
                kps: p,
            });
        }
    }
    Ok(dets)
}

impl Scrfd {
    /// Loads an SCRFD graph and checks it has a `[1, 3, H, W]` input.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let model = OnnxModel::load(path)?;
        let s = model.input_shape();
        if s.len() != 4 || s[1] != Some(3) || model.output_names().len() % 3 != 0 {
            return Err(FaceError::ModelLayout {
                path: model.path().to_path_buf(),
                expected: "an SCRFD detector with keypoints (input [1,3,H,W], 9 or 15 outputs)"
                    .into(),
                message: format!("input {s:?}, {} outputs", model.output_names().len()),
            });
        }
        Ok(Self {
            model,
            config: ScrfdConfig::default(),
        })
    }

    /// Network input `(width, height)`: the graph's if fixed, else the configured one.
    pub fn input_size(&self) -> (usize, usize) {
        let s = self.model.input_shape();
        match (s[3], s[2]) {
            (Some(w), Some(h)) => (w, h),
            _ => self.config.input_size,
        }
    }

    /// Runs the detector on a float image (0..=255 RGB).
    pub fn detect_f32(&self, img: &ImageF32) -> Result<Vec<Face>> {
        let (in_w, in_h) = self.input_size();
        let lb = letterbox_geometry(img.width, img.height, in_w, in_h);
        let resized = resize(img, lb.width, lb.height, Filter::Bilinear);
        // Padding is black (0) before normalisation, as in insightface.
        let mut input = vec![-127.5f32 / 128.0; 3 * in_w * in_h];
        for y in 0..lb.height {
            for x in 0..lb.width {
                for c in 0..3 {
                    // insightface resizes uint8 images, so the letterboxed pixels are rounded.
                    let v = resized.at(x, y, c).round();
                    input[(c * in_h + y) * in_w + x] = (v - 127.5) / 128.0;
                }
            }
        }
        let outs = self.model.run(&[1, 3, in_h, in_w], input)?;
        let raw = decode(&outs, in_w, in_h, self.config.score_threshold).map_err(|message| {
            FaceError::ModelLayout {
                path: self.model.path().to_path_buf(),
                expected: "SCRFD outputs".into(),
                message,
            }
        })?;
        let boxes: Vec<[f64; 4]> = raw.iter().map(|d| d.bbox).collect();
        let scores: Vec<f64> = raw.iter().map(|d| d.score as f64).collect();
        let keep = nms(&boxes, &scores, self.config.nms_threshold, Overlap::Union);
        let inv = 1.0 / lb.scale;
        Ok(keep
            .into_iter()
            .map(|i| {
                let d = &raw[i];
                Face {
                    bbox: d.bbox.map(|v| (v * inv) as f32),
                    score: d.score,
                    landmarks: d.kps.map(|[x, y]| [(x * inv) as f32, (y * inv) as f32]),
                }
            })
            .collect())
    }
}

impl Detector for Scrfd {
    fn name(&self) -> &'static str {
        "scrfd"
    }

    fn detect(&self, img: &RgbImage) -> Result<Vec<Face>> {
        self.detect_f32(&ImageF32::from_rgb(img))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letterbox_matches_insightface_arithmetic() {
        // Wide image: width fills, height = int(640 * 480 / 1280).
        let lb = letterbox_geometry(1280, 480, 640, 640);
        assert_eq!((lb.width, lb.height), (640, 240));
        assert!((lb.scale - 0.5).abs() < 1e-12);
        // Tall image: height fills, width = int(640 / (1000 / 300)).
        let lb = letterbox_geometry(300, 1000, 640, 640);
        assert_eq!((lb.width, lb.height), (192, 640));
        assert!((lb.scale - 0.64).abs() < 1e-12);
    }

    #[test]
    fn decode_rejects_wrong_output_sets() {
        let outs = vec![(vec![8, 1], vec![0.0; 8])];
        assert!(decode(&outs, 64, 64, 0.5).is_err());
        let bad = vec![(vec![8, 3], vec![0.0; 24])];
        assert!(decode(&bad, 64, 64, 0.5).is_err());
    }
}
