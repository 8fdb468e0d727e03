// `npm run bench:profile`: where our time goes, by kind of work, for the cases of `npm run
// bench`: `perf record` (CPU-clock sampling) of motivnet-bench, the samples' own symbols
// grouped into matmul kernels, attention, softmax, LayerNorm, GELU, Linear's other work, AdamW,
// memory traffic, thread scheduling, candle's element-wise ops and the rest. Results go to
// docs/BENCHMARKS.md and docs/benchmarks/profile.json. Needs `perf` (Linux).
//
//   BENCH_THREADS (default 2), BENCH_CASES (comma list of case ids; the other columns are kept
//   from the last run on this machine)
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { machine, root, writeJson, writeSection } from './common.mjs';

const host = execFileSync('rustc', ['-vV'], { encoding: 'utf8' }).match(/^host: (.*)$/m)[1];
const bin = path.join(root, 'target', host, 'release', 'motivnet-bench');
const threads = Number(process.env.BENCH_THREADS ?? 2);

const CASES = [
  { id: 'forward-tiny', name: 'inference forward, tiny, batch 8', args: ['--model', 'tiny', '--batch', '8', '--iters', '60', '--skip-train'] },
  { id: 'train-tiny', name: 'train step, tiny, batch 8', args: ['--model', 'tiny', '--batch', '8', '--iters', '20', '--skip-forward'] },
  { id: 'forward-small', name: 'inference forward, small, batch 2', args: ['--model', 'small', '--batch', '2', '--iters', '20', '--skip-train'] },
  { id: 'forward-0.3b', name: 'inference forward, sapiens-0.3b, batch 1', args: ['--model', 'sapiens-0.3b', '--batch', '1', '--iters', '1', '--warmup', '1', '--skip-train'] },
  // bf16 on the CPU (AMX), where this CPU has it: the binary refuses it otherwise, and the case is left out.
  { id: 'forward-small-bf16', name: 'inference forward, small, batch 2, bf16', args: ['--model', 'small', '--batch', '2', '--iters', '20', '--skip-train', '--precision', 'bf16'] },
  { id: 'forward-0.3b-bf16', name: 'inference forward, sapiens-0.3b, batch 1, bf16', args: ['--model', 'sapiens-0.3b', '--batch', '1', '--iters', '1', '--warmup', '1', '--skip-train', '--precision', 'bf16'] },
  { id: 'train-tiny-bf16', name: 'train step, tiny, batch 8, bf16', args: ['--model', 'tiny', '--batch', '8', '--iters', '20', '--skip-forward', '--precision', 'bf16'] },
];
const selected = process.env.BENCH_CASES ? CASES.filter((c) => process.env.BENCH_CASES.split(',').includes(c.id)) : CASES;

/** Kinds of work, by the symbols their samples land in; the first match wins. */
const KINDS = [
  ['matmul kernels (gemm)', /^gemm|gemm_f32|gemm_common|strided_gemm|kernels::gemm/],
  // The f32 attention in key blocks runs its products and its softmax in one function.
  ['f32 attention in key blocks (products and softmax)', /flash_attention/],
  // The bf16 attention's softmax rounds its exponentials straight into the tiles' layout
  // (amx::exp_row_to_panel): counted as softmax, before the rest of the AMX code.
  ['softmax', /softmax|exp_row_to_panel/],
  ['bf16 products (AMX tiles, packing, rounding)', /kernels::amx/],
  ['attention (scores, their gradient)', /kernels::attention/],
  ['LayerNorm', /layer_norm/],
  ['GELU', /gelu/],
  ['Linear: bias, column sums', /kernels::linear/],
  ['AdamW', /optim/],
  ['patch rows, resize', /patches|resize/],
  ['memory: fill, copy, page faults', /^__mem|clear_page|page_fault|do_anonymous_page|_int_malloc|_int_free|malloc|free|madvise|mmap/],
  ['threads: scheduling, waiting', /rayon|crossbeam|sched|spin|futex|finish_task_switch|schedule|yield|syscall|softirq|irq/],
  ["candle's element-wise ops and copies", /candle_core/],
];

function profile(c) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'motivnet-profile-'));
  const data = path.join(dir, 'perf.data');
  try {
    // Sampling is off until the benchmark's timed iterations start (perf's control fifos,
    // MOTIVNET_PERF_CONTROL): building the model, its random weights and the warm-up are left out.
    const [control, ack] = [path.join(dir, 'control'), path.join(dir, 'ack')];
    for (const fifo of [control, ack]) {
      if (spawnSync('mkfifo', [fifo]).status !== 0) throw new Error(`mkfifo ${fifo} failed`);
    }
    const perfArgs = ['record', '-F', '1999', '-g', '-D', '-1', '--control', `fifo:${control},${ack}`, '-o', data, '--', bin, ...c.args];
    const env = { ...process.env, RAYON_NUM_THREADS: String(threads), MOTIVNET_PERF_CONTROL: `${control},${ack}` };
    const rec = spawnSync('perf', perfArgs, { encoding: 'utf8', env });
    if (rec.status !== 0) throw new Error(`perf record failed: ${rec.stderr.trim().split('\n').pop()}`);
    const rep = spawnSync('perf', ['report', '-i', data, '--no-children', '--sort', 'symbol', '--stdio'], { encoding: 'utf8', maxBuffer: 64 << 20 });
    const shares = Object.fromEntries([...KINDS.map(([k]) => [k, 0]), ['other', 0]]);
    for (const line of rep.stdout.split('\n')) {
      const m = /^\s+([\d.]+)%\s+\[[.k]\]\s+(.*?)\s*$/.exec(line);
      if (!m) continue;
      const symbol = m[2];
      const kind = KINDS.find(([, re]) => re.test(symbol))?.[0] ?? 'other';
      shares[kind] += Number(m[1]);
    }
    return shares;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

if (spawnSync('perf', ['--version']).status !== 0) throw new Error('perf is not installed: it comes with the linux-perf package');
if (!existsSync(bin)) throw new Error(`${bin} is missing: run npm run bench:profile (it builds it)`);
const bf16Here = spawnSync(bin, ['--model', 'tiny', '--batch', '1', '--iters', '1', '--warmup', '0', '--skip-train', '--precision', 'bf16']).status === 0;
if (!bf16Here) console.log('this CPU has no AMX: the bf16 cases are left out');
const results = [];
for (const c of selected.filter((c) => bf16Here || !c.args.includes('bf16'))) {
  const shares = profile(c);
  results.push({ name: c.name, shares });
  console.log(`${c.name}: ${Object.entries(shares).filter(([, v]) => v >= 1).map(([k, v]) => `${k} ${v.toFixed(0)}%`).join(', ')}`);
}
const date = new Date().toISOString().slice(0, 10);
for (const r of results) r.date = date;
// A run of some cases (BENCH_CASES) keeps the last run's columns of the others, measured on
// this same machine with as many threads, so the table stays whole; each column keeps its date.
const lastFile = path.join(root, 'docs/benchmarks/profile.json');
if (process.env.BENCH_CASES && existsSync(lastFile)) {
  const last = JSON.parse(readFileSync(lastFile, 'utf8'));
  if (last.machine === machine() && last.threads === threads) {
    const measured = new Set(results.map((r) => r.name));
    const kept = last.cases.filter((r) => !measured.has(r.name)).map((r) => ({ ...r, date: r.date ?? last.date }));
    const order = (r) => CASES.findIndex((c) => c.name === r.name);
    results.splice(0, results.length, ...[...kept, ...results].sort((a, b) => order(a) - order(b)));
  }
}
const dates = [...new Set(results.map((r) => r.date))].sort();
const when = dates.length > 1 ? `columns measured ${dates[0]} to ${dates.at(-1)}` : date;
writeJson('profile', { date, machine: machine(), threads, cases: results });
const kinds = [...KINDS.map(([k]) => k), 'other'];
writeSection(
  'profile',
  `## Where our time goes

\`npm run bench:profile\` — ${when}, ${machine()}; ${threads} threads. \`perf record\` (CPU-clock samples, both threads)
of \`motivnet-bench\` on each case, sampling only its timed iterations (not building the model or the warm-up), each
sample counted where it landed (its own symbol, not its callers), grouped by kind of work. Shares of all samples, in
percent. The bf16 attention's softmax, which rounds straight into the tiles' layout, counts as softmax.

| kind of work | ${results.map((r) => r.name).join(' | ')} |
|---|${results.map(() => '---').join('|')}|
${kinds.map((k) => `| ${k} | ${results.map((r) => r.shares[k].toFixed(1)).join(' | ')} |`).join('\n')}`,
);
