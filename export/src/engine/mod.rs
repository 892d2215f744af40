//! The sparse ternary inference engine: runs an exported model's architecture (the steps the
//! training model was built from, [`supermask_core::arch`]) on plain `f32` slices, with each
//! masked layer's effective weight prepared once at load ([`crate::plan`]).
//!
//! A layer that keeps few entries (below [`SPARSE_BELOW`] of them, which trained signed
//! Supermasks do in all but their last layer) is a sparse ternary matrix: an output adds and
//! subtracts its kept inputs and multiplies once by the layer's magnitude; denser layers use a
//! GEMM. Both are `supermask_core::fused` kernels, the ones training uses, so the engine's
//! logits equal the training model's up to the order of float additions.
//!
//! Linear nets keep activations feature-major (`[features, block]`), so every kept weight adds
//! a contiguous run of samples at once; batches are split into blocks of `BLOCK` (32) or
//! `WIDE_BLOCK` (64) samples that run the whole net in parallel, and up to
//! `SAMPLE_BY_SAMPLE` (5) samples run one at a time (an architecture that is only linear
//! layers with ELUs between them, such as the FCN). Other architectures (Conv nets, ResNets)
//! run samples in parallel, each through the steps in order (`steps.rs`: reused buffers, and
//! each convolution's output in the layout the next step reads in place), in chunks of a few
//! samples per task whose features then run the trailing linear layers as one block of a
//! linear net, on the same thread; batch norms
//! (evaluation mode: running statistics) are one per-channel scale and shift each, computed as
//! the training model's fused path computes them ([`supermask_core::norm::fixed_affine`]).
//! The plan drops the entries that read channels no kept weight feeds (`plan.rs`).

use crate::{
    act::elu_in_place,
    grouped::MatvecScratch,
    plan::{self, Linear, Op},
    SsmModel,
};
use anyhow::{ensure, Result};
use rayon::prelude::*;
use supermask_core::fused::{transpose_block, Effective};

pub use crate::plan::SPARSE_BELOW;

/// Linear-net batches up to this size run sample by sample on the calling thread. Measured on
/// the generated Table 1 FCN (Xeon, 2 threads, best of five): 3.1 us a sample, against one
/// 32-sample block in 18.6-18.9 us for 3 to 8 samples; 5 samples took 15.4 us, 6 18.7 us.
const SAMPLE_BY_SAMPLE: usize = 5;

/// Samples per block of a linear net (feature-major activations, each kept input one add of
/// `BLOCK` values: two 16-wide vector adds with AVX-512). Measured on the generated Table 1
/// FCN at batch 256 and 2 threads (Xeon, AVX-512, best of five interleaved runs): blocks of
/// 16, 32 and 64 samples took 114, 94 and 88 us; in another set 32, 64 and 128 took 96, 92 and
/// 95 us. At batch 64, 32-sample blocks (two per thread) took 30 us and 64-sample blocks (one
/// thread busy) 41 us.
const BLOCK: usize = 32;

/// The block size once every thread gets at least one block of it.
const WIDE_BLOCK: usize = 64;

/// The block size for inputs so wide that a [`BLOCK`] of them exceeds [`NARROW_BLOCK_ABOVE`]
/// values: each kept weight reads a row of the block's inputs at random, so the rows should
/// stay in L2. Measured on the generated Conv2's linear tail (16,384 inputs, 2% kept; Zen 4,
/// 2 threads, batch 32, best of four alternating runs): blocks of 8, 16 and 32 took 0.88,
/// 0.90 and 1.07 ms for the whole forward.
const NARROW_BLOCK: usize = 8;

/// See [`NARROW_BLOCK`]: 512 KiB of inputs (a Zen 3 core's L2).
const NARROW_BLOCK_ABOVE: usize = 128 * 1024;

/// How the engine runs a batch.
enum Net {
    /// Only linear layers with ELU between them (after an optional flatten): blocks of
    /// samples with feature-major activations.
    Linear(Vec<Linear>),
    /// Anything else: each sample through the plan's steps, samples in parallel; when the
    /// plan ends in linear layers, they run after the steps of a chunk of samples over its
    /// features as a linear net does (each kept weight then adds a block of samples at once,
    /// where sample by sample it added one value: the Conv2's first linear layer took a fifth
    /// of a batch of 32 at 2% kept).
    Steps {
        front: Vec<Op>,
        /// The trailing linear layers and their number of inputs.
        tail: Option<(Vec<Linear>, usize)>,
    },
}

/// An exported model prepared for inference.
pub struct Engine {
    net: Net,
    input: Vec<usize>,
    alpha: f32,
    classes: usize,
    input_len: usize,
}

impl Engine {
    /// Prepares `m` from its architecture; fails when the file's layers are not the
    /// architecture's (naming the layer) or the steps do not chain.
    pub fn new(m: &SsmModel) -> Result<Self> {
        let arch = plan::architecture(m)?;
        let (mut ops, classes) = plan::build(m, &arch)?;
        if matches!(ops.first(), Some(Op::Flatten)) {
            ops.remove(0);
        }
        let net = match ops.as_mut_slice() {
            [Op::Linears(layers)] => Net::Linear(std::mem::take(layers)),
            [.., Op::Linears(_)] => {
                let Some(Op::Linears(layers)) = ops.pop() else {
                    unreachable!("the plan ends in linear layers")
                };
                let inputs = layers.first().map_or(0, |l| l.inputs);
                Net::Steps {
                    front: ops,
                    tail: Some((layers, inputs)),
                }
            }
            _ => Net::Steps {
                front: ops,
                tail: None,
            },
        };
        Ok(Self {
            net,
            input_len: arch.input_len(),
            input: arch.input,
            alpha: arch.elu_alpha as f32,
            classes,
        })
    }

    /// Number of classes (logits per sample).
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Values per input sample (784 for the FCN, 3 x 32 x 32 for the Conv nets and ResNets).
    pub fn input_len(&self) -> usize {
        self.input_len
    }

    /// Logits `[batch, classes]` for a batch `x` of `batch` samples (row-major, as the
    /// datasets store them), using all of rayon's threads.
    pub fn forward(&self, x: &[f32], batch: usize) -> Result<Vec<f32>> {
        ensure!(
            x.len() == batch * self.input_len,
            "input of {} values is not {batch} samples of {}",
            x.len(),
            self.input_len
        );
        let mut out = vec![0.0f32; batch * self.classes];
        if batch == 0 {
            return Ok(out);
        }
        match &self.net {
            Net::Linear(layers) => self.linears(layers, x, self.input_len, &mut out),
            Net::Steps { front, tail: None } => self.steps(front, x, &mut out)?,
            Net::Steps {
                front,
                tail: Some((layers, inputs)),
            } => self.steps_then_tail(front, layers, *inputs, x, &mut out)?,
        }
        Ok(out)
    }

    /// Chunks of samples in parallel, each through `front` one sample at a time and then, as
    /// one block, through the linear `layers` (of `inputs` inputs), on the thread that ran its
    /// steps: the features stay in that core's cache, and the batch takes one parallel section
    /// (the caller working in it) instead of two.
    fn steps_then_tail(
        &self,
        front: &[Op],
        layers: &[Linear],
        inputs: usize,
        x: &[f32],
        out: &mut [f32],
    ) -> Result<()> {
        thread_local! {
            /// Per thread: a chunk's features (every value written before it is read).
            static FEATURES: std::cell::RefCell<Vec<f32>> =
                const { std::cell::RefCell::new(Vec::new()) };
        }
        let narrow = inputs * BLOCK > NARROW_BLOCK_ABOVE;
        let block = if narrow { NARROW_BLOCK } else { BLOCK };
        let batch = out.len() / self.classes;
        // Chunks of a block at most, and at least two a thread (so that a helper thread that
        // starts late leaves the others less to wait for).
        let chunk = block.min(batch.div_ceil(2 * rayon::current_num_threads()));
        let failed = std::sync::Mutex::new(None);
        let size = (chunk * self.input_len, chunk * self.classes);
        in_parallel(x, out, size, |x, out| {
            let result = FEATURES.with_borrow_mut(|features| -> Result<()> {
                let n = out.len() / self.classes;
                features.truncate(n * inputs);
                features.resize(n * inputs, 0.0);
                for (x, f) in x
                    .chunks_exact(self.input_len)
                    .zip(features.chunks_exact_mut(inputs))
                {
                    let z = self.run(front, x, &self.input)?;
                    ensure!(
                        z.v.len() == inputs,
                        "the plan's steps give {} values a sample where the linear layers \
                         take {inputs}",
                        z.v.len()
                    );
                    f.copy_from_slice(&z.v);
                    steps::recycle(z.v);
                }
                if n <= SAMPLE_BY_SAMPLE {
                    for (f, o) in features
                        .chunks_exact(inputs)
                        .zip(out.chunks_exact_mut(self.classes))
                    {
                        self.sample(layers, f, o);
                    }
                } else if narrow {
                    self.block::<NARROW_BLOCK>(layers, inputs, features, out);
                } else {
                    self.block::<BLOCK>(layers, inputs, features, out);
                }
                Ok(())
            });
            if let Err(e) = result {
                failed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert(e);
            }
        });
        match failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Each sample of `x` through `ops` into its row of `out` (whose rows have the plan's
    /// output size), samples in parallel.
    fn steps(&self, ops: &[Op], x: &[f32], out: &mut [f32]) -> Result<()> {
        let n = x.len() / self.input_len;
        if n == 0 {
            return Ok(());
        }
        out.par_chunks_mut(out.len() / n)
            .zip(x.par_chunks(self.input_len))
            .try_for_each(|(out, x)| {
                let z = self.run(ops, x, &self.input)?;
                ensure!(
                    z.v.len() == out.len(),
                    "the plan's steps give {} values a sample where {} are expected",
                    z.v.len(),
                    out.len()
                );
                out.copy_from_slice(&z.v);
                steps::recycle(z.v);
                Ok(())
            })
    }

    /// The samples `x` (rows of `inputs`) through linear layers into their logits `out`.
    fn linears(&self, layers: &[Linear], x: &[f32], inputs: usize, out: &mut [f32]) {
        let batch = out.len() / self.classes;
        if batch <= SAMPLE_BY_SAMPLE {
            // A few samples: one at a time on this thread (a task hand-off or a block costs
            // more than the work).
            for (out, x) in out
                .chunks_exact_mut(self.classes)
                .zip(x.chunks_exact(inputs))
            {
                self.sample(layers, x, out);
            }
        } else if batch >= WIDE_BLOCK * rayon::current_num_threads() {
            let size = (WIDE_BLOCK * inputs, WIDE_BLOCK * self.classes);
            in_parallel(x, out, size, |x, out| {
                self.block::<WIDE_BLOCK>(layers, inputs, x, out)
            });
        } else if inputs * BLOCK > NARROW_BLOCK_ABOVE {
            let size = (NARROW_BLOCK * inputs, NARROW_BLOCK * self.classes);
            in_parallel(x, out, size, |x, out| {
                self.block::<NARROW_BLOCK>(layers, inputs, x, out)
            });
        } else {
            let size = (BLOCK * inputs, BLOCK * self.classes);
            in_parallel(x, out, size, |x, out| {
                self.block::<BLOCK>(layers, inputs, x, out)
            });
        }
    }

    /// A block of up to `N` samples (row-major `x` of `inputs` a sample, `out`) through linear
    /// layers, with feature-major `[f32; N]` activations: each kept weight is `N / 16` vector
    /// adds. A partial block is padded with zero samples.
    fn block<const N: usize>(&self, layers: &[Linear], inputs: usize, x: &[f32], out: &mut [f32]) {
        thread_local! {
            /// Per thread, reused across blocks and calls: two activation buffers (each with
            /// a zero row after the values, the padding slot of grouped layers) and a padded
            /// copy of a partial block's input.
            static SCRATCH: std::cell::RefCell<[Vec<f32>; 3]> =
                const { std::cell::RefCell::new([Vec::new(), Vec::new(), Vec::new()]) };
        }
        let nb = x.len() / inputs;
        SCRATCH.with_borrow_mut(|[a, b, partial]| {
            let x = if nb == N {
                x
            } else {
                partial.clear();
                partial.extend_from_slice(x);
                partial.resize(N * inputs, 0.0);
                partial
            };
            let mut widest = inputs;
            for l in layers {
                widest = widest.max(l.outputs);
            }
            // `widest` feature rows of N samples and the zero row after them.
            let (mut h, mut y) = (
                aligned_rows::<N>(a, widest + 1),
                aligned_rows::<N>(b, widest + 1),
            );
            transpose_block(x, inputs, h);
            h[inputs] = [0.0; N];
            let mut width = inputs;
            let last = layers.len() - 1;
            for (i, l) in layers.iter().enumerate() {
                let (hi, yo) = (&h[..=width], &mut y[..l.outputs]);
                match (&l.grouped, &l.eff) {
                    (Some(g), _) => g.matmul_block(hi, yo),
                    (None, Effective::Sparse(t)) => t.matmul_block(hi, yo),
                    (None, dense) => {
                        dense.matmul(hi[..width].as_flattened(), N, yo.as_flattened_mut())
                    }
                }
                if i < last {
                    elu_in_place(yo.as_flattened_mut(), self.alpha);
                }
                y[l.outputs] = [0.0; N];
                width = l.outputs;
                std::mem::swap(&mut h, &mut y);
            }
            for (c, row) in h[..width].iter().enumerate() {
                for (b, v) in row.iter().take(nb).enumerate() {
                    out[b * self.classes + c] = *v;
                }
            }
        })
    }

    /// One sample `x` through linear layers into `out`, ELU between them.
    fn sample(&self, layers: &[Linear], x: &[f32], out: &mut [f32]) {
        thread_local! {
            /// Per thread: two activation buffers and the grouped kernels' scratch.
            static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>, Option<MatvecScratch>)> =
                const { std::cell::RefCell::new((Vec::new(), Vec::new(), None)) };
        }
        SCRATCH.with_borrow_mut(|(a, b, scratch)| {
            let scratch = scratch.get_or_insert_with(MatvecScratch::default);
            let (mut h, mut y) = (a, b);
            h.clear();
            h.extend_from_slice(x);
            let last = layers.len() - 1;
            for (i, l) in layers.iter().enumerate() {
                debug_assert_eq!(h.len(), l.inputs);
                y.clear();
                y.resize(l.outputs, 0.0);
                match &l.grouped {
                    Some(g) => g.matvec(h, scratch, y),
                    None => l.eff.matmul(h, 1, y),
                }
                if i < last {
                    elu_in_place(y, self.alpha);
                }
                std::mem::swap(&mut h, &mut y);
            }
            out.copy_from_slice(&h[..out.len()]);
        });
    }
}

/// `f(x, out)` for every pair of chunks of `x` and `out` (`size`: their lengths), in
/// parallel on rayon's threads.
///
/// A caller outside rayon's pool would hand the whole job to the pool and sleep until it is
/// done: an empty `install` from outside costs about 5 us on the 2-core Xeon (the caller's
/// wake-up). `infer` and the benches call from inside (`supermask_train::configure_threads`
/// makes the calling thread rayon's first worker); a library caller that did not set the pool
/// up that way calls from outside. Here such a caller works too: it
/// and one helper task per other pool thread take chunks from a shared counter until none
/// are left, and the caller then spins (it would only sleep) until the chunks the helpers
/// took are done. Inside the pool it is rayon's own parallel loop.
fn in_parallel<F>(x: &[f32], out: &mut [f32], size: (usize, usize), f: F)
where
    F: Fn(&[f32], &mut [f32]) + Sync,
{
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    let (xs, os) = size;
    let chunks = out.len().div_ceil(os);
    let helpers = rayon::current_num_threads().min(chunks).saturating_sub(1);
    if rayon::current_thread_index().is_some() || helpers == 0 {
        out.par_chunks_mut(os)
            .zip(x.par_chunks(xs))
            .for_each(|(out, x)| f(x, out));
        return;
    }
    // Each chunk pair once: whoever claims index `i` takes pair `i` out of its slot.
    type Task<'a> = Mutex<Option<(&'a [f32], &'a mut [f32])>>;
    let tasks: Vec<Task> = x
        .chunks(xs)
        .zip(out.chunks_mut(os))
        .map(|pair| Mutex::new(Some(pair)))
        .collect();
    let (next, done) = (AtomicUsize::new(0), AtomicUsize::new(0));
    /// Counts a chunk as done when dropped, so that a panicking `f` cannot leave the caller
    /// spinning (the panic then surfaces at the scope's end).
    struct Done<'a>(&'a AtomicUsize);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::Release);
        }
    }
    let work = || {
        while let Some(task) = tasks.get(next.fetch_add(1, Ordering::Relaxed)) {
            let _done = Done(&done);
            let pair = task.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some((x, out)) = pair {
                f(x, out);
            }
        }
    };
    rayon::in_place_scope(|scope| {
        for _ in 0..helpers {
            scope.spawn(|_| work());
        }
        work();
        let mut spins = 0u32;
        while done.load(Ordering::Acquire) < tasks.len() {
            if spins < 100_000 {
                std::hint::spin_loop();
                spins += 1;
            } else {
                std::thread::yield_now();
            }
        }
    });
}

/// `rows` rows of `N` values in `v` (grown as needed), starting on a 64-byte boundary.
///
/// The kernels load whole rows as 16-value vectors; a row that straddles cache lines costs two
/// line accesses per load (measured in `docs/results/export.md`, fourth session). The
/// allocator's alignment is not to be relied on (a `Vec<f32>` is only promised 4 bytes), so
/// the rows start at the first aligned element.
fn aligned_rows<const N: usize>(v: &mut Vec<f32>, rows: usize) -> &mut [[f32; N]] {
    const LANES: usize = 64 / std::mem::size_of::<f32>();
    let len = rows * N + LANES - 1;
    if v.len() < len {
        v.resize(len, 0.0);
    }
    let start = v.as_ptr().align_offset(64).min(LANES - 1);
    &mut v[start..start + rows * N].as_chunks_mut::<N>().0[..rows]
}

mod steps;
#[cfg(test)]
mod tests;
