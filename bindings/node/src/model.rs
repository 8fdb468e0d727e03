//! The JS model object: owns one core `Trainer` (model + optimizer) behind a lock.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use napi::bindgen_prelude::{AsyncTask, Int32Array};
use napi::Result;
use napi_derive::napi;

use crate::error::{coded, IntoJs, DISPOSED};
use crate::options::{labels, Input, LoadOptions, NativeInput};
use crate::tasks::{
    ConfigRequest, ConfigTask, EvaluateTask, FileTask, FileWork, LoadStateTask, LoadTask, PanicTask, PredictTask,
    TrainStepTask,
};
use motivnet::optim::{AdamWConfig, Groups};
use motivnet::{Normalization, Trainer};

pub struct Shared {
    pub trainer: Mutex<Option<Trainer>>,
    /// Set by dispose(); checked before every call, so use after dispose fails at once.
    pub disposed: AtomicBool,
    /// Why the model refuses calls: a call that changes it failed inside the core midway.
    pub torn: Mutex<Option<String>>,
}

#[napi(object)]
pub struct ParameterCounts {
    pub total: f64,
    pub trainable: f64,
}

#[napi]
pub struct NativeModel {
    shared: Arc<Shared>,
    config_json: String,
    counts: (usize, usize),
}

/// Loads a model: a preset or config file, optional weights, device and seed.
#[napi(ts_return_type = "Promise<NativeModel>")]
pub fn load_model(options: LoadOptions) -> Result<AsyncTask<LoadTask>> {
    let request = config_request(&options);
    let optimizer = match options.optimizer {
        Some(o) => AdamWConfig::try_from(o)?,
        None => AdamWConfig::default(),
    };
    let normalization = match options.normalization {
        Some(n) => Normalization::try_from(n)?,
        None => Normalization::default(),
    };
    Ok(AsyncTask::new(LoadTask {
        init: options.init.as_deref().unwrap_or("upstream").parse().js()?,
        request,
        device: options.device.unwrap_or_else(|| "cpu".into()),
        precision: motivnet::Precision::parse(options.precision.as_deref().unwrap_or("f32")).js()?,
        seed: options.seed.unwrap_or(0),
        optimizer,
        normalization,
    }))
}

/// The config `loadModel` would build for `options`, reading only the weights file's shapes.
#[napi(ts_return_type = "Promise<string>")]
pub fn model_config_for(options: LoadOptions) -> AsyncTask<ConfigTask> {
    AsyncTask::new(ConfigTask { request: config_request(&options) })
}

fn config_request(options: &LoadOptions) -> ConfigRequest {
    ConfigRequest {
        spec: options.model.clone(),
        weights: options.weights.as_ref().map(PathBuf::from),
        encoder_only: options.encoder_only.unwrap_or(false),
        num_classes: options.num_classes.map(|n| n as usize),
    }
}

impl NativeModel {
    pub fn new(trainer: Trainer) -> Self {
        let config_json = trainer.model.config.to_json();
        let counts = trainer.model.params.counts();
        Self {
            shared: Arc::new(Shared {
                trainer: Mutex::new(Some(trainer)),
                disposed: AtomicBool::new(false),
                torn: Mutex::new(None),
            }),
            config_json,
            counts,
        }
    }

    fn live(&self) -> Result<Arc<Shared>> {
        if self.shared.disposed.load(Ordering::SeqCst) {
            return Err(coded(DISPOSED, "the model was disposed: load a new one"));
        }
        Ok(self.shared.clone())
    }
}

#[napi]
impl NativeModel {
    /// Eval-mode logits and probabilities.
    #[napi(ts_return_type = "Promise<PredictResult>")]
    pub fn predict(&self, input: NativeInput) -> Result<AsyncTask<PredictTask>> {
        Ok(AsyncTask::new(PredictTask { shared: self.live()?, input: Input::try_from(input)? }))
    }

    /// One micro-batch of training; the weights change when `endOfCycle` is true.
    #[napi(ts_return_type = "Promise<TrainStepResult>")]
    pub fn train_step(
        &self,
        input: NativeInput,
        labels_in: Int32Array,
        encoder_lr: f64,
        decoder_lr: f64,
        end_of_cycle: bool,
    ) -> Result<AsyncTask<TrainStepTask>> {
        Ok(AsyncTask::new(TrainStepTask {
            shared: self.live()?,
            input: Input::try_from(input)?,
            labels: labels(&labels_in)?,
            lr: Groups { encoder: encoder_lr, decoder: decoder_lr },
            end_of_cycle,
        }))
    }

    /// Eval-mode loss, logits and probabilities for labelled images.
    #[napi(ts_return_type = "Promise<EvaluateResult>")]
    pub fn evaluate(&self, input: NativeInput, labels_in: Int32Array) -> Result<AsyncTask<EvaluateTask>> {
        Ok(AsyncTask::new(EvaluateTask {
            shared: self.live()?,
            input: Input::try_from(input)?,
            labels: labels(&labels_in)?,
        }))
    }

    /// Writes the weights as safetensors with the reference's names.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn save_weights(&self, path: String) -> Result<AsyncTask<FileTask>> {
        Ok(AsyncTask::new(FileTask { shared: self.live()?, path: path.into(), work: FileWork::SaveWeights }))
    }

    /// Writes weights, optimizer moments and step, dropout RNG and pending gradients, with
    /// `extra` (the caller's JSON bookkeeping) in the same file.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn save_state(&self, path: String, extra: Option<String>) -> Result<AsyncTask<FileTask>> {
        Ok(AsyncTask::new(FileTask { shared: self.live()?, path: path.into(), work: FileWork::SaveState(extra) }))
    }

    /// Restores a state written by saveState; resolves to its `extra`, or null.
    #[napi(ts_return_type = "Promise<string | null>")]
    pub fn load_state(&self, path: String) -> Result<AsyncTask<LoadStateTask>> {
        Ok(AsyncTask::new(LoadStateTask { shared: self.live()?, path: path.into() }))
    }

    /// The resolved model config as JSON text.
    #[napi(getter)]
    pub fn config_json(&self) -> String {
        self.config_json.clone()
    }

    #[napi]
    pub fn parameter_counts(&self) -> ParameterCounts {
        ParameterCounts { total: self.counts.0 as f64, trainable: self.counts.1 as f64 }
    }

    /// Frees the model's memory; later calls fail. A call already running finishes first.
    #[napi]
    pub fn dispose(&self) {
        self.shared.disposed.store(true, Ordering::SeqCst);
        if let Ok(mut guard) = self.shared.trainer.try_lock() {
            guard.take();
        }
    }

    /// For the binding's tests: a call that panics inside the core while it would change the
    /// model. Proves a panic rejects (code MOTIVNET_INTERNAL) and leaves the process alive and
    /// the model refusing further calls.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn panic_for_test(&self) -> Result<AsyncTask<PanicTask>> {
        Ok(AsyncTask::new(PanicTask { shared: self.live()? }))
    }

    #[napi(getter)]
    pub fn disposed(&self) -> bool {
        self.shared.disposed.load(Ordering::SeqCst)
    }
}
