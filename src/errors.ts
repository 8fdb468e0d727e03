/**
 * `MotivNetError`: what a failed native call throws, with a stable `code` to branch on (never
 * the message text) and a JavaScript stack from the call site. The addon prefixes each
 * message with its code (`[MOTIVNET_WEIGHTS] file.pth: ...`); this module reads it back.
 */

/** The kinds of failure, as the core reports them. */
export type MotivNetErrorCode =
  /** Input that does not fit the model: pixels, sizes, labels, learning rates. */
  | 'MOTIVNET_INPUT'
  /** A model config file or preset that cannot be used. */
  | 'MOTIVNET_CONFIG'
  /** A weights file that cannot be loaded (the message names it). */
  | 'MOTIVNET_WEIGHTS'
  /** A training-state file that cannot be restored (the message names it). */
  | 'MOTIVNET_STATE'
  /** A training step whose loss was NaN or infinite; nothing was applied. */
  | 'MOTIVNET_NON_FINITE'
  /** A device that does not exist or cannot do what was asked (bf16 on a CPU without AVX512_BF16). */
  | 'MOTIVNET_DEVICE'
  /** A file that cannot be read or written. */
  | 'MOTIVNET_IO'
  /** A call on a model after `dispose()`. */
  | 'MOTIVNET_DISPOSED'
  /** A failure inside the core that is not the caller's doing; the process lives on. */
  | 'MOTIVNET_INTERNAL';

export class MotivNetError extends Error {
  constructor(
    readonly code: MotivNetErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'MotivNetError';
  }
}

const CODED = /^\[(MOTIVNET_[A-Z_]+)\] ([\s\S]*)$/;

/** The addon's error as a MotivNetError (its original as `cause`); anything else as it is. */
export function fromNative(err: unknown): unknown {
  if (!(err instanceof Error)) return err;
  const m = CODED.exec(err.message);
  return m ? new MotivNetError(m[1] as MotivNetErrorCode, m[2]!, { cause: err }) : err;
}

/** Awaits a native call, rethrowing its failure as a MotivNetError. */
export async function nativeCall<T>(call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (err) {
    throw fromNative(err);
  }
}

/** A synchronous native call, its failure rethrown as a MotivNetError. */
export function nativeCallSync<T>(call: () => T): T {
  try {
    return call();
  } catch (err) {
    throw fromNative(err);
  }
}
