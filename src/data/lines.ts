/**
 * A text file's lines as byte ranges of a reused buffer, read a few MiB at a time.
 *
 * Why not `readline`: AffectNet's training list is 287,651 rows of about a kilobyte each
 * (136 landmark coordinates per row) of which a reader needs five short fields. Decoding every
 * line into a string, then splitting it, took most of ten seconds; here a line costs a few
 * native `indexOf` calls, and only the fields that are used become strings.
 */
import { open } from 'node:fs/promises';

const CHUNK = 8 << 20;

/** One line: bytes `start` to `end` (exclusive, no line break) of `bytes`, valid during the call. */
export type LineVisitor = (bytes: Buffer, start: number, end: number, lineNo: number) => void;

/**
 * Calls `visit` for every line of `file`, in order, with 1-based line numbers; a byte-order
 * mark and a carriage return before the line feed are left out. Each chunk is processed
 * synchronously between reads, so the event loop turns while a large file is read.
 */
export async function forEachLine(file: string, visit: LineVisitor): Promise<void> {
  const handle = await open(file, 'r');
  try {
    let buffer = Buffer.allocUnsafe(CHUNK);
    let filled = 0;
    let lineNo = 0;
    let first = true;
    for (;;) {
      if (filled === buffer.length) {
        // A line longer than the buffer: grow it.
        const bigger = Buffer.allocUnsafe(buffer.length * 2);
        buffer.copy(bigger, 0, 0, filled);
        buffer = bigger;
      }
      const { bytesRead } = await handle.read(buffer, filled, buffer.length - filled, null);
      const end = filled + bytesRead;
      let start = 0;
      if (first && end >= 3 && buffer[0] === 0xef && buffer[1] === 0xbb && buffer[2] === 0xbf) start = 3;
      first = first && end === 0;
      for (;;) {
        const nl = buffer.indexOf(0x0a, start);
        if (nl < 0 || nl >= end) break;
        visit(buffer, start, nl > start && buffer[nl - 1] === 0x0d ? nl - 1 : nl, ++lineNo);
        start = nl + 1;
      }
      if (bytesRead === 0) {
        if (start < end) visit(buffer, start, end > start && buffer[end - 1] === 0x0d ? end - 1 : end, ++lineNo);
        return;
      }
      buffer.copy(buffer, 0, start, end);
      filled = end - start;
    }
  } finally {
    await handle.close();
  }
}
