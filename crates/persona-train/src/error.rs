//! The crate's error type: its own failures (each naming the file it concerns) and, unchanged, those of the
//! crates it builds on — the diffusion models, identity files and face models — so that a caller can still
//! tell them apart (`Error::Faces`, `Error::Identity`, …) and every message keeps its file name.

use std::path::PathBuf;

use persona_identity::IdentityError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{}: {err}", path.display())]
    Io { path: PathBuf, err: std::io::Error },
    /// A file exists but its content is wrong (bad JSON, missing tensor, wrong shape…).
    #[error("{}: {msg}", path.display())]
    File { path: PathBuf, msg: String },
    #[error("{0}")]
    Msg(String),
    /// Loading or running the Stable Diffusion models.
    #[error(transparent)]
    Diffusion(#[from] persona_diffusion::Error),
    /// Reading, writing or checking an identity file.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// Finding, loading or running a face model, or reading a photo.
    #[error(transparent)]
    Faces(#[from] persona_faces::FaceError),
}

impl Error {
    pub fn file(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> Self {
        Error::File {
            path: path.into(),
            msg: msg.to_string(),
        }
    }
    pub fn io(path: impl Into<PathBuf>, err: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            err,
        }
    }
}

/// For the diffusion crate's callbacks ([`persona_diffusion::nn::AttentionControl`]), whose signature is fixed
/// there: the diffusion crate's own errors pass through unchanged, the others keep their message.
impl From<Error> for persona_diffusion::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Diffusion(e) => e,
            Error::Candle(e) => Self::Candle(e),
            Error::Io { path, err } => Self::Io { path, err },
            Error::File { path, msg } => Self::File { path, msg },
            other => Self::Msg(other.to_string()),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
