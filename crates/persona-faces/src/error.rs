//! Errors of the faces crate.
//!
//! Every variant names the file (image or model) it is about and says what is wrong, because the
//! callers (training crops, evaluation, the CLI) process many files and a bare "invalid shape" is
//! useless in a batch of thousands. The underlying error is part of the message (not a
//! `source()`), so that printing the error chain does not repeat it.

use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T, E = FaceError> = std::result::Result<T, E>;

/// What can go wrong while loading images and models or running them.
#[derive(Debug, thiserror::Error)]
pub enum FaceError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    /// The file exists but is not a decodable image.
    #[error("cannot decode image {path}: {err}")]
    Decode {
        path: PathBuf,
        err: image::ImageError,
    },
    /// The header declares more pixels than any photo has (a "decompression bomb"): refused before decoding.
    #[error("image {path} is {width}x{height}, over the limit of {max_side} pixels a side and {max_mp} megapixels; refused before decoding", max_side = crate::image_io::MAX_IMAGE_SIDE, max_mp = crate::image_io::MAX_IMAGE_PIXELS / 1_000_000)]
    TooLarge {
        path: PathBuf,
        width: u32,
        height: u32,
    },
    /// A JPEG cut short before its end marker.
    #[error("image {path} is truncated (the JPEG ends before its end-of-image marker: an interrupted download or copy?)")]
    Truncated { path: PathBuf },
    /// The image has no pixels.
    #[error("image {path} is empty ({width}x{height})")]
    EmptyImage {
        path: PathBuf,
        width: u32,
        height: u32,
    },
    /// An ONNX file could not be parsed or optimised by tract.
    #[error("cannot load ONNX model {path}: {message}")]
    ModelLoad { path: PathBuf, message: String },
    /// The ONNX graph does not have the inputs/outputs this code expects.
    #[error("ONNX model {path} does not look like {expected}: {message}")]
    ModelLayout {
        path: PathBuf,
        expected: String,
        message: String,
    },
    /// Running the graph failed.
    #[error("running ONNX model {path} failed: {message}")]
    ModelRun { path: PathBuf, message: String },
    /// No model file of the needed kind was found in any search location.
    #[error("{what} not found. {hint}")]
    ModelNotFound { what: String, hint: String },
    /// An argument is out of range (crop size 0, empty landmark set, ...).
    #[error("invalid input: {0}")]
    InvalidInput(String),
}
