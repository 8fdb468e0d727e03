//! Files of a model: its weights (`saveWeights`) and its whole training state (`saveState`,
//! `loadState`).

use std::path::PathBuf;
use std::sync::Arc;

use napi::bindgen_prelude::{Object, Task};
use napi::{Env, Result};
use napi_derive::napi;

use crate::model::{with_trainer, Effect, NativeModel, Shared};

#[napi]
impl NativeModel {
    /// Writes the weights as safetensors with the reference's names.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn save_weights<'env>(&self, env: &'env Env, path: String) -> Result<Object<'env>> {
        self.call(env, FileTask { shared: self.live()?, path: path.into(), work: FileWork::SaveWeights })
    }

    /// Writes weights, optimizer moments and step, dropout RNG and pending gradients, with
    /// `extra` (the caller's JSON bookkeeping) in the same file.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn save_state<'env>(&self, env: &'env Env, path: String, extra: Option<String>) -> Result<Object<'env>> {
        self.call(env, FileTask { shared: self.live()?, path: path.into(), work: FileWork::SaveState(extra) })
    }

    /// Restores a state written by saveState; resolves to its `extra`, or null.
    #[napi(ts_return_type = "Promise<string | null>")]
    pub fn load_state<'env>(&self, env: &'env Env, path: String) -> Result<Object<'env>> {
        self.call(env, LoadStateTask { shared: self.live()?, path: path.into() })
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
