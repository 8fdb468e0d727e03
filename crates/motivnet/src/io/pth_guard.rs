//! Checks on a `.pth` checkpoint before candle's reader sees it. That reader trusts the file:
//! a pickled string's length, a tensor's shape and the archive's member sizes decide what it
//! allocates, and it builds nested objects recursively and clones memoised ones. A few bytes of
//! a malformed or hostile file could so make it allocate terabytes or recurse until the stack
//! runs out: the process aborts, and no panic guard can catch that. Found by `npm run fuzz`.
//!
//! What is checked, with errors naming the file:
//! - every member of the archive declares no more bytes than the file holds;
//! - the pickle (`data.pkl`), walked opcode by opcode as candle reads it: every length within
//!   the bytes that remain, objects nested at most [`MAX_DEPTH`] deep and taking at most
//!   [`MAX_BYTES`] once memoised objects are copied (as candle copies them);
//! - every tensor's bytes, from its shape, dtype and offset, within its storage member, and
//!   all of them together within [`MAX_TENSOR_BYTES_PER_FILE_BYTE`] times the file's size.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// Deeper than any checkpoint nests (a state dict is a few levels), far from a stack's limit.
pub const MAX_DEPTH: u32 = 256;
/// What the objects a pickle builds may take, memoised copies included: a checkpoint of tens of
/// thousands of tensors builds a few megabytes of them.
pub const MAX_BYTES: u64 = 512 << 20;
/// Tensor bytes a checkpoint may read, as a multiple of its file's size: views share storages
/// (tied weights), but not by thousands.
pub const MAX_TENSOR_BYTES_PER_FILE_BYTE: u64 = 16;

fn malformed(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::Weights(format!("{}: a malformed PyTorch checkpoint: {what}", path.display()))
}

type Archive = zip::ZipArchive<std::io::BufReader<std::fs::File>>;

/// The archive's members and their sizes, after checking each fits in the file.
fn members(path: &Path) -> Result<(Archive, HashMap<String, u64>)> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let length = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut archive = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| malformed(path, format!("not a readable zip archive ({e})")))?;
    let mut sizes = HashMap::new();
    for i in 0..archive.len() {
        let entry = archive.by_index_raw(i).map_err(|e| malformed(path, format!("member {i} is unreadable ({e})")))?;
        let name =
            entry.name().map_err(|e| malformed(path, format!("member {i} has no readable name ({e})")))?.to_string();
        if entry.size() > length || entry.compressed_size() > length {
            return Err(malformed(
                path,
                format!(
                    "member {name} declares {} bytes, but the file holds {length}",
                    entry.size().max(entry.compressed_size())
                ),
            ));
        }
        sizes.insert(name, entry.size());
    }
    Ok((archive, sizes))
}

/// Checks the archive and every pickle in it (see the module's notes).
pub fn check_archive(path: &Path) -> Result<()> {
    let (mut archive, sizes) = members(path)?;
    for name in sizes.keys().filter(|n| n.ends_with("data.pkl")) {
        let mut pickle = Vec::new();
        archive
            .by_name(name)
            .and_then(|m| m.take(sizes[name]).read_to_end(&mut pickle).map_err(zip::result::ZipError::from))
            .map_err(|e| malformed(path, format!("{name} is unreadable ({e})")))?;
        check_pickle(&pickle).map_err(|what| malformed(path, format!("{name}: {what}")))?;
    }
    Ok(())
}

/// Checks that each tensor's bytes (shape x dtype, after its offset) lie within its storage
/// member: the reader allocates them from the shape before it reads.
pub fn check_tensors(path: &Path, infos: &[candle_core::pickle::TensorInfo]) -> Result<()> {
    let (_, sizes) = members(path)?;
    let length = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
    let budget = length.saturating_mul(MAX_TENSOR_BYTES_PER_FILE_BYTE);
    let mut sum = 0u64;
    for info in infos {
        let layout = &info.layout;
        let bytes = layout
            .shape()
            .dims()
            .iter()
            .try_fold(info.dtype.size_in_bytes() as u64, |n, &d| n.checked_mul(d as u64))
            .and_then(|n| n.checked_add(layout.start_offset() as u64));
        let member = sizes.get(&info.path).copied().unwrap_or(0);
        match bytes {
            Some(n) if n <= member => sum = sum.saturating_add(n),
            _ => {
                return Err(malformed(
                    path,
                    format!(
                        "tensor {} of shape {:?} needs more bytes than its storage {} holds ({member})",
                        info.name,
                        layout.dims(),
                        info.path
                    ),
                ))
            }
        }
        if sum > budget {
            return Err(malformed(
                path,
                format!(
                    "its tensors would read more than {MAX_TENSOR_BYTES_PER_FILE_BYTE} times the file's {length} bytes"
                ),
            ));
        }
    }
    Ok(())
}

/// What the walk keeps of each stack entry: how deep the object nests and about how many bytes
/// the reader holds for it, or the mark that opcodes pop to.
#[derive(Clone, Copy)]
enum Entry {
    Object { depth: u32, bytes: u64 },
    Mark,
}

/// About what one object costs the reader beside its text (the size of its `Object` enum).
const OBJECT_BYTES: u64 = 64;

/// Walks the opcodes exactly as candle's unpickler reads them (including its reading of `d`
/// as an empty dict), checking lengths, depth and the bytes it would allocate, memoised copies
/// included (candle clones an object on every memo put and get). Whatever candle would refuse
/// (an empty stack, no mark, a missing memo key, an unknown opcode) is refused here too, so
/// the walk and the reader cannot drift apart unnoticed.
pub fn check_pickle(bytes: &[u8]) -> std::result::Result<(), String> {
    let mut at = 0usize;
    let mut stack: Vec<Entry> = Vec::new();
    let mut memo: HashMap<u32, Entry> = HashMap::new();
    // Bytes the reader would have allocated so far.
    let mut total: u64 = 0;
    let take = |at: &mut usize, n: usize| -> std::result::Result<usize, String> {
        let start = *at;
        let end = start
            .checked_add(n)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| format!("an opcode at byte {start} reads past the end"))?;
        *at = end;
        Ok(start)
    };
    let u32_at = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let pop = |stack: &mut Vec<Entry>, n: usize, at: usize| -> std::result::Result<Vec<Entry>, String> {
        if stack.len() < n {
            return Err(format!("the opcode at byte {} pops more than the stack holds", at - 1));
        }
        Ok(stack.split_off(stack.len() - n))
    };
    let pop_to_mark = |stack: &mut Vec<Entry>, at: usize| -> std::result::Result<Vec<Entry>, String> {
        let mark = stack
            .iter()
            .rposition(|e| matches!(e, Entry::Mark))
            .ok_or_else(|| format!("the opcode at byte {} finds no mark", at - 1))?;
        let items = stack.split_off(mark + 1);
        stack.pop();
        Ok(items)
    };
    // A new object holding `parts`: one level deeper than the deepest.
    let combine = |parts: &[Entry], total: &mut u64| -> std::result::Result<Entry, String> {
        let (mut depth, mut bytes) = (0u32, OBJECT_BYTES);
        for p in parts {
            if let Entry::Object { depth: d, bytes: b } = *p {
                depth = depth.max(d + 1);
                bytes = bytes.saturating_add(b);
            }
        }
        if depth > MAX_DEPTH {
            return Err(format!("objects nested more than {MAX_DEPTH} deep"));
        }
        *total = total.saturating_add(OBJECT_BYTES);
        Ok(Entry::Object { depth, bytes })
    };
    let leaf = |len: usize, total: &mut u64| {
        let bytes = OBJECT_BYTES + len as u64;
        *total = total.saturating_add(bytes);
        Entry::Object { depth: 0, bytes }
    };
    while at < bytes.len() {
        if total > MAX_BYTES {
            return Err(format!("the objects it builds would take more than {} MiB", MAX_BYTES >> 20));
        }
        let op = bytes[at];
        at += 1;
        let made = match op {
            0x80 => {
                take(&mut at, 1)?; // PROTO
                continue;
            }
            b'K' => leaf(take(&mut at, 1).map(|_| 0)?, &mut total), // BININT1
            b'M' => leaf(take(&mut at, 2).map(|_| 0)?, &mut total), // BININT2
            b'J' => leaf(take(&mut at, 4).map(|_| 0)?, &mut total), // BININT
            b'G' => leaf(take(&mut at, 8).map(|_| 0)?, &mut total), // BINFLOAT
            b'X' => {
                // BINUNICODE: a u32 length, then that many bytes.
                let len = u32_at(take(&mut at, 4)?) as usize;
                if len > bytes.len() - at {
                    return Err(format!("a string at byte {} claims {len} bytes, {} remain", at - 5, bytes.len() - at));
                }
                at += len;
                leaf(len, &mut total)
            }
            b'c' => {
                // GLOBAL: module and name, each up to a newline.
                let start = at;
                for _ in 0..2 {
                    let end = bytes[at..].iter().position(|&b| b == b'\n').ok_or("a GLOBAL without its newline")?;
                    at += end + 1;
                }
                leaf(at - start, &mut total)
            }
            0x8a => {
                // LONG1: a byte count, then the bytes.
                let n = bytes[take(&mut at, 1)?] as usize;
                take(&mut at, n)?;
                leaf(0, &mut total)
            }
            // NEWTRUE, NEWFALSE, NONE, EMPTY_DICT (and `d`, which candle reads as one),
            // EMPTY_TUPLE, EMPTY_LIST.
            0x88 | 0x89 | b'N' | b'}' | b'd' | b')' | b']' => leaf(0, &mut total),
            b'h' | b'j' => {
                // BINGET, LONG_BINGET: candle pushes a clone of the memoised object.
                let key = if op == b'h' { bytes[take(&mut at, 1)?] as u32 } else { u32_at(take(&mut at, 4)?) };
                let entry = *memo.get(&key).ok_or_else(|| format!("memo key {key} is missing"))?;
                if let Entry::Object { bytes, .. } = entry {
                    total = total.saturating_add(bytes);
                }
                entry
            }
            b'q' | b'r' => {
                // BINPUT, LONG_BINPUT: candle stores a clone of the top of the stack.
                let key = if op == b'q' { bytes[take(&mut at, 1)?] as u32 } else { u32_at(take(&mut at, 4)?) };
                let top =
                    *stack.last().ok_or_else(|| format!("the opcode at byte {} memoises an empty stack", at - 1))?;
                if let Entry::Object { bytes, .. } = top {
                    total = total.saturating_add(bytes);
                }
                memo.insert(key, top);
                continue;
            }
            b'(' => Entry::Mark,
            // TUPLE1-3, BINPERSID: one to three objects into one.
            0x85 | b'Q' => combine(&pop(&mut stack, 1, at)?, &mut total)?,
            0x86 => combine(&pop(&mut stack, 2, at)?, &mut total)?,
            0x87 => combine(&pop(&mut stack, 3, at)?, &mut total)?,
            // REDUCE, BUILD, NEWOBJ: two objects into one.
            b'R' | b'b' | 0x81 => combine(&pop(&mut stack, 2, at)?, &mut total)?,
            // TUPLE: everything above the mark into one.
            b't' => combine(&pop_to_mark(&mut stack, at)?, &mut total)?,
            // APPEND, SETITEM (one or two objects), APPENDS, SETITEMS (to the mark): into the
            // container below them.
            b'a' | b's' | b'e' | b'u' => {
                let mut parts = match op {
                    b'a' => pop(&mut stack, 1, at)?,
                    b's' => pop(&mut stack, 2, at)?,
                    _ => pop_to_mark(&mut stack, at)?,
                };
                parts.extend(pop(&mut stack, 1, at)?);
                combine(&parts, &mut total)?
            }
            b'.' => return Ok(()), // STOP
            other => return Err(format!("unknown opcode 0x{other:02x} at byte {}", at - 1)),
        };
        stack.push(made);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_string_longer_than_the_pickle_is_refused() {
        let mut p = vec![0x80, 2, b'X'];
        p.extend_from_slice(&0xff00_0000u32.to_le_bytes());
        p.extend_from_slice(b"abc.");
        assert!(check_pickle(&p).unwrap_err().contains("claims 4278190080 bytes"));
    }

    #[test]
    fn deep_nesting_and_memo_doubling_are_refused() {
        let mut deep = vec![0x80, 2, b')'];
        deep.extend(std::iter::repeat_n(0x85u8, 10_000));
        deep.push(b'.');
        assert!(check_pickle(&deep).unwrap_err().contains("nested more than"));
        // Each step: get the memoised object twice, pair the copies, memoise the pair.
        let mut laughs = vec![0x80, 2, b'N', b'q', 0];
        for _ in 0..64 {
            laughs.extend_from_slice(&[b'h', 0, b'h', 0, 0x86, b'q', 0]);
        }
        laughs.push(b'.');
        assert!(check_pickle(&laughs).unwrap_err().contains("objects it builds"));
        // Memo puts clone too: one big string stored under a thousand keys.
        let mut puts = vec![0x80, 2, b'X'];
        puts.extend_from_slice(&(1u32 << 20).to_le_bytes());
        puts.extend(std::iter::repeat_n(b'a', 1 << 20));
        for key in 0..1000u32 {
            puts.push(b'r');
            puts.extend_from_slice(&key.to_le_bytes());
        }
        puts.push(b'.');
        assert!(check_pickle(&puts).unwrap_err().contains("objects it builds"));
    }

    #[test]
    fn the_walk_reads_d_as_candle_does_and_refuses_what_candle_would() {
        // candle reads `d` as an empty dict, not as DICT: with `( d t` its mark survives.
        assert!(check_pickle(&[0x80, 2, b'(', b'd', b't', b'.']).is_ok());
        assert!(check_pickle(&[0x80, 2, b'd', b't', b'.']).unwrap_err().contains("no mark"));
        assert!(check_pickle(&[0x80, 2, 0x85, b'.']).unwrap_err().contains("pops more"));
        assert!(check_pickle(&[0x80, 2, b'h', 3, b'.']).unwrap_err().contains("memo key 3"));
        assert!(check_pickle(&[0x80, 2, b'P', b'.']).unwrap_err().contains("unknown opcode 0x50"));
    }

    #[test]
    fn a_real_checkpoint_passes() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/motivnet7.pth");
        check_archive(&path).unwrap();
    }
}
