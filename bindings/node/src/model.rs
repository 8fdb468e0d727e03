//! The JS model object: one core `Trainer` (model and optimizer) behind a lock, and the one
//! way every call reaches it ([`with_trainer`]): sent down the model's own call line
//! (calls.rs), run on the core's compute threads one call at a time, refused after
//! `dispose()` or once a failed call may have torn the model. The calls themselves live by
//! feature: load.rs, predict.rs, train_step.rs, state.rs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use napi::bindgen_prelude::{Object, Task};
use napi::{Env, Result};
use napi_derive::napi;

use crate::calls::{self, CallLine};
use crate::error::{coded, no_panic, IntoJs, DISPOSED, INTERNAL};
use motivnet::Trainer;

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
    /// The thread this model's calls wait and run on, in order.
    line: CallLine,
    config_json: String,
    counts: (usize, usize),
}

/// Whether a call changes the model: a failure inside the core during one that does may leave
/// it half-updated.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Reads,
    Writes,
}

/// Runs `work` on the model under its lock, on the core's compute threads (see
/// `motivnet::runtime::cpu::run_on_compute_threads`), or fails if the model
/// was disposed, or was left torn by an earlier call that panicked while changing it.
pub(crate) fn with_trainer<T: Send>(
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
    let result = no_panic(|| motivnet::runtime::cpu::run_on_compute_threads(|| work(trainer)).js());
    if let Err(e) = &result {
        if effect == Effect::Writes && e.reason.starts_with(&format!("[{INTERNAL}]")) {
            *shared.torn.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.reason.clone());
        }
    }
    result
}

impl NativeModel {
    pub fn new(trainer: Trainer) -> Result<Self> {
        let config_json = trainer.model.config.to_json();
        let counts = trainer.model.params.counts();
        Ok(Self {
            shared: Arc::new(Shared {
                trainer: Mutex::new(Some(trainer)),
                disposed: AtomicBool::new(false),
                torn: Mutex::new(None),
            }),
            line: CallLine::new("motivnet-model")?,
            config_json,
            counts,
        })
    }

    /// Starts a call on this model: its Promise, settled once the model's earlier calls and
    /// then this one have run.
    pub(crate) fn call<'env, T: Task + Send + 'static>(&self, env: &'env Env, task: T) -> Result<Object<'env>> {
        calls::start(env, Some(&self.line), task)
    }

    pub(crate) fn live(&self) -> Result<Arc<Shared>> {
        if self.shared.disposed.load(Ordering::SeqCst) {
            return Err(coded(DISPOSED, "the model was disposed: load a new one"));
        }
        Ok(self.shared.clone())
    }
}

#[napi]
impl NativeModel {
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
    pub fn panic_for_test<'env>(&self, env: &'env Env) -> Result<Object<'env>> {
        self.call(env, PanicTask { shared: self.live()? })
    }

    #[napi(getter)]
    pub fn disposed(&self) -> bool {
        self.shared.disposed.load(Ordering::SeqCst)
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
