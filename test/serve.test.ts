import { spawn } from 'node:child_process';
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { connect, type Socket } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import sharp from 'sharp';
import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { MotivNet } from '../src/model.js';
import { EmotionClassifier, QueueFullError } from '../src/serve/classifier.js';
import { createServer } from '../src/serve/server.js';
import { tinyModelConfig } from './helpers/dataset.js';
import { solid, tempDir, writeText } from './helpers/files.js';

const __dirname = path.dirname(fileURLToPath(import.meta.url));
const cli = path.resolve(__dirname, '../dist/cli.js');

const dir = tempDir('serve');
const config = tinyModelConfig(dir, 0);
const weights = path.join(dir, 'weights.safetensors');
let model: MotivNet;

/** A 90 x 70 image with a coloured square, encoded as asked. */
function image(format: 'jpeg' | 'png' | 'webp' | 'gif', width = 90, height = 70): Promise<Buffer> {
  const raw = solid(width, height, [200, 120, 60], { x: 10, y: 20, size: 30, colour: [20, 60, 220] });
  return sharp(raw, { raw: { width, height, channels: 3 } }).toFormat(format).toBuffer();
}

function close(a: Record<string, number>, b: Record<string, number>): boolean {
  return Object.keys(a).every((k) => Math.abs(a[k]! - b[k]!) < 1e-5);
}

beforeAll(async () => {
  model = await MotivNet.load({ model: config, seed: 3 });
  await model.save(weights);
});

afterAll(() => model.dispose());

describe('EmotionClassifier', () => {
  let classifier: EmotionClassifier;
  beforeAll(async () => {
    classifier = await EmotionClassifier.create({ model, maxBatchSize: 4, maxWaitMs: 100, decodeThreads: 2 });
  });
  afterAll(() => classifier.close());

  it('classifies an encoded image and an image file, with every label', async () => {
    const jpeg = await image('jpeg');
    const r = await classifier.classify(jpeg);
    expect(Object.keys(r.probabilities)).toEqual([...model.labels]);
    expect(Object.values(r.probabilities).reduce((a, b) => a + b, 0)).toBeCloseTo(1, 5);
    expect(r.label).toBe(model.labels[r.index]);
    const best = Object.entries(r.probabilities).sort((a, b) => b[1] - a[1])[0]![0];
    expect(r.label).toBe(best);
    const file = writeText(path.join(dir, 'face.jpg'), jpeg);
    expect(close((await classifier.classify(file)).probabilities, r.probabilities)).toBe(true);
    expect(jpeg.length).toBeGreaterThan(0); // the caller's buffer is not taken away
  });

  it('crops to a face box and stretches on request', async () => {
    const png = await image('png');
    const box = { x: 10, y: 20, width: 30, height: 30 };
    const cropped = await sharp(png).extract({ left: 10, top: 20, width: 30, height: 30 }).png().toBuffer();
    const viaBox = await classifier.classify(png, { box });
    expect(close(viaBox.probabilities, (await classifier.classify(cropped)).probabilities)).toBe(true);
    const letterbox = await classifier.classify(png);
    const stretch = await classifier.classify(png, { geometry: 'stretch' });
    expect(close(letterbox.probabilities, stretch.probabilities)).toBe(false);
    expect(close(letterbox.probabilities, viaBox.probabilities)).toBe(false);
  });

  it('gathers concurrent calls into fewer model calls, with the same results as one by one', async () => {
    const inputs = await Promise.all(Array.from({ length: 12 }, (_, i) => image(i % 2 ? 'png' : 'jpeg', 60 + 4 * i, 70)));
    const alone = [];
    for (const input of inputs) alone.push(await classifier.classify(input));
    const before = classifier.stats().modelCalls;
    const together = await Promise.all(inputs.map((input) => classifier.classify(input)));
    const calls = classifier.stats().modelCalls - before;
    expect(calls).toBeLessThanOrEqual(4);
    together.forEach((r, i) => expect(close(r.probabilities, alone[i]!.probabilities)).toBe(true));
  });

  it('refuses calls beyond its queue limit at once, with a retry estimate', async () => {
    const small = await EmotionClassifier.create({ model, maxQueue: 2, maxWaitMs: 50, decodeThreads: 1 });
    try {
      const jpeg = await image('jpeg');
      const results = await Promise.allSettled(Array.from({ length: 6 }, () => small.classify(jpeg)));
      const refused = results.filter((r) => r.status === 'rejected');
      expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(2);
      expect(refused).toHaveLength(4);
      for (const r of refused) {
        const err = (r as PromiseRejectedResult).reason as QueueFullError;
        expect(err).toBeInstanceOf(QueueFullError);
        expect(err.retryAfterS).toBeGreaterThanOrEqual(1);
      }
    } finally {
      await small.close();
    }
  });

  it('close() lets the calls it holds finish, then refuses new ones', async () => {
    const own = await EmotionClassifier.create({ model, maxWaitMs: 50, decodeThreads: 1 });
    const held = [own.classify(await image('jpeg')), own.classify(await image('png'))];
    await own.close();
    for (const r of await Promise.all(held)) expect(model.labels).toContain(r.label);
    await expect(own.classify(await image('png'))).rejects.toThrow(/closed/);
    expect(model.disposed).toBe(false); // the caller's model stays the caller's
  });

  it('checks its options', async () => {
    await expect(EmotionClassifier.create({ model, maxBatchSize: 0 })).rejects.toThrow(/maxBatchSize must be a whole number of at least 1, got 0/);
    await expect(classifier.classify(await image('png'), { box: { x: -1, y: 0, width: 5, height: 5 } })).rejects.toThrow(/face box/);
    const odd = { geometry: 'constructor' as 'letterbox' };
    await expect(classifier.classify(await image('png'), odd)).rejects.toThrow(/geometry must be letterbox or stretch, got 'constructor'/);
  });
});

describe('HTTP server', () => {
  let classifier: EmotionClassifier;
  let app: FastifyInstance;
  let base: string;

  beforeAll(async () => {
    classifier = await EmotionClassifier.create({ model, maxPixels: 100_000, maxWaitMs: 2, decodeThreads: 2 });
    app = await createServer(classifier, { modelName: 'test-model', bodyLimit: 200_000 });
    base = await app.listen({ port: 0, host: '127.0.0.1' });
  });
  afterAll(async () => {
    await app.close();
    await classifier.close();
  });

  const post = (body: BodyInit | undefined, type?: string, query = '') =>
    fetch(`${base}/v1/predict${query}`, { method: 'POST', body, headers: type ? { 'content-type': type } : {} });

  async function expectError(res: Response, status: number, message: RegExp): Promise<void> {
    expect(res.status).toBe(status);
    expect(res.headers.get('content-type')).toMatch(/application\/json/);
    const body = (await res.json()) as { statusCode: number; message: string };
    expect(body.statusCode).toBe(status);
    expect(body.message).toMatch(message);
  }

  it('reports health and the model', async () => {
    expect(await (await fetch(`${base}/healthz`)).json()).toEqual({ status: 'ok' });
    const info = (await (await fetch(`${base}/v1/model`)).json()) as Record<string, any>;
    expect(info.model).toBe('test-model');
    expect(info.classes).toEqual([...model.labels]);
    expect(info.config.encoder.embedDim).toBe(32);
    expect(info.parameters.total).toBe(model.parameterCounts().total);
    expect(info.limits.pixels).toBe(100_000);
  });

  it('predicts from a raw JPEG, PNG, WebP or octet-stream body', async () => {
    const expected = await classifier.classify(await image('png'));
    for (const [format, type] of [['jpeg', 'image/jpeg'], ['png', 'image/png'], ['webp', 'image/webp'], ['png', 'application/octet-stream']] as const) {
      const res = await post(await image(format), type);
      expect(res.status, `${type}`).toBe(200);
      const body = (await res.json()) as { label: string; probabilities: Record<string, number>; model: string; latencyMs: number };
      expect(model.labels).toContain(body.label);
      expect(Object.keys(body.probabilities)).toEqual([...model.labels]);
      expect(body.model).toBe('test-model');
      expect(body.latencyMs).toBeGreaterThan(0);
      if (format === 'png') expect(close(body.probabilities, expected.probabilities)).toBe(true);
    }
  });

  it('predicts from a multipart form field named image, with query options', async () => {
    const form = new FormData();
    form.append('note', 'ignored');
    form.append('image', new Blob([await image('png')], { type: 'image/png' }), 'face.png');
    const res = await fetch(`${base}/v1/predict?geometry=stretch&box=10,20,30,30`, { method: 'POST', body: form });
    expect(res.status).toBe(200);
    const body = (await res.json()) as { probabilities: Record<string, number> };
    const direct = await classifier.classify(await image('png'), { geometry: 'stretch', box: { x: 10, y: 20, width: 30, height: 30 } });
    expect(close(body.probabilities, direct.probabilities)).toBe(true);
  });

  it('answers every bad input with a 4xx JSON error', async () => {
    const jpeg = await image('jpeg');
    await expectError(await post(Buffer.from('this is not an image at all'), 'image/jpeg'), 415, /not an image/);
    await expectError(await post(jpeg.subarray(0, Math.floor(jpeg.length / 2)), 'image/jpeg'), 400, /truncated or corrupt/);
    await expectError(await post(Buffer.alloc(0), 'image/jpeg'), 400, /empty/);
    await expectError(await post(Buffer.alloc(300_000, 7), 'image/jpeg'), 413, /too large/i);
    await expectError(await post(await image('png', 400, 400), 'image/png'), 413, /more than 100000 pixels/);
    await expectError(await post(await image('gif'), 'image/gif'), 415, /Unsupported Media Type/i);
    await expectError(await post(await image('gif'), 'application/octet-stream'), 415, /gif; accepted: jpeg, png, webp/);
    await expectError(await post('hello', 'text/plain'), 415, /Unsupported Media Type/i);
    await expectError(await post('{"image": "x"}', 'application/json'), 415, /Unsupported Media Type/i);
    await expectError(await post(undefined), 400, /no image body/);
    await expectError(await post(jpeg, 'image/jpeg', '?geometry=squash'), 400, /geometry must be letterbox or stretch/);
    await expectError(await post(jpeg, 'image/jpeg', '?box=1,2,3'), 400, /box must be four numbers/);
    await expectError(await post(jpeg, 'image/jpeg', '?box=-5,0,10,10'), 400, /face box/);
    const form = new FormData();
    form.append('picture', new Blob([jpeg], { type: 'image/jpeg' }), 'face.jpg');
    await expectError(await fetch(`${base}/v1/predict`, { method: 'POST', body: form }), 400, /no file field named 'image'/);
    // A form of many small fields: refused at the limit of parts, not parsed to its end.
    const crowded = new FormData();
    for (let i = 0; i < 40; i++) crowded.append(`f${i}`, 'x');
    crowded.append('image', new Blob([jpeg], { type: 'image/jpeg' }), 'face.jpg');
    await expectError(await fetch(`${base}/v1/predict`, { method: 'POST', body: crowded }), 413, /limit/i);
    await expectError(await fetch(`${base}/v2/predict`, { method: 'POST' }), 404, /no route POST \/v2\/predict/);
    // Still serving after all of that.
    expect((await post(jpeg, 'image/jpeg')).status).toBe(200);
  });

  it('answers 503 with Retry-After when a prediction outlasts the timeout', async () => {
    // A batch wait longer than the timeout: the request is still queued when time runs out.
    const slow = await EmotionClassifier.create({ model, maxWaitMs: 400, decodeThreads: 1 });
    const app2 = await createServer(slow, { modelName: 'slow', timeoutMs: 100 });
    const url = await app2.listen({ port: 0, host: '127.0.0.1' });
    try {
      const res = await fetch(`${url}/v1/predict`, { method: 'POST', body: await image('jpeg'), headers: { 'content-type': 'image/jpeg' } });
      await expectError(res, 503, /took longer than 100 ms/);
      expect(Number(res.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
      // The abandoned request left the queue: the classifier still answers.
      expect((await slow.classify(await image('png'))).label).toBeTruthy();
    } finally {
      await app2.close();
      await slow.close();
    }
  });

  it('answers 429 with Retry-After when the queue is full', async () => {
    const small = await EmotionClassifier.create({ model, maxQueue: 1, maxWaitMs: 200, decodeThreads: 1 });
    const busy = await createServer(small, { modelName: 'busy' });
    const url = await busy.listen({ port: 0, host: '127.0.0.1' });
    try {
      const jpeg = await image('jpeg');
      const responses = await Promise.all(
        Array.from({ length: 4 }, () => fetch(`${url}/v1/predict`, { method: 'POST', body: jpeg, headers: { 'content-type': 'image/jpeg' } })),
      );
      const statuses = responses.map((r) => r.status).sort();
      expect(statuses).toEqual([200, 429, 429, 429]);
      const limited = responses.find((r) => r.status === 429)!;
      expect(Number(limited.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
      expect(((await limited.json()) as { message: string }).message).toMatch(/limit of 1 pending request/);
    } finally {
      await busy.close();
      await small.close();
    }
  });
});

describe('HTTP server under pressure', () => {
  /** Sends the head of a POST with a large declared body and resolves with the first answer, body unsent. */
  function headOnly(url: string, length: number): Promise<{ status: number; headers: IncomingHttpHeaders; sentBody: boolean }> {
    return new Promise((resolve, reject) => {
      const req = httpRequest(`${url}/v1/predict`, { method: 'POST', headers: { 'content-type': 'image/jpeg', 'content-length': String(length) } });
      req.on('response', (res) => {
        res.resume();
        resolve({ status: res.statusCode ?? 0, headers: res.headers, sentBody: false });
        req.destroy();
      });
      req.on('error', reject);
      req.flushHeaders();
    });
  }

  it('refuses with 429 before reading the body when full, and a client that leaves frees its slot', async () => {
    // One slot, and a batch wait long enough that a queued request sits there.
    const one = await EmotionClassifier.create({ model, maxQueue: 1, maxWaitMs: 3000, decodeThreads: 1 });
    const app = await createServer(one, { modelName: 'one' });
    const url = await app.listen({ port: 0, host: '127.0.0.1' });
    try {
      const jpeg = await image('jpeg');
      const leaving = new AbortController();
      const first = fetch(`${url}/v1/predict`, { method: 'POST', body: jpeg, headers: { 'content-type': 'image/jpeg' }, signal: leaving.signal }).catch((e: Error) => e);
      await waitFor(() => one.stats().pending === 1);
      // Full: a 50 MB upload is answered 429 from its head alone, and the connection closes.
      const refused = await headOnly(url, 50 * 1024 * 1024);
      expect(refused.status).toBe(429);
      expect(Number(refused.headers['retry-after'])).toBeGreaterThanOrEqual(1);
      expect(refused.headers.connection).toBe('close');
      // The first client leaves: its queued image is dropped at once, not when its batch comes.
      leaving.abort();
      expect(await first).toBeInstanceOf(Error);
      await waitFor(() => one.stats().pending === 0, 1000);
      const res = await fetch(`${url}/v1/predict?geometry=stretch`, { method: 'POST', body: jpeg, headers: { 'content-type': 'image/jpeg' } });
      expect(res.status).toBe(200);
      expect(one.stats().images).toBe(1); // the abandoned image never reached the model
    } finally {
      await app.close();
      await one.close();
    }
  }, 30_000);

  it('closes connections beyond maxConnections', async () => {
    const cls = await EmotionClassifier.create({ model, decodeThreads: 1 });
    const app = await createServer(cls, { modelName: 'few', maxConnections: 2 });
    const url = new URL(await app.listen({ port: 0, host: '127.0.0.1' }));
    const sockets = [] as Socket[];
    try {
      const open = () =>
        new Promise<Socket>((resolve, reject) => {
          const socket = connect(Number(url.port), url.hostname, () => resolve(socket));
          socket.on('error', reject);
          sockets.push(socket);
        });
      await open();
      await open();
      const third = await open();
      const closed = await new Promise<boolean>((resolve) => {
        third.once('close', () => resolve(true));
        third.write('GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n');
        setTimeout(() => resolve(false), 2000);
      });
      expect(closed).toBe(true);
    } finally {
      for (const s of sockets) s.destroy();
      await app.close();
      await cls.close();
    }
  });
});

/** Resolves once `check` holds (polled), or rejects after `ms`. */
async function waitFor(check: () => boolean, ms = 5000): Promise<void> {
  const until = Date.now() + ms;
  while (!check()) {
    if (Date.now() > until) throw new Error('condition not reached in time');
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Starts `motivnet serve` with `args` and resolves once it listens; `stderr()` is all it wrote so far. */
async function startServe(args: string[]) {
  const child = spawn(process.execPath, [cli, 'serve', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  const url = await new Promise<string>((resolve, reject) => {
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
      const m = /listening on (http:\/\/\S+)/.exec(stderr);
      if (m) resolve(m[1]!);
    });
    child.on('exit', (code) => reject(new Error(`serve exited early (${code}): ${stderr}`)));
  });
  return { child, url, stderr: () => stderr };
}

describe('motivnet serve', () => {
  it('finishes the request in flight on SIGTERM, then exits cleanly', async () => {
    // A long batch wait keeps the request inside the server when the signal arrives.
    const { child, url, stderr } = await startServe(['--weights', weights, '--model', config, '--port', '0', '--max-wait-ms', '1500', '--threads', '1']);
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    const inFlight = fetch(`${url}/v1/predict`, { method: 'POST', body: await image('jpeg'), headers: { 'content-type': 'image/jpeg' } });
    await new Promise((r) => setTimeout(r, 500));
    child.kill('SIGTERM');
    const res = await inFlight;
    expect(res.status).toBe(200);
    expect(model.labels).toContain(((await res.json()) as { label: string }).label);
    expect(await exited).toBe(0);
    expect(stderr()).toMatch(/SIGTERM: finishing the requests in flight/);
    await expect(fetch(`${url}/healthz`)).rejects.toThrow();
  });

  it("serves a 7-class checkpoint in the released layout with the head from the file", async () => {
    const fixtures = path.resolve(__dirname, '../crates/motivnet/tests/fixtures');
    const args = ['--weights', path.join(fixtures, 'motivnet7.pth'), '--model', path.join(fixtures, 'config_encoder_only.json'), '--port', '0', '--threads', '1'];
    const { child, url } = await startServe(args);
    try {
      const seven = ['neutral', 'happy', 'sad', 'surprise', 'fear', 'disgust', 'anger'];
      const res = await fetch(`${url}/v1/predict`, { method: 'POST', body: await image('png'), headers: { 'content-type': 'image/png' } });
      expect(res.status).toBe(200);
      const body = (await res.json()) as { probabilities: Record<string, number>; model: string };
      expect(Object.keys(body.probabilities)).toEqual(seven);
      // The config's name, not its path on this machine, in every response.
      expect(body.model).toBe('config_encoder_only');
      const info = await (await fetch(`${url}/v1/model`)).text();
      expect(info).toContain('"model":"config_encoder_only"');
      expect(info).not.toContain(fixtures);
    } finally {
      child.kill('SIGTERM');
    }
  });

  it('requires --weights and names a missing weights file', async () => {
    const run = (...args: string[]) =>
      new Promise<{ code: number | null; stderr: string }>((resolve) => {
        const c = spawn(process.execPath, [cli, 'serve', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
        let stderr = '';
        c.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
        c.on('exit', (code) => resolve({ code, stderr }));
      });
    const noWeights = await run('--model', config);
    expect(noWeights.code).not.toBe(0);
    expect(noWeights.stderr).toMatch(/--weights/);
    const missing = await run('--weights', path.join(dir, 'nope.safetensors'), '--model', config, '--port', '0');
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/nope\.safetensors/);
  });
});
