//! A fused ELU: `elu(x) = x` for `x >= +0`, else `alpha (e^x - 1)` (candle's definition), parallel
//! over chunks and vectorized with a polynomial `e^x`, and a backward that reuses the output
//! (`dy/dx = 1` for `x > 0`, else `y + alpha`) in one pass instead of candle's ten tensor ops and
//! a second `exp`. The same code is the epilogue of fused layers (`FusedLayer::act`).

use super::{cpu_slice, vectorized, with_f32};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
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
    // n is an integer in [-126, 0], so 2^n is a normal float with biased exponent n + 127 in
    // [1, 127]. Adding 2^23 puts that integer in the low mantissa bits; shifting them into the
    // exponent field drops the rest. (All float and bit operations: `n as i32` would not
    // vectorize.)
    let biased = (n + (127.0 + 8_388_608.0)).to_bits() << 23;
    e * f32::from_bits(biased)
}

/// ELU of one value. The sign test is a bit blend, so in-place loops vectorize to plain
/// stores (as a select LLVM turns them into masked stores, which are slow on AMD cores); a NaN
/// input of either sign stays NaN, as in candle's `elu`.
#[inline(always)]
pub(crate) fn elu1(x: f32, alpha: f32) -> f32 {
    let neg = (exp_neg(x.min(0.0)) - 1.0) * alpha;
    let neg = if x.is_nan() { x } else { neg };
    let sign = ((x.to_bits() as i32) >> 31) as u32;
    f32::from_bits((x.to_bits() & !sign) | (neg.to_bits() & sign))
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
    let mut gx = super::zeros(g.len());
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

/// `elu(a + b)` as one op (a residual block's sum and the ELU after it): the sum as candle's
/// `add` computes it, then the stand-alone ELU's forward, so the values are those of the two
/// ops; the backward passes the ELU's gradient to both inputs.
pub(crate) struct AddElu(pub f32);

impl CustomOp2 for AddElu {
    fn name(&self) -> &'static str {
        "supermask-add-elu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if l1.dims() != l2.dims() {
            return Err(candle_core::Error::Msg(format!(
                "add-elu: shapes {:?} and {:?} differ",
                l1.dims(),
                l2.dims()
            )));
        }
        let (a, b) = (cpu_slice(s1, l1)?, cpu_slice(s2, l2)?);
        let mut y = super::zeros(a.len());
        let alpha = self.0;
        y.par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
            .for_each(|(y, (a, b))| {
                vectorized(
                    #[inline(always)]
                    || {
                        for ((y, a), b) in y.iter_mut().zip(a).zip(b) {
                            *y = elu1(a + b, alpha);
                        }
                    },
                )
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let gx = with_f32(res, |y| with_f32(grad, |g| elu_grad(y, g, self.0)))
            .and_then(|r| r)
            .map_err(|e| candle_core::Error::Msg(format!("{e:#}")))?;
        let gx = Tensor::from_vec(gx, a.shape(), a.device())?;
        Ok((Some(gx.clone()), Some(gx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The polynomial `e^x` against the standard library's over [-87, 0] (a dense sweep,
    /// including both ends): within 3e-7 relative, about 2.5 ulp.
    #[test]
    fn exp_neg_is_within_a_few_ulp() {
        let mut worst = 0.0f64;
        for i in 0..=870_000 {
            let x = -(i as f32) * 1e-4;
            let want = f64::from(x).exp();
            let got = f64::from(exp_neg(x));
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 3e-7, "max relative error {worst:e}");
    }

    /// ELU keeps its input for `x >= +0`, gives `alpha (e^x - 1)` below, and keeps NaNs.
    #[test]
    fn elu_values_and_nan() {
        assert_eq!(elu1(2.5, 1.0), 2.5);
        assert_eq!(elu1(0.0, 1.0), 0.0);
        assert_eq!(elu1(-0.0, 1.0), 0.0);
        let want = (f64::from(-1.5f32).exp() - 1.0) * 0.5;
        assert!((f64::from(elu1(-1.5, 0.5)) - want).abs() < 1e-7);
        assert_eq!(elu1(-100.0, 1.0), -1.0);
        assert!(elu1(f32::NAN, 1.0).is_nan());
        assert!(elu1(-f32::NAN, 1.0).is_nan());
    }

    /// `elu(a + b)` as one op gives the output and both gradients of candle's sum followed by
    /// the stand-alone ELU, bit for bit (a residual block's end in `Network`).
    #[test]
    fn add_elu_equals_sum_then_elu_bitwise() {
        use candle_core::{Device, Var};
        let n = 3 * 5 * 7 * 7;
        let v = |seed| crate::rng::spread_values(n, seed, -2.0, 2.0);
        let a = Var::from_vec(v(1), (3, 5, 7, 7), &Device::Cpu).unwrap();
        let b = Var::from_vec(v(2), (3, 5, 7, 7), &Device::Cpu).unwrap();
        let r = Tensor::from_vec(v(3), (3, 5, 7, 7), &Device::Cpu).unwrap();
        let run = |y: Tensor| {
            let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let bits = |t: &Tensor| -> Vec<u32> {
                let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                v.iter().map(|x| x.to_bits()).collect()
            };
            [bits(&y), bits(g.get(&a).unwrap()), bits(g.get(&b).unwrap())]
        };
        let fused = run(super::super::add_elu(&a, &b, 0.7).unwrap());
        let sum = (a.as_tensor() + b.as_tensor()).unwrap();
        let separate = run(super::super::elu(&sum, 0.7).unwrap());
        assert_eq!(fused, separate);
        // Both signs occur, so both branches of the ELU and its gradient are compared.
        let y = f32::from_bits;
        assert!(fused[0].iter().any(|&v| y(v) < 0.0) && fused[0].iter().any(|&v| y(v) > 0.0));
    }
}
