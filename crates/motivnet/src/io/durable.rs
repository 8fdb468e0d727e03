//! Writing a safetensors file durably, streaming one tensor at a time.
//!
//! The file goes to `.NAME.tmp` beside its final name, is flushed to disk, renamed over the
//! final name, and the folder is flushed: after a crash or a power loss the final name holds
//! either the old file or the new one, whole. (The safetensors crate's own writer renames its
//! temporary file into place before flushing it, and a killed process leaves that file under a
//! random name; here the one temporary name is known, and a run folder clears it when it
//! starts.) A failed write removes its temporary file: a training state can be gigabytes.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};

/// The temporary name a save of `path` writes first: `.NAME.tmp` beside it.
pub fn temporary_path(path: &Path) -> PathBuf {
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{file_name}.tmp"))
}

/// Writes `tensors` (on any device; copied to the host one at a time) and `metadata` (the
/// header's `__metadata__`) as safetensors at `path`, durably (see the module's notes).
pub fn write_safetensors(
    tensors: &HashMap<String, Tensor>,
    metadata: Option<&HashMap<String, String>>,
    path: &Path,
) -> Result<()> {
    let tmp = temporary_path(path);
    let written = write_file(tensors, metadata, &tmp).and_then(|()| {
        std::fs::rename(&tmp, path)?;
        Ok(sync_folder(path)?)
    });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(|e| match e {
        WriteError::Io(e) => Error::io(path, e),
        WriteError::Tensor(e) => Error::Weights(format!("{}: cannot write ({e})", path.display())),
    })
}

enum WriteError {
    Io(std::io::Error),
    Tensor(candle_core::Error),
}

impl From<std::io::Error> for WriteError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<candle_core::Error> for WriteError {
    fn from(e: candle_core::Error) -> Self {
        Self::Tensor(e)
    }
}

/// The safetensors name of a dtype.
fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::U8 => "U8",
        DType::U32 => "U32",
        DType::I64 => "I64",
        DType::F32 => "F32",
        DType::F64 => "F64",
        // Refused by `bytes_of` before the header is written.
        _ => "unsupported",
    }
}

/// A tensor's values as little-endian bytes.
fn bytes_of(t: &Tensor) -> candle_core::Result<Vec<u8>> {
    let t = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::U8 => t.to_vec1::<u8>()?,
        DType::U32 => t.to_vec1::<u32>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::I64 => t.to_vec1::<i64>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F32 => f32_bytes(t.to_vec1::<f32>()?),
        DType::F64 => t.to_vec1::<f64>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        // Checkpoints hold f32 parameters and moments and integer bookkeeping only.
        other => candle_core::bail!("a {other:?} tensor: checkpoints are written in f32, f64, u8, u32 or i64"),
    })
}

/// f32 values as little-endian bytes: the same memory on a little-endian machine (one copy
/// instead of a loop over values; a training state holds gigabytes of them).
fn f32_bytes(values: Vec<f32>) -> Vec<u8> {
    if cfg!(target_endian = "little") {
        // SAFETY: any f32 bit pattern is valid bytes, and the slice covers exactly `values`.
        unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), values.len() * 4) }.to_vec()
    } else {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }
}

/// The header, then each tensor's bytes in the header's order, then a flush to disk.
fn write_file(
    tensors: &HashMap<String, Tensor>,
    metadata: Option<&HashMap<String, String>>,
    file: &Path,
) -> std::result::Result<(), WriteError> {
    // Sorted by name: the same tensors always give the same file.
    let ordered: BTreeMap<&str, &Tensor> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let mut header = serde_json::Map::new();
    if let Some(metadata) = metadata {
        let meta: serde_json::Map<String, serde_json::Value> =
            metadata.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
        header.insert("__metadata__".into(), serde_json::Value::Object(meta));
    }
    if let Some((name, t)) = ordered.iter().find(|(_, t)| dtype_name(t.dtype()) == "unsupported") {
        return Err(WriteError::Tensor(candle_core::Error::Msg(format!(
            "{name} is {:?}: checkpoints are written in f32, f64, u8, u32 or i64",
            t.dtype()
        ))));
    }
    let mut offset = 0usize;
    for (name, t) in &ordered {
        let len = t.elem_count() * t.dtype().size_in_bytes();
        header.insert(
            (*name).to_string(),
            serde_json::json!({ "dtype": dtype_name(t.dtype()), "shape": t.dims(), "data_offsets": [offset, offset + len] }),
        );
        offset += len;
    }
    let mut header = serde_json::to_vec(&serde_json::Value::Object(header)).expect("a JSON map serialises");
    // The data starts 8-byte aligned, as the format's writers pad it (with spaces).
    header.resize((8 + header.len()).div_ceil(8) * 8 - 8, b' ');
    let handle = File::create(file)?;
    let mut out = BufWriter::with_capacity(1 << 20, &handle);
    out.write_all(&(header.len() as u64).to_le_bytes())?;
    out.write_all(&header)?;
    for t in ordered.values() {
        out.write_all(&bytes_of(t)?)?;
    }
    out.flush()?;
    drop(out);
    handle.sync_all()?;
    Ok(())
}

/// Flushes the folder holding `path`, so a rename into it survives a power loss (on Unix; a
/// folder cannot be opened for that elsewhere).
fn sync_folder(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(parent)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn files_read_back_with_every_dtype_and_the_metadata_and_refuse_what_they_cannot_hold() {
        let dir = std::env::temp_dir().join(format!("motivnet-durable-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mixed.safetensors");
        let dev = Device::Cpu;
        let tensors: HashMap<String, Tensor> = [
            ("w".to_string(), Tensor::new(&[[1.5f32, -2.0, 3.25]], &dev).unwrap()),
            ("seed".to_string(), Tensor::new(&[7u8, 9], &dev).unwrap()),
            ("words".to_string(), Tensor::new(&[u32::MAX, 1], &dev).unwrap()),
            ("count".to_string(), Tensor::new(&[-3i64], &dev).unwrap()),
        ]
        .into_iter()
        .collect();
        let metadata: HashMap<String, String> = [("extra".to_string(), "{\"epoch\":2}".to_string())].into();
        write_safetensors(&tensors, Some(&metadata), &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!((8 + header_len) % 8, 0, "the data must start 8-byte aligned");
        let (_, parsed) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(parsed.metadata().as_ref().unwrap()["extra"], "{\"epoch\":2}");
        let back = candle_core::safetensors::load(&path, &dev).unwrap();
        for (name, t) in &tensors {
            let got = &back[name];
            assert_eq!((got.dtype(), got.dims()), (t.dtype(), t.dims()), "{name}");
            assert_eq!(bytes_of(got).unwrap(), bytes_of(t).unwrap(), "{name}");
        }
        assert!(!temporary_path(&path).exists());

        let half = [("h".to_string(), Tensor::new(&[1f32], &dev).unwrap().to_dtype(DType::F16).unwrap())].into();
        let err = write_safetensors(&half, None, &dir.join("half.safetensors")).unwrap_err().to_string();
        assert!(err.contains("half.safetensors") && err.contains("h is F16"), "{err}");
        assert!(!dir.join("half.safetensors").exists() && !temporary_path(&dir.join("half.safetensors")).exists());
        std::fs::remove_dir_all(&dir).ok();
    }
}
