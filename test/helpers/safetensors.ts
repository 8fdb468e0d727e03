/** A minimal safetensors reader for tests: the core's fixtures, read without the addon. */
import { readFileSync, writeFileSync } from 'node:fs';

export interface Stored {
  dtype: string;
  shape: number[];
  data: Float32Array | BigInt64Array | Int32Array | Uint8Array;
}

export function readSafetensors(path: string): Record<string, Stored> {
  const buf = readFileSync(path);
  const headerLen = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + headerLen).toString('utf8')) as Record<
    string,
    { dtype: string; shape: number[]; data_offsets: [number, number] }
  >;
  const base = 8 + headerLen;
  const out: Record<string, Stored> = {};
  for (const [name, info] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const [start, end] = info.data_offsets;
    const bytes = new Uint8Array(buf.subarray(base + start, base + end)); // copy: aligned for typed views
    const data =
      info.dtype === 'F32'
        ? new Float32Array(bytes.buffer)
        : info.dtype === 'I64'
          ? new BigInt64Array(bytes.buffer)
          : info.dtype === 'I32'
            ? new Int32Array(bytes.buffer)
            : bytes;
    out[name] = { dtype: info.dtype, shape: info.shape, data };
  }
  return out;
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`lengths differ: ${a.length} vs ${b.length}`);
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i]! - b[i]!));
  return max;
}

/** Writes tensors as read by readSafetensors (header in key order, data back to back). */
export function writeSafetensors(path: string, tensors: Record<string, Stored>, metadata?: Record<string, string>): void {
  const header: Record<string, unknown> = metadata ? { __metadata__: metadata } : {};
  let offset = 0;
  const parts: Uint8Array[] = [];
  for (const [name, t] of Object.entries(tensors)) {
    const bytes = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + bytes.length] };
    parts.push(bytes);
    offset += bytes.length;
  }
  const json = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  writeFileSync(path, Buffer.concat([len, json, ...parts]));
}

/** The `__metadata__` of a safetensors file. */
export function readMetadata(path: string): Record<string, string> | undefined {
  const buf = readFileSync(path);
  const headerLen = Number(buf.readBigUInt64LE(0));
  return (JSON.parse(buf.subarray(8, 8 + headerLen).toString('utf8')) as { __metadata__?: Record<string, string> }).__metadata__;
}
