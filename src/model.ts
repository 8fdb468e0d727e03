/**
 * `MotivNet`: the public model object. A thin, typed wrapper over the native model: every
 * method that touches tensors returns a Promise whose work runs on the core's compute threads,
 * never on the event loop, so a busy server keeps turning. Calls on one model run one at a
 * time; separate models share the compute threads. A failed call rejects with a
 * `MotivNetError` whose `code` says what kind of failure it was.
 */
import { concat, cropImage, toNativeInput, unpackImages, type Geometry, type Images, type NormalizedBatch } from './images.js';
import { checkFacesOption, detectedFace, nativeFaceOptions, probabilitiesByLabel, type FaceBox, type FaceClassification, type FaceDetectionOptions } from './faces.js';
import { native, type NativeModel } from './native.js';
import type { ModelConfig } from './config.js';
import { emotionLabels } from './emotions.js';
import { nativeCall } from './errors.js';
import type { AttentionMaps } from './explain.js';

/** The dtype a model computes in. */
export type Precision = 'f32' | 'bf16' | 'int8';

/** How a fresh model is initialised (see `LoadOptions.init`). */
export type InitScheme = 'upstream' | 'vit';

export interface LoadOptions {
  /**
   * Preset name (`tiny`, `small`, `sapiens-0.3b`, `sapiens-0.6b`, `sapiens-1b`, `sapiens-2b`) or
   * JSON config file. A preset fixes the encoder; its head (class count, query groups,
   * embedding width, layers) comes from `weights` when they hold one, so the released 7-class
   * MotivNet checkpoint loads with `sapiens-1b`. A config file fixes the head keys it writes.
   */
  model: string;
  /** safetensors or PyTorch `.pth` weights (MotivNet or Sapiens layout). */
  weights?: string;
  /** Load only the encoder from `weights`; the head starts fresh. */
  encoderOnly?: boolean;
  /**
   * The head's class count: the weights' head by default, else the spec's (8 for presets).
   * Asking for another count than the weights' head holds is an error: load `encoderOnly`
   * to train a new head on their encoder.
   */
  numClasses?: number;
  /**
   * How a fresh model starts: `upstream` (default; as the PyTorch code: PyTorch's default
   * Linear and Conv init, a zero position embedding, every decoder layer a copy of the first)
   * or `vit` (truncated normal 0.02 for the encoder's weights and position embedding,
   * independent decoder layers). Weights loaded from a file replace it.
   */
  init?: InitScheme;
  /** `cpu` (default), `cuda` or `cuda:N`. */
  device?: string;
  /**
   * `f32` (default), or `bf16`: on CUDA, compute in bf16 with the weights and optimizer in f32;
   * on a CPU with AVX512_BF16 ({@link cpuBf16Available}), run the Linear layers' products in bf16
   * (on AMX tiles where the CPU has them, else on AVX512_BF16's dot products). Loaded for
   * inference there, each Linear weight is kept only in bf16, packed for the products (the f32
   * copy is freed, about half the weights' memory), and training,
   * `save`, `saveState` and `loadState` are refused with the reason; load with `forTraining`
   * to train in bf16 (the encoder's products, forward and backward, with f32 weights, optimizer
   * and everything else; its accuracy cost is in docs/BENCHMARKS.md). Elsewhere bf16 is
   * refused when the model loads.
   *
   * Or `int8`, for inference on a CPU with AVX512-VNNI ({@link cpuInt8Available}): the
   * encoder's Linear products run on int8, each weight row quantized with its own scale and
   * each input row with its own scale and zero point, the sums exact; the self-attention's two
   * products run in integers too (its softmax in f32; heads of up to 80 values, every
   * preset's); the norms and the head stay f32. The
   * encoder's Linear weights are kept only quantized (a quarter of their
   * f32 memory). Its accuracy cost (top-1 agreement with f32, largest logit difference) is in
   * docs/BENCHMARKS.md. int8 cannot train: `forTraining` with it, `trainStep`, `save` and
   * `saveState` are refused with the reason; on a GPU or a CPU without VNNI it is refused when
   * the model loads.
   */
  precision?: Precision;
  /**
   * The model will be trained: under bf16 on the CPU, its Linear weights stay f32 (the
   * train step rounds them for each product). Default false.
   */
  forTraining?: boolean;
  /** Seeds the initial weights and dropout. Default 0. */
  seed?: number;
  optimizer?: {
    encoderWeightDecay?: number;
    decoderWeightDecay?: number;
    beta1?: number;
    beta2?: number;
    eps?: number;
    maxGradNorm?: number;
    excludeNormBiasPosFromDecay?: boolean;
    /** Layer-wise lr decay for the encoder (Sapiens: 0.85). */
    encoderLayerDecay?: number;
  };
  /** Per-channel mean and std on 0..255; the reference's by default. */
  normalization?: { mean: [number, number, number]; std: [number, number, number] };
}

export interface ClassScore {
  index: number;
  label: string;
  probability: number;
}

export interface PredictOutput {
  /** (batchSize, numClasses), row-major. */
  logits: Float32Array;
  probabilities: Float32Array;
  batchSize: number;
  numClasses: number;
  /** The most probable class of each image. */
  top: ClassScore[];
  /** With `explain: true`: where the model looked, one set of class maps per row. */
  attention?: AttentionMaps;
}

export interface PredictOptions {
  /** How an image (or a face's crop) reaches the model's input. Default 'letterbox'. */
  geometry?: Geometry;
  /**
   * What is classified: the whole image (default, the reference's inference), every face the
   * detector finds (`'detect'`), or the part inside a box (pixels; the same box for each image).
   */
  faces?: 'whole' | 'detect' | FaceBox;
  /** How faces are found and framed with `faces: 'detect'`. */
  detection?: FaceDetectionOptions;
  /**
   * Also return where the model looked (`attention`): the ML-Decoder's cross-attention of
   * each class over the encoder's grid, per image (or per face). Default false.
   */
  explain?: boolean;
}

/** `predict` with `faces: 'detect'`: one row of logits and probabilities per face, images in order. */
export interface FacesPredictOutput extends PredictOutput {
  /** Each image's faces, best detected first, with the model's answer; [] where there is none. */
  faces: FaceClassification[][];
}

export interface TrainStepOptions {
  encoderLr: number;
  decoderLr: number;
  /** Whether this micro-batch ends an accumulation cycle (the weights update). Default true. */
  endOfCycle?: boolean;
  geometry?: Geometry;
}

export interface TrainStepOutput {
  loss: number;
  logits: Float32Array;
  stepped: boolean;
  gradNorm?: number;
  /** Optimizer steps so far. */
  step: number;
}

export interface EvaluateOutput {
  loss: number;
  logits: Float32Array;
  probabilities: Float32Array;
}

function toLabels(labels: Int32Array | readonly number[]): Int32Array {
  if (labels instanceof Int32Array) return labels;
  for (const [i, l] of labels.entries()) {
    if (!Number.isInteger(l)) throw new RangeError(`label ${l} at index ${i} is not an integer`);
  }
  return Int32Array.from(labels);
}

export class MotivNet {
  readonly config: ModelConfig;
  /** Label names, in class order. */
  readonly labels: readonly string[];

  private constructor(private readonly inner: NativeModel) {
    this.config = JSON.parse(inner.configJson) as ModelConfig;
    this.labels = emotionLabels(this.config.head.numClasses);
  }

  /** Builds a model from a preset or config file, with optional weights. */
  static async load(options: LoadOptions): Promise<MotivNet> {
    return new MotivNet(await nativeCall(() => native.loadModel(options)));
  }

  /**
   * The config `load` would build for `options`, without building the model: the weights
   * file is read for its tensor shapes only. What a training run uses to learn the class
   * count of a checkpoint before reading its data.
   */
  static async resolveConfig(options: Pick<LoadOptions, 'model' | 'weights' | 'encoderOnly' | 'numClasses'>): Promise<ModelConfig> {
    return JSON.parse(await nativeCall(() => native.modelConfigFor(options))) as ModelConfig;
  }

  /**
   * Eval-mode logits, probabilities and the top class of each image; with `faces: 'detect'`,
   * of each face of each image, all faces of the batch in one model call.
   */
  async predict(images: Images, options: PredictOptions & { faces: 'detect' }): Promise<FacesPredictOutput>;
  async predict(images: Images, options?: PredictOptions): Promise<PredictOutput>;
  async predict(images: Images, options: PredictOptions = {}): Promise<PredictOutput | FacesPredictOutput> {
    checkFacesOption(options.faces);
    const geometry = options.geometry ?? 'letterbox';
    const explain = options.explain ?? false;
    if (options.faces === undefined || options.faces === 'whole') return this.predictInput(images, geometry, explain);
    if ((images as NormalizedBatch).tensor !== undefined) throw new TypeError(`faces: ${JSON.stringify(options.faces)} needs pixels: a normalized tensor has no faces to find`);
    const pixels = images as Exclude<Images, NormalizedBatch>;
    if (options.faces === 'detect') return this.predictFaces(pixels, geometry, options.detection, explain);
    const box = options.faces;
    return this.predictInput(unpackImages(pixels).map((img) => cropImage(img, box)), geometry, explain);
  }

  private async predictFaces(images: Exclude<Images, NormalizedBatch>, geometry: Geometry, detection: FaceDetectionOptions | undefined, explain: boolean): Promise<FacesPredictOutput> {
    if (geometry === 'none') throw new RangeError("a face's crop is fitted to the input by letterbox or stretch, not none");
    const { inputWidth: width, inputHeight: height } = this.config.encoder;
    const input = toNativeInput(images, geometry);
    const found = await nativeCall(() => native.detectFaces(input, nativeFaceOptions(detection, { width, height, geometry })));
    const crops = found.flatMap((f) => (f.crops && f.faces.length > 0 ? [f.crops] : []));
    const count = found.reduce((n, f) => n + f.faces.length, 0);
    const r: PredictOutput =
      count === 0
        ? { logits: new Float32Array(0), probabilities: new Float32Array(0), batchSize: 0, numClasses: this.labels.length, top: [] }
        : await this.predictInput({ pixels: concat(crops), widths: new Array(count).fill(width), heights: new Array(count).fill(height) }, 'none', explain);
    let row = 0;
    const faces = found.map((f) =>
      f.faces.map((face) => {
        const top = r.top[row]!;
        const answer = { label: top.label, index: top.index, probabilities: probabilitiesByLabel(this.labels, r.probabilities, row) };
        row++;
        return { ...detectedFace(face), ...answer };
      }),
    );
    return { ...r, faces };
  }

  private async predictInput(images: Images, geometry: Geometry, explain = false): Promise<PredictOutput> {
    const input = toNativeInput(images, geometry);
    let attention: AttentionMaps | undefined;
    let r;
    if (explain) {
      const e = await nativeCall(() => this.inner.predictExplained(input));
      const { patchSize, patchPadding, inputWidth, inputHeight } = this.config.encoder;
      r = e.prediction;
      attention = { values: e.attention, numClasses: r.numClasses, gridHeight: e.gridHeight, gridWidth: e.gridWidth, patchSize, patchPadding, inputWidth, inputHeight };
    } else {
      r = await nativeCall(() => this.inner.predict(input));
    }
    const top: ClassScore[] = [];
    for (let b = 0; b < r.batchSize; b++) {
      let best = 0;
      for (let c = 1; c < r.numClasses; c++) {
        if (r.probabilities[b * r.numClasses + c]! > r.probabilities[b * r.numClasses + best]!) best = c;
      }
      top.push({ index: best, label: this.labels[best]!, probability: r.probabilities[b * r.numClasses + best]! });
    }
    return { ...r, top, ...(attention ? { attention } : {}) };
  }

  /** One micro-batch of training: forward, loss, backward; updates the weights when `endOfCycle`. */
  async trainStep(images: Images, labels: Int32Array | readonly number[], options: TrainStepOptions): Promise<TrainStepOutput> {
    const input = toNativeInput(images, options.geometry ?? 'stretch');
    const r = await nativeCall(() => this.inner.trainStep(input, toLabels(labels), options.encoderLr, options.decoderLr, options.endOfCycle ?? true));
    return { loss: r.loss, logits: r.logits, stepped: r.stepped, gradNorm: r.gradNorm ?? undefined, step: r.step };
  }

  /** Eval-mode loss, logits and probabilities for labelled images. */
  async evaluate(images: Images, labels: Int32Array | readonly number[], options: { geometry?: Geometry } = {}): Promise<EvaluateOutput> {
    const input = toNativeInput(images, options.geometry ?? 'stretch');
    return nativeCall(() => this.inner.evaluate(input, toLabels(labels)));
  }

  /** Writes the weights (safetensors, the reference's parameter names). */
  async save(path: string): Promise<void> {
    await nativeCall(() => this.inner.saveWeights(path));
  }

  /**
   * Writes the full training state: weights, optimizer moments, step, RNG, pending gradients,
   * and `extra` (any JSON-able bookkeeping) in the same file, atomically.
   */
  async saveState(path: string, extra?: unknown): Promise<void> {
    await nativeCall(() => this.inner.saveState(path, extra === undefined ? undefined : JSON.stringify(extra)));
  }

  /** Restores a state written by `saveState` (the model config must match); returns its `extra`. */
  async loadState(path: string): Promise<unknown> {
    const extra = await nativeCall(() => this.inner.loadState(path));
    return extra === null ? undefined : (JSON.parse(extra) as unknown);
  }

  parameterCounts(): { total: number; trainable: number } {
    return this.inner.parameterCounts();
  }

  /** Frees the model's memory; any later call fails. */
  dispose(): void {
    this.inner.dispose();
  }

  get disposed(): boolean {
    return this.inner.disposed;
  }
}
