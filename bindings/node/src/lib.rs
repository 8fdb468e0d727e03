//! Node.js binding of the motivnet core (napi-rs). It only converts values and maps errors:
//! model logic lives in `crates/motivnet`. Every call that touches tensors returns a Promise
//! whose work waits and runs on threads of the addon's own (`calls.rs`), never on libuv's
//! pool; each file holds a feature's calls with their tasks (load, predict, train_step, state,
//! preprocess, convert, faces), `model.rs` the model object they share, `options.rs` the option and
//! input types, `error.rs` the error mapping.

mod calls;
mod convert;
mod error;
mod faces;
mod load;
mod model;
mod options;
mod predict;
mod preprocess;
mod state;
mod train_step;

use napi::Result;
use napi_derive::napi;

use error::IntoJs;

/// Names of the built-in model presets.
#[napi]
pub fn presets() -> Vec<String> {
    motivnet::config::PRESET_NAMES.iter().map(|s| s.to_string()).collect()
}

/// The full model config (JSON text, camelCase keys) of a preset name or a JSON config file,
/// validated; errors name the file or key at fault.
#[napi]
pub fn resolve_model_config(spec: String) -> Result<String> {
    error::no_panic(|| motivnet::ModelConfig::from_preset_or_file(&spec).map(|c| c.to_json()).js())
}

/// Whether this build of the addon can use CUDA devices.
#[napi]
pub fn cuda_available() -> bool {
    cfg!(feature = "cuda")
}

/// Whether `precision: 'bf16'` runs on this CPU (AVX512_BF16: on AMX tiles where the CPU has them
/// and the kernel allows them, else on the dot products).
#[napi]
pub fn cpu_bf16_available() -> bool {
    motivnet::runtime::precision::cpu_bf16_available()
}

/// Whether `precision: 'int8'` runs on this CPU (AVX512-VNNI).
#[napi]
pub fn cpu_int8_available() -> bool {
    motivnet::runtime::precision::cpu_int8_available()
}

/// What `tuneProcessMalloc` put in effect.
#[napi(object)]
pub struct MallocTuning {
    /// Whether the mmap and trim thresholds are ours (false off glibc, or where the
    /// environment chose its own malloc settings).
    pub thresholds: bool,
    /// The arenas threads share from now on; null where the cap could not take effect (the
    /// environment's own settings, or more than eight arenas made before the call, after
    /// which glibc keeps its own limit of eight per core).
    pub arena_cap: Option<u32>,
}

/// Applies the core's glibc malloc settings to this whole process (see
/// `motivnet::runtime::malloc`): faster, steadier train steps, at a resident size that stays
/// near its peak. Process-wide, so only on request; says which are in effect.
#[napi]
pub fn tune_process_malloc() -> MallocTuning {
    let tuning = motivnet::runtime::malloc::tune_for_model_temporaries();
    MallocTuning { thresholds: tuning.thresholds, arena_cap: tuning.arena_cap.map(|n| n as u32) }
}
