/**
 * The one module that loads the native addon (bindings/node, built by `npm run build:native`).
 * Everything else imports the addon from here, so a missing build fails in one place, with
 * the command that fixes it.
 */
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

import type * as Addon from '../bindings/node/index.cjs';

export type NativeAddon = typeof Addon;
export type { NativeModel, PredictResult, TrainStepResult, EvaluateResult } from '../bindings/node/index.cjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const loaderPath = path.join(root, 'bindings', 'node', 'index.cjs');

// Loading the addon changes nothing outside it: no environment writes, no allocator or
// libvips settings. What a process owner may tune is in src/tune-process.ts.

function load(): NativeAddon {
  if (!existsSync(loaderPath)) {
    throw new Error(
      `motivnet's native addon is not built (${path.relative(process.cwd(), loaderPath)} is missing): ` +
        'run `npm run build:native` (needs Rust; see the README)',
    );
  }
  const require = createRequire(import.meta.url);
  try {
    return require(loaderPath) as NativeAddon;
  } catch (err) {
    // napi's loader reports "Cannot find native binding" with each attempt's error chained in `cause`.
    const messages: string[] = [];
    for (let e: unknown = err; e instanceof Error && messages.length < 10; e = e.cause) messages.push(e.message);
    const cudaMissing = messages.find((m) => /lib(cuda|cublas|cublasLt|curand|nvrtc|cudart)\.so/.test(m));
    const message = cudaMissing ?? messages[0] ?? String(err);
    if (cudaMissing) {
      throw new Error(
        `motivnet's native addon was built with CUDA (npm run build:cuda) and cannot find a CUDA library: ${message}\n` +
          'it needs an NVIDIA driver and the CUDA 13 runtime libraries (add their folder to LD_LIBRARY_PATH), ' +
          'or rebuild the CPU addon with `npm run build:native`',
      );
    }
    throw new Error(`motivnet's native addon failed to load: ${message}\n` + 'rebuild it with `npm run build:native`');
  }
}

export const native: NativeAddon = load();
