//! u8 images -> the model's normalized input tensor, as the model computes it: `preprocess`.

use napi::bindgen_prelude::{Float32Array, Object, Task};
use napi::{Env, Result};
use napi_derive::napi;

use crate::calls;
use crate::error::{invalid, no_panic, IntoJs};
use crate::model::NativeModel;
use crate::options::{Input, NativeInput, NormalizationOptions};
use motivnet::Normalization;

/// u8 images -> the normalized (B, 3, height, width) input tensor, as the model computes it
/// (resize with OpenCV's INTER_LINEAR conventions, rounding, normalization), on the CPU.
/// With `out`, writes into that buffer (reuse it across batches) and resolves to it.
#[napi(ts_return_type = "Promise<Float32Array>")]
pub fn preprocess(
    env: &Env,
    input: NativeInput,
    height: u32,
    width: u32,
    normalization: Option<NormalizationOptions>,
    out: Option<Float32Array>,
) -> Result<Object<'_>> {
    if height < width || width == 0 {
        return Err(invalid(format!(
            "output is {width} x {height} (width x height): height must be at least width, both positive"
        )));
    }
    let normalization = match normalization {
        Some(n) => motivnet::Normalization::try_from(n)?,
        None => motivnet::Normalization::default(),
    };
    let task = PreprocessTask {
        input: Input::try_from(input)?,
        height: height as usize,
        width: width as usize,
        normalization,
        out,
    };
    calls::start(env, None, task)
}

#[napi]
impl NativeModel {
    /// The input tensor `predict` would compute from these pixels (this model's input size
    /// and normalization), without waiting for the model: a server turns each request's
    /// image into it at once and holds only that while the request waits for a batch.
    #[napi(ts_return_type = "Promise<Float32Array>")]
    pub fn input_tensor<'env>(&self, env: &'env Env, input: NativeInput) -> Result<Object<'env>> {
        self.live()?;
        let (height, width) = self.input_size;
        let task = PreprocessTask {
            input: Input::try_from(input)?,
            height,
            width,
            normalization: self.normalization,
            out: None,
        };
        calls::start(env, None, task)
    }
}

pub struct PreprocessTask {
    pub input: Input,
    pub height: usize,
    pub width: usize,
    pub normalization: Normalization,
    /// The caller's buffer to write into (reused across batches), or None to allocate.
    pub out: Option<Float32Array>,
}

#[napi]
impl Task for PreprocessTask {
    type Output = Option<Vec<f32>>;
    type JsValue = Float32Array;

    fn compute(&mut self) -> Result<Self::Output> {
        let Input::Pixels { data, sizes, geometry } = &self.input else {
            return Err(invalid("preprocess takes pixels, not a tensor"));
        };
        let batch = motivnet::ImageBatch::new(data, sizes).js()?;
        // SAFETY: the JS caller hands this buffer to the call and does not touch it until the
        // Promise settles (documented on `toInputTensor`'s `out`); the task holds a reference
        // to it, so it stays alive while written.
        let out = self.out.as_mut().map(|o| unsafe { o.as_mut() });
        let (height, width, normalization) = (self.height, self.width, &self.normalization);
        no_panic(|| {
            motivnet::runtime::cpu::run_on_compute_threads(|| {
                motivnet::ops::pixels::resize_normalize_checked(&batch, *geometry, height, width, normalization, out)
            })
            .js()
        })
    }

    fn resolve(&mut self, _env: Env, values: Self::Output) -> Result<Float32Array> {
        match (values, self.out.take()) {
            (Some(v), _) => Ok(Float32Array::new(v)),
            (None, Some(out)) => Ok(out),
            (None, None) => Err(invalid("preprocess produced no output")),
        }
    }
}
