//! One error type for the crate: every failure names the file (and tensor) it concerns.

use std::path::PathBuf;

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

pub type Result<T> = std::result::Result<T, Error>;
