//! The async calls: each is a napi `AsyncTask` (a libuv pool thread waits for it), never on the
//! JS thread, and resolves a Promise. The core work itself runs on the core's compute threads
//! (`motivnet::cpu::run_on_compute_threads`). Calls on one model take its lock, so they run one
//! at a time; two models share the compute threads.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use napi::bindgen_prelude::{Float32Array, Task};
use napi::{Env, Result};
use napi_derive::napi;

use crate::error::{coded, invalid, no_panic, IntoJs, DISPOSED, INTERNAL};
use crate::model::{NativeModel, Shared};
use crate::options::Input;
use motivnet::optim::{AdamWConfig, Groups};
use motivnet::{Normalization, Trainer};

/// Whether a call changes the model: a failure inside the core during one that does may leave
/// it half-updated.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Reads,
    Writes,
}

/// Runs `work` on the model under its lock, on the core's compute threads (see
/// `motivnet::cpu::run_on_compute_threads`: not on this libuv thread), or fails if the model
/// was disposed, or was left torn by an earlier call that panicked while changing it.
fn with_trainer<T: Send>(
    shared: &Shared,
    effect: Effect,
    work: impl FnOnce(&mut Trainer) -> motivnet::Result<T> + Send,
) -> Result<T> {
    let mut guard = shared.trainer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if shared.disposed.load(Ordering::SeqCst) {
        // dispose() found the model busy: free it now that the running call is done.
        guard.take();
    }
    let trainer = guard.as_mut().ok_or_else(|| coded(DISPOSED, "the model was disposed: load a new one"))?;
    if let Some(why) = shared.torn.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        return Err(coded(
            INTERNAL,
            format!(
                "an earlier call failed inside the core while changing this model ({why}): its weights or optimizer \
                 state may be half-updated, so it takes no more calls; load it again"
            ),
        ));
    }
    let result = no_panic(|| motivnet::cpu::run_on_compute_threads(|| work(trainer)).js());
    if let Err(e) = &result {
        if effect == Effect::Writes && e.reason.starts_with(&format!("[{INTERNAL}]")) {
            *shared.torn.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.reason.clone());
        }
    }
    result
}

/// What decides a model's config: the spec, and the weights file's head unless encoder-only.
pub struct ConfigRequest {
    pub spec: String,
    pub weights: Option<PathBuf>,
    pub encoder_only: bool,
    pub num_classes: Option<usize>,
}

impl ConfigRequest {
    /// The config to build, reading only the shapes of the weights file (no tensor data).
    pub fn resolve(&self) -> motivnet::Result<motivnet::ModelConfig> {
        let spec = motivnet::ModelSpec::parse(&self.spec)?;
        match (&self.weights, self.encoder_only) {
            (Some(path), false) => {
                let shapes = motivnet::weights::canonical_shapes(&motivnet::weights::read_shapes(path)?);
                spec.resolve(Some((&path.display().to_string(), &shapes)), self.num_classes)
            }
            _ => spec.resolve(None, self.num_classes),
        }
    }
}

pub struct ConfigTask {
    pub request: ConfigRequest,
}

#[napi]
impl Task for ConfigTask {
    type Output = String;
    type JsValue = String;

    fn compute(&mut self) -> Result<String> {
        no_panic(|| self.request.resolve().map(|c| c.to_json()).js())
    }

    fn resolve(&mut self, _env: Env, json: String) -> Result<String> {
        Ok(json)
    }
}

pub struct LoadTask {
    pub request: ConfigRequest,
    pub init: motivnet::InitScheme,
    pub device: String,
    pub precision: motivnet::Precision,
    pub seed: u32,
    pub optimizer: AdamWConfig,
    pub normalization: Normalization,
}

#[napi]
impl Task for LoadTask {
    type Output = Trainer;
    type JsValue = NativeModel;

    fn compute(&mut self) -> Result<Trainer> {
        // On the compute threads, as every later call on the model (see with_trainer).
        no_panic(|| motivnet::cpu::run_on_compute_threads(|| self.load()))
    }

    fn resolve(&mut self, _env: Env, trainer: Trainer) -> Result<NativeModel> {
        Ok(NativeModel::new(trainer))
    }
}

impl LoadTask {
    fn load(&self) -> Result<Trainer> {
        let config = self.request.resolve().js()?;
        let device = motivnet::parse_device(&self.device).js()?;
        let mut model = motivnet::MotivNet::with_init(&config, &device, self.seed as u64, self.init).js()?;
        model.set_precision(self.precision).js()?;
        model.normalization = self.normalization;
        if let Some(path) = &self.request.weights {
            model.load_weights(path, self.request.encoder_only).js()?;
        }
        let config = motivnet::TrainerConfig { optimizer: self.optimizer.clone(), seed: self.seed as u64 };
        Ok(Trainer::new(model, config))
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
        let batch_size = (p.logits.len() / p.num_classes) as u32;
        Ok(PredictResult {
            logits: Float32Array::new(p.logits),
            probabilities: Float32Array::new(p.probabilities),
            batch_size,
            num_classes: p.num_classes as u32,
        })
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

/// What a file task writes.
pub enum FileWork {
    SaveWeights,
    /// The training state, with the caller's bookkeeping (JSON text) inside the same file.
    SaveState(Option<String>),
}

pub struct FileTask {
    pub shared: Arc<Shared>,
    pub path: PathBuf,
    pub work: FileWork,
}

#[napi]
impl Task for FileTask {
    type Output = ();
    type JsValue = ();

    fn compute(&mut self) -> Result<()> {
        with_trainer(&self.shared, Effect::Reads, |t| match &self.work {
            FileWork::SaveWeights => t.model.save_weights(&self.path),
            FileWork::SaveState(extra) => t.save_state(&self.path, extra.as_deref()),
        })
    }

    fn resolve(&mut self, _env: Env, _: ()) -> Result<()> {
        Ok(())
    }
}

pub struct LoadStateTask {
    pub shared: Arc<Shared>,
    pub path: PathBuf,
}

#[napi]
impl Task for LoadStateTask {
    type Output = Option<String>;
    type JsValue = Option<String>;

    fn compute(&mut self) -> Result<Option<String>> {
        with_trainer(&self.shared, Effect::Writes, |t| t.load_state(&self.path))
    }

    fn resolve(&mut self, _env: Env, extra: Option<String>) -> Result<Option<String>> {
        Ok(extra)
    }
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
    type Output = motivnet::weights::ConvertReport;
    type JsValue = ConvertResult;

    fn compute(&mut self) -> Result<Self::Output> {
        no_panic(|| motivnet::weights::convert_file(&self.input, &self.output).js())
    }

    fn resolve(&mut self, _env: Env, r: Self::Output) -> Result<ConvertResult> {
        Ok(ConvertResult {
            written: r.written as u32,
            renamed: r.renamed.into_iter().map(|(a, b)| vec![a, b]).collect(),
            ignored: r.ignored,
        })
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
            motivnet::cpu::run_on_compute_threads(|| {
                motivnet::pixels::resize_normalize_checked(&batch, *geometry, height, width, normalization, out)
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

/// See `NativeModel::panic_for_test`.
pub struct PanicTask {
    pub shared: Arc<Shared>,
}

#[napi]
impl Task for PanicTask {
    type Output = ();
    type JsValue = ();

    fn compute(&mut self) -> Result<()> {
        with_trainer(&self.shared, Effect::Writes, |_| -> motivnet::Result<()> { panic!("a panic raised on purpose") })
    }

    fn resolve(&mut self, _env: Env, _: ()) -> Result<()> {
        Ok(())
    }
}
