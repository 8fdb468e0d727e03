/** `motivnet synth`: the procedural face data set of the embedded demo. */
import { Command } from 'commander';

import { Progress } from '../train/progress.js';
import { int, num } from './options.js';

export function synthCommand(program: Command): void {
  program
    .command('synth')
    .description('generate the procedural face data set (AffectNet layout: images/, training.csv, validation.csv)')
    .requiredOption('--out <dir>', 'where to write it')
    .option('--seed <s>', 'seed: the same seed writes the same bytes', int('--seed'), 0)
    .option('--train-per-class <n>', 'training images of the rarest class (contempt); the others follow AffectNet\'s ratios', int('--train-per-class'), 120)
    .option('--test-per-class <m>', 'test images per class', int('--test-per-class'), 40)
    .option('--size <WxH>', 'image size in pixels', '96x96')
    .option('--imbalance <x>', 'exponent on AffectNet\'s class ratios: 1 = its proportions, 0.5 = their square root, 0 = balanced', num('--imbalance'), 1)
    .action(async (opts) => {
      const m = /^(\d+)x(\d+)$/.exec(opts.size);
      if (!m) throw new Error(`--size must look like 96x96, got '${opts.size}'`);
      const { synthesize, plannedTotal } = await import('../synth/generate.js');
      const options = { out: opts.out, seed: opts.seed, trainPerClass: opts.trainPerClass, testPerClass: opts.testPerClass, width: Number(m[1]), height: Number(m[2]), imbalance: opts.imbalance };
      const progress = new Progress({ label: 'synth', total: plannedTotal(options) });
      const r = await synthesize(options, (done) => progress.update(done, done, {}));
      progress.finish();
      console.log(`wrote ${r.train.reduce((a, b) => a + b, 0)} training images (${r.train.join(', ')} per class) and ${r.test.reduce((a, b) => a + b, 0)} test images to ${opts.out}`);
    });
}
