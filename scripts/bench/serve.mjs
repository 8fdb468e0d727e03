// `npm run bench:serve`: load test of `motivnet serve` with autocannon (not run in CI).
//
// Starts the server on random `tiny` weights, then measures requests/s and p50/p99 latency at
// concurrency 1, 8 and 32, and the server's resident memory before and after 10,000 requests
// of which 10% are malformed (every one of those must get a 4xx, none a 5xx). Writes the
// `serve` section of docs/BENCHMARKS.md and docs/benchmarks/serve.json.
//
//   BENCH_SECONDS   seconds per concurrency level (default 15)
//   BENCH_REQUESTS  requests of the memory run (default 10000)
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import autocannon from 'autocannon';
import sharp from 'sharp';

import { machine, root, writeJson, writeSection } from './common.mjs';

const seconds = Number(process.env.BENCH_SECONDS ?? 15);
const memoryRequests = Number(process.env.BENCH_REQUESTS ?? 10_000);
const preset = 'tiny';

const { MotivNet } = await import(path.join(root, 'dist/index.js'));

const dir = mkdtempSync(path.join(os.tmpdir(), 'motivnet-bench-serve-'));
const weights = path.join(dir, 'tiny.safetensors');
{
  const model = await MotivNet.load({ model: preset, seed: 0 });
  await model.save(weights);
  model.dispose();
}

/** Noisy 240 x 240 JPEGs, about the size of an AffectNet face crop. */
async function faces(n) {
  const out = [];
  let s = 7;
  for (let i = 0; i < n; i++) {
    const raw = Buffer.alloc(240 * 240 * 3);
    for (let p = 0; p < raw.length; p++) {
      s = (s * 1103515245 + 12345) >>> 0;
      raw[p] = (p % 3 === 0 ? 180 : 110) + ((s >>> 26) - 32);
    }
    out.push(await sharp(raw, { raw: { width: 240, height: 240, channels: 3 } }).jpeg({ quality: 90 }).toBuffer());
  }
  return out;
}
const images = await faces(16);

const server = spawn(process.execPath, [path.join(root, 'dist/cli.js'), 'serve', '--weights', weights, '--model', preset, '--port', '0'], {
  stdio: ['ignore', 'ignore', 'pipe'],
});
const url = await new Promise((resolve, reject) => {
  let err = '';
  server.stderr.on('data', (d) => {
    err += d.toString();
    const m = /listening on (http:\/\/\S+)/.exec(err);
    if (m) resolve(m[1]);
  });
  server.on('exit', (code) => reject(new Error(`the server exited (${code}): ${err}`)));
});

function rssMb() {
  const status = readFileSync(`/proc/${server.pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+)/.exec(status)[1]) / 1024;
}

const good = images.map((body) => ({ method: 'POST', path: '/v1/predict', headers: { 'content-type': 'image/jpeg' }, body }));
const malformed = [
  { method: 'POST', path: '/v1/predict', headers: { 'content-type': 'image/jpeg' }, body: images[0].subarray(0, 2000) },
  { method: 'POST', path: '/v1/predict', headers: { 'content-type': 'image/jpeg' }, body: Buffer.from('not an image') },
  { method: 'POST', path: '/v1/predict', headers: { 'content-type': 'text/plain' }, body: 'hello' },
  { method: 'POST', path: '/v1/predict', headers: { 'content-type': 'image/png' }, body: Buffer.alloc(0) },
];

function run(options) {
  return new Promise((resolve, reject) => {
    autocannon({ url, ...options }, (err, result) => (err ? reject(err) : resolve(result)));
  });
}

function statusCounts(result) {
  return Object.fromEntries(Object.entries(result.statusCodeStats ?? {}).map(([code, v]) => [code, v.count]));
}

// Warm-up: the worker pool, the allocator and the model's first batches.
await run({ connections: 8, amount: 400, requests: good });

const levels = [];
for (const connections of [1, 8, 32]) {
  const r = await run({ connections, duration: seconds, requests: good });
  const level = {
    connections,
    requestsPerSecond: Math.round(r.requests.average * 10) / 10,
    p50Ms: r.latency.p50,
    p99Ms: r.latency.p99,
    non2xx: r.non2xx,
    errors: r.errors,
  };
  levels.push(level);
  console.log(`concurrency ${connections}: ${level.requestsPerSecond} requests/s, p50 ${level.p50Ms} ms, p99 ${level.p99Ms} ms, non-2xx ${level.non2xx}, errors ${level.errors}`);
}

// Memory over a long run, one request in ten malformed.
const requestsMix = [...good.slice(0, 9), malformed[0], ...good.slice(0, 9), malformed[1], ...good.slice(0, 9), malformed[2], ...good.slice(0, 9), malformed[3]];
const rssBefore = rssMb();
const long = await run({ connections: 8, amount: memoryRequests, requests: requestsMix });
const rssAfter = rssMb();
const counts = statusCounts(long);
const fiveHundreds = Object.entries(counts).filter(([c]) => Number(c) >= 500).reduce((a, [, n]) => a + n, 0);
console.log(`memory run: ${memoryRequests} requests, status counts ${JSON.stringify(counts)}, RSS ${rssBefore.toFixed(0)} -> ${rssAfter.toFixed(0)} MB`);

server.kill('SIGTERM');
const exitCode = await new Promise((resolve) => server.on('exit', (code) => resolve(code)));
rmSync(dir, { recursive: true, force: true });

const date = new Date().toISOString().slice(0, 10);
writeJson('serve', { date, machine: machine(), preset, seconds, levels, memory: { requests: memoryRequests, malformedShare: 0.1, statusCounts: counts, rssBeforeMb: rssBefore, rssAfterMb: rssAfter, fiveHundreds }, exitCode });
writeSection(
  'serve',
  `## \`motivnet serve\` under load

\`npm run bench:serve\` — ${date}, ${machine()}. \`motivnet serve --model ${preset}\` on random weights with
its defaults (batches of up to 8, 5 ms batch wait, decoding on every core), autocannon on the same
machine, ${seconds} s per level after a 400-request warm-up. Bodies: 16 noisy 240 x 240 JPEGs (~${Math.round(images.reduce((a, b) => a + b.length, 0) / images.length / 1024)} KB).

| concurrency | requests/s | p50 ms | p99 ms | non-2xx | errors |
|---|---|---|---|---|---|
${levels.map((l) => `| ${l.connections} | ${l.requestsPerSecond} | ${l.p50Ms} | ${l.p99Ms} | ${l.non2xx} | ${l.errors} |`).join('\n')}

Memory: ${memoryRequests} requests at concurrency 8, one in ten malformed (truncated JPEG, not an
image, text/plain, empty body). Resident memory of the server ${rssBefore.toFixed(0)} MB before,
${rssAfter.toFixed(0)} MB after. Status codes: ${Object.entries(counts).map(([c, n]) => `${c}: ${n}`).join(', ')}; ${fiveHundreds} responses were 5xx.
The server exited with code ${exitCode} on SIGTERM.`,
);
if (fiveHundreds > 0) {
  console.error(`${fiveHundreds} responses were 5xx`);
  process.exitCode = 1;
}
