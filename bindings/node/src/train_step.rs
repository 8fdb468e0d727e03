//! One micro-batch of training: `trainStep`.

use std::sync::Arc;

use napi::bindgen_prelude::{Float32Array, Int32Array, Object, Task};
use napi::{Env, Result};
use napi_derive::napi;

use crate::model::{with_trainer, Effect, NativeModel, Shared};
use crate::options::{labels, Input, NativeInput};
use motivnet::train::optim::Groups;

#[napi]
impl NativeModel {
    /// One micro-batch of training; the weights change when `endOfCycle` is true.
    #[napi(ts_return_type = "Promise<TrainStepResult>")]
    pub fn train_step<'env>(
        &self,
        env: &'env Env,
        input: NativeInput,
        labels_in: Int32Array,
        encoder_lr: f64,
        decoder_lr: f64,
        end_of_cycle: bool,
    ) -> Result<Object<'env>> {
        let task = TrainStepTask {
            shared: self.live()?,
            input: Input::try_from(input)?,
            labels: labels(&labels_in)?,
            lr: Groups { encoder: encoder_lr, decoder: decoder_lr },
            end_of_cycle,
        };
        self.call(env, task)
    }
}

#[napi(object)]
pub struct TrainStepResult {
    /// Mean cross-entropy of this micro-batch.
    pub loss: f64,
    /// Train-mode logits (batchSize, numClasses), row-major.
    pub logits: Float32Array,
    /// Whether this call ended an accumulation cycle and updated the weights.
    pub stepped: bool,
    /// Global gradient norm before clipping, when the weights were updated.
    pub grad_norm: Option<f64>,
    /// Optimizer steps taken so far.
    pub step: f64,
}

pub struct TrainStepTask {
    pub shared: Arc<Shared>,
    pub input: Input,
    pub labels: Vec<u32>,
    pub lr: Groups<f64>,
    pub end_of_cycle: bool,
}

#[napi]
impl Task for TrainStepTask {
    type Output = (motivnet::StepOutput, u64);
    type JsValue = TrainStepResult;

    fn compute(&mut self) -> Result<Self::Output> {
        with_trainer(&self.shared, Effect::Writes, |t| {
            let out = self.input.with(|input| t.train_step(input, &self.labels, self.lr, self.end_of_cycle))?;
            Ok((out, t.optimizer.step_count()))
        })
    }

    fn resolve(&mut self, _env: Env, (out, step): Self::Output) -> Result<TrainStepResult> {
        Ok(TrainStepResult {
            loss: out.loss as f64,
            logits: Float32Array::new(out.logits),
            stepped: out.stepped,
            grad_norm: out.grad_norm,
            step: step as f64,
        })
    }
}
