//! Biprop (Diffenderfer & Kailkhura, "Multi-Prize Lottery Ticket Hypothesis", ICLR 2021) as a
//! mask plugin: edge-popup's mask (each layer keeps its top `keep` share of `|M|`) over the
//! binarised weights `alpha * sign(W)`, as chrundle/biprop's `GetQuantnet_binary`
//! (`utils/conv_type.py`):
//!
//! ```text
//! mask  = GetSubnet(|scores|, k)               # edge-popup's
//! alpha = sum(|W| * mask) / int(k * numel)     # one scalar per layer, no gradient
//! w     = sign(W) * alpha * mask
//! backward: dL/d|scores| = dL/dw * sign(W) * |W|, then through |scores|
//! ```
//!
//! so the score gradient is `dL/dw * W * sign(M)`, the framework's for a mask that rescales its
//! weights ([`MaskFn::scaled_weight`]) through `|M|` ([`MaskGradient::StraightThroughAbs`]), on the
//! fused kernels as on the reference. Note their denominator:
//! `int(k * n)`, not the kept count `n - int((1 - k) n)` (they differ by at most one); where
//! `int(k * n)` is 0 (a layer keeping less than one weight) their code divides by zero, and
//! this one divides by 1.
//! Checkpoints store each layer's `alpha` as `LAYER.alpha` (checked against the stored weights
//! and scores on load); exported models store each layer as the ternary `sign(W) * mask` with
//! magnitude `alpha`, which the inference engine runs, and the safetensors export carries
//! `LAYER.alpha` beside the frozen weights and scores.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use supermask_core::{register_plugin, MaskCtx, MaskFn, MaskGradient, MaskRange, Result, Taus};
use supermask_edge_popup::EdgePopupMask;

/// Edge-popup's top-k mask over `alpha * sign(W)`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BipropMask {
    /// Fraction of each layer's weights kept, in (0, 1] (their `--prune-rate`).
    pub keep: f64,
}

impl Default for BipropMask {
    fn default() -> Self {
        Self { keep: 0.5 }
    }
}

impl BipropMask {
    fn top_k(&self) -> EdgePopupMask {
        EdgePopupMask { keep: self.keep }
    }

    /// The layer's scale: `sum(|W| * mask) / int(keep * n)` (their formula).
    pub fn alpha(&self, w: &Tensor, hard: &Tensor) -> Result<f32> {
        let n = w.elem_count();
        let denominator = ((self.keep * n as f64) as usize).max(1);
        let kept = (w.abs()? * hard)?.to_dtype(DType::F64)?.sum_all()?;
        Ok((kept.to_scalar::<f64>()? / denominator as f64) as f32)
    }
}

#[typetag::serde(name = "biprop")]
impl MaskFn for BipropMask {
    fn range(&self) -> MaskRange {
        MaskRange::Binary
    }

    fn validate(&self) -> Result<()> {
        self.top_k().validate()
    }

    fn hard(&self, scores: &Tensor, taus: Taus, ctx: &MaskCtx) -> Result<Tensor> {
        self.top_k().hard(scores, taus, ctx)
    }

    fn hard_into(&self, scores: &[f32], taus: Taus, ctx: &MaskCtx, out: &mut [f32]) -> bool {
        self.top_k().hard_into(scores, taus, ctx, out)
    }

    fn gradient(&self) -> MaskGradient {
        MaskGradient::StraightThroughAbs
    }

    fn scaled_weight(&self, w: &Tensor, hard: &Tensor) -> Result<Option<Tensor>> {
        let alpha = self.alpha(w, hard)?;
        Ok(Some((w.sign()? * f64::from(alpha))?))
    }

    fn derived(&self, w: &Tensor, hard: &Tensor) -> Result<Vec<(&'static str, Tensor)>> {
        Ok(vec![(
            "alpha",
            Tensor::new(&[self.alpha(w, hard)?], w.device())?,
        )])
    }
}

register_plugin!(
    Mask,
    "biprop",
    BipropMask,
    "biprop {0,1} over alpha*sign(W): edge-popup's top `keep` share of |M|, alpha = kept |W| sum / int(keep n) (multi-prize tickets)",
    example = "keep = 0.5"
);

/// Makes sure this crate is linked, so its registration exists (pass it to
/// `supermask_cli::main_with`, or call it before using the registry).
pub fn link() {
    std::hint::black_box(BipropMask::default());
    supermask_edge_popup::link();
}
