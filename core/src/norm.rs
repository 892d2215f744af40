//! Batch normalization in the modes the paper needs, and parameter-free pooling ops.
//!
//! Batch-norm parameters and statistics are never counted as weights and never masked. The
//! computations are ops in [`crate::ops`] (which pick fused or reference kernels); the pooling
//! ops are re-exported here from there.

use crate::{
    config::{BnMode, ForwardCtx},
    ops::{self, BatchNormArgs},
    Result,
};
use candle_core::{DType, Device, Tensor, Var, D};
use std::sync::Mutex;

pub use crate::ops::{fixed_affine, max_pool2, max_pool_same_stride1};

/// A batch-norm layer over channel dimension 1 of `[n, c]` or `[n, c, h, w]` inputs.
#[derive(Debug)]
pub struct BatchNorm {
    /// Path-style name (`stem.bn`, ...).
    pub name: String,
    /// Behaviour.
    pub mode: BnMode,
    channels: usize,
    gamma: Option<Var>,
    beta: Option<Var>,
    running: Mutex<(Tensor, Tensor)>,
    momentum: f64,
}

impl BatchNorm {
    /// A batch-norm layer for `channels` channels.
    pub fn new(name: &str, channels: usize, mode: BnMode, device: &Device) -> Result<Self> {
        let (gamma, beta) = if mode == BnMode::Learnable {
            (
                Some(Var::ones(channels, DType::F32, device)?),
                Some(Var::zeros(channels, DType::F32, device)?),
            )
        } else {
            (None, None)
        };
        let stats = (
            Tensor::zeros(channels, DType::F32, device)?,
            Tensor::ones(channels, DType::F32, device)?,
        );
        Ok(Self {
            name: name.into(),
            mode,
            channels,
            gamma,
            beta,
            running: Mutex::new(stats),
            momentum: ops::BN_MOMENTUM,
        })
    }

    /// Sets the momentum of the running averages (Keras convention: `running = momentum *
    /// running + (1 - momentum) * batch`); it must lie in [0, 1).
    pub fn set_momentum(&mut self, momentum: f64) -> Result<()> {
        anyhow::ensure!(
            (0.0..1.0).contains(&momentum),
            "{}: batch-norm momentum must be in [0, 1), got {momentum}",
            self.name
        );
        self.momentum = momentum;
        Ok(())
    }

    /// Momentum of the running averages.
    pub fn momentum(&self) -> f64 {
        self.momentum
    }

    /// Forward pass ([`crate::ops::batch_norm`]).
    pub fn forward_t(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let affine = match (&self.gamma, &self.beta) {
            (Some(g), Some(b)) => Some((g.as_tensor(), b.as_tensor())),
            _ => None,
        };
        let args = BatchNormArgs {
            name: &self.name,
            mode: self.mode,
            channels: self.channels,
            affine,
            running: &self.running,
            momentum: self.momentum,
        };
        ops::batch_norm(x, &args, ctx)
    }

    /// The constant factor this batch norm multiplies by when it has neither parameters nor
    /// statistics (mode `none`: `x / sqrt(1 + eps)`), so a layer can apply it in its epilogue;
    /// `None` in the other modes.
    pub fn fixed_scale(&self) -> Option<f64> {
        (self.mode == BnMode::None).then(|| 1.0 / (1.0 + ops::BN_EPS).sqrt())
    }

    /// Trainable parameters (`name.gamma`, `name.beta`) in learnable mode.
    pub fn params(&self) -> Vec<(String, &Var)> {
        let mut v = Vec::new();
        if let (Some(g), Some(b)) = (&self.gamma, &self.beta) {
            v.push((format!("{}.gamma", self.name), g));
            v.push((format!("{}.beta", self.name), b));
        }
        v
    }

    /// Named tensors for a checkpoint: parameters and running statistics.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<_> = self
            .params()
            .into_iter()
            .map(|(n, p)| (n, p.as_tensor().detach()))
            .collect();
        let run = self.running.lock().expect("running stats lock");
        v.push((format!("{}.running_mean", self.name), run.0.clone()));
        v.push((format!("{}.running_var", self.name), run.1.clone()));
        v
    }

    /// Restores what [`BatchNorm::named_tensors`] wrote.
    pub fn load_tensors(&mut self, get: &dyn Fn(&str) -> Result<Tensor>) -> Result<()> {
        let check = |key: String| -> Result<Tensor> {
            let t = get(&key)?;
            anyhow::ensure!(t.dims() == [self.channels], "{key}: shape {:?}", t.dims());
            Ok(t)
        };
        if let (Some(g), Some(b)) = (&self.gamma, &self.beta) {
            g.set(&check(format!("{}.gamma", self.name))?)?;
            b.set(&check(format!("{}.beta", self.name))?)?;
        }
        let stats = (
            check(format!("{}.running_mean", self.name))?,
            check(format!("{}.running_var", self.name))?,
        );
        *self.running.lock().expect("running stats lock") = stats;
        Ok(())
    }
}

/// Global average pooling `[n, c, h, w] -> [n, c]`.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    Ok(x.mean(D::Minus1)?.mean(D::Minus1)?)
}
