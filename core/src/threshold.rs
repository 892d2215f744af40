//! The threshold plugin trait: gives `(tau_n, tau_p)` for every masked layer, computed once
//! from the initial scores and optionally recomputed during training.

use crate::Result;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::fmt::Debug;

/// The two thresholds of one layer, `tau_n < tau_p` (equation 1 of the paper).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Taus {
    /// Scores `<= neg` map to -1 (signed mask).
    pub neg: f32,
    /// Scores `>= pos` map to +1 (signed mask) or 1 (binary mask).
    pub pos: f32,
}

impl Taus {
    /// Checks `neg < pos` and that both are finite.
    pub fn validate(self) -> Result<Self> {
        anyhow::ensure!(
            self.neg.is_finite() && self.pos.is_finite(),
            "thresholds must be finite, got tau_n = {}, tau_p = {}",
            self.neg,
            self.pos
        );
        anyhow::ensure!(
            self.neg < self.pos,
            "thresholds must satisfy tau_n < tau_p, got tau_n = {} >= tau_p = {}",
            self.neg,
            self.pos
        );
        Ok(self)
    }
}

/// When a threshold is recomputed during training.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateEvery {
    /// Fixed after initialization.
    #[default]
    Never,
    /// After every optimizer step.
    Step,
    /// After every epoch.
    Epoch,
}

/// A threshold rule over all masked layers of a model (global rules need all of them).
#[typetag::serde(tag = "type")]
pub trait Threshold: Debug + Send + Sync {
    /// Checks the parameters (called when a config is loaded).
    fn validate(&self) -> Result<()>;

    /// Thresholds of every layer, from the layers' initial scores (in layer order).
    fn init(&self, scores: &[Tensor]) -> Result<Vec<Taus>>;

    /// When [`Threshold::update`] runs during training.
    fn every(&self) -> UpdateEvery {
        UpdateEvery::Never
    }

    /// New thresholds from the current scores; the default keeps the current ones.
    fn update(&self, scores: &[Tensor], current: &[Taus]) -> Result<Vec<Taus>> {
        let _ = scores;
        Ok(current.to_vec())
    }

    /// [`Threshold::update`] knowing where training is: `epoch` is the 0-based epoch of the
    /// step the new thresholds serve (the next one). Rules with a schedule over epochs (a
    /// sparsity ramp) override this; the default ignores the epoch.
    fn update_at(&self, scores: &[Tensor], current: &[Taus], epoch: usize) -> Result<Vec<Taus>> {
        let _ = epoch;
        self.update(scores, current)
    }
}
