//! Transposition of a block of 16 samples into feature-major `[f32; 16]` rows, the layout of
//! the inference engine's sparse ternary kernels ([`super::Effective`]'s `matmul_block`). On
//! AVX2 machines 8x8 tiles are transposed in registers (8 loads, 24 shuffles, 8 stores per
//! tile) instead of element by element.

/// Samples per block.
pub const ROWS: usize = 16;

/// `out[j][b] = x[b * cols + j]` for the 16 rows `b` of `x` (row-major, `16 x cols`).
pub fn transpose_block16(x: &[f32], cols: usize, out: &mut [[f32; ROWS]]) {
    transpose_block(x, cols, out)
}

/// `out[j][b] = x[b * cols + j]` for the `N` rows `b` of `x` (row-major, `N x cols`); `N` is
/// a multiple of 8 (one 8x8 tile per 8 rows).
pub fn transpose_block<const N: usize>(x: &[f32], cols: usize, out: &mut [[f32; N]]) {
    const {
        assert!(
            N.is_multiple_of(8),
            "transpose_block: N must be a multiple of 8"
        )
    };
    assert!(
        x.len() >= N * cols && out.len() >= cols,
        "transpose_block sizes"
    );
    #[cfg(target_arch = "x86_64")]
    if let Some(simd) = pulp::x86::V3::try_new() {
        return simd.vectorize(avx::Transpose { simd, x, cols, out });
    }
    scalar(x, cols, 0, out);
}

/// Columns `from..cols`, element by element.
#[inline(always)]
fn scalar<const N: usize>(x: &[f32], cols: usize, from: usize, out: &mut [[f32; N]]) {
    for (j, o) in out.iter_mut().enumerate().take(cols).skip(from) {
        for (b, v) in o.iter_mut().enumerate() {
            *v = x[b * cols + j];
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use core::arch::x86_64::__m256;
    use pulp::{cast, x86::V3};

    /// The classic 8x8 in-register transpose: unpack pairs, shuffle quads, swap 128-bit halves.
    #[inline(always)]
    fn t8(simd: V3, r: [__m256; 8]) -> [__m256; 8] {
        let a = simd.avx;
        let t0 = a._mm256_unpacklo_ps(r[0], r[1]);
        let t1 = a._mm256_unpackhi_ps(r[0], r[1]);
        let t2 = a._mm256_unpacklo_ps(r[2], r[3]);
        let t3 = a._mm256_unpackhi_ps(r[2], r[3]);
        let t4 = a._mm256_unpacklo_ps(r[4], r[5]);
        let t5 = a._mm256_unpackhi_ps(r[4], r[5]);
        let t6 = a._mm256_unpacklo_ps(r[6], r[7]);
        let t7 = a._mm256_unpackhi_ps(r[6], r[7]);
        let s0 = a._mm256_shuffle_ps::<0x44>(t0, t2);
        let s1 = a._mm256_shuffle_ps::<0xEE>(t0, t2);
        let s2 = a._mm256_shuffle_ps::<0x44>(t1, t3);
        let s3 = a._mm256_shuffle_ps::<0xEE>(t1, t3);
        let s4 = a._mm256_shuffle_ps::<0x44>(t4, t6);
        let s5 = a._mm256_shuffle_ps::<0xEE>(t4, t6);
        let s6 = a._mm256_shuffle_ps::<0x44>(t5, t7);
        let s7 = a._mm256_shuffle_ps::<0xEE>(t5, t7);
        [
            a._mm256_permute2f128_ps::<0x20>(s0, s4),
            a._mm256_permute2f128_ps::<0x20>(s1, s5),
            a._mm256_permute2f128_ps::<0x20>(s2, s6),
            a._mm256_permute2f128_ps::<0x20>(s3, s7),
            a._mm256_permute2f128_ps::<0x31>(s0, s4),
            a._mm256_permute2f128_ps::<0x31>(s1, s5),
            a._mm256_permute2f128_ps::<0x31>(s2, s6),
            a._mm256_permute2f128_ps::<0x31>(s3, s7),
        ]
    }

    /// The transposition as a `pulp` operation, so it is inlined into the function compiled
    /// with the AVX2 features (a closure's `call_once` was not, and every intrinsic became a
    /// call).
    pub(super) struct Transpose<'a, const N: usize> {
        pub simd: V3,
        pub x: &'a [f32],
        pub cols: usize,
        pub out: &'a mut [[f32; N]],
    }

    impl<const N: usize> pulp::NullaryFnOnce for Transpose<'_, N> {
        type Output = ();

        #[inline(always)]
        fn call(self) {
            transpose(self.simd, self.x, self.cols, self.out)
        }
    }

    #[inline(always)]
    fn transpose<const N: usize>(simd: V3, x: &[f32], cols: usize, out: &mut [[f32; N]]) {
        let full = cols / 8 * 8;
        for j0 in (0..full).step_by(8) {
            for half in 0..N / 8 {
                // Plain loops, no closures: every step must inline into the AVX2 context.
                let mut rows: [__m256; 8] = [cast([0.0f32; 8]); 8];
                for (b, r) in rows.iter_mut().enumerate() {
                    let start = (half * 8 + b) * cols + j0;
                    let v: [f32; 8] = x[start..start + 8].try_into().expect("8 values");
                    *r = cast(v);
                }
                let t = t8(simd, rows);
                for (k, col) in t.iter().enumerate() {
                    let v: [f32; 8] = cast(*col);
                    out[j0 + k][half * 8..half * 8 + 8].copy_from_slice(&v);
                }
            }
        }
        super::scalar(x, cols, full, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposes_every_width() {
        for cols in [1, 7, 8, 9, 16, 31, 784] {
            let x: Vec<f32> = (0..ROWS * cols).map(|i| i as f32).collect();
            let mut out = vec![[0.0f32; ROWS]; cols];
            transpose_block16(&x, cols, &mut out);
            for (j, row) in out.iter().enumerate() {
                for (b, v) in row.iter().enumerate() {
                    assert_eq!(*v, x[b * cols + j], "cols {cols} j {j} b {b}");
                }
            }
            let x: Vec<f32> = (0..32 * cols).map(|i| i as f32).collect();
            let mut out = vec![[0.0f32; 32]; cols];
            transpose_block(&x, cols, &mut out);
            for (j, row) in out.iter().enumerate() {
                for (b, v) in row.iter().enumerate() {
                    assert_eq!(*v, x[b * cols + j], "32 rows: cols {cols} j {j} b {b}");
                }
            }
        }
    }
}
