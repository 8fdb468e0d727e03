/**
 * The preprocessing worker (a piscina task): decode one image file with sharp, orient it by its
 * EXIF tag when it has one, crop to the face box, mirror when asked, and hand back RGB bytes
 * at full size with their size. The bytes are moved to the main thread, not cloned. Failures
 * come back as data (a reason), so one bad file never fails a batch.
 *
 * The resize is the core's, on the full image, as the reference's `cv2.resize` runs on what
 * `cv2.imread` decoded: any shrinking by libvips (JPEG shrink-on-load, its own filter) would
 * change the pixels the model sees. Only `fastDecode` shrinks large images with libvips, on
 * request; `resizeTo` runs the core's own resize here, in the worker, for a server that should
 * hold only input-sized images.
 */
import { readFileSync } from 'node:fs';
import { isMainThread } from 'node:worker_threads';

import { move, transferableSymbol, valueSymbol } from 'piscina';
import sharp from 'sharp';

import { boxInImage } from '../images.js';
import { sniffable, sniffFormat } from './sniff.js';
import type { DecodeFailure, DecodeResult, DecodeTask } from './types.js';

if (isMainThread) throw new Error('src/preprocess/worker is a piscina worker: load it through the preprocessing pool');

// libvips' thread count and operation cache are process-wide: left as the host set them
// (tuneProcess() in src/tune-process.ts is the opt-in that sets them for our pools).

/** The kind of a decode failure and a short, stable reason for the skip report. */
export function classify(err: unknown, maxPixels: number): { kind: DecodeFailure; reason: string } {
  const e = err as NodeJS.ErrnoException;
  if (e.code === 'ENOENT') return { kind: 'missing', reason: 'missing file' };
  if (e.code === 'EISDIR') return { kind: 'not-a-file', reason: 'not a file' };
  if (e.code === 'EACCES' || e.code === 'EPERM') return { kind: 'permission', reason: 'unreadable (permission denied)' };
  const msg = String(e.message ?? err);
  const first = msg.split('\n')[0]!.trim();
  if (/unsupported image format|bad seek|not in a known format/i.test(msg)) return { kind: 'not-an-image', reason: 'not an image' };
  if (/pixel limit/i.test(msg)) return { kind: 'oversized', reason: `oversized (more than ${maxPixels} pixels)` };
  if (/premature end|truncated|corrupt|invalid|unexpected end|read error|VipsJpeg|pngload|webp/i.test(msg)) {
    return { kind: 'corrupt', reason: `truncated or corrupt image (${first})` };
  }
  return { kind: 'unreadable', reason: `unreadable (${first})` };
}

/** A failure of the face detector, which the task's caller gets as an error rather than a skip. */
class DetectorError extends Error {
  constructor(readonly cause: unknown) {
    super('face detection failed');
  }
}

/** Piscina moves the pixel buffer (no copy) when a result carries these two symbols. */
class Decoded {
  constructor(private readonly result: DecodeResult & { ok: true }) {}
  get [transferableSymbol](): ArrayBuffer[] {
    return [this.result.data.buffer as ArrayBuffer];
  }
  get [valueSymbol](): DecodeResult {
    return this.result;
  }
}

export default async function decode(task: DecodeTask): Promise<DecodeResult> {
  try {
    // A blocking read: this thread has nothing else to do meanwhile, and an async read would
    // cost two more thread hand-offs per image through libuv's pool.
    const file = task.bytes ?? (task.path !== undefined ? readFileSync(task.path) : undefined);
    if (file === undefined) return { ok: false, kind: 'no-input', reason: 'no image given (a task needs a path or bytes)' };
    if (file.length === 0) return { ok: false, kind: 'empty', reason: task.bytes ? 'empty body' : 'empty file' };
    // An allowlist of JPEG, PNG and WebP is checked on the first bytes, before any decoder
    // (sharp's metadata() runs every libvips loader that claims the bytes: SVG, TIFF, HEIF ...).
    if (task.formats && sniffable(task.formats)) {
      const sniffed = sniffFormat(file);
      if (sniffed === undefined) {
        const reason = `not an image of an accepted format (its first bytes carry no ${task.formats.join(', ')} signature)`;
        return { ok: false, kind: 'format-not-accepted', reason };
      }
      if (!task.formats.includes(sniffed)) {
        return { ok: false, kind: 'format-not-accepted', reason: `not an accepted image format (${sniffed}; accepted: ${task.formats.join(', ')})` };
      }
    }
    let image = sharp(file, { limitInputPixels: task.maxPixels, failOn: 'warning' });
    const meta = await image.metadata();
    if (task.formats && !task.formats.includes(meta.format)) {
      return { ok: false, kind: 'format-not-accepted', reason: `not an accepted image format (${meta.format}; accepted: ${task.formats.join(', ')})` };
    }
    // Auto-orientation costs a pass over the pixels: only when the tag asks for it.
    const turned = (meta.orientation ?? 1) > 1;
    if (turned) image = image.rotate();
    const swap = turned && (meta.orientation ?? 1) >= 5;
    const width = swap ? meta.height : meta.width;
    const height = swap ? meta.width : meta.height;
    if (task.maxAspectRatio !== undefined && Math.max(width, height) > task.maxAspectRatio * Math.min(width, height)) {
      const reason = `image is ${width} x ${height}: its longer side is more than ${task.maxAspectRatio} times its shorter`;
      return { ok: false, kind: 'extreme-aspect', reason };
    }
    let [w, h] = [width, height];
    if (task.faces && (task.box || task.flip)) return { ok: false, kind: 'no-input', reason: 'a face detection task takes the whole image: no box, no flip' };
    if (task.box && (task.box.x >= w || task.box.y >= h)) {
      return { ok: false, kind: 'box-outside', reason: `the face box starts at ${task.box.x},${task.box.y}, outside the ${w} x ${h} image` };
    }
    if (task.box) {
      const cut = boxInImage(task.box, w, h);
      image = image.extract(cut);
      [w, h] = [cut.width, cut.height];
    }
    // Fast decode shrinks only what is at least twice the input size both ways: libvips then
    // decodes a JPEG at a fraction of its size (shrink-on-load), which is where the time goes.
    // Not when finding faces: their boxes are in the pixels of the image as it is.
    if (task.fastDecode && !task.faces && w >= 2 * task.minWidth && h >= 2 * task.minHeight) {
      image = image.resize({ width: task.minWidth, height: task.minHeight, fit: 'outside', withoutEnlargement: true });
    }
    if (task.flip) image = image.flop();
    const { data, info } = await image.toColourspace('srgb').removeAlpha().raw({ depth: 'uchar' }).toBuffer({ resolveWithObject: true });
    if (info.channels !== 3) return { ok: false, kind: 'unreadable', reason: `unexpected ${info.channels} channels after conversion to RGB` };
    if (task.faces) {
      if (!task.resizeTo) return { ok: false, kind: 'no-input', reason: 'a face detection task needs resizeTo (the crops\' size)' };
      const { native } = await import('../native.js');
      const { detectedFace, nativeFaceOptions } = await import('../faces.js');
      // Detection and crops on this worker's own thread: a few milliseconds a photograph. A
      // failure here is the core's, not the image's: it goes up as an error, not a skip.
      let found;
      try {
        found = native.detectFacesSync(data, info.width, info.height, nativeFaceOptions(task.faces, task.resizeTo));
      } catch (err) {
        throw new DetectorError(err);
      }
      const pixels = new Uint8Array(found.crops?.length ?? 0);
      if (found.crops) pixels.set(found.crops);
      const faces = found.faces.map(detectedFace);
      const result = { ok: true as const, data: pixels, width: task.resizeTo.width, height: task.resizeTo.height, faces, imageWidth: info.width, imageHeight: info.height };
      return move(new Decoded(result)) as unknown as DecodeResult;
    }
    if (task.resizeTo) {
      const { width: outW, height: outH, geometry } = task.resizeTo;
      // Loaded here only: the training pool's workers never need the addon.
      const { native } = await import('../native.js');
      // On this worker's own thread: waiting for the model's compute threads would stall decoding.
      const levels = native.resizeImagesSync({ pixels: data, widths: [info.width], heights: [info.height], geometry }, outH, outW);
      // Into memory of this thread's own: a buffer the addon allocated cannot be transferred
      // (Node 21 and later refuse it outright), and this copy is of an input-sized image.
      const pixels = new Uint8Array(levels.length);
      pixels.set(levels);
      return move(new Decoded({ ok: true, data: pixels, width: outW, height: outH })) as unknown as DecodeResult;
    }
    // A private copy the worker can give away: sharp's buffer is not transferable.
    const pixels = new Uint8Array(data.length);
    pixels.set(data);
    return move(new Decoded({ ok: true, data: pixels, width: info.width, height: info.height })) as unknown as DecodeResult;
  } catch (err) {
    if (err instanceof DetectorError) throw err.cause;
    return { ok: false, ...classify(err, task.maxPixels) };
  }
}
