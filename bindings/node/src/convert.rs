//! Converting a `.pth` or safetensors checkpoint to safetensors with the reference's names.

use std::path::PathBuf;

use napi::bindgen_prelude::{Object, Task};
use napi::{Env, Result};
use napi_derive::napi;

use crate::calls;
use crate::error::{no_panic, IntoJs};

/// Converts a `.pth` (MotivNet or Sapiens layout) or safetensors file to safetensors with the
/// MotivNet reference's parameter names.
#[napi(ts_return_type = "Promise<ConvertResult>")]
pub fn convert_weights(env: &Env, input: String, output: String) -> Result<Object<'_>> {
    calls::start(env, None, ConvertTask { input: input.into(), output: output.into() })
}

#[napi(object)]
pub struct ConvertResult {
    pub written: u32,
    /// [file key, written key] pairs.
    pub renamed: Vec<Vec<String>>,
    pub ignored: Vec<String>,
}

pub struct ConvertTask {
    pub input: PathBuf,
    pub output: PathBuf,
}

#[napi]
impl Task for ConvertTask {
    type Output = motivnet::io::weights::ConvertReport;
    type JsValue = ConvertResult;

    fn compute(&mut self) -> Result<Self::Output> {
        no_panic(|| motivnet::io::weights::convert_file(&self.input, &self.output).js())
    }

    fn resolve(&mut self, _env: Env, r: Self::Output) -> Result<ConvertResult> {
        Ok(ConvertResult {
            written: r.written as u32,
            renamed: r.renamed.into_iter().map(|(a, b)| vec![a, b]).collect(),
            ignored: r.ignored,
        })
    }
}
