/** Model configs as the core sees them: presets and validated JSON config files. */
import { nativeCallSync } from './errors.js';
import { native } from './native.js';

export interface EncoderConfig {
  embedDim: number;
  depth: number;
  heads: number;
  mlpRatio: number;
  patchSize: number;
  patchPadding: number;
  inputHeight: number;
  inputWidth: number;
}

export interface HeadConfig {
  numClasses: number;
  embedDim: number;
  layers: number;
  heads: number;
  feedforward: number;
  groups?: number;
  dropout: number;
}

export interface ModelConfig {
  encoder: EncoderConfig;
  head: HeadConfig;
}

/** The built-in presets: `tiny`, `small` (CPU sizes) and the four Sapiens sizes. */
/** Whether the loaded addon was built with CUDA support (`npm run build:cuda`). */
export function cudaAvailable(): boolean {
  return native.cudaAvailable();
}

/**
 * Whether `precision: 'bf16'` runs on this machine's CPU: it needs AVX512_BF16 (Intel Xeon of
 * the 4th generation or later, AMD Zen 4 or later): the products run on AMX tiles where the CPU
 * has them, else on AVX512_BF16's dot products. `MOTIVNET_BF16=off` turns it off, and
 * `MOTIVNET_AMX=off` keeps it off the tiles. Elsewhere bf16 needs a CUDA device.
 */
export function cpuBf16Available(): boolean {
  return native.cpuBf16Available();
}

/**
 * Whether `precision: 'int8'` runs on this machine's CPU: it needs AVX512-VNNI (Intel Xeon of
 * the 2nd generation or later, AMD Zen 4 or later). int8 runs nowhere else.
 */
export function cpuInt8Available(): boolean {
  return native.cpuInt8Available();
}

export function presets(): string[] {
  return native.presets();
}

/** A preset name or a path to a JSON config file, resolved and validated by the core. */
export function resolveModelConfig(spec: string): ModelConfig {
  return JSON.parse(nativeCallSync(() => native.resolveModelConfig(spec))) as ModelConfig;
}
