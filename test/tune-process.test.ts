// tuneProcess() changes the whole process, so each case runs in a Node process of its own,
// started with no malloc settings in its environment unless the case sets one.
import { spawnSync } from 'node:child_process';
import { availableParallelism, cpus } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';

import type { ProcessTuningApplied } from '../src/index.js';

const library = pathToFileURL(path.resolve(__dirname, '../dist/index.js')).href;

/** Runs tuneProcess() in a fresh Node process, after starting `workersFirst` worker threads that each allocate. */
function tuneInFreshProcess(workersFirst: number, env: Record<string, string> = {}): ProcessTuningApplied {
  const script = `
    import { Worker } from 'node:worker_threads';
    const workers = Array.from({ length: ${workersFirst} }, () => new Worker(
      'const kept = []; for (let i = 0; i < 200; i++) kept.push(Buffer.alloc(64 << 10, i)); setTimeout(() => {}, 2000)',
      { eval: true }));
    await Promise.all(workers.map((w) => new Promise((resolve) => w.once('online', resolve))));
    await new Promise((resolve) => setTimeout(resolve, 300));
    const { tuneProcess } = await import(${JSON.stringify(library)});
    console.log(JSON.stringify(tuneProcess()));
    process.exit(0);`;
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('MALLOC_') && k !== 'GLIBC_TUNABLES'));
  const run = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 60_000, env: { ...clean, ...env } });
  expect(run.status, run.stderr).toBe(0);
  return JSON.parse(run.stdout.trim().split('\n').at(-1)!) as ProcessTuningApplied;
}

describe.runIf(process.platform === 'linux' && process.report.getReport().header.glibcVersionRuntime)('tuneProcess', () => {
  it('caps the arenas when called before the process starts its threads', () => {
    const applied = tuneInFreshProcess(0);
    expect(applied.malloc).toBe(true);
    // Two per core (the core counts cores as the Rust standard library does, which may see a
    // container's CPU quota where Node sees the host's cores); Node's own threads may have made
    // a few arenas already, which stay beside the cap.
    expect(applied.mallocArenaCap).toBeGreaterThanOrEqual(2);
    expect(applied.mallocArenaCap).toBeLessThanOrEqual(Math.max(8, 2 * cpus().length));
    expect(applied.sharpThreads).toBe(availableParallelism() > 1 ? 1 : 0);
    expect(applied.sharpCache).toBe(false);
  });

  it('says the cap is not in effect when threads made their arenas first', () => {
    const applied = tuneInFreshProcess(12);
    expect(applied.malloc).toBe(true);
    expect(applied.mallocArenaCap).toBeNull();
  });

  it("leaves the environment's own malloc settings alone", () => {
    const applied = tuneInFreshProcess(0, { MALLOC_ARENA_MAX: '2' });
    expect(applied).toMatchObject({ malloc: false, mallocArenaCap: null });
  });
});
