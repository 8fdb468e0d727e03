/**
 * A good guest in someone else's Node process: model calls leave libuv's pool to the host,
 * and loading or using the library changes no process-wide setting.
 */
import { pbkdf2 } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';

import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

// Before the library loads: what the host had.
const hostEnv = process.env.CANDLE_NUM_THREADS;
const hostSharpThreads = sharp.concurrency();

const { MotivNet } = await import('../src/model.js');
const { PreprocessPool } = await import('../src/preprocess/pool.js');
const { solid } = await import('./helpers/files.js');

/** One round trip of the host's own libuv work: a file read and a key derivation. */
async function hostRoundTrip(): Promise<number> {
  const started = performance.now();
  await readFile(fileURLToPath(import.meta.url));
  await new Promise<void>((resolve, reject) => pbkdf2('secret', 'salt', 1000, 32, 'sha256', (err) => (err ? reject(err) : resolve())));
  return performance.now() - started;
}

describe('a guest in the host process', () => {
  let model: InstanceType<typeof MotivNet>;
  beforeAll(async () => {
    model = await MotivNet.load({ model: 'small', seed: 0 });
  });
  afterAll(() => model.dispose());

  it("keeps the host's fs and crypto under 50 ms while 8 predicts run", async () => {
    const { inputWidth, inputHeight } = model.config.encoder;
    const image = { data: new Uint8Array(inputWidth * inputHeight * 3).fill(90), width: inputWidth, height: inputHeight };
    await model.predict(image); // first-call costs out of the way
    await hostRoundTrip();

    let running = 8;
    const predicts = Array.from({ length: 8 }, () => model.predict(image).finally(() => running--));
    const latencies: number[] = [];
    // Round trips while at least half the predicts are still waiting or computing.
    while (running > 4) latencies.push(await hostRoundTrip());
    await Promise.all(predicts);

    expect(latencies.length).toBeGreaterThanOrEqual(3);
    expect(Math.max(...latencies)).toBeLessThan(50);
  });

  it('changes no process-wide setting: environment, libvips threads', async () => {
    const pool = new PreprocessPool({ threads: 2 });
    try {
      const raw = solid(40, 30, [10, 200, 30]);
      const png = await sharp(raw, { raw: { width: 40, height: 30, channels: 3 } }).png().toBuffer();
      const decoded = await pool.decode({ bytes: png, minWidth: 1, minHeight: 1, maxPixels: 1e6 });
      expect(decoded.ok).toBe(true);
    } finally {
      await pool.destroy();
    }
    expect(process.env.CANDLE_NUM_THREADS).toBe(hostEnv);
    expect(sharp.concurrency()).toBe(hostSharpThreads);
  });
});
