/**
 * The server's operations surface and its limits on image shape: readiness, Prometheus
 * metrics, the API key, the OpenAPI document, several images in one form, and thin images
 * refused before their pixels are decoded; all through a real HTTP client (fetch).
 */

import { getEventListeners } from 'node:events';

import sharp from 'sharp';
import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { MotivNet } from '../src/model.js';
import { EmotionClassifier } from '../src/serve/classifier.js';
import { createServer } from '../src/serve/server.js';
import { tinyModelConfig } from './helpers/dataset.js';
import { solid, tempDir } from './helpers/files.js';

const dir = tempDir('serve-ops');
let model: MotivNet;

function image(format: 'jpeg' | 'png', width = 90, height = 70, colour: [number, number, number] = [200, 120, 60]): Promise<Buffer> {
  const raw = solid(width, height, colour, { x: 10, y: 20, size: 30, colour: [20, 60, 220] });
  return sharp(raw, { raw: { width, height, channels: 3 } }).toFormat(format).toBuffer();
}

function close(a: Record<string, number>, b: Record<string, number>, tol = 1e-5): boolean {
  return Object.keys(a).every((k) => Math.abs(a[k]! - b[k]!) < tol);
}

async function until(check: () => Promise<boolean>, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}

beforeAll(async () => {
  model = await MotivNet.load({ model: tinyModelConfig(dir, 0), seed: 5 });
});
afterAll(() => model.dispose());

async function serve(options: Partial<Parameters<typeof createServer>[1]> = {}, classifierOptions: Partial<Parameters<typeof EmotionClassifier.create>[0]> = {}) {
  const classifier = await EmotionClassifier.create({ model, maxWaitMs: 2, decodeThreads: 2, ...classifierOptions });
  const app = await createServer(classifier, { modelName: 'ops', bodyLimit: 300_000, ...options });
  const base = await app.listen({ port: 0, host: '127.0.0.1' });
  return {
    classifier,
    app,
    base,
    async stop() {
      await app.close();
      await classifier.close();
    },
  };
}

describe('the classifier holds what the model needs, not what the client sent', () => {
  let classifier: EmotionClassifier;
  beforeAll(async () => {
    classifier = await EmotionClassifier.create({ model, maxWaitMs: 2, decodeThreads: 2 });
  });
  afterAll(() => classifier.close());

  it('gives what predict gives on the decoded pixels, in either geometry', async () => {
    const png = await image('png', 130, 70);
    const { data, info } = await sharp(png).raw().toBuffer({ resolveWithObject: true });
    for (const geometry of ['letterbox', 'stretch'] as const) {
      const direct = await model.predict({ data: new Uint8Array(data), width: info.width, height: info.height }, { geometry });
      const served = await classifier.classify(png, { geometry });
      const expected = Object.fromEntries(model.labels.map((l, i) => [l, direct.probabilities[i]!]));
      expect(close(served.probabilities, expected, 1e-6), geometry).toBe(true);
    }
  });

  it("leaves no listener on a caller's signal once a call settles (a listener would hold its image)", async () => {
    const host = new AbortController();
    const jpeg = await image('jpeg');
    await Promise.all(Array.from({ length: 6 }, () => classifier.classify(jpeg, { signal: host.signal })));
    await classifier.classify(Buffer.from('not an image'), { signal: host.signal }).catch(() => undefined);
    expect(getEventListeners(host.signal, 'abort')).toHaveLength(0);
  });

  it('refuses an image of extreme aspect ratio after its header, before its pixels (413)', async () => {
    // 20000 x 383: 7.7 million pixels in a few KB of PNG, under the pixel limit.
    const thin = await sharp({ create: { width: 20_000, height: 383, channels: 3, background: { r: 9, g: 9, b: 9 } } }).png().toBuffer();
    expect(thin.length).toBeLessThan(100_000);
    const err = await classifier.classify(thin).catch((e: unknown) => e as { status: number; message: string });
    expect(err).toMatchObject({ status: 413 });
    expect((err as Error).message).toMatch(/20000 x 383: its longer side is more than 20 times its shorter/);
    // A wide photograph within the ratio still passes.
    expect((await classifier.classify(await image('jpeg', 400, 100))).label).toBeTruthy();
  });
});

describe('operations', () => {
  it('/readyz is 503 until the warm-up call is done, then 200; /healthz is 200 throughout', async () => {
    const classifier = await EmotionClassifier.create({ model, decodeThreads: 1 });
    let finishWarmUp!: () => void;
    const warmUp = classifier.warmUp.bind(classifier);
    classifier.warmUp = () => new Promise<void>((resolve) => (finishWarmUp = resolve)).then(warmUp);
    const app = await createServer(classifier, { modelName: 'ops' });
    const base = await app.listen({ port: 0, host: '127.0.0.1' });
    try {
      const early = await fetch(`${base}/readyz`);
      expect(early.status).toBe(503);
      expect(await early.json()).toEqual({ status: 'warming up' });
      expect((await fetch(`${base}/healthz`)).status).toBe(200);
      finishWarmUp();
      await until(async () => (await fetch(`${base}/readyz`)).status === 200);
      expect(classifier.stats().modelCalls).toBe(0); // the warm-up is not a served call
    } finally {
      await app.close();
      await classifier.close();
    }
  });

  it('/metrics counts requests by route and status, latency, batch sizes, model calls and decode failures', async () => {
    const s = await serve();
    try {
      const jpeg = await image('jpeg');
      const post = (body: Buffer) => fetch(`${s.base}/v1/predict`, { method: 'POST', body, headers: { 'content-type': 'image/jpeg' } });
      expect((await post(jpeg)).status).toBe(200);
      expect((await post(jpeg)).status).toBe(200);
      expect((await post(Buffer.from('GIF89a not really'))).status).toBe(415);
      expect((await fetch(`${s.base}/no/such/path?secret=1`)).status).toBe(404);
      const res = await fetch(`${s.base}/metrics`);
      expect(res.status).toBe(200);
      expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
      const text = await res.text();
      // Every sample line is `name{labels} value`; every family has HELP and TYPE.
      for (const line of text.trimEnd().split('\n')) {
        expect(line, line).toMatch(/^(# (HELP|TYPE) \w+ .+|\w+(\{(\w+="[^"]*",?)+\})? [-+0-9.eInfa]+)$/);
      }
      expect(text).toContain('motivnet_http_requests_total{route="/v1/predict",method="POST",status="200"} 2');
      expect(text).toContain('motivnet_http_requests_total{route="/v1/predict",method="POST",status="415"} 1');
      expect(text).toContain('motivnet_http_requests_total{route="unmatched",method="GET",status="404"} 1');
      expect(text).not.toContain('secret');
      expect(text).toMatch(/motivnet_http_request_duration_seconds_count\{route="\/v1\/predict"\} 3/);
      expect(text).toContain('motivnet_decode_failures_total{kind="format-not-accepted"} 1');
      expect(text).toContain('motivnet_model_calls_total{outcome="ok"} 2');
      expect(text).toContain('motivnet_images_classified_total 2');
      expect(text).toContain('motivnet_batch_size_bucket{le="1"} 2');
      expect(text).toContain('motivnet_batch_size_count 2');
      expect(text).toContain('motivnet_queue_depth 0');
      expect(text).toMatch(/# TYPE motivnet_ready gauge\nmotivnet_ready [01]/);
    } finally {
      await s.stop();
    }
  });

  it('with an API key: 401 without it or with another, 200 with it; the probes stay open', async () => {
    const key = 'k3y-0f-s1xteen-chars';
    await expect(serve({ apiKey: 'short' })).rejects.toThrow(/at least 16 characters/);
    const s = await serve({ apiKey: key });
    try {
      const jpeg = await image('jpeg');
      const post = (headers: Record<string, string>) => fetch(`${s.base}/v1/predict`, { method: 'POST', body: jpeg, headers: { 'content-type': 'image/jpeg', ...headers } });
      const none = await post({});
      expect(none.status).toBe(401);
      expect(none.headers.get('www-authenticate')).toMatch(/^Bearer/);
      expect(((await none.json()) as { message: string }).message).toMatch(/API key is required/);
      expect((await post({ authorization: `Bearer ${key}x` })).status).toBe(401);
      expect((await post({ authorization: `Basic ${key}` })).status).toBe(401);
      expect((await post({ authorization: `Bearer ${key}` })).status).toBe(200);
      for (const route of ['/v1/model', '/metrics', '/openapi.json']) expect((await fetch(`${s.base}${route}`)).status, route).toBe(401);
      expect((await fetch(`${s.base}/v1/model`, { headers: { authorization: `Bearer ${key}` } })).status).toBe(200);
      expect((await fetch(`${s.base}/healthz`)).status).toBe(200);
      await until(async () => (await fetch(`${s.base}/readyz`)).status === 200);
    } finally {
      await s.stop();
    }
  });

  it('/openapi.json describes every route with its methods, limits and classes', async () => {
    const s = await serve({ maxImages: 5, apiKey: 'a-key-of-enough-length' });
    try {
      const doc = (await (await fetch(`${s.base}/openapi.json`, { headers: { authorization: 'Bearer a-key-of-enough-length' } })).json()) as any;
      expect(doc.openapi).toBe('3.1.0');
      const routes = Object.entries(doc.paths as Record<string, Record<string, unknown>>).flatMap(([p, ops]) => Object.keys(ops).map((m) => `${m.toUpperCase()} ${p}`));
      expect(routes.sort()).toEqual(['GET /healthz', 'GET /metrics', 'GET /openapi.json', 'GET /readyz', 'GET /v1/model', 'POST /v1/predict']);
      for (const r of routes) {
        const [method, url] = r.split(' ') as [string, string];
        expect(s.app.hasRoute({ method: method as 'GET', url }), r).toBe(true);
      }
      const predict = doc.paths['/v1/predict'].post;
      expect(predict.requestBody.content['multipart/form-data'].schema.properties.image.maxItems).toBe(5);
      expect(Object.keys(predict.responses)).toEqual(expect.arrayContaining(['200', '400', '401', '413', '415', '429', '503']));
      expect(doc.components.securitySchemes.bearer).toEqual({ type: 'http', scheme: 'bearer' });
      expect(doc.paths['/healthz'].get.security).toEqual([]);
      expect(JSON.stringify(doc)).toContain(JSON.stringify([...model.labels]));
    } finally {
      await s.stop();
    }
  });

  it('answers a form of several images with one prediction or error each, in their order', async () => {
    const s = await serve({ maxImages: 4 });
    try {
      const a = await image('png', 90, 70, [250, 20, 20]);
      const b = await image('jpeg', 60, 80, [20, 250, 20]);
      const form = new FormData();
      form.append('image', new Blob([a], { type: 'image/png' }), 'a.png');
      form.append('image', new Blob([Buffer.from('not an image')], { type: 'image/jpeg' }), 'bad.jpg');
      form.append('image', new Blob([b], { type: 'image/jpeg' }), 'b.jpg');
      const res = await fetch(`${s.base}/v1/predict?geometry=stretch`, { method: 'POST', body: form });
      expect(res.status).toBe(200);
      const body = (await res.json()) as { predictions: any[]; model: string };
      expect(body.model).toBe('ops');
      expect(body.predictions).toHaveLength(3);
      expect(close(body.predictions[0].probabilities, (await s.classifier.classify(a, { geometry: 'stretch' })).probabilities)).toBe(true);
      expect(body.predictions[1]).toEqual({ error: { statusCode: 415, error: 'Unsupported Media Type', message: expect.stringMatching(/not an image/) } });
      expect(close(body.predictions[2].probabilities, (await s.classifier.classify(b, { geometry: 'stretch' })).probabilities)).toBe(true);

      // Beyond the image count, or the body limit across the form's files: 413.
      const many = new FormData();
      for (let i = 0; i < 5; i++) many.append('image', new Blob([a], { type: 'image/png' }), `${i}.png`);
      expect((await fetch(`${s.base}/v1/predict`, { method: 'POST', body: many })).status).toBe(413);
      const heavy = new FormData();
      for (let i = 0; i < 3; i++) heavy.append('image', new Blob([Buffer.alloc(120_000, 1)], { type: 'image/png' }), `${i}.png`);
      const tooBig = await fetch(`${s.base}/v1/predict`, { method: 'POST', body: heavy });
      expect(tooBig.status).toBe(413);
      expect(((await tooBig.json()) as { message: string }).message).toMatch(/larger than 300000 bytes together/);
    } finally {
      await s.stop();
    }
  });
});


