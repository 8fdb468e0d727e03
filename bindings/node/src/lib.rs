//! Node.js binding of the motivnet core (napi-rs). It only converts values and maps errors:
//! model logic lives in `crates/motivnet`. Every call that touches tensors is an `AsyncTask`
//! whose work runs on the core's compute threads (tasks.rs); options and inputs are converted
//! in options.rs.

mod error;
mod options;
// Before `model`: napi's type generation learns each task's result type from the task impls,
// and must see them before the methods that return them.
mod model;
mod tasks;

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

/// u8 images -> the normalized (B, 3, height, width) input tensor, as the model computes it
/// (resize with OpenCV's INTER_LINEAR conventions, rounding, normalization), on the CPU.
/// With `out`, writes into that buffer (reuse it across batches) and resolves to it.
#[napi(ts_return_type = "Promise<Float32Array>")]
pub fn preprocess(
    input: options::NativeInput,
    height: u32,
    width: u32,
    normalization: Option<options::NormalizationOptions>,
    out: Option<napi::bindgen_prelude::Float32Array>,
) -> Result<napi::bindgen_prelude::AsyncTask<tasks::PreprocessTask>> {
    if height < width || width == 0 {
        return Err(error::invalid(format!(
            "output is {width} x {height} (width x height): height must be at least width, both positive"
        )));
    }
    let normalization = match normalization {
        Some(n) => motivnet::Normalization::try_from(n)?,
        None => motivnet::Normalization::default(),
    };
    Ok(napi::bindgen_prelude::AsyncTask::new(tasks::PreprocessTask {
        input: options::Input::try_from(input)?,
        height: height as usize,
        width: width as usize,
        normalization,
        out,
    }))
}

/// Converts a `.pth` (MotivNet or Sapiens layout) or safetensors file to safetensors with the
/// MotivNet reference's parameter names.
#[napi(ts_return_type = "Promise<ConvertResult>")]
pub fn convert_weights(input: String, output: String) -> napi::bindgen_prelude::AsyncTask<tasks::ConvertTask> {
    napi::bindgen_prelude::AsyncTask::new(tasks::ConvertTask { input: input.into(), output: output.into() })
}
