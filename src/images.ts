/**
 * The forms images take on their way to the model, and their conversion to what the addon
 * takes: one RGB image, several, several packed back to back, or a ready normalized tensor.
 */
import type { NativeModel } from './native.js';

/** How an image of another size reaches the model's W x H input. */
export type Geometry = 'stretch' | 'letterbox' | 'none';

/** One decoded image: RGB, 3 bytes a pixel, row-major (HWC). */
export interface RgbImage {
  data: Uint8Array;
  width: number;
  height: number;
}

/** Several images back to back in one buffer: passes to the core without a copy. */
export interface PackedImages {
  pixels: Uint8Array;
  widths: ArrayLike<number>;
  heights: ArrayLike<number>;
}

/** Images already resized and normalized: (batchSize, 3, H, W) float32, row-major. */
export interface NormalizedBatch {
  tensor: Float32Array;
  batchSize: number;
}

export type Images = RgbImage | RgbImage[] | PackedImages | NormalizedBatch;

export type NativeInput = Parameters<NativeModel['predict']>[0];

function isPacked(images: Images): images is PackedImages {
  return (images as PackedImages).pixels !== undefined;
}

function isNormalized(images: Images): images is NormalizedBatch {
  return (images as NormalizedBatch).tensor !== undefined;
}

/** Images in any of the accepted forms, as the addon takes them (no copy for one image or a packed batch). */
export function toNativeInput(images: Images, geometry: Geometry): NativeInput {
  if (isNormalized(images)) {
    if (!(images.tensor instanceof Float32Array)) throw new TypeError('tensor must be a Float32Array');
    return { tensor: images.tensor, batchSize: images.batchSize };
  }
  if (isPacked(images)) {
    if (!(images.pixels instanceof Uint8Array)) throw new TypeError('pixels must be a Uint8Array');
    return { pixels: images.pixels, widths: Array.from(images.widths), heights: Array.from(images.heights), geometry };
  }
  const list = Array.isArray(images) ? images : [images];
  if (list.length === 0) throw new RangeError('no images given');
  for (const [i, img] of list.entries()) {
    if (!(img.data instanceof Uint8Array)) throw new TypeError(`image ${i}: data must be a Uint8Array`);
  }
  // One image crosses as it is; several are packed into one buffer (a copy: give PackedImages to avoid it).
  const pixels = list.length === 1 ? list[0]!.data : concat(list.map((img) => img.data));
  return { pixels, widths: list.map((img) => img.width), heights: list.map((img) => img.height), geometry };
}

/** The images of any pixel form, one by one (views into a packed buffer, no copy). */
export function unpackImages(images: RgbImage | RgbImage[] | PackedImages): RgbImage[] {
  if (!isPacked(images)) return Array.isArray(images) ? images : [images];
  const out: RgbImage[] = [];
  let offset = 0;
  for (let i = 0; i < images.widths.length; i++) {
    const [width, height] = [images.widths[i]!, images.heights[i]!];
    const data = images.pixels.subarray(offset, offset + width * height * 3);
    if (data.length !== width * height * 3) throw new RangeError(`image ${i} is ${width} x ${height}, but the packed pixels end before it does`);
    out.push({ data, width, height });
    offset += width * height * 3;
  }
  return out;
}

/** A box in whole pixels, cut to a `width` x `height` image, at least one pixel each way. */
export function boxInImage(box: { x: number; y: number; width: number; height: number }, width: number, height: number) {
  const left = Math.min(Math.max(0, Math.round(box.x)), width - 1);
  const top = Math.min(Math.max(0, Math.round(box.y)), height - 1);
  return { left, top, width: Math.max(1, Math.min(Math.round(box.width), width - left)), height: Math.max(1, Math.min(Math.round(box.height), height - top)) };
}

/**
 * The part of `image` inside `box` (pixels, rounded, cut at the image's edges; at least one
 * pixel), as an image of its own: as the decoding workers crop to a face box. A box that
 * starts past the image is refused, as they refuse it.
 */
export function cropImage(image: RgbImage, box: { x: number; y: number; width: number; height: number }): RgbImage {
  if (box.x >= image.width || box.y >= image.height) {
    throw new RangeError(`the face box starts at ${box.x},${box.y}, outside the ${image.width} x ${image.height} image`);
  }
  const { left, top, width, height } = boxInImage(box, image.width, image.height);
  const data = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    const from = ((top + y) * image.width + left) * 3;
    data.set(image.data.subarray(from, from + width * 3), y * width * 3);
  }
  return { data, width, height };
}

export function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const p of parts) {
    out.set(p, offset);
    offset += p.length;
  }
  return out;
}

