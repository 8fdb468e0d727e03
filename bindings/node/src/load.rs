//! Loading a model, and the config a load would build (`modelConfigFor`): the spec, and the
//! weights file's head where the spec leaves it open.

use std::path::PathBuf;

use napi::bindgen_prelude::{Object, Task};
use napi::{Env, Result};
use napi_derive::napi;

use crate::calls;
use crate::error::{no_panic, IntoJs};
use crate::model::NativeModel;
use crate::options::LoadOptions;
use motivnet::train::optim::AdamWConfig;
use motivnet::{Normalization, Trainer};

/// Loads a model: a preset or config file, optional weights, device and seed.
#[napi(ts_return_type = "Promise<NativeModel>")]
pub fn load_model(env: &Env, options: LoadOptions) -> Result<Object<'_>> {
    let request = config_request(&options);
    let optimizer = match options.optimizer {
        Some(o) => AdamWConfig::try_from(o)?,
        None => AdamWConfig::default(),
    };
    let normalization = match options.normalization {
        Some(n) => Normalization::try_from(n)?,
        None => Normalization::default(),
    };
    let task = LoadTask {
        init: options.init.as_deref().unwrap_or("upstream").parse().js()?,
        request,
        device: options.device.unwrap_or_else(|| "cpu".into()),
        precision: motivnet::Precision::parse(options.precision.as_deref().unwrap_or("f32")).js()?,
        for_training: options.for_training.unwrap_or(false),
        seed: options.seed.unwrap_or(0),
        optimizer,
        normalization,
    };
    calls::start(env, None, task)
}

/// The config `loadModel` would build for `options`, reading only the weights file's shapes.
#[napi(ts_return_type = "Promise<string>")]
pub fn model_config_for(env: &Env, options: LoadOptions) -> Result<Object<'_>> {
    calls::start(env, None, ConfigTask { request: config_request(&options) })
}

fn config_request(options: &LoadOptions) -> ConfigRequest {
    ConfigRequest {
        spec: options.model.clone(),
        weights: options.weights.as_ref().map(PathBuf::from),
        encoder_only: options.encoder_only.unwrap_or(false),
        num_classes: options.num_classes.map(|n| n as usize),
    }
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
                let shapes = motivnet::io::weights::canonical_shapes(&motivnet::io::weights::read_shapes(path)?);
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
    /// Keep the f32 weights under bf16 on the CPU: the model will be trained.
    pub for_training: bool,
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
        no_panic(|| motivnet::runtime::cpu::run_on_compute_threads(|| self.load()))
    }

    fn resolve(&mut self, _env: Env, trainer: Trainer) -> Result<NativeModel> {
        NativeModel::new(trainer)
    }
}

impl LoadTask {
    fn load(&self) -> Result<Trainer> {
        let config = self.request.resolve().js()?;
        let device = motivnet::parse_device(&self.device).js()?;
        // Refused before a file is read (bf16 on a CPU without AVX512_BF16, say).
        self.precision.check_device(&device).js()?;
        if self.for_training {
            self.precision.check_trainable().js()?;
        }
        let seed = self.seed as u64;
        let mut model = match &self.request.weights {
            Some(path) => {
                let encoder_only = self.request.encoder_only;
                motivnet::MotivNet::from_weights_file(&config, &device, seed, self.init, path, encoder_only).js()?.0
            }
            None => motivnet::MotivNet::with_init(&config, &device, seed, self.init).js()?,
        };
        model.set_precision(self.precision).js()?;
        model.normalization = self.normalization;
        // A model loaded for inference under bf16 or int8 on the CPU keeps its (encoder's, in
        // int8) Linear weights only as their packing: the f32 copies would only take memory (training, saving and
        // loading state are refused on such a model). One loaded for training keeps them.
        if !self.for_training && model.can_keep_linear_weights_packed_only() {
            model.keep_linear_weights_packed_only().js()?;
        }
        let config = motivnet::TrainerConfig { optimizer: self.optimizer.clone(), seed: self.seed as u64 };
        Ok(Trainer::new(model, config))
    }
}
