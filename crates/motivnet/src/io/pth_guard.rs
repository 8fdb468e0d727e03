//! Checks on a `.pth` checkpoint before candle's reader sees it. That reader trusts the file:
//! a pickled string's length, a tensor's shape and the archive's member sizes decide what it
//! allocates, and it builds nested objects recursively and clones memoised ones. A few bytes of
//! a malformed or hostile file could so make it allocate terabytes or recurse until the stack
//! runs out: the process aborts, and no panic guard can catch that. Found by `npm run fuzz`.
//!
//! What is checked, with errors naming the file:
//! - every member of the archive declares no more bytes than the file holds;
//! - the pickle (`data.pkl`), walked opcode by opcode over the opcodes candle reads: every
//!   length within the bytes that remain, objects nested at most [`MAX_DEPTH`] deep and at
//!   most [`MAX_OBJECTS`] of them once memoised objects are copied (as candle copies them);
//! - every tensor's bytes, from its shape, dtype and offset, within its storage member.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// Deeper than any checkpoint nests (a state dict is a few levels), far from a stack's limit.
pub const MAX_DEPTH: u32 = 256;
/// Objects the pickle may build, memoised copies included: a checkpoint of tens of thousands of
/// tensors builds well under a million.
pub const MAX_OBJECTS: u64 = 20_000_000;

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
            Some(n) if n <= member => {}
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
    }
    Ok(())
}

/// What the walk keeps of each stack entry: how deep the object nests and how many objects it
/// holds, or the mark that opcodes pop to.
#[derive(Clone, Copy)]
enum Entry {
    Object { depth: u32, objects: u64 },
    Mark,
}

/// Walks the opcodes candle's unpickler reads, checking lengths, depth and object counts. An
/// opcode it does not know, or a stack it would find empty, ends the walk: candle refuses those
/// itself, with its own error.
pub fn check_pickle(bytes: &[u8]) -> std::result::Result<(), String> {
    let mut at = 0usize;
    let mut stack: Vec<Entry> = Vec::new();
    let mut memo: HashMap<u32, Entry> = HashMap::new();
    let mut total: u64 = 0;
    let take = |at: &mut usize, n: usize| -> std::result::Result<&[u8], String> {
        let end = at
            .checked_add(n)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| format!("an opcode at byte {} reads past the end", *at))?;
        let slice = &bytes[*at..end];
        *at = end;
        Ok(slice)
    };
    let leaf = Entry::Object { depth: 0, objects: 1 };
    // An object made of `parts`: one level deeper than the deepest, holding them all.
    let combine = |parts: &[Entry], total: &mut u64| -> std::result::Result<Entry, String> {
        let (mut depth, mut objects) = (0u32, 1u64);
        for p in parts {
            if let Entry::Object { depth: d, objects: o } = *p {
                depth = depth.max(d + 1);
                objects = objects.saturating_add(o);
            }
        }
        if depth > MAX_DEPTH {
            return Err(format!("objects nested more than {MAX_DEPTH} deep"));
        }
        *total = total.saturating_add(1);
        Ok(Entry::Object { depth, objects })
    };
    let pop_to_mark = |stack: &mut Vec<Entry>| -> Option<Vec<Entry>> {
        let mark = stack.iter().rposition(|e| matches!(e, Entry::Mark))?;
        let items = stack.split_off(mark + 1);
        stack.pop();
        Some(items)
    };
    loop {
        if total > MAX_OBJECTS {
            return Err(format!("more than {MAX_OBJECTS} objects"));
        }
        let Some(&op) = bytes.get(at) else { return Ok(()) };
        at += 1;
        match op {
            0x80 => {
                take(&mut at, 1)?; // PROTO
            }
            b'K' | b'q' => {
                take(&mut at, 1)?; // BININT1, BINPUT (memoised below)
            }
            b'M' => {
                take(&mut at, 2)?; // BININT2
            }
            b'J' => {
                take(&mut at, 4)?; // BININT
            }
            b'G' => {
                take(&mut at, 8)?; // BINFLOAT
            }
            b'X' => {
                // BINUNICODE: a u32 length, then that many bytes.
                let len = u32::from_le_bytes(take(&mut at, 4)?.try_into().unwrap()) as usize;
                if len > bytes.len() - at {
                    return Err(format!("a string at byte {} claims {len} bytes, {} remain", at - 5, bytes.len() - at));
                }
                at += len;
            }
            b'c' => {
                // GLOBAL: module and name, each up to a newline.
                for _ in 0..2 {
                    let end = bytes[at..].iter().position(|&b| b == b'\n').ok_or("a GLOBAL without its newline")?;
                    at += end + 1;
                }
            }
            0x8a => {
                // LONG1: a byte count, then the bytes.
                let n = take(&mut at, 1)?[0] as usize;
                take(&mut at, n)?;
            }
            b'h' | b'j' => {
                let key = if op == b'h' {
                    take(&mut at, 1)?[0] as u32
                } else {
                    u32::from_le_bytes(take(&mut at, 4)?.try_into().unwrap())
                };
                // BINGET: candle copies the memoised object onto the stack.
                let Some(&entry) = memo.get(&key) else { return Ok(()) };
                if let Entry::Object { objects, .. } = entry {
                    total = total.saturating_add(objects);
                }
                stack.push(entry);
                continue;
            }
            b'r' => {
                take(&mut at, 4)?; // LONG_BINPUT (memoised below)
            }
            _ => {}
        }
        match op {
            b'K' | b'M' | b'J' | b'G' | b'X' | b'c' | 0x8a | 0x88 | 0x89 | b'N' | b'}' | b')' | b']' => {
                total = total.saturating_add(1);
                stack.push(leaf);
            }
            b'q' | b'r' => {
                // BINPUT, LONG_BINPUT: memoise the top of the stack under the key just read.
                let key = if op == b'q' {
                    bytes[at - 1] as u32
                } else {
                    u32::from_le_bytes(bytes[at - 4..at].try_into().unwrap())
                };
                let Some(&top) = stack.last() else { return Ok(()) };
                memo.insert(key, top);
            }
            b'(' => stack.push(Entry::Mark),
            0x85 | 0x86 | 0x87 | b'Q' => {
                // TUPLE1-3, BINPERSID: one to three objects into one.
                let n = match op {
                    0x85 | b'Q' => 1,
                    0x86 => 2,
                    _ => 3,
                };
                if stack.len() < n {
                    return Ok(());
                }
                let parts = stack.split_off(stack.len() - n);
                let made = combine(&parts, &mut total)?;
                stack.push(made);
            }
            b'R' | b'b' | 0x81 => {
                // REDUCE, BUILD, NEWOBJ: two objects into one.
                if stack.len() < 2 {
                    return Ok(());
                }
                let parts = stack.split_off(stack.len() - 2);
                let made = combine(&parts, &mut total)?;
                stack.push(made);
            }
            b't' | b'd' => {
                // TUPLE, DICT: everything above the mark into one.
                let Some(parts) = pop_to_mark(&mut stack) else { return Ok(()) };
                let made = combine(&parts, &mut total)?;
                stack.push(made);
            }
            b'a' | b's' | b'e' | b'u' => {
                // APPEND, SETITEM (one or two objects), APPENDS, SETITEMS (to the mark): into
                // the container below them.
                let parts = match op {
                    b'a' if !stack.is_empty() => vec![stack.pop().unwrap()],
                    b's' if stack.len() >= 2 => stack.split_off(stack.len() - 2),
                    b'e' | b'u' => match pop_to_mark(&mut stack) {
                        Some(p) => p,
                        None => return Ok(()),
                    },
                    _ => return Ok(()),
                };
                let Some(container) = stack.pop() else { return Ok(()) };
                let mut all = parts;
                all.push(container);
                let made = combine(&all, &mut total)?;
                stack.push(made);
            }
            b'.' => return Ok(()), // STOP
            0x80 => {}
            _ => return Ok(()), // an opcode candle does not read: it refuses the file itself
        }
    }
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
        assert!(check_pickle(&laughs).unwrap_err().contains("objects"));
    }

    #[test]
    fn a_real_checkpoint_passes() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/motivnet7.pth");
        check_archive(&path).unwrap();
    }
}
