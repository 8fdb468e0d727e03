//! One error type for the crate. Messages carry the actual values (file, key, shapes) so a user
//! can act on them without a debugger; the Node binding forwards them verbatim.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed (a bug, or a shape that escaped the checks at the edges).
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    /// A model config file or preset that cannot be used.
    #[error("{0}")]
    Config(String),
    /// Input data (pixels, labels, sizes, learning rates) that does not fit the model.
    #[error("{0}")]
    Input(String),
    /// A weights or training-state file that cannot be loaded.
    #[error("{0}")]
    Weights(String),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io { path: path.display().to_string(), source }
    }
}

macro_rules! input_err {
    ($($arg:tt)*) => { $crate::error::Error::Input(format!($($arg)*)) };
}
pub(crate) use input_err;
