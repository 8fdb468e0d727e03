//! u8 images -> the model's normalized input tensor, as the model computes it: `preprocess`.

use napi::bindgen_prelude::{Float32Array, Object, Task, Uint8Array};
use napi::{Env, Result};
use napi_derive::napi;

use crate::calls;
use crate::error::{invalid, no_panic, IntoJs};
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

/// u8 images -> u8 images of `width` x `height` (HWC, back to back), resized exactly as the
/// model resizes (the levels its normalization would start from; letterbox bands white). What
/// a server keeps of a request while it waits for a batch: `predict` with geometry `none` on
/// these gives what `predict` on the originals gives. Synchronous, on the calling thread: for
/// a decoding worker, whose thread is its own (a wait for the shared compute threads would
/// stall its decoding); never call it on a main thread.
#[napi]
pub fn resize_images_sync(input: NativeInput, height: u32, width: u32) -> Result<Uint8Array> {
    if height < width || width == 0 {
        return Err(invalid(format!(
            "output is {width} x {height} (width x height): height must be at least width, both positive"
        )));
    }
    let Input::Pixels { data, sizes, geometry } = Input::try_from(input)? else {
        return Err(invalid("resizeImagesSync takes pixels, not a tensor"));
    };
    let batch = motivnet::ImageBatch::new(&data, &sizes).js()?;
    let levels =
        no_panic(|| motivnet::ops::pixels::resize_levels(&batch, geometry, height as usize, width as usize).js())?;
    Ok(Uint8Array::new(levels))
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
