/** motivnet: facial emotion recognition (MotivNet: Sapiens ViT + ML-Decoder) with a Rust core. */
export { presets, resolveModelConfig } from './config.js';
export type { EncoderConfig, HeadConfig, ModelConfig } from './config.js';
export { native } from './native.js';
