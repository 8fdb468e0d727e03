// `npm run bench:serve`: load test of `motivnet serve` with autocannon (not run in CI).
//
// Starts the server on random `tiny` weights, then measures requests/s and p50/p99 latency at
// concurrency 1, 8 and 32, and the server's resident memory before and after 10,000 requests
// of which 10% are malformed (every one of those must get a 4xx, none a 5xx). Then a hostile
// mix: thin PNGs (100000 x 383, 38 million pixels in a few hundred bytes), SVG sent as JPEG,
// bodies that trickle in, clients that leave mid-request, beside good requests; the server's
// peak resident memory must stay under 800 MB. Last, solid PNGs just under the pixel limit
// (legal, and decoded at full size), whose peak is reported on its own.
// Writes the `serve` section of docs/BENCHMARKS.md and docs/benchmarks/serve.json.
//
//   BENCH_SECONDS   seconds per concurrency level (default 15)
//   BENCH_REQUESTS  requests of the memory run (default 10000)
//   BENCH_HOSTILE   requests of the hostile mix (default 2000)
import { spawn } from 'node:child_process';
import { connect } from 'node:net';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import autocannon from 'autocannon';
import sharp from 'sharp';

import { machine, root, writeJson, writeSection } from './common.mjs';

const seconds = Number(process.env.BENCH_SECONDS ?? 15);
const memoryRequests = Number(process.env.BENCH_REQUESTS ?? 10_000);
const hostileRequests = Number(process.env.BENCH_HOSTILE ?? 2000);
const RSS_LIMIT_MB = 800;
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

/** The server's resident memory now (VmRSS) or at its peak so far (VmHWM), in MB. */
function rssMb(field = 'VmRSS') {
  const status = readFileSync(`/proc/${server.pid}/status`, 'utf8');
  return Number(new RegExp(`${field}:\\s+(\\d+)`).exec(status)[1]) / 1024;
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

// The hostile mix. Each kind of body, made once.
const solidPng = (width, height) => sharp({ create: { width, height, channels: 3, background: { r: 40, g: 40, b: 40 } } }).png({ compressionLevel: 9 }).toBuffer();
const thin = await solidPng(100_000, 383);
const square = await solidPng(6300, 6300); // 39.7 million pixels: under the 40 million limit
const svg = Buffer.from('<svg xmlns="http://www.w3.org/2000/svg" width="30000" height="30000"><rect width="30000" height="30000"/></svg>');
const hostileBodies = { thin, square, svg };
const post = (type, body) => ({ method: 'POST', path: '/v1/predict', headers: { 'content-type': type }, body });
const hostileMix = [post('image/png', thin), post('image/jpeg', svg), ...good.slice(0, 6)];

/** Connections that send a request's head and then its body a byte at a time, until stopped. */
function tricklers(n) {
  const { hostname, port } = new URL(url);
  const sockets = [];
  const timer = setInterval(() => sockets.forEach((s) => s.writable && s.write('x')), 500);
  for (let i = 0; i < n; i++) {
    const s = connect(Number(port), hostname, () => s.write(`POST /v1/predict HTTP/1.1\r\nhost: ${hostname}\r\ncontent-type: image/jpeg\r\ncontent-length: 1000000\r\n\r\n`));
    s.on('error', () => {});
    sockets.push(s);
  }
  return () => {
    clearInterval(timer);
    sockets.forEach((s) => s.destroy());
  };
}

/** Clients that send a whole good request and leave before the answer, `n` times over. */
async function leavers(n) {
  const { hostname, port } = new URL(url);
  for (let i = 0; i < n; i++) {
    await new Promise((resolve) => {
      const body = images[i % images.length];
      const s = connect(Number(port), hostname, () => {
        s.write(`POST /v1/predict HTTP/1.1\r\nhost: ${hostname}\r\ncontent-type: image/jpeg\r\ncontent-length: ${body.length}\r\n\r\n`);
        s.end(body, () => setTimeout(() => s.destroy(), 2));
      });
      s.on('error', () => {});
      s.on('close', resolve);
    });
  }
}

let sampledPeak = 0;
const sampler = setInterval(() => (sampledPeak = Math.max(sampledPeak, rssMb())), 25);
const stopTrickling = tricklers(64);
const [hostile] = await Promise.all([run({ connections: 32, amount: hostileRequests, requests: hostileMix }), leavers(200)]);
stopTrickling();
clearInterval(sampler);
const hostileCounts = statusCounts(hostile);
const peakRss = rssMb('VmHWM');
// At the pixel limit: legal images, each decoded at full size (in a worker, one at a time each).
const atLimit = await run({ connections: 32, amount: Math.max(64, hostileRequests / 8), requests: [post('image/png', square), ...good.slice(0, 3)] });
const atLimitCounts = statusCounts(atLimit);
const atLimitPeak = rssMb('VmHWM');
const afterHostile = await run({ connections: 8, amount: 200, requests: good });
const stillServing = afterHostile.non2xx === 0 && afterHostile.errors === 0;
console.log(`hostile mix: ${hostileRequests} requests, status counts ${JSON.stringify(hostileCounts)}, peak RSS ${peakRss.toFixed(0)} MB (sampled ${sampledPeak.toFixed(0)} MB)`);
console.log(`at the pixel limit: status counts ${JSON.stringify(atLimitCounts)}, peak RSS ${atLimitPeak.toFixed(0)} MB; serving after: ${stillServing}`);

server.kill('SIGTERM');
const exitCode = await new Promise((resolve) => server.on('exit', (code) => resolve(code)));
rmSync(dir, { recursive: true, force: true });

const date = new Date().toISOString().slice(0, 10);
const hostileReport = {
  requests: hostileRequests,
  bodies: Object.fromEntries(Object.entries(hostileBodies).map(([k, b]) => [k, b.length])),
  tricklingConnections: 64,
  clientsLeaving: 200,
  statusCounts: hostileCounts,
  peakRssMb: Math.round(peakRss),
  limitMb: RSS_LIMIT_MB,
  atPixelLimit: { statusCounts: atLimitCounts, peakRssMb: Math.round(atLimitPeak) },
  servingAfter: stillServing,
};
writeJson('serve', { date, machine: machine(), preset, seconds, levels, memory: { requests: memoryRequests, malformedShare: 0.1, statusCounts: counts, rssBeforeMb: rssBefore, rssAfterMb: rssAfter, fiveHundreds }, hostile: hostileReport, exitCode });
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

Hostile mix: ${hostileRequests} requests at concurrency 32, each of eight a thin PNG (100000 x 383
pixels in ${thin.length} bytes), an SVG sent as \`image/jpeg\`, or one of six good JPEGs; meanwhile 64
connections trickle a 1 MB body a byte every 500 ms and 200 clients send a good request and leave
before the answer. Status codes: ${Object.entries(hostileCounts).map(([c, n]) => `${c}: ${n}`).join(', ')}. The thin PNGs are refused
after their header (413, aspect ratio), the SVGs on their first bytes (415). Peak resident
memory of the server from its start to the end of this mix: **${peakRss.toFixed(0)} MB** (limit ${RSS_LIMIT_MB} MB).

At the pixel limit: ${Math.max(64, hostileRequests / 8)} requests at concurrency 32, one in four a solid PNG of 6300 x 6300
pixels (${square.length} bytes, under the 40-million-pixel limit, so decoded at full size: 119 MB of
RGB, one at a time per decoding worker, resized there and held afterwards only at the model's
input size). Status codes: ${Object.entries(atLimitCounts).map(([c, n]) => `${c}: ${n}`).join(', ')}. Peak resident memory: **${atLimitPeak.toFixed(0)} MB**;
\`--max-pixels\` bounds this figure (about 2 x 3 bytes a pixel per decoding worker).
${stillServing ? 'Afterwards the server answered 200 good requests, all 200.' : 'Afterwards the server FAILED to answer good requests.'}

The server exited with code ${exitCode} on SIGTERM.`,
);
if (peakRss >= RSS_LIMIT_MB || !stillServing) {
  console.error(`peak RSS ${peakRss.toFixed(0)} MB (limit ${RSS_LIMIT_MB}), serving after: ${stillServing}`);
  process.exitCode = 1;
}
if (fiveHundreds > 0) {
  console.error(`${fiveHundreds} responses were 5xx`);
  process.exitCode = 1;
}
