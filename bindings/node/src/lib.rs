//! Node.js binding of the motivnet core. It only converts values and maps errors: model logic
//! lives in `crates/motivnet`.

use napi::bindgen_prelude::*;
use napi_derive::napi;

/// Maps a core error to a JS `Error` carrying the core's message.
fn to_js(err: motivnet::Error) -> Error {
    Error::new(Status::InvalidArg, err.to_string())
}

/// Names of the built-in model presets.
#[napi]
pub fn presets() -> Vec<String> {
    motivnet::config::PRESET_NAMES.iter().map(|s| s.to_string()).collect()
}

/// The full model config (JSON text, camelCase keys) of a preset name or a JSON config file,
/// validated; errors name the file or key at fault.
#[napi]
pub fn resolve_model_config(spec: String) -> Result<String> {
    motivnet::ModelConfig::from_preset_or_file(&spec).map(|c| c.to_json()).map_err(to_js)
}

/// Whether this build of the addon can use CUDA devices.
#[napi]
pub fn cuda_available() -> bool {
    cfg!(feature = "cuda")
}
