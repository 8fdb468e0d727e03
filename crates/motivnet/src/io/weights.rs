//! Checkpoints: safetensors and PyTorch `.pth` state dicts with the reference's names.
//!
//! Layouts read: a MotivNet checkpoint (`pose_encoder.*`, `decoder.decoder.*`), optionally
//! wrapped in `state_dict` and prefixed `module.`/`model.`; a Sapiens (mmpretrain/mmpose)
//! checkpoint (`backbone.*`, patch conv at `backbone.patch_embed.projection`), which loads the
//! encoder alone and leaves the head freshly initialised; ML-Decoder's original
//! `multihead_attn` for `self_attn`. A position embedding for another grid (with or without a
//! class-token slot) is resized bicubically as mmpretrain's `resize_pos_embed` does.
//! `.pth` files are read without running pickled code. Written: safetensors with the MotivNet
//! names, so the PyTorch reference loads our files.
//!
//! Loading is all or nothing: every missing, unexpected and mis-shaped key is listed in one
//! error naming the file, and the model is left untouched. A file is read one tensor at a
//! time as each parameter is set, after all of it has been checked against the model, so it
//! is never held whole beside the model; only a read that fails midway (the disk itself) can
//! leave a load half done.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::pos_embed::resize_pos_embed;
use super::pth_guard;
use super::safetensors_file::SafetensorsFile;
use crate::error::{catch_panic, Error, Result};
use crate::keys::{DECODER as DECODER_PREFIX, ENCODER as ENCODER_PREFIX, STATE as STATE_PREFIXES};
use crate::nn::params::ParamStore;

#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Load `pose_encoder.*` only; the head keeps its fresh initialisation.
    pub encoder_only: bool,
    /// The model's patch grid (rows, columns), to resize a position embedding of another grid.
    pub grid: Option<(usize, usize)>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadReport {
    pub loaded: usize,
    /// Keys in the file that the model has no use for and that were skipped on purpose
    /// (a Sapiens checkpoint's pose head, its class token).
    pub ignored: Vec<String>,
    /// Parameters resized on load, with the file's shape.
    pub resized: Vec<(String, Vec<usize>)>,
    /// True when the head was not in the file (encoder-only load).
    pub head_initialised: bool,
}

/// The two containers weights come in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Container {
    Safetensors,
    /// A zip-format `torch.save` file.
    Pth,
}

/// Which container `path` is, or an error for what cannot be read without PyTorch.
fn container(path: &Path) -> Result<Container> {
    let file = path.display().to_string();
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic).map_err(|e| Error::io(path, e))?;
    if n < 4 {
        return Err(Error::Weights(format!("{file}: file is {n} bytes long, not a weights file")));
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ext == "pt2" {
        return Err(Error::Weights(format!(
            "{file}: a torch.export archive cannot be read without PyTorch; convert it to safetensors first \
             (load it in Python and save its state_dict)"
        )));
    }
    if &magic != b"PK\x03\x04" {
        return Ok(Container::Safetensors);
    }
    if is_torchscript(&mut f).map_err(|e| Error::io(path, e))? {
        return Err(Error::Weights(format!(
            "{file}: a TorchScript archive, which cannot be read without PyTorch (its tensors would read as \
             zeros); convert it to safetensors first (torch.jit.load(...).state_dict())"
        )));
    }
    Ok(Container::Pth)
}

/// Reads every tensor of a safetensors or `.pth` file onto the CPU, by the file's own keys.
/// A file malformed enough to make a reader panic (candle's pickle reader does on some) is an
/// error naming it, not a crash.
pub fn read_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    let file = path.display().to_string();
    catch_panic(
        || read_tensors_unguarded(path),
        |why| Error::Weights(format!("{file}: a malformed weights file ({why})")),
    )
}

fn read_tensors_unguarded(path: &Path) -> Result<HashMap<String, Tensor>> {
    let file = path.display().to_string();
    if container(path)? == Container::Safetensors {
        return candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| {
            Error::Weights(format!("{file}: neither a safetensors file nor a zip-format PyTorch checkpoint ({e})"))
        });
    }
    let pth = PthFile::open(path)?;
    pth.shapes().keys().map(|key| Ok((key.clone(), pth.tensor(key)?))).collect()
}

/// A zip-format `torch.save` state dict, read one tensor at a time.
struct PthFile {
    file: String,
    tensors: candle_core::pickle::PthTensors,
}

impl PthFile {
    /// Reads the pickled index (no tensor data) after pth_guard's checks of the whole archive.
    fn open(path: &Path) -> Result<Self> {
        let file = path.display().to_string();
        // candle's reader trusts the file's lengths and shapes: checked first (pth_guard.rs).
        pth_guard::check_archive(path)?;
        let infos = |key| candle_core::pickle::read_pth_tensor_info(path, false, key);
        // mmpose/Lightning checkpoints wrap the weights in `state_dict`; plain state dicts do not.
        let key = match infos(Some("state_dict")) {
            Ok(i) if !i.is_empty() => {
                pth_guard::check_tensors(path, &i)?;
                Some("state_dict")
            }
            _ => {
                pth_guard::check_tensors(path, &infos(None).unwrap_or_default())?;
                None
            }
        };
        let unreadable =
            |e: candle_core::Error| Error::Weights(format!("{file}: not a readable PyTorch state dict ({e})"));
        let tensors = candle_core::pickle::PthTensors::new(path, key).map_err(unreadable)?;
        if tensors.tensor_infos().is_empty() {
            return Err(Error::Weights(format!("{file}: the checkpoint holds no tensors")));
        }
        Ok(Self { file, tensors })
    }
}

impl TensorSource for PthFile {
    fn shapes(&self) -> HashMap<String, Vec<usize>> {
        self.tensors.tensor_infos().iter().map(|(key, info)| (key.clone(), info.layout.dims().to_vec())).collect()
    }

    fn check(&self, _key: &str) -> Result<()> {
        Ok(()) // pth_guard checked every tensor against its storage
    }

    fn tensor(&self, key: &str) -> Result<Tensor> {
        let file = &self.file;
        catch_panic(
            || {
                self.tensors
                    .get(key)
                    .map_err(|e| Error::Weights(format!("{file}: tensor {key} is not readable ({e})")))?
                    .ok_or_else(|| Error::Weights(format!("{file}: tensor {key} is not readable")))
            },
            |why| Error::Weights(format!("{file}: a malformed weights file ({why})")),
        )
    }
}

/// Every tensor's shape, by the file's own keys, without reading tensor data: the header of a
/// safetensors file, the pickled index of a `.pth` one.
pub fn read_shapes(path: &Path) -> Result<HashMap<String, Vec<usize>>> {
    let file = path.display().to_string();
    catch_panic(
        || read_shapes_unguarded(path),
        |why| Error::Weights(format!("{file}: a malformed weights file ({why})")),
    )
}

fn read_shapes_unguarded(path: &Path) -> Result<HashMap<String, Vec<usize>>> {
    let file = path.display().to_string();
    if container(path)? == Container::Safetensors {
        return Ok(SafetensorsFile::open(path)?.shapes());
    }
    pth_guard::check_archive(path)?;
    let infos = |key| candle_core::pickle::read_pth_tensor_info(path, false, key);
    let infos = match infos(Some("state_dict")) {
        Ok(infos) if !infos.is_empty() => infos,
        _ => infos(None).map_err(|e| Error::Weights(format!("{file}: not a readable PyTorch state dict ({e})")))?,
    };
    if infos.is_empty() {
        return Err(Error::Weights(format!("{file}: the checkpoint holds no tensors")));
    }
    Ok(infos.into_iter().map(|info| (info.name, info.layout.dims().to_vec())).collect())
}

/// The model-side names of a file's keys (see [`canonical`]), for the keys that are weights.
pub fn canonical_shapes(shapes: &HashMap<String, Vec<usize>>) -> BTreeMap<String, Vec<usize>> {
    shapes
        .iter()
        .filter_map(|(key, shape)| match canonical(key) {
            KeyKind::Ours(name) => Some((name, shape.clone())),
            KeyKind::Ignored | KeyKind::State => None,
        })
        .collect()
}

/// TorchScript zips carry `constants.pkl` and a `code/` folder; the names sit in the zip's
/// central directory at the end of the file, so only the tail is read.
fn is_torchscript(f: &mut std::fs::File) -> std::io::Result<bool> {
    let len = f.seek(SeekFrom::End(0))?;
    let tail = len.min(1 << 20);
    f.seek(SeekFrom::Start(len - tail))?;
    let mut buf = Vec::with_capacity(tail as usize);
    f.take(tail).read_to_end(&mut buf)?;
    let has = |needle: &[u8]| buf.windows(needle.len()).any(|w| w == needle);
    Ok(has(b"/constants.pkl") && has(b"/code/"))
}

/// Which layout a key comes from, and its name in ours.
enum KeyKind {
    Ours(String),
    /// Part of a Sapiens checkpoint that a classifier does not use.
    Ignored,
    /// Our own training-state bookkeeping.
    State,
}

fn canonical(key: &str) -> KeyKind {
    if STATE_PREFIXES.iter().any(|p| key.starts_with(p)) {
        return KeyKind::State;
    }
    let mut k = key;
    for wrapper in ["module.", "model."] {
        k = k.strip_prefix(wrapper).unwrap_or(k);
    }
    let k = if let Some(rest) = k.strip_prefix("backbone.") {
        if rest == "cls_token" {
            return KeyKind::Ignored;
        }
        let rest = rest.strip_prefix("patch_embed.").unwrap_or(rest);
        format!("{ENCODER_PREFIX}{rest}")
    } else if k.starts_with("head.") || k.starts_with("data_preprocessor.") {
        return KeyKind::Ignored;
    } else {
        k.to_string()
    };
    KeyKind::Ours(k.replace(".multihead_attn.", ".self_attn."))
}

/// Loads the tensors of `source` (read from `file`) into the parameters, or changes nothing
/// and lists every problem.
pub fn load_into(params: &ParamStore, source: &dyn TensorSource, opts: &LoadOptions, file: &str) -> Result<LoadReport> {
    params.check_all_held("load weights")?;
    let mut report = LoadReport::default();
    let shapes = source.shapes();
    let mut by_name: BTreeMap<String, (&str, &[usize])> = BTreeMap::new();
    let mut sapiens_layout = false;
    for (key, dims) in &shapes {
        sapiens_layout |= key.starts_with("backbone.");
        match canonical(key) {
            KeyKind::Ours(name) => {
                if let Some((other, _)) = by_name.insert(name.clone(), (key, dims)) {
                    return Err(Error::Weights(format!("{file}: keys {other} and {key} both map to parameter {name}")));
                }
            }
            KeyKind::Ignored => report.ignored.push(key.clone()),
            KeyKind::State => {}
        }
    }
    let has_head = by_name.keys().any(|k| k.starts_with(DECODER_PREFIX));
    let encoder_only = opts.encoder_only || (sapiens_layout && !has_head);
    report.head_initialised = encoder_only;
    let in_scope = |name: &str| !encoder_only || name.starts_with(ENCODER_PREFIX);

    let mut missing = Vec::new();
    let mut misshaped = Vec::new();
    let mut planned: Vec<(&str, Planned)> = Vec::new();
    for p in params.iter().filter(|p| in_scope(&p.name)) {
        let Some(&(key, dims)) = by_name.get(&p.name) else {
            missing.push(p.name.clone());
            continue;
        };
        if dims == p.var.dims() {
            source.check(key)?;
            planned.push((&p.name, Planned::FromSource(key)));
        } else if let (true, Some(grid)) = (p.name.ends_with("pos_embed"), opts.grid) {
            // Small (one row per patch): read now, so that a grid that cannot be resized is
            // reported with the rest before anything changes.
            match resize_pos_embed(&source.tensor(key)?, grid) {
                Ok(resized) => {
                    report.resized.push((p.name.clone(), dims.to_vec()));
                    planned.push((&p.name, Planned::Resized(resized)));
                }
                Err(why) => misshaped.push(format!("{}: file {dims:?}, model {:?} ({why})", p.name, p.var.dims())),
            }
        } else {
            misshaped.push(format!("{}: file {dims:?}, model {:?}", p.name, p.var.dims()));
        }
    }
    let mut unexpected: Vec<String> = by_name
        .iter()
        .filter(|(name, _)| params.get(name).is_none())
        .filter(|(name, _)| !(encoder_only && sapiens_layout && !name.starts_with(ENCODER_PREFIX)))
        .map(|(name, (key, _))| if name == key { name.clone() } else { format!("{key} (as {name})") })
        .collect();
    unexpected.sort();
    if !missing.is_empty() || !unexpected.is_empty() || !misshaped.is_empty() {
        let mut msg = format!("{file}: the weights do not fit this model");
        let mut section = |title: &str, items: &[String]| {
            if !items.is_empty() {
                msg.push_str(&format!("\n  {title} ({}): {}", items.len(), items.join(", ")));
            }
        };
        section("missing keys", &missing);
        section("unexpected keys", &unexpected);
        section("mis-shaped keys", &misshaped);
        if !missing.is_empty() && missing.iter().all(|m| m.starts_with(DECODER_PREFIX)) {
            msg.push_str("\n  (to fine-tune from an encoder-only checkpoint, load it with the encoder-only option)");
        }
        return Err(Error::Weights(msg));
    }
    // One tensor at a time: read, set, dropped before the next is read.
    for (name, planned) in planned {
        let t = match planned {
            Planned::FromSource(key) => source.tensor(key)?,
            Planned::Resized(t) => t,
        };
        params.set(name, &t)?;
        report.loaded += 1;
    }
    Ok(report)
}

/// What [`load_into`] sets a parameter to.
enum Planned<'a> {
    /// The file's tensor under this key, as it is.
    FromSource(&'a str),
    /// A position embedding resized to the model's grid.
    Resized(Tensor),
}

/// Where [`load_into`] reads weights: every key's shape first, so that the whole file is
/// checked against the model before any parameter changes, then each tensor as it is set.
pub trait TensorSource {
    /// Every tensor's shape by its key.
    fn shapes(&self) -> HashMap<String, Vec<usize>>;
    /// Whether the tensor under `key` can be read: checked for every key before the first is
    /// set, so that what fails afterwards is only the disk itself.
    fn check(&self, key: &str) -> Result<()>;
    /// The tensor under `key`.
    fn tensor(&self, key: &str) -> Result<Tensor>;
}

/// Tensors already in memory (a training state, read whole to check every part of it).
impl TensorSource for HashMap<String, Tensor> {
    fn shapes(&self) -> HashMap<String, Vec<usize>> {
        self.iter().map(|(key, t)| (key.clone(), t.dims().to_vec())).collect()
    }

    fn check(&self, _key: &str) -> Result<()> {
        Ok(())
    }

    fn tensor(&self, key: &str) -> Result<Tensor> {
        Ok(self.get(key).expect("load_into asks only for keys it was given").clone())
    }
}

/// A safetensors file, read one tensor at a time.
impl TensorSource for SafetensorsFile {
    fn shapes(&self) -> HashMap<String, Vec<usize>> {
        SafetensorsFile::shapes(self)
    }

    fn check(&self, key: &str) -> Result<()> {
        self.check_readable(key)
    }

    fn tensor(&self, key: &str) -> Result<Tensor> {
        SafetensorsFile::tensor(self, key)
    }
}

/// Reads `path` and loads it into `params`.
pub fn load_file(params: &ParamStore, path: &Path, opts: &LoadOptions) -> Result<LoadReport> {
    params.check_all_held("load weights")?;
    let file = path.display().to_string();
    // Each tensor read as it is set, never the whole file beside the model.
    let malformed = |why| Error::Weights(format!("{file}: a malformed weights file ({why})"));
    let report = if container(path)? == Container::Safetensors {
        load_into(params, &catch_panic(|| SafetensorsFile::open(path), malformed)?, opts, &file)
    } else {
        load_into(params, &catch_panic(|| PthFile::open(path), malformed)?, opts, &file)
    };
    // The file's bytes and any tensors made from them are freed by now; hand the pages back
    // rather than keep them for a process that may never allocate as much again.
    crate::runtime::malloc::return_free_memory();
    report
}

/// Writes tensors as safetensors durably (see [`super::durable`]): a crash or a power loss
/// mid-write leaves the old checkpoint or the new one under the final name, never a truncated
/// one. `metadata` goes to the file's `__metadata__` header (string to string), read back by
/// [`read_metadata`].
pub fn save_tensors_with_metadata(
    tensors: &HashMap<String, Tensor>,
    metadata: Option<HashMap<String, String>>,
    path: &Path,
) -> Result<()> {
    super::durable::write_safetensors(tensors, metadata.as_ref(), path)
}

pub fn save_tensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    save_tensors_with_metadata(tensors, None, path)
}

/// The `__metadata__` of a safetensors file, reading only its header.
pub fn read_metadata(path: &Path) -> Result<HashMap<String, String>> {
    Ok(SafetensorsFile::open(path)?.metadata().clone())
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConvertReport {
    pub written: usize,
    /// Keys whose name changed (file key, written key).
    pub renamed: Vec<(String, String)>,
    pub ignored: Vec<String>,
}

/// A `.pth` (MotivNet or Sapiens layout) or safetensors file -> safetensors with the MotivNet
/// reference's names, in f32; keys a classifier never uses (a Sapiens pose head) are left out.
pub fn convert_file(input: &Path, output: &Path) -> Result<ConvertReport> {
    let tensors = read_tensors(input)?;
    let mut report = ConvertReport::default();
    let mut out = HashMap::new();
    let mut keys: Vec<&String> = tensors.keys().collect();
    keys.sort();
    for key in keys {
        match canonical(key) {
            KeyKind::Ours(name) => {
                if &name != key {
                    report.renamed.push((key.clone(), name.clone()));
                }
                if out.insert(name.clone(), tensors[key].to_dtype(DType::F32)?).is_some() {
                    return Err(Error::Weights(format!("{}: two keys map to {name}", input.display())));
                }
            }
            KeyKind::Ignored | KeyKind::State => report.ignored.push(key.clone()),
        }
    }
    report.written = out.len();
    save_tensors(&out, output)?;
    Ok(report)
}

/// The model's weights alone, with the MotivNet reference's names.
pub fn save_weights(params: &ParamStore, path: &Path) -> Result<()> {
    params.check_all_held("save the weights")?;
    save_tensors(&params.tensors(), path)
}
