//! Plain configuration and context types that behavioural modules share: which kernels run
//! (`[train.kernels]`), the per-forward context, the batch-norm mode and the masking config.
//! They depend only on the plugin traits ([`crate::mask`], [`crate::threshold`],
//! [`crate::init`]), so any module may use them without creating a dependency cycle.

use crate::{init::Initializer, mask::MaskFn, threshold::Threshold, Result};
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Which implementation of layers, activations, pooling, batch norm and the optimizer step to
/// use; [`crate::ops`] reads it and picks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KernelPath {
    /// Fused CPU kernels (falls back to the reference on other devices and dtypes).
    #[default]
    Fused,
    /// Generic candle ops: the reference implementation.
    Reference,
}

/// `[train.kernels]`: the kernel implementation and its sparse/dense switch.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelConfig {
    /// Fused (default) or reference.
    #[serde(default)]
    pub path: KernelPath,
    /// A masked layer whose share of non-zero mask entries is below this uses the sparse
    /// ternary kernels, else dense GEMM (0 = always dense, 1 = always sparse). The default is
    /// the crossover measured by `cargo bench --bench kernels` on the development machine; 3x3
    /// "same" convolutions whose kept entries the tap kernels take switch higher, up to 0.3
    /// (`fused::conv_layout`).
    #[serde(default = "default_sparse_below")]
    pub sparse_below: f64,
}

fn default_sparse_below() -> f64 {
    DEFAULT_SPARSE_BELOW
}

/// Default density below which masked layers use the sparse kernels.
pub const DEFAULT_SPARSE_BELOW: f64 = 0.2;

impl Default for KernelConfig {
    fn default() -> Self {
        Self {
            path: KernelPath::Fused,
            sparse_below: DEFAULT_SPARSE_BELOW,
        }
    }
}

impl KernelConfig {
    /// Checks `sparse_below` is in `[0, 1]`.
    pub fn validate(&self) -> Result<()> {
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.sparse_below),
            "train.kernels.sparse_below must be in [0, 1], got {}",
            self.sparse_below
        );
        Ok(())
    }
}

/// Per-forward information every layer may need.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ForwardCtx {
    /// Training mode (stochastic masks sample, BN uses batch statistics).
    pub train: bool,
    /// Global optimizer step (for per-step random streams).
    pub step: u64,
    /// Run seed.
    pub seed: u64,
    /// Fused or reference kernels.
    pub kernels: KernelConfig,
}

impl ForwardCtx {
    /// Evaluation context (default kernels).
    pub fn eval() -> Self {
        Self {
            train: false,
            step: 0,
            seed: 0,
            kernels: KernelConfig::default(),
        }
    }

    /// Training context at `step` of a run with `seed`, with `kernels`.
    pub fn train(step: u64, seed: u64, kernels: KernelConfig) -> Self {
        Self {
            train: true,
            step,
            seed,
            kernels,
        }
    }
}

/// How a batch-norm layer behaves (REPRODUCTION-NOTES, "Frozen BN").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BnMode {
    /// What the authors' "frozen BN" computed: a Keras BN in inference mode with its initial
    /// statistics (mean 0, variance 1), i.e. `x / sqrt(1 + eps)`; no normalization.
    #[default]
    None,
    /// Table 6's "BN": affine (gamma, beta trained), batch statistics in training, running
    /// statistics in evaluation.
    Learnable,
    /// Normalizes with running statistics only (updated from batches in training), no affine
    /// parameters.
    FrozenStats,
}

/// How the layers of a model are made: masked (a signed Supermask or another mask plugin) or
/// dense (the baseline).
///
/// It is read through [`MaskingTables`] (each plugin as its table), which the registry turns
/// into plugins ([`crate::registry`] implements the conversion), so config errors name the
/// plugin and list the known ones.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(
    tag = "mode",
    rename_all = "kebab-case",
    deny_unknown_fields,
    try_from = "MaskingTables"
)]
pub enum MaskingConfig {
    /// Frozen weights masked by trainable scores.
    Masked {
        /// The mask function `g`.
        mask: Arc<dyn MaskFn>,
        /// The threshold rule giving `(tau_n, tau_p)`.
        threshold: Arc<dyn Threshold>,
        /// Initializer of the frozen weights.
        weight_init: Arc<dyn Initializer>,
        /// Initializer of the scores.
        score_init: Arc<dyn Initializer>,
    },
    /// Trainable weights, no mask.
    Dense {
        /// Initializer of the weights.
        weight_init: Arc<dyn Initializer>,
    },
}

impl MaskingConfig {
    /// Checks every plugin's parameters.
    pub fn validate(&self) -> Result<()> {
        match self {
            MaskingConfig::Masked {
                mask,
                threshold,
                weight_init,
                score_init,
            } => {
                mask.validate().context("masking.mask")?;
                threshold.validate().context("masking.threshold")?;
                weight_init.validate().context("masking.weight_init")?;
                score_init.validate().context("masking.score_init")?;
            }
            MaskingConfig::Dense { weight_init } => {
                weight_init.validate().context("masking.weight_init")?
            }
        }
        Ok(())
    }

    /// The threshold rule of a masked config.
    pub fn threshold(&self) -> Option<&Arc<dyn Threshold>> {
        match self {
            MaskingConfig::Masked { threshold, .. } => Some(threshold),
            MaskingConfig::Dense { .. } => None,
        }
    }
}

/// [`MaskingConfig`] as written in a config file: each plugin as its table (`type` plus
/// parameters), before the registry builds it.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case", deny_unknown_fields)]
pub enum MaskingTables {
    /// See [`MaskingConfig::Masked`].
    Masked {
        /// The mask function's table.
        mask: toml::Table,
        /// The threshold rule's table.
        threshold: toml::Table,
        /// The weight initializer's table.
        weight_init: toml::Table,
        /// The score initializer's table.
        score_init: toml::Table,
    },
    /// See [`MaskingConfig::Dense`].
    Dense {
        /// The weight initializer's table.
        weight_init: toml::Table,
    },
}
