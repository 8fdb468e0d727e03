//! A safetensors file read one tensor at a time: its header (shapes, metadata) is read and
//! checked once, the tensors' bytes only when asked for.
//!
//! candle's reader takes the whole file into memory and makes every tensor from it before
//! the first one is used: loading sapiens-0.3b's 1.27 GB of weights held the file, its
//! tensors and the model at once (3.8 GB). Here the header is read and checked first (every
//! tensor's dtype, shape and byte range inside the file), then each tensor's bytes are read
//! when it is asked for, so a load holds the model and one tensor. The file is read, not
//! mapped: a file cut short while it is read gives an error, never a SIGBUS in the host.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// Headers larger than this are refused (the safetensors format's own limit).
const MAX_HEADER_BYTES: u64 = 100 << 20;

/// One tensor's entry in the header.
#[derive(Debug, Clone)]
struct Entry {
    /// None for a dtype candle cannot hold (a bool mask, say): an error only if it is read.
    dtype: Option<DType>,
    dtype_name: String,
    shape: Vec<usize>,
    /// Byte offset from the start of the file, and length.
    start: u64,
    len: usize,
}

pub struct SafetensorsFile {
    path: PathBuf,
    file: File,
    entries: HashMap<String, Entry>,
    /// The header's `__metadata__`: its string values by key.
    metadata: HashMap<String, String>,
}

fn candle_dtype(name: &str) -> Option<(DType, usize)> {
    Some(match name {
        "F64" => (DType::F64, 8),
        "F32" => (DType::F32, 4),
        "F16" => (DType::F16, 2),
        "BF16" => (DType::BF16, 2),
        "I64" => (DType::I64, 8),
        "U32" => (DType::U32, 4),
        "U8" => (DType::U8, 1),
        _ => return None,
    })
}

/// Bytes an element of a dtype the format names takes, for dtypes candle cannot hold too.
fn element_bytes(name: &str) -> Option<usize> {
    candle_dtype(name).map(|(_, n)| n).or(match name {
        "BOOL" | "I8" | "F8_E4M3" | "F8_E5M2" => Some(1),
        "I16" | "U16" => Some(2),
        "I32" => Some(4),
        "U64" => Some(8),
        _ => None,
    })
}

impl SafetensorsFile {
    /// Opens `path` and checks its header against the file's length; reads no tensor data.
    pub fn open(path: &Path) -> Result<Self> {
        let name = path.display().to_string();
        // Anything but a zip comes here (weights.rs), so the error names both formats.
        let bad = |what: String| {
            Error::Weights(format!("{name}: neither a safetensors file nor a zip-format PyTorch checkpoint ({what})"))
        };
        let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut len = [0u8; 8];
        file.read_exact(&mut len).map_err(|_| bad("shorter than its 8-byte header length".into()))?;
        let header_len = u64::from_le_bytes(len);
        if header_len > MAX_HEADER_BYTES || 8 + header_len > file_len {
            return Err(bad(format!("header length {header_len} in a file of {file_len} bytes")));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header).map_err(|e| Error::io(path, e))?;
        let header: serde_json::Value = serde_json::from_slice(&header).map_err(|e| bad(format!("header: {e}")))?;
        let object = header.as_object().ok_or_else(|| bad("the header is not a JSON object".into()))?;
        let data_start = 8 + header_len;
        let mut entries = HashMap::new();
        for (key, value) in object.iter().filter(|(key, _)| key.as_str() != "__metadata__") {
            let field = |what: &str| bad(format!("tensor {key}: {what}"));
            let dtype_name = value.get("dtype").and_then(|d| d.as_str()).ok_or_else(|| field("no dtype"))?;
            let element = element_bytes(dtype_name).ok_or_else(|| field(&format!("unknown dtype {dtype_name}")))?;
            let shape = value
                .get("shape")
                .and_then(|s| s.as_array())
                .and_then(|dims| dims.iter().map(|d| d.as_u64().map(|d| d as usize)).collect::<Option<Vec<_>>>())
                .ok_or_else(|| field("no valid shape"))?;
            let offsets = value
                .get("data_offsets")
                .and_then(|o| o.as_array())
                .and_then(|o| o.iter().map(|v| v.as_u64()).collect::<Option<Vec<_>>>())
                .filter(|o| o.len() == 2 && o[0] <= o[1])
                .ok_or_else(|| field("no valid data_offsets"))?;
            let expected = shape.iter().try_fold(element, |n, &d| n.checked_mul(d));
            let (start, end) = (offsets[0], offsets[1]);
            if expected != Some((end - start) as usize) {
                return Err(field(&format!("shape {shape:?} of {dtype_name} does not take {} bytes", end - start)));
            }
            if data_start.checked_add(end).is_none_or(|e| e > file_len) {
                return Err(field(&format!("bytes {start}..{end} lie past the file's end ({file_len} bytes)")));
            }
            let dtype = candle_dtype(dtype_name).map(|(d, _)| d);
            let entry = Entry {
                dtype,
                dtype_name: dtype_name.into(),
                shape,
                start: data_start + start,
                len: (end - start) as usize,
            };
            entries.insert(key.clone(), entry);
        }
        let metadata = object.get("__metadata__").and_then(|m| m.as_object()).map_or_else(HashMap::new, |m| {
            m.iter().filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string()))).collect()
        });
        Ok(Self { path: path.to_path_buf(), file, entries, metadata })
    }

    /// The header's `__metadata__` (string values only).
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    /// Every tensor's shape by its key in the file.
    pub fn shapes(&self) -> HashMap<String, Vec<usize>> {
        self.entries.iter().map(|(key, e)| (key.clone(), e.shape.clone())).collect()
    }

    /// Checks that `key` can be read into a tensor (it exists, and candle holds its dtype).
    pub fn check_readable(&self, key: &str) -> Result<()> {
        self.entry(key).map(|_| ())
    }

    fn entry(&self, key: &str) -> Result<&Entry> {
        let name = self.path.display();
        let entry = self.entries.get(key).ok_or_else(|| Error::Weights(format!("{name}: no tensor {key}")))?;
        if entry.dtype.is_none() {
            return Err(Error::Weights(format!(
                "{name}: tensor {key} is {}, a dtype that cannot be loaded",
                entry.dtype_name
            )));
        }
        Ok(entry)
    }

    /// Reads one tensor's values from the file (on the CPU, in the file's dtype).
    pub fn tensor(&self, key: &str) -> Result<Tensor> {
        let entry = self.entry(key)?;
        let mut bytes = vec![0u8; entry.len];
        let mut file = &self.file;
        file.seek(SeekFrom::Start(entry.start)).map_err(|e| Error::io(&self.path, e))?;
        file.read_exact(&mut bytes).map_err(|e| Error::io(&self.path, e))?;
        let dtype = entry.dtype.expect("entry() checked the dtype");
        Ok(Tensor::from_raw_buffer(&bytes, dtype, &entry.shape, &Device::Cpu)?)
    }
}
