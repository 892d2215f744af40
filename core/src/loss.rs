//! Softmax cross-entropy and accuracy.

use crate::Result;
use candle_core::{DType, Tensor, D};

/// Row-wise log-softmax of `[batch, classes]` logits (max-shifted, numerically stable).
pub fn log_softmax(logits: &Tensor) -> Result<Tensor> {
    let lse = logits.log_sum_exp(D::Minus1)?.unsqueeze(1)?;
    Ok(logits.broadcast_sub(&lse)?)
}

/// Mean softmax cross-entropy of `[batch, classes]` logits against `u32` labels `[batch]`.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let logp = log_softmax(logits)?;
    let picked = logp.gather(&labels.unsqueeze(1)?, 1)?;
    Ok(picked.mean_all()?.neg()?)
}

/// Number of rows whose arg-max equals the label.
pub fn correct(logits: &Tensor, labels: &Tensor) -> Result<usize> {
    let pred = logits.argmax(D::Minus1)?;
    let eq = pred.eq(labels)?.to_dtype(DType::F32)?.sum_all()?;
    Ok(eq.to_scalar::<f32>()? as usize)
}
