//! The mask-function plugin trait.
//!
//! A mask function maps a real score tensor `M` to mask values `g(M)`; the effective weight of a
//! masked layer is `W * g(M)`. In the backward pass `g` is treated as the identity (the
//! straight-through estimator, STE), so `dL/dM = dL/d(W*g(M)) * W`, unless the mask declares
//! another gradient ([`MaskGradient`]); [`apply`] is the one place that builds it.

use crate::{threshold::Taus, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::fmt::Debug;

/// The set of values a mask can take; part of each mask function's contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MaskRange {
    /// `{0, 1}`: prune or keep.
    Binary,
    /// `{-1, 0, 1}`: invert, prune or keep.
    Signed,
}

impl MaskRange {
    /// The admissible mask values, ascending.
    pub fn values(self) -> &'static [f32] {
        match self {
            MaskRange::Binary => &[0.0, 1.0],
            MaskRange::Signed => &[-1.0, 0.0, 1.0],
        }
    }
}

/// What a mask function may depend on besides the scores and thresholds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaskCtx {
    /// Training (stochastic masks sample) or evaluation (deterministic).
    pub train: bool,
    /// Seed of this forward pass for this layer (derived from run seed, step and layer).
    pub seed: u64,
}

impl MaskCtx {
    /// The deterministic evaluation context.
    pub fn eval() -> Self {
        Self {
            train: false,
            seed: 0,
        }
    }
}

/// A mask function `g`: scores -> mask values, with a straight-through backward.
#[typetag::serde(tag = "type")]
pub trait MaskFn: Debug + Send + Sync {
    /// The values this mask can produce.
    fn range(&self) -> MaskRange;

    /// Checks the parameters (called when a config is loaded, before anything is written).
    fn validate(&self) -> Result<()> {
        Ok(())
    }

    /// The hard mask `g(M)` (no gradient), with the same shape and dtype as `scores`.
    fn hard(&self, scores: &Tensor, taus: Taus, ctx: &MaskCtx) -> Result<Tensor>;

    /// Writes `g(M)` of f32 CPU scores into `out` (same length) and returns `true`, or returns
    /// `false` when this mask has no such fast path (the fused kernels then call
    /// [`MaskFn::hard`]). Must give exactly the values of `hard`.
    fn hard_into(&self, scores: &[f32], taus: Taus, ctx: &MaskCtx, out: &mut [f32]) -> bool {
        let _ = (scores, taus, ctx, out);
        false
    }

    /// The gradient this mask passes to its scores; [`apply`] builds it. The default is the
    /// identity straight-through estimator, which the fused kernels implement. A mask that
    /// declares [`MaskGradient::Surrogate`] trains on the reference path (the fused kernels
    /// never train it with another gradient).
    fn gradient(&self) -> MaskGradient {
        MaskGradient::StraightThrough
    }

    /// The differentiable surrogate `s(M)` of a mask that declares
    /// [`MaskGradient::Surrogate`]: the mask's gradient is `dL/dM = dL/dg * s'(M)`, with `s'`
    /// from candle's autograd of this expression. Only called for such masks.
    fn surrogate(&self, scores: &Tensor, taus: Taus) -> Result<Tensor> {
        let _ = (scores, taus);
        anyhow::bail!(
            "mask {self:?} declares a surrogate gradient but does not implement `surrogate`"
        )
    }

    /// The weight the mask's values multiply, from the frozen `W` and the hard mask `g`
    /// (no gradient): `None` (the default) for `W` itself, the effective weight `W * g(M)`;
    /// `Some(W_b)` for a mask that rescales the weights it keeps, as biprop's
    /// `alpha * sign(W)`. The effective weight is then `W_b * g(M)`, and the scores' gradient
    /// stays `dL/dW_eff * W * s'(M)` (what biprop's backward computes). Both paths run it: the
    /// fused kernels multiply `W_b * g` and take `W` for the score gradient, and the
    /// conformance checks compare them with the reference.
    fn scaled_weight(&self, w: &Tensor, hard: &Tensor) -> Result<Option<Tensor>> {
        let _ = (w, hard);
        Ok(None)
    }

    /// Values the mask derives from the frozen `W` and its hard mask `g` that a reader needs to
    /// rebuild the effective weight without the framework (biprop's per-layer `alpha`), as
    /// `(key, tensor)`: checkpoints store each as `LAYER.key`, and loading recomputes it from
    /// the stored weights and scores and refuses a checkpoint that disagrees. None by default.
    fn derived(&self, w: &Tensor, hard: &Tensor) -> Result<Vec<(&'static str, Tensor)>> {
        let _ = (w, hard);
        Ok(Vec::new())
    }
}

/// The gradient a mask function passes to its scores (the mask's values are its
/// [`MaskFn::hard`] either way).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MaskGradient {
    /// `dL/dM = dL/dg`: the identity straight-through estimator (the paper's, and Zhou et al.'s
    /// and edge-popup's). The fused kernels implement it.
    StraightThrough,
    /// `dL/dM = dL/dg * sign(M)`: the straight-through estimator through `|M|`, for masks that
    /// rank the scores' magnitude (edge-popup's `GetSubnet(scores.abs())`); `sign(0) = +1`, as
    /// candle's `abs` backward. The fused kernels implement it too.
    StraightThroughAbs,
    /// `dL/dM = dL/dg * s'(M)` for the mask's [`MaskFn::surrogate`] `s`. Layers of such a mask
    /// run on the reference kernels.
    Surrogate,
}

/// The mask as used in the forward pass: the values of `g(M)`, with the gradient the mask
/// declares ([`MaskFn::gradient`]): `g(M).detach() + s(M) - s(M).detach()` with `s(M) = M` for
/// the straight-through estimator (as the authors wrote it) or the mask's surrogate.
pub fn apply(mask: &dyn MaskFn, scores: &Tensor, taus: Taus, ctx: &MaskCtx) -> Result<Tensor> {
    let hard = mask.hard(&scores.detach(), taus, ctx)?;
    let s = match mask.gradient() {
        MaskGradient::StraightThrough => scores.clone(),
        MaskGradient::StraightThroughAbs => scores.abs()?,
        MaskGradient::Surrogate => mask.surrogate(scores, taus)?,
    };
    anyhow::ensure!(
        s.dims() == scores.dims(),
        "mask {mask:?}: the surrogate has shape {:?}, the scores {:?}",
        s.dims(),
        scores.dims()
    );
    Ok((&s - s.detach())?.add(&hard)?)
}

/// The signed mask's values (equation 1): `-1` where `M <= tau_n`, `+1` where `M >= tau_p`,
/// `0` between, as a tensor of the scores' dtype. For masks that keep these values and change
/// only the gradient (a surrogate), so that their `hard` is one call.
pub fn signed_values(scores: &Tensor, taus: Taus) -> Result<Tensor> {
    let pos = scores.ge(taus.pos as f64)?.to_dtype(scores.dtype())?;
    let neg = scores.le(taus.neg as f64)?.to_dtype(scores.dtype())?;
    Ok((pos - neg)?)
}

/// [`signed_values`] into a slice, for a mask's [`MaskFn::hard_into`] fast path: on rayon's
/// threads in blocks (each value depends on its score alone), each block compiled for the
/// CPU's best instruction set.
pub fn signed_values_into(scores: &[f32], taus: Taus, out: &mut [f32]) {
    use crate::cpu::{vectorized, ELEMENTWISE_CHUNK};
    use rayon::prelude::*;
    out.par_chunks_mut(ELEMENTWISE_CHUNK)
        .zip(scores.par_chunks(ELEMENTWISE_CHUNK))
        .for_each(|(out, scores)| {
            vectorized(
                #[inline(always)]
                || {
                    for (o, &m) in out.iter_mut().zip(scores) {
                        *o = f32::from(m >= taus.pos) - f32::from(m <= taus.neg);
                    }
                },
            )
        });
}
