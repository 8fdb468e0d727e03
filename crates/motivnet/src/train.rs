//! The training step: forward in train mode, cross-entropy, backward, gradient accumulation
//! over micro-batches, and the AdamW update at the end of each accumulation cycle.
//!
//! Accumulated gradients are averaged over the micro-batches of a cycle, as Lightning's
//! `accumulate_grad_batches` does (it scales each micro-batch loss by 1/K): K micro-batches of
//! size B give the update of one batch of size K x B. The caller sets the learning rates of
//! each step, so any schedule lives outside the core.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::{input_err, Error, Result};
use crate::layers::{Mode, RecordedMasks};
use crate::loss::cross_entropy;
use crate::model::MotivNet;
use crate::optim::{AdamW, AdamWConfig, Groups};
use crate::pixels::{to_input_tensor, Geometry, ImageBatch};
use crate::weights;

/// What a model call takes: u8 images of any sizes with a geometry, or a ready tensor.
#[derive(Debug, Clone, Copy)]
pub enum ModelInput<'a> {
    Pixels {
        batch: ImageBatch<'a>,
        geometry: Geometry,
    },
    /// Normalized f32 images (B, 3, H, W) at the model's input size.
    Tensor(&'a Tensor),
    /// The same as a flat row-major slice of `batch_size` images (for callers without candle).
    Normalized {
        data: &'a [f32],
        batch_size: usize,
    },
}

/// Eval-mode outputs as plain vectors, row-major (B, num_classes).
#[derive(Debug, Clone)]
pub struct Prediction {
    pub logits: Vec<f32>,
    pub probabilities: Vec<f32>,
    pub num_classes: usize,
}

impl MotivNet {
    /// The model's input tensor for `input` on the model's device, in its compute dtype.
    pub fn input_tensor(&self, input: &ModelInput) -> Result<Tensor> {
        Ok(self.input_tensor_f32(input)?.to_dtype(self.precision().dtype())?)
    }

    fn input_tensor_f32(&self, input: &ModelInput) -> Result<Tensor> {
        crate::cpu::prepare();
        let enc = &self.config.encoder;
        match input {
            ModelInput::Pixels { batch, geometry } => {
                to_input_tensor(batch, *geometry, enc.input_height, enc.input_width, &self.normalization, self.device())
            }
            ModelInput::Tensor(t) => {
                if t.rank() != 4 {
                    return Err(input_err!(
                        "input tensor has shape {:?}, expected (B, 3, {}, {})",
                        t.dims(),
                        enc.input_height,
                        enc.input_width
                    ));
                }
                Ok(t.to_dtype(DType::F32)?.to_device(self.device())?)
            }
            ModelInput::Normalized { data, batch_size } => {
                let per_image = 3 * enc.input_height * enc.input_width;
                if *batch_size == 0 || data.len() != batch_size * per_image {
                    return Err(input_err!(
                        "normalized input holds {} values, expected {batch_size} x 3 x {} x {} = {}",
                        data.len(),
                        enc.input_height,
                        enc.input_width,
                        batch_size * per_image
                    ));
                }
                Ok(Tensor::from_slice(data, (*batch_size, 3, enc.input_height, enc.input_width), self.device())?)
            }
        }
    }

    /// Eval-mode logits (B, num_classes).
    pub fn predict(&self, input: &ModelInput) -> Result<Tensor> {
        let x = self.input_tensor(input)?;
        self.forward(&x, &mut Mode::Eval)
    }

    /// Eval-mode logits and softmax probabilities, copied off the device.
    pub fn classify(&self, input: &ModelInput) -> Result<Prediction> {
        self.prediction(&self.predict(input)?)
    }

    /// Eval-mode mean cross-entropy with the logits and probabilities.
    pub fn evaluate(&self, input: &ModelInput, labels: &[u32]) -> Result<(f32, Prediction)> {
        let logits = self.predict(input)?;
        let loss = cross_entropy(&logits, labels)?.to_scalar::<f32>()?;
        Ok((loss, self.prediction(&logits)?))
    }

    fn prediction(&self, logits: &Tensor) -> Result<Prediction> {
        let flat = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?) };
        let probabilities = crate::layers::softmax(logits)?;
        Ok(Prediction {
            logits: flat(logits)?,
            probabilities: flat(&probabilities)?,
            num_classes: self.config.head.num_classes,
        })
    }
}

#[derive(Debug, Clone, Default)]
pub struct TrainerConfig {
    pub optimizer: AdamWConfig,
    /// Seeds the dropout masks.
    pub seed: u64,
}

#[derive(Debug, Clone)]
pub struct StepOutput {
    /// Mean cross-entropy of this micro-batch.
    pub loss: f32,
    /// Train-mode logits (B, num_classes), row-major.
    pub logits: Vec<f32>,
    /// Whether this call ended an accumulation cycle and updated the weights.
    pub stepped: bool,
    /// Global gradient norm of the update (before clipping), when one was made.
    pub grad_norm: Option<f64>,
}

pub struct Trainer {
    pub model: MotivNet,
    pub optimizer: AdamW,
    rng: ChaCha8Rng,
    /// Sum of the gradients of the micro-batches since the last update, by parameter name.
    accumulated: HashMap<String, Tensor>,
    micro_batches: usize,
}

const RNG_KEY: &str = "trainer.rng";
const ACCUM_COUNT_KEY: &str = "trainer.accumulated_micro_batches";
const ACCUM_PREFIX: &str = "trainer.accumulated.";
const EXTRA_KEY: &str = "motivnet.trainer";

impl Trainer {
    pub fn new(model: MotivNet, config: TrainerConfig) -> Self {
        Self {
            model,
            optimizer: AdamW::new(config.optimizer),
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            accumulated: HashMap::new(),
            micro_batches: 0,
        }
    }

    /// The gradients summed since the last optimizer step, by parameter name.
    pub fn accumulated_gradients(&self) -> impl Iterator<Item = (&String, &Tensor)> {
        self.accumulated.iter()
    }

    /// Micro-batches accumulated since the last optimizer step.
    pub fn pending_micro_batches(&self) -> usize {
        self.micro_batches
    }

    /// One micro-batch: forward (dropout on), loss, backward, accumulate; when
    /// `end_of_cycle`, average the accumulated gradients, clip and update with `lr`.
    pub fn train_step(
        &mut self,
        input: &ModelInput,
        labels: &[u32],
        lr: Groups<f64>,
        end_of_cycle: bool,
    ) -> Result<StepOutput> {
        self.step_with(input, labels, lr, end_of_cycle, None)
    }

    /// [`Trainer::train_step`] with the dropout masks given instead of drawn: the parity tests
    /// replay the masks PyTorch drew. Every mask must be used.
    pub fn train_step_replaying(
        &mut self,
        input: &ModelInput,
        labels: &[u32],
        lr: Groups<f64>,
        end_of_cycle: bool,
        masks: &mut RecordedMasks,
    ) -> Result<StepOutput> {
        let out = self.step_with(input, labels, lr, end_of_cycle, Some(masks))?;
        if masks.remaining() > 0 {
            return Err(input_err!("{} recorded dropout masks were left unused", masks.remaining()));
        }
        Ok(out)
    }

    fn step_with(
        &mut self,
        input: &ModelInput,
        labels: &[u32],
        lr: Groups<f64>,
        end_of_cycle: bool,
        replay: Option<&mut RecordedMasks>,
    ) -> Result<StepOutput> {
        // Checked before any work, so a bad call leaves the accumulated gradients intact.
        AdamW::check_learning_rates(lr)?;
        let x = self.model.input_tensor(input)?;
        let mut mode = match replay {
            Some(masks) => Mode::Replay(masks),
            None => Mode::Train(&mut self.rng),
        };
        // On the CPU the encoder runs its hand-written training pass (encoder_train.rs); its
        // tokens enter the head as a leaf, whose gradient then drives the encoder's backward.
        let (logits, encoder_pass) = if crate::encoder_train::supported(&self.model.encoder, &x) {
            let (tokens, tape) = crate::encoder_train::forward(&self.model.encoder, &x)?;
            let logits = self.model.head.forward(tokens.as_tensor(), &mut mode)?;
            (logits, Some((tokens, tape)))
        } else {
            (self.model.forward(&x, &mut mode)?, None)
        };
        let loss = cross_entropy(&logits, labels)?;
        let loss_value = loss.to_scalar::<f32>()?;
        if !loss_value.is_finite() {
            // Keep the weights and the accumulated gradients of the good micro-batches untouched.
            return Err(Error::NonFinite(format!(
                "loss is not finite ({loss_value}): the micro-batch was not applied"
            )));
        }
        let mut grads = loss.backward()?;
        if let Some((tokens, tape)) = encoder_pass {
            let d_tokens = grads
                .remove(tokens.as_tensor())
                .ok_or_else(|| Error::Internal("the encoder's tokens received no gradient from the head".into()))?;
            for (param, grad) in tape.backward(&d_tokens)? {
                grads.insert(&param, grad);
            }
        }
        for p in self.model.params.trainable() {
            // backward also records gradients of non-Var leaves (the input): only Vars are kept.
            let g = grads.remove(p.var.as_tensor()).ok_or_else(|| {
                Error::Internal(format!("parameter {} received no gradient: the graph is cut somewhere", p.name))
            })?;
            // Detached: kept across calls, it must not hold this step's graph (see optim.rs).
            let sum = match self.accumulated.remove(&p.name) {
                Some(prev) => (prev + g)?.detach(),
                None => g.detach(),
            };
            self.accumulated.insert(p.name.clone(), sum);
        }
        self.micro_batches += 1;
        let logits = logits.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        if !end_of_cycle {
            return Ok(StepOutput { loss: loss_value, logits, stepped: false, grad_norm: None });
        }
        let scale = 1.0 / self.micro_batches as f64;
        let mean_grads = std::mem::take(&mut self.accumulated)
            .into_iter()
            .map(|(k, g)| Ok((k, if scale == 1.0 { g } else { (g * scale)? })))
            .collect::<Result<HashMap<_, _>>>()?;
        self.micro_batches = 0;
        let norm = self.optimizer.step(&self.model.params, &mean_grads, lr)?;
        Ok(StepOutput { loss: loss_value, logits, stepped: true, grad_norm: Some(norm) })
    }

    /// Weights (reference names), optimizer moments and step, dropout RNG position and any
    /// gradients accumulated mid-cycle: everything needed to continue exactly. `extra` is the
    /// caller's own bookkeeping (epoch, schedule, data order), stored in the same file so the
    /// two can never disagree.
    pub fn save_state(&self, path: &Path, extra: Option<&str>) -> Result<()> {
        let mut tensors = self.model.params.tensors();
        tensors.extend(self.optimizer.state_tensors()?);
        let seed: Vec<u8> = self.rng.get_seed().to_vec();
        let pos = self.rng.get_word_pos();
        let stream = self.rng.get_stream();
        let words: Vec<u32> = [
            (pos >> 96) as u32,
            (pos >> 64) as u32,
            (pos >> 32) as u32,
            pos as u32,
            (stream >> 32) as u32,
            stream as u32,
        ]
        .to_vec();
        tensors.insert(format!("{RNG_KEY}.seed"), Tensor::from_vec(seed, 32, &Device::Cpu)?);
        tensors.insert(format!("{RNG_KEY}.position"), Tensor::from_vec(words, 6, &Device::Cpu)?);
        tensors.insert(ACCUM_COUNT_KEY.into(), Tensor::new(&[self.micro_batches as i64], &Device::Cpu)?);
        for (name, g) in &self.accumulated {
            tensors.insert(format!("{ACCUM_PREFIX}{name}"), g.clone());
        }
        let metadata = extra.map(|e| [(EXTRA_KEY.to_string(), e.to_string())].into_iter().collect());
        weights::save_tensors_with_metadata(&tensors, metadata, path)
    }

    /// Restores what [`Trainer::save_state`] wrote and returns its `extra`. The model's config
    /// must be the one saved. All or nothing: every part of the file is checked before any of
    /// the trainer changes.
    pub fn load_state(&mut self, path: &Path) -> Result<Option<String>> {
        let file = path.display().to_string();
        let tensors = weights::read_tensors(path)?;
        let bad = |what: String| Error::State(format!("{file}: {what}"));
        let get =
            |key: &str| tensors.get(key).ok_or_else(|| bad(format!("not a training state: key {key} is missing")));
        let seed: [u8; 32] = get(&format!("{RNG_KEY}.seed"))?
            .flatten_all()?
            .to_vec1::<u8>()
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| bad(format!("{RNG_KEY}.seed must hold 32 bytes")))?;
        let w = get(&format!("{RNG_KEY}.position"))?.flatten_all()?.to_vec1::<u32>().unwrap_or_default();
        if w.len() != 6 {
            return Err(bad(format!("{RNG_KEY}.position must hold 6 32-bit words, got {}", w.len())));
        }
        let count = match get(ACCUM_COUNT_KEY)?.flatten_all()?.to_vec1::<i64>().ok().as_deref() {
            Some(&[n]) if n >= 0 => n as usize,
            _ => return Err(bad(format!("{ACCUM_COUNT_KEY} must hold one count of at least 0"))),
        };
        let mut accumulated = HashMap::new();
        if count > 0 {
            for p in self.model.params.trainable() {
                let key = format!("{ACCUM_PREFIX}{}", p.name);
                let g = get(&key)?;
                if g.dims() != p.var.dims() {
                    return Err(bad(format!("{key} has shape {:?}, expected {:?}", g.dims(), p.var.dims())));
                }
                accumulated.insert(p.name.clone(), g.to_dtype(DType::F32)?.to_device(self.model.device())?);
            }
        }
        let optimizer = self.optimizer.read_state(&self.model.params, &tensors, &file)?;
        let extra = weights::read_metadata(path)?.remove(EXTRA_KEY);
        // Everything is read and checked: the weights (all or nothing too), then the rest.
        let opts = weights::LoadOptions { encoder_only: false, grid: Some(self.model.config.encoder.grid()) };
        weights::load_into(&self.model.params, &tensors, &opts, &file)?;
        self.optimizer.restore(optimizer);
        let pos = (w[0] as u128) << 96 | (w[1] as u128) << 64 | (w[2] as u128) << 32 | w[3] as u128;
        let mut rng = ChaCha8Rng::from_seed(seed);
        rng.set_stream((w[4] as u64) << 32 | w[5] as u64);
        rng.set_word_pos(pos);
        self.rng = rng;
        self.micro_batches = count;
        self.accumulated = accumulated;
        Ok(extra)
    }
}
