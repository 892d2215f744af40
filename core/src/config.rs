//! Plain configuration types that behavioural modules share: which kernels run
//! (`[train.kernels]`). They depend on nothing else in the crate, so any module may use them
//! without creating a dependency cycle.

use crate::Result;
use serde::{Deserialize, Serialize};

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
    /// the crossover measured by `cargo bench --bench kernels` on the development machine.
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
