/**
 * The training run's configuration: one schema for CLI flags and config files (JSON or YAML),
 * validated once at the edge. Defaults come from a named recipe (`paper` unless `recipe`
 * says otherwise; any key given overrides it), except the model, whose default is the
 * CPU-sized `tiny` preset.
 */
import { readFileSync } from 'node:fs';

import { parse as parseYaml } from 'yaml';
import { z } from 'zod';

const positiveInt = z.number().int().positive();

export const TrainConfigSchema = z
  .object({
    data: z.string().min(1).describe('data folder'),
    format: z.enum(['affectnet', 'json', 'folders']).optional().describe('how labels are given (default: detected from the data folder)'),
    labels: z.string().optional().describe('label file: AffectNet training CSV (default DATA/training.csv) or the JSON label file'),
    testLabels: z.string().optional().describe('test label file: AffectNet CSV (default DATA/validation.csv) or JSON'),
    testData: z.string().optional().describe('test folder (folders format)'),
    images: z.string().optional().describe('image folder the label files are relative to (default DATA)'),
    classes: z.union([z.literal(7), z.literal(8)]).optional().describe("label set (default: the weights' head, else 8)"),
    cropToFace: z.boolean().default(false),
    recipe: z.enum(['paper', 'upstream-code']).default('paper'),
    balanced: z.boolean().default(true).describe('balanced sampling: the smallest class size from every class'),
    capPerClass: positiveInt.optional(),
    validationFraction: z.number().min(0).max(0.9).default(0.1),
    stratifiedSplit: z.boolean().default(true).describe('hold out the same fraction of every class for validation'),
    testWeights: z.enum(['best', 'final']).default('best').describe('which weights the test set is run with'),
    model: z.string().min(1).default('tiny'),
    weights: z.string().optional(),
    encoderOnly: z.boolean().default(false),
    init: z.enum(['upstream', 'vit']).default('upstream').describe('how a fresh model starts'),
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
    precision: z
      .enum(['f32', 'bf16'])
      .default('f32')
      .describe('compute dtype; bf16 on CUDA, or on a CPU with AVX512_BF16 (the encoder\'s products), with f32 weights'),
    seed: z.number().int().nonnegative().default(0),
    threads: positiveInt.optional(),
    prefetch: z.number().int().nonnegative().default(2),
    maxPixels: positiveInt.default(64 * 1024 * 1024),
    fastDecode: z.boolean().default(false).describe('shrink large JPEGs while decoding (faster, pixels no longer the reference\'s)'),
  })
  .strict();

export type TrainConfig = z.output<typeof TrainConfigSchema>;
export type TrainConfigInput = z.input<typeof TrainConfigSchema>;
export type Recipe = TrainConfig['recipe'];

/**
 * The named recipes: what each sets, before any key given explicitly.
 *
 * - `paper`: the MotivNet paper's recipe. Batch 2 with 8 accumulated, 30 epochs, a balanced
 *   sample (the smallest class's size from each class) split 9:1 per class, the best epoch by
 *   validation accuracy, the test set with the best weights.
 * - `upstream-code`: what the released training code does. Batch 32 without accumulation, 10
 *   epochs, every image (no balanced sampling) split 80/20 at random, the best checkpoint by
 *   validation loss, the test set with the final weights.
 */
export const RECIPES: Record<Recipe, Partial<TrainConfig>> = {
  paper: { batchSize: 2, accumulate: 8, epochs: 30, balanced: true, validationFraction: 0.1, stratifiedSplit: true, metric: 'accuracy', testWeights: 'best' },
  'upstream-code': { batchSize: 32, accumulate: 1, epochs: 10, balanced: false, validationFraction: 0.2, stratifiedSplit: false, metric: 'loss', testWeights: 'final' },
};

/** A run's config once the data format and class count are known (what config.json holds). */
export type RunConfig = TrainConfig & { format: NonNullable<TrainConfig['format']>; classes: 7 | 8 };

/** A readable list of what is wrong, one line per problem, naming the key. */
export function describeIssues(error: z.ZodError): string {
  return error.issues.map((i) => `  ${i.path.length ? i.path.join('.') : '(top level)'}: ${i.message}`).join('\n');
}

export function validateTrainConfig(input: unknown, source: string): TrainConfig {
  // The recipe's values come first, so every key given explicitly overrides them.
  const recipe = (input as { recipe?: unknown } | null)?.recipe;
  const base = typeof recipe === 'string' && recipe in RECIPES ? RECIPES[recipe as Recipe] : recipe === undefined ? RECIPES.paper : {};
  // (A key present but undefined is not given: it must not hide the recipe's value.)
  const given = typeof input === 'object' && input !== null && !Array.isArray(input) ? Object.fromEntries(Object.entries(input).filter(([, v]) => v !== undefined)) : undefined;
  const withRecipe = given ? { ...base, ...given } : input;
  const parsed = TrainConfigSchema.safeParse(withRecipe);
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
