/**
 * The classifier a backend embeds: encoded image in, `{label, probabilities}` out.
 *
 * Each call is decoded by the sharp worker pool (in parallel, off the event loop) and resized
 * there to the model's input size (the core's resize, as `predict` does it), then waits in a
 * queue for the model: a waiting call holds one input-sized image, whatever the size of the
 * image it came from, and the full-size pixels never leave the worker. The model runs one batch at a time; a batch starts when it is full
 * (`maxBatchSize`) or when its oldest image has waited `maxWaitMs`. A lone request therefore
 * waits at most `maxWaitMs`, and under load the queue fills while the model computes, so
 * batches grow and so does throughput. `maxQueue` bounds the calls held at once (decoding,
 * queued or computing), and the input-sized images held at once: past it a call fails at once
 * with {@link QueueFullError} rather than letting latency and memory grow without limit.
 *
 * With `faces: 'detect'` the worker finds the faces instead and resizes each one's crop: a call
 * then holds one input-sized image per face, counted against `maxQueue` like as many calls, and
 * its faces go to the model together (in calls of at most `maxBatchSize`, should one photograph
 * hold more faces than that).
 */
import { availableParallelism } from 'node:os';

import type { FaceBox } from '../data/types.js';
import { checkDetectionOptions, checkFaceBox, checkFacesOption, probabilitiesByLabel, type FaceClassification, type FaceDetectionOptions, type FacesOption } from '../faces.js';
import { concat } from '../images.js';
import { MotivNet, type LoadOptions } from '../model.js';
import { PreprocessPool } from '../preprocess/pool.js';
import type { DecodeFailure } from '../preprocess/types.js';

/** How an image is fitted to the model's input: letterbox keeps the aspect ratio (the reference's inference). */
export type ClassifierGeometry = 'letterbox' | 'stretch';

/** The formats a classifier decodes; anything else is refused as not an image. */
export const ACCEPTED_FORMATS = ['jpeg', 'png', 'webp'] as const;

export interface ClassifierOptions {
  /** A loaded model (the caller keeps ownership), or how to load one (the classifier owns it). */
  model: MotivNet | LoadOptions;
  /** Most images per model call. Default 8. */
  maxBatchSize?: number;
  /** Longest an image waits for a batch to fill, in ms. Default 5. */
  maxWaitMs?: number;
  /**
   * Most calls held at once (decoding, queued or computing), and most input-sized images held
   * at once (a call with faces holds one a face). Default 256.
   */
  maxQueue?: number;
  /** Images with more pixels than this are refused before decoding. Default 40 million. */
  maxPixels?: number;
  /**
   * Images whose longer side is more than this many times the shorter are refused before
   * decoding (a 100000 x 383 PNG is a few KB of body and 38 million pixels). Default 20.
   */
  maxAspectRatio?: number;
  /** Decoding workers. Default: the number of cores. */
  decodeThreads?: number;
  /** Default geometry of a call. Default 'letterbox'. */
  geometry?: ClassifierGeometry;
  /** Default of a call's `faces`. Default 'whole'. */
  faces?: 'whole' | 'detect';
  /** How faces are found and framed with `faces: 'detect'`, unless a call says otherwise. */
  detection?: FaceDetectionOptions;
  /**
   * Shrink large JPEGs while decoding: faster, and less memory per large image, but the
   * pixels are no longer the reference's (docs/PREPROCESSING.md). Default false.
   */
  fastDecode?: boolean;
}

export interface ClassifyOptions {
  geometry?: ClassifierGeometry;
  /**
   * What is classified: the whole image (the reference's inference), every face the detector
   * finds (`'detect'`: the answer is `{ faces: [...] }`), or the part inside a box (pixels of
   * the upright image).
   */
  faces?: FacesOption;
  /** How faces are found and framed with `faces: 'detect'`. */
  detection?: FaceDetectionOptions;
  /** Crop to this face box (pixels of the oriented image) before resizing: `faces: box`. */
  box?: FaceBox;
  /** Aborting drops the call if it has not reached the model yet. */
  signal?: AbortSignal;
}

export interface Classification {
  label: string;
  /** Index of `label` in the model's classes. */
  index: number;
  /** Every class's probability, by label, in class order. */
  probabilities: Record<string, number>;
}

/** The answer of `classify` with `faces: 'detect'`. */
export interface FacesClassification {
  /** Every face found, best detected first, with its classification; [] when there is none. */
  faces: FaceClassification[];
  /** The image's size after EXIF orientation: the space of the boxes. */
  width: number;
  height: number;
}

/** What a monitor hears of a classifier's work (`observe`). */
export interface ClassifierObserver {
  /** A model call of `size` images ended after `ms` milliseconds (`failed` when it threw). */
  batch?(size: number, ms: number, failed: boolean): void;
  /** An input was refused at decoding, for this reason. */
  decodeFailure?(kind: DecodeFailure): void;
}

export interface ClassifierStats {
  /** Model calls made so far. */
  modelCalls: number;
  /** Images classified so far. */
  images: number;
  /** Calls held now: decoding, queued or computing. */
  pending: number;
}

/** The input is not a usable image. `status` is the HTTP status it maps to. */
export class ClassifierInputError extends Error {
  constructor(
    message: string,
    readonly status: 400 | 413 | 415,
  ) {
    super(message);
    this.name = 'ClassifierInputError';
  }
}

/** Too many calls are held; `retryAfterS` estimates when there will be room. */
export class QueueFullError extends Error {
  constructor(
    readonly limit: number,
    readonly retryAfterS: number,
  ) {
    super(`the classifier is at its limit of ${limit} pending requests: retry in about ${retryAfterS} s`);
    this.name = 'QueueFullError';
  }
}

/** The classifier was closed before or while the call waited. */
export class ClassifierClosedError extends Error {
  constructor() {
    super('the classifier is closed');
    this.name = 'ClassifierClosedError';
  }
}

interface Waiting {
  /** `count` images at the model's input size, back to back: the image, or its faces' crops. */
  pixels: Uint8Array;
  count: number;
  enqueuedAt: number;
  signal?: AbortSignal;
  /** Takes the answers of the `count` images, in order. */
  resolve: (c: Classification[]) => void;
  reject: (e: Error) => void;
}

function positiveInt(name: string, value: number | undefined, fallback: number, min = 1): number {
  const v = value ?? fallback;
  if (!Number.isInteger(v) || v < min) throw new RangeError(`${name} must be a whole number of at least ${min}, got ${value}`);
  return v;
}

/** Maps a decode failure to the error and status a client should see. */
function inputError(failure: { kind: DecodeFailure; reason: string }, maxPixels: number): ClassifierInputError {
  switch (failure.kind) {
    case 'oversized':
      return new ClassifierInputError(`image too large: more than ${maxPixels} pixels`, 413);
    case 'extreme-aspect':
      return new ClassifierInputError(failure.reason, 413);
    case 'not-an-image':
    case 'format-not-accepted':
      return new ClassifierInputError(`${failure.reason}; send JPEG, PNG or WebP`, 415);
    default:
      return new ClassifierInputError(failure.reason, 400);
  }
}

export class EmotionClassifier {
  readonly model: MotivNet;
  readonly maxBatchSize: number;
  readonly maxWaitMs: number;
  readonly maxQueue: number;
  readonly maxPixels: number;
  readonly maxAspectRatio: number;
  readonly fastDecode: boolean;
  private readonly defaultGeometry: ClassifierGeometry;
  private readonly defaultFaces: 'whole' | 'detect';
  private readonly detection: FaceDetectionOptions;
  private readonly ownsModel: boolean;
  private readonly pool: PreprocessPool;
  /** Calls whose input tensor is ready, oldest first. */
  private readonly queue: Waiting[] = [];
  /** Images in the queue (a call with faces brings several). */
  private queuedImages = 0;
  /** Images held past decoding: queued or at the model. */
  private heldImages = 0;
  private timer: NodeJS.Timeout | undefined;
  private running = false;
  private closed = false;
  private pending = 0;
  private modelCalls = 0;
  private images = 0;
  /** Smoothed ms per model call, for Retry-After estimates. */
  private batchMs = 0;
  private idle: (() => void) | undefined;
  private readonly observers = new Set<ClassifierObserver>();

  private constructor(model: MotivNet, ownsModel: boolean, options: ClassifierOptions) {
    this.model = model;
    this.ownsModel = ownsModel;
    this.maxBatchSize = positiveInt('maxBatchSize', options.maxBatchSize, 8);
    this.maxWaitMs = positiveInt('maxWaitMs', options.maxWaitMs, 5, 0);
    this.maxQueue = positiveInt('maxQueue', options.maxQueue, 256);
    this.maxPixels = positiveInt('maxPixels', options.maxPixels, 40_000_000);
    this.maxAspectRatio = options.maxAspectRatio ?? 20;
    if (!(this.maxAspectRatio >= 1)) throw new RangeError(`maxAspectRatio must be at least 1, got ${options.maxAspectRatio}`);
    this.fastDecode = options.fastDecode ?? false;
    this.defaultGeometry = options.geometry ?? 'letterbox';
    if (!GEOMETRIES.includes(this.defaultGeometry)) throw new RangeError(`geometry must be letterbox or stretch, got '${this.defaultGeometry}'`);
    this.defaultFaces = options.faces ?? 'whole';
    if (this.defaultFaces !== 'whole' && this.defaultFaces !== 'detect') throw new RangeError(`faces must be whole or detect, got '${String(this.defaultFaces)}'`);
    this.detection = options.detection ?? {};
    checkDetectionOptions(this.detection);
    this.pool = new PreprocessPool({ threads: options.decodeThreads ?? availableParallelism() });
  }

  /** Loads the model when given load options, and starts the decoding workers. */
  static async create(options: ClassifierOptions): Promise<EmotionClassifier> {
    const given = options.model instanceof MotivNet;
    const model = given ? (options.model as MotivNet) : await MotivNet.load(options.model as LoadOptions);
    try {
      return new EmotionClassifier(model, !given, options);
    } catch (err) {
      if (!given) model.dispose();
      throw err;
    }
  }

  get labels(): readonly string[] {
    return this.model.labels;
  }

  stats(): ClassifierStats {
    return { modelCalls: this.modelCalls, images: this.images, pending: this.pending };
  }

  /**
   * Classifies one encoded image (a Buffer or Uint8Array of JPEG, PNG or WebP) or image file;
   * with `faces: 'detect'`, each face in it, all in the same model call.
   */
  async classify(input: Uint8Array | string, options: ClassifyOptions & { faces: 'detect' }): Promise<FacesClassification>;
  async classify(input: Uint8Array | string, options?: ClassifyOptions): Promise<Classification>;
  async classify(input: Uint8Array | string, options: ClassifyOptions = {}): Promise<Classification | FacesClassification> {
    if (this.closed) throw new ClassifierClosedError();
    const geometry = options.geometry ?? this.defaultGeometry;
    if (!GEOMETRIES.includes(geometry)) throw new ClassifierInputError(`geometry must be letterbox or stretch, got '${geometry}'`, 400);
    const faces = options.faces ?? options.box ?? this.defaultFaces;
    try {
      checkFacesOption(faces);
      if (options.box && options.faces !== undefined) throw new RangeError('give faces or box, not both');
      if (typeof faces === 'object') checkFaceBox(faces);
      if (options.detection) checkDetectionOptions(options.detection);
    } catch (err) {
      throw new ClassifierInputError((err as Error).message, 400);
    }
    const detect = faces === 'detect';
    if (this.pending >= this.maxQueue) throw new QueueFullError(this.maxQueue, this.retryAfterS());
    this.pending++;
    try {
      options.signal?.throwIfAborted();
      const { inputWidth, inputHeight } = this.model.config.encoder;
      const source = typeof input === 'string' ? { path: input } : { bytes: input };
      const task = {
        ...source,
        box: typeof faces === 'object' ? faces : undefined,
        faces: detect ? { ...this.detection, ...options.detection } : undefined,
        formats: ACCEPTED_FORMATS,
        fastDecode: this.fastDecode,
        minWidth: inputWidth,
        minHeight: inputHeight,
        maxPixels: this.maxPixels,
        maxAspectRatio: this.maxAspectRatio,
        resizeTo: { width: inputWidth, height: inputHeight, geometry },
      };
      // An abort cancels the decode too, and its slot is free when this call settles.
      const decoded = await this.pool.decode(task, options.signal).catch((err: unknown) => {
        throw options.signal?.aborted ? reasonOf(options.signal) : err;
      });
      if (!decoded.ok) {
        for (const o of this.observers) o.decodeFailure?.(decoded.kind);
        throw inputError(decoded, this.maxPixels);
      }
      options.signal?.throwIfAborted();
      const count = detect ? decoded.faces!.length : 1;
      // Each face's crop is an image held like a whole call's: they count against the same limit.
      if (count > this.maxQueue) throw new ClassifierInputError(`the image holds ${count} faces, more than the ${this.maxQueue} images this classifier holds at once: lower maxFaces`, 413);
      if (count > 1 && this.heldImages + count > this.maxQueue) throw new QueueFullError(this.maxQueue, this.retryAfterS());
      const answers = count === 0 ? [] : await this.enqueue(decoded.data, count, options.signal);
      if (!detect) return answers[0]!;
      const found = decoded.faces!.map((face, i) => ({ ...face, ...answers[i]! }));
      return { faces: found, width: decoded.imageWidth!, height: decoded.imageHeight! };
    } finally {
      this.pending--;
      if (this.pending === 0) this.idle?.();
    }
  }

  /** Queues `count` input-sized images for the model; resolves to their answers. */
  private async enqueue(pixels: Uint8Array, count: number, signal: AbortSignal | undefined): Promise<Classification[]> {
    // A call that was decoding when close() came still runs: close() lets held calls finish.
    let onAbort: (() => void) | undefined;
    return await new Promise<Classification[]>((resolve, reject) => {
      const queue = this.queue;
      const waiting: Waiting = { pixels, count, enqueuedAt: performance.now(), signal, resolve, reject };
      queue.push(waiting);
      this.queuedImages += count;
      // Aborted while queued: out of the queue at once, so its slot and pixels are freed now
      // rather than when its batch would have come.
      onAbort = () => {
        const at = queue.indexOf(waiting);
        if (at >= 0) {
          queue.splice(at, 1);
          this.queuedImages -= count;
          reject(reasonOf(signal!));
        }
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.heldImages += count;
      this.schedule();
    }).finally(() => {
      this.heldImages -= count;
      // The listener holds the pixels: a signal that outlives the call (a host's own, long-
      // lived one) would otherwise keep every image it ever saw.
      if (onAbort) signal?.removeEventListener('abort', onAbort);
    });
  }

  /**
   * One model call on a blank image, outside the queue: the first request then does not pay
   * for the model's first-call costs (threads starting, memory first touched, bf16 weights
   * packed). What a server waits for before it reports itself ready.
   */
  async warmUp(): Promise<void> {
    const { inputWidth, inputHeight } = this.model.config.encoder;
    await this.model.predict({ tensor: new Float32Array(3 * inputWidth * inputHeight), batchSize: 1 });
  }

  /**
   * Stops taking calls, lets every held call finish, then stops the workers and frees the
   * model if the classifier loaded it.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.pending > 0) await new Promise<void>((resolve) => (this.idle = resolve));
    clearTimeout(this.timer);
    await this.pool.destroy();
    if (this.ownsModel) this.model.dispose();
  }

  /** Tells `observer` of each model call and decode failure from now on; returns the way to stop. */
  observe(observer: ClassifierObserver): () => void {
    this.observers.add(observer);
    return () => this.observers.delete(observer);
  }

  /**
   * The refusal a new call would get now (the queue is full), or undefined: what a server
   * checks before it reads a request's body.
   */
  admission(): QueueFullError | undefined {
    return this.pending >= this.maxQueue ? new QueueFullError(this.maxQueue, this.retryAfterS()) : undefined;
  }

  private retryAfterS(): number {
    const batchesAhead = Math.ceil(Math.max(this.pending, this.heldImages) / this.maxBatchSize);
    return Math.max(1, Math.ceil((batchesAhead * (this.batchMs || 100)) / 1000));
  }

  /** Starts a batch when one is due, else sets a timer for when the oldest image's wait ends. */
  private schedule(): void {
    if (this.running) return;
    const queue = this.queue;
    if (queue.length === 0) return;
    const waited = performance.now() - queue[0]!.enqueuedAt;
    if (this.queuedImages >= this.maxBatchSize || waited >= this.maxWaitMs || this.closed) {
      clearTimeout(this.timer);
      this.timer = undefined;
      void this.runBatch();
    } else if (!this.timer) {
      this.timer = setTimeout(() => {
        this.timer = undefined;
        this.schedule();
      }, this.maxWaitMs - waited);
    }
  }

  private async runBatch(): Promise<void> {
    const queue = this.queue;
    const batch: Waiting[] = [];
    let images = 0;
    // Whole calls only: the faces of one photograph go to the model together, even past
    // maxBatchSize when one photograph holds more.
    while (queue.length > 0 && (batch.length === 0 || images + queue[0]!.count <= this.maxBatchSize)) {
      const w = queue.shift()!;
      this.queuedImages -= w.count;
      if (w.signal?.aborted) w.reject(reasonOf(w.signal));
      else {
        batch.push(w);
        images += w.count;
      }
    }
    if (batch.length === 0) return this.schedule();
    this.running = true;
    const started = performance.now();
    try {
      const { inputWidth: width, inputHeight: height } = this.model.config.encoder;
      const pixels = batch.length === 1 ? batch[0]!.pixels : concat(batch.map((w) => w.pixels));
      const answers: Classification[] = [];
      const labels = this.model.labels;
      // One model call, or several of at most maxBatchSize when one photograph's faces are more.
      for (let start = 0; start < images; start += this.maxBatchSize) {
        const n = Math.min(this.maxBatchSize, images - start);
        const chunk = pixels.subarray(start * width * height * 3, (start + n) * width * height * 3);
        const callStarted = performance.now();
        let failed = true;
        try {
          // Already at the input size, resized as the model would: geometry none is the identity.
          const r = await this.model.predict({ pixels: chunk, widths: new Array(n).fill(width), heights: new Array(n).fill(height) }, { geometry: 'none' });
          failed = false;
          this.modelCalls++;
          for (let row = 0; row < n; row++) {
            answers.push({ label: r.top[row]!.label, index: r.top[row]!.index, probabilities: probabilitiesByLabel(labels, r.probabilities, row) });
          }
        } finally {
          for (const o of this.observers) o.batch?.(n, performance.now() - callStarted, failed);
        }
      }
      this.images += images;
      let next = 0;
      for (const w of batch) {
        w.resolve(answers.slice(next, next + w.count));
        next += w.count;
      }
    } catch (err) {
      for (const w of batch) w.reject(err as Error);
    } finally {
      // Per model call, for Retry-After estimates: a turn of several calls counts as many.
      const ms = (performance.now() - started) / Math.ceil(images / this.maxBatchSize);
      this.batchMs = this.batchMs === 0 ? ms : 0.8 * this.batchMs + 0.2 * ms;
      this.running = false;
      this.schedule();
    }
  }
}

const GEOMETRIES: readonly string[] = ['letterbox', 'stretch'];

/** An aborted signal's reason as an Error. */
function reasonOf(signal: AbortSignal): Error {
  return signal.reason instanceof Error ? signal.reason : new Error('aborted');
}
