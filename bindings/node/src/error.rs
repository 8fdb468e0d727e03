//! The one place core errors become JS errors: the core's message, verbatim.

use napi::{Error, Status};

pub fn to_js(err: motivnet::Error) -> Error {
    let status = match err {
        motivnet::Error::Candle(_) => Status::GenericFailure,
        _ => Status::InvalidArg,
    };
    Error::new(status, err.to_string())
}

pub fn invalid(msg: impl Into<String>) -> Error {
    Error::new(Status::InvalidArg, msg.into())
}

pub trait IntoJs<T> {
    fn js(self) -> napi::Result<T>;
}

impl<T> IntoJs<T> for motivnet::Result<T> {
    fn js(self) -> napi::Result<T> {
        self.map_err(to_js)
    }
}
