// Shared pieces of the benchmark drivers: the machine description and the BENCHMARKS.md writer.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const python = path.join(root, 'scripts/reference/.venv/bin/python');

export function machine() {
  const cpu = os.cpus()[0]?.model ?? 'unknown CPU';
  const features = vectorFeatures();
  return `${os.availableParallelism()} cores (${cpu}${features ? `; ${features}` : ''}), ${Math.round(os.totalmem() / 2 ** 30)} GiB, ${os.type()} ${os.release()}, Node ${process.version}`;
}

/**
 * The vector units that decide our kernels and the peers' (Linux): AVX-512, AVX512_VNNI, AVX512_BF16
 * and AMX.
 * Two machines that share a CPU name may differ here (a virtual machine may hide AMX), and
 * their numbers differ with them, so the name alone does not say which machine a row is from.
 */
function vectorFeatures() {
  if (!existsSync('/proc/cpuinfo')) return '';
  const flags = new Set((readFileSync('/proc/cpuinfo', 'utf8').match(/^flags\s*:(.*)$/m)?.[1] ?? '').trim().split(/\s+/));
  const has = (flag, name) => (flags.has(flag) ? name : `no ${name}`);
  return [has('avx512f', 'AVX-512'), has('avx512_vnni', 'AVX512_VNNI'), has('avx512_bf16', 'AVX512_BF16'), has('amx_bf16', 'AMX')].join(', ');
}

export function referenceMissing() {
  return `the PyTorch/OpenCV reference is not installed: run scripts/reference/setup (a large download, once), then rerun`;
}

/** Replaces the section between `<!-- NAME:start -->` and `<!-- NAME:end -->` of docs/BENCHMARKS.md. */
export function writeSection(name, body) {
  const file = path.join(root, 'docs/BENCHMARKS.md');
  const start = `<!-- ${name}:start -->`;
  const end = `<!-- ${name}:end -->`;
  let text = existsSync(file) ? readFileSync(file, 'utf8') : '# Benchmarks\n';
  const block = `${start}\n${body.trim()}\n${end}`;
  const i = text.indexOf(start);
  const j = text.indexOf(end);
  text = i >= 0 && j > i ? text.slice(0, i) + block + text.slice(j + end.length) : `${text.trimEnd()}\n\n${block}\n`;
  writeFileSync(file, text);
}

export function writeJson(name, value) {
  const dir = path.join(root, 'docs/benchmarks');
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, `${name}.json`), JSON.stringify(value, null, 2) + '\n');
}
