//! Checkpoints in and out: safetensors and PyTorch `.pth` state dicts with the reference's
//! names ([`weights`]), written durably ([`durable`]), and position embeddings for another
//! grid ([`pos_embed`]).

pub mod durable;
pub mod pos_embed;
pub mod pth_guard;
pub mod safetensors_file;
pub mod weights;
