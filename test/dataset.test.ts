/** From a data folder to a run's samples: layouts found, files named in the report, recipes. */
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';

import { detectFormat } from '../src/data/layout.js';
import { RECIPES, validateTrainConfig } from '../src/train/config.js';
import { dataSource, describeSource, loadDataset, resolveRunConfig } from '../src/train/dataset.js';
import { colourAffectNet } from './helpers/dataset.js';
import { tempDir, writeText } from './helpers/files.js';

const fixtures = path.resolve(__dirname, '../crates/motivnet/tests/fixtures');
let unpacked: string;

beforeAll(async () => {
  unpacked = await colourAffectNet(path.join(tempDir('layout'), 'AffectNet'), 6, 2);
}, 60_000);

describe('data layouts', () => {
  it('finds AffectNet as its owners unpack it, with --data alone', async () => {
    expect(detectFormat(unpacked)).toBe('affectnet');
    const cfg = await resolveRunConfig(validateTrainConfig({ data: unpacked, out: 'x' }, 'test'));
    expect(cfg.format).toBe('affectnet');
    expect(cfg.classes).toBe(8); // the tiny preset without weights
    const data = await loadDataset(cfg);
    expect(data.source).toEqual({
      format: 'affectnet',
      layout: 'affectnet-unpacked',
      labels: path.join(unpacked, 'Manually_Annotated_file_lists', 'training.csv'),
      testLabels: path.join(unpacked, 'Manually_Annotated_file_lists', 'validation.csv'),
      images: path.join(unpacked, 'Manually_Annotated_Images'),
    });
    expect(data.train.length + data.validation.length).toBe(48);
    expect(data.test).toHaveLength(16);
    expect(data.dropped).toEqual({ '8 none': 1, '10 no face': 1 });
    expect(data.train[0]!.path.startsWith(path.join(unpacked, 'Manually_Annotated_Images'))).toBe(true);
    expect(describeSource(data.source)).toMatch(/^data: affectnet-unpacked layout; labels .*training\.csv, test .*validation\.csv; images in .*Manually_Annotated_Images$/);
  });

  it('still finds the flat layout, and explicit files win over the found ones', () => {
    const flat = tempDir('flat');
    writeText(path.join(flat, 'training.csv'), '');
    writeText(path.join(flat, 'validation.csv'), '');
    expect(dataSource({ data: flat, format: 'affectnet', classes: 8, cropToFace: false })).toMatchObject({ layout: 'affectnet-flat', labels: path.join(flat, 'training.csv'), images: flat });
    const given = dataSource({ data: unpacked, format: 'affectnet', classes: 8, cropToFace: false, labels: '/l.csv', images: '/imgs' });
    expect(given).toMatchObject({ layout: 'given', labels: '/l.csv', images: '/imgs' });
    expect(given.testLabels).toBe(path.join(unpacked, 'Manually_Annotated_file_lists', 'validation.csv'));
  });

  it('says what it looked for when a folder holds no known layout', () => {
    const empty = tempDir('nolayout');
    expect(() => dataSource({ data: empty, format: 'affectnet', classes: 8, cropToFace: false })).toThrow(
      /no AffectNet file list found: looked for Manually_Annotated_file_lists\/training\.csv \(AffectNet as unpacked, images in Manually_Annotated_Images\/\) and training\.csv/,
    );
    expect(() => detectFormat(empty)).toThrow(/cannot tell the data format/);
    mkdirSync(path.join(empty, 'happy'));
    expect(detectFormat(empty)).toBe('folders');
    const listsOnly = tempDir('listsonly');
    writeText(path.join(listsOnly, 'Manually_Annotated_file_lists', 'training.csv'), '');
    expect(() => dataSource({ data: listsOnly, format: 'affectnet', classes: 8, cropToFace: false })).toThrow(/image folder Manually_Annotated_Images\/ is missing/);
  });
});

describe('recipes', () => {
  it('paper by default; upstream-code by name; any key given wins', () => {
    const paper = validateTrainConfig({ data: 'd', out: 'o' }, 'test');
    expect(paper).toMatchObject({ recipe: 'paper', batchSize: 2, accumulate: 8, epochs: 30, balanced: true, validationFraction: 0.1, stratifiedSplit: true, metric: 'accuracy', testWeights: 'best', init: 'upstream', fastDecode: false });
    const code = validateTrainConfig({ data: 'd', out: 'o', recipe: 'upstream-code' }, 'test');
    expect(code).toMatchObject({ ...RECIPES['upstream-code'], recipe: 'upstream-code' });
    expect(code).toMatchObject({ batchSize: 32, accumulate: 1, epochs: 10, balanced: false, validationFraction: 0.2, stratifiedSplit: false, metric: 'loss', testWeights: 'final' });
    expect(validateTrainConfig({ data: 'd', out: 'o', recipe: 'upstream-code', epochs: 3, balanced: true }, 'test')).toMatchObject({ epochs: 3, balanced: true, batchSize: 32 });
    expect(() => validateTrainConfig({ data: 'd', out: 'o', recipe: 'fastest' }, 'cfg.json')).toThrow(/cfg\.json: invalid training config\n {2}recipe: /);
  });

  it('bf16 is a precision a run may ask for, on the CPU or CUDA (what the machine runs is checked when the run starts)', () => {
    expect(validateTrainConfig({ data: 'd', out: 'o', precision: 'bf16' }, 'cfg.json').precision).toBe('bf16');
    expect(validateTrainConfig({ data: 'd', out: 'o', precision: 'bf16', device: 'cuda:1' }, 'cfg.json').precision).toBe('bf16');
    expect(() => validateTrainConfig({ data: 'd', out: 'o', precision: 'fp16' }, 'cfg.json')).toThrow(/cfg\.json: invalid training config\n {2}precision: /);
  });

  it('upstream-code: every image, an 80/20 random split', async () => {
    const cfg = await resolveRunConfig(validateTrainConfig({ data: unpacked, out: 'x', recipe: 'upstream-code', seed: 1 }, 'test'));
    const data = await loadDataset(cfg);
    expect(data.report.perClass).toBeUndefined();
    expect(data.train.length + data.validation.length).toBe(48);
    expect(data.validation).toHaveLength(Math.round(48 * 0.2));
    // Not stratified: the held-out counts per class follow the draw, not the class sizes.
    const perClass = Array.from({ length: 8 }, (_, c) => data.validation.filter((s) => s.label === c).length);
    expect(new Set(perClass).size).toBeGreaterThan(1);
  });

  it("takes the label set from the weights' head", async () => {
    const cfg = await resolveRunConfig(
      validateTrainConfig({ data: unpacked, out: 'x', model: path.join(fixtures, 'config_encoder_only.json'), weights: path.join(fixtures, 'motivnet7.pth') }, 'test'),
    );
    expect(cfg.classes).toBe(7);
    const data = await loadDataset(cfg);
    expect(data.dropped['7 contempt (7-class label set)']).toBe(6);
  });
});
