/**
 * The preprocessing pool: piscina workers running sharp (worker.ts), one per core by default.
 * Decoding is where the CPU goes in the data path; the pool keeps it off the event loop and
 * spreads it over the cores while the native core computes.
 */
import 'sharp'; // loaded on the main thread too, or glibc may unload libvips when a worker exits
import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { Piscina } from 'piscina';

import type { DecodeResult, DecodeTask } from './types.js';

export interface PoolOptions {
  /** Worker threads. Default: the number of cores. */
  threads?: number;
}

/** The compiled worker: beside this module in dist/, or dist/ when running from src/ (tests). */
function workerFile(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  // The CommonJS entry that loads worker.ts's build (worker-entry.cts says why).
  const candidates = [path.join(here, 'worker-entry.cjs'), path.resolve(here, '../../dist/preprocess/worker-entry.cjs')];
  const found = candidates.find((f) => existsSync(f));
  if (!found) throw new Error(`the preprocessing worker is not built (looked for ${candidates.join(', ')}): run \`npm run build:ts\``);
  return found;
}

export class PreprocessPool {
  private readonly pool: Piscina<DecodeTask, DecodeResult>;
  readonly threads: number;

  constructor(opts: PoolOptions = {}) {
    this.threads = opts.threads ?? availableParallelism();
    if (!Number.isInteger(this.threads) || this.threads < 1) throw new RangeError(`threads must be a positive integer, got ${opts.threads}`);
    this.pool = new Piscina({
      filename: workerFile(),
      minThreads: this.threads,
      maxThreads: this.threads,
    });
  }

  /**
   * Decodes one image. Encoded `bytes` are copied once and the copy moved to the worker: the
   * caller's buffer stays usable (moving it would empty it, and a small Buffer shares Node's
   * pool with others), and the copy costs little next to the decode.
   */
  /**
   * Decodes one image in a worker. `signal` cancels it: a task still queued is dropped, one
   * running ends with its worker (piscina starts another), and the promise rejects with the
   * signal's reason.
   */
  decode(task: DecodeTask, signal?: AbortSignal): Promise<DecodeResult> {
    if (!task.bytes) return this.pool.run(task, { signal });
    const copy = new Uint8Array(task.bytes);
    return this.pool.run({ ...task, bytes: copy }, { transferList: [copy.buffer], signal });
  }

  async destroy(): Promise<void> {
    await this.pool.destroy();
  }
}
