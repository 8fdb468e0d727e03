import { describe, expect, it } from 'vitest';

import { sniffable, sniffFormat } from '../src/preprocess/sniff.js';

describe('format sniffing', () => {
  it('names JPEG, PNG and WebP by their signatures and nothing else', () => {
    const bytes = (...b: (number | string)[]) => Uint8Array.from(b.flatMap((x) => (typeof x === 'string' ? [...x].map((c) => c.charCodeAt(0)) : [x])));
    expect(sniffFormat(bytes(0xff, 0xd8, 0xff, 0xe0))).toBe('jpeg');
    expect(sniffFormat(bytes(0x89, 'PNG', 0x0d, 0x0a, 0x1a, 0x0a, 0))).toBe('png');
    expect(sniffFormat(bytes('RIFF', 0, 0, 0, 0, 'WEBP', 'VP8 '))).toBe('webp');
    expect(sniffFormat(bytes('RIFF', 0, 0, 0, 0, 'WAVE'))).toBeUndefined();
    expect(sniffFormat(bytes('GIF89a', 1, 0))).toBe('gif');
    expect(sniffFormat(bytes('  <svg xmlns="http://www.w3.org/2000/svg"/>'))).toBe('svg');
    expect(sniffFormat(bytes('<?xml version="1.0"?><svg/>'))).toBe('svg');
    expect(sniffFormat(bytes('II*', 0, 8, 0))).toBe('tiff');
    expect(sniffFormat(bytes(0, 0, 0, 0x18, 'ftypheic', 0))).toBe('heif');
    expect(sniffFormat(bytes('this is not an image at all'))).toBeUndefined();
    expect(sniffFormat(bytes(0xff, 0xd8))).toBeUndefined(); // too short to tell
    expect(sniffFormat(new Uint8Array())).toBeUndefined();
  });

  it('checks an allowlist by signature only when it knows every format in it', () => {
    expect(sniffable(['jpeg', 'png', 'webp'])).toBe(true);
    expect(sniffable(['jpeg', 'gif'])).toBe(true);
    expect(sniffable(['jpeg', 'tiff'])).toBe(false);
  });
});
