#!/usr/bin/env node
/**
 * The `motivnet` command line: train, eval, predict, convert, serve, synth, one module each in
 * src/cli/. Flags are validated at the edge, with the same schema as config files; the work
 * is the library's.
 */
import './cli/own-process.js'; // first: sets the environment before the addon loads
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

import { Command } from 'commander';

import { convertCommand } from './cli/convert.js';
import { evalCommand } from './cli/eval.js';
import { predictCommand } from './cli/predict.js';
import { serveCommand } from './cli/serve.js';
import { synthCommand } from './cli/synth.js';
import { trainCommand } from './cli/train.js';
import { TrainingStopped } from './train/trainer.js';
import { tuneProcess } from './tune-process.js';

export async function main(argv: string[]): Promise<void> {
  const program = new Command('motivnet')
    .description('MotivNet facial emotion recognition: train, evaluate, predict, serve, convert weights')
    .showHelpAfterError()
    .configureOutput({ outputError: (str, write) => write(str) });
  trainCommand(program);
  evalCommand(program);
  predictCommand(program);
  convertCommand(program);
  serveCommand(program);
  synthCommand(program);
  try {
    await program.parseAsync(argv);
  } catch (err) {
    const e = err as Error;
    console.error(e instanceof TrainingStopped ? e.message : `motivnet: ${e.message}`);
    process.exitCode = e instanceof TrainingStopped ? 3 : 1;
  }
}

// Run when executed (also through the npm bin link), not when imported by tests.
const invoked = process.argv[1] ? realpathSync(process.argv[1]) : '';
if (invoked === realpathSync(fileURLToPath(import.meta.url))) {
  // The command line's process is its own: the allocator and libvips settings that suit it.
  tuneProcess();
  await main(process.argv);
}
