//! Masked and dense layers, and the factory that builds them from a [`MaskingConfig`].
//!
//! A layer is a [`LayerSpec`] (name, operation, weight shape) plus its parameters. The same
//! spec serves linear and convolution layers, so every model is built from one layer type and
//! walks its layers uniformly for metrics and checkpoints. Parameter names are paths:
//! `fc1.weight`, `fc1.scores`.

use crate::{
    config::{ForwardCtx, MaskingConfig},
    fused::with_f32,
    init::{Fans, Initializer},
    mask::{MaskCtx, MaskFn},
    ops::{self, MaskedArgs},
    rng,
    threshold::Taus,
    Result,
};
use anyhow::Context;
use candle_core::{DType, Device, Tensor, Var};
use std::sync::Arc;

/// The operation a layer applies with its (effective) weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerOp {
    /// `y = x W^T`, weight `[out, in]`, input `[batch, in]`.
    Linear,
    /// 2-D cross-correlation, weight `[c_out, c_in, k, k]`, input `[batch, c_in, h, w]`.
    Conv2d {
        /// Stride in both directions.
        stride: usize,
        /// Zero padding on each side.
        padding: usize,
    },
}

/// Name, operation and weight shape of a layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerSpec {
    /// Path-style name, prefix of its parameters' names.
    pub name: String,
    /// The operation.
    pub op: LayerOp,
    /// Weight shape: `[out, in]` or `[c_out, c_in, k, k]`.
    pub shape: Vec<usize>,
}

impl LayerSpec {
    /// A linear layer `in -> out` without bias.
    pub fn linear(name: &str, inputs: usize, outputs: usize) -> Result<Self> {
        anyhow::ensure!(inputs > 0 && outputs > 0, "layer {name}: sizes must be > 0");
        Ok(Self {
            name: name.into(),
            op: LayerOp::Linear,
            shape: vec![outputs, inputs],
        })
    }

    /// A `k x k` convolution `c_in -> c_out` without bias.
    pub fn conv2d(
        name: &str,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        anyhow::ensure!(
            c_in > 0 && c_out > 0 && kernel > 0 && stride > 0,
            "layer {name}: channels, kernel and stride must be > 0"
        );
        // A padding wider than the kernel only adds outputs that see nothing but zeros; the
        // bound keeps a hostile file's padding from sizing the im2col buffers.
        anyhow::ensure!(
            padding <= kernel,
            "layer {name}: padding {padding} must not exceed the kernel {kernel}"
        );
        Ok(Self {
            name: name.into(),
            op: LayerOp::Conv2d { stride, padding },
            shape: vec![c_out, c_in, kernel, kernel],
        })
    }

    /// Number of weights.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Fans (REPRODUCTION-NOTES: conv `fan_in = k*k*c_in`, `fan_out = k*k*c_out`).
    pub fn fans(&self) -> Fans {
        let receptive: usize = self.shape[2..].iter().product();
        Fans {
            fan_in: self.shape[1] * receptive,
            fan_out: self.shape[0] * receptive,
        }
    }

    /// Per-sample output shape for a per-sample input shape, or an error naming the layer.
    pub fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        match self.op {
            LayerOp::Linear => {
                anyhow::ensure!(
                    input == [self.shape[1]],
                    "layer {}: linear layer expects input [{}], got {:?}",
                    self.name,
                    self.shape[1],
                    input
                );
                Ok(vec![self.shape[0]])
            }
            LayerOp::Conv2d { stride, padding } => {
                anyhow::ensure!(
                    input.len() == 3 && input[0] == self.shape[1],
                    "layer {}: conv layer expects input [{}, h, w], got {:?}",
                    self.name,
                    self.shape[1],
                    input
                );
                let k = self.shape[2];
                let out = |x: usize| -> Result<usize> {
                    anyhow::ensure!(
                        x + 2 * padding >= k,
                        "layer {}: input {:?} smaller than kernel {k}",
                        self.name,
                        input
                    );
                    Ok((x + 2 * padding - k) / stride + 1)
                };
                Ok(vec![self.shape[0], out(input[1])?, out(input[2])?])
            }
        }
    }

    /// Applies the operation with weight `w` to a batch `x` (generic candle ops).
    pub fn apply(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        ops::reference::layer(x, w, self.conv())
    }

    /// A convolution's stride and padding; `None` for a linear layer.
    pub fn conv(&self) -> Option<ops::Conv> {
        match self.op {
            LayerOp::Linear => None,
            LayerOp::Conv2d { stride, padding } => Some(ops::Conv { stride, padding }),
        }
    }
}

/// A layer whose weight is frozen and masked by trainable scores: `W * g(M)`.
#[derive(Debug)]
pub struct MaskedLayer {
    /// Name, op, shape.
    pub spec: LayerSpec,
    /// Index among the model's masked layers (a random-stream coordinate).
    pub index: usize,
    weight: Option<Tensor>,
    /// `Some(|w|)` when every frozen weight has that magnitude (signed constants).
    magnitude: Option<f32>,
    scores: Var,
    mask: Arc<dyn MaskFn>,
    taus: Taus,
}

impl MaskedLayer {
    /// The frozen weight `W`.
    pub fn weight(&self) -> Result<&Tensor> {
        self.weight
            .as_ref()
            .with_context(|| format!("layer {}: weight not initialized", self.spec.name))
    }

    /// The trainable scores `M`.
    pub fn scores(&self) -> &Var {
        &self.scores
    }

    /// The mask function.
    pub fn mask_fn(&self) -> &Arc<dyn MaskFn> {
        &self.mask
    }

    /// Current thresholds.
    pub fn taus(&self) -> Taus {
        self.taus
    }

    /// Sets the thresholds (after validating `tau_n < tau_p`).
    pub fn set_taus(&mut self, taus: Taus) -> Result<()> {
        self.taus = taus
            .validate()
            .with_context(|| format!("layer {}", self.spec.name))?;
        Ok(())
    }

    /// Sets the frozen weight (shape-checked).
    pub fn set_weight(&mut self, w: Tensor) -> Result<()> {
        anyhow::ensure!(
            w.dims() == self.spec.shape.as_slice(),
            "layer {}: weight shape {:?} does not match {:?}",
            self.spec.name,
            w.dims(),
            self.spec.shape
        );
        self.magnitude = common_magnitude(&w)?;
        self.weight = Some(w.detach());
        Ok(())
    }

    /// `Some(|w|)` when every frozen weight has the same magnitude (signed-constant weights).
    pub fn magnitude(&self) -> Option<f32> {
        self.magnitude
    }

    fn mask_ctx(&self, ctx: &ForwardCtx) -> MaskCtx {
        MaskCtx {
            train: ctx.train,
            seed: rng::derive_seed(ctx.seed, &[ctx.step, self.index as u64]),
        }
    }

    /// The layer as the layer ops ([`crate::ops::masked_linear`], [`crate::ops::masked_conv`])
    /// see it in the forward pass `ctx`.
    pub fn op_args(&self, ctx: &ForwardCtx) -> Result<MaskedArgs<'_>> {
        Ok(MaskedArgs {
            name: &self.spec.name,
            weight: self.weight()?,
            scores: self.scores.as_tensor(),
            magnitude: self.magnitude,
            mask: self.mask.as_ref(),
            taus: self.taus,
            mask_ctx: self.mask_ctx(ctx),
        })
    }

    /// The deterministic mask `g(M)` used for metrics and evaluation.
    pub fn eval_mask(&self) -> Result<Tensor> {
        self.mask
            .hard(self.scores.as_tensor(), self.taus, &MaskCtx::eval())
    }

    /// The weight the evaluation mask multiplies: `W`, or the mask's rescaled weight
    /// ([`MaskFn::scaled_weight`], biprop's `alpha * sign(W)`).
    pub fn eval_weight(&self) -> Result<Tensor> {
        let w = self.weight()?;
        Ok(self
            .mask
            .scaled_weight(w, &self.eval_mask()?)?
            .unwrap_or_else(|| w.clone()))
    }

    /// The mask's derived values for this layer ([`MaskFn::derived`]), from `W` and the
    /// evaluation mask.
    pub fn derived(&self) -> Result<Vec<(&'static str, Tensor)>> {
        self.mask.derived(self.weight()?, &self.eval_mask()?)
    }

    /// Effective weight `W * g(M)` with the straight-through gradient to `M` (reference path).
    pub fn effective_weight(&self, ctx: &ForwardCtx) -> Result<Tensor> {
        ops::reference::masked_weight(&self.op_args(ctx)?)
    }
}

/// A plain trainable layer for dense baselines.
#[derive(Debug)]
pub struct DenseLayer {
    /// Name, op, shape.
    pub spec: LayerSpec,
    /// The trainable weight.
    pub weight: Var,
}

/// A layer of a model: masked (signed Supermask) or dense (baseline).
#[derive(Debug)]
pub enum Layer {
    /// Frozen weight times mask of trainable scores.
    Masked(MaskedLayer),
    /// Trainable weight.
    Dense(DenseLayer),
}

impl Layer {
    /// Name, op and shape.
    pub fn spec(&self) -> &LayerSpec {
        match self {
            Layer::Masked(l) => &l.spec,
            Layer::Dense(l) => &l.spec,
        }
    }

    /// The layer's name.
    pub fn name(&self) -> &str {
        &self.spec().name
    }

    /// Forward pass of a batch, through the layer ops of [`crate::ops`] (which pick the fused
    /// kernels or the reference).
    pub fn forward_t(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        self.forward_act(x, ctx, None)
    }

    /// Forward pass followed by `elu` with `Some(alpha)` (inside the layer's op on the fused
    /// path).
    pub fn forward_act(&self, x: &Tensor, ctx: &ForwardCtx, elu: Option<f64>) -> Result<Tensor> {
        let epilogue = ops::Epilogue {
            elu,
            ..ops::Epilogue::default()
        };
        self.forward_epilogue(x, ctx, &epilogue)
    }

    /// Forward pass, then the `epilogue` ([`ops::Epilogue`]: a folded parameter-free batch
    /// norm, an ELU and, for convolutions, a 2x2 stride-2 max-pool). The fused path computes
    /// them inside the layer's op, so neither the pre-activation nor the unpooled map becomes
    /// a graph node.
    pub fn forward_epilogue(
        &self,
        x: &Tensor,
        ctx: &ForwardCtx,
        epilogue: &ops::Epilogue,
    ) -> Result<Tensor> {
        let conv = self.spec().conv();
        anyhow::ensure!(
            conv.is_some() || (!epilogue.pool2 && epilogue.scale.is_none()),
            "layer {}: a max-pool or scale epilogue needs a convolution",
            self.name()
        );
        match (self, conv) {
            (Layer::Masked(l), None) => ops::masked_linear(x, &l.op_args(ctx)?, ctx, epilogue.elu),
            (Layer::Masked(l), Some(c)) => ops::masked_conv(x, &l.op_args(ctx)?, c, ctx, epilogue),
            (Layer::Dense(l), None) => {
                ops::dense_linear(x, &l.spec.name, l.weight.as_tensor(), ctx, epilogue.elu)
            }
            (Layer::Dense(l), Some(c)) => {
                let w = l.weight.as_tensor();
                ops::dense_conv(x, &l.spec.name, w, c, ctx, epilogue)
            }
        }
    }

    /// The trainable tensor with its checkpoint name (`name.scores` or `name.weight`).
    pub fn trainable(&self) -> (String, &Var) {
        match self {
            Layer::Masked(l) => (format!("{}.scores", l.spec.name), &l.scores),
            Layer::Dense(l) => (format!("{}.weight", l.spec.name), &l.weight),
        }
    }

    /// Counts of mask values `(-1, 0, +1)`; a dense layer counts as all `+1`.
    pub fn mask_counts(&self) -> Result<[usize; 3]> {
        match self {
            Layer::Masked(l) => Ok(count_mask(&l.eval_mask()?)?),
            Layer::Dense(l) => Ok([0, 0, l.spec.numel()]),
        }
    }

    /// Named tensors for a checkpoint.
    pub fn named_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let n = &self.spec().name;
        Ok(match self {
            Layer::Masked(l) => {
                let mut named = vec![
                    (format!("{n}.weight"), l.weight()?.clone()),
                    (format!("{n}.scores"), l.scores.as_tensor().detach()),
                    (
                        format!("{n}.taus"),
                        Tensor::new(&[l.taus.neg, l.taus.pos], l.scores.device())?,
                    ),
                ];
                for (key, t) in l.derived()? {
                    named.push((format!("{n}.{key}"), t));
                }
                named
            }
            Layer::Dense(l) => vec![(format!("{n}.weight"), l.weight.as_tensor().detach())],
        })
    }

    /// Restores the tensors written by [`Layer::named_tensors`].
    pub fn load_tensors(&mut self, get: &dyn Fn(&str) -> Result<Tensor>) -> Result<()> {
        let n = self.spec().name.clone();
        let shape = self.spec().shape.clone();
        let checked = |key: String| -> Result<Tensor> {
            let t = get(&key)?;
            anyhow::ensure!(
                t.dims() == shape.as_slice(),
                "checkpoint tensor {key} has shape {:?}, the model expects {:?}",
                t.dims(),
                shape
            );
            Ok(t)
        };
        match self {
            Layer::Masked(l) => {
                l.set_weight(checked(format!("{n}.weight"))?)?;
                l.scores.set(&checked(format!("{n}.scores"))?)?;
                let taus = get(&format!("{n}.taus"))?.to_vec1::<f32>()?;
                anyhow::ensure!(
                    taus.len() == 2,
                    "checkpoint tensor {n}.taus must hold 2 values"
                );
                l.set_taus(Taus {
                    neg: taus[0],
                    pos: taus[1],
                })?;
                // Derived values (biprop's alpha) must be what the stored weights and scores
                // give: a checkpoint whose alpha disagrees was edited or corrupted.
                for (key, recomputed) in l.derived()? {
                    let name = format!("{n}.{key}");
                    let stored = get(&name)?;
                    anyhow::ensure!(
                        stored.dims() == recomputed.dims(),
                        "checkpoint tensor {name} has shape {:?}, the mask derives {:?}",
                        stored.dims(),
                        recomputed.dims()
                    );
                    let a = stored.flatten_all()?.to_vec1::<f32>()?;
                    let b = recomputed.flatten_all()?.to_vec1::<f32>()?;
                    if let Some((x, y)) = a
                        .iter()
                        .zip(&b)
                        .find(|(x, y)| (*x - *y).abs() > 1e-5 * y.abs().max(1e-30))
                    {
                        anyhow::bail!(
                            "checkpoint tensor {name} holds {x}, but the layer's stored weights \
                             and scores give {y}"
                        );
                    }
                }
            }
            Layer::Dense(l) => l.weight.set(&checked(format!("{n}.weight"))?)?,
        }
        Ok(())
    }
}

/// `Some(|w|)` when all entries of `w` share one magnitude (read on the CPU; `None` on other
/// devices, where the fused kernels do not run).
fn common_magnitude(w: &Tensor) -> Result<Option<f32>> {
    if !w.device().is_cpu() || w.dtype() != DType::F32 {
        return Ok(None);
    }
    with_f32(w, |v| {
        let first = v.first()?.abs();
        (first > 0.0 && v.iter().all(|x| x.abs() == first)).then_some(first)
    })
}

/// Counts `(-1, 0, +1)` entries of a mask tensor.
pub fn count_mask(mask: &Tensor) -> Result<[usize; 3]> {
    let v = mask.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let mut c = [0usize; 3];
    for x in v {
        if x < -0.5 {
            c[0] += 1;
        } else if x > 0.5 {
            c[2] += 1;
        } else {
            c[1] += 1;
        }
    }
    Ok(c)
}

/// Builds layers for a model from the masking config; the model names shapes, never a mask type.
///
/// Scores (masked) and weights (dense) are drawn when a layer is made. The frozen weights of
/// masked layers are drawn by [`crate::model::build_model`] once all layers exist, because
/// their variance may depend on the initial thresholds (ELUS, equation 3: `p0`), and a global
/// threshold needs all layers' scores.
pub struct LayerFactory {
    masking: MaskingConfig,
    device: Device,
    seed: u64,
    masked_count: usize,
    names: Vec<String>,
}

impl LayerFactory {
    /// A factory for one model.
    pub fn new(masking: MaskingConfig, device: Device, seed: u64) -> Self {
        Self {
            masking,
            device,
            seed,
            masked_count: 0,
            names: Vec::new(),
        }
    }

    /// The device layers are created on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A linear layer.
    pub fn linear(&mut self, name: &str, inputs: usize, outputs: usize) -> Result<Layer> {
        self.make(LayerSpec::linear(name, inputs, outputs)?)
    }

    /// A convolution layer.
    pub fn conv2d(
        &mut self,
        name: &str,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Layer> {
        self.make(LayerSpec::conv2d(
            name, c_in, c_out, kernel, stride, padding,
        )?)
    }

    fn draw(
        &self,
        init: &dyn Initializer,
        spec: &LayerSpec,
        stream: u64,
        p0: f64,
    ) -> Result<Tensor> {
        let mut r = rng::stream(self.seed, &[stream, rng::name_hash(&spec.name)]);
        let values = init.sample(spec.numel(), spec.fans(), p0, &mut r);
        Ok(Tensor::from_vec(
            values,
            spec.shape.as_slice(),
            &self.device,
        )?)
    }

    /// Draws the frozen weight of a masked layer, given its initial zero share `p0`.
    pub(crate) fn draw_masked_weight(&self, spec: &LayerSpec, p0: f64) -> Result<Tensor> {
        match &self.masking {
            MaskingConfig::Masked { weight_init, .. } => {
                self.draw(weight_init.as_ref(), spec, STREAM_WEIGHT, p0)
            }
            MaskingConfig::Dense { .. } => anyhow::bail!("dense models have no masked weights"),
        }
    }

    /// The layer of `spec` (masked or dense by the masking config).
    pub fn layer(&mut self, spec: LayerSpec) -> Result<Layer> {
        self.make(spec)
    }

    fn make(&mut self, spec: LayerSpec) -> Result<Layer> {
        anyhow::ensure!(
            !self.names.contains(&spec.name),
            "two layers are named {}: layer names must be unique",
            spec.name
        );
        self.names.push(spec.name.clone());
        match &self.masking {
            MaskingConfig::Masked {
                mask, score_init, ..
            } => {
                let scores =
                    Var::from_tensor(&self.draw(score_init.as_ref(), &spec, STREAM_SCORE, 0.0)?)?;
                let index = self.masked_count;
                self.masked_count += 1;
                Ok(Layer::Masked(MaskedLayer {
                    spec,
                    index,
                    weight: None,
                    magnitude: None,
                    scores,
                    mask: mask.clone(),
                    taus: Taus {
                        neg: -f32::INFINITY,
                        pos: f32::INFINITY,
                    },
                }))
            }
            MaskingConfig::Dense { weight_init } => {
                let w = self.draw(weight_init.as_ref(), &spec, STREAM_WEIGHT, 0.0)?;
                Ok(Layer::Dense(DenseLayer {
                    spec,
                    weight: Var::from_tensor(&w)?,
                }))
            }
        }
    }
}

const STREAM_WEIGHT: u64 = 1;
const STREAM_SCORE: u64 = 2;
