//! The crate's error type: every failure of a file names the file and what is wrong with it.

use std::path::{Path, PathBuf};

use super::meta::BaseModel;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{}: {err}", path.display())]
    Io { path: PathBuf, err: std::io::Error },
    /// The file exists but its content is wrong (not safetensors, missing tensor, bad metadata, refused pickle…).
    #[error("{}: {msg}", path.display())]
    File { path: PathBuf, msg: String },
    /// An in-memory identity or embedding that cannot be saved or used (wrong rank, token count…).
    #[error("{0}")]
    Invalid(String),
    /// The identity was trained for another base model; see [`super::Identity::check_base`].
    #[error("{}", mismatch_message(.identity, .trained_for, .loaded, *.width_differs))]
    BaseMismatch {
        identity: String,
        trained_for: Box<BaseModel>,
        loaded: Box<BaseModel>,
        width_differs: bool,
    },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl IdentityError {
    pub fn file(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> Self {
        IdentityError::File {
            path: path.into(),
            msg: msg.to_string(),
        }
    }

    pub(crate) fn io(path: &Path, err: std::io::Error) -> Self {
        IdentityError::Io {
            path: path.to_owned(),
            err,
        }
    }
}

/// The shared safetensors reader and writer ([`persona_diffusion::safetensors_file`]) fail with the diffusion
/// crate's error; its file and I/O errors keep their kind and file here.
impl From<persona_diffusion::Error> for IdentityError {
    fn from(e: persona_diffusion::Error) -> Self {
        match e {
            persona_diffusion::Error::Candle(e) => Self::Candle(e),
            persona_diffusion::Error::Io { path, err } => Self::Io { path, err },
            persona_diffusion::Error::File { path, msg } => Self::File { path, msg },
            persona_diffusion::Error::Msg(msg) => Self::Invalid(msg),
        }
    }
}

/// For the diffusion crate's callbacks ([`persona_diffusion::nn::AttentionControl`], whose signature is fixed
/// there): file and I/O errors keep their kind and file, the others their message.
impl From<IdentityError> for persona_diffusion::Error {
    fn from(e: IdentityError) -> Self {
        match e {
            IdentityError::Candle(e) => Self::Candle(e),
            IdentityError::Io { path, err } => Self::Io { path, err },
            IdentityError::File { path, msg } => Self::File { path, msg },
            other => Self::Msg(other.to_string()),
        }
    }
}

/// Says both models in full, then what can be done: a different width can never work, a different text encoder
/// of the same width may (a fine-tune of the same family), so only that case offers `--force`.
fn mismatch_message(
    identity: &str,
    trained_for: &BaseModel,
    loaded: &BaseModel,
    width_differs: bool,
) -> String {
    let remedy = if width_differs {
        "the embedding widths differ, so it cannot be used with this model"
    } else {
        "the text encoders differ; pass --force to use it anyway if you know they are compatible"
    };
    format!(
        "identity {identity} was trained for base model {}; the model you loaded is {}: {remedy}",
        trained_for.describe(),
        loaded.describe()
    )
}

pub type Result<T> = std::result::Result<T, IdentityError>;
