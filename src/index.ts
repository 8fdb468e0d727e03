/** motivnet: facial emotion recognition (MotivNet: Sapiens ViT + ML-Decoder) with a Rust core. */
export { MotivNet } from './model.js';
export { MotivNetError, type MotivNetErrorCode } from './errors.js';
export type { ClassScore, EvaluateOutput, FacesPredictOutput, InitScheme, LoadOptions, PredictOptions, PredictOutput, Precision, TrainStepOptions, TrainStepOutput } from './model.js';
export { attentionMap, attentionOverlay, attentionRows, type AttentionMaps, type OverlayOptions } from './explain.js';
export { detectFaces, type DetectedFace, type FaceBox, type FaceClassification, type FaceDetectionOptions, type FaceKeypoints, type FacesOption } from './faces.js';
export type { Geometry, Images, NormalizedBatch, PackedImages, RgbImage } from './images.js';
export { EMOTIONS_7, EMOTIONS_8, emotionLabels } from './emotions.js';
export type { Emotion } from './emotions.js';
export { cpuBf16Available, cpuInt8Available, cudaAvailable, presets, resolveModelConfig } from './config.js';
export type { EncoderConfig, HeadConfig, ModelConfig } from './config.js';
export { toInputTensor, type InputTensorOptions } from './pixels.js';
export { tuneProcess, type ProcessTuning, type ProcessTuningApplied } from './tune-process.js';
export {
  ACCEPTED_FORMATS,
  ClassifierClosedError,
  ClassifierInputError,
  EmotionClassifier,
  QueueFullError,
  type Classification,
  type ClassifierGeometry,
  type ClassifierOptions,
  type ClassifierStats,
  type ClassifyOptions,
  type FacesClassification,
} from './serve/classifier.js';
export * as data from './data/index.js';
export * as preprocessing from './preprocess/index.js';
export { evaluateData, type EvaluateDataOptions, type EvaluateDataResult } from './pipelines/evaluate.js';
export {
  expandInputs,
  predictFileFaces,
  predictFiles,
  type FaceFilePrediction,
  type FileFacesPrediction,
  type FilePrediction,
  type PredictFileFacesOptions,
  type PredictFilesOptions,
} from './pipelines/predict.js';
