//! Optimizers and learning-rate schedules.
//!
//! SGDW is what the paper's authors used (REPRODUCTION-NOTES): SGD with Nesterov momentum 0.9
//! and *decoupled* weight decay (`v -= wd * v` each step, not added to the gradient, not
//! multiplied by the learning rate), with learning rate and decay following the same staircase
//! exponential schedule. The update follows Keras/TF-Addons SGDW: with gradient `g` taken at
//! the pre-decay parameter `p`,
//!
//! ```text
//! v <- m v - lr g
//! p <- p - wd p + (nesterov ? m v - lr g : v)
//! ```
//!
//! Plain SGD with an L2 penalty (`g += l2 p`) is available for comparison. All optimizer state
//! is detached from the autograd graph.

use crate::{config::KernelPath, fused::StepParams, ops, Result};
use candle_core::{backprop::GradStore, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

fn default_momentum() -> f64 {
    0.9
}
fn default_true() -> bool {
    true
}

/// Optimizer settings (`[optimizer]` in configs).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum OptimizerConfig {
    /// SGD with momentum and decoupled weight decay (the paper's optimizer).
    Sgdw {
        /// Initial learning rate.
        lr: f64,
        /// Momentum.
        #[serde(default = "default_momentum")]
        momentum: f64,
        /// Nesterov momentum.
        #[serde(default = "default_true")]
        nesterov: bool,
        /// Decoupled weight decay per step (scheduled like the learning rate).
        weight_decay: f64,
    },
    /// SGD with momentum and an L2 penalty added to the gradient.
    Sgd {
        /// Initial learning rate.
        lr: f64,
        /// Momentum.
        #[serde(default = "default_momentum")]
        momentum: f64,
        /// Nesterov momentum.
        #[serde(default = "default_true")]
        nesterov: bool,
        /// L2 coefficient (gradient += l2 * p).
        #[serde(default)]
        l2: f64,
    },
}

impl OptimizerConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        let (lr, momentum, decay) = match *self {
            Self::Sgdw {
                lr,
                momentum,
                weight_decay,
                ..
            } => (lr, momentum, weight_decay),
            Self::Sgd {
                lr, momentum, l2, ..
            } => (lr, momentum, l2),
        };
        anyhow::ensure!(
            lr.is_finite() && lr > 0.0,
            "optimizer.lr must be > 0, got {lr}"
        );
        anyhow::ensure!(
            (0.0..1.0).contains(&momentum),
            "optimizer.momentum must be in [0, 1), got {momentum}"
        );
        anyhow::ensure!(
            decay.is_finite() && (0.0..1.0).contains(&decay),
            "optimizer weight decay / l2 must be in [0, 1), got {decay}"
        );
        Ok(())
    }

    /// The initial learning rate.
    pub fn lr(&self) -> f64 {
        match *self {
            Self::Sgdw { lr, .. } | Self::Sgd { lr, .. } => lr,
        }
    }

    /// The momentum.
    pub fn momentum(&self) -> f64 {
        match *self {
            Self::Sgdw { momentum, .. } | Self::Sgd { momentum, .. } => momentum,
        }
    }
}

/// Learning-rate (and SGDW decay) schedule (`[schedule]` in configs).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Schedule {
    /// Constant.
    #[default]
    Constant,
    /// `factor = rate ^ floor(step / steps)` (TF's `ExponentialDecay(staircase=True)`), applied
    /// to the learning rate and to SGDW's weight decay.
    StaircaseExponential {
        /// Multiplier per stair, e.g. 0.96.
        rate: f64,
        /// Steps per stair, e.g. 3900 (10 * 390, the authors' value).
        steps: u64,
    },
    /// Keras' `ReduceLROnPlateau` on the training loss (what the paper's ResNets used:
    /// factor 0.2, patience 15): after `patience` epochs without an improvement of more than
    /// `min_delta`, the learning rate (not the decay) is multiplied by `factor`.
    ReduceOnPlateau {
        /// Multiplier on a plateau, e.g. 0.2.
        factor: f64,
        /// Epochs without improvement before reducing.
        patience: usize,
        /// Smallest decrease of the loss that counts as an improvement.
        #[serde(default = "default_min_delta")]
        min_delta: f64,
    },
    /// Cosine annealing set at the start of every epoch, as edge-popup's and biprop's
    /// `cosine_lr` (allenai/hidden-networks `utils/schedulers.py`, no warm-up):
    /// `factor = 0.5 (1 + cos(pi e / E))` for the 0-based epoch `e` of `E = train.epochs`;
    /// it never reaches 0. Applied to the learning rate and to SGDW's weight decay.
    Cosine,
}

/// Where training is, for step- and epoch-driven schedules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Optimizer steps taken.
    pub step: u64,
    /// Steps in every epoch (every epoch runs the same number).
    pub steps_per_epoch: u64,
    /// Epochs of the run (`train.epochs`).
    pub epochs: usize,
}

fn default_min_delta() -> f64 {
    1e-4
}

/// Running state of [`Schedule::ReduceOnPlateau`] (saved in checkpoints).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PlateauState {
    /// Current multiplier of the learning rate.
    pub factor: f64,
    /// Best loss so far (none before the first epoch).
    pub best: Option<f64>,
    /// Epochs since the last improvement.
    pub wait: usize,
}

impl Default for PlateauState {
    fn default() -> Self {
        Self {
            factor: 1.0,
            best: None,
            wait: 0,
        }
    }
}

impl Schedule {
    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Self::Constant | Self::Cosine => {}
            Self::StaircaseExponential { rate, steps } => {
                anyhow::ensure!(rate > 0.0 && rate <= 1.0, "schedule.rate must be in (0, 1]");
                anyhow::ensure!(steps > 0, "schedule.steps must be > 0");
            }
            Self::ReduceOnPlateau {
                factor,
                patience,
                min_delta,
            } => {
                anyhow::ensure!(
                    factor > 0.0 && factor < 1.0,
                    "schedule.factor must be in (0, 1)"
                );
                anyhow::ensure!(patience > 0, "schedule.patience must be > 0");
                anyhow::ensure!(min_delta >= 0.0, "schedule.min_delta must be >= 0");
            }
        }
        Ok(())
    }

    /// Multiplier of the initial learning rate and weight decay at `at.step`.
    pub fn factor(&self, at: Progress) -> f64 {
        match *self {
            Self::Constant | Self::ReduceOnPlateau { .. } => 1.0,
            Self::StaircaseExponential { rate, steps } => rate.powi((at.step / steps) as i32),
            Self::Cosine => {
                let epoch = at.step.checked_div(at.steps_per_epoch).unwrap_or(0) as f64;
                let epochs = at.epochs.max(1) as f64;
                0.5 * (1.0 + (std::f64::consts::PI * epoch.min(epochs) / epochs).cos())
            }
        }
    }

    /// Epoch-end update of the plateau state from the monitored loss.
    pub fn end_epoch(&self, state: &mut PlateauState, loss: f64) {
        if let Self::ReduceOnPlateau {
            factor,
            patience,
            min_delta,
        } = *self
        {
            if state.best.is_none_or(|best| loss < best - min_delta) {
                state.best = Some(loss);
                state.wait = 0;
            } else {
                state.wait += 1;
                if state.wait >= patience {
                    state.factor *= factor;
                    state.wait = 0;
                }
            }
        }
    }
}

/// Learning-rate warm-up (`[warmup]` in configs): for the first `steps` optimizer steps the
/// learning rate (not SGDW's weight decay) is multiplied by a factor below 1, on top of the
/// [`Schedule`]. `linear` ramps the factor from `start` at step 0 towards 1 (Goyal et al.
/// 2017); `constant` holds it at `start` and then jumps to 1 (He et al. 2016 trained their
/// ResNet110 at a tenth of the rate for its first 400 steps). Off by default (`steps = 0`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Warmup {
    /// Number of warm-up steps (0: no warm-up).
    #[serde(default)]
    pub steps: u64,
    /// Factor at step 0, in (0, 1].
    #[serde(default = "default_warmup_start")]
    pub start: f64,
    /// `linear` (default) or `constant`.
    #[serde(default)]
    pub shape: WarmupShape,
}

/// How [`Warmup`] reaches the full learning rate.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum WarmupShape {
    /// `start + (1 - start) * step / steps`.
    #[default]
    Linear,
    /// `start` until `steps`, then 1.
    Constant,
}

fn default_warmup_start() -> f64 {
    0.1
}

impl Default for Warmup {
    fn default() -> Self {
        Self {
            steps: 0,
            start: default_warmup_start(),
            shape: WarmupShape::Linear,
        }
    }
}

impl Warmup {
    /// Whether the warm-up is off (nothing to record in a run's config).
    pub fn is_off(&self) -> bool {
        self.steps == 0
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        anyhow::ensure!(
            self.start.is_finite() && self.start > 0.0 && self.start <= 1.0,
            "warmup.start must be in (0, 1], got {}",
            self.start
        );
        Ok(())
    }

    /// Multiplier of the learning rate at optimizer step `step` (0-based).
    pub fn factor(&self, step: u64) -> f64 {
        if step >= self.steps {
            return 1.0;
        }
        match self.shape {
            WarmupShape::Constant => self.start,
            WarmupShape::Linear => {
                self.start + (1.0 - self.start) * step as f64 / self.steps as f64
            }
        }
    }
}

/// SGD / SGDW over a fixed list of named variables. Its state (the momentum buffers) is
/// keyed by the variables' names, so a checkpoint restores it whatever the order of the
/// parameters, and a buffer for a parameter the model does not have is an error.
pub struct Optimizer {
    config: OptimizerConfig,
    /// The parameters' names (checkpoint names), in the order `step` receives them.
    names: Vec<String>,
    /// Velocity of the reference path (and as loaded from a checkpoint).
    velocity: Vec<Option<Tensor>>,
    /// Velocity of the fused path, a host buffer updated in place.
    host: Vec<Option<(Vec<f32>, Vec<usize>)>>,
    path: KernelPath,
}

impl Optimizer {
    /// An optimizer for the parameters called `names` (in the order [`Optimizer::step`]
    /// receives them).
    pub fn new(config: OptimizerConfig, names: Vec<String>) -> Self {
        let n = names.len();
        Self {
            config,
            names,
            velocity: vec![None; n],
            host: vec![None; n],
            path: KernelPath::default(),
        }
    }

    /// Selects the fused (default; in-place, CPU f32 only) or the reference update
    /// ([`crate::ops::sgdw_step`] picks).
    pub fn with_path(mut self, path: KernelPath) -> Self {
        self.path = path;
        self
    }

    /// The parameters' names.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Momentum buffers by parameter name (for checkpoints); parameters that have not been
    /// stepped yet have none.
    pub fn velocity(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for ((name, t), h) in self.names.iter().zip(&self.velocity).zip(&self.host) {
            let t = match (t, h) {
                (_, Some((h, dims))) => Tensor::from_slice(h, dims.as_slice(), &Device::Cpu)?,
                (Some(t), None) => t.clone(),
                (None, None) => continue,
            };
            out.push((name.clone(), t));
        }
        Ok(out)
    }

    /// Restores momentum buffers by parameter name; parameters without one start from zero.
    /// A buffer whose name is not a parameter, or whose shape differs from the parameter's
    /// (`shapes`, in the order of [`Optimizer::names`]), is an error naming it.
    pub fn set_velocity(
        &mut self,
        mut by_name: std::collections::HashMap<String, Tensor>,
        shapes: &[Vec<usize>],
    ) -> Result<()> {
        anyhow::ensure!(
            shapes.len() == self.names.len(),
            "optimizer: {} parameter shapes for {} parameters",
            shapes.len(),
            self.names.len()
        );
        let mut velocity = Vec::with_capacity(self.names.len());
        for (name, shape) in self.names.iter().zip(shapes) {
            let v = match by_name.remove(name) {
                Some(t) => {
                    anyhow::ensure!(
                        t.dims() == shape.as_slice(),
                        "optimizer state of {name} has shape {:?}, the parameter {:?}",
                        t.dims(),
                        shape
                    );
                    Some(t.detach())
                }
                None => None,
            };
            velocity.push(v);
        }
        if let Some(extra) = by_name.keys().min() {
            anyhow::bail!(
                "optimizer state for `{extra}`, which is not a parameter of this model \
                 (parameters: {})",
                self.names.join(", ")
            );
        }
        self.velocity = velocity;
        self.host = vec![None; self.names.len()];
        Ok(())
    }

    /// One step on `params` with gradients from `grads`; `lr_factor` scales the learning rate
    /// and `wd_factor` the decoupled weight decay.
    pub fn step(
        &mut self,
        params: &[&Var],
        grads: &GradStore,
        lr_factor: f64,
        wd_factor: f64,
    ) -> Result<()> {
        anyhow::ensure!(
            params.len() == self.names.len(),
            "optimizer got {} parameters, built for {}",
            params.len(),
            self.names.len()
        );
        let (lr, m, nesterov, wd, l2) = match self.config {
            OptimizerConfig::Sgdw {
                lr,
                momentum,
                nesterov,
                weight_decay,
            } => (lr, momentum, nesterov, weight_decay, 0.0),
            OptimizerConfig::Sgd {
                lr,
                momentum,
                nesterov,
                l2,
            } => (lr, momentum, nesterov, 0.0, l2),
        };
        let h = StepParams {
            lr: lr * lr_factor,
            momentum: m,
            nesterov,
            wd: wd * wd_factor,
            l2,
        };
        for ((var, vel), host) in params
            .iter()
            .zip(self.velocity.iter_mut())
            .zip(self.host.iter_mut())
        {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            ops::sgdw_step(var, g, vel, host, &h, self.path)?;
        }
        Ok(())
    }
}
