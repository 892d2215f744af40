//! Edge-popup (Ramanujan et al., "What's Hidden in a Randomly Weighted Neural Network?", CVPR
//! 2020) as a mask plugin: every layer keeps the fraction `keep` of its weights with the largest
//! score magnitude, exactly as allenai/hidden-networks' `GetSubnet` (`utils/conv_type.py`):
//!
//! ```text
//! j = int((1 - k) * scores.numel())        # f64, truncated
//! prune the j smallest |scores|, keep the rest (n - j)
//! ```
//!
//! Their forward pass ranks `scores.abs()` and their backward is the identity, so the score
//! gradient goes through the absolute value: `dL/dM = dL/d(W g(M)) * W * sign(M)`, the
//! framework's [`MaskGradient::StraightThroughAbs`], which its fused kernels train. Ties in `|M|` (which continuous scores do not
//! have) go by position, lower indices pruned first; PyTorch's unstable sort leaves them
//! unspecified. The thresholds (`tau_n`, `tau_p`) are unused.
//!
//! Their recipe, as presets (`configs/methods/`): weights signed Kaiming constants
//! `+-sqrt(2 / fan_in)` (`weight_init = { type = "he", dist = "signed-constant" }`, with
//! `gain = 1 / sqrt(keep)` for their optional fan scaling), scores
//! `kaiming_uniform_(a = sqrt(5))` = `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`
//! (`score_init = { type = "lecun", dist = "uniform", gain = 0.5773502691896258 }`), SGD with
//! momentum 0.9 and weight decay 1e-4 on the scores, learning rate 0.1 on the `cosine`
//! schedule, batch 128.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use supermask_core::{register_plugin, MaskCtx, MaskFn, MaskGradient, MaskRange, Result, Taus};

/// Keep each layer's `keep` fraction of weights with the largest `|M|`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgePopupMask {
    /// Fraction of each layer's weights kept, in (0, 1] (their `--prune-rate`, which despite
    /// its name is the share kept; the paper's `k`).
    pub keep: f64,
}

impl Default for EdgePopupMask {
    fn default() -> Self {
        Self { keep: 0.5 }
    }
}

/// The number of entries pruned out of `n`: `int((1 - keep) * n)`, as their code computes it.
pub fn pruned_count(keep: f64, n: usize) -> usize {
    ((1.0 - keep) * n as f64) as usize
}

/// Writes the top-k mask of `scores` into `out`: 1 for the `n - pruned_count(keep, n)` entries
/// of largest `|M|`, 0 for the rest (ties: lower positions pruned first).
pub fn top_k_into(scores: &[f32], keep: f64, out: &mut [f32]) {
    let n = scores.len();
    let j = pruned_count(keep, n);
    out.fill(1.0);
    if j == 0 {
        return;
    }
    let mut order: Vec<u32> = (0..n as u32).collect();
    let key = |i: &u32| (scores[*i as usize].abs(), *i);
    order.select_nth_unstable_by(j - 1, |a, b| {
        let (ka, kb) = (key(a), key(b));
        ka.0.total_cmp(&kb.0).then(ka.1.cmp(&kb.1))
    });
    for &i in &order[..j] {
        out[i as usize] = 0.0;
    }
}

#[typetag::serde(name = "edge-popup")]
impl MaskFn for EdgePopupMask {
    fn range(&self) -> MaskRange {
        MaskRange::Binary
    }

    fn validate(&self) -> Result<()> {
        supermask_core::anyhow::ensure!(
            self.keep > 0.0 && self.keep <= 1.0,
            "keep (the share of each layer's weights kept) must be in (0, 1], got {}",
            self.keep
        );
        Ok(())
    }

    fn hard(&self, scores: &Tensor, _taus: Taus, _ctx: &MaskCtx) -> Result<Tensor> {
        let values = scores
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        let mut out = vec![0f32; values.len()];
        top_k_into(&values, self.keep, &mut out);
        Ok(Tensor::from_vec(out, scores.shape(), scores.device())?.to_dtype(scores.dtype())?)
    }

    fn hard_into(&self, scores: &[f32], _taus: Taus, _ctx: &MaskCtx, out: &mut [f32]) -> bool {
        top_k_into(scores, self.keep, out);
        true
    }

    fn gradient(&self) -> MaskGradient {
        MaskGradient::StraightThroughAbs
    }
}

register_plugin!(
    Mask,
    "edge-popup",
    EdgePopupMask,
    "edge-popup {0,1}: each layer keeps its top `keep` share of |M| (hidden-networks' GetSubnet), gradient through |M|",
    example = "keep = 0.5"
);

/// Makes sure this crate is linked, so its registration exists (pass it to
/// `supermask_cli::main_with`, or call it before using the registry).
pub fn link() {
    std::hint::black_box(EdgePopupMask::default());
}
