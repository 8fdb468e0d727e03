/**
 * The model's input tensor from u8 images, computed by the core exactly as the model computes
 * it: for inspecting preprocessing, benchmarks, and feeding other tools.
 */
import { nativeCall } from './errors.js';
import { native } from './native.js';
import { toNativeInput, type Geometry, type PackedImages } from './images.js';

export interface InputTensorOptions {
  height: number;
  width: number;
  geometry?: Geometry;
  normalization?: { mean: [number, number, number]; std: [number, number, number] };
  /**
   * Write into this buffer (B x 3 x height x width values) instead of allocating: reuse it
   * across batches. It is written from a worker thread: leave it alone until the Promise settles.
   */
  out?: Float32Array;
}

/** (B, 3, height, width) float32, row-major: resized (OpenCV INTER_LINEAR conventions) and normalized. */
export function toInputTensor(images: PackedImages, opts: InputTensorOptions): Promise<Float32Array> {
  const input = toNativeInput(images, opts.geometry ?? 'stretch');
  return nativeCall(() => native.preprocess(input, opts.height, opts.width, opts.normalization, opts.out));
}
