import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

import { cpuBf16Available, cpuInt8Available, cudaAvailable, MotivNet, presets, resolveModelConfig } from '../src/index.js';

describe('native core', () => {
  it('lists the presets and resolves them to the reference sizes', () => {
    expect(presets()).toEqual(['tiny', 'small', 'sapiens-0.3b', 'sapiens-0.6b', 'sapiens-1b', 'sapiens-2b']);
    const big = resolveModelConfig('sapiens-1b');
    expect(big.encoder).toMatchObject({ embedDim: 1536, depth: 40, heads: 24, inputHeight: 1024, inputWidth: 768 });
    expect(big.head).toMatchObject({ numClasses: 8, embedDim: 1152, layers: 2, heads: 8, feedforward: 2048, dropout: 0.1 });
    expect(resolveModelConfig('tiny').encoder).toMatchObject({ embedDim: 192, depth: 4, heads: 3, inputHeight: 256, inputWidth: 192 });
  });

  it('says what this build and CPU can do: CUDA as built, bf16 and int8 on the CPU as the CPU reports', async () => {
    if (!cudaAvailable()) {
      await expect(MotivNet.load({ model: 'tiny', device: 'cuda' })).rejects.toThrow(/has no CUDA support/);
    }
    // bf16 needs AVX-512 F, BW and DQ with AVX512_BF16 (its dot products; AMX tiles where the CPU
    // has them too); /proc/cpuinfo names them.
    const flags = readFileSync('/proc/cpuinfo', 'utf8').match(/^flags\s*:(.*)$/m)?.[1]?.split(/\s+/) ?? [];
    const cpuHasBf16 = ['avx512f', 'avx512bw', 'avx512dq', 'avx512_bf16'].every((f) => flags.includes(f));
    expect(cpuBf16Available()).toBe(cpuHasBf16 && process.env.MOTIVNET_BF16 !== 'off');
    // int8 needs AVX-512 F, BW and VL with VNNI (CPUID leaf 7: EBX bits 16, 30 and 31, ECX bit 11).
    const cpuHasVnni = ['avx512f', 'avx512bw', 'avx512vl', 'avx512_vnni'].every((f) => flags.includes(f));
    expect(cpuInt8Available()).toBe(cpuHasVnni && process.env.MOTIVNET_INT8 !== 'off');
  });

  it('reads a config file and names what is wrong in a bad one', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'motivnet-config-'));
    const good = path.join(dir, 'model.json');
    writeFileSync(good, JSON.stringify({
      encoder: { embedDim: 64, depth: 2, heads: 4, inputHeight: 128, inputWidth: 96 },
      head: { numClasses: 7, embedDim: 64 },
    }));
    const cfg = resolveModelConfig(good);
    expect(cfg.encoder.patchSize).toBe(16);
    expect(cfg.head).toMatchObject({ numClasses: 7, layers: 2, heads: 8 });

    const bad = path.join(dir, 'bad.json');
    writeFileSync(bad, JSON.stringify({ encoder: { embedDim: 64, depth: 2, heads: 5, inputHeight: 128, inputWidth: 96 } }));
    expect(() => resolveModelConfig(bad)).toThrow(/bad\.json.*embedDim \(64\) must be divisible by encoder\.heads \(5\)/);
    expect(() => resolveModelConfig('no-such-preset')).toThrow(/unknown model preset 'no-such-preset'/);
    expect(() => resolveModelConfig(path.join(dir, 'missing.json'))).toThrow(/missing\.json does not exist/);
  });
});
