//! `motivnet-fuzz`: mutation fuzzing of the core's readers of untrusted files (`.pth`,
//! safetensors, training states), for a fixed time budget; `npm run fuzz` runs it per target
//! beside the TypeScript readers' targets (scripts/fuzz/).
//!
//! Each input is written to `WORK/current-TARGET.EXT` and read from there: if the process
//! dies (an abort: out of memory, stack overflow), that file is the input that killed it, and
//! the driver keeps it. A panic that escapes a reader is a crash too; one the core catches and
//! turns into an error (as it does around candle's pickle reader) is counted and kept, one per
//! kind of message, under WORK/caught/. Inputs that make a reader answer differently from any
//! before it join the corpus (a cheap stand-in for coverage). Memory is capped (4 GiB of
//! address space on Linux) so a length field claiming terabytes ends the run, not the machine.
//!
//!   motivnet-fuzz --target pth|safetensors|state --seconds N --seed S --fixtures DIR --work DIR
//!
//! Prints one JSON line: runs, inputs read, inputs refused, panics caught, crashes, corpus size.

mod mutate;
mod targets;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mutate::Rng;
use targets::Target;

struct Args {
    target: String,
    seconds: u64,
    seed: u64,
    fixtures: PathBuf,
    work: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        target: String::new(),
        seconds: 30,
        seed: 1,
        fixtures: PathBuf::from("crates/motivnet/tests/fixtures"),
        work: PathBuf::from(".cache/fuzz"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--target" => args.target = value,
            "--seconds" => args.seconds = value.parse().map_err(|_| format!("--seconds: not a number: {value}"))?,
            "--seed" => args.seed = value.parse().map_err(|_| format!("--seed: not a number: {value}"))?,
            "--fixtures" => args.fixtures = value.into(),
            "--work" => args.work = value.into(),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if args.target.is_empty() {
        return Err("--target pth|safetensors|state is required".into());
    }
    Ok(args)
}

/// The last panic's message, recorded by the hook instead of printed.
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

/// An error or panic message without the things that vary between inputs (numbers, the
/// file's path): what tells two answers of a reader apart.
fn signature(message: &str, path: &Path) -> String {
    let text = message.replace(&path.display().to_string(), "FILE");
    let text: String = text.chars().filter(|c| !c.is_ascii_digit()).take(160).collect();
    text
}

/// FNV-1a, to name kept inputs by their content.
fn hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

fn keep(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    std::fs::create_dir_all(dir).expect("cannot create the fuzz output folder");
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("cannot write a kept input");
    path
}

#[cfg(target_os = "linux")]
fn cap_memory(bytes: u64) {
    let limit = libc::rlimit { rlim_cur: bytes, rlim_max: bytes };
    // SAFETY: setrlimit only reads the struct; a failure leaves the limit as it was.
    unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) };
}

#[cfg(not(target_os = "linux"))]
fn cap_memory(_bytes: u64) {}

fn main() {
    let args = parse_args().unwrap_or_else(|msg| {
        eprintln!("motivnet-fuzz: {msg}");
        std::process::exit(2);
    });
    std::fs::create_dir_all(&args.work).expect("cannot create the work folder");
    let mut target: Box<dyn Target> = match args.target.as_str() {
        "pth" => Box::new(targets::Pth { fixtures: args.fixtures.clone() }),
        "safetensors" => Box::new(targets::Safetensors { fixtures: args.fixtures.clone() }),
        "state" => Box::new(targets::State::new(&args.fixtures, &args.work).expect("cannot build the state target")),
        other => {
            eprintln!("motivnet-fuzz: unknown target {other} (pth, safetensors, state)");
            std::process::exit(2);
        }
    };
    cap_memory(4 << 30);
    std::panic::set_hook(Box::new(|info| {
        let message = motivnet::error::panic_message(info.payload());
        *LAST_PANIC.lock().unwrap_or_else(|p| p.into_inner()) = Some(message);
    }));

    let current = args.work.join(format!("current-{}.{}", target.name(), target.extension()));
    let mut corpus = target.seeds();
    let mut seen = HashSet::new();
    let mut rng = Rng::new(args.seed);
    let (mut runs, mut read, mut refused, mut caught, mut crashes) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    // The seeds themselves first, unchanged; then mutations of corpus entries.
    let mut pending: Vec<Vec<u8>> = corpus.clone();
    while Instant::now() < deadline {
        let input = pending.pop().unwrap_or_else(|| {
            let base = rng.pick(&corpus).clone();
            let other = rng.pick(&corpus).clone();
            target.mutate(&base, &other, &mut rng)
        });
        std::fs::write(&current, &input).expect("cannot write the current input");
        LAST_PANIC.lock().unwrap_or_else(|p| p.into_inner()).take();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target.run(&current)));
        runs += 1;
        let panicked = LAST_PANIC.lock().unwrap_or_else(|p| p.into_inner()).take();
        let answer = match outcome {
            Err(_) => {
                crashes += 1;
                let message = panicked.unwrap_or_default();
                let kept = keep(
                    &args.work.join("crashes"),
                    &format!("{}-{:016x}.{}", target.name(), hash(&input), target.extension()),
                    &input,
                );
                eprintln!(
                    "crash: a panic escaped the {} reader ({message}); input kept at {}",
                    target.name(),
                    kept.display()
                );
                continue;
            }
            Ok(Ok(())) => {
                read += 1;
                "read".to_string()
            }
            Ok(Err(e)) => {
                refused += 1;
                e.to_string()
            }
        };
        let sig = signature(&answer, &current);
        if let Some(message) = panicked {
            caught += 1;
            let sig = signature(&message, &current);
            if seen.insert(format!("panic:{sig}")) {
                keep(
                    &args.work.join("caught"),
                    &format!("{}-{:016x}.{}", target.name(), hash(&input), target.extension()),
                    &input,
                );
            }
        }
        if seen.insert(sig) && corpus.len() < 256 {
            corpus.push(input);
        }
    }
    std::fs::remove_file(&current).ok();
    println!(
        "{{\"target\":\"{}\",\"seconds\":{},\"runs\":{runs},\"read\":{read},\"refused\":{refused},\"caughtPanics\":{caught},\"crashes\":{crashes},\"corpus\":{},\"answers\":{}}}",
        target.name(),
        args.seconds,
        corpus.len(),
        seen.len()
    );
    if crashes > 0 {
        std::process::exit(1);
    }
}
