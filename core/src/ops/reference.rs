//! The reference implementations: generic candle ops, differentiable by candle's autograd, on
//! any device and dtype. [`crate::ops`] runs them when the fused kernels do not apply; the
//! tests compare the fused kernels against them.

use super::{BatchNormArgs, Conv, MaskedArgs, BN_EPS};
use crate::{config::BnMode, fused::StepParams, Result};
use anyhow::Context;
use candle_core::{Tensor, Var};

/// candle's `elu`.
pub fn elu(x: &Tensor, alpha: f64) -> Result<Tensor> {
    Ok(x.elu(alpha)?)
}

/// Max-pooling `2 x 2`, stride 2 (odd sizes are floored): the maximum over a
/// `[n, c, h/2, 2, w/2, 2]` view, because candle's `max_pool2d` backward (0.11.1) scales the
/// gradient by 1/4.
pub fn max_pool2(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4().context("max_pool2")?;
    let (oh, ow) = (h / 2, w / 2);
    let x = x.narrow(2, 0, 2 * oh)?.narrow(3, 0, 2 * ow)?.contiguous()?;
    Ok(x.reshape((n, c, oh, 2, ow, 2))?
        .max_keepdim(5)?
        .max_keepdim(3)?
        .reshape((n, c, oh, ow))?)
}

/// Max-pooling with an odd `k x k` window, stride 1 and "same" padding, built from shifted
/// element-wise maxima so it has a gradient (candle's pooling backward needs stride = kernel).
pub fn max_pool_same_stride1(x: &Tensor, k: usize) -> Result<Tensor> {
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

/// Batch norm with tensor ops (see [`super::batch_norm`]).
pub fn batch_norm(x: &Tensor, bn: &BatchNormArgs, train: bool) -> Result<Tensor> {
    if bn.mode == BnMode::None {
        return Ok(x.affine(1.0 / (1.0 + BN_EPS).sqrt(), 0.0)?);
    }
    let shape = bn.stat_shape(x)?;
    let reduce: Vec<usize> = (0..x.rank()).filter(|&d| d != 1).collect();
    let (mean, var) = if train {
        let mean = x.mean_keepdim(reduce.as_slice())?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(reduce.as_slice())?;
        let mut run = bn.running.lock().expect("running stats lock");
        let upd = |old: &Tensor, new: &Tensor| -> Result<Tensor> {
            Ok((old.affine(bn.momentum, 0.0)?
                + new.detach().flatten_all()?.affine(1.0 - bn.momentum, 0.0)?)?)
        };
        *run = (upd(&run.0, &mean)?, upd(&run.1, &var)?);
        if bn.mode == BnMode::Learnable {
            (mean, var)
        } else {
            (
                run.0.reshape(shape.as_slice())?,
                run.1.reshape(shape.as_slice())?,
            )
        }
    } else {
        let run = bn.running.lock().expect("running stats lock");
        (
            run.0.reshape(shape.as_slice())?,
            run.1.reshape(shape.as_slice())?,
        )
    };
    let y = x
        .broadcast_sub(&mean)?
        .broadcast_div(&(var + BN_EPS)?.sqrt()?)?;
    match bn.affine {
        Some((g, b)) => Ok(y
            .broadcast_mul(&g.reshape(shape.as_slice())?)?
            .broadcast_add(&b.reshape(shape.as_slice())?)?),
        None => Ok(y),
    }
}

/// The effective weight `W * g(M)` with the straight-through (or the mask's declared)
/// gradient to `M`, built by [`crate::mask::apply`].
pub fn masked_weight(m: &MaskedArgs) -> Result<Tensor> {
    let g = crate::mask::apply(m.mask, m.scores, m.taus, &m.mask_ctx)?;
    let hard = g.detach();
    match m.mask.scaled_weight(m.weight, &hard)? {
        None => Ok(m.weight.mul(&g)?),
        // The value `W_b * g`; the gradient to the scores through `W * (g - g.detach())`,
        // which is zero in value.
        Some(scaled) => Ok((scaled.mul(&hard)? + m.weight.mul(&(&g - &hard)?)?)?),
    }
}

/// A layer's operation with weight `w`: `x w^T` (linear, `conv` `None`) or the 2-D
/// cross-correlation `conv`.
pub fn layer(x: &Tensor, w: &Tensor, conv: Option<Conv>) -> Result<Tensor> {
    match conv {
        None => Ok(x.matmul(&w.t()?)?),
        Some(Conv { stride, padding }) => Ok(x.conv2d(w, padding, stride, 1, 1)?),
    }
}

/// One SGDW / SGD(+L2) step with tensor ops (the formulas in [`crate::optim`]); `velocity` is
/// the momentum buffer (`None` before the first step).
pub fn sgd_step(
    var: &Var,
    grad: &Tensor,
    velocity: &mut Option<Tensor>,
    h: &StepParams,
) -> Result<()> {
    let m = h.momentum;
    let p = var.as_tensor().detach();
    let mut g = grad.detach();
    if h.l2 != 0.0 {
        g = (g + p.affine(h.l2, 0.0)?)?;
    }
    let lr_g = g.affine(h.lr, 0.0)?;
    let v_new = match velocity.take() {
        Some(v) => (v.affine(m, 0.0)? - &lr_g)?,
        None => lr_g.neg()?,
    };
    let delta = if h.nesterov {
        (v_new.affine(m, 0.0)? - &lr_g)?
    } else {
        v_new.clone()
    };
    let mut new_p = (p.clone() + delta)?;
    if h.wd != 0.0 {
        new_p = (new_p - p.affine(h.wd, 0.0)?)?;
    }
    var.set(&new_p)?;
    *velocity = Some(v_new.detach());
    Ok(())
}
