/**
 * scripts/convert_torchscript.py: a TorchScript archive to a safetensors state dict the core
 * reads. It needs PyTorch, which `npm test` does not: without the reference environment
 * (scripts/reference/setup) the test is skipped and says what went unchecked.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

import { readSafetensors } from './helpers/safetensors.js';
import { tempDir } from './helpers/files.js';

const root = path.resolve(__dirname, '..');
const python = path.join(root, 'scripts/reference/.venv/bin/python');
const fixtures = path.join(root, 'crates/motivnet/tests/fixtures');
const hasTorch = existsSync(python);
if (!hasTorch) console.warn('convert_torchscript.py not checked: no PyTorch here (run scripts/reference/setup to include it)');

describe('convert_torchscript.py', () => {
  it.skipIf(!hasTorch)('writes the archive\'s tensors under backbone.*, as a Sapiens backbone', () => {
    const out = path.join(tempDir('torchscript'), 'converted.safetensors');
    const r = spawnSync(python, [path.join(root, 'scripts/convert_torchscript.py'), path.join(fixtures, 'torchscript.pt'), out], { encoding: 'utf8', timeout: 120_000 });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/wrote 2 tensors/);
    const got = readSafetensors(out);
    const want = readSafetensors(path.join(fixtures, 'torchscript_expected.safetensors'));
    expect(Object.keys(got).sort()).toEqual(['backbone.bias', 'backbone.weight']);
    for (const key of ['weight', 'bias']) expect(Array.from(got[`backbone.${key}`]!.data as Float32Array)).toEqual(Array.from(want[key]!.data as Float32Array));
  });
});
