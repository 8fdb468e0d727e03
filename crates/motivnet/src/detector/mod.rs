//! Face detection before classification: MediaPipe's short-range BlazeFace, with its weights
//! inside the crate (`assets/`, Apache-2.0, converted by scripts/detector/convert_blazeface.py).
//! [`blazeface`] is the network, exact to TFLite's, on kernels of our own
//! (`kernels::separable`); [`input`] makes a photograph its input and [`decode`] turns its
//! outputs into faces, both as MediaPipe's graph does; [`crop`] frames a face as AffectNet's
//! images frame theirs, and [`faces`] puts it together for the classifier. Two options go past
//! MediaPipe: [`tiles`] looks for faces too small for the whole photograph's pass, and
//! [`upright`] finds a face's roll, which its crop then undoes.

pub mod blazeface;
pub mod crop;
pub mod decode;
pub mod faces;
pub mod input;
pub mod tiles;
pub mod upright;

pub use blazeface::BlazeFace;
pub use crop::{PixelRect, PixelSquare};
pub use decode::Detection;
pub use faces::{crop_levels, find_faces, Face, FaceOptions};
