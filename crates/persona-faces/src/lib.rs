//! Faces: detection (MTCNN, SCRFD, or the whole image), 5-point alignment and recognition (ArcFace, FaceNet).
//!
//! Everything runs on the CPU through `tract-onnx` with the original ONNX graphs, so the same
//! model files users have for insightface / facenet work unchanged. The pieces:
//!
//! * [`image_io`] loads any photo (grayscale, RGBA, 16-bit, EXIF-rotated) as 8-bit RGB;
//! * [`onnx::OnnxModel`] parses a graph once and keeps one optimised tract plan per input shape;
//! * [`Mtcnn`] and [`Scrfd`] find faces with 5 landmarks ([`Face`]); [`WholeImage`]
//!   (`--detector none`) takes the image itself as the face, for drawn faces and other subjects;
//! * [`align`] warps a face onto the ArcFace 5-point template;
//! * [`Recognizer`] turns a crop into an L2-normalised embedding;
//! * [`models`] finds model files; [`FaceAnalyzer`] bundles a detector and a recogniser and is
//!   the API training and evaluation use (`largest_face`, `aligned_crop`, `embed`).
//!
//! See `docs/faces.md` for the decisions behind each part.

// `!(x > 0.0)` is used on purpose: it rejects NaN as well, which `x <= 0.0` would let through.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

pub mod align;
pub mod analyzer;
mod boxes;
pub mod detect;
pub mod error;
pub mod image_io;
pub mod models;
pub mod mtcnn;
pub mod onnx;
pub mod recognize;
pub mod resize;
pub mod scrfd;
pub mod whole;

pub use align::{aligned_crop, arcface_template, Similarity, ARCFACE_TEMPLATE_112};
pub use analyzer::FaceAnalyzer;
pub use detect::{largest, Detector, Face};
pub use error::{FaceError, Result};
pub use image_io::{load_rgb, to_rgb};
pub use models::{DetectorChoice, ModelSearch, RecognizerChoice, NO_DETECTOR};
pub use mtcnn::{Mtcnn, MtcnnConfig};
pub use recognize::{cosine, CropStyle, OnnxRecognizer, Recognizer, RecognizerKind};
pub use scrfd::{Scrfd, ScrfdConfig};
pub use whole::WholeImage;
