/**
 * The image format a file's first bytes announce, read before any decoder sees the bytes: an
 * allowlist of formats is enforced here, so an SVG, TIFF or HEIF body sent as `image/jpeg`
 * never reaches libvips' parsers for those formats.
 */

/** Formats told apart by their signatures (sharp's names). */
export type SniffedFormat = 'jpeg' | 'png' | 'webp' | 'gif' | 'tiff' | 'bmp' | 'heif' | 'svg';

/** The formats an allowlist may name and be checked on signatures alone. */
const EXACT: readonly string[] = ['jpeg', 'png', 'webp', 'gif'];

const PNG = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
const ascii = (bytes: Uint8Array, at: number, text: string) => [...text].every((ch, i) => bytes[at + i] === ch.charCodeAt(0));

/** The format the first bytes announce, or undefined when they announce none of these. */
export function sniffFormat(bytes: Uint8Array): SniffedFormat | undefined {
  if (bytes.length >= 3 && bytes[0] === 0xff && bytes[1] === 0xd8 && bytes[2] === 0xff) return 'jpeg';
  if (bytes.length >= 8 && PNG.every((b, i) => bytes[i] === b)) return 'png';
  if (bytes.length >= 12 && ascii(bytes, 0, 'RIFF') && ascii(bytes, 8, 'WEBP')) return 'webp';
  if (ascii(bytes, 0, 'GIF87a') || ascii(bytes, 0, 'GIF89a')) return 'gif';
  if (bytes.length >= 4 && ((ascii(bytes, 0, 'II') && bytes[2] === 42 && bytes[3] === 0) || (ascii(bytes, 0, 'MM') && bytes[2] === 0 && bytes[3] === 42))) return 'tiff';
  if (ascii(bytes, 0, 'BM')) return 'bmp';
  if (bytes.length >= 12 && ascii(bytes, 4, 'ftyp')) return 'heif';
  const head = new TextDecoder('utf-8', { fatal: false }).decode(bytes.subarray(0, 256)).replace(/^\uFEFF/, '').trimStart();
  if (head.startsWith('<svg') || head.startsWith('<?xml')) return 'svg';
  return undefined;
}

/** Whether an allowlist can be enforced on signatures alone (every format in it has one). */
export function sniffable(formats: readonly string[]): boolean {
  return formats.every((f) => EXACT.includes(f));
}
