//! One error type for the crate, by kind. Messages carry the actual values (file, key, shapes)
//! so a user can act on them without a debugger; each kind has a stable code
//! ([`Error::code`]) that callers branch on instead of the message text. The Node binding
//! forwards both.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed: a shape that escaped the checks at the edges, or a bug.
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    /// A model config file or preset that cannot be used.
    #[error("{0}")]
    Config(String),
    /// Input data (pixels, labels, sizes, learning rates) that does not fit the model.
    #[error("{0}")]
    Input(String),
    /// A weights file that cannot be loaded; the message names the file.
    #[error("{0}")]
    Weights(String),
    /// A training-state file that cannot be restored; the message names the file.
    #[error("{0}")]
    State(String),
    /// A training step whose loss is NaN or infinite: nothing was applied.
    #[error("{0}")]
    NonFinite(String),
    /// A device that does not exist or cannot be used here.
    #[error("{0}")]
    Device(String),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// A failure inside the core that is not the caller's doing (a caught panic).
    #[error("{0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io { path: path.display().to_string(), source }
    }

    /// The stable code of the error's kind, as the Node binding reports it.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Candle(_) | Error::Internal(_) => "MOTIVNET_INTERNAL",
            Error::Config(_) => "MOTIVNET_CONFIG",
            Error::Input(_) => "MOTIVNET_INPUT",
            Error::Weights(_) => "MOTIVNET_WEIGHTS",
            Error::State(_) => "MOTIVNET_STATE",
            Error::NonFinite(_) => "MOTIVNET_NON_FINITE",
            Error::Device(_) => "MOTIVNET_DEVICE",
            Error::Io { .. } => "MOTIVNET_IO",
        }
    }
}

/// Runs `f`, turning a panic inside it into [`Error::Internal`] (or into the error `on_panic`
/// makes of its message), so no caller, a Node process least of all, is taken down by one.
pub fn catch_panic<T>(f: impl FnOnce() -> Result<T>, on_panic: impl FnOnce(String) -> Error) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|payload| Err(on_panic(panic_message(payload.as_ref()))))
}

/// The message a panic was raised with.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

macro_rules! input_err {
    ($($arg:tt)*) => { $crate::error::Error::Input(format!($($arg)*)) };
}
pub(crate) use input_err;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_with_its_message() {
        let err = catch_panic::<()>(|| panic!("index 3 out of range"), Error::Internal).unwrap_err();
        assert_eq!(err.code(), "MOTIVNET_INTERNAL");
        assert!(err.to_string().contains("index 3 out of range"), "{err}");
        let err =
            catch_panic::<()>(|| panic!("{}", 7), |m| Error::Weights(format!("f.pth: unreadable ({m})"))).unwrap_err();
        assert_eq!((err.code(), err.to_string().as_str()), ("MOTIVNET_WEIGHTS", "f.pth: unreadable (7)"));
        assert_eq!(catch_panic(|| Ok(5), Error::Internal).unwrap(), 5);
    }
}
