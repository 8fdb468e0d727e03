/**
 * Imported first by the command line, before anything loads the native addon: settings for a
 * process that is ours alone. candle runs its element-wise ops on a pool of its own that spins
 * between ops, beside the core's compute threads: two pools on the same cores make a train step
 * 5-10% slower (docs/BENCHMARKS.md). candle reads its size from the environment once, so it is
 * set here, and only here (the library never writes the environment of its host).
 */
process.env.CANDLE_NUM_THREADS ??= '1';
