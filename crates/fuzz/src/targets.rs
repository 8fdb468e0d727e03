//! The readers of untrusted files in the core, each as a fuzz target: how an input is mutated
//! (aware of its container where that reaches deeper than random bytes would) and how it is
//! read. A target's `run` must return, Ok or Err: a panic that escapes it, or an abort, is a
//! crash.

use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};

use crate::mutate::{self, Rng, INTERESTING};

pub trait Target {
    fn name(&self) -> &'static str;
    /// The extension of the file the input is written to (readers look at it).
    fn extension(&self) -> &'static str;
    fn seeds(&self) -> Vec<Vec<u8>>;
    fn mutate(&self, input: &[u8], other: &[u8], rng: &mut Rng) -> Vec<u8>;
    fn run(&mut self, path: &Path) -> motivnet::Result<()>;
}

fn read_seed(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read the seed {}: {e}", path.display()))
}

/// PyTorch `.pth` checkpoints: a zip archive holding a pickle (`data.pkl`) and one member per
/// tensor's storage. Random bytes mostly break the archive, so most mutations open it, change
/// one member (the pickle more often than not) and write the archive again.
pub struct Pth {
    pub fixtures: PathBuf,
}

impl Target for Pth {
    fn name(&self) -> &'static str {
        "pth"
    }
    fn extension(&self) -> &'static str {
        "pth"
    }
    fn seeds(&self) -> Vec<Vec<u8>> {
        ["short_rebuild_tuple.pth", "motivnet7.pth", "sapiens_backbone.pth", "weights.pth"]
            .iter()
            .map(|f| read_seed(&self.fixtures.join(f)))
            .collect()
    }
    fn mutate(&self, input: &[u8], other: &[u8], rng: &mut Rng) -> Vec<u8> {
        if rng.chance(70) {
            if let Some(out) = mutate_member(input, other, rng) {
                return out;
            }
        }
        mutate::bytes(input, other, rng)
    }
    fn run(&mut self, path: &Path) -> motivnet::Result<()> {
        motivnet::io::weights::read_shapes(path)?;
        motivnet::io::weights::read_tensors(path)?;
        Ok(())
    }
}

/// The archive with one member mutated (or dropped, or renamed), written again with stored
/// entries and correct checksums; None if `input` is not a readable archive.
fn mutate_member(input: &[u8], other: &[u8], rng: &mut Rng) -> Option<Vec<u8>> {
    let mut archive = zip::ZipArchive::new(Cursor::new(input)).ok()?;
    let mut members = Vec::new();
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).ok()?;
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).ok()?;
        members.push((entry.name().ok()?.to_string(), bytes));
    }
    if members.is_empty() {
        return None;
    }
    let pickle = members.iter().position(|(name, _)| name.ends_with("data.pkl"));
    let at = match pickle {
        Some(p) if rng.chance(70) => p,
        _ => rng.below(members.len()),
    };
    match rng.below(10) {
        0 => {
            members.remove(at);
        }
        1 => members[at].0.push_str(if rng.chance(50) { "x" } else { "/../x" }),
        _ => members[at].1 = mutate::bytes(&members[at].1, other, rng),
    }
    let mut out = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in &members {
        out.start_file(name.as_str(), options).ok()?;
        out.write_all(bytes).ok()?;
    }
    out.finish().ok().map(|c| c.into_inner())
}

/// A safetensors file split into its JSON header and its data, if it has that shape.
fn split_safetensors(input: &[u8]) -> Option<(String, &[u8])> {
    let len = u64::from_le_bytes(input.get(..8)?.try_into().ok()?) as usize;
    let header = std::str::from_utf8(input.get(8..8usize.checked_add(len)?)?).ok()?;
    Some((header.to_string(), &input[8 + len..]))
}

/// Mutations of a safetensors file: the header's numbers (shapes, offsets) and dtypes set to
/// edge values, its text edited, its length prefix changed, or random bytes anywhere.
fn mutate_safetensors(input: &[u8], other: &[u8], rng: &mut Rng) -> Vec<u8> {
    let Some((mut header, data)) = split_safetensors(input).filter(|_| rng.chance(75)) else {
        return mutate::bytes(input, other, rng);
    };
    match rng.below(4) {
        0 => {
            // A number of the header (a shape's dimension, an offset) set to an edge value.
            let numbers: Vec<(usize, usize)> = number_spans(&header);
            if let Some(&(start, end)) = (!numbers.is_empty()).then(|| rng.pick(&numbers)) {
                let value = match rng.below(4) {
                    0 => format!("-{}", rng.pick(&INTERESTING)),
                    1 => "1e308".to_string(),
                    _ => rng.pick(&INTERESTING).to_string(),
                };
                header.replace_range(start..end, &value);
            }
        }
        1 => {
            const DTYPES: [&str; 10] = ["F32", "F16", "BF16", "F64", "I64", "I32", "U8", "BOOL", "F8_E4M3", "Q4"];
            for dtype in DTYPES {
                let quoted = format!("\"{dtype}\"");
                if let Some(at) = header.find(&quoted) {
                    header.replace_range(at..at + quoted.len(), &format!("\"{}\"", rng.pick(&DTYPES)));
                    break;
                }
            }
        }
        2 => {
            let edited = mutate::bytes(header.as_bytes(), other, rng);
            header = String::from_utf8_lossy(&edited).into_owned();
        }
        _ => {
            // The length prefix no longer matches the header.
            let mut out = rng.pick(&INTERESTING).to_le_bytes().to_vec();
            out.extend_from_slice(header.as_bytes());
            out.extend_from_slice(data);
            return out;
        }
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// Byte spans of the unsigned integers in a text.
fn number_spans(text: &str) -> Vec<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut spans = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            spans.push((start, i));
        } else {
            i += 1;
        }
    }
    spans
}

/// safetensors weights: header, tensors and metadata.
pub struct Safetensors {
    pub fixtures: PathBuf,
}

impl Target for Safetensors {
    fn name(&self) -> &'static str {
        "safetensors"
    }
    fn extension(&self) -> &'static str {
        "safetensors"
    }
    fn seeds(&self) -> Vec<Vec<u8>> {
        ["motivnet7_expected.safetensors", "pos_embed_resized.safetensors", "weights.safetensors"]
            .iter()
            .map(|f| read_seed(&self.fixtures.join(f)))
            .collect()
    }
    fn mutate(&self, input: &[u8], other: &[u8], rng: &mut Rng) -> Vec<u8> {
        mutate_safetensors(input, other, rng)
    }
    fn run(&mut self, path: &Path) -> motivnet::Result<()> {
        // The reader a model's load uses (the header checked whole, then each tensor read), on
        // every input, whatever candle's reader makes of it.
        let streamed = (|| {
            let file = motivnet::io::safetensors_file::SafetensorsFile::open(path)?;
            for key in file.shapes().keys() {
                if file.check_readable(key).is_ok() {
                    file.tensor(key)?;
                }
            }
            Ok(())
        })();
        motivnet::io::weights::read_shapes(path)?;
        motivnet::io::weights::read_tensors(path)?;
        motivnet::io::weights::read_metadata(path)?;
        streamed
    }
}

/// A training state (`saveState`): safetensors holding weights, optimizer moments, RNG and
/// accumulation, restored all or nothing into a small trainer.
pub struct State {
    trainer: motivnet::Trainer,
    seed: Vec<u8>,
}

impl State {
    pub fn new(fixtures: &Path, work: &Path) -> motivnet::Result<Self> {
        let spec = fixtures.join("config.json").display().to_string();
        let config = motivnet::ModelConfig::from_preset_or_file(&spec)?;
        let model = motivnet::MotivNet::new(&config, &motivnet::candle::Device::Cpu, 0)?;
        let trainer = motivnet::Trainer::new(model, motivnet::TrainerConfig::default());
        let path = work.join("state-seed.safetensors");
        trainer.save_state(&path, Some("{\"epoch\":1}"))?;
        let seed =
            std::fs::read(&path).map_err(|e| motivnet::Error::Io { path: path.display().to_string(), source: e })?;
        std::fs::remove_file(&path).ok();
        Ok(Self { trainer, seed })
    }
}

impl Target for State {
    fn name(&self) -> &'static str {
        "state"
    }
    fn extension(&self) -> &'static str {
        "safetensors"
    }
    fn seeds(&self) -> Vec<Vec<u8>> {
        vec![self.seed.clone()]
    }
    fn mutate(&self, input: &[u8], other: &[u8], rng: &mut Rng) -> Vec<u8> {
        mutate_safetensors(input, other, rng)
    }
    fn run(&mut self, path: &Path) -> motivnet::Result<()> {
        self.trainer.load_state(path).map(|_| ())
    }
}
