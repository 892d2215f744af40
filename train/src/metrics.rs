//! Per-epoch metrics, as written to `metrics.jsonl`.

use serde::{Deserialize, Serialize};

/// Mask statistics of one layer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LayerMetrics {
    /// Layer name (`fc1`, ...).
    pub name: String,
    /// `sum |g(M)| / entries` of this layer (1 for dense layers).
    pub remaining: f64,
    /// Share of -1 entries.
    pub neg: f64,
    /// Share of 0 entries.
    pub zero: f64,
    /// Share of +1 entries.
    pub pos: f64,
    /// Number of weights.
    pub weights: usize,
    /// Current `tau_n` (absent for dense layers).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tau_n: Option<f32>,
    /// Current `tau_p` (absent for dense layers).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tau_p: Option<f32>,
}

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EpochMetrics {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Optimizer steps so far.
    pub step: u64,
    /// Learning rate at the end of the epoch.
    pub lr: f64,
    /// Mean training loss over the epoch's batches.
    pub train_loss: f64,
    /// Training accuracy over the epoch (fraction).
    pub train_acc: f64,
    /// Test loss after the epoch.
    pub test_loss: f64,
    /// Test accuracy after the epoch (fraction).
    pub test_acc: f64,
    /// Validation loss after the epoch, when the run holds out a validation set
    /// (`data.validation`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    /// Validation accuracy after the epoch (fraction), when the run holds out a validation set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_acc: Option<f64>,
    /// Remaining weights over all masked layers: `sum |g(M)| / entries` (paper's definition).
    pub remaining: f64,
    /// Wall-clock seconds of the epoch's training (without evaluation).
    pub seconds: f64,
    /// Wall-clock seconds of the evaluation.
    pub eval_seconds: f64,
    /// Per-layer statistics.
    pub layers: Vec<LayerMetrics>,
}
