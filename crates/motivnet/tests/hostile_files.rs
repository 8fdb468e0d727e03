//! Malformed and hostile checkpoint files: each is refused with an error that names the file,
//! and none takes the process down. The inputs are made here from the small `.pth` fixture,
//! each after a kind of file `npm run fuzz` found or aims at: a pickled string whose length
//! claims gigabytes (found by the fuzzer: candle allocated 4 GiB and aborted), an archive
//! member larger than the file, a tensor larger than its storage, objects nested past any
//! stack, and memoised objects doubled until they fill memory.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use motivnet::io::weights::{read_shapes, read_tensors};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/motivnet7.pth")
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("motivnet-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// The fixture's archive members, in order.
fn members() -> Vec<(String, Vec<u8>)> {
    let mut archive = zip::ZipArchive::new(std::fs::File::open(fixture()).unwrap()).unwrap();
    (0..archive.len())
        .map(|i| {
            let mut entry = archive.by_index(i).unwrap();
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            (entry.name().unwrap().to_string(), bytes)
        })
        .collect()
}

fn write_archive(path: &Path, members: &[(String, Vec<u8>)]) {
    let mut out = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in members {
        out.start_file(name.as_str(), options).unwrap();
        out.write_all(bytes).unwrap();
    }
    out.finish().unwrap();
}

/// The fixture with its pickle changed by `edit`.
fn with_pickle(name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut all = members();
    let pickle = all.iter_mut().find(|(n, _)| n.ends_with("data.pkl")).unwrap();
    edit(&mut pickle.1);
    let path = temp(name);
    write_archive(&path, &all);
    path
}

/// Both readers refuse the file with a weights error naming it and saying `what`.
fn refused(path: &Path, what: &str) {
    for result in [read_shapes(path).map(|_| ()), read_tensors(path).map(|_| ())] {
        let err = result.expect_err("a hostile file was read");
        let message = err.to_string();
        assert_eq!(err.code(), "MOTIVNET_WEIGHTS", "{message}");
        assert!(message.contains(&path.display().to_string()), "the error does not name the file: {message}");
        assert!(message.contains(what), "expected '{what}' in: {message}");
    }
}

#[test]
fn the_fixture_itself_reads() {
    assert!(!read_tensors(&fixture()).unwrap().is_empty());
}

#[test]
fn a_pickled_string_claiming_gigabytes_is_refused_before_any_allocation() {
    // The fuzzer's find: one length byte of a key's BINUNICODE set to 0xff.
    let path = with_pickle("long-string.pth", |p| {
        let at = p.windows(1).position(|w| w[0] == b'X').unwrap();
        p[at + 4] = 0xff;
    });
    refused(&path, "claims");
}

#[test]
fn an_archive_member_larger_than_the_file_is_refused() {
    let path = temp("member-size.pth");
    write_archive(&path, &members());
    let mut bytes = std::fs::read(&path).unwrap();
    // The central directory entry of the first member: its sizes at bytes 20 and 24.
    let central = bytes.windows(4).position(|w| w == b"PK\x01\x02").unwrap();
    bytes[central + 20..central + 28].copy_from_slice(&[0xf0, 0xff, 0xff, 0x7f, 0xf0, 0xff, 0xff, 0x7f]);
    std::fs::write(&path, bytes).unwrap();
    let err = read_shapes(&path).unwrap_err().to_string();
    assert!(err.contains(&path.display().to_string()), "{err}");
}

#[test]
fn a_tensor_larger_than_its_storage_is_refused() {
    // A 32 x 32 tensor's size tuple made 32 x 2147483647 (BININT).
    let path = with_pickle("big-tensor.pth", |p| {
        let at = p.windows(5).position(|w| w == b"K\x20K\x20\x86").unwrap();
        p.splice(at + 2..at + 4, [b'J', 0xff, 0xff, 0xff, 0x7f]);
    });
    let err = read_tensors(&path).unwrap_err().to_string();
    assert!(err.contains("needs more bytes than its storage"), "{err}");
}

#[test]
fn deep_nesting_is_refused_before_the_reader_recurses() {
    let path = with_pickle("deep.pth", |p| {
        let mut deep = vec![0x80, 2, b')'];
        deep.extend(std::iter::repeat_n(0x85u8, 1_000_000));
        deep.push(b'.');
        *p = deep;
    });
    refused(&path, "nested more than");
}

#[test]
fn memoised_objects_doubled_until_they_fill_memory_are_refused() {
    let path = with_pickle("laughs.pth", |p| {
        let mut laughs = vec![0x80, 2, b'N', b'q', 0];
        for _ in 0..48 {
            laughs.extend_from_slice(&[b'h', 0, b'h', 0, 0x86, b'q', 0]);
        }
        laughs.push(b'.');
        *p = laughs;
    });
    refused(&path, "objects it builds");
}
