/** What crosses between the pool and its sharp workers. */
import type { FaceBox } from '../data/types.js';

export interface DecodeTask {
  path: string;
  /** Crop to this box (after EXIF orientation). */
  box?: FaceBox;
  /** Mirror left-right (augmentation). */
  flip?: boolean;
  /** Large images are shrunk on load, but never below this size (the model's input). */
  minWidth: number;
  minHeight: number;
  /** Images with more pixels than this are refused unread (decompression bombs). */
  maxPixels: number;
}

export type DecodeResult =
  | { ok: true; data: Uint8Array; width: number; height: number }
  | { ok: false; reason: string };
