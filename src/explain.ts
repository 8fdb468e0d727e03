/**
 * Where the model looks: the ML-Decoder's cross-attention of each class's query over the
 * encoder's token grid (the last decoder layer's weights, averaged over heads, as PyTorch's
 * `MultiheadAttention` returns them), and overlays of a map on the image it was computed for.
 *
 * A grid cell (row i, column j) is the patch whose top-left pixel of the model's input is at
 * x = j * patchSize - patchPadding, y = i * patchSize - patchPadding. The input is the image fitted
 * by its geometry: with letterbox the image fills the middle `inputWidth` x `inputWidth` rows
 * (the bands above and below are padding), with stretch all of it. An overlay undoes that fit,
 * so the heat lies on the image as the caller has it.
 */
import sharp from 'sharp';

import type { Geometry, RgbImage } from './images.js';

/** Attention maps of a batch, and where their grid lies on the model's input. */
export interface AttentionMaps {
  /** (rows, numClasses, gridHeight, gridWidth), row-major; each map sums to 1. */
  values: Float32Array;
  numClasses: number;
  gridHeight: number;
  gridWidth: number;
  patchSize: number;
  patchPadding: number;
  inputWidth: number;
  inputHeight: number;
}

/** The map of class `cls` for row `row` (gridHeight x gridWidth, row-major). */
export function attentionMap(maps: AttentionMaps, row: number, cls: number): Float32Array {
  const cells = maps.gridHeight * maps.gridWidth;
  const at = (row * maps.numClasses + cls) * cells;
  if (!(cls >= 0 && cls < maps.numClasses) || at + cells > maps.values.length) throw new RangeError(`no attention map for row ${row}, class ${cls}`);
  return maps.values.subarray(at, at + cells);
}

/** The rows `from` .. `from + count` of a batch's maps, as maps of their own. */
export function attentionRows(maps: AttentionMaps, from: number, count: number): AttentionMaps {
  const per = maps.numClasses * maps.gridHeight * maps.gridWidth;
  return { ...maps, values: maps.values.slice(from * per, (from + count) * per) };
}

/** A perceptual dark-to-bright colour scale (black, purple, red, orange, pale yellow), t in 0..1. */
const SCALE: [number, number, number][] = [
  [0, 0, 4],
  [87, 16, 110],
  [188, 55, 84],
  [249, 142, 9],
  [252, 255, 164],
];

function colour(t: number): [number, number, number] {
  const x = Math.min(Math.max(t, 0), 1) * (SCALE.length - 1);
  const i = Math.min(Math.floor(x), SCALE.length - 2);
  const f = x - i;
  const [a, b] = [SCALE[i]!, SCALE[i + 1]!];
  return [a[0] + f * (b[0] - a[0]), a[1] + f * (b[1] - a[1]), a[2] + f * (b[2] - a[2])];
}

export interface OverlayOptions {
  /** How the image was fitted to the model's input. Default 'letterbox'. */
  geometry?: Exclude<Geometry, 'none'>;
  /** The overlay's longer side at most this many pixels (the image is shrunk to it). Default 768. */
  maxSide?: number;
  /** How strongly the heat covers the image where attention is highest, 0..1. Default 0.65. */
  opacity?: number;
}

/**
 * A PNG of `image` with `map` (one class's attention, from `attentionMap`) laid over it as
 * heat: the map is scaled from its lowest cell (dark) to its highest (bright), spread over the patches it
 * covers, fitted back from the model's input to the image, and blended where it is high.
 */
export async function attentionOverlay(image: RgbImage, map: Float32Array, maps: AttentionMaps, options: OverlayOptions = {}): Promise<Buffer> {
  const { gridHeight: gh, gridWidth: gw, patchSize: patch, patchPadding: pad, inputWidth: iw, inputHeight: ih } = maps;
  if (map.length !== gh * gw) throw new RangeError(`a map has ${gh * gw} cells, got ${map.length}`);
  const geometry = options.geometry ?? 'letterbox';
  const maxSide = options.maxSide ?? 768;
  const opacity = options.opacity ?? 0.65;
  // Scaled from the map's lowest cell to its highest: where it looks more, not how much.
  const low = map.reduce((m, v) => Math.min(m, v), Infinity);
  const range = map.reduce((m, v) => Math.max(m, v), -Infinity) - low || 1;
  const cells = Uint8Array.from(map, (v) => Math.round((255 * (v - low)) / range));
  // The grid spread over the input's pixels: patches of `patch` pixels from (-pad, -pad).
  const spanW = gw * patch;
  const spanH = gh * patch;
  const spanned = await sharp(cells, { raw: { width: gw, height: gh, channels: 1 } }).resize(spanW, spanH, { kernel: 'cubic' }).extractChannel(0).raw().toBuffer();
  const spread = new Uint8Array(iw * ih);
  for (let y = 0; y < ih; y++) {
    const sy = y + pad;
    if (sy >= spanH) break;
    for (let x = 0; x < iw && x + pad < spanW; x++) spread[y * iw + x] = spanned[sy * spanW + x + pad]!;
  }
  // The part of the input the image fills, then at the overlay's size.
  const region = geometry === 'letterbox' ? { left: 0, top: Math.floor((ih - iw) / 2), width: iw, height: iw } : { left: 0, top: 0, width: iw, height: ih };
  const scale = Math.min(1, maxSide / Math.max(image.width, image.height));
  const width = Math.max(1, Math.round(image.width * scale));
  const height = Math.max(1, Math.round(image.height * scale));
  const heat = await sharp(spread, { raw: { width: iw, height: ih, channels: 1 } })
    .extract(region)
    .resize(width, height, { fit: 'fill', kernel: 'cubic' })
    .extractChannel(0) // one channel in, but sharp writes three
    .raw()
    .toBuffer();
  const base = await sharp(image.data, { raw: { width: image.width, height: image.height, channels: 3 } })
    .resize(width, height, { fit: 'fill' })
    .raw()
    .toBuffer();
  const out = Buffer.alloc(width * height * 3);
  for (let p = 0; p < width * height; p++) {
    const t = heat[p]! / 255;
    const c = colour(t);
    const a = opacity * Math.sqrt(t);
    for (let k = 0; k < 3; k++) out[3 * p + k] = Math.round((1 - a) * base[3 * p + k]! + a * c[k]!);
  }
  return sharp(out, { raw: { width, height, channels: 3 } }).png().toBuffer();
}
