//! The loss plugin trait, softmax helpers and accuracy.
//!
//! A loss is a plugin (`[loss] type = "..."` in configs, listed by `supermask plugins`); the
//! built-in ones live in `supermask-plugins` (`cross-entropy` on logits, the default, and the
//! authors' `clipped-cross-entropy` on probabilities).

use crate::Result;
use candle_core::{DType, Tensor, D};
use std::fmt::Debug;

/// A training loss over a batch of logits.
#[typetag::serde(tag = "type")]
pub trait Loss: Debug + Send + Sync {
    /// Checks the parameters (called when a config is loaded).
    fn validate(&self) -> Result<()> {
        Ok(())
    }

    /// Mean loss of `[batch, classes]` logits against `u32` labels `[batch]`: a scalar tensor
    /// on the autograd graph of `logits`.
    fn loss(&self, logits: &Tensor, labels: &Tensor) -> Result<Tensor>;

    /// The largest value a sample's loss can take, when the loss is bounded (the clipped
    /// cross-entropy: `-ln eps`); `None` for an unbounded loss. The divergence guard reads it:
    /// a net whose mean loss stays near the bound has saturated.
    fn max_value(&self) -> Option<f64> {
        None
    }
}

/// Row-wise log-softmax of `[batch, classes]` logits (max-shifted, numerically stable).
pub fn log_softmax(logits: &Tensor) -> Result<Tensor> {
    let lse = logits.log_sum_exp(D::Minus1)?.unsqueeze(1)?;
    Ok(logits.broadcast_sub(&lse)?)
}

/// Per-sample log-probability of the label, `[batch]`.
pub fn label_log_prob(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let logp = log_softmax(logits)?;
    Ok(logp.gather(&labels.unsqueeze(1)?, 1)?.squeeze(1)?)
}

/// Mean softmax cross-entropy of `[batch, classes]` logits against `u32` labels `[batch]`.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    Ok(label_log_prob(logits, labels)?.mean_all()?.neg()?)
}

/// Number of rows whose arg-max equals the label.
pub fn correct(logits: &Tensor, labels: &Tensor) -> Result<usize> {
    let pred = logits.argmax(D::Minus1)?;
    let eq = pred.eq(labels)?.to_dtype(DType::F32)?.sum_all()?;
    Ok(eq.to_scalar::<f32>()? as usize)
}
