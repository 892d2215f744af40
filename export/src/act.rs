//! The engine's ELU: the training kernels' ELU (`supermask_core::fused`, Cephes `expf`: `x = n
//! ln 2 + r`, a degree-6 polynomial in `r`, times `2^n`) with its multiply-adds fused.
//!
//! The training ELU rounds every product and sum separately, so that its results do not depend
//! on whether a CPU has FMA. Inference has no such need, and a fused multiply-add is one
//! instruction instead of two: the polynomial and the range reduction take 9 instead of 17
//! floating-point operations (the ELU was about a third of an FCN forward at batch 256).
//! `f32::mul_add` is correctly rounded everywhere (hardware FMA, or a software fallback on
//! CPUs without it), so the results are still the same on every CPU. They differ from the
//! training ELU's by at most a few units in the last place.
//!
//! With 512-bit vectors only two ports do vector arithmetic, so the ELU is bound by its
//! instruction count: rounding with `1.5 * 2^23` instead of `floor`, `2^n` from the rounded
//! sum's bits, and selects written as comparisons (no NaN-ordering `min`/`max`) brought the
//! compiled AVX-512 loop from 23 to 18 arithmetic instructions per 16 values, and the time from
//! 0.50 to 0.38 ns per value on the Xeon (old and new alternating in one process).

/// `e^x = e * 2^n` for `-87 <= x <= 0` as the pair `(e, 2^n)`, their product within 3 ulp.
/// Any other input (positive, below -87, NaN) gives meaningless values and no fault: [`elu1`]
/// never keeps them.
///
/// `n = round(x log2 e)` comes from adding and subtracting `1.5 * 2^23`, which leaves `n` in
/// the low mantissa bits of the sum, so that `2^n` is those bits shifted into the exponent
/// (three operations where `floor` and rebuilding `2^n` from the float took five).
#[inline(always)]
fn exp_parts(x: f32) -> (f32, f32) {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    /// `1.5 * 2^23`: adding it rounds a float in `[-2^22, 2^22]` to an integer.
    const ROUND: f32 = 12_582_912.0;
    let j = x.mul_add(LOG2E, ROUND);
    let n = j - ROUND;
    let r = (-n).mul_add(C2, (-n).mul_add(C1, x));
    let mut p = 1.987_569_1e-4f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 0.166_666_65);
    p = p.mul_add(r, 0.5);
    let e = (p * r).mul_add(r, r) + 1.0;
    // The bits of `j` are those of `ROUND` plus `n`; ROUND's bits end in 22 zeros, so shifting
    // by 23 leaves `n << 23`, and adding the exponent bias gives `2^n` for `n` in [-126, 0].
    let scale = (j.to_bits() << 23).wrapping_add(127 << 23);
    (e, f32::from_bits(scale))
}

/// ELU of one value: `alpha (e^x - 1)` for `x < 0`, else `x` (NaN and -0 stay as they are).
///
/// Written as comparisons and selects, so that each maps to one vector instruction (`f32::min`
/// and `max` also order NaNs, which costs a compare and a blend each).
#[inline(always)]
fn elu1(x: f32, alpha: f32) -> f32 {
    let clamped = if x > -87.0 { x } else { -87.0 };
    let (e, scale) = exp_parts(clamped);
    // `e 2^n` is exact, so the fused `e 2^n - 1` rounds as the product and then the difference
    // did.
    let neg = e.mul_add(scale, -1.0) * alpha;
    if x < 0.0 {
        neg
    } else {
        x
    }
}

/// ELU in place on this thread, vectorized for the CPU's widest vectors.
pub fn elu_in_place(y: &mut [f32], alpha: f32) {
    pulp::Arch::new().dispatch(Elu { y, alpha })
}

/// Values checked at once for a negative one ([`Elu`]): four 16-float vectors.
const SKIP_CHUNK: usize = 64;

/// The loop as a `pulp` operation (a struct, so that it inlines into the function compiled with
/// the CPU's features; see `grouped`).
struct Elu<'a> {
    y: &'a mut [f32],
    alpha: f32,
}

impl pulp::NullaryFnOnce for Elu<'_> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        for chunk in self.y.chunks_mut(SKIP_CHUNK) {
            // The ELU is the identity on a chunk without negative values (zeros, NaNs): such
            // chunks, a convolution's dead channels and padding, skip the exponentials.
            if !chunk.iter().fold(false, |neg, &v| neg | (v < 0.0)) {
                continue;
            }
            for v in chunk {
                *v = elu1(*v, self.alpha);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the standard library's `exp` in f64 over [-87, 0] (a dense sweep, both ends
    /// included): within 3e-7 relative, about 2.5 ulp, as the training kernel's.
    #[test]
    fn exp_parts_multiply_to_within_a_few_ulp() {
        let mut worst = 0.0f64;
        for i in 0..=870_000 {
            let x = -(i as f32) * 1e-4;
            let want = f64::from(x).exp();
            let (e, scale) = exp_parts(x);
            let got = f64::from(e * scale);
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 3e-7, "max relative error {worst:e}");
    }

    /// The vectorized ELU: identity for `x >= +0`, `alpha (e^x - 1)` below (to 1e-6 against
    /// f64), -alpha far below, NaN kept; odd lengths take the scalar tail.
    #[test]
    fn elu_values() {
        let mut v: Vec<f32> = (0..37).map(|i| i as f32 * 0.37 - 6.0).collect();
        v.extend([
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -1e30,
            -100.0,
            f32::NAN,
        ]);
        let x = v.clone();
        elu_in_place(&mut v, 0.5);
        for (y, x) in v.iter().zip(&x) {
            if x.is_nan() {
                assert!(y.is_nan());
            } else if *x >= 0.0 {
                assert_eq!(y, x);
            } else {
                let want = (f64::from(*x).exp() - 1.0) * 0.5;
                assert!((f64::from(*y) - want).abs() < 1e-6, "{x}: {y} vs {want}");
            }
        }
        assert_eq!(v[x.len() - 2], -0.5);
    }

    /// Chunks without a negative value (zeros, -0, positives, NaN) are skipped: every value
    /// still equals `elu1` of it bit for bit, in skipped chunks, computed ones, and a short
    /// last chunk. A skip that took a chunk with one negative value fails this.
    #[test]
    fn skipped_chunks_give_the_elu_bits() {
        let n = 5 * SKIP_CHUNK + 9;
        let mut v: Vec<f32> = (0..n).map(|i| (i % 7) as f32 * 0.25).collect();
        // Chunk 0: zeros, -0 and NaN only; chunk 1: positives with one negative at its end;
        // chunk 2: all positive; chunk 3: mixed; chunk 4 and the tail: a negative in the tail.
        v[..SKIP_CHUNK].iter_mut().enumerate().for_each(|(i, x)| {
            *x = [0.0, -0.0, f32::NAN][i % 3];
        });
        v[2 * SKIP_CHUNK - 1] = -0.75;
        for (i, x) in v[3 * SKIP_CHUNK..4 * SKIP_CHUNK].iter_mut().enumerate() {
            *x = i as f32 * 0.1 - 3.0;
        }
        v[n - 2] = -2.0;
        let want: Vec<u32> = v.iter().map(|&x| elu1(x, 0.7).to_bits()).collect();
        elu_in_place(&mut v, 0.7);
        let got: Vec<u32> = v.iter().map(|x| x.to_bits()).collect();
        assert_eq!(got, want);
    }
}
