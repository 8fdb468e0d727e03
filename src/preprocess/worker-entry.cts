/**
 * The file piscina loads in each decoding thread: CommonJS, so that loading it never takes
 * Node's require(esm) path.
 *
 * piscina loads a worker file with `require()` first and falls back to `import()` only when
 * that throws. Our worker (worker.ts) is an ES module, and on Node 20.19 and later `require()`
 * of an ES module goes through require(esm), which once aborted a whole test process with a
 * native assertion (`ModuleWrap::CreateRequiredModuleFacade`) while a server started its
 * decoding threads: a crash no `try` can catch, and in a host's process it would take the host
 * down. This file is plain CommonJS for `require()`, and it loads the worker with `import()`,
 * the loader every Node version has used for ES modules.
 */
type Decode = (task: unknown) => Promise<unknown>;

let decode: Promise<Decode> | undefined;

async function decodeTask(task: unknown): Promise<unknown> {
  decode ??= import('./worker.js').then((worker) => worker.default as Decode);
  return (await decode)(task);
}

export = decodeTask;
