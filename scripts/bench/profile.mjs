// `npm run bench:profile`: where our time goes, by kind of work, for the cases of `npm run
// bench`: `perf record` (CPU-clock sampling) of motivnet-bench, the samples' own symbols
// grouped into matmul kernels, attention, softmax, LayerNorm, GELU, Linear's other work, AdamW,
// memory traffic, thread scheduling, candle's element-wise ops and the rest. Results go to
// docs/BENCHMARKS.md and docs/benchmarks/profile.json. Needs `perf` (Linux).
//
//   BENCH_THREADS (default 2), BENCH_CASES (comma list of case ids; the other columns are kept
//   from the last run on this machine). Columns of a precision this CPU cannot run (bf16
//   without AVX512_BF16, int8 without VNNI) are kept from the last run that measured them, with the
//   machine they ran on named under the table.
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
  { id: 'train-small', name: 'train step, small, batch 2', args: ['--model', 'small', '--batch', '2', '--iters', '10', '--skip-forward'] },
  { id: 'forward-0.3b', name: 'inference forward, sapiens-0.3b, batch 1', args: ['--model', 'sapiens-0.3b', '--batch', '1', '--iters', '1', '--warmup', '1', '--skip-train'] },
  // int8 on the CPU (VNNI), where this CPU has it: as for bf16, the case is left out otherwise.
  { id: 'forward-tiny-int8', name: 'inference forward, tiny, batch 8, int8', args: ['--model', 'tiny', '--batch', '8', '--iters', '60', '--skip-train', '--precision', 'int8'] },
  { id: 'forward-small-int8', name: 'inference forward, small, batch 2, int8', args: ['--model', 'small', '--batch', '2', '--iters', '20', '--skip-train', '--precision', 'int8'] },
  { id: 'forward-0.3b-int8', name: 'inference forward, sapiens-0.3b, batch 1, int8', args: ['--model', 'sapiens-0.3b', '--batch', '1', '--iters', '1', '--warmup', '1', '--skip-train', '--precision', 'int8'] },
  // bf16 on the CPU (AMX tiles, or AVX512_BF16's dot products), where this CPU has it: the binary refuses it otherwise, and the case is left out.
  { id: 'forward-small-bf16', name: 'inference forward, small, batch 2, bf16', args: ['--model', 'small', '--batch', '2', '--iters', '20', '--skip-train', '--precision', 'bf16'] },
  { id: 'forward-0.3b-bf16', name: 'inference forward, sapiens-0.3b, batch 1, bf16', args: ['--model', 'sapiens-0.3b', '--batch', '1', '--iters', '1', '--warmup', '1', '--skip-train', '--precision', 'bf16'] },
  { id: 'train-tiny-bf16', name: 'train step, tiny, batch 8, bf16', args: ['--model', 'tiny', '--batch', '8', '--iters', '20', '--skip-forward', '--precision', 'bf16'] },
  { id: 'train-small-bf16', name: 'train step, small, batch 2, bf16', args: ['--model', 'small', '--batch', '2', '--iters', '10', '--skip-forward', '--precision', 'bf16'] },
];
const selected = process.env.BENCH_CASES ? CASES.filter((c) => process.env.BENCH_CASES.split(',').includes(c.id)) : CASES;

/** Kinds of work, by the symbols their samples land in; the first match wins. */
const KINDS = [
  // f32 products: `gemm`'s, and the few rows by W's rows of `kernels::linear` (the head's
  // layers after its cross-attention). Under bf16 the MLP's GELU runs inside the AMX product's
  // finish of each block (`amx::finish_block_bf16`) and counts with the bf16 products.
  ['matmul kernels (gemm)', /^gemm|gemm_f32|gemm_common|strided_gemm|kernels::gemm|few_rows_product|dot_tile/],
  // The attention in key blocks runs its products and its softmax in one function; the int8
  // one (its module's name holds the f32 one's) is matched first. The bf16 one's products are
  // the AMX kernel's own (counted with them); its softmax rounds its exponentials straight into
  // the tiles' layout (flash_attention_bf16::exponentiate_row) and counts as softmax.
  ['int8 attention in key blocks (VNNI products and softmax)', /flash_attention_int8/],
  ['softmax', /softmax|flash_attention_bf16/],
  ['f32 attention in key blocks (products and softmax)', /flash_attention/],
  ['bf16 products (AMX tiles or dot products, packing, rounding)', /kernels::amx|kernels::bf16_dot/],
  ['int8 products (VNNI tiles, quantizing rows)', /kernels::int8/],
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
/** Whether this CPU runs a precision: the binary refuses bf16 without AVX512_BF16 and int8 without VNNI. */
const runsHere = (precision) =>
  spawnSync(bin, ['--model', 'tiny', '--batch', '1', '--iters', '1', '--warmup', '0', '--skip-train', '--precision', precision]).status === 0;
const precisionOf = (c) => (c.args.includes('--precision') ? c.args[c.args.indexOf('--precision') + 1] : 'f32');
const here = { f32: true, bf16: runsHere('bf16'), int8: runsHere('int8') };
if (!here.bf16) console.log('this CPU has no AVX512_BF16: the bf16 cases are left out');
if (!here.int8) console.log('this CPU has no AVX512-VNNI: the int8 cases are left out');
const results = [];
for (const c of selected.filter((c) => here[precisionOf(c)])) {
  const shares = profile(c);
  results.push({ name: c.name, shares });
  console.log(`${c.name}: ${Object.entries(shares).filter(([, v]) => v >= 1).map(([k, v]) => `${k} ${v.toFixed(0)}%`).join(', ')}`);
}
const date = new Date().toISOString().slice(0, 10);
for (const r of results) Object.assign(r, { date, machine: machine() });
// The last run's columns that this run did not measure are kept, each with its date and
// machine, so the table stays whole: from this same machine (at as many threads) when only
// some cases ran (BENCH_CASES), and from any machine for a precision this CPU cannot run.
const lastFile = path.join(root, 'docs/benchmarks/profile.json');
if (existsSync(lastFile)) {
  const last = JSON.parse(readFileSync(lastFile, 'utf8'));
  const measured = new Set(results.map((r) => r.name));
  const keep = (r) => {
    const c = CASES.find((c) => c.name === r.name);
    if (!c || measured.has(r.name) || last.threads !== threads) return false;
    return !here[precisionOf(c)] || (process.env.BENCH_CASES && r.machine === machine());
  };
  const kept = last.cases.map((r) => ({ ...r, date: r.date ?? last.date, machine: r.machine ?? last.machine })).filter(keep);
  const order = (r) => CASES.findIndex((c) => c.name === r.name);
  results.splice(0, results.length, ...[...kept, ...results].sort((a, b) => order(a) - order(b)));
}
// Columns from another machine are marked and that machine named under the table.
const elsewhere = [...new Set(results.filter((r) => r.machine !== machine()).map((r) => r.machine))];
const mark = (r) => (r.machine === machine() ? '' : ` [${elsewhere.indexOf(r.machine) + 1}]`);
const footnotes = elsewhere.map((m, i) => `[${i + 1}] measured on another machine: ${m}, ${results.find((r) => r.machine === m).date}.`);
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
percent. The bf16 attention's softmax, which rounds straight into the tiles' layout, counts as softmax, its products with
the bf16 products (AMX tiles or dot products); the f32 and int8 attention in key blocks count their softmax with their products.

| kind of work | ${results.map((r) => r.name + mark(r)).join(' | ')} |
|---|${results.map(() => '---').join('|')}|
${kinds.map((k) => `| ${k} | ${results.map((r) => (r.shares[k] ?? 0).toFixed(1)).join(' | ')} |`).join('\n')}
${footnotes.length ? '\n' + footnotes.join('\n') : ''}`,
);
