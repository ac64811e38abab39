//! The library's error type: every variant names the file, field or value at fault and says
//! what to do about it.

use std::path::PathBuf;

/// Errors raised by robustlens.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor computation failed.
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),

    /// Reading or writing a file failed. (The I/O error is part of the message, not a
    /// separate `source`, so that error chains do not print it twice.)
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },

    /// A weights file could not be used.
    #[error("weights {}: {msg}", path.display())]
    Weights { path: PathBuf, msg: String },

    /// An image could not be read or is unusable.
    #[error("image {}: {msg}", path.display())]
    Image { path: PathBuf, msg: String },

    /// A command-line or config value is invalid.
    #[error("{0}")]
    InvalidArgument(String),

    /// A device the build does not support, or that cannot be opened.
    #[error("{0}")]
    Device(String),

    /// Downloading from the Hugging Face hub failed.
    #[error("{0}")]
    Hub(String),

    /// A JSON file could not be parsed or written.
    #[error("{}: {msg}", path.display())]
    Json { path: PathBuf, msg: String },
}

/// Shorthand for `Result<T, robustlens::Error>`.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            error: source,
        }
    }
    pub(crate) fn weights(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Weights {
            path: path.into(),
            msg: msg.into(),
        }
    }
    pub(crate) fn arg(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }
}
