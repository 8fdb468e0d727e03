//! The one place core errors become JS errors. Each carries its kind's stable code in front of
//! the core's message, `[MOTIVNET_WEIGHTS] file.pth: ...`: napi's task results can carry only
//! its own statuses as a JS `code`, so the TypeScript side (src/errors.ts) reads the code from
//! there into a `MotivNetError` with `code` and a JavaScript stack.

use napi::{Error, Status};

/// A caller's mistake in the arguments themselves.
pub const INPUT: &str = "MOTIVNET_INPUT";
/// A call on a model after `dispose()`.
pub const DISPOSED: &str = "MOTIVNET_DISPOSED";
/// A failure inside the core that is not the caller's doing.
pub const INTERNAL: &str = "MOTIVNET_INTERNAL";

pub fn coded(code: &str, msg: impl std::fmt::Display) -> Error {
    Error::new(Status::GenericFailure, format!("[{code}] {msg}"))
}

pub fn to_js(err: motivnet::Error) -> Error {
    coded(err.code(), err)
}

pub fn invalid(msg: impl Into<String>) -> Error {
    coded(INPUT, msg.into())
}

pub trait IntoJs<T> {
    fn js(self) -> napi::Result<T>;
}

impl<T> IntoJs<T> for motivnet::Result<T> {
    fn js(self) -> napi::Result<T> {
        self.map_err(to_js)
    }
}

/// Runs a native call's work, turning a panic inside it into a `MOTIVNET_INTERNAL` error, so
/// the host process lives (a panic would otherwise cross napi's callback and abort Node).
pub fn no_panic<T>(work: impl FnOnce() -> napi::Result<T>) -> napi::Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).unwrap_or_else(|payload| {
        Err(coded(INTERNAL, format!("the native core failed: {}", motivnet::error::panic_message(payload.as_ref()))))
    })
}
