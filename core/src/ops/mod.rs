//! The one place that picks fused or reference kernels.
//!
//! Every operation that has two implementations is one function here: the activation
//! ([`elu`]), pooling ([`max_pool2`], [`max_pool_same_stride1`]), batch norm ([`batch_norm`]),
//! the weight layers ([`masked_linear`], [`masked_conv`], [`dense_linear`], [`dense_conv`]) and
//! the optimizer step ([`sgdw_step`]). Each decides once and runs one of:
//!
//! - the fused CPU kernels of [`crate::fused`], when the config asks for them
//!   (`train.kernels.path = "fused"`, the default) and the tensors are CPU f32, and for a
//!   masked layer only when its mask declares the straight-through gradient, through `M` or
//!   through `|M|` ([`MaskGradient::StraightThrough`], [`MaskGradient::StraightThroughAbs`]),
//!   the gradients the fused kernels implement;
//! - otherwise the [reference](mod@reference) implementation (generic candle ops), the path on CUDA and what
//!   the tests compare the fused path against.
//!
//! Layers, batch norm, models and the optimizer call these functions and never choose a path
//! themselves; [`crate::fused`] holds kernels only.

pub mod reference;

use crate::{
    config::{BnMode, ForwardCtx, KernelConfig, KernelPath},
    fused::{self, with_f32, EffLayout, Effective, FusedLayer, Geometry, StepParams},
    mask::{MaskCtx, MaskFn, MaskGradient},
    threshold::Taus,
    Result,
};
use anyhow::Context;
use candle_core::{DType, Tensor, Var};
use std::sync::Mutex;

/// Whether the fused kernels run for tensors like `t` on `path`: the fused path, CPU, f32.
fn fused_for(path: KernelPath, t: &Tensor) -> bool {
    path == KernelPath::Fused && t.device().is_cpu() && t.dtype() == DType::F32
}

/// The effective-weight layout `kernels` asks for: `sparse_below` 0 always dense, 1 always
/// sparse, otherwise chosen per layer and forward pass from the mask's density.
fn layout(kernels: &KernelConfig) -> EffLayout {
    if kernels.sparse_below <= 0.0 {
        EffLayout::Dense
    } else if kernels.sparse_below >= 1.0 {
        EffLayout::Sparse
    } else {
        EffLayout::Auto(kernels.sparse_below)
    }
}

/// `elu(x)` (candle's definition: `x` for `x >= 0`, else `alpha (e^x - 1)`).
pub fn elu(x: &Tensor, alpha: f64, kernels: &KernelConfig) -> Result<Tensor> {
    if fused_for(kernels.path, x) {
        fused::elu(x, alpha)
    } else {
        reference::elu(x, alpha)
    }
}

/// `elu(a + b)`: a residual block's sum and the ELU after it, one op on the fused path (the
/// same values and gradients as the sum and [`elu`]).
pub fn add_elu(a: &Tensor, b: &Tensor, alpha: f64, kernels: &KernelConfig) -> Result<Tensor> {
    if fused_for(kernels.path, a) && fused_for(kernels.path, b) {
        fused::add_elu(a, b, alpha)
    } else {
        reference::elu(&(a + b)?, alpha)
    }
}

/// Max-pooling `2 x 2`, stride 2, of `[n, c, h, w]` (odd sizes are floored).
pub fn max_pool2(x: &Tensor, kernels: &KernelConfig) -> Result<Tensor> {
    if fused_for(kernels.path, x) {
        fused::max_pool(x, 2, 2, 0)
    } else {
        reference::max_pool2(x)
    }
}

/// Max-pooling of `[n, c, h, w]` with a `k x k` window (`k` odd), stride 1 and "same" padding
/// (padded positions never win).
pub fn max_pool_same_stride1(x: &Tensor, k: usize, kernels: &KernelConfig) -> Result<Tensor> {
    anyhow::ensure!(k % 2 == 1, "same max-pool needs an odd window, got {k}");
    if fused_for(kernels.path, x) {
        fused::max_pool(x, k, 1, k / 2)
    } else {
        reference::max_pool_same_stride1(x, k)
    }
}

/// Keras' BatchNormalization defaults: epsilon and the running averages' momentum
/// (`running = momentum * running + (1 - momentum) * batch`; PyTorch's default momentum 0.1
/// is this 0.9).
pub(crate) const BN_EPS: f64 = 1e-3;
/// The default momentum of the running averages (Keras', the authors' code).
pub const BN_MOMENTUM: f64 = 0.99;

/// A batch-norm layer as [`batch_norm`] sees it (the fields of [`crate::norm::BatchNorm`]).
#[derive(Clone, Copy, Debug)]
pub struct BatchNormArgs<'a> {
    /// Path-style name, for errors.
    pub name: &'a str,
    /// Behaviour.
    pub mode: BnMode,
    /// Channels (dimension 1 of the input).
    pub channels: usize,
    /// The learnable `(gamma, beta)`, when the mode has them.
    pub affine: Option<(&'a Tensor, &'a Tensor)>,
    /// Running `(mean, variance)`, updated in training.
    pub running: &'a Mutex<(Tensor, Tensor)>,
    /// Momentum of the running averages (Keras convention, [`BN_MOMENTUM`] by default).
    pub momentum: f64,
}

impl BatchNormArgs<'_> {
    /// Checks `x` has the layer's channels in dimension 1; the shape per-channel statistics
    /// broadcast to (`[1, c, 1, ...]`).
    pub(crate) fn stat_shape(&self, x: &Tensor) -> Result<Vec<usize>> {
        anyhow::ensure!(
            x.rank() >= 2 && x.dims()[1] == self.channels,
            "{}: expects {} channels in dim 1, got {:?}",
            self.name,
            self.channels,
            x.dims()
        );
        let mut s = vec![1; x.rank()];
        s[1] = self.channels;
        Ok(s)
    }
}

/// Batch norm over channel dimension 1 of `[n, c]` or `[n, c, h, w]`: in training with batch
/// statistics (learnable mode) or the running ones (frozen-stats mode), updating the running
/// averages; in evaluation with the running statistics; mode `none` is `x / sqrt(1 + eps)`.
pub fn batch_norm(x: &Tensor, bn: &BatchNormArgs, ctx: &ForwardCtx) -> Result<Tensor> {
    if fused_for(ctx.kernels.path, x) {
        batch_norm_fused(x, bn, ctx.train).with_context(|| bn.name.to_string())
    } else {
        reference::batch_norm(x, bn, ctx.train)
    }
}

/// [`batch_norm`] with the fused kernels: the same statistics and running-average updates as
/// the reference, with the normalization as one op (batch statistics in training with
/// learnable scale and shift, a per-channel affine map otherwise).
fn batch_norm_fused(x: &Tensor, bn: &BatchNormArgs, train: bool) -> Result<Tensor> {
    bn.stat_shape(x)?;
    let c = bn.channels;
    if bn.mode == BnMode::None {
        let (scale, shift) = fixed_affine(BnMode::None, c, None, None)?;
        return fused::channel_affine(x, scale, shift);
    }
    if train {
        let (mean, var) = fused::batch_stats(x)?;
        {
            let mut run = bn.running.lock().expect("running stats lock");
            let dev = x.device();
            let upd = |old: &Tensor, new: &[f32]| -> Result<Tensor> {
                let new = Tensor::from_slice(new, c, dev)?;
                Ok((old.affine(bn.momentum, 0.0)? + new.affine(1.0 - bn.momentum, 0.0)?)?)
            };
            *run = (upd(&run.0, &mean)?, upd(&run.1, &var)?);
        }
        if let (BnMode::Learnable, Some((g, b))) = (bn.mode, bn.affine) {
            return fused::batch_norm_train(x, g, b, mean, &var, BN_EPS);
        }
    }
    // Fixed statistics: the running ones (frozen-stats mode, or evaluation).
    let (rm, rv) = {
        let run = bn.running.lock().expect("running stats lock");
        (run.0.to_vec1::<f32>()?, run.1.to_vec1::<f32>()?)
    };
    let affine = match bn.affine {
        Some((g, b)) => Some((g.to_vec1::<f32>()?, b.to_vec1()?)),
        None => None,
    };
    let (scale, shift) = fixed_affine(
        bn.mode,
        c,
        affine.as_ref().map(|(g, b)| (g.as_slice(), b.as_slice())),
        Some((&rm, &rv)),
    )?;
    fused::channel_affine(x, scale, shift)
}

/// The per-channel map `x * scale + shift` a batch-norm layer of `mode` over `c` channels
/// computes with fixed statistics (evaluation, or frozen-stats training): `stats` are the
/// running `(mean, var)`, `affine` the learnable `(gamma, beta)` (`None`: 1 and 0). Mode `none`
/// needs neither (`x / sqrt(1 + eps)`). The fused path and the inference engine both use it,
/// so they compute the same constants.
pub fn fixed_affine(
    mode: BnMode,
    c: usize,
    affine: Option<(&[f32], &[f32])>,
    stats: Option<(&[f32], &[f32])>,
) -> Result<(Vec<f32>, Vec<f32>)> {
    if mode == BnMode::None {
        let scale = (1.0 / (1.0 + BN_EPS).sqrt()) as f32;
        return Ok((vec![scale; c], vec![0.0; c]));
    }
    let (mean, var) = stats.context("batch norm: running statistics are needed")?;
    anyhow::ensure!(
        mean.len() == c
            && var.len() == c
            && affine.is_none_or(|(g, b)| g.len() == c && b.len() == c),
        "batch norm: statistics or parameters are not of {c} channels"
    );
    let eps = BN_EPS as f32;
    let (scale, shift) = (0..c)
        .map(|i| {
            let (g, b) = affine.map_or((1.0, 0.0), |(g, b)| (g[i], b[i]));
            let scale = g / (var[i] + eps).sqrt();
            (scale, b - mean[i] * scale)
        })
        .unzip();
    Ok((scale, shift))
}

/// A masked layer as the layer ops see it (the fields of [`crate::layer::MaskedLayer`]).
#[derive(Clone, Copy, Debug)]
pub struct MaskedArgs<'a> {
    /// Path-style name, for errors.
    pub name: &'a str,
    /// The frozen weight `W`.
    pub weight: &'a Tensor,
    /// The trainable scores `M` (they receive the gradient).
    pub scores: &'a Tensor,
    /// `Some(|w|)` when every frozen weight has that magnitude (signed constants).
    pub magnitude: Option<f32>,
    /// The mask function `g`.
    pub mask: &'a dyn MaskFn,
    /// The thresholds.
    pub taus: Taus,
    /// The mask's context in this forward pass (training flag, per-layer seed).
    pub mask_ctx: MaskCtx,
}

/// Stride and zero padding of a convolution (its channels and kernel size are the weight's,
/// `[c_out, c_in, k, k]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv {
    /// Stride in both directions.
    pub stride: usize,
    /// Zero padding on each side.
    pub padding: usize,
}

/// A masked linear layer `y = x (W * g(M))^T`, then `elu` with `Some(alpha)`.
pub fn masked_linear(
    x: &Tensor,
    m: &MaskedArgs,
    ctx: &ForwardCtx,
    elu: Option<f64>,
) -> Result<Tensor> {
    let epilogue = Epilogue {
        elu,
        ..Epilogue::default()
    };
    masked(x, m, None, ctx, &epilogue)
}

/// A masked convolution with `W * g(M)`, then the `epilogue`.
pub fn masked_conv(
    x: &Tensor,
    m: &MaskedArgs,
    conv: Conv,
    ctx: &ForwardCtx,
    epilogue: &Epilogue,
) -> Result<Tensor> {
    masked(x, m, Some(conv), ctx, epilogue)
}

/// A dense linear layer `y = x W^T` with trainable `w`, then `elu` with `Some(alpha)`.
pub fn dense_linear(
    x: &Tensor,
    name: &str,
    w: &Tensor,
    ctx: &ForwardCtx,
    elu: Option<f64>,
) -> Result<Tensor> {
    let epilogue = Epilogue {
        elu,
        ..Epilogue::default()
    };
    dense(x, name, w, None, ctx, &epilogue)
}

/// A dense convolution with trainable `w`, then the `epilogue`.
pub fn dense_conv(
    x: &Tensor,
    name: &str,
    w: &Tensor,
    conv: Conv,
    ctx: &ForwardCtx,
    epilogue: &Epilogue,
) -> Result<Tensor> {
    dense(x, name, w, Some(conv), ctx, epilogue)
}

/// What a weight layer's op applies to the layer's output, in this order. On the fused path
/// it runs inside the layer's op, so no intermediate becomes a graph node; the values and
/// gradients are those of the separate ops, bit for bit.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Epilogue {
    /// Convolutions: `y * scale`, the parameter-free batch norm `x / sqrt(1 + eps)` (mode
    /// `none`, the authors' frozen BN of the signed ResNets) folded into the layer.
    pub scale: Option<f64>,
    /// An ELU with this alpha.
    pub elu: Option<f64>,
    /// Convolutions: a 2x2 stride-2 max-pool (odd sizes floored).
    pub pool2: bool,
}

impl Epilogue {
    /// The fused layer op of `eff` with this epilogue.
    fn fused(
        &self,
        eff: Effective,
        geometry: Geometry,
        weight: Option<Tensor>,
    ) -> Result<FusedLayer> {
        let op = FusedLayer::new(
            eff,
            geometry,
            weight,
            self.elu.map(|a| a as f32),
            self.pool2,
        );
        match self.scale {
            None => Ok(op),
            Some(s) => {
                let c = op.eff.dims().0;
                // As the stand-alone op: `z * s + 0` with `s` rounded to f32 (candle's affine).
                op.with_affine(vec![s as f32; c], vec![0.0; c])
            }
        }
    }
}

/// The masked layer ops. Fused: one op computing the layer with its ELU and max-pool
/// epilogue, so neither the pre-activation nor the unpooled map becomes a graph node.
/// Reference: `W * mask::apply(M)` with candle ops, candle's `elu`, then [`max_pool2`].
fn masked(
    x: &Tensor,
    m: &MaskedArgs,
    conv: Option<Conv>,
    ctx: &ForwardCtx,
    epilogue: &Epilogue,
) -> Result<Tensor> {
    let path = ctx.kernels.path;
    let gradient = m.mask.gradient();
    if fused_for(path, x)
        && matches!(
            gradient,
            MaskGradient::StraightThrough | MaskGradient::StraightThroughAbs
        )
        && fused_for(path, m.weight)
    {
        let geometry = geometry(m.weight, conv)?;
        let eff_layout = match (geometry, x.dims()) {
            (
                Geometry::Conv {
                    k, stride, padding, ..
                },
                &[b, c, h, w],
            ) => fused::conv_layout(
                layout(&ctx.kernels),
                m.weight.dims()[0],
                [b, c, h, w],
                k,
                stride,
                padding,
            ),
            _ => layout(&ctx.kernels),
        };
        let eff = masked_effective(m, eff_layout)?;
        let op = epilogue
            .fused(eff, geometry, Some(m.weight.clone()))?
            .with_score_sign(gradient == MaskGradient::StraightThroughAbs);
        return op
            .apply(x, m.scores)
            .with_context(|| format!("layer {}", m.name));
    }
    let w = reference::masked_weight(m)?;
    let y = reference::layer(x, &w, conv).with_context(|| format!("layer {}", m.name))?;
    reference_epilogue(y, epilogue, &ctx.kernels)
}

/// The dense layer ops: as [`masked`], with the trainable weight as the op's weight.
fn dense(
    x: &Tensor,
    name: &str,
    w: &Tensor,
    conv: Option<Conv>,
    ctx: &ForwardCtx,
    epilogue: &Epilogue,
) -> Result<Tensor> {
    let path = ctx.kernels.path;
    if fused_for(path, x) && fused_for(path, w) {
        let rows = w.dims()[0];
        let cols = w.elem_count() / rows;
        let data = with_f32(w, |w| w.to_vec())?;
        let eff = Effective::Dense { rows, cols, data };
        let op = epilogue.fused(eff, geometry(w, conv)?, None)?;
        return op.apply(x, w).with_context(|| format!("layer {name}"));
    }
    let y = reference::layer(x, w, conv).with_context(|| format!("layer {name}"))?;
    reference_epilogue(y, epilogue, &ctx.kernels)
}

/// The fused geometry of a layer with weight `w`: linear, or the convolution `conv`.
fn geometry(w: &Tensor, conv: Option<Conv>) -> Result<Geometry> {
    let Some(Conv { stride, padding }) = conv else {
        return Ok(Geometry::Linear);
    };
    let &[_, c_in, k, _] = w.dims() else {
        anyhow::bail!(
            "a convolution weight is [c_out, c_in, k, k], got {:?}",
            w.dims()
        );
    };
    Ok(Geometry::Conv {
        c_in,
        k,
        stride,
        padding,
    })
}

/// After a reference layer: the scale (as the reference batch norm of mode `none`), candle's
/// `elu`, then the 2x2 max-pool. The pool is its own op ([`max_pool2`]), so a layer the fused
/// kernels do not take (a mask with a surrogate gradient) still pools with the fused kernel
/// when the config asks for it.
fn reference_epilogue(
    mut y: Tensor,
    epilogue: &Epilogue,
    kernels: &KernelConfig,
) -> Result<Tensor> {
    if let Some(s) = epilogue.scale {
        y = y.affine(s, 0.0)?;
    }
    if let Some(alpha) = epilogue.elu {
        y = reference::elu(&y, alpha)?;
    }
    if epilogue.pool2 {
        y = max_pool2(&y, kernels)?;
    }
    Ok(y)
}

/// The effective weight `W * g(M)` of this forward pass for the fused kernels, as a
/// `[out, fan_in]` matrix in `layout` (the mask comes from [`MaskFn::hard_into`] when the mask
/// has that path, else from [`MaskFn::hard`]).
fn masked_effective(m: &MaskedArgs, layout: EffLayout) -> Result<Effective> {
    let numel = m.weight.elem_count();
    let rows = m.weight.dims()[0];
    let cols = numel / rows;
    // Zeroed on the kernel threads: `vec!` zeroes reused memory on this thread alone, 3.7% of
    // the signed FCN step's main-thread samples while the other thread waited.
    let mut hard = crate::cpu::zeros(numel);
    let done = with_f32(m.scores, |s| {
        m.mask.hard_into(s, m.taus, &m.mask_ctx, &mut hard)
    })?;
    if !done {
        hard = m
            .mask
            .hard(&m.scores.detach(), m.taus, &m.mask_ctx)?
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1()?;
    }
    // A mask that rescales the weights it keeps (biprop's alpha sign(W)) multiplies its own
    // weight; the score gradient still takes the frozen W (the op's `weight`).
    // The mask moves into a tensor (no copy) and is read back in place.
    let hard = Tensor::from_vec(hard, m.weight.shape(), m.weight.device())?;
    let (weight, magnitude) = match m.mask.scaled_weight(m.weight, &hard)? {
        Some(scaled) => (scaled.to_dtype(DType::F32)?, None),
        None => (m.weight.clone(), m.magnitude),
    };
    with_f32(&weight, |w| {
        with_f32(&hard, |h| {
            Effective::build(w, h, rows, cols, magnitude, layout)
        })
    })?
}

/// One SGDW / SGD(+L2) step of `var` with gradient `grad` and the hyper-parameters `h`: the
/// fused in-place kernel on the fused `path` for CPU f32 tensors, else the reference's tensor
/// ops. The parameter's momentum is a tensor in `velocity` (the reference path's, or as loaded
/// from a checkpoint) or a host buffer in `host` (the fused path's, updated in place); a step
/// moves it to where its path keeps it.
pub fn sgdw_step(
    var: &Var,
    grad: &Tensor,
    velocity: &mut Option<Tensor>,
    host: &mut Option<(Vec<f32>, Vec<usize>)>,
    h: &StepParams,
    path: KernelPath,
) -> Result<()> {
    if fused_for(path, var) && grad.dtype() == DType::F32 {
        // The host buffer is made once (from a loaded checkpoint's velocity, or zeros) and
        // then updated in place every step.
        if host.is_none() {
            let v = match velocity.take() {
                Some(t) => t.flatten_all()?.to_vec1()?,
                None => vec![0.0; var.elem_count()],
            };
            *host = Some((v, var.dims().to_vec()));
        }
        let Some((v, _)) = host.as_mut() else {
            unreachable!("the host velocity was just set")
        };
        return fused::sgdw_step(var.as_tensor(), &grad.detach(), v, h);
    }
    if let Some((v, _)) = host.take() {
        *velocity = Some(Tensor::from_vec(v, var.shape(), var.device())?);
    }
    reference::sgd_step(var, grad, velocity, h)
}
