/** The preprocessing pipeline: a piscina pool of sharp workers and the batcher. */
export { PreprocessPool, type PoolOptions } from './pool.js';
export { batches, pack, DEFAULT_MAX_PIXELS, type BatcherOptions, type PackedBatch } from './batcher.js';
export { SkipLog, type Skip } from './skips.js';
export type { DecodeFailure, DecodeResult, DecodeTask } from './types.js';
