//! Face detection before classification: MediaPipe's short-range BlazeFace, on candle like the
//! rest of the core, with its weights inside the crate (`assets/`, Apache-2.0, converted by
//! scripts/detector/convert_blazeface.py). [`blazeface`] is the network, exact to TFLite's;
//! [`input`] makes a photograph its input and [`decode`] turns its outputs into faces, both as
//! MediaPipe's graph does.

pub mod blazeface;
pub mod decode;
pub mod input;

pub use blazeface::BlazeFace;
pub use decode::Detection;
