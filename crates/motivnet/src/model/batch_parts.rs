//! A small model's batch in parts, one per compute thread, each part's ops serial: the eval
//! forward, and the encoder's training pass (forward and backward; the head, cheap and the one
//! user of dropout, runs on the whole batch, so its masks are drawn as before).
//!
//! Every op of a forward is threaded across the cores, and each costs a hand-off and a wait
//! for the slowest thread. For a small model those are a large share: a `tiny` batch of 8 ran
//! only 1.5 times as fast on two threads as on one, while two halves of the batch, one per
//! core with serial ops, ran each in the time of one core's half (docs/BENCHMARKS.md, "A batch
//! in parts"). Images are independent in eval mode (no batch statistics, no dropout), and every
//! op computes an image's values in the same order whatever the batch, so a part's results are
//! the whole batch's rows; in training each part's parameter gradients are summed, which
//! changes only the order of the sums. A large model's products keep both cores busy anyway, so
//! parts are only worth it below a size of encoder ([`Pass::largest_work`]).

use candle_core::{Tensor, Var};

use super::encoder_train::{self, EncoderTape};
use super::products::Products;
use super::MotivNet;
use crate::error::{Error, Result};
use crate::ops::dispatch;
use crate::runtime::cpu;

/// Which pass over a batch runs in parts: each has its own largest encoder worth splitting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// An eval forward.
    Eval,
    /// The encoder's training pass (forward and backward), with its products in f32 or bf16.
    Train(Products),
}

impl Pass {
    /// The largest encoder (tokens x width of a layer, per image) whose batches run in parts
    /// in this pass, from measurements on a 2-core machine (docs/BENCHMARKS.md, "A batch in
    /// parts"):
    /// - an eval forward up to eight times `tiny`'s 192 tokens of 192, the `small` preset's
    ///   768 tokens of 384: its batch of 2 ran 4% faster in f32 as one image per thread, 6% in
    ///   bf16 and 11% in int8, for 14 MB more at its f32 peak;
    /// - the training pass in f32 up to four times `tiny`'s, whose batch of 8 ran a twentieth
    ///   faster in parts; `small`'s ran no faster and its peak rose by a third, as each part of
    ///   one image keeps its attention probabilities;
    /// - the training pass in bf16 up to `small`'s, whose batch of 2 ran 6.5% faster as one
    ///   image per thread (608.5 against 650.7 ms on AVX512_BF16's dot products), its peak 614
    ///   to 682 MB: the bf16 attention recomputes its probabilities in backward, so a part keeps
    ///   none.
    pub const fn largest_work(self) -> usize {
        match self {
            Pass::Eval => 8 * 192 * 192,
            Pass::Train(Products::F32) => 4 * 192 * 192,
            Pass::Train(Products::Bf16) => 8 * 192 * 192,
        }
    }
}

impl MotivNet {
    /// How many parts `pass` over `images` (B, 3, H, W) runs in: one per compute thread and at
    /// most one per image, on the CPU, for an encoder of at most [`Pass::largest_work`];
    /// otherwise 1 (one threaded pass).
    pub fn batch_parts(&self, images: &Tensor, pass: Pass) -> usize {
        let (grid_h, grid_w) = self.config.encoder.grid();
        let work = grid_h * grid_w * self.config.encoder.embed_dim;
        let batch = images.dims().first().copied().unwrap_or(0);
        if !images.device().is_cpu() || work > pass.largest_work() || batch < 2 {
            return 1;
        }
        cpu::serial_parts_available().min(batch)
    }

    /// `forward`'s outputs for `images`, computed in [`MotivNet::batch_parts`] parts of an eval
    /// pass along the batch at once and joined along it (each output's first dim is the batch).
    /// `forward` must be an eval pass: nothing here carries a graph across the parts.
    pub(super) fn eval_in_parts<const N: usize>(
        &self,
        images: &Tensor,
        forward: impl Fn(&Tensor) -> Result<[Tensor; N]> + Sync,
    ) -> Result<[Tensor; N]> {
        self.eval_in_these_parts(self.batch_parts(images, Pass::Eval), images, forward)
    }

    /// [`MotivNet::eval_in_parts`] in `parts` parts (at most the part threads'), whatever the
    /// model and machine.
    fn eval_in_these_parts<const N: usize>(
        &self,
        parts: usize,
        images: &Tensor,
        forward: impl Fn(&Tensor) -> Result<[Tensor; N]> + Sync,
    ) -> Result<[Tensor; N]> {
        if parts < 2 {
            return forward(images);
        }
        let outputs = in_parts(images.chunk(parts, 0)?, |chunk| forward(&chunk));
        let outputs = outputs.into_iter().collect::<Result<Vec<[Tensor; N]>>>()?;
        let mut joined = Vec::with_capacity(N);
        for k in 0..N {
            let pieces: Vec<&Tensor> = outputs.iter().map(|o| &o[k]).collect();
            joined.push(Tensor::cat(&pieces, 0)?);
        }
        Ok(joined.try_into().unwrap_or_else(|_| unreachable!("one joined tensor per output")))
    }
}

/// The encoder's training pass over a batch in parts: each part's tape with its image count,
/// in batch order.
pub struct EncoderTapes(Vec<(usize, EncoderTape)>);

impl MotivNet {
    /// The encoder's training forward ([`encoder_train::forward`]) of `images` in
    /// [`MotivNet::batch_parts`] parts of a training pass: the whole batch's tokens as one leaf,
    /// and the parts' tapes.
    pub(super) fn encoder_train_in_parts(&self, images: &Tensor, products: Products) -> Result<(Var, EncoderTapes)> {
        self.encoder_train_in_these_parts(self.batch_parts(images, Pass::Train(products)), images, products)
    }

    fn encoder_train_in_these_parts(
        &self,
        parts: usize,
        images: &Tensor,
        products: Products,
    ) -> Result<(Var, EncoderTapes)> {
        if parts < 2 {
            let (tokens, tape) = encoder_train::forward(&self.encoder, images, products)?;
            return Ok((tokens, EncoderTapes(vec![(images.dim(0)?, tape)])));
        }
        let passes = in_parts(images.chunk(parts, 0)?, |chunk| -> Result<_> {
            let (tokens, tape) = encoder_train::forward(&self.encoder, &chunk, products)?;
            Ok((tokens, chunk.dim(0)?, tape))
        });
        let (mut tokens, mut tapes) = (Vec::with_capacity(parts), Vec::with_capacity(parts));
        for pass in passes {
            let (part_tokens, images, tape) = pass?;
            tokens.push(part_tokens.as_tensor().clone());
            tapes.push((images, tape));
        }
        let tokens: Vec<&Tensor> = tokens.iter().collect();
        Ok((Var::from_tensor(&Tensor::cat(&tokens, 0)?)?, EncoderTapes(tapes)))
    }
}

impl EncoderTapes {
    /// Every encoder parameter's gradient (as [`EncoderTape::backward`]) for the tokens'
    /// gradient `d_tokens` (B, N, D): each part's backward on its own thread, on its images'
    /// rows, and the parts' gradients summed.
    pub fn backward(self, d_tokens: &Tensor) -> Result<Vec<(Tensor, Tensor)>> {
        let mut parts = self.0;
        if parts.len() == 1 {
            let (_, tape) = parts.pop().expect("one part");
            return tape.backward(d_tokens);
        }
        let mut start = 0;
        let mut work = Vec::with_capacity(parts.len());
        for (images, tape) in parts {
            work.push((d_tokens.narrow(0, start, images)?, tape));
            start += images;
        }
        if start != d_tokens.dim(0)? {
            return Err(Error::Internal(format!(
                "encoder backward: token gradient for {} images, the parts hold {start}",
                d_tokens.dim(0)?
            )));
        }
        let mut grads = in_parts(work, |(d_part, tape)| tape.backward(&d_part)).into_iter();
        let mut total = grads.next().expect("two parts at least")?;
        for part in grads {
            let part = part?;
            if part.len() != total.len() {
                return Err(Error::Internal(format!(
                    "the parts' gradients differ in number: {} and {}",
                    total.len(),
                    part.len()
                )));
            }
            for ((param, sum), (other, grad)) in total.iter_mut().zip(part) {
                if param.id() != other.id() {
                    return Err(Error::Internal("the parts' gradients come in different orders".into()));
                }
                *sum = (&*sum + &grad)?;
            }
        }
        Ok(total)
    }
}

/// [`cpu::run_in_serial_parts`] with the caller's path choices in effect on every part's thread
/// (the part threads would otherwise run with their own).
fn in_parts<P: Send, T: Send>(parts: Vec<P>, work: impl Fn(P) -> T + Sync) -> Vec<T> {
    let choices = dispatch::choices_here();
    cpu::run_in_serial_parts(parts, |part| dispatch::with_choices(choices, || work(part)))
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::{Pass, Products};
    use crate::config::ModelConfig;
    use crate::model::{Mode, MotivNet};
    use crate::ops::dispatch;
    use crate::runtime::cpu::run_on_compute_threads;

    /// The `tiny` preset (seed 7) and a batch of random images of its size.
    fn tiny_model_and_images(batch: usize) -> (MotivNet, Tensor) {
        let config = ModelConfig::preset("tiny").unwrap();
        let enc = &config.encoder;
        let images = Tensor::randn(0f32, 1.0, (batch, 3, enc.input_height, enc.input_width), &Device::Cpu).unwrap();
        (MotivNet::new(&config, &Device::Cpu, 7).unwrap(), images)
    }

    /// The model's eval logits of `images` run in `parts` parts.
    fn logits_in_parts(model: &MotivNet, images: &Tensor, parts: usize) -> Tensor {
        let [logits] = model.eval_in_these_parts(parts, images, |p| Ok([model.forward(p, &mut Mode::Eval)?])).unwrap();
        logits
    }

    fn largest_difference(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    #[test]
    fn a_batch_in_parts_gives_the_whole_batchs_logits_and_maps() {
        // An odd batch: parts of 3 and 2 images.
        let (model, images) = tiny_model_and_images(5);
        run_on_compute_threads(|| {
            let logits = |parts| logits_in_parts(&model, &images, parts);
            let (whole, split) = (logits(1), logits(2));
            assert_eq!(split.dims(), whole.dims());
            let diff = largest_difference(&whole, &split);
            assert!(diff <= 1e-5, "logits in parts differ by {diff}");
            let explained = |parts| {
                model.eval_in_these_parts(parts, &images, |p| model.forward_explained(p).map(|(l, m)| [l, m])).unwrap()
            };
            let ([whole_logits, whole_maps], [split_logits, split_maps]) = (explained(1), explained(2));
            assert_eq!(split_maps.dims(), whole_maps.dims());
            assert!(largest_difference(&whole_logits, &split_logits) <= 1e-5);
            assert!(largest_difference(&whole_maps, &split_maps) <= 1e-5);
        });
    }

    /// int8's products in parts give the whole batch's int8 logits (each row is quantized on
    /// its own, wherever it runs), which are not f32's.
    #[test]
    fn a_batch_in_parts_gives_the_whole_batchs_int8_logits() {
        if !crate::kernels::int8::checkable_here("int8 in parts") {
            return;
        }
        let (model, images) = tiny_model_and_images(5);
        run_on_compute_threads(|| {
            let logits = |parts| logits_in_parts(&model, &images, parts);
            let (whole, split) = dispatch::int8_matmuls(|| (logits(1), logits(2)));
            let diff = largest_difference(&whole, &split);
            assert!(diff <= 1e-5, "int8 logits in parts differ by {diff}");
            assert!(largest_difference(&whole, &logits(1)) > 0.0, "the int8 logits are f32's: int8 did not run");
        });
    }

    #[test]
    fn each_part_runs_with_the_callers_path_choices() {
        let config = ModelConfig::preset("tiny").unwrap();
        let model = MotivNet::new(&config, &Device::Cpu, 7).unwrap();
        let images = Tensor::zeros((4, 1), candle_core::DType::F32, &Device::Cpu).unwrap();
        let seen = std::sync::Mutex::new(Vec::new());
        let record = |p: &Tensor| {
            seen.lock().unwrap().push(dispatch::choices_here());
            Ok([p.clone()])
        };
        run_on_compute_threads(|| {
            let plain = dispatch::choices_here();
            let composed = dispatch::composed(|| {
                dispatch::int8_matmuls(|| {
                    let [out] = model.eval_in_these_parts(2, &images, record).unwrap();
                    assert_eq!(out.dims(), &[4, 1]);
                    dispatch::choices_here()
                })
            });
            assert_ne!(composed, plain);
            let seen = seen.lock().unwrap();
            assert_eq!(seen.len(), 2);
            assert!(seen.iter().all(|c| *c == composed), "a part ran with its thread's own choices: {seen:?}");
        });
    }

    #[test]
    fn only_small_encoders_on_the_cpu_with_a_batch_split() {
        let tiny = MotivNet::new(&ModelConfig::preset("tiny").unwrap(), &Device::Cpu, 7).unwrap();
        let small = MotivNet::new(&ModelConfig::preset("small").unwrap(), &Device::Cpu, 7).unwrap();
        // `small`'s width at twice its tokens: past what an eval pass splits.
        let mut larger = ModelConfig::preset("small").unwrap();
        larger.encoder.input_height *= 2;
        let larger = MotivNet::new(&larger, &Device::Cpu, 7).unwrap();
        let batch = |b| Tensor::zeros((b, 1), candle_core::DType::F32, &Device::Cpu).unwrap();
        run_on_compute_threads(|| {
            let threads = crate::runtime::cpu::serial_parts_available();
            for pass in [Pass::Eval, Pass::Train(Products::F32), Pass::Train(Products::Bf16)] {
                assert_eq!(tiny.batch_parts(&batch(8), pass), threads.min(8));
                assert_eq!(tiny.batch_parts(&batch(1), pass), 1);
                assert_eq!(small.batch_parts(&batch(1), pass), 1);
            }
            // `small`'s eval forward and bf16 training pass split its batch; its f32 training
            // pass runs threaded.
            assert_eq!(small.batch_parts(&batch(8), Pass::Eval), threads.min(8));
            assert_eq!(small.batch_parts(&batch(8), Pass::Train(Products::Bf16)), threads.min(8));
            assert_eq!(small.batch_parts(&batch(8), Pass::Train(Products::F32)), 1);
            assert_eq!(larger.batch_parts(&batch(8), Pass::Eval), 1);
            assert_eq!(larger.batch_parts(&batch(8), Pass::Train(Products::Bf16)), 1);
        });
    }

    #[test]
    fn the_encoders_training_pass_in_parts_gives_the_whole_batchs_tokens_and_summed_gradients() {
        let model = MotivNet::new(&ModelConfig::preset("tiny").unwrap(), &Device::Cpu, 5).unwrap();
        let images = Tensor::randn(0f32, 1.0, (3, 3, 256, 192), &Device::Cpu).unwrap();
        let mut kinds = vec![Products::F32];
        if crate::kernels::amx::checkable_here("the bf16 training pass in parts") {
            kinds.push(Products::Bf16);
        }
        run_on_compute_threads(|| {
            for products in kinds {
                let (whole_tokens, whole_tapes) = model.encoder_train_in_these_parts(1, &images, products).unwrap();
                let (split_tokens, split_tapes) = model.encoder_train_in_these_parts(2, &images, products).unwrap();
                assert_eq!(split_tapes.0.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [2, 1]);
                let relative = |a: &Tensor, b: &Tensor| {
                    let max = |t: &Tensor| {
                        t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
                    };
                    largest_difference(a, b) / max(b).max(1e-6)
                };
                assert!(relative(split_tokens.as_tensor(), whole_tokens.as_tensor()) < 1e-5);
                let up = Tensor::randn(0f32, 1.0, whole_tokens.as_tensor().shape(), &Device::Cpu).unwrap();
                let (whole, split) = (whole_tapes.backward(&up).unwrap(), split_tapes.backward(&up).unwrap());
                assert_eq!(whole.len(), split.len());
                for ((p, want), (q, got)) in whole.iter().zip(&split) {
                    assert_eq!(p.id(), q.id());
                    let name = model.params.iter().find(|x| x.var.as_tensor().id() == p.id()).unwrap().name.clone();
                    let diff = relative(got, want);
                    assert!(
                        diff < 1e-5,
                        "{products:?}, {name}: the parts' summed gradient differs by {diff} of its largest value"
                    );
                }
            }
        });
    }
}
