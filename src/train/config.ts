/**
 * The training run's configuration: one schema for CLI flags and config files (JSON or YAML),
 * validated once at the edge. Defaults follow the reference recipe (REFERENCE.md section 3)
 * except the model, whose default is the CPU-sized `tiny` preset.
 */
import { readFileSync } from 'node:fs';

import { parse as parseYaml } from 'yaml';
import { z } from 'zod';

const positiveInt = z.number().int().positive();

export const TrainConfigSchema = z
  .object({
    data: z.string().min(1).describe('data folder'),
    format: z.enum(['affectnet', 'json', 'folders']),
    labels: z.string().optional().describe('label file: AffectNet training CSV (default DATA/training.csv) or the JSON label file'),
    testLabels: z.string().optional().describe('test label file: AffectNet CSV (default DATA/validation.csv) or JSON'),
    testData: z.string().optional().describe('test folder (folders format)'),
    images: z.string().optional().describe('image folder the label files are relative to (default DATA)'),
    classes: z.union([z.literal(7), z.literal(8)]).default(8),
    cropToFace: z.boolean().default(false),
    capPerClass: positiveInt.optional(),
    validationFraction: z.number().min(0).max(0.9).default(0.1),
    model: z.string().min(1).default('tiny'),
    weights: z.string().optional(),
    encoderOnly: z.boolean().default(false),
    epochs: positiveInt.default(30),
    batchSize: positiveInt.default(2),
    accumulate: positiveInt.default(8),
    encoderLr: z.number().nonnegative().default(1e-8),
    decoderLr: z.number().nonnegative().default(1e-5),
    encoderWeightDecay: z.number().nonnegative().default(0.01),
    decoderWeightDecay: z.number().nonnegative().default(0.01),
    excludeNormBiasPosFromDecay: z.boolean().default(false),
    layerDecay: z.number().gt(0).max(1).optional(),
    clipGradNorm: z.number().positive().optional(),
    schedule: z.enum(['cosine-restarts', 'constant']).default('cosine-restarts'),
    t0: positiveInt.default(10),
    tMult: positiveInt.default(1),
    etaMin: z.number().nonnegative().default(0),
    schedulePer: z.enum(['epoch', 'step']).default('epoch'),
    warmupSteps: z.number().int().nonnegative().default(0),
    flip: z.number().min(0).max(1).default(0).describe('probability of mirroring a training image'),
    metric: z.enum(['accuracy', 'auroc', 'f1', 'loss']).default('accuracy'),
    patience: z.number().int().nonnegative().default(0).describe('epochs without improvement before stopping (0: never)'),
    out: z.string().min(1),
    device: z.string().default('cpu'),
    precision: z.enum(['f32', 'bf16']).default('f32').describe('compute dtype; bf16 runs on CUDA only, with f32 weights'),
    seed: z.number().int().nonnegative().default(0),
    threads: positiveInt.optional(),
    prefetch: z.number().int().nonnegative().default(2),
    maxPixels: positiveInt.default(64 * 1024 * 1024),
  })
  .strict();

export type TrainConfig = z.output<typeof TrainConfigSchema>;
export type TrainConfigInput = z.input<typeof TrainConfigSchema>;

/** A readable list of what is wrong, one line per problem, naming the key. */
export function describeIssues(error: z.ZodError): string {
  return error.issues.map((i) => `  ${i.path.length ? i.path.join('.') : '(top level)'}: ${i.message}`).join('\n');
}

export function validateTrainConfig(input: unknown, source: string): TrainConfig {
  const parsed = TrainConfigSchema.safeParse(input);
  if (!parsed.success) throw new Error(`${source}: invalid training config\n${describeIssues(parsed.error)}`);
  return parsed.data;
}

/** A JSON or YAML config file as a plain object (validated later, merged with flags). */
export function readConfigFile(file: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new Error(`${file}: cannot read the config file (${(err as Error).message})`);
  }
  let value: unknown;
  try {
    value = /\.ya?ml$/i.test(file) ? parseYaml(text) : JSON.parse(text);
  } catch (err) {
    throw new Error(`${file}: not valid ${/\.ya?ml$/i.test(file) ? 'YAML' : 'JSON'}: ${(err as Error).message}`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new Error(`${file}: a config file holds one object of settings`);
  }
  return value as Record<string, unknown>;
}
