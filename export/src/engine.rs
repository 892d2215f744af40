//! The sparse ternary inference engine: runs an exported FCN, Conv net or ResNet on plain `f32`
//! slices, with each masked layer's effective weight prepared once at load.
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
//! `SAMPLE_BY_SAMPLE` (5) samples run one at a time. Conv nets and ResNets run samples in
//! parallel; a ResNet's batch norms (evaluation mode: running statistics) are one per-channel
//! scale and shift each, computed as the training model's fused path computes them
//! ([`supermask_core::norm::fixed_affine`]).

use crate::{
    act::elu_in_place,
    grouped::{Grouped, MatvecScratch},
    LayerWeights, SsmLayer, SsmModel,
};
use anyhow::{bail, ensure, Context, Result};
use rayon::prelude::*;
use supermask_core::{
    fused::{
        channel_affine_sample, conv_sample, max_pool2_sample, max_pool_sample, transpose_block,
        EffLayout, Effective,
    },
    norm::fixed_affine,
    BnMode,
};

/// Layers keeping fewer than this share of their entries run the sparse ternary kernels
/// (the crossover measured by `cargo bench --bench kernels`: about 25%).
pub const SPARSE_BELOW: f64 = 0.2;

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

/// A linear layer ready to run: signed-constant layers in groups ([`Grouped`]), others as the
/// fused kernels' sparse or dense form.
struct Linear {
    eff: Effective,
    grouped: Option<Grouped>,
    inputs: usize,
    outputs: usize,
}

/// A conv layer ready to run.
struct Conv {
    eff: Effective,
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    pad: usize,
}

impl Conv {
    /// `[c_in, h, w]` -> `([c_out, oh, ow], oh, ow)` on this thread.
    fn run(&self, x: &[f32], h: usize, w: usize) -> Result<(Vec<f32>, usize, usize)> {
        conv_sample(&self.eff, self.c_in, h, w, self.k, self.stride, self.pad, x)
    }
}

/// A conv layer followed by a batch norm with fixed statistics (a per-channel affine map).
struct ConvBn {
    conv: Conv,
    scale: Vec<f32>,
    shift: Vec<f32>,
}

impl ConvBn {
    fn run(&self, x: &[f32], h: usize, w: usize) -> Result<(Vec<f32>, usize, usize)> {
        let (mut y, oh, ow) = self.conv.run(x, h, w)?;
        channel_affine_sample(&mut y, &self.scale, &self.shift);
        Ok((y, oh, ow))
    }
}

/// A residual block (`supermask_models::resnet`): `conv1 -> BN -> ELU -> conv2 -> BN`, then
/// `ELU(ELU(main) + BN(shortcut conv(x)))` for projection blocks, `ELU(main + x)` otherwise.
struct Block {
    conv1: ConvBn,
    conv2: ConvBn,
    shortcut: Option<ConvBn>,
}

/// The architectures the engine runs.
enum Arch {
    /// Linear layers with ELU between them.
    Fcn { layers: Vec<Linear> },
    /// Pairs of 3x3 convs (ELU after each) and a 2x2 max-pool per pair, then linear layers
    /// with ELU between them (the `conv2`/`conv4`/`conv6`/`conv8` models).
    ConvNet {
        convs: Vec<Conv>,
        fcs: Vec<Linear>,
        input: [usize; 3],
    },
    /// The authors' CIFAR ResNets (`resnet20`/`resnet56`/`resnet110`): stem conv -> BN ->
    /// ELU -> 3x3 stride-1 max-pool, residual blocks, global average pool, linear head.
    ResNet(Box<ResNet>),
}

/// A ResNet's parts (boxed in [`Arch`]: it is much larger than the other variants).
struct ResNet {
    stem: ConvBn,
    blocks: Vec<Block>,
    head: Linear,
    input: [usize; 3],
}

/// An exported model prepared for inference.
pub struct Engine {
    net: Arch,
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
    let eff = prepare(layer, EffLayout::Sparse)?;
    let grouped = match &eff {
        Effective::Sparse(t) => Grouped::new(t),
        Effective::Dense { .. } => None,
    };
    Ok(Linear {
        eff,
        grouped,
        inputs,
        outputs: layer.shape[0],
    })
}

/// A conv layer `[c_out, c_in, k, k]` from `c_in` channels: padding `k / 2` ("same" for odd
/// kernels), dense or sparse by the layer's density.
fn conv(layer: &SsmLayer, c_in: usize, stride: usize) -> Result<Conv> {
    ensure!(
        layer.shape.len() == 4 && layer.shape[1] == c_in && layer.shape[2] == layer.shape[3],
        "layer {}: expected a square conv from {c_in} channels, got {:?}",
        layer.name,
        layer.shape
    );
    let k = layer.shape[2];
    Ok(Conv {
        eff: prepare(layer, EffLayout::Auto(SPARSE_BELOW))?,
        c_in,
        c_out: layer.shape[0],
        k,
        stride,
        pad: k / 2,
    })
}

/// A batch-norm mode from the model description (`key`), or `default` when absent.
fn bn_mode(spec: &serde_json::Value, key: &str, default: BnMode) -> Result<BnMode> {
    match spec.get(key) {
        None => Ok(default),
        Some(v) => serde_json::from_value(v.clone())
            .with_context(|| format!("the model description's `{key}` is not a batch-norm mode")),
    }
}

/// The batch norm `name` of `mode` over `c` channels as a per-channel `(scale, shift)`, from
/// the file's tensors (`name.running_mean`, `name.running_var`, and in learnable mode
/// `name.gamma`, `name.beta`).
fn batch_norm(m: &SsmModel, name: &str, mode: BnMode, c: usize) -> Result<(Vec<f32>, Vec<f32>)> {
    let get = |what: &str| -> Result<&[f32]> {
        let key = format!("{name}.{what}");
        let (_, shape, v) = m
            .tensors
            .iter()
            .find(|(n, _, _)| *n == key)
            .with_context(|| format!("the file has no tensor `{key}`"))?;
        ensure!(
            shape.as_slice() == [c] && v.len() == c,
            "tensor `{key}`: expected shape [{c}], got {shape:?}"
        );
        Ok(v)
    };
    let affine = match mode {
        BnMode::Learnable => Some((get("gamma")?, get("beta")?)),
        _ => None,
    };
    let stats = match mode {
        BnMode::None => None,
        _ => Some((get("running_mean")?, get("running_var")?)),
    };
    fixed_affine(mode, c, affine, stats)
}

/// The per-sample image shape `[c, h, w]` of a conv model: the description's `input` (files
/// written before models took their input shape from the data have none: CIFAR's 3x32x32).
fn image_input(m: &SsmModel) -> Result<[usize; 3]> {
    let Some(v) = m.model.get("input") else {
        return Ok([3, 32, 32]);
    };
    let dims: Vec<usize> = serde_json::from_value(v.clone())
        .with_context(|| format!("the model description's input {v} is not a list of sizes"))?;
    match dims[..] {
        [c, h, w] if c > 0 && h > 0 && w > 0 => Ok([c, h, w]),
        _ => bail!("a conv model needs an input [channels, height, width], the file says {dims:?}"),
    }
}

/// A ResNet with `per_stage` blocks per stage, layer by layer as
/// `supermask_models::resnet` builds it; every name and shape is checked.
fn resnet(
    m: &SsmModel,
    spec: &serde_json::Value,
    per_stage: usize,
    input: [usize; 3],
) -> Result<(Arch, usize)> {
    let bn = bn_mode(spec, "bn", BnMode::None)?;
    let stem_bn = bn_mode(spec, "stem_bn", BnMode::Learnable)?;
    let mut layers = m.layers.iter();
    let mut next = |name: &str| -> Result<&SsmLayer> {
        let l = layers
            .next()
            .with_context(|| format!("the file ends before layer `{name}`"))?;
        ensure!(
            l.name == name,
            "expected layer `{name}` of a ResNet, found `{}`",
            l.name
        );
        Ok(l)
    };
    let conv_bn = |l: &SsmLayer, c_in: usize, stride: usize, bn_name: &str, mode: BnMode| {
        let conv = conv(l, c_in, stride)?;
        let (scale, shift) = batch_norm(m, bn_name, mode, conv.c_out)
            .with_context(|| format!("batch norm of layer {}", l.name))?;
        Ok::<_, anyhow::Error>(ConvBn { conv, scale, shift })
    };
    let stem = conv_bn(next("stem.conv")?, input[0], 1, "stem.bn", stem_bn)?;
    let mut c = stem.conv.c_out;
    let mut blocks = Vec::new();
    for stage in 1..=3 {
        for b in 1..=per_stage {
            let n = format!("s{stage}.b{b}");
            let stride = if b == 1 && stage > 1 { 2 } else { 1 };
            // The block's conv `part` and its batch norm `bn_part`.
            let mut part = |part: &str, bn_part: &str, c_in: usize, stride: usize| {
                let l = next(&format!("{n}.{part}"))?;
                conv_bn(l, c_in, stride, &format!("{n}.{bn_part}"), bn)
            };
            let conv1 = part("conv1", "bn1", c, stride)?;
            let conv2 = part("conv2", "bn2", conv1.conv.c_out, 1)?;
            let shortcut = if b == 1 {
                Some(part("shortcut", "shortcut_bn", c, stride)?)
            } else {
                None
            };
            let out = conv2.conv.c_out;
            ensure!(
                shortcut.as_ref().map_or(out == c, |s| s.conv.c_out == out),
                "block {n}: the residual sum needs {out} channels on both sides"
            );
            if b == 1 {
                // Projection blocks: the 1x1 convs change the size; stride 1 keeps it.
                ensure!(
                    conv1.conv.k == 1 && shortcut.as_ref().is_some_and(|s| s.conv.k == 1),
                    "block {n}: a projection block has 1x1 conv1 and shortcut"
                );
            }
            blocks.push(Block {
                conv1,
                conv2,
                shortcut,
            });
            c = out;
        }
    }
    let head = linear(next("head")?, c)?;
    if let Some(extra) = layers.next() {
        bail!("unexpected layer `{}` after the ResNet's head", extra.name);
    }
    let len = input.iter().product();
    Ok((
        Arch::ResNet(Box::new(ResNet {
            stem,
            blocks,
            head,
            input,
        })),
        len,
    ))
}

impl Engine {
    /// Prepares `m`; fails for architectures the engine does not run and for layers that do
    /// not chain (naming the layer).
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
                (Arch::Fcn { layers }, input)
            }
            "conv2" | "conv4" | "conv6" | "conv8" => {
                let (mut convs, mut fcs) = (Vec::new(), Vec::new());
                let input = image_input(m)?;
                let mut shape = input;
                let mut it = m.layers.iter().peekable();
                while let Some(l) = it.next_if(|l| l.shape.len() == 4) {
                    ensure!(
                        l.shape[1] == shape[0] && l.shape[2] == 3 && l.shape[3] == 3,
                        "layer {}: expected a 3x3 conv from {} channels, got {:?}",
                        l.name,
                        shape[0],
                        l.shape
                    );
                    convs.push(conv(l, shape[0], 1)?);
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
                (Arch::ConvNet { convs, fcs, input }, len)
            }
            "resnet20" | "resnet56" | "resnet110" => {
                let blocks = match kind {
                    "resnet20" => 3,
                    "resnet56" => 9,
                    _ => 18,
                };
                resnet(m, spec, blocks, image_input(m)?)?
            }
            other => bail!(
                "the inference engine runs `fcn`, `conv2`/`conv4`/`conv6`/`conv8` and \
                 `resnet20`/`resnet56`/`resnet110` models, not `{other}` (the file itself is \
                 fine: `supermask inspect` reads it)"
            ),
        };
        let classes = match &net {
            Arch::Fcn { layers } => layers.last().map(|l| l.outputs),
            Arch::ConvNet { fcs, .. } => fcs.last().map(|l| l.outputs),
            Arch::ResNet(r) => Some(r.head.outputs),
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
            Arch::Fcn { layers } if batch <= SAMPLE_BY_SAMPLE => {
                // A few samples: one at a time on this thread (a task hand-off or a block
                // costs more than the work).
                for (out, x) in out
                    .chunks_exact_mut(self.classes)
                    .zip(x.chunks_exact(self.input_len))
                {
                    self.sample(layers, x, out);
                }
            }
            Arch::Fcn { layers } if batch >= WIDE_BLOCK * rayon::current_num_threads() => {
                let size = (WIDE_BLOCK * self.input_len, WIDE_BLOCK * self.classes);
                in_parallel(x, &mut out, size, |x, out| {
                    self.block::<WIDE_BLOCK>(layers, x, out)
                });
            }
            Arch::Fcn { layers } => {
                let size = (BLOCK * self.input_len, BLOCK * self.classes);
                in_parallel(x, &mut out, size, |x, out| {
                    self.block::<BLOCK>(layers, x, out)
                });
            }
            Arch::ConvNet { convs, fcs, input } => {
                let result: Result<()> = out
                    .par_chunks_mut(self.classes)
                    .zip(x.par_chunks(self.input_len))
                    .try_for_each(|(out, x)| {
                        let [mut c, mut h, mut w] = *input;
                        let mut z = x.to_vec();
                        for (i, conv) in convs.iter().enumerate() {
                            debug_assert_eq!(conv.c_in, c);
                            let (mut y, oh, ow) = conv.run(&z, h, w)?;
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
                        self.sample(fcs, &z, out);
                        Ok(())
                    });
                result?;
            }
            Arch::ResNet(r) => {
                let ResNet {
                    stem,
                    blocks,
                    head,
                    input,
                } = &**r;
                let result: Result<()> = out
                    .par_chunks_mut(self.classes)
                    .zip(x.par_chunks(self.input_len))
                    .try_for_each(|(out, x)| {
                        let z = self.resnet_features(stem, blocks, *input, x)?;
                        self.sample(std::slice::from_ref(head), &z, out);
                        Ok(())
                    });
                result?;
            }
        }
        Ok(out)
    }

    /// One sample through a ResNet up to the global average pool: `[channels]`.
    fn resnet_features(
        &self,
        stem: &ConvBn,
        blocks: &[Block],
        input: [usize; 3],
        x: &[f32],
    ) -> Result<Vec<f32>> {
        let [_, h, w] = input;
        let (mut z, h, w) = stem.run(x, h, w)?;
        elu_in_place(&mut z, self.alpha);
        let c = stem.conv.c_out;
        let (mut z, mut h, mut w) = max_pool_sample(&z, c, h, w, 3, 1, 1)?;
        for b in blocks {
            let (mut m, mh, mw) = b.conv1.run(&z, h, w)?;
            elu_in_place(&mut m, self.alpha);
            let (mut m, mh, mw) = b.conv2.run(&m, mh, mw)?;
            let skip = match &b.shortcut {
                Some(sc) => {
                    elu_in_place(&mut m, self.alpha);
                    sc.run(&z, h, w)?.0
                }
                None => z,
            };
            ensure!(
                skip.len() == m.len(),
                "residual and main path differ in size"
            );
            for (a, b) in m.iter_mut().zip(&skip) {
                *a += b;
            }
            elu_in_place(&mut m, self.alpha);
            (z, h, w) = (m, mh, mw);
        }
        // Global average pool as the model computes it: the mean over each row, then over
        // the rows.
        let hw = h * w;
        Ok(z.chunks_exact(hw.max(1))
            .map(|plane| {
                let rows: f32 = plane
                    .chunks_exact(w)
                    .map(|r| r.iter().sum::<f32>() / w as f32)
                    .sum();
                rows / h as f32
            })
            .collect())
    }

    /// A block of up to `N` samples (row-major `x`, `out`) through linear layers, with
    /// feature-major `[f32; N]` activations: each kept weight is `N / 16` vector adds. A
    /// partial block is padded with zero samples.
    fn block<const N: usize>(&self, layers: &[Linear], x: &[f32], out: &mut [f32]) {
        thread_local! {
            /// Per thread, reused across blocks and calls: two activation buffers (each with
            /// a zero row after the values, the padding slot of grouped layers) and a padded
            /// copy of a partial block's input.
            static SCRATCH: std::cell::RefCell<[Vec<f32>; 3]> =
                const { std::cell::RefCell::new([Vec::new(), Vec::new(), Vec::new()]) };
        }
        let nb = x.len() / self.input_len;
        SCRATCH.with_borrow_mut(|[a, b, partial]| {
            let x = if nb == N {
                x
            } else {
                partial.clear();
                partial.extend_from_slice(x);
                partial.resize(N * self.input_len, 0.0);
                partial
            };
            let mut widest = self.input_len;
            for l in layers {
                widest = widest.max(l.outputs);
            }
            // `widest` feature rows of N samples and the zero row after them.
            let (mut h, mut y) = (
                aligned_rows::<N>(a, widest + 1),
                aligned_rows::<N>(b, widest + 1),
            );
            transpose_block(x, self.input_len, h);
            h[self.input_len] = [0.0; N];
            let mut width = self.input_len;
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
/// wake-up), and `infer` and the benches call from outside. Here such a caller works too: it
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` values in `[lo, hi)` from a seeded xorshift.
    fn values(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                lo + (hi - lo) * ((s >> 40) as f32 / (1u64 << 24) as f32)
            })
            .collect()
    }

    /// An FCN 50-40-30-10: a sparse signed-constant layer (8% kept), a real-valued layer (the
    /// fused kernels' sparse form, not grouped) and a dense-ish signed-constant one (70%).
    fn model() -> SsmModel {
        let ternary = |name: &str, shape: [usize; 2], density: f32, seed: u64| {
            let n = shape[0] * shape[1];
            let keep = values(n, seed, 0.0, 1.0);
            let sign = values(n, seed + 99, 0.0, 1.0);
            let pattern = keep
                .iter()
                .zip(&sign)
                .map(|(&k, &s)| match (k < density, s < 0.5) {
                    (false, _) => 0,
                    (true, true) => -1,
                    (true, false) => 1,
                })
                .collect();
            SsmLayer {
                name: name.into(),
                shape: shape.to_vec(),
                weights: LayerWeights::Ternary {
                    magnitude: 0.37,
                    pattern,
                },
            }
        };
        let real: Vec<f32> = values(30 * 40, 5, -0.5, 0.5)
            .into_iter()
            .map(|v| if v.abs() < 0.4 { 0.0 } else { v })
            .collect();
        SsmModel {
            model: serde_json::json!({"spec": {"type": "fcn", "elu_alpha": 0.8}}),
            layers: vec![
                ternary("fc1", [40, 50], 0.08, 1),
                SsmLayer {
                    name: "fc2".into(),
                    shape: vec![30, 40],
                    weights: LayerWeights::Values(real),
                },
                ternary("fc3", [10, 30], 0.7, 3),
            ],
            tensors: vec![],
        }
    }

    /// The forward pass in f64 with dense weights: the reference.
    fn reference(m: &SsmModel, x: &[f32], alpha: f64) -> Vec<f64> {
        let mut h: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
        for (i, l) in m.layers.iter().enumerate() {
            let (rows, cols) = (l.shape[0], l.shape[1]);
            let w = l.dense();
            let mut y: Vec<f64> = (0..rows)
                .map(|r| (0..cols).map(|c| f64::from(w[r * cols + c]) * h[c]).sum())
                .collect();
            if i + 1 < m.layers.len() {
                for v in &mut y {
                    if *v < 0.0 {
                        *v = alpha * v.exp_m1();
                    }
                }
            }
            h = y;
        }
        h
    }

    /// [`in_parallel`] from outside rayon's pool (this test's thread: the caller takes a share)
    /// and inside it: every chunk of `out` gets `f` of its own chunk of `x`, exactly once, for
    /// chunk counts below, at and above the pool's size and a short last chunk.
    #[test]
    fn in_parallel_runs_every_chunk_once() {
        for chunks in 1..=9 {
            let (xs, os) = (3, 2);
            let x: Vec<f32> = (0..chunks * xs - 1).map(|v| v as f32).collect();
            let expected: Vec<f32> = x.chunks(xs).flat_map(|c| [c[0], c.len() as f32]).collect();
            let run = |out: &mut [f32]| {
                in_parallel(&x, out, (xs, os), |x, out| {
                    // Adds, so that a chunk run twice shows.
                    out[0] += x[0];
                    out[1] += x.len() as f32;
                })
            };
            let mut out = vec![0.0f32; chunks * os];
            run(&mut out);
            assert_eq!(out, expected, "{chunks} chunks from outside the pool");
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(2)
                .build()
                .unwrap();
            let mut out = vec![0.0f32; chunks * os];
            pool.install(|| run(&mut out));
            assert_eq!(out, expected, "{chunks} chunks inside a pool");
        }
    }

    /// A chunk that panics, on the caller or on a helper, surfaces as a panic of the call, not
    /// as a caller spinning forever for a chunk that never finishes.
    #[test]
    fn in_parallel_passes_a_panic_on() {
        for bad in 0..6 {
            let x: Vec<f32> = (0..6).map(|i| i as f32).collect();
            let mut out = vec![0.0f32; 6];
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                in_parallel(&x, &mut out, (1, 1), |x, o| {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    assert!(x[0] != bad as f32, "chunk {bad} fails");
                    o[0] = 1.0;
                })
            }));
            assert!(result.is_err(), "chunk {bad}: the panic was lost");
        }
    }

    /// Every batch path of the linear engine (sample by sample, blocks of [`BLOCK`] and
    /// [`WIDE_BLOCK`] samples, partial blocks padded with zero samples) against the dense f64
    /// reference, to 1e-5 of each sample's largest logit.
    #[test]
    fn every_fcn_batch_path_matches_the_dense_reference() {
        let m = model();
        let e = Engine::new(&m).unwrap();
        let x = values(300 * 50, 11, -2.0, 2.0);
        let want: Vec<f64> = x
            .chunks_exact(50)
            .flat_map(|s| reference(&m, s, 0.8))
            .collect();
        // The first samples of `x` through the engine (`got`) against the reference.
        let check = |got: &[f32], what: &str| {
            for (s, (g, w)) in got.chunks_exact(10).zip(want.chunks_exact(10)).enumerate() {
                let scale = w.iter().fold(0.0f64, |a, v| a.max(v.abs()));
                for (a, b) in g.iter().zip(w) {
                    assert!(
                        (f64::from(*a) - b).abs() <= 1e-5 * scale,
                        "{what}: sample {s}: {g:?} vs {w:?}"
                    );
                }
            }
        };
        // The engine picks the path from the batch size; these sizes cover each one.
        for n in [1, 2, 3, 5, 6, 31, 32, 33, 64, 300] {
            let got = e.forward(&x[..n * 50], n).unwrap();
            assert_eq!(got.len(), n * 10, "batch {n}");
            check(&got, &format!("batch {n}"));
        }
        // And the block sizes directly (the wide one is picked only for batches of at least
        // WIDE_BLOCK per thread, which depends on the machine's cores).
        for n in [1, 5, BLOCK, WIDE_BLOCK] {
            let mut out = vec![0.0f32; n * 10];
            let Arch::Fcn { layers } = &e.net else {
                unreachable!()
            };
            e.block::<BLOCK>(
                layers,
                &x[..n.min(BLOCK) * 50],
                &mut out[..n.min(BLOCK) * 10],
            );
            check(&out[..n.min(BLOCK) * 10], &format!("block {n}"));
            e.block::<WIDE_BLOCK>(layers, &x[..n * 50], &mut out);
            check(&out, &format!("wide block {n}"));
        }
    }
}
