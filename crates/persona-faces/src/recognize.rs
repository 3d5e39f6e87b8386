//! Face recognition: crop → L2-normalised embedding, behind one [`Recognizer`] interface.
//!
//! A recogniser is a model file plus its preprocessing: input size, tensor layout, pixel
//! normalisation and crop style. Two kinds are known and recognised from the graph's input
//! shape (a flag can override):
//!
//! * **ArcFace** (insightface `w600k_r50.onnx`, `glintr100.onnx`): `[N, 3, 112, 112]`, RGB,
//!   `(x - 127.5) / 127.5`, crop aligned to the ArcFace template. Graphs converted from MXNet
//!   normalise inside the graph (their first nodes are `Sub`/`Mul`); insightface then feeds raw
//!   pixels, and so does this code.
//! * **FaceNet** (InceptionResNet-v1, VGGFace2): `[1, 160, 160, 3]`, RGB, `(x - 127.5) / 128`.
//!   It was trained on loose crops (detector box plus margin); see [`CropStyle`].

use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::align::aligned_crop_scaled;
use crate::detect::Face;
use crate::error::{FaceError, Result};
use crate::image_io::ImageF32;
use crate::onnx::OnnxModel;
use crate::resize::{resize, Filter};

/// The known recogniser families.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecognizerKind {
    ArcFace,
    FaceNet,
}

impl std::str::FromStr for RecognizerKind {
    type Err = FaceError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "arcface" | "insightface" => Ok(Self::ArcFace),
            "facenet" => Ok(Self::FaceNet),
            other => Err(FaceError::InvalidInput(format!(
                "unknown recogniser kind {other:?} (expected arcface or facenet)"
            ))),
        }
    }
}

/// How the face is cut out of the photo before embedding.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum CropStyle {
    /// Similarity-aligned onto the ArcFace template scaled to the input size, shrunk by `zoom`
    /// around the centre (1.0 = the ArcFace crop; smaller = more context).
    Aligned { zoom: f32 },
    /// A square around the detector box, enlarged by `margin` of the box side on every side,
    /// zero-padded at the border and resized (the facenet-pytorch style; no rotation).
    BoxMargin { margin: f32 },
}

/// Tensor layout of the model input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layout {
    Nchw,
    Nhwc,
}

/// Everything needed to turn a crop into the model's input tensor.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Preprocess {
    pub size: u32,
    pub layout: Layout,
    pub mean: f32,
    pub std: f32,
    pub crop: CropStyle,
}

/// Turns faces into embeddings.
pub trait Recognizer: Send + Sync {
    /// The model family.
    fn kind(&self) -> RecognizerKind;
    /// Input size, layout, normalisation and crop style.
    fn preprocess(&self) -> &Preprocess;
    /// Embedding of an already cropped face (resized to the input size if needed), L2-normalised.
    fn embed_crop(&self, crop: &RgbImage) -> Result<Vec<f32>>;
    /// The crop this recogniser wants for `face` in `img`.
    fn crop(&self, img: &RgbImage, face: &Face) -> Result<RgbImage> {
        make_crop(img, face, self.preprocess())
    }
    /// Embedding of `face` in `img`, L2-normalised.
    fn embed(&self, img: &RgbImage, face: &Face) -> Result<Vec<f32>> {
        self.embed_crop(&self.crop(img, face)?)
    }
}

/// Cuts a face out of `img` as `pre` asks.
pub fn make_crop(img: &RgbImage, face: &Face, pre: &Preprocess) -> Result<RgbImage> {
    match pre.crop {
        CropStyle::Aligned { zoom } => aligned_crop_scaled(img, &face.landmarks, pre.size, zoom),
        CropStyle::BoxMargin { margin } => box_crop(img, face.bbox, margin, pre.size),
    }
}

/// The square around `bbox` (side: the box's larger side enlarged by `margin` of it on every side),
/// zero-padded at the border and resized to `size`×`size` with [`Filter::Area`]. With no margin and a
/// square box on whole pixels this is the plain resize of that square.
pub fn box_crop(img: &RgbImage, bbox: [f32; 4], margin: f32, size: u32) -> Result<RgbImage> {
    let [x1, y1, x2, y2] = bbox;
    let side = (x2 - x1).max(y2 - y1) * (1.0 + 2.0 * margin);
    if !(side >= 1.0) || !side.is_finite() {
        return Err(FaceError::InvalidInput(format!(
            "face box {bbox:?} is empty"
        )));
    }
    if size == 0 {
        return Err(FaceError::InvalidInput("crop size 0".into()));
    }
    let (cx, cy) = ((x1 + x2) / 2.0, (y1 + y2) / 2.0);
    let s = side.round() as usize;
    let x0 = (cx - side / 2.0).round() as i64;
    let y0 = (cy - side / 2.0).round() as i64;
    let crop = ImageF32::from_rgb(img).crop_padded(x0, y0, s, s);
    let n = size as usize;
    Ok(resize(&crop, n, n, Filter::Area).to_rgb())
}

/// Cosine similarity; 0 when either vector is zero or the lengths differ.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return 0.0;
    }
    let (mut d, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        d += (*x as f64) * (*y as f64);
        na += (*x as f64).powi(2);
        nb += (*y as f64).powi(2);
    }
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    (d / (na.sqrt() * nb.sqrt())) as f32
}

/// An ONNX recogniser (ArcFace or FaceNet style).
#[derive(Debug)]
pub struct OnnxRecognizer {
    model: OnnxModel,
    kind: RecognizerKind,
    pre: Preprocess,
}

impl OnnxRecognizer {
    /// Default FaceNet crop: the ArcFace alignment scaled to 160 px. On the test photos it gave
    /// the best same/different separation of the crops tried (looser aligned crops and
    /// box-plus-margin crops; `examples/facenet_crop_study.rs`, numbers in docs/faces.md).
    pub const FACENET_CROP: CropStyle = CropStyle::Aligned { zoom: 1.0 };

    /// Loads `path`; the kind comes from the input shape unless `kind` is given.
    pub fn load(path: impl AsRef<std::path::Path>, kind: Option<RecognizerKind>) -> Result<Self> {
        let model = OnnxModel::load(path)?;
        let shape = model.input_shape().to_vec();
        let layout_err = |message: String| FaceError::ModelLayout {
            path: model.path().to_path_buf(),
            expected: "a face recogniser (ArcFace [N,3,112,112] or FaceNet [1,160,160,3])".into(),
            message,
        };
        if shape.len() != 4 {
            return Err(layout_err(format!(
                "input has rank {} ({shape:?})",
                shape.len()
            )));
        }
        let graph_guess = match (shape[1], shape[2], shape[3]) {
            (Some(3), Some(h), Some(w)) if h == w => {
                Some((RecognizerKind::ArcFace, Layout::Nchw, h))
            }
            (Some(h), Some(w), Some(3)) if h == w => {
                Some((RecognizerKind::FaceNet, Layout::Nhwc, h))
            }
            _ => None,
        };
        let (kind, layout, size) = match (kind, graph_guess) {
            (None, Some(g)) => g,
            (Some(k), Some((_, layout, size))) => (k, layout, size),
            (Some(RecognizerKind::ArcFace), None) => (RecognizerKind::ArcFace, Layout::Nchw, 112),
            (Some(RecognizerKind::FaceNet), None) => (RecognizerKind::FaceNet, Layout::Nhwc, 160),
            (None, None) => {
                return Err(layout_err(format!(
                    "cannot tell the kind from input {shape:?}; pass the kind explicitly"
                )))
            }
        };
        let pre = match kind {
            RecognizerKind::ArcFace => {
                let names = model.leading_nodes();
                let has = |p: &[&str]| names.iter().any(|n| p.iter().any(|p| n.starts_with(p)));
                let in_graph = has(&["Sub", "_minus"]) && has(&["Mul", "_mul"]);
                let (mean, std) = if in_graph { (0.0, 1.0) } else { (127.5, 127.5) };
                Preprocess {
                    size: size as u32,
                    layout,
                    mean,
                    std,
                    crop: CropStyle::Aligned { zoom: 1.0 },
                }
            }
            RecognizerKind::FaceNet => Preprocess {
                size: size as u32,
                layout,
                mean: 127.5,
                std: 128.0,
                crop: Self::FACENET_CROP,
            },
        };
        Ok(Self { model, kind, pre })
    }

    /// Replaces the crop style (e.g. `BoxMargin` for FaceNet as facenet-pytorch crops).
    pub fn with_crop(mut self, crop: CropStyle) -> Self {
        self.pre.crop = crop;
        self
    }

    /// The model file.
    pub fn path(&self) -> &std::path::Path {
        self.model.path()
    }

    fn input_tensor(&self, crop: &RgbImage) -> Vec<f32> {
        let n = self.pre.size as usize;
        let img = if crop.width() as usize == n && crop.height() as usize == n {
            ImageF32::from_rgb(crop)
        } else {
            resize(&ImageF32::from_rgb(crop), n, n, Filter::Area)
        };
        let mut data = vec![0f32; n * n * 3];
        let (mean, inv) = (self.pre.mean, 1.0 / self.pre.std);
        for y in 0..n {
            for x in 0..n {
                for c in 0..3 {
                    let v = (img.at(x, y, c) - mean) * inv;
                    let i = match self.pre.layout {
                        Layout::Nhwc => (y * n + x) * 3 + c,
                        Layout::Nchw => (c * n + y) * n + x,
                    };
                    data[i] = v;
                }
            }
        }
        data
    }
}

impl Recognizer for OnnxRecognizer {
    fn kind(&self) -> RecognizerKind {
        self.kind
    }

    fn preprocess(&self) -> &Preprocess {
        &self.pre
    }

    fn embed_crop(&self, crop: &RgbImage) -> Result<Vec<f32>> {
        if crop.width() == 0 || crop.height() == 0 {
            return Err(FaceError::InvalidInput("empty face crop".into()));
        }
        let n = self.pre.size as usize;
        let shape = match self.pre.layout {
            Layout::Nchw => [1, 3, n, n],
            Layout::Nhwc => [1, n, n, 3],
        };
        let outs = self.model.run(&shape, self.input_tensor(crop))?;
        let (_, mut e) = outs.into_iter().next().ok_or_else(|| FaceError::ModelRun {
            path: self.model.path().to_path_buf(),
            message: "graph produced no output".into(),
        })?;
        let norm = e.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        if !(norm > 0.0) || !norm.is_finite() {
            return Err(FaceError::ModelRun {
                path: self.model.path().to_path_buf(),
                message: format!("embedding has norm {norm}"),
            });
        }
        e.iter_mut().for_each(|v| *v = (*v as f64 / norm) as f32);
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_of_parallel_orthogonal_and_mismatched() {
        assert!((cosine(&[1.0, 2.0], &[2.0, 4.0]) - 1.0).abs() < 1e-6);
        assert_eq!(cosine(&[1.0, 0.0], &[0.0, 3.0]), 0.0);
        assert_eq!(cosine(&[1.0], &[1.0, 2.0]), 0.0);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 2.0]), 0.0);
    }

    #[test]
    fn kind_parses_case_insensitively() {
        assert_eq!(
            "ArcFace".parse::<RecognizerKind>().unwrap(),
            RecognizerKind::ArcFace
        );
        assert_eq!(
            "facenet".parse::<RecognizerKind>().unwrap(),
            RecognizerKind::FaceNet
        );
        assert!("vgg".parse::<RecognizerKind>().is_err());
    }
}
