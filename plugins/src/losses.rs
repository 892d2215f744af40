//! Training losses over logits.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use supermask_core::{loss, register_plugin, Loss, Result};

/// Softmax cross-entropy computed from the logits (log-sum-exp, never saturates): the
/// default loss.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrossEntropy {}

#[typetag::serde(name = "cross-entropy")]
impl Loss for CrossEntropy {
    fn loss(&self, logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
        loss::cross_entropy(logits, labels)
    }
}
register_plugin!(
    Loss,
    "cross-entropy",
    CrossEntropy,
    "softmax cross-entropy on the logits (the default)"
);

fn default_eps() -> f64 {
    1e-7
}

/// The authors' loss (REPRODUCTION-NOTES, "Corrections"): their models end in a softmax and
/// train with Keras' categorical cross-entropy on probabilities, which clips each probability
/// to `[eps, 1 - eps]` before the logarithm. A sample's loss is therefore at most `-ln eps`
/// (16.1 for the default `eps = 1e-7`), and a sample whose label probability is clipped (a
/// saturated wrong answer, or a right one closer to 1 than `eps`) contributes no gradient,
/// as TensorFlow's `clip_by_value` passes none outside its range. This bounds the runaway that
/// the straight-through score gradient otherwise feeds in the Conv nets and ResNets.
///
/// The clip is applied to the label's log-probability, `ln p` in `[ln eps, ln(1 - eps)]`,
/// which is the same comparison in exact arithmetic and keeps the unclipped loss as precise
/// as [`CrossEntropy`]'s (with which it agrees wherever nothing is clipped).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClippedCrossEntropy {
    /// Probabilities are clipped to `[eps, 1 - eps]`; `eps` in `(0, 0.5)`.
    #[serde(default = "default_eps")]
    pub eps: f64,
}

impl Default for ClippedCrossEntropy {
    fn default() -> Self {
        Self { eps: default_eps() }
    }
}

#[typetag::serde(name = "clipped-cross-entropy")]
impl Loss for ClippedCrossEntropy {
    fn validate(&self) -> Result<()> {
        anyhow::ensure!(
            self.eps > 0.0 && self.eps < 0.5,
            "clipped-cross-entropy: eps must be in (0, 0.5), got {}",
            self.eps
        );
        Ok(())
    }

    fn loss(&self, logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
        let lp = loss::label_log_prob(logits, labels)?;
        // Scalars convert to the logits' dtype in the comparisons and the clamp.
        let (lo, hi) = (self.eps.ln(), (-self.eps).ln_1p());
        // 1 where the probability lies inside the clip range (the gradient passes), else 0.
        let dt = lp.dtype();
        let inside = (lp.ge(lo)?.to_dtype(dt)? * lp.le(hi)?.to_dtype(dt)?)?;
        let clipped = lp.clamp(lo, hi)?.detach();
        let outside = inside.affine(-1.0, 1.0)?;
        let picked = ((&lp * &inside)? + (clipped * outside)?)?;
        Ok(picked.mean_all()?.neg()?)
    }

    /// A sample's loss is at most `-ln eps` (the label probability clipped at `eps`).
    fn max_value(&self) -> Option<f64> {
        Some(-self.eps.ln())
    }
}
register_plugin!(
    Loss,
    "clipped-cross-entropy",
    ClippedCrossEntropy,
    "the authors' Keras loss: softmax, probabilities clipped to [eps, 1-eps] (eps 1e-7), no gradient where clipped"
);
