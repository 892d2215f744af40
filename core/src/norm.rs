//! Batch normalization in the modes the paper needs, and parameter-free pooling ops.
//!
//! Batch-norm parameters and statistics are never counted as weights and never masked.

use crate::{
    fused::{self, KernelConfig},
    layer::ForwardCtx,
    Result,
};
use anyhow::Context;
use candle_core::{DType, Device, Tensor, Var, D};
use serde::{Deserialize, Serialize};
use std::sync::Mutex;

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

/// Keras' BatchNormalization defaults.
const EPS: f64 = 1e-3;
const MOMENTUM: f64 = 0.99;

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
        })
    }

    fn shape_for(&self, x: &Tensor) -> Result<Vec<usize>> {
        anyhow::ensure!(
            x.rank() >= 2 && x.dims()[1] == self.channels,
            "{}: expects {} channels in dim 1, got {:?}",
            self.name,
            self.channels,
            x.dims()
        );
        let mut s = vec![1; x.rank()];
        s[1] = self.channels;
        Ok(s)
    }

    /// Forward pass.
    pub fn forward_t(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        if ctx.kernels.fused_for(x) {
            return self
                .forward_fused(x, ctx)
                .with_context(|| self.name.clone());
        }
        if self.mode == BnMode::None {
            return Ok(x.affine(1.0 / (1.0 + EPS).sqrt(), 0.0)?);
        }
        let shape = self.shape_for(x)?;
        let reduce: Vec<usize> = (0..x.rank()).filter(|&d| d != 1).collect();
        let (mean, var) = if ctx.train {
            let mean = x.mean_keepdim(reduce.as_slice())?;
            let centered = x.broadcast_sub(&mean)?;
            let var = centered.sqr()?.mean_keepdim(reduce.as_slice())?;
            let mut run = self.running.lock().expect("running stats lock");
            let upd = |old: &Tensor, new: &Tensor| -> Result<Tensor> {
                Ok((old.affine(MOMENTUM, 0.0)?
                    + new.detach().flatten_all()?.affine(1.0 - MOMENTUM, 0.0)?)?)
            };
            *run = (upd(&run.0, &mean)?, upd(&run.1, &var)?);
            if self.mode == BnMode::Learnable {
                (mean, var)
            } else {
                (
                    run.0.reshape(shape.as_slice())?,
                    run.1.reshape(shape.as_slice())?,
                )
            }
        } else {
            let run = self.running.lock().expect("running stats lock");
            (
                run.0.reshape(shape.as_slice())?,
                run.1.reshape(shape.as_slice())?,
            )
        };
        let y = x
            .broadcast_sub(&mean)?
            .broadcast_div(&(var + EPS)?.sqrt()?)?;
        match (&self.gamma, &self.beta) {
            (Some(g), Some(b)) => Ok(y
                .broadcast_mul(&g.as_tensor().reshape(shape.as_slice())?)?
                .broadcast_add(&b.as_tensor().reshape(shape.as_slice())?)?),
            _ => Ok(y),
        }
    }

    /// The fused CPU path: the same statistics and running-average updates as the reference,
    /// with the normalization as one op (batch statistics in training with learnable scale and
    /// shift, a per-channel affine map otherwise).
    fn forward_fused(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        self.shape_for(x)?;
        let c = self.channels;
        if self.mode == BnMode::None {
            let (scale, shift) = fixed_affine(BnMode::None, c, None, None)?;
            return fused::channel_affine(x, scale, shift);
        }
        if ctx.train {
            let (mean, var) = fused::batch_stats(x)?;
            {
                let mut run = self.running.lock().expect("running stats lock");
                let dev = x.device();
                let upd = |old: &Tensor, new: &[f32]| -> Result<Tensor> {
                    let new = Tensor::from_slice(new, c, dev)?;
                    Ok((old.affine(MOMENTUM, 0.0)? + new.affine(1.0 - MOMENTUM, 0.0)?)?)
                };
                *run = (upd(&run.0, &mean)?, upd(&run.1, &var)?);
            }
            if let (BnMode::Learnable, Some(g), Some(b)) = (self.mode, &self.gamma, &self.beta) {
                return fused::batch_norm_train(x, g.as_tensor(), b.as_tensor(), mean, &var, EPS);
            }
        }
        // Fixed statistics: the running ones (frozen-stats mode, or evaluation).
        let (rm, rv) = {
            let run = self.running.lock().expect("running stats lock");
            (run.0.to_vec1::<f32>()?, run.1.to_vec1::<f32>()?)
        };
        let affine = match (&self.gamma, &self.beta) {
            (Some(g), Some(b)) => Some((g.as_tensor().to_vec1::<f32>()?, b.as_tensor().to_vec1()?)),
            _ => None,
        };
        let (scale, shift) = fixed_affine(
            self.mode,
            c,
            affine.as_ref().map(|(g, b)| (g.as_slice(), b.as_slice())),
            Some((&rm, &rv)),
        )?;
        fused::channel_affine(x, scale, shift)
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

/// The per-channel map `x * scale + shift` a batch-norm layer of `mode` over `c` channels
/// computes with fixed statistics (evaluation, or frozen-stats training): `stats` are the
/// running `(mean, var)`, `affine` the learnable `(gamma, beta)` (`None`: 1 and 0). Mode `none`
/// needs neither (`x / sqrt(1 + eps)`). The fused path and the inference engine both use it,
/// so they compute the same constants.
pub fn fixed_affine(
    mode: BnMode,
    c: usize,
    affine: Option<(&[f32], &[f32])>,
    stats: Option<(&[f32], &[f32])>,
) -> Result<(Vec<f32>, Vec<f32>)> {
    if mode == BnMode::None {
        let scale = (1.0 / (1.0 + EPS).sqrt()) as f32;
        return Ok((vec![scale; c], vec![0.0; c]));
    }
    let (mean, var) = stats.context("batch norm: running statistics are needed")?;
    anyhow::ensure!(
        mean.len() == c
            && var.len() == c
            && affine.is_none_or(|(g, b)| g.len() == c && b.len() == c),
        "batch norm: statistics or parameters are not of {c} channels"
    );
    let eps = EPS as f32;
    let (scale, shift) = (0..c)
        .map(|i| {
            let (g, b) = affine.map_or((1.0, 0.0), |(g, b)| (g[i], b[i]));
            let scale = g / (var[i] + eps).sqrt();
            (scale, b - mean[i] * scale)
        })
        .unzip();
    Ok((scale, shift))
}

/// Max-pooling with a `k x k` window, stride 1 and "same" padding (padded positions never win).
/// The fused kernel when `kernels` asks for it (CPU f32); the reference is built from shifted
/// element-wise maxima so it has a gradient (candle's pooling backward needs stride = kernel).
pub fn max_pool_same_stride1(x: &Tensor, k: usize, kernels: &KernelConfig) -> Result<Tensor> {
    anyhow::ensure!(k % 2 == 1, "same max-pool needs an odd window, got {k}");
    if let Some(y) = fused::max_pool(x, k, 1, k / 2, kernels)? {
        return Ok(y);
    }
    let (n, c, h, w) = x.dims4().context("max_pool_same_stride1")?;
    let p = k / 2;
    let neg = |hh: usize, ww: usize| Tensor::full(f32::MIN, (n, c, hh, ww), x.device());
    let padded = Tensor::cat(&[&neg(h, p)?, x, &neg(h, p)?], 3)?;
    let padded = Tensor::cat(&[&neg(p, w + 2 * p)?, &padded, &neg(p, w + 2 * p)?], 2)?;
    let mut out: Option<Tensor> = None;
    for dy in 0..k {
        for dx in 0..k {
            let s = padded.narrow(2, dy, h)?.narrow(3, dx, w)?;
            out = Some(match out {
                None => s,
                Some(o) => o.maximum(&s)?,
            });
        }
    }
    Ok(out.expect("k >= 1"))
}

/// Max-pooling `2 x 2`, stride 2 (odd sizes are floored). The fused kernel when `kernels` asks
/// for it (CPU f32); the reference takes the maximum over a `[n, c, h/2, 2, w/2, 2]` view,
/// because candle's `max_pool2d` backward (0.11.1) scales the gradient by 1/4.
pub fn max_pool2(x: &Tensor, kernels: &KernelConfig) -> Result<Tensor> {
    if let Some(y) = fused::max_pool(x, 2, 2, 0, kernels)? {
        return Ok(y);
    }
    let (n, c, h, w) = x.dims4().context("max_pool2")?;
    let (oh, ow) = (h / 2, w / 2);
    let x = x.narrow(2, 0, 2 * oh)?.narrow(3, 0, 2 * ow)?.contiguous()?;
    Ok(x.reshape((n, c, oh, 2, ow, 2))?
        .max_keepdim(5)?
        .max_keepdim(3)?
        .reshape((n, c, oh, ow))?)
}

/// Global average pooling `[n, c, h, w] -> [n, c]`.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    Ok(x.mean(D::Minus1)?.mean(D::Minus1)?)
}
