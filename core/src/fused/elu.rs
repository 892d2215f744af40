//! A fused ELU: `elu(x) = x` for `x >= +0`, else `alpha (e^x - 1)` (candle's definition), parallel
//! over chunks and vectorized with a polynomial `e^x`, and a backward that reuses the output
//! (`dy/dx = 1` for `x > 0`, else `y + alpha`) in one pass instead of candle's ten tensor ops and
//! a second `exp`. The same code is the epilogue of fused layers (`FusedLayer::act`).

use super::{cpu_slice, vectorized, with_f32};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

/// Elements per parallel task.
pub(crate) const CHUNK: usize = 1 << 14;

/// `e^x` for `x <= 0` (Cephes `expf`: `x = n ln 2 + r`, a degree-6 polynomial in `r`, times
/// `2^n`; within 2 ulp of the correctly rounded value; inputs below -87 give `e^-87`, whose
/// difference from the true value is below f32 resolution in `e^x - 1`).
#[inline(always)]
pub(crate) fn exp_neg(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    let x = x.max(-87.0);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * C1 - n * C2;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    // n is in [-126, 0] here, so 2^n is a normal float.
    e * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// ELU of one value.
#[inline(always)]
pub(crate) fn elu1(x: f32, alpha: f32) -> f32 {
    // Branch-free, so the loop vectorizes: both sides are computed, one is selected.
    let neg = (exp_neg(x.min(0.0)) - 1.0) * alpha;
    if x.is_sign_positive() {
        x
    } else {
        neg
    }
}

/// Applies ELU in place on one thread (vectorized).
pub(crate) fn elu_slice(y: &mut [f32], alpha: f32) {
    vectorized(
        #[inline(always)]
        || {
            for y in y.iter_mut() {
                *y = elu1(*y, alpha);
            }
        },
    )
}

/// `gx = g * elu'(x)` from the output `y`, on one thread (vectorized), into `gx`.
pub(crate) fn elu_grad_slice(y: &[f32], g: &[f32], alpha: f32, gx: &mut [f32]) {
    vectorized(
        #[inline(always)]
        || elu_grad_loop(y, g, alpha, gx),
    )
}

/// The derivative select, both sides computed first (`g * 1.0 == g`): with a conditional
/// `y + alpha` LLVM emits a branch, nine times slower on random signs.
#[inline(always)]
fn elu_grad_loop(y: &[f32], g: &[f32], alpha: f32, gx: &mut [f32]) {
    for ((gx, &y), &g) in gx.iter_mut().zip(y).zip(g) {
        let neg = y + alpha;
        let d = if y > 0.0 { 1.0 } else { neg };
        *gx = g * d;
    }
}

/// Applies ELU in place, in parallel.
pub(crate) fn elu_inplace(y: &mut [f32], alpha: f32) {
    y.par_chunks_mut(CHUNK).for_each(|y| {
        vectorized(
            #[inline(always)]
            || {
                for y in y.iter_mut() {
                    *y = elu1(*y, alpha);
                }
            },
        )
    });
}

/// `gx = g * elu'(x)` from the ELU's output `y`: `g` where `y > 0`, else `g (y + alpha)`.
pub(crate) fn elu_grad(y: &[f32], g: &[f32], alpha: f32) -> Vec<f32> {
    let mut gx = vec![0.0f32; g.len()];
    gx.par_chunks_mut(CHUNK)
        .zip(y.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
        .for_each(|(gx, (y, g))| elu_grad_slice(y, g, alpha, gx));
    gx
}

/// The stand-alone ELU op.
pub(crate) struct Elu(pub f32);

impl CustomOp1 for Elu {
    fn name(&self) -> &'static str {
        "supermask-elu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let mut y = cpu_slice(s, l)?.to_vec();
        elu_inplace(&mut y, self.0);
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let gx = with_f32(res, |y| with_f32(grad, |g| elu_grad(y, g, self.0)))
            .and_then(|r| r)
            .map_err(|e| candle_core::Error::Msg(format!("{e:#}")))?;
        Ok(Some(Tensor::from_vec(gx, arg.shape(), arg.device())?))
    }
}
