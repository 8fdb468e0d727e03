//! Every name prefix and key that checkpoints and training-state files use, in one place.
//!
//! Weights carry the MotivNet reference's names: the encoder under [`ENCODER`], the head under
//! [`DECODER`]. A training-state file adds the optimizer's state under [`OPTIMIZER`] and the
//! trainer's under [`TRAINER`], and the caller's bookkeeping in the file's metadata under
//! [`TRAINER_EXTRA`].

/// The Sapiens encoder's parameters in a MotivNet checkpoint.
pub const ENCODER: &str = "pose_encoder.";
/// The ML-Decoder head's parameters in a MotivNet checkpoint.
pub const DECODER: &str = "decoder.decoder.";

/// AdamW's state: `optimizer.step`, `optimizer.exp_avg.<param>`, `optimizer.exp_avg_sq.<param>`.
pub const OPTIMIZER: &str = "optimizer.";
pub const OPTIMIZER_STEP: &str = "optimizer.step";
pub const OPTIMIZER_EXP_AVG: &str = "optimizer.exp_avg.";
pub const OPTIMIZER_EXP_AVG_SQ: &str = "optimizer.exp_avg_sq.";

/// The trainer's state: the dropout generator and the gradients accumulated mid-cycle.
pub const TRAINER: &str = "trainer.";
pub const TRAINER_RNG_SEED: &str = "trainer.rng.seed";
pub const TRAINER_RNG_POSITION: &str = "trainer.rng.position";
pub const TRAINER_ACCUMULATED_COUNT: &str = "trainer.accumulated_micro_batches";
pub const TRAINER_ACCUMULATED: &str = "trainer.accumulated.";
/// The metadata key of the caller's bookkeeping (JSON text) in a training-state file.
pub const TRAINER_EXTRA: &str = "motivnet.trainer";

/// Key prefixes of a training-state file that are not weights.
pub const STATE: [&str; 2] = [OPTIMIZER, TRAINER];
