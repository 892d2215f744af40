//! Core of **supermask**: the plugin traits (mask function, threshold, initializer), the
//! masked and dense layers built from them, the plugin registry, the model trait, the loss
//! and the optimizers.
//!
//! The method is "Signing the Supermask" (Koster et al., ICLR 2022): every masked layer holds a
//! frozen weight `W` and a trainable score tensor `M` of the same shape; the effective weight is
//! `W * g(M)` where the mask function `g` maps scores to a small set of values (for the signed
//! mask `{-1, 0, +1}`, equation 1 of the paper). Gradients pass straight through `g`.
//!
//! Concrete plugins live in `supermask-plugins`; models in `supermask-models`.

pub mod arch;
pub mod awake;
pub mod build;
pub mod config;
mod cpu;
pub mod fsio;
pub mod fused;
pub mod init;
pub mod layer;
pub mod limits;
pub mod loss;
pub mod mask;
pub mod model;
#[cfg(test)]
mod module_graph;
pub mod network;
pub mod norm;
pub mod ops;
pub mod optim;
pub mod registry;
pub mod rng;
pub mod tape;
pub mod threshold;

pub use arch::{Architecture, Step};
pub use build::build_model;
pub use config::{BnMode, ForwardCtx, KernelConfig, KernelPath, MaskingConfig};
pub use init::{sample_with_variance, Distribution, Fans, Initializer};
pub use layer::{DenseLayer, Layer, LayerFactory, LayerOp, LayerSpec, MaskedLayer};
pub use loss::Loss;
pub use mask::{MaskCtx, MaskFn, MaskGradient, MaskRange};
pub use model::{trainable_params, Model, ModelSpec};
pub use network::Network;
pub use norm::BatchNorm;
pub use registry::{PluginEntry, PluginKind, Registry};
pub use threshold::{Taus, Threshold, UpdateEvery};

/// Result type used throughout supermask.
pub type Result<T> = anyhow::Result<T>;

#[doc(hidden)]
pub use anyhow;
#[doc(hidden)]
pub use inventory;
#[doc(hidden)]
pub use toml;
