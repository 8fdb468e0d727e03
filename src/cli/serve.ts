/** `motivnet serve`: the HTTP server, with limits, batching and a graceful stop. */
import path from 'node:path';

import { Command, Option } from 'commander';

import { addFaceDetectionOptions, faceDetectionOptions, int, num, precisionOption } from './options.js';

/**
 * What responses call the model: a preset's name, or a config file's base name (`configs/
 * demo-model.json` -> `demo-model`). Responses never carry a path of the serving machine.
 */
export function publicModelName(spec: string): string {
  return path.basename(spec).replace(/\.json$/i, '');
}

export function serveCommand(program: Command): void {
  addFaceDetectionOptions(program.command('serve'))
    .description('serve predictions over HTTP: POST /v1/predict, GET /v1/model, /healthz, /readyz, /metrics, /openapi.json')
    .requiredOption('--weights <file>', 'weights (.safetensors or .pth)')
    .option('--model <preset|file>', 'model preset or JSON config', 'tiny')
    .option('--model-name <name>', "the model's name in responses (default: the preset, or the config file's name without folder or extension)")
    .option('--port <p>', 'port (0: any free port)', int('--port'), 8080)
    .option('--host <h>', 'address to listen on (0.0.0.0 for every interface)', '127.0.0.1')
    .option('--device <device>', 'cpu, cuda or cuda:N', 'cpu')
    .addOption(precisionOption())
    .addOption(new Option('--resize <geometry>', 'default geometry: letterbox (the reference inference) or stretch').choices(['letterbox', 'stretch']).default('letterbox'))
    .addOption(new Option('--faces <mode>', 'default of a request without ?faces=: whole (the image as it is, the reference inference) or detect (every face, each classified)').choices(['whole', 'detect']).default('whole'))
    .option('--max-batch <n>', 'most images per model call', int('--max-batch'), 8)
    .option('--max-wait-ms <ms>', 'longest an image waits for its batch to fill', int('--max-wait-ms'), 5)
    .option('--max-queue <n>', 'most requests held at once; beyond it 429 with Retry-After', int('--max-queue'), 256)
    .option('--max-body-mb <mb>', 'largest request body', num('--max-body-mb'), 10)
    .option('--max-connections <n>', 'most open connections; beyond them new ones are closed', int('--max-connections'), 1024)
    .option('--max-images <n>', 'most images in one multipart request', int('--max-images'), 16)
    .option('--api-key <key>', 'require Authorization: Bearer KEY (default: $MOTIVNET_API_KEY; prefer it, a flag shows in the process list)')
    .option('--max-pixels <n>', 'largest image, in pixels', int('--max-pixels'), 40_000_000)
    .option('--max-aspect-ratio <r>', "refuse images whose longer side is more than r times the shorter (413)", num('--max-aspect-ratio'), 20)
    .option('--timeout-ms <ms>', 'longest a prediction may take, queueing included; then 503', int('--timeout-ms'), 30_000)
    .option('--threads <n>', 'decoding workers (default: the number of cores)', int('--threads'))
    .option('--fast-decode', "shrink large JPEGs while decoding: faster and leaner, but not the reference's pixels")
    .option('--log', 'log every request (JSON lines on stdout)')
    .action(async (opts) => {
      const { EmotionClassifier } = await import('../serve/classifier.js');
      const { createServer } = await import('../serve/server.js');
      for (const [flag, v] of [['--max-batch', opts.maxBatch], ['--max-queue', opts.maxQueue], ['--max-connections', opts.maxConnections], ['--max-images', opts.maxImages], ['--timeout-ms', opts.timeoutMs], ['--threads', opts.threads ?? 1]] as const) {
        if (v < 1) throw new Error(`${flag} must be at least 1, got ${v}`);
      }
      if (!(opts.maxBodyMb > 0)) throw new Error(`--max-body-mb must be positive, got ${opts.maxBodyMb}`);
      const classifier = await EmotionClassifier.create({
        model: { model: opts.model, weights: opts.weights, device: opts.device, precision: opts.precision },
        maxBatchSize: opts.maxBatch,
        maxWaitMs: opts.maxWaitMs,
        maxQueue: opts.maxQueue,
        maxPixels: opts.maxPixels,
        maxAspectRatio: opts.maxAspectRatio,
        decodeThreads: opts.threads,
        geometry: opts.resize,
        faces: opts.faces,
        detection: faceDetectionOptions(opts),
        fastDecode: Boolean(opts.fastDecode),
      });
      // A refused option (an API key too short, ...) must not leave the decoding workers running.
      const app = await createServer(classifier, {
        modelName: opts.modelName ?? publicModelName(String(opts.model)),
        bodyLimit: Math.round(opts.maxBodyMb * 1024 * 1024),
        maxConnections: opts.maxConnections,
        maxImages: opts.maxImages,
        apiKey: opts.apiKey ?? (process.env.MOTIVNET_API_KEY || undefined),
        timeoutMs: opts.timeoutMs,
        logger: Boolean(opts.log),
      }).catch(async (err: unknown) => {
        await classifier.close();
        throw err;
      });
      let stopping: Promise<void> | undefined;
      const stop = (sig: NodeJS.Signals) => {
        if (stopping) {
          console.error(`${sig} again: exiting without waiting`);
          process.exit(130);
        }
        console.error(`${sig}: finishing the requests in flight, then exiting`);
        stopping = (async () => {
          await app.close();
          await classifier.close();
        })();
      };
      process.on('SIGTERM', stop);
      process.on('SIGINT', stop);
      try {
        const url = await app.listen({ port: opts.port, host: opts.host });
        const n = classifier.model.parameterCounts().total;
        const size = n >= 1e6 ? `${(n / 1e6).toFixed(1)} M` : n.toLocaleString('en-US');
        console.error(`motivnet serve: ${opts.model} (${size} parameters) listening on ${url}`);
      } catch (err) {
        await classifier.close();
        throw err;
      }
      await new Promise<void>((resolve) => app.server.once('close', () => resolve()));
      await stopping;
    });
}
