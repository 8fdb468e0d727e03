/**
 * `motivnet serve`: the classifier behind HTTP (fastify).
 *
 *   POST /v1/predict    the image as the raw body (image/jpeg, image/png, image/webp or
 *                       application/octet-stream), or multipart/form-data with one or more
 *                       files in the field `image` (several: `predictions` in their order);
 *                       query `geometry=letterbox|stretch`, `faces=whole|detect` (detect:
 *                       `{faces: [{box, score, label, index, probabilities}], width, height}`),
 *                       `box=x,y,width,height` (or `faces=x,y,width,height`); with detect,
 *                       `smallFaces`, `upright`, `maxFaces`, `minScore`, `margin`.
 *   GET  /v1/model      the model's config, classes and parameter count.
 *   GET  /healthz       liveness: 200 while serving, 503 once shutting down.
 *   GET  /readyz        readiness: 200 once the model is loaded and warmed, 503 before and
 *                       while draining.
 *   GET  /metrics       Prometheus metrics (metrics.ts).
 *   GET  /openapi.json  the routes as OpenAPI 3.1 (openapi.ts).
 *
 * With an API key (auth.ts) every route but the two probes wants `Authorization: Bearer KEY`.
 * Every error is JSON `{statusCode, error, message}`. What the client got wrong is a 4xx; a
 * 5xx means the server failed or is overloaded (503 on timeout, with Retry-After), and 429
 * with Retry-After when the queue is full.
 */
import { readFileSync } from 'node:fs';
import { STATUS_CODES } from 'node:http';

import multipart from '@fastify/multipart';
import Fastify, { type FastifyError, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';

import type { FaceBox } from '../data/types.js';
import { checkDetectionOptions, type FaceDetectionOptions, type FacesOption } from '../faces.js';
import { MotivNetError } from '../errors.js';
import { requireApiKey, UnauthorizedError } from './auth.js';
import {
  ClassifierClosedError,
  ClassifierInputError,
  EmotionClassifier,
  QueueFullError,
  type Classification,
  type FacesClassification,
  type ClassifierGeometry,
} from './classifier.js';
import { Counter, Gauge, Histogram, PROMETHEUS_CONTENT_TYPE, Registry } from './metrics.js';
import { openApiDocument } from './openapi.js';

export interface ServerOptions {
  /** Name reported as `model` in responses (the preset or config file). */
  modelName: string;
  /** Largest request body in bytes. Default 10 MiB. */
  bodyLimit?: number;
  /** Longest a prediction may take, queueing included, in ms; then 503. Default 30 s. */
  timeoutMs?: number;
  /** Longest the client may take to send a request, in ms; then 408. Default 30 s. */
  requestTimeoutMs?: number;
  /** Log requests (pino, as fastify). Default false. */
  logger?: boolean;
  /** Most open connections; beyond them new ones are closed at once. Default 1024. */
  maxConnections?: number;
  /** Most images in one multipart request. Default 16. */
  maxImages?: number;
  /** Require `Authorization: Bearer KEY` on every route but /healthz and /readyz. */
  apiKey?: string;
  /** Run one model call before /readyz says ready. Default true. */
  warmUp?: boolean;
}

export const RAW_IMAGE_TYPES = ['image/jpeg', 'image/png', 'image/webp', 'application/octet-stream'];

class HttpError extends Error {
  constructor(
    readonly statusCode: number,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

class TimeoutError extends Error {}

/** The client closed its connection before its answer was ready. */
class ClientGoneError extends Error {
  constructor() {
    super('the client closed the connection');
  }
}

function parseGeometry(value: unknown): ClassifierGeometry | undefined {
  if (value === undefined) return undefined;
  if (value === 'letterbox' || value === 'stretch') return value;
  throw new HttpError(400, `geometry must be letterbox or stretch, got '${String(value)}'`);
}

function parseBox(value: unknown, name = 'box'): FaceBox | undefined {
  if (value === undefined) return undefined;
  const parts = String(value).split(',').map(Number);
  if (parts.length !== 4 || !parts.every(Number.isFinite)) {
    throw new HttpError(400, `${name} must be four numbers x,y,width,height, got '${String(value)}'`);
  }
  const [x, y, width, height] = parts as [number, number, number, number];
  return { x, y, width, height };
}

/** `smallFaces`, `upright`, `maxFaces`, `minScore`, `margin` of the query: a call's detection options. */
function parseDetection(query: Record<string, unknown>): FaceDetectionOptions | undefined {
  const flag = (name: string) => {
    const v = query[name];
    if (v === undefined) return undefined;
    if (v === 'true' || v === '1' || v === '') return true;
    if (v === 'false' || v === '0') return false;
    throw new HttpError(400, `${name} must be true or false, got '${String(v)}'`);
  };
  const number = (name: string) => {
    const v = query[name];
    if (v === undefined) return undefined;
    const n = Number(v);
    if (String(v).trim() === '' || !Number.isFinite(n)) throw new HttpError(400, `${name} must be a number, got '${String(v)}'`);
    return n;
  };
  const options: FaceDetectionOptions = { smallFaces: flag('smallFaces'), upright: flag('upright'), maxFaces: number('maxFaces'), minScore: number('minScore'), margin: number('margin') };
  const given = Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined));
  if (Object.keys(given).length === 0) return undefined;
  try {
    checkDetectionOptions(given);
  } catch (err) {
    throw new HttpError(400, (err as Error).message);
  }
  return given;
}

/** `faces=whole|detect|x,y,width,height`, or the older `box=x,y,width,height`. */
function parseFaces(faces: unknown, box: unknown): FacesOption | undefined {
  if (faces !== undefined && box !== undefined) throw new HttpError(400, 'give faces or box, not both');
  if (faces === 'whole' || faces === 'detect') return faces;
  if (faces !== undefined && !String(faces).includes(',')) throw new HttpError(400, `faces must be whole, detect or a box x,y,width,height, got '${String(faces)}'`);
  return parseBox(faces, 'faces') ?? parseBox(box);
}

/**
 * What a multipart form may hold: up to `maxImages` files of at most the body limit (and at
 * most the body limit together, checked as they arrive), a few small fields (ignored, but
 * parsed), few parts and headers. Beyond them the request gets a 413.
 */
function multipartLimits(bodyLimit: number, maxImages: number) {
  return { fileSize: bodyLimit, files: maxImages, fields: 10, fieldSize: 64 * 1024, parts: maxImages + 10, headerPairs: 64, fieldNameSize: 100 };
}

/**
 * The images of a request: its raw body, or the `image` files of a multipart form in their
 * order, with whether the form carried several (answered as a list).
 */
async function requestImages(request: FastifyRequest, bodyLimit: number, maxImages: number): Promise<{ images: Buffer[]; list: boolean }> {
  if (!request.isMultipart()) {
    const body = request.body;
    if (!Buffer.isBuffer(body)) throw new HttpError(400, 'the request has no image body');
    return { images: [body], list: false };
  }
  const images: Buffer[] = [];
  let total = 0;
  for await (const part of request.parts({ limits: multipartLimits(bodyLimit, maxImages) })) {
    if (part.type !== 'file') continue;
    if (part.fieldname !== 'image') {
      part.file.resume();
      continue;
    }
    // Counted as the chunks arrive: the form's images together never hold more than the limit.
    const chunks: Buffer[] = [];
    for await (const chunk of part.file as AsyncIterable<Buffer>) {
      total += chunk.length;
      if (total > bodyLimit) throw new HttpError(413, `the form's images are larger than ${bodyLimit} bytes together`);
      chunks.push(chunk);
    }
    if (part.file.truncated) throw new HttpError(413, `an image field is larger than ${bodyLimit} bytes`);
    images.push(Buffer.concat(chunks));
  }
  if (images.length === 0) throw new HttpError(400, "the multipart form has no file field named 'image'");
  return { images, list: images.length > 1 };
}

/**
 * Runs `work` with a signal that aborts after `ms` (rejecting with a TimeoutError), or when
 * `controller` (the request's own, aborted when its client leaves) is aborted. One controller
 * per request, not `AbortSignal.any`: Node 20 keeps signals made by `any` alive past their use,
 * and with them every listener and the images those hold (measured: about one decoded image per
 * request, a server's resident memory growing without end).
 */
function withTimeout<T>(work: (signal: AbortSignal) => Promise<T>, ms: number, controller = new AbortController()): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      const err = new TimeoutError(`the prediction took longer than ${ms} ms`);
      controller.abort(err);
      reject(err);
    }, ms);
  });
  return Promise.race([work(controller.signal), timeout]).finally(() => clearTimeout(timer));
}

/** The status, message and headers a client sees for an error. */
function describe(err: unknown, classifier: EmotionClassifier): { status: number; message: string; headers: Record<string, string> } {
  if (err instanceof HttpError) return { status: err.statusCode, message: err.message, headers: err.headers };
  if (err instanceof UnauthorizedError) return { status: 401, message: err.message, headers: err.headers };
  if (err instanceof ClassifierInputError) return { status: err.status, message: err.message, headers: {} };
  if (err instanceof QueueFullError) return { status: 429, message: err.message, headers: { 'retry-after': String(err.retryAfterS) } };
  if (err instanceof TimeoutError) {
    const retry = String(Math.max(1, Math.ceil(classifier.stats().pending / classifier.maxBatchSize)));
    return { status: 503, message: err.message, headers: { 'retry-after': retry } };
  }
  if (err instanceof ClassifierClosedError) return { status: 503, message: 'the server is shutting down', headers: {} };
  // Nobody reads this answer; it only closes the exchange in the log.
  if (err instanceof ClientGoneError) return { status: 408, message: err.message, headers: {} };
  // The model refused the input itself: the client's doing. Any other core failure is ours.
  if (err instanceof MotivNetError && err.code === 'MOTIVNET_INPUT') return { status: 400, message: err.message, headers: {} };
  const fe = err as FastifyError;
  // fastify's own client errors: unsupported media type, body too large, bad multipart, ...
  if (typeof fe.statusCode === 'number' && fe.statusCode >= 400 && fe.statusCode < 500) {
    return { status: fe.statusCode, message: fe.message, headers: {} };
  }
  return { status: 500, message: 'internal server error', headers: {} };
}

function send(reply: FastifyReply, status: number, message: string, headers: Record<string, string>): FastifyReply {
  return reply
    .code(status)
    .headers(headers)
    .send({ statusCode: status, error: STATUS_CODES[status] ?? 'Error', message });
}

/** The package's version, for /openapi.json. */
function packageVersion(): string {
  try {
    return (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  } catch {
    return '0.0.0';
  }
}

/** What the metrics endpoint reports, fed by hooks on every response and by the classifier. */
function serverMetrics(classifier: EmotionClassifier, ready: () => boolean) {
  const registry = new Registry();
  const requests = registry.add(new Counter('motivnet_http_requests_total', 'HTTP requests answered, by route, method and status'));
  const latency = registry.add(
    new Histogram('motivnet_http_request_duration_seconds', 'Time from a request arriving to its answer, by route', [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]),
  );
  const sizes = [1];
  while (sizes.at(-1)! < classifier.maxBatchSize) sizes.push(sizes.at(-1)! * 2);
  const batchSize = registry.add(new Histogram('motivnet_batch_size', 'Images per model call', sizes));
  const modelCalls = registry.add(new Counter('motivnet_model_calls_total', 'Model calls, by outcome'));
  const images = registry.add(new Counter('motivnet_images_classified_total', 'Images classified'));
  const decodeFailures = registry.add(new Counter('motivnet_decode_failures_total', 'Inputs refused at decoding, by kind'));
  registry.add(new Gauge('motivnet_queue_depth', 'Requests held now: decoding, queued or computing', () => classifier.stats().pending));
  registry.add(new Gauge('motivnet_ready', 'Whether the server reports itself ready (1) or not (0)', () => (ready() ? 1 : 0)));
  classifier.observe({
    batch(size, _ms, failed) {
      batchSize.observe(size);
      modelCalls.inc({ outcome: failed ? 'error' : 'ok' });
      if (!failed) images.inc({}, size);
    },
    decodeFailure(kind) {
      decodeFailures.inc({ kind });
    },
  });
  return { registry, requests, latency };
}

/** Builds the HTTP app around a classifier; `listen` is the caller's. */
export async function createServer(classifier: EmotionClassifier, options: ServerOptions): Promise<FastifyInstance> {
  const bodyLimit = options.bodyLimit ?? 10 * 1024 * 1024;
  const timeoutMs = options.timeoutMs ?? 30_000;
  const maxImages = options.maxImages ?? 16;
  if (!Number.isInteger(maxImages) || maxImages < 1) throw new RangeError(`maxImages must be a whole number of at least 1, got ${maxImages}`);
  const authorize = requireApiKey(options.apiKey);
  const app = Fastify({
    logger: options.logger ?? false,
    bodyLimit,
    requestTimeout: options.requestTimeoutMs ?? 30_000,
    // On close, idle keep-alive connections end at once; busy ones after their response.
    forceCloseConnections: 'idle',
    return503OnClosing: true,
  });
  app.server.maxConnections = options.maxConnections ?? 1024;
  let closing = false;
  let warmed = false;
  const ready = () => warmed && !closing;
  app.addHook('preClose', async () => {
    closing = true;
  });
  // Once closing, each response ends its connection: a keep-alive client would otherwise hold
  // the server open until its idle timeout after the last in-flight request.
  app.addHook('onSend', async (_request, reply) => {
    if (closing) reply.header('connection', 'close');
  });
  if (authorize) app.addHook('onRequest', authorize);

  const metrics = serverMetrics(classifier, ready);
  app.addHook('onResponse', async (request, reply) => {
    // The route's pattern, never the request's own path: a fixed set of series.
    const route = request.routeOptions.url ?? 'unmatched';
    metrics.requests.inc({ route, method: request.method, status: String(reply.statusCode) });
    metrics.latency.observe(reply.elapsedTime / 1000, { route });
  });

  // The model's first call pays for starting threads and touching memory: not a client's.
  const warming = options.warmUp === false ? Promise.resolve() : classifier.warmUp();
  warming.then(
    () => (warmed = true),
    (err: unknown) => app.log.error({ err }, 'the warm-up call failed: /readyz stays 503'),
  );

  // Only image bodies: JSON, text or a missing type get fastify's 415, not a parse attempt.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser(RAW_IMAGE_TYPES, { parseAs: 'buffer', bodyLimit }, (_req, body, done) => done(null, body));
  await app.register(multipart, { limits: multipartLimits(bodyLimit, maxImages) });

  app.setErrorHandler((err, request, reply) => {
    const { status, message, headers } = describe(err, classifier);
    if (status >= 500) request.log.error(err);
    return send(reply, status, message, headers);
  });
  app.setNotFoundHandler((request, reply) => send(reply, 404, `no route ${request.method} ${request.url}`, {}));

  app.get('/healthz', async (_request, reply) => (closing ? reply.code(503).send({ status: 'shutting down' }) : { status: 'ok' }));
  app.get('/readyz', async (_request, reply) => {
    if (ready()) return { status: 'ready' };
    return reply.code(503).send({ status: closing ? 'draining' : 'warming up' });
  });
  app.get('/metrics', async (_request, reply) => reply.type(PROMETHEUS_CONTENT_TYPE).send(metrics.registry.render()));
  const openApi = openApiDocument({ version: packageVersion(), classes: classifier.labels, bodyLimit, maxImages, apiKey: authorize !== undefined });
  app.get('/openapi.json', async () => openApi);

  app.get('/v1/model', async () => {
    const model = classifier.model;
    return {
      model: options.modelName,
      classes: model.labels,
      config: model.config,
      parameters: model.parameterCounts(),
      batching: { maxBatchSize: classifier.maxBatchSize, maxWaitMs: classifier.maxWaitMs, maxQueue: classifier.maxQueue },
      limits: { bodyBytes: bodyLimit, images: maxImages, pixels: classifier.maxPixels, aspectRatio: classifier.maxAspectRatio, timeoutMs },
    };
  });

  // Admission before the body is read: predictions in flight (reading their body, decoding,
  // queued or computing) are capped at the classifier's queue, so a full server answers 429 at
  // once instead of taking in bodies it has no room for.
  let admitted = 0;
  const admit = async (request: FastifyRequest, reply: FastifyReply) => {
    const full = classifier.admission() ?? (admitted >= classifier.maxQueue ? new QueueFullError(classifier.maxQueue, 1) : undefined);
    if (full) {
      // The body is not wanted: the connection closes after the answer instead of reading it.
      reply.header('connection', 'close');
      throw full;
    }
    admitted++;
    reply.raw.once('close', () => admitted--);
    // A client that leaves takes its work with it: its decode is cancelled and its queue slot
    // freed (the response would go nowhere).
    const gone = new AbortController();
    reply.raw.once('close', () => {
      if (!reply.raw.writableFinished) gone.abort(new ClientGoneError());
    });
    (request as FastifyRequest & { gone?: AbortController }).gone = gone;
  };

  const answer = (c: Classification | FacesClassification) => {
    if ('faces' in c) {
      const faces = c.faces.map((f) => ({ box: f.box, score: f.score, label: f.label, index: f.index, probabilities: f.probabilities }));
      return { faces, width: c.width, height: c.height };
    }
    return { label: c.label, probabilities: c.probabilities };
  };

  app.post('/v1/predict', { onRequest: admit }, async (request) => {
    const started = performance.now();
    const query = request.query as Record<string, unknown>;
    const geometry = parseGeometry(query.geometry);
    const faces = parseFaces(query.faces, query.box);
    const detection = parseDetection(query);
    const { images, list } = await requestImages(request, bodyLimit, maxImages);
    const gone = (request as FastifyRequest & { gone?: AbortController }).gone;
    const latencyMs = () => Math.round((performance.now() - started) * 100) / 100;
    const classify = (bytes: Buffer, signal: AbortSignal) => {
      if (bytes.length === 0) return Promise.reject(new HttpError(400, list ? 'an empty image field' : 'empty body: send the image bytes'));
      return classifier.classify(bytes, { geometry, faces, detection, signal });
    };
    if (!list) {
      const result = await withTimeout((signal) => classify(images[0]!, signal), timeoutMs, gone);
      return { ...answer(result), model: options.modelName, latencyMs: latencyMs() };
    }
    // Several images: each answered in its place, a prediction or the error it alone got.
    const settled = await withTimeout((signal) => Promise.allSettled(images.map((bytes) => classify(bytes, signal))), timeoutMs, gone);
    const predictions = settled.map((s) => {
      if (s.status === 'fulfilled') return answer(s.value);
      const { status, message } = describe(s.reason, classifier);
      return { error: { statusCode: status, error: STATUS_CODES[status] ?? 'Error', message } };
    });
    return { predictions, model: options.modelName, latencyMs: latencyMs() };
  });

  return app;
}
