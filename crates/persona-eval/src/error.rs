//! The crate's error type. Evaluation runs the other crates' work (loading models, training identities,
//! detecting faces) and adds little of its own, so most variants carry their errors unchanged and a caller can
//! still tell them apart; `Context` says which step of an evaluation failed (which manifest, which unit record),
//! as the CLI's messages need.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Msg(String),
    /// A file exists but its content is wrong (bad JSON or TOML, an unusable image…).
    #[error("{}: {msg}", path.display())]
    File { path: PathBuf, msg: String },
    /// An operating-system error; it is always wrapped in a `Context` naming the file.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Reading or writing JSON (results, unit records) or TOML (manifests); wrapped in a `Context` naming
    /// the file.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Toml(#[from] toml::de::Error),
    /// Encoding or decoding an image in memory (the JPEG round trip of the robustness check).
    #[error(transparent)]
    Image(#[from] image::ImageError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// Loading or running the Stable Diffusion models.
    #[error(transparent)]
    Diffusion(#[from] persona_diffusion::Error),
    /// Training an identity (compare's training units), or reading an identity file.
    #[error(transparent)]
    Train(#[from] persona_train::Error),
    #[error(transparent)]
    Identity(#[from] persona_identity::IdentityError),
    /// Finding, loading or running a face model, or reading a photo.
    #[error(transparent)]
    Faces(#[from] persona_faces::FaceError),
    /// What was being done when `inner` failed. `inner` is deliberately not the error's `source`: the message
    /// already holds it, and a CLI printing the chain would repeat it.
    #[error("{what}: {inner}")]
    Context { what: String, inner: Box<Error> },
}

impl Error {
    pub fn file(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> Self {
        Error::File {
            path: path.into(),
            msg: msg.to_string(),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Adds what was being done to an error, or turns a missing value into one.
pub trait Context<T> {
    fn context(self, what: impl std::fmt::Display) -> Result<T>;
    fn with_context<S: std::fmt::Display>(self, what: impl FnOnce() -> S) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl std::fmt::Display) -> Result<T> {
        self.with_context(|| what)
    }
    fn with_context<S: std::fmt::Display>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| Error::Context {
            what: what().to_string(),
            inner: Box::new(e.into()),
        })
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: impl std::fmt::Display) -> Result<T> {
        self.ok_or_else(|| Error::Msg(what.to_string()))
    }
    fn with_context<S: std::fmt::Display>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.ok_or_else(|| Error::Msg(what().to_string()))
    }
}

/// Returns early with an [`Error::Msg`] built like `format!`.
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::error::Error::Msg(format!($($arg)*)))
    };
}
pub(crate) use bail;
