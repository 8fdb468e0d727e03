// `npm run fuzz`: every reader of untrusted bytes, fuzzed for a fixed time budget each.
//
//   Rust (crates/fuzz, motivnet-fuzz)   pth, safetensors, state
//   TypeScript (ts-targets.mjs)         labels-json, affectnet-csv, image-header
//
// Each target runs in a process of its own. A crash is a panic that escapes a Rust reader, an
// exception a TypeScript reader should not throw, or a process that dies (an abort, a native
// crash): its input is kept under .cache/fuzz/crashes/ and the run fails. Every crash found
// becomes a regression test (the core's: crates/motivnet/tests/hostile_files.rs).
//
//   FUZZ_SECONDS  budget per target (default 30)
//   FUZZ_SEED     first seed (default: the date, so each day explores new inputs)
//   FUZZ_TARGETS  a comma-separated subset
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';

import { root } from '../bench/common.mjs';

const seconds = Number(process.env.FUZZ_SECONDS ?? 30);
const seed = Number(process.env.FUZZ_SEED ?? new Date().toISOString().slice(0, 10).replace(/-/g, ''));
const work = path.join(root, '.cache/fuzz');
const crashes = path.join(work, 'crashes');
const host = execFileSync('rustc', ['-vV'], { encoding: 'utf8' }).match(/^host: (.*)$/m)[1];
const fuzzBin = path.join(root, 'target', host, 'release', 'motivnet-fuzz');

const TARGETS = [
  { name: 'pth', ext: 'pth', cmd: fuzzBin, args: ['--target', 'pth', '--fixtures', path.join(root, 'crates/motivnet/tests/fixtures')] },
  { name: 'safetensors', ext: 'safetensors', cmd: fuzzBin, args: ['--target', 'safetensors', '--fixtures', path.join(root, 'crates/motivnet/tests/fixtures')] },
  { name: 'state', ext: 'safetensors', cmd: fuzzBin, args: ['--target', 'state', '--fixtures', path.join(root, 'crates/motivnet/tests/fixtures')] },
  { name: 'labels-json', ext: 'json', cmd: process.execPath, args: [path.join(root, 'scripts/fuzz/ts-targets.mjs'), '--target', 'labels-json'] },
  { name: 'affectnet-csv', ext: 'csv', cmd: process.execPath, args: [path.join(root, 'scripts/fuzz/ts-targets.mjs'), '--target', 'affectnet-csv'] },
  { name: 'image-header', ext: 'bin', cmd: process.execPath, args: [path.join(root, 'scripts/fuzz/ts-targets.mjs'), '--target', 'image-header'] },
];
const selected = process.env.FUZZ_TARGETS ? TARGETS.filter((t) => process.env.FUZZ_TARGETS.split(',').includes(t.name)) : TARGETS;
if (!existsSync(fuzzBin)) throw new Error(`${fuzzBin} is not built: run \`npm run fuzz\` (it builds it first)`);
mkdirSync(crashes, { recursive: true });

const before = new Set(readdirSync(crashes));
let failed = 0;
const rows = [];
for (const [i, t] of selected.entries()) {
  const args = [...t.args, '--seconds', String(seconds), '--seed', String(seed + i), '--work', work];
  // candle's errors carry a backtrace when RUST_BACKTRACE is set: noise for a million inputs.
  const r = spawnSync(t.cmd, args, { encoding: 'utf8', env: { ...process.env, RUST_BACKTRACE: '0' }, maxBuffer: 256 * 2 ** 20, timeout: (seconds + 120) * 1000 });
  const summary = (r.stdout ?? '').trim().split('\n').filter((l) => l.startsWith('{')).at(-1);
  for (const line of (r.stderr ?? '').split('\n').filter((l) => l.startsWith('crash:'))) console.error(line);
  if (!summary || r.signal || (r.status !== 0 && r.status !== 1)) {
    // The process died: the input it was reading is the crash.
    failed++;
    const current = path.join(work, `current-${t.name}.${t.ext}`);
    const kept = path.join(crashes, `${t.name}-died-${Date.now()}.${t.ext}`);
    if (existsSync(current)) copyFileSync(current, kept);
    console.error(`crash: the ${t.name} target's process died (${r.signal ?? `exit ${r.status}`}); input kept at ${kept}\n${(r.stderr ?? '').split('\n').slice(-15).join('\n')}`);
    rows.push({ target: t.name, died: true });
    continue;
  }
  const s = JSON.parse(summary);
  if (s.crashes > 0) failed++;
  rows.push(s);
  console.log(`${t.name.padEnd(14)} ${String(s.runs).padStart(8)} inputs in ${seconds} s: ${s.read} read, ${s.refused} refused${s.caughtPanics ? ` (${s.caughtPanics} by a caught panic)` : ''}, ${s.crashes} crashes, ${s.answers} kinds of answer`);
}
const found = readdirSync(crashes).filter((f) => !before.has(f));
if (failed > 0) {
  console.error(`\n${failed} target(s) crashed; inputs under ${path.relative(root, crashes)}: ${found.join(', ')}`);
  process.exitCode = 1;
} else {
  console.log(`\nno crashes (seed ${seed}, ${seconds} s per target)`);
}
