//! The sparse ternary inference engine: runs an exported FCN or Conv net on plain `f32`
//! slices, with each masked layer's effective weight prepared once at load.
//!
//! A layer that keeps few entries (below [`SPARSE_BELOW`] of them, which trained signed
//! Supermasks do in all but their last layer) is a sparse ternary matrix: an output adds and
//! subtracts its kept inputs and multiplies once by the layer's magnitude; denser layers use a
//! GEMM. Both are `supermask_core::fused` kernels, the ones training uses, so the engine's
//! logits equal the training model's up to the order of float additions.
//!
//! Linear nets keep activations feature-major (`[features, block]`), so every kept weight adds
//! a contiguous run of samples at once; batches are split into blocks of 16 samples that run
//! the whole net in parallel. Conv nets run samples in parallel.

use crate::{LayerWeights, SsmLayer, SsmModel};
use anyhow::{bail, ensure, Context, Result};
use rayon::prelude::*;
use supermask_core::fused::{
    conv_sample, elu_in_place, max_pool2_sample, transpose_block16, transpose_into, EffLayout,
    Effective,
};

/// Layers keeping fewer than this share of their entries run the sparse ternary kernels
/// (the crossover measured by `cargo bench --bench kernels`: about 25%).
pub const SPARSE_BELOW: f64 = 0.2;

/// Linear-net batches below this run on the calling thread.
const MIN_PARALLEL_BATCH: usize = 16;

/// Samples per block of a linear net: a block's feature-major input (784 x 16 floats) stays in
/// the L2 cache while the kept inputs are added, two 8-wide vector adds each (measured: 8 and
/// 32 samples were 11% and 8% slower on the FCN at batch 256).
const BLOCK: usize = supermask_core::fused::TRANSPOSE_ROWS;

/// A linear layer ready to run.
struct Linear {
    eff: Effective,
    inputs: usize,
    outputs: usize,
}

/// A conv layer ready to run (3x3 "same", stride 1, the Conv nets' layers).
struct Conv {
    eff: Effective,
    c_in: usize,
    c_out: usize,
}

/// The architectures the engine runs.
enum Net {
    /// Linear layers with ELU between them.
    Fcn { layers: Vec<Linear> },
    /// Pairs of 3x3 convs (ELU after each) and a 2x2 max-pool per pair, then linear layers
    /// with ELU between them (the `conv2`/`conv4`/`conv6`/`conv8` models).
    ConvNet {
        convs: Vec<Conv>,
        fcs: Vec<Linear>,
        input: [usize; 3],
    },
}

/// An exported model prepared for inference.
pub struct Engine {
    net: Net,
    alpha: f32,
    classes: usize,
    input_len: usize,
}

fn prepare(layer: &SsmLayer, layout: EffLayout) -> Result<Effective> {
    let rows = *layer.shape.first().context("layer without a shape")?;
    ensure!(
        rows > 0,
        "layer {}: empty shape {:?}",
        layer.name,
        layer.shape
    );
    let cols = layer.numel() / rows;
    Ok(match &layer.weights {
        LayerWeights::Ternary { magnitude, pattern } => {
            let w: Vec<f32> = pattern.iter().map(|&p| f32::from(p) * magnitude).collect();
            let mask: Vec<f32> = pattern.iter().map(|&p| f32::from(p.abs())).collect();
            Effective::build(&w, &mask, rows, cols, Some(*magnitude), layout)
        }
        LayerWeights::Values(v) => {
            let mask: Vec<f32> = v.iter().map(|&x| f32::from(u8::from(x != 0.0))).collect();
            Effective::build(v, &mask, rows, cols, None, layout)
        }
    })
}

fn linear(layer: &SsmLayer, inputs: usize) -> Result<Linear> {
    ensure!(
        layer.shape.len() == 2 && layer.shape[1] == inputs,
        "layer {}: expected a linear layer [_, {inputs}], got {:?}",
        layer.name,
        layer.shape
    );
    // Linear layers always run the sparse ternary kernels: in blocks of a few samples the
    // GEMM's setup costs more than adding the kept inputs, even for the densest last layer.
    Ok(Linear {
        eff: prepare(layer, EffLayout::Sparse)?,
        inputs,
        outputs: layer.shape[0],
    })
}

impl Engine {
    /// Prepares `m`; fails for architectures the engine does not run (ResNets) and for layers
    /// that do not chain.
    pub fn new(m: &SsmModel) -> Result<Self> {
        let spec = m.model.get("spec").unwrap_or(&m.model);
        let kind = spec
            .get("type")
            .and_then(|t| t.as_str())
            .context("the model description has no `type`")?;
        let alpha = spec
            .get("elu_alpha")
            .and_then(|a| a.as_f64())
            .unwrap_or(1.0) as f32;
        let (net, input_len) = match kind {
            "fcn" => {
                let mut width = m.layers.first().context("fcn without layers")?.shape[1];
                let input = width;
                let mut layers = Vec::new();
                for l in &m.layers {
                    let lin = linear(l, width)?;
                    width = lin.outputs;
                    layers.push(lin);
                }
                (Net::Fcn { layers }, input)
            }
            "conv2" | "conv4" | "conv6" | "conv8" => {
                let (mut convs, mut fcs) = (Vec::new(), Vec::new());
                let mut shape = [3usize, 32, 32];
                let input = shape;
                let mut it = m.layers.iter().peekable();
                while let Some(l) = it.next_if(|l| l.shape.len() == 4) {
                    ensure!(
                        l.shape[1] == shape[0] && l.shape[2] == 3 && l.shape[3] == 3,
                        "layer {}: expected a 3x3 conv from {} channels, got {:?}",
                        l.name,
                        shape[0],
                        l.shape
                    );
                    convs.push(Conv {
                        eff: prepare(l, EffLayout::Auto(SPARSE_BELOW))?,
                        c_in: shape[0],
                        c_out: l.shape[0],
                    });
                    shape[0] = l.shape[0];
                    if convs.len() % 2 == 0 {
                        shape = [shape[0], shape[1] / 2, shape[2] / 2];
                    }
                }
                ensure!(
                    !convs.is_empty() && convs.len() % 2 == 0,
                    "a conv net needs conv layers in pairs, got {}",
                    convs.len()
                );
                let mut width: usize = shape.iter().product();
                for l in it {
                    let lin = linear(l, width)?;
                    width = lin.outputs;
                    fcs.push(lin);
                }
                ensure!(
                    !fcs.is_empty(),
                    "a conv net needs linear layers after the convs"
                );
                let len = input.iter().product();
                (Net::ConvNet { convs, fcs, input }, len)
            }
            other => bail!(
                "the inference engine runs `fcn` and `conv2`/`conv4`/`conv6`/`conv8` models, not \
                 `{other}` (the file itself is fine: `supermask inspect` reads it)"
            ),
        };
        let classes = match &net {
            Net::Fcn { layers } => layers.last().map(|l| l.outputs),
            Net::ConvNet { fcs, .. } => fcs.last().map(|l| l.outputs),
        }
        .context("model without layers")?;
        Ok(Self {
            net,
            alpha,
            classes,
            input_len,
        })
    }

    /// Number of classes (logits per sample).
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Values per input sample (784 for the FCN, 3 x 32 x 32 for the Conv nets).
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
            Net::Fcn { layers } if batch < MIN_PARALLEL_BATCH => {
                // Small batches: on this thread (a task hand-off costs more than the work).
                let mut h = vec![0.0f32; x.len()];
                transpose_into(x, batch, self.input_len, &mut h);
                let h = self.linears(layers, h, batch);
                transpose_into(&h, self.classes, batch, &mut out);
            }
            Net::Fcn { layers } => {
                out.par_chunks_mut(BLOCK * self.classes)
                    .zip(x.par_chunks(BLOCK * self.input_len))
                    .for_each(|(out, x)| {
                        let nb = x.len() / self.input_len;
                        if nb < BLOCK {
                            // The last partial block.
                            let mut h = vec![0.0f32; x.len()];
                            transpose_into(x, nb, self.input_len, &mut h);
                            let h = self.linears(layers, h, nb);
                            transpose_into(&h, self.classes, nb, out);
                        } else {
                            self.block(layers, x, out);
                        }
                    });
            }
            Net::ConvNet { convs, fcs, input } => {
                let result: Result<()> = out
                    .par_chunks_mut(self.classes)
                    .zip(x.par_chunks(self.input_len))
                    .try_for_each(|(out, x)| {
                        let [mut c, mut h, mut w] = *input;
                        let mut z = x.to_vec();
                        for (i, conv) in convs.iter().enumerate() {
                            debug_assert_eq!(conv.c_in, c);
                            let (mut y, oh, ow) = conv_sample(&conv.eff, c, h, w, 3, 1, 1, &z)?;
                            elu_in_place(&mut y, self.alpha);
                            (c, h, w) = (conv.c_out, oh, ow);
                            z = if i % 2 == 1 {
                                let p = max_pool2_sample(&y, c, h, w);
                                (h, w) = (h / 2, w / 2);
                                p
                            } else {
                                y
                            };
                        }
                        out.copy_from_slice(&self.linears(fcs, z, 1));
                        Ok(())
                    });
                result?;
            }
        }
        Ok(out)
    }

    /// One full block of [`BLOCK`] samples through linear layers: feature-major `[f32; BLOCK]`
    /// rows, each kept weight one vector add.
    fn block(&self, layers: &[Linear], x: &[f32], out: &mut [f32]) {
        thread_local! {
            /// Two activation buffers per thread, reused across blocks and calls: every entry
            /// is written before it is read, so they need no zeroing per block.
            static SCRATCH: std::cell::RefCell<[Vec<[f32; BLOCK]>; 2]> =
                const { std::cell::RefCell::new([Vec::new(), Vec::new()]) };
        }
        SCRATCH.with_borrow_mut(|[a, b]| {
            let (mut h, mut y) = (a, b);
            h.resize(self.input_len, [0.0; BLOCK]);
            transpose_block16(x, self.input_len, h);
            let mut width = self.input_len;
            let last = layers.len() - 1;
            for (i, l) in layers.iter().enumerate() {
                if y.len() < l.outputs {
                    y.resize(l.outputs, [0.0; BLOCK]);
                }
                let (hi, yo) = (&h[..width], &mut y[..l.outputs]);
                match &l.eff {
                    Effective::Sparse(t) => t.matmul_block(hi, yo),
                    dense => dense.matmul(hi.as_flattened(), BLOCK, yo.as_flattened_mut()),
                }
                if i < last {
                    elu_in_place(yo.as_flattened_mut(), self.alpha);
                }
                width = l.outputs;
                std::mem::swap(&mut h, &mut y);
            }
            for (c, row) in h[..width].iter().enumerate() {
                for (b, v) in row.iter().enumerate() {
                    out[b * self.classes + c] = *v;
                }
            }
        });
    }

    /// Linear layers on feature-major activations `[features, nb]`, ELU between them.
    fn linears(&self, layers: &[Linear], mut h: Vec<f32>, nb: usize) -> Vec<f32> {
        let last = layers.len() - 1;
        for (i, l) in layers.iter().enumerate() {
            debug_assert_eq!(h.len(), l.inputs * nb);
            let mut y = vec![0.0f32; l.outputs * nb];
            l.eff.matmul(&h, nb, &mut y);
            if i < last {
                elu_in_place(&mut y, self.alpha);
            }
            h = y;
        }
        h
    }
}
