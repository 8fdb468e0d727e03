/** Readers, balanced sampling and the split: from a user's data to ordered samples. */
export { readAffectNet, type AffectNetOptions } from './affectnet.js';
export { readLabelsJson, type LabelsJsonOptions } from './labels-json.js';
export { readFolders, IMAGE_EXTENSIONS, type FoldersOptions } from './folders.js';
export { balancedSample, splitTrainValidation, epochOrder, formatSampleReport, type SampleReport } from './sample.js';
export { createRng, shuffle, type Rng } from './random.js';
export { DataRoot } from './paths.js';
export { DataError, type ClassCount, type FaceBox, type ReadResult, type Sample } from './types.js';
