/**
 * Process-wide settings that make models and decoding faster, applied only on request: a
 * library embedded in someone else's backend must not change the allocator or libvips for the
 * whole process behind its host's back. The `motivnet` command line applies them to its own
 * processes; a host that runs motivnet as its main work may call `tuneProcess()` once at start.
 *
 * What each does, measured in docs/BENCHMARKS.md ("process settings"):
 * - `malloc`: glibc keeps blocks up to 32 MiB on the heap and up to 32 MiB of freed memory per
 *   arena, so a step's temporaries are reused rather than mapped and paged in afresh: steadier
 *   and faster train steps, at a resident size that stays near its peak. Threads share at most
 *   two arenas per core, so the decoding workers' and libvips' threads do not each keep their
 *   own; glibc only honours that cap while the process has made at most eight arenas, so call
 *   this before starting worker pools (`mallocArenaCap` says whether it took). Linux with glibc
 *   only; a `GLIBC_TUNABLES`, `MALLOC_*_THRESHOLD_` or `MALLOC_ARENA_MAX` setting of the
 *   environment wins.
 * - `sharpThreads`: libvips threads per image operation. Our decoding pool already runs one
 *   image per core, so one thread each avoids oversubscribing the cores.
 * - `sharpCache`: libvips' operation cache; it holds recent results, which a pool decoding each
 *   file once never reuses.
 *
 * Not here: `CANDLE_NUM_THREADS`, the thread count of candle's own element-wise pool, is read
 * from the environment when the addon first computes; a host sets it before starting (the
 * command line sets it to 1, see src/cli/own-process.ts).
 */
import { availableParallelism } from 'node:os';

import sharp from 'sharp';

import { native } from './native.js';

export interface ProcessTuning {
  /** Apply the core's glibc malloc settings. Default true. */
  malloc?: boolean;
  /** libvips threads per operation (`sharp.concurrency`). Default 1 on a machine of several cores. */
  sharpThreads?: number;
  /** Keep libvips' operation cache. Default false (turned off). */
  sharpCache?: boolean;
}

export interface ProcessTuningApplied {
  /** Whether the malloc thresholds are in effect (false off glibc, or where the environment set its own). */
  malloc: boolean;
  /**
   * The arenas the process's threads share from now on; null where the cap is not in effect:
   * `malloc` false, or more than eight arenas made before the call (threads started earlier),
   * after which glibc keeps its own limit of eight per core.
   */
  mallocArenaCap: number | null;
  sharpThreads: number;
  sharpCache: boolean;
}

/** Applies the process-wide settings above; call once, at the start of a process you own. */
export function tuneProcess(options: ProcessTuning = {}): ProcessTuningApplied {
  const malloc = options.malloc === false ? { thresholds: false, arenaCap: null } : native.tuneProcessMalloc();
  const sharpThreads = options.sharpThreads ?? (availableParallelism() > 1 ? 1 : 0);
  if (!Number.isInteger(sharpThreads) || sharpThreads < 0) throw new RangeError(`sharpThreads must be a whole number (0: libvips' default), got ${sharpThreads}`);
  sharp.concurrency(sharpThreads);
  const sharpCache = options.sharpCache ?? false;
  sharp.cache(sharpCache);
  return { malloc: malloc.thresholds, mallocArenaCap: malloc.arenaCap ?? null, sharpThreads: sharp.concurrency(), sharpCache };
}
