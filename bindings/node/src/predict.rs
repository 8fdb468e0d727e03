//! Eval-mode calls: `predict` (logits and probabilities), `predictExplained` (with the head's
//! attention maps) and `evaluate` (with the loss).

use std::sync::Arc;

use napi::bindgen_prelude::{Float32Array, Int32Array, Object, Task};
use napi::{Env, Result};
use napi_derive::napi;

use crate::model::{with_trainer, Effect, NativeModel, Shared};
use crate::options::{labels, Input, NativeInput};

#[napi]
impl NativeModel {
    /// Eval-mode logits and probabilities.
    #[napi(ts_return_type = "Promise<PredictResult>")]
    pub fn predict<'env>(&self, env: &'env Env, input: NativeInput) -> Result<Object<'env>> {
        self.call(env, PredictTask { shared: self.live()?, input: Input::try_from(input)? })
    }

    /// As `predict`, with where the model looks: the ML-Decoder's last cross-attention of each
    /// class's query over the encoder's token grid, averaged over heads.
    #[napi(ts_return_type = "Promise<PredictExplainedResult>")]
    pub fn predict_explained<'env>(&self, env: &'env Env, input: NativeInput) -> Result<Object<'env>> {
        self.call(env, PredictExplainedTask { shared: self.live()?, input: Input::try_from(input)? })
    }

    /// Eval-mode loss, logits and probabilities for labelled images.
    #[napi(ts_return_type = "Promise<EvaluateResult>")]
    pub fn evaluate<'env>(&self, env: &'env Env, input: NativeInput, labels_in: Int32Array) -> Result<Object<'env>> {
        let task = EvaluateTask { shared: self.live()?, input: Input::try_from(input)?, labels: labels(&labels_in)? };
        self.call(env, task)
    }
}

#[napi(object)]
pub struct PredictResult {
    /// (batchSize, numClasses), row-major.
    pub logits: Float32Array,
    /// Softmax of the logits, same layout.
    pub probabilities: Float32Array,
    pub batch_size: u32,
    pub num_classes: u32,
}

pub struct PredictTask {
    pub shared: Arc<Shared>,
    pub input: Input,
}

#[napi]
impl Task for PredictTask {
    type Output = motivnet::Prediction;
    type JsValue = PredictResult;

    fn compute(&mut self) -> Result<Self::Output> {
        with_trainer(&self.shared, Effect::Reads, |t| self.input.with(|input| t.model.classify(input)))
    }

    fn resolve(&mut self, _env: Env, p: Self::Output) -> Result<PredictResult> {
        Ok(Self::to_js(p))
    }
}

impl PredictTask {
    fn to_js(p: motivnet::Prediction) -> PredictResult {
        let batch_size = (p.logits.len() / p.num_classes) as u32;
        PredictResult {
            logits: Float32Array::new(p.logits),
            probabilities: Float32Array::new(p.probabilities),
            batch_size,
            num_classes: p.num_classes as u32,
        }
    }
}

#[napi(object)]
pub struct PredictExplainedResult {
    pub prediction: PredictResult,
    /// (batchSize, numClasses, gridHeight, gridWidth), row-major; each map sums to 1.
    pub attention: Float32Array,
    pub grid_height: u32,
    pub grid_width: u32,
}

pub struct PredictExplainedTask {
    pub shared: Arc<Shared>,
    pub input: Input,
}

#[napi]
impl Task for PredictExplainedTask {
    type Output = (motivnet::Prediction, motivnet::AttentionMaps);
    type JsValue = PredictExplainedResult;

    fn compute(&mut self) -> Result<Self::Output> {
        with_trainer(&self.shared, Effect::Reads, |t| self.input.with(|input| t.model.classify_explained(input)))
    }

    fn resolve(&mut self, _env: Env, (p, maps): Self::Output) -> Result<PredictExplainedResult> {
        Ok(PredictExplainedResult {
            prediction: PredictTask::to_js(p),
            attention: Float32Array::new(maps.values),
            grid_height: maps.grid_height as u32,
            grid_width: maps.grid_width as u32,
        })
    }
}

#[napi(object)]
pub struct EvaluateResult {
    /// Mean cross-entropy (eval mode).
    pub loss: f64,
    /// (batchSize, numClasses), row-major.
    pub logits: Float32Array,
    pub probabilities: Float32Array,
}

pub struct EvaluateTask {
    pub shared: Arc<Shared>,
    pub input: Input,
    pub labels: Vec<u32>,
}

#[napi]
impl Task for EvaluateTask {
    type Output = (f32, motivnet::Prediction);
    type JsValue = EvaluateResult;

    fn compute(&mut self) -> Result<Self::Output> {
        with_trainer(&self.shared, Effect::Reads, |t| self.input.with(|input| t.model.evaluate(input, &self.labels)))
    }

    fn resolve(&mut self, _env: Env, (loss, p): Self::Output) -> Result<EvaluateResult> {
        Ok(EvaluateResult {
            loss: loss as f64,
            logits: Float32Array::new(p.logits),
            probabilities: Float32Array::new(p.probabilities),
        })
    }
}
