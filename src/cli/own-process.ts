/**
 * Imported first by the command line, before anything loads the native addon: settings for a
 * process that is ours alone. candle runs its element-wise ops on a pool of its own that spins
 * between ops, beside the core's compute threads: two pools on the same cores make a train step
 * 5-10% slower (docs/BENCHMARKS.md). candle reads its size from the environment once, so it is
 * set here, and only when this process was started as the `motivnet` command: a program that
 * imports the CLI's module (tests do) keeps its environment, and the library never writes it.
 */
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

function startedAsCli(): boolean {
  try {
    return process.argv[1] !== undefined && realpathSync(process.argv[1]) === realpathSync(fileURLToPath(new URL('../cli.js', import.meta.url)));
  } catch {
    return false;
  }
}

if (startedAsCli()) process.env.CANDLE_NUM_THREADS ??= '1';
