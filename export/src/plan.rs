//! What the engine runs: the model file's [`Architecture`] with every layer's effective weight
//! prepared once and every batch norm folded into a per-channel scale and shift.
//!
//! The architecture is the one the training model was built from (stored in the file's
//! description as `arch`); files written before it was stored are described by their model
//! spec, whose [`supermask_core::ModelSpec::architecture`] gives the same steps (the spec's
//! plugin must be linked, as it is in the `supermask` binary). Each weight step takes the
//! file's next layer, which must carry the step's name and shape. A convolution's entries
//! that read a channel no kept weight feeds (zero for every input) are dropped at load.

use crate::{grouped::Grouped, LayerWeights, SsmLayer, SsmModel};
use anyhow::{bail, ensure, Context, Result};
use std::borrow::Cow;
use supermask_core::{
    arch::{Architecture, Step},
    fused::{pack_direct, EffLayout, Effective},
    norm::fixed_affine,
    registry, BnMode,
};

/// Conv layers keeping fewer than this share of their entries run the sparse ternary kernels,
/// denser ones a GEMM (the crossover measured by `cargo bench --bench kernels`: about 25%).
pub const SPARSE_BELOW: f64 = 0.2;

/// A linear layer ready to run: signed-constant layers in groups ([`Grouped`]), others as the
/// fused kernels' sparse or dense form.
pub(crate) struct Linear {
    pub eff: Effective,
    pub grouped: Option<Grouped>,
    pub inputs: usize,
    pub outputs: usize,
}

/// A conv layer ready to run.
pub(crate) struct Conv {
    pub eff: Effective,
    /// The direct kernel's packed weights, for a dense 3x3 "same" layer (packed once here).
    pub packed: Option<Vec<f32>>,
    pub c_in: usize,
    pub c_out: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
}

/// One step of the plan, per sample.
pub(crate) enum Op {
    Conv(Conv),
    /// Batch norm with fixed statistics: `x * scale[c] + shift[c]`.
    Norm {
        scale: Vec<f32>,
        shift: Vec<f32>,
    },
    Elu,
    MaxPool {
        k: usize,
        stride: usize,
        pad: usize,
    },
    Flatten,
    GlobalAvgPool,
    Residual {
        main: Vec<Op>,
        shortcut: Vec<Op>,
    },
    /// Linear layers with an ELU between consecutive ones (not after the last).
    Linears(Vec<Linear>),
}

/// The architecture of `m`: its stored `arch`, else the one its model spec describes.
pub fn architecture(m: &SsmModel) -> Result<Architecture> {
    if let Some(a) = m.model.get("arch") {
        return serde_json::from_value(a.clone())
            .context("the model description's `arch` is not an architecture");
    }
    let spec_json = m.model.get("spec").unwrap_or(&m.model);
    let table: supermask_core::toml::Table = serde_json::from_value(spec_json.clone())
        .context("the model description's `spec` is not a table")?;
    let spec = registry::model_from_table(table).context(
        "the file stores no architecture (`arch`; files exported before it was stored lack \
         it) and its model spec cannot be built",
    )?;
    let input = match m.model.get("input") {
        Some(v) => serde_json::from_value(v.clone())
            .with_context(|| format!("the model description's input {v} is not a list of sizes"))?,
        // Files written before models took their input shape from the data.
        None => spec.paper_input(),
    };
    spec.architecture(&input)
}

/// `layer` without the entries that read the inputs `dead` marks (by input channel: column
/// `i` of a `[c_out, c_in k k]` weight reads channel `i / (k k)`; an empty `dead` marks none),
/// and which of its output channels keep no entry.
///
/// A convolution has no bias, so an output channel that keeps no entry is zero; an ELU (`elu(0)
/// = 0`) and a max-pool keep it zero, and the next convolution's entries that read it add
/// zeros. Dropping them at load gives the same sums with fewer adds: at 2% kept, 58% of a
/// Conv2's first-layer channels (27 entries each) keep none (`0.98^27`).
fn without_dead_inputs<'l>(layer: &'l SsmLayer, dead: &[bool]) -> (Cow<'l, SsmLayer>, Vec<bool>) {
    /// Sets the entries at which `at` holds to `zero`.
    fn zero_where<T: Copy>(v: &mut [T], zero: T, at: impl Fn(usize) -> bool) {
        for (i, x) in v.iter_mut().enumerate() {
            if at(i) {
                *x = zero;
            }
        }
    }
    /// Whether each row of `cols` entries is all `zero`.
    fn empty_rows<T: PartialEq>(v: &[T], zero: T, cols: usize) -> Vec<bool> {
        v.chunks(cols)
            .map(|r| r.iter().all(|x| *x == zero))
            .collect()
    }
    let rows = layer.shape.first().copied().unwrap_or(0).max(1);
    let cols = (layer.numel() / rows).max(1);
    let mut layer = Cow::Borrowed(layer);
    if dead.contains(&true) {
        let per_channel = (cols / dead.len()).max(1);
        let reads_dead = |i: usize| dead.get(i % cols / per_channel).copied().unwrap_or(false);
        match &mut layer.to_mut().weights {
            LayerWeights::Ternary { pattern, .. } => zero_where(pattern, 0, reads_dead),
            LayerWeights::Values(v) => zero_where(v, 0.0, reads_dead),
        }
    }
    let empty = match &layer.weights {
        LayerWeights::Ternary { pattern, .. } => empty_rows(pattern, 0, cols),
        LayerWeights::Values(v) => empty_rows(v, 0.0, cols),
    };
    (layer, empty)
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

fn linear(layer: &SsmLayer) -> Result<Linear> {
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
        inputs: layer.shape[1],
        outputs: layer.shape[0],
    })
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

/// Builds the plan of `steps`, taking weight layers from `layers` in order.
fn ops<'a>(
    m: &SsmModel,
    steps: &[Step],
    layers: &mut impl Iterator<Item = &'a SsmLayer>,
) -> Result<Vec<Op>> {
    let mut out: Vec<Op> = Vec::with_capacity(steps.len());
    // The last weight layer, for errors about the batch norm after it.
    let mut after = String::from("the input");
    // Which channels of the current activation are zero whatever the input (after a
    // convolution, through ELUs and max-pools; see `without_dead_inputs`).
    let mut dead: Vec<bool> = Vec::new();
    let mut i = 0;
    while i < steps.len() {
        let step = &steps[i];
        i += 1;
        if let Some(spec) = step.layer_spec()? {
            let l = layers
                .next()
                .with_context(|| format!("the file ends before layer `{}`", spec.name))?;
            ensure!(
                l.name == spec.name && l.shape == spec.shape,
                "the architecture's layer `{}` {:?} is `{}` {:?} in the file",
                spec.name,
                spec.shape,
                l.name,
                l.shape
            );
            after = format!("layer {}", spec.name);
            match step {
                Step::Conv {
                    c_in,
                    c_out,
                    k,
                    stride,
                    padding,
                    ..
                } => {
                    let known = if dead.len() == *c_in { &dead[..] } else { &[] };
                    let (l, empty) = without_dead_inputs(l, known);
                    dead = empty;
                    let eff = prepare(&l, EffLayout::Auto(SPARSE_BELOW))?;
                    out.push(Op::Conv(Conv {
                        packed: pack_direct(&eff, *c_in, *k, *stride, *padding),
                        eff,
                        c_in: *c_in,
                        c_out: *c_out,
                        k: *k,
                        stride: *stride,
                        pad: *padding,
                    }))
                }
                _ => {
                    dead.clear();
                    // A linear layer joins the chain before it when an ELU separates them.
                    let lin = linear(l)?;
                    let chained = matches!(out.as_slice(), [.., Op::Linears(_), Op::Elu]);
                    if chained {
                        out.pop();
                        if let Some(Op::Linears(v)) = out.last_mut() {
                            v.push(lin);
                        }
                    } else {
                        out.push(Op::Linears(vec![lin]));
                    }
                }
            }
            continue;
        }
        if !matches!(step, Step::Elu | Step::MaxPool { .. }) {
            dead.clear();
        }
        if let (Step::MaxPool { k, stride, padding }, Some(Op::Elu)) = (step, out.last()) {
            // The ELU increases monotonically, so pooling first (padding is -inf, below every
            // input) and applying it to the maxima gives the same values with a quarter of the
            // exponentials after a 2x2 pool.
            out.pop();
            out.push(Op::MaxPool {
                k: *k,
                stride: *stride,
                pad: *padding,
            });
            out.push(Op::Elu);
            continue;
        }
        out.push(match step {
            Step::BatchNorm {
                name,
                channels,
                mode,
            } => {
                let (scale, shift) = batch_norm(m, name, *mode, *channels)
                    .with_context(|| format!("batch norm {name} after {after}"))?;
                Op::Norm { scale, shift }
            }
            Step::Elu => Op::Elu,
            Step::MaxPool { k, stride, padding } => Op::MaxPool {
                k: *k,
                stride: *stride,
                pad: *padding,
            },
            Step::Flatten => Op::Flatten,
            Step::GlobalAvgPool => Op::GlobalAvgPool,
            Step::Residual { main, shortcut } => Op::Residual {
                main: ops(m, main, layers)?,
                shortcut: ops(m, shortcut, layers)?,
            },
            Step::Linear { .. } | Step::Conv { .. } => unreachable!("weight steps are above"),
        });
    }
    Ok(out)
}

/// The plan of `m` under `arch` (checked: shapes chain, the file's layers are the
/// architecture's, in order, and none is left over) and its output size.
pub(crate) fn build(m: &SsmModel, arch: &Architecture) -> Result<(Vec<Op>, usize)> {
    let out = arch.output_shape()?;
    let [classes] = out[..] else {
        bail!("the architecture's output has shape {out:?}, not [classes]");
    };
    let mut layers = m.layers.iter();
    let plan = ops(m, &arch.steps, &mut layers)?;
    if let Some(extra) = layers.next() {
        bail!(
            "the file's layer `{}` is not in the architecture",
            extra.name
        );
    }
    Ok((plan, classes))
}
