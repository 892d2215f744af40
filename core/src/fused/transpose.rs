//! Transposition of a block of samples into feature-major `[f32; N]` rows, the layout of the
//! inference engine's block kernels. Tiles are transposed in registers instead of element by
//! element: 16x16 on AVX-512 machines (for blocks of a multiple of 16 samples), else 8x8 on
//! AVX2 machines (8 loads, 24 shuffles, 8 stores per tile).

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
    if N.is_multiple_of(16) {
        if let Some(simd) = pulp::x86::V4::try_new() {
            return simd.vectorize(avx512::Transpose { simd, x, cols, out });
        }
    }
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

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use core::arch::x86_64::{__m512, __m512d};
    use pulp::{cast, x86::V4};

    /// A 16x16 in-register transpose in four stages of 16 shuffles (64 for 256 values, where
    /// two 8x8 AVX2 tiles per 64 values take 96): pairs of rows, then pairs of pairs (as 64-bit
    /// elements), then 128-bit lanes twice.
    #[inline(always)]
    fn t16(simd: V4, r: [__m512; 16]) -> [__m512; 16] {
        let a = simd.avx512f;
        let mut t = r;
        for i in 0..8 {
            t[2 * i] = a._mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = a._mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        // u[4i + k], 128-bit lane l: column 4l + k of rows 4i..4i+3.
        let mut u = t;
        for i in 0..4 {
            let d = |j: usize| -> __m512d { cast(t[4 * i + j]) };
            u[4 * i] = cast(a._mm512_unpacklo_pd(d(0), d(2)));
            u[4 * i + 1] = cast(a._mm512_unpackhi_pd(d(0), d(2)));
            u[4 * i + 2] = cast(a._mm512_unpacklo_pd(d(1), d(3)));
            u[4 * i + 3] = cast(a._mm512_unpackhi_pd(d(1), d(3)));
        }
        let mut out = u;
        for k in 0..4 {
            let v_even = a._mm512_shuffle_f32x4::<0x88>(u[k], u[4 + k]);
            let v_odd = a._mm512_shuffle_f32x4::<0xDD>(u[k], u[4 + k]);
            let w_even = a._mm512_shuffle_f32x4::<0x88>(u[8 + k], u[12 + k]);
            let w_odd = a._mm512_shuffle_f32x4::<0xDD>(u[8 + k], u[12 + k]);
            out[k] = a._mm512_shuffle_f32x4::<0x88>(v_even, w_even);
            out[8 + k] = a._mm512_shuffle_f32x4::<0xDD>(v_even, w_even);
            out[4 + k] = a._mm512_shuffle_f32x4::<0x88>(v_odd, w_odd);
            out[12 + k] = a._mm512_shuffle_f32x4::<0xDD>(v_odd, w_odd);
        }
        out
    }

    /// The transposition as a `pulp` operation (a struct, so it inlines into the AVX-512
    /// context).
    pub(super) struct Transpose<'a, const N: usize> {
        pub simd: V4,
        pub x: &'a [f32],
        pub cols: usize,
        pub out: &'a mut [[f32; N]],
    }

    impl<const N: usize> pulp::NullaryFnOnce for Transpose<'_, N> {
        type Output = ();

        #[inline(always)]
        fn call(self) {
            let Self { simd, x, cols, out } = self;
            let full = cols / 16 * 16;
            for j0 in (0..full).step_by(16) {
                for part in 0..N / 16 {
                    let mut rows: [__m512; 16] = [cast([0.0f32; 16]); 16];
                    for (b, r) in rows.iter_mut().enumerate() {
                        let start = (part * 16 + b) * cols + j0;
                        let v: [f32; 16] = x[start..start + 16].try_into().expect("16 values");
                        *r = cast(v);
                    }
                    let t = t16(simd, rows);
                    for (k, col) in t.iter().enumerate() {
                        let v: [f32; 16] = cast(*col);
                        out[j0 + k][part * 16..part * 16 + 16].copy_from_slice(&v);
                    }
                }
            }
            super::scalar(x, cols, full, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposes_every_width() {
        for cols in [1, 7, 8, 9, 16, 17, 31, 32, 784] {
            let x: Vec<f32> = (0..16 * cols).map(|i| i as f32).collect();
            let mut out = vec![[0.0f32; 16]; cols];
            transpose_block(&x, cols, &mut out);
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
            // 8 rows: the AVX2 tiles even on AVX-512 machines.
            let mut out = vec![[0.0f32; 8]; cols];
            transpose_block(&x, cols, &mut out);
            for (j, row) in out.iter().enumerate() {
                for (b, v) in row.iter().enumerate() {
                    assert_eq!(*v, x[b * cols + j], "8 rows: cols {cols} j {j} b {b}");
                }
            }
        }
    }
}
