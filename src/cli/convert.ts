/** `motivnet convert`: a checkpoint to safetensors with the reference's names. */
import { Command } from 'commander';

import { nativeCall } from '../errors.js';
import { native } from '../native.js';

export function convertCommand(program: Command): void {
  program
    .command('convert')
    .description('convert a .pth checkpoint (MotivNet or Sapiens layout) to safetensors with the reference names')
    .requiredOption('--input <file>', '.pth or .safetensors file')
    .requiredOption('--output <file>', 'the .safetensors file to write')
    .addHelpText('after', '\nTorchScript and torch.export archives need PyTorch: use scripts/convert_torchscript.py first.')
    .action(async (opts) => {
      const r = await nativeCall(() => native.convertWeights(opts.input, opts.output));
      console.log(`wrote ${r.written} tensors to ${opts.output}${r.renamed.length ? `, ${r.renamed.length} renamed` : ''}${r.ignored.length ? `, ${r.ignored.length} left out (${r.ignored.slice(0, 5).join(', ')}${r.ignored.length > 5 ? ', ...' : ''})` : ''}`);
    });
}
