//! Where and how the core computes: its compute threads and their floating-point mode, glibc
//! malloc thresholds for a model's temporaries, devices, and the compute dtype.

pub mod cpu;
pub mod device;
pub mod malloc;
pub mod precision;
