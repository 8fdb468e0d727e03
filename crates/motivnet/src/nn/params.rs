//! The model's parameters by checkpoint name, each a candle `Var`, created with a seeded RNG.
//!
//! Why not `candle_nn::VarMap`: its initialisers draw from candle's RNG, which cannot be seeded
//! on CPU, and it has no notion of a non-trainable parameter (ML-Decoder's queries) or of what
//! the optimizer needs to know of each parameter. Names are the reference's checkpoint keys, in
//! creation order, so saving needs no rename table. The model says, as it creates them, where
//! each parameter belongs ([`ParamStore::place`]: its optimizer group and encoder depth) and
//! whether weight decay applies to it; the optimizer reads that, never the names.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{DType, Device, Shape, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::error::Result;

/// Which optimizer group a parameter belongs to (docs/REFERENCE_MODEL.md, section 4: two learning rates).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Group {
    Encoder,
    Decoder,
}

/// How a fresh model is initialised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InitScheme {
    /// As the upstream PyTorch code starts a model: PyTorch's default Linear and Conv init
    /// (Kaiming-uniform weights, uniform biases, bound 1/sqrt(fan_in)), a zero position
    /// embedding, and every decoder layer a copy of the first (`nn.TransformerDecoder`
    /// deep-copies the one layer it is given).
    #[default]
    Upstream,
    /// The ViT convention (timm, mmpretrain): encoder Linear weights and the position
    /// embedding truncated-normal with std 0.02, zero encoder biases, decoder layers drawn
    /// independently. It trains the small demo model from scratch better.
    Vit,
}

impl std::str::FromStr for InitScheme {
    type Err = crate::error::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "upstream" => Ok(Self::Upstream),
            "vit" => Ok(Self::Vit),
            other => Err(crate::error::Error::Config(format!("init '{other}' is not valid: expected upstream or vit"))),
        }
    }
}

/// How a fresh parameter is filled.
#[derive(Debug, Clone, Copy)]
pub enum Init {
    Zeros,
    Ones,
    /// Normal(0, std) cut at +-2 std, as timm/mmpretrain's `trunc_normal_` (std 0.02 for ViTs).
    TruncNormal {
        std: f64,
    },
    Normal {
        std: f64,
    },
    /// Uniform(-bound, bound): PyTorch's default for Linear/Conv weights and biases (1/sqrt(fan_in)).
    Uniform {
        bound: f64,
    },
}

pub struct Param {
    pub name: String,
    pub var: Var,
    pub trainable: bool,
    pub group: Group,
    /// Depth in the encoder, for layer-wise learning-rate decay: 0 the patch and position
    /// embeddings, i + 1 block i, depth + 1 the final norm; None in the head.
    pub layer: Option<usize>,
    /// Whether weight decay applies under Sapiens' recipe, which spares biases, norms and the
    /// position embedding.
    pub decays: bool,
}

pub struct ParamStore {
    params: Vec<Param>,
    index: HashMap<String, usize>,
    device: Device,
    rng: ChaCha8Rng,
    /// Where the parameters created next belong.
    placement: (Group, Option<usize>),
    /// Parameters whose f32 values were let go (the model keeps them in another form), with
    /// their shapes: still counted, never saved, loaded or trained.
    released: Vec<(String, Vec<usize>)>,
    /// The precision the released parameters are held in instead ("bf16", "int8").
    released_as: &'static str,
    /// Whether every parameter is about to be set from a file: created as zeros then, without
    /// drawing from the RNG (sapiens-0.3b's init takes 3 of the 4 seconds a load takes).
    values_from_file: bool,
}

impl ParamStore {
    pub fn new(device: &Device, seed: u64) -> Self {
        Self {
            params: Vec::new(),
            index: HashMap::new(),
            device: device.clone(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            placement: (Group::Decoder, None),
            released: Vec::new(),
            released_as: "",
            values_from_file: false,
        }
    }

    /// A store whose every parameter a weights file will set next: parameters are created as
    /// zeros instead of drawn. Only for a load that replaces all of them (a load that fails
    /// leaves zeros behind, so its model must be dropped).
    pub fn for_values_from_file(device: &Device) -> Self {
        Self { values_from_file: true, ..Self::new(device, 0) }
    }

    /// The optimizer group and encoder depth of the parameters created from now on.
    pub fn place(&mut self, group: Group, layer: Option<usize>) {
        self.placement = (group, layer);
    }

    /// The encoder's depth as its parameters were placed (0 without an encoder).
    pub fn encoder_depth(&self) -> usize {
        self.params.iter().filter_map(|p| p.layer).max().map_or(0, |top| top.saturating_sub(1))
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Creates a trainable parameter and returns the tensor the model computes with. Weight
    /// decay applies to matrices and kernels; vectors (biases, norms) are spared from it under
    /// Sapiens' recipe.
    pub fn add(&mut self, name: &str, shape: impl Into<Shape>, init: Init) -> Result<Tensor> {
        let shape = shape.into();
        let decays = shape.rank() > 1;
        self.create(name, shape, init, true, decays)
    }

    /// A trainable parameter that Sapiens' recipe spares from weight decay (the position
    /// embedding).
    pub fn add_no_decay(&mut self, name: &str, shape: impl Into<Shape>, init: Init) -> Result<Tensor> {
        self.create(name, shape.into(), init, true, false)
    }

    /// A parameter that is saved and loaded but never trained (ML-Decoder's `query_embed`).
    /// The model must use it through `detach()`, so backward never reaches it.
    pub fn add_frozen(&mut self, name: &str, shape: impl Into<Shape>, init: Init) -> Result<Tensor> {
        self.create(name, shape.into(), init, false, false)
    }

    fn create(&mut self, name: &str, shape: Shape, init: Init, trainable: bool, decays: bool) -> Result<Tensor> {
        assert!(!self.index.contains_key(name), "parameter {name} created twice");
        let n = shape.elem_count();
        let init = if self.values_from_file { Init::Zeros } else { init };
        let values: Vec<f32> = match init {
            Init::Zeros => vec![0.0; n],
            Init::Ones => vec![1.0; n],
            Init::Normal { std } => (0..n).map(|_| (self.normal() * std) as f32).collect(),
            Init::TruncNormal { std } => (0..n)
                .map(|_| loop {
                    let z = self.normal();
                    if z.abs() <= 2.0 {
                        break (z * std) as f32;
                    }
                })
                .collect(),
            Init::Uniform { bound } => (0..n).map(|_| self.rng.random_range(-bound..=bound) as f32).collect(),
        };
        let var = Var::from_tensor(&Tensor::from_vec(values, shape, &self.device)?)?;
        let tensor = var.as_tensor().clone();
        self.index.insert(name.to_string(), self.params.len());
        let (group, layer) = self.placement;
        self.params.push(Param { name: name.to_string(), var, trainable, group, layer, decays });
        Ok(tensor)
    }

    fn normal(&mut self) -> f64 {
        StandardNormal.sample(&mut self.rng)
    }

    pub fn get(&self, name: &str) -> Option<&Param> {
        self.index.get(name).map(|&i| &self.params[i])
    }

    pub fn iter(&self) -> impl Iterator<Item = &Param> {
        self.params.iter()
    }

    pub fn trainable(&self) -> impl Iterator<Item = &Param> {
        self.params.iter().filter(|p| p.trainable)
    }

    pub fn len(&self) -> usize {
        self.params.len()
    }

    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    /// Number of scalars, in total and in the trainable parameters only (the released ones
    /// included: they were trainable parameters and are still the model's).
    pub fn counts(&self) -> (usize, usize) {
        let released: usize = self.released.iter().map(|(_, dims)| dims.iter().product::<usize>()).sum();
        let total = self.params.iter().map(|p| p.var.elem_count()).sum::<usize>() + released;
        let trainable = self.trainable().map(|p| p.var.elem_count()).sum::<usize>() + released;
        (total, trainable)
    }

    /// Lets go of the parameter that `tensor` is (the same storage, as the model holds it):
    /// the store keeps its name and shape only, so once the model drops its own handle the f32
    /// values are freed. For a model that keeps the values in another form (a Linear's bf16
    /// or int8 packing, named by `held_as`) and will never save, load or train them. Returns the
    /// parameter's name.
    pub fn release(&mut self, tensor: &Tensor, held_as: &'static str) -> Result<String> {
        let at = self.params.iter().position(|p| p.var.as_tensor().id() == tensor.id()).ok_or_else(|| {
            crate::error::Error::Internal(format!("release: a tensor of shape {:?} is no parameter", tensor.dims()))
        })?;
        let param = self.params.remove(at);
        self.index = self.params.iter().enumerate().map(|(i, p)| (p.name.clone(), i)).collect();
        self.released.push((param.name.clone(), param.var.dims().to_vec()));
        self.released_as = held_as;
        Ok(param.name)
    }

    /// The parameters let go of by [`ParamStore::release`], with their shapes.
    pub fn released(&self) -> &[(String, Vec<usize>)] {
        &self.released
    }

    /// An error naming what cannot be done (`to`, e.g. "save the weights") where some
    /// parameters' f32 values were let go; Ok where all are here.
    pub fn check_all_held(&self, to: &str) -> Result<()> {
        match self.released.first() {
            None => Ok(()),
            Some((first, _)) => {
                let (count, held_as) = (self.released.len(), self.released_as);
                let (kernel, or_for_training) = match held_as {
                    "int8" => ("VNNI", ""),
                    _ => ("bf16 products", ", or for training (`forTraining`),"),
                };
                Err(crate::error::Error::Config(format!(
                    "cannot {to}: this model holds {count} Linear weights ({first}, ...) only in {held_as}, for \
                     inference on the CPU's {kernel} (precision '{held_as}'); load it with precision 'f32'{or_for_training} \
                     to {to}"
                )))
            }
        }
    }

    /// All parameters as detached tensors by name (for saving).
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.params.iter().map(|p| (p.name.clone(), p.var.as_detached_tensor())).collect()
    }

    /// Sets every parameter under `to` (a name prefix) to the value of the same-named one
    /// under `from`: a deep copy of a module, as PyTorch's `copy.deepcopy` of a layer.
    pub fn copy_module(&self, from: &str, to: &str) -> Result<()> {
        for p in self.params.iter().filter(|p| p.name.starts_with(from)) {
            let target = format!("{to}{}", &p.name[from.len()..]);
            assert!(self.index.contains_key(&target), "copy_module: {target} does not exist");
            self.set(&target, &p.var.as_detached_tensor().copy()?)?;
        }
        Ok(())
    }

    /// Overwrites one parameter in place; shape must match (checked by the caller with the
    /// file's name in the message), dtype and device are converted here.
    pub fn set(&self, name: &str, value: &Tensor) -> Result<()> {
        let p = self.get(name).expect("caller checked the name");
        let value = value.to_dtype(DType::F32)?.to_device(&self.device)?;
        note_weights_changed();
        p.var.set(&value)?;
        Ok(())
    }
}

/// Counts the changes to any parameter in this process: what a copy derived from a weight
/// (the bf16 packing of [`crate::nn::layers::Linear`]) compares to know it is still current.
static WEIGHTS_GENERATION: AtomicU64 = AtomicU64::new(0);

/// The current count of parameter changes.
pub fn weights_generation() -> u64 {
    WEIGHTS_GENERATION.load(Ordering::Acquire)
}

/// Records that some parameter's values changed (or are about to): every derived copy made
/// before is stale.
pub fn note_weights_changed() {
    WEIGHTS_GENERATION.fetch_add(1, Ordering::AcqRel);
}

/// PyTorch's default bound for `nn.Linear`/`nn.Conv2d` weights and biases: 1/sqrt(fan_in).
pub fn torch_default_bound(fan_in: usize) -> Init {
    Init::Uniform { bound: 1.0 / (fan_in as f64).sqrt() }
}
