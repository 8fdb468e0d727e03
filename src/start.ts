/**
 * `npm start`: shows that the native core is built and what it offers. The embedded demo
 * (synthetic faces, training and evaluation on CPU) takes this place once it lands.
 */
import { native } from './native.js';
import { presets, resolveModelConfig } from './config.js';

console.log('motivnet core loaded (CUDA in this build: %s)\n', native.cudaAvailable() ? 'yes' : 'no');
console.log('model presets:');
for (const name of presets()) {
  const { encoder: e, head: h } = resolveModelConfig(name);
  console.log(
    `  ${name.padEnd(13)} encoder D ${String(e.embedDim).padStart(4)}, ${String(e.depth).padStart(2)} layers, ` +
      `${String(e.heads).padStart(2)} heads, input ${e.inputHeight} x ${e.inputWidth}; head E ${h.embedDim}, ${h.numClasses} classes`,
  );
}
console.log('\nnative benchmark: npm run bench:native -- --model tiny --batch 8');
