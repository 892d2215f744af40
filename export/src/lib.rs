//! Export of trained signed Supermasks to the compact `.ssm` format (`docs/format.md`) and a
//! sparse ternary inference engine that runs them.
//!
//! A trained signed Supermask with signed-constant weights is, per masked layer, one magnitude
//! and a pattern in `{-1, 0, +1}`; the format stores exactly that (plus the architecture and
//! any non-masked parameters), and the engine computes with it: add or subtract the kept
//! inputs, one multiply by the layer's magnitude.

mod act;
pub mod engine;
pub mod format;
pub mod grouped;
pub mod model;
mod plan;

pub use engine::Engine;
pub use model::{LayerWeights, SsmLayer, SsmModel};
