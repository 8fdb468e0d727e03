/** What crosses between the pool and its sharp workers. */
import type { FaceBox } from '../data/types.js';
import type { DetectedFace, FaceDetectionOptions } from '../faces.js';

export interface DecodeTask {
  /** The image file to read; or give its encoded bytes instead. */
  path?: string;
  /** Encoded image bytes (JPEG, PNG, WebP, ...). */
  bytes?: Uint8Array;
  /** Refuse formats other than these (sharp's names: 'jpeg', 'png', 'webp', ...). Default: any sharp reads. */
  formats?: readonly string[];
  /** Crop to this box (after EXIF orientation). */
  box?: FaceBox;
  /** Mirror left-right (augmentation). */
  flip?: boolean;
  /**
   * Shrink an image at least twice the model's input size both ways while decoding (JPEG
   * shrink-on-load, then libvips' resize), never below `minWidth` x `minHeight`. Faster on
   * large photographs, but the pixels are no longer those the reference computes on, which
   * resizes the full image (docs/PREPROCESSING.md has the measured cost). Default false.
   */
  fastDecode?: boolean;
  /** The model's input size: the floor of a fast decode's shrink. */
  minWidth: number;
  minHeight: number;
  /** Images with more pixels than this are refused unread (decompression bombs). */
  maxPixels: number;
  /**
   * Images whose longer side is more than this many times the shorter are refused after their
   * header is read, before their pixels are (a thin solid PNG packs millions of pixels into a
   * few KB). Default: no limit.
   */
  maxAspectRatio?: number;
  /**
   * Resize in the worker to the model's input size, exactly as the model would (the core's
   * resize, levels before normalization): the full-size pixels never leave the worker, and
   * `predict` with geometry `none` on the result gives what `predict` on the full image gives.
   */
  resizeTo?: { width: number; height: number; geometry: 'letterbox' | 'stretch' };
  /**
   * Find the image's faces (the core's detector, on this worker's thread) and hand back each
   * face's crop resized as `resizeTo` says, instead of the image: the result's `data` holds
   * the crops back to back, one per entry of `faces`. Needs `resizeTo`; not with `box`.
   */
  faces?: FaceDetectionOptions;
}

/** Why a file was not decoded: what a caller branches on (the reason is for people). */
export type DecodeFailure =
  | 'no-input'
  | 'missing'
  | 'not-a-file'
  | 'permission'
  | 'empty'
  | 'not-an-image'
  | 'format-not-accepted'
  | 'oversized'
  | 'extreme-aspect'
  | 'box-outside'
  | 'corrupt'
  | 'unreadable';

export type DecodeResult =
  | {
      ok: true;
      /** The image, or with `faces` each face's crop, `width` x `height` each, back to back. */
      data: Uint8Array;
      width: number;
      height: number;
      /** With `faces`: the faces found, in the image's pixels (after EXIF orientation). */
      faces?: DetectedFace[];
      /** With `faces`: the size of the image they were found in. */
      imageWidth?: number;
      imageHeight?: number;
    }
  | { ok: false; kind: DecodeFailure; reason: string };
