/**
 * Faces in whole photographs: the `faces` option of `predict`, the classifier, the CLI and the
 * server. `whole` classifies the image as it is (letterboxed: the reference's inference);
 * `detect` finds every face with the core's detector (MediaPipe's short-range BlazeFace),
 * frames each as AffectNet frames its faces and classifies them all in one model call; a box
 * classifies that part of the image.
 */
import type { FaceBox } from './data/types.js';
import { nativeCall } from './errors.js';
import { toNativeInput, type PackedImages, type RgbImage } from './images.js';
import { native } from './native.js';
import type { NativeFace, NativeFaceOptions } from '../bindings/node/index.cjs';

export type { FaceBox };

/** What part of an image is classified. */
export type FacesOption = 'whole' | 'detect' | FaceBox;

/** How faces are found and framed with `faces: 'detect'`. */
export interface FaceDetectionOptions {
  /** The crop's margin around the face box, a fraction of its larger side on each side. Default 0.25. */
  margin?: number;
  /** Faces the detector scores below this are left out: 0.5 (the detector's own threshold, MediaPipe's) to 1. Default 0.5. */
  minScore?: number;
  /** At most this many faces an image, best first. Default 16. */
  maxFaces?: number;
  /**
   * Also look for faces too small for the whole image's pass (under about an eighth of its
   * longer side), in overlapping tiles of half its shorter side: one more detector pass a
   * tile (15 on a 1280 x 720 frame, about 70 ms on one core). Default false: the faces are
   * then exactly MediaPipe's.
   */
  smallFaces?: boolean;
  /** Turn each face's crop so its eyes are level (two more detector passes a face). Default false. */
  upright?: boolean;
}

/** A face's landmarks, in the image's pixels. */
export interface FaceKeypoints {
  rightEye: [number, number];
  leftEye: [number, number];
  noseTip: [number, number];
  mouth: [number, number];
  rightEar: [number, number];
  leftEar: [number, number];
}

/** A face the detector found. */
export interface DetectedFace {
  /** The detector's box, in pixels of the image (after EXIF orientation). */
  box: FaceBox;
  /** The detector's confidence that this is a face, 0..1. */
  score: number;
  keypoints: FaceKeypoints;
  /**
   * The part of the image the classifier sees: the box widened by the margin, cut at the
   * edges (with `upright`, the turned square's bounds).
   */
  crop: FaceBox;
  /** How far the crop was turned to level the eyes, degrees counter-clockwise; 0 unless `upright`. */
  angle: number;
}

/** A face with the model's answer for it. */
export interface FaceClassification extends DetectedFace {
  label: string;
  /** Index of `label` in the model's classes. */
  index: number;
  /** Every class's probability, by label, in class order. */
  probabilities: Record<string, number>;
}

/** Checks a `faces` option, naming what is wrong. */
export function checkFacesOption(faces: unknown, where = 'faces'): asserts faces is FacesOption | undefined {
  if (faces === undefined || faces === 'whole' || faces === 'detect') return;
  if (typeof faces === 'object' && faces !== null) {
    checkFaceBox(faces as FaceBox);
    return;
  }
  throw new RangeError(`${where} must be 'whole', 'detect' or a box { x, y, width, height }, got ${JSON.stringify(faces)}`);
}

/** A box must lie at x, y >= 0 with a size of at least one pixel (and start inside its image: the decoders check that). */
export function checkFaceBox(box: FaceBox, where = 'face box'): void {
  const values = [box.x, box.y, box.width, box.height];
  if (!values.every((v) => typeof v === 'number' && Number.isFinite(v)) || box.x < 0 || box.y < 0 || box.width < 1 || box.height < 1) {
    throw new RangeError(`${where} must have x, y >= 0 and width, height >= 1, got ${JSON.stringify(box)}`);
  }
}

/** Checks detection options, naming what is wrong (before any image is read). */
export function checkDetectionOptions(options: FaceDetectionOptions): void {
  const { margin, minScore, maxFaces } = options;
  if (margin !== undefined && !(typeof margin === 'number' && margin >= 0 && margin <= 4)) throw new RangeError(`margin must be between 0 and 4, got ${String(margin)}`);
  if (minScore !== undefined && !(typeof minScore === 'number' && minScore >= 0.5 && minScore <= 1)) {
    throw new RangeError(`minScore must be between 0.5 (the detector's own threshold) and 1, got ${String(minScore)}`);
  }
  if (maxFaces !== undefined && !(Number.isInteger(maxFaces) && maxFaces >= 1 && maxFaces <= 1000)) throw new RangeError(`maxFaces must be a whole number from 1 to 1000, got ${String(maxFaces)}`);
}

/** The addon's options for a detection, with the crops resized to the model's input when given. */
export function nativeFaceOptions(options: FaceDetectionOptions = {}, resize?: { width: number; height: number; geometry: 'letterbox' | 'stretch' }): NativeFaceOptions {
  checkDetectionOptions(options);
  return {
    margin: options.margin,
    minScore: options.minScore,
    maxFaces: options.maxFaces,
    smallFaces: options.smallFaces,
    upright: options.upright,
    cropWidth: resize?.width,
    cropHeight: resize?.height,
    geometry: resize?.geometry,
  };
}

/** The addon's face as the library gives it. */
export function detectedFace(f: NativeFace): DetectedFace {
  const k = f.keypoints;
  const point = (i: number): [number, number] => [k[2 * i]!, k[2 * i + 1]!];
  const [cx, cy, cw, ch] = f.crop;
  return {
    box: { x: f.x, y: f.y, width: f.width, height: f.height },
    score: f.score,
    keypoints: { rightEye: point(0), leftEye: point(1), noseTip: point(2), mouth: point(3), rightEar: point(4), leftEar: point(5) },
    crop: { x: cx!, y: cy!, width: cw!, height: ch! },
    angle: f.angle,
  };
}

/** The probabilities of row `row` of a (rows, classes) array, by label. */
export function probabilitiesByLabel(labels: readonly string[], probabilities: Float32Array, row: number): Record<string, number> {
  const n = labels.length;
  return Object.fromEntries(labels.map((name, c) => [name, probabilities[row * n + c]!]));
}

/**
 * The faces in each image (decoded RGB), best first, found by the core's detector off the
 * JavaScript thread: what `predict` with `faces: 'detect'` classifies.
 */
export async function detectFaces(images: RgbImage | RgbImage[] | PackedImages, options: FaceDetectionOptions = {}): Promise<DetectedFace[][]> {
  const input = toNativeInput(images, 'letterbox');
  const found = await nativeCall(() => native.detectFaces(input, nativeFaceOptions(options)));
  return found.map((f) => f.faces.map(detectedFace));
}
