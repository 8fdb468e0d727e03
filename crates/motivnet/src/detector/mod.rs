//! Face detection before classification: MediaPipe's short-range BlazeFace, on candle like the
//! rest of the core, with its weights inside the crate (`assets/`, Apache-2.0, converted by
//! scripts/detector/convert_blazeface.py). [`blazeface`] is the network, exact to TFLite's;
//! [`decode`] turns its outputs into faces as MediaPipe's graph does.

pub mod blazeface;
pub mod decode;

pub use blazeface::BlazeFace;
pub use decode::Detection;
