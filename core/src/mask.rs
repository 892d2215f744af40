//! The mask-function plugin trait.
//!
//! A mask function maps a real score tensor `M` to mask values `g(M)`; the effective weight of a
//! masked layer is `W * g(M)`. In the backward pass `g` is treated as the identity (the
//! straight-through estimator, STE), so `dL/dM = dL/d(W*g(M)) * W`.

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

    /// The hard mask `g(M)` (no gradient), with the same shape and dtype as `scores`.
    fn hard(&self, scores: &Tensor, taus: Taus, ctx: &MaskCtx) -> Result<Tensor>;

    /// Writes `g(M)` of f32 CPU scores into `out` (same length) and returns `true`, or returns
    /// `false` when this mask has no such fast path (the fused kernels then call
    /// [`MaskFn::hard`]). Must give exactly the values of `hard`.
    fn hard_into(&self, scores: &[f32], taus: Taus, ctx: &MaskCtx, out: &mut [f32]) -> bool {
        let _ = (scores, taus, ctx, out);
        false
    }

    /// Whether the gradient to `M` is the identity straight-through estimator of the default
    /// [`MaskFn::apply`]. The fused kernels implement exactly that; a mask that overrides
    /// `apply` with another gradient must return `false` here and runs on the reference path.
    fn straight_through(&self) -> bool {
        true
    }

    /// The mask as used in the forward pass: the values of `g(M)`, the gradient of the identity
    /// (`g(M).detach() + M - M.detach()`, the STE as the authors wrote it).
    fn apply(&self, scores: &Tensor, taus: Taus, ctx: &MaskCtx) -> Result<Tensor> {
        let hard = self.hard(&scores.detach(), taus, ctx)?;
        Ok((scores - scores.detach())?.add(&hard)?)
    }
}
