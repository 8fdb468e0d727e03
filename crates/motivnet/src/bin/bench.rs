//! Native micro-benchmark: milliseconds per inference forward and per train step
//! (forward + backward + AdamW with two groups) for a preset or config file and a batch size.
//!
//!     cargo run --release -p motivnet --bin motivnet-bench -- --model tiny --batch 8
//!
//! Prints one JSON line, so scripts can collect it; medians over `--iters` runs after
//! `--warmup` runs. Threads: RAYON_NUM_THREADS (candle's matmul and our pixel pass use rayon).

use std::time::Instant;

use candle_core::{DType, Tensor};
use motivnet::train::optim::Groups;
use motivnet::{parse_device, ModelConfig, ModelInput, MotivNet, Trainer, TrainerConfig};

struct Args {
    model: String,
    batch: usize,
    iters: usize,
    warmup: usize,
    device: String,
    /// f32, or bf16 (CUDA, or a CPU with AMX).
    precision: String,
    skip_train: bool,
    skip_forward: bool,
    /// Time the fused resize + normalize of `batch` ~400 px images instead of the model.
    preprocess: bool,
    /// Time a large f32 matmul instead of the model: the achievable GFLOP/s of these kernels
    /// on this machine, the roof the model's cases are measured against.
    roofline: bool,
    /// Time the face detector on one 1920 x 1080 photograph instead of the model (one thread:
    /// the caller's, as a decoding worker runs it).
    detect: bool,
}

const USAGE: &str = "usage: motivnet-bench [--model PRESET|FILE] [--batch B] [--iters N] [--warmup N] [--device cpu|cuda:N] [--precision f32|bf16|int8] [--skip-train] [--skip-forward] [--preprocess] [--roofline] [--detect]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        model: "tiny".into(),
        batch: 8,
        iters: 5,
        warmup: 1,
        device: "cpu".into(),
        precision: "f32".into(),
        skip_train: false,
        skip_forward: false,
        preprocess: false,
        roofline: false,
        detect: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value\n{USAGE}"));
        let number = |v: String, name: &str| {
            v.parse::<usize>().map_err(|_| format!("{name} must be a positive integer, got '{v}'"))
        };
        match flag.as_str() {
            "--model" => args.model = value("--model")?,
            "--batch" => args.batch = number(value("--batch")?, "--batch")?,
            "--iters" => args.iters = number(value("--iters")?, "--iters")?,
            "--warmup" => args.warmup = number(value("--warmup")?, "--warmup")?,
            "--device" => args.device = value("--device")?,
            "--precision" => args.precision = value("--precision")?,
            "--skip-train" => args.skip_train = true,
            "--skip-forward" => args.skip_forward = true,
            "--preprocess" => args.preprocess = true,
            "--roofline" => args.roofline = true,
            "--detect" => args.detect = true,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown flag {other}\n{USAGE}")),
        }
    }
    if args.batch == 0 || args.iters == 0 {
        return Err(format!("--batch and --iters must be at least 1\n{USAGE}"));
    }
    Ok(args)
}

/// A line of /proc/self/status in MiB (Linux): `VmHWM` the peak resident memory, `VmRSS` now.
fn status_mb(key: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn peak_rss_mb() -> Option<f64> {
    status_mb("VmHWM:")
}

/// GFLOP/s of a 2048 x 2048 x 2048 f32 matmul through candle (the `gemm` kernels the model's
/// products use), on the compute threads.
fn run_roofline(args: &Args) -> motivnet::Result<String> {
    const N: usize = 2048;
    let device = parse_device(&args.device)?;
    let a = Tensor::randn(0f32, 1.0, (N, N), &device)?;
    let b = Tensor::randn(0f32, 1.0, (N, N), &device)?;
    let ms = time(args.warmup.max(1), args.iters, || {
        std::hint::black_box(a.matmul(&b)?.to_device(&candle_core::Device::Cpu)?);
        Ok(())
    })?;
    let gflops = 2.0 * (N * N * N) as f64 / (ms * 1e6);
    let fma = fma_peak_gflops().map_or("null".to_string(), |g| format!("{g:.1}"));
    Ok(format!(
        "{{\"roofline\":\"matmul f32 {N}^3\",\"threads\":{},\"ms\":{ms:.3},\"gflops\":{gflops:.1},\"fmaPeakGflops\":{fma}}}",
        rayon::current_num_threads()
    ))
}

/// The f32 multiply-add peak of the compute threads, in GFLOP/s: each thread runs independent
/// AVX-512 multiply-adds (24 chains, more than the units' latency times their width) with no
/// loads or stores, the best of three tries. No product can run faster in f32; the matmul roof
/// shows how close a real one comes. `None` off x86-64 or without AVX-512F.
fn fma_peak_gflops() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        use rayon::prelude::*;
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return None;
        }
        const ROUNDS: usize = 20_000_000;
        let threads = rayon::current_num_threads();
        let best = (0..3)
            .map(|_| {
                let start = Instant::now();
                // SAFETY: AVX-512F was detected above.
                let sums: f32 = (0..threads).into_par_iter().map(|_| unsafe { fma_chains(ROUNDS) }).sum();
                std::hint::black_box(sums);
                start.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min);
        // Each round: 24 multiply-adds of 16 lanes, two FLOPs a lane.
        Some((threads * ROUNDS * 24 * 16 * 2) as f64 / best / 1e9)
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// `rounds` rounds of 24 independent AVX-512 multiply-add chains (zmm8-zmm31 += zmm0 x zmm1),
/// written out in assembly so the compiler can neither fold nor spill them.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_chains(rounds: usize) -> f32 {
    let sum: f32;
    std::arch::asm!(
        "vbroadcastss zmm0, {a:x}",
        "vbroadcastss zmm1, {b:x}",
        "vxorps zmm2, zmm2, zmm2",
        ".irp r, 8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
        "vmovaps zmm\\r, zmm2",
        ".endr",
        "2:",
        ".irp r, 8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
        "vfmadd231ps zmm\\r, zmm0, zmm1",
        ".endr",
        "dec {n}",
        "jnz 2b",
        ".irp r, 9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
        "vaddps zmm8, zmm8, zmm\\r",
        ".endr",
        "vmovaps {out:x}, xmm8",
        a = in(xmm_reg) 1.0e-3f32,
        b = in(xmm_reg) 0.999f32,
        n = inout(reg) rounds.max(1) => _,
        out = lateout(xmm_reg) sum,
        out("zmm0") _, out("zmm1") _, out("zmm2") _,
        out("zmm8") _, out("zmm9") _, out("zmm10") _, out("zmm11") _, out("zmm12") _, out("zmm13") _,
        out("zmm14") _, out("zmm15") _, out("zmm16") _, out("zmm17") _, out("zmm18") _, out("zmm19") _,
        out("zmm20") _, out("zmm21") _, out("zmm22") _, out("zmm23") _, out("zmm24") _, out("zmm25") _,
        out("zmm26") _, out("zmm27") _, out("zmm28") _, out("zmm29") _, out("zmm30") _, out("zmm31") _,
        options(nomem, nostack),
    );
    sum
}

/// GFLOP/s (GOP/s in int8) of a 2048 x 2048 x 2048 product on the kernel our Linear layers
/// run on in `precision` bf16 (AMX, or AVX512_BF16's dot products) or int8 (VNNI): A rounded
/// or quantized as the layers do their input, B packed once, on the compute threads. The roof our bf16 rows are measured
/// against beside PyTorch's bf16 matmul, and the roof of our int8 rows.
fn run_roofline_packed(args: &Args, precision: motivnet::Precision) -> motivnet::Result<String> {
    use motivnet::runtime::precision::{bf16_square_product, cpu_bf16_kernel, int8_square_product};
    const N: usize = 2048;
    let (mut product, kernel): (Box<dyn FnMut()>, String) = match precision {
        motivnet::Precision::Bf16 => match bf16_square_product(N).zip(cpu_bf16_kernel()) {
            Some((product, engine)) => (Box::new(product), format!("bf16 ({engine})")),
            None => {
                return Err(motivnet::Error::Input("--roofline --precision bf16 needs a CPU with AVX512_BF16".into()))
            }
        },
        motivnet::Precision::Int8 => match int8_square_product(N) {
            Some(product) => (Box::new(product), "int8 (VNNI)".into()),
            None => {
                return Err(motivnet::Error::Input("--roofline --precision int8 needs a CPU with AVX512-VNNI".into()))
            }
        },
        motivnet::Precision::F32 => return run_roofline(args),
    };
    let ms = time(args.warmup.max(1), args.iters, || {
        product();
        Ok(())
    })?;
    let gflops = 2.0 * (N * N * N) as f64 / (ms * 1e6);
    Ok(format!(
        "{{\"roofline\":\"matmul {kernel} {N}^3\",\"threads\":{},\"ms\":{ms:.3},\"gflops\":{gflops:.1}}}",
        rayon::current_num_threads()
    ))
}

fn median_ms(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[samples.len() / 2]
}

fn time<F: FnMut() -> motivnet::Result<()>>(warmup: usize, iters: usize, mut f: F) -> motivnet::Result<f64> {
    for _ in 0..warmup {
        f()?;
    }
    perf_control("enable");
    let mut samples = Vec::with_capacity(iters);
    for _ in 0..iters {
        let start = Instant::now();
        f()?;
        samples.push(start.elapsed().as_secs_f64() * 1e3);
    }
    perf_control("disable");
    Ok(median_ms(samples))
}

/// Under `perf record -D -1 --control fifo:CTL,ACK` with `MOTIVNET_PERF_CONTROL=CTL,ACK` in the
/// environment (`npm run bench:profile`), turns sampling on for the timed iterations only and
/// off after them: a profile of the work timed, without building the model, random weights or
/// the warm-up. Elsewhere nothing.
fn perf_control(command: &str) {
    use std::io::{Read, Write};
    let Ok(paths) = std::env::var("MOTIVNET_PERF_CONTROL") else { return };
    let Some((control, ack)) = paths.split_once(',') else { return };
    let sent = std::fs::OpenOptions::new()
        .write(true)
        .open(control)
        .and_then(|mut fifo| fifo.write_all(format!("{command}\n").as_bytes()));
    let mut reply = [0u8; 5];
    let acked = sent.and_then(|()| std::fs::File::open(ack)?.read(&mut reply));
    if let Err(err) = acked {
        eprintln!("perf control ({command}) failed: {err}");
    }
}

/// Milliseconds per face detection on a 1920 x 1080 frame: the input warp, the network,
/// decoding and suppression, on this thread.
fn run_detect(args: &Args) -> motivnet::Result<String> {
    let (width, height) = (1920, 1080);
    let rgb: Vec<u8> = (0..width * height * 3).map(|i| (i * 31 % 251) as u8).collect();
    let detector = motivnet::detector::BlazeFace::embedded()?;
    let ms = time(args.warmup.max(1), args.iters, || {
        std::hint::black_box(detector.detect(&rgb, width, height)?);
        Ok(())
    })?;
    Ok(format!(
        "{{\"detect\":\"blazeface short range\",\"width\":{width},\"height\":{height},\"threads\":1,\"ms\":{ms:.3}}}"
    ))
}

/// Milliseconds per batch for u8 images of about 400 x 440 px to the model's input tensor.
fn run_preprocess(args: &Args, config: &ModelConfig) -> motivnet::Result<String> {
    let sizes: Vec<(usize, usize)> = (0..args.batch).map(|i| (360 + i * 37 % 80, 400 + i * 53 % 80)).collect();
    let total: usize = sizes.iter().map(|(w, h)| w * h * 3).sum();
    let data: Vec<u8> = (0..total).map(|i| (i * 31 % 251) as u8).collect();
    let batch = motivnet::ImageBatch::new(&data, &sizes)?;
    let (h, w) = (config.encoder.input_height, config.encoder.input_width);
    let norm = motivnet::Normalization::default();
    let ms = time(args.warmup, args.iters, || {
        std::hint::black_box(motivnet::ops::pixels::resize_normalize_cpu(
            &batch,
            motivnet::Geometry::Stretch,
            h,
            w,
            &norm,
        ));
        Ok(())
    })?;
    Ok(format!(
        "{{\"preprocess\":\"stretch\",\"batch\":{},\"height\":{h},\"width\":{w},\"threads\":{},\"batchMs\":{ms:.3},\"imagesPerSecond\":{:.1}}}",
        args.batch,
        rayon::current_num_threads(),
        args.batch as f64 * 1000.0 / ms
    ))
}

fn run(args: &Args) -> motivnet::Result<String> {
    if args.roofline && args.precision != "f32" {
        return run_roofline_packed(args, motivnet::Precision::parse(&args.precision)?);
    }
    if args.roofline {
        return run_roofline(args);
    }
    if args.detect {
        return run_detect(args);
    }
    let config = ModelConfig::from_preset_or_file(&args.model)?;
    if args.preprocess {
        return run_preprocess(args, &config);
    }
    // Resident memory with the libraries loaded and the threads started, before the model:
    // what the model and its work add is the peak minus this.
    let baseline_mb = status_mb("VmRSS:");
    let device = parse_device(&args.device)?;
    let enc = &config.encoder;
    let mut model = MotivNet::new(&config, &device, 0)?;
    let precision = motivnet::Precision::parse(&args.precision)?;
    model.set_precision(precision)?;
    // As the Node binding holds a model it loads for bf16 or int8 inference on the CPU
    // (training needs the f32 weights).
    if args.skip_train && model.can_keep_linear_weights_packed_only() {
        model.keep_linear_weights_packed_only()?;
    }
    let (total, trainable) = model.params.counts();
    let x =
        Tensor::randn(0f32, 1.0, (args.batch, 3, enc.input_height, enc.input_width), &device)?.to_dtype(DType::F32)?;
    let input = ModelInput::Tensor(&x);
    let forward_ms = if args.skip_forward {
        None
    } else {
        Some(time(args.warmup, args.iters, || {
            model.predict(&input)?.to_device(&candle_core::Device::Cpu)?;
            Ok(())
        })?)
    };
    let mut train_ms = None;
    if !args.skip_train {
        let labels: Vec<u32> = (0..args.batch as u32).map(|i| i % config.head.num_classes as u32).collect();
        let mut trainer = Trainer::new(model, TrainerConfig::default());
        let lr = Groups { encoder: 1e-5, decoder: 1e-4 };
        train_ms = Some(time(args.warmup, args.iters, || trainer.train_step(&input, &labels, lr, true).map(|_| ()))?);
    }
    let threads = rayon::current_num_threads();
    Ok(format!(
        "{{\"model\":\"{}\",\"batch\":{},\"device\":\"{}\",\"precision\":\"{}\",\"threads\":{threads},\"parameters\":{total},\"trainable\":{trainable},\
         \"forwardMs\":{},\"trainStepMs\":{},\"peakRssMb\":{},\"baselineRssMb\":{}}}",
        args.model,
        args.batch,
        args.device,
        precision.name(),
        forward_ms.map_or("null".to_string(), |t| format!("{t:.3}")),
        train_ms.map_or("null".to_string(), |t| format!("{t:.3}")),
        peak_rss_mb().map_or("null".to_string(), |m| format!("{m:.1}")),
        baseline_mb.map_or("null".to_string(), |m| format!("{m:.1}"))
    ))
}

fn main() {
    // As the `motivnet` command line does for its own process (src/cli/own-process.ts):
    // candle's own element-wise thread pool competes with rayon's for the same cores (set
    // before any thread starts), and the malloc settings of motivnet::runtime::malloc.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    motivnet::runtime::malloc::tune_for_model_temporaries();
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            std::process::exit(2);
        }
    };
    // On the compute threads, where the Node addon runs every model call.
    match motivnet::runtime::cpu::run_on_compute_threads(|| run(&args)) {
        Ok(line) => println!("{line}"),
        Err(e) => {
            eprintln!("motivnet-bench: {e}");
            std::process::exit(1);
        }
    }
}
