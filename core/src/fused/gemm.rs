//! A bounds-checked, safe wrapper around the `gemm` crate's f32 matrix product (the GEMM candle
//! itself uses). This is the only `unsafe` code of supermask: every matrix view is checked to
//! lie inside its slice before the call, and the destination is a `&mut` slice, so it cannot
//! alias the operands.
#![allow(unsafe_code)]

use rayon::prelude::*;

/// A read-only strided matrix view: element `(r, c)` is `data[r * rs + c * cs]`.
#[derive(Clone, Copy, Debug)]
pub struct Mat<'a> {
    /// The backing slice.
    pub data: &'a [f32],
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Row stride.
    pub rs: usize,
    /// Column stride.
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// A row-major `rows x cols` matrix.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose of this view (no copy).
    pub fn t(self) -> Self {
        Self {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }
}

/// Largest index a `rows x cols` view with strides `rs, cs` touches, plus one.
fn extent(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1
    }
}

/// Fewest multiply-adds a parallel product must have before [`split_rows`] splits it: below
/// this, waking a second thread costs more than it saves.
const SPLIT_WORK: usize = 1 << 20;

/// Fewest destination rows a thread's share may have.
const SPLIT_MIN_ROWS: usize = 8;

/// Runs a parallel product as one sequential gemm call per thread over contiguous blocks of
/// `dst`'s rows, and says whether it did; `false` leaves the product to gemm's own threading.
///
/// gemm's own threading splits a training-sized product (the FCN's 128 x 784 x 300) so that
/// two threads run it only 1.2-1.3x faster than one; whole row blocks run 1.7-1.8x faster
/// (`docs/results/fcn-threads.md`). The bits are those of one sequential call: gemm sees the
/// destination transposed (it is row-major), so `dst`'s rows are its columns, and its
/// summation order over `k` (the `kc` blocking) depends on `k` alone once a product takes its
/// general path. A product takes it whenever it has more than 64 columns and a block has at
/// least 8 rows (smaller ones go to gemm's small-matrix, matrix-vector or horizontal kernels,
/// which block `k` another way), so only such products are split.
fn split_rows(dst: &mut [f32], lhs: Mat<'_>, rhs: Mat<'_>, accumulate: bool) -> bool {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    let threads = rayon::current_num_threads().min(m / SPLIT_MIN_ROWS);
    if threads < 2 || n <= 64 || m * k * n < SPLIT_WORK {
        return false;
    }
    // Even blocks, `m / threads` or one more rows each, so that every block has at least
    // `SPLIT_MIN_ROWS` (equal blocks of `ceil(m / threads)` rows can leave one row for the
    // last, which gemm would run as a matrix-vector product).
    let mut blocks = Vec::with_capacity(threads);
    let mut rest = &mut dst[..m * n];
    for i in 0..threads {
        let (r0, r1) = (i * m / threads, (i + 1) * m / threads);
        let (block, tail) = rest.split_at_mut((r1 - r0) * n);
        blocks.push((r0, block));
        rest = tail;
    }
    blocks.into_par_iter().for_each(|(r0, dst)| {
        let part = Mat {
            data: &lhs.data[r0 * lhs.rs..],
            rows: dst.len() / n,
            ..lhs
        };
        matmul(dst, part, rhs, accumulate, false);
    });
    true
}

/// `dst = lhs * rhs` (or `dst += lhs * rhs` when `accumulate`), with `dst` row-major
/// `lhs.rows x rhs.cols`. `parallel` lets gemm split the work over rayon's threads.
///
/// # Panics
/// If the shapes disagree or a view does not fit its slice (a bug in the caller).
pub fn matmul(dst: &mut [f32], lhs: Mat<'_>, rhs: Mat<'_>, accumulate: bool, parallel: bool) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(rhs.rows, k, "gemm: inner dimensions differ");
    assert!(dst.len() >= m * n, "gemm: destination too small");
    assert!(
        extent(m, k, lhs.rs, lhs.cs) <= lhs.data.len(),
        "gemm: lhs out of bounds"
    );
    assert!(
        extent(k, n, rhs.rs, rhs.cs) <= rhs.data.len(),
        "gemm: rhs out of bounds"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    if parallel && split_rows(dst, lhs, rhs, accumulate) {
        return;
    }
    let par = if parallel {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above prove that every element gemm reads (lhs: m x k with strides
    // lhs.rs/lhs.cs, rhs: k x n with rhs.rs/rhs.cs) and writes (dst: m x n row-major) lies in
    // its slice; `dst` is borrowed mutably, so it does not overlap `lhs` or `rhs`. Strides fit
    // in isize because they index slices, whose lengths do.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic values in [-0.5, 0.5) with no pattern gemm could exploit.
    pub(crate) fn values(len: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) - 0.5
            })
            .collect()
    }

    /// `(m, k, n, lhs stored transposed, accumulate)`: the FCN's training products (forward,
    /// weight gradient with a transposed lhs, input gradient), a depth over gemm's 512-deep `kc`
    /// block, uneven row blocks, and 73 rows over 9 threads (blocks of 9 rows would leave one
    /// for the last, which gemm would run as a matrix-vector product).
    const SPLIT: [(usize, usize, usize, bool, bool); 6] = [
        (128, 784, 300, false, false),
        (300, 128, 784, true, false),
        (128, 100, 300, false, true),
        (37, 1100, 129, false, false),
        (131, 700, 65, true, true),
        (73, 600, 65, false, false),
    ];

    fn product(m: usize, k: usize, n: usize, lt: bool, acc: bool, split: bool) -> (bool, Vec<f32>) {
        let (a, b) = (values(m * k, 1), values(k * n, 2));
        let lhs = if lt {
            Mat::rows(&a, k, m).t()
        } else {
            Mat::rows(&a, m, k)
        };
        let rhs = Mat::rows(&b, k, n);
        let mut dst = values(m * n, 3);
        let did = if split {
            split_rows(&mut dst, lhs, rhs, acc)
        } else {
            matmul(&mut dst, lhs, rhs, acc, false);
            true
        };
        (did, dst)
    }

    #[test]
    fn row_blocks_give_one_sequential_calls_bits_for_any_thread_count() {
        for threads in [2, 3, 4, 9] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for (m, k, n, lt, acc) in SPLIT {
                let (split, got) = pool.install(|| product(m, k, n, lt, acc, true));
                assert!(split, "{m}x{k}x{n} on {threads} threads was not split");
                let (_, want) = product(m, k, n, lt, acc, false);
                let same = got
                    .iter()
                    .zip(&want)
                    .all(|(g, w)| g.to_bits() == w.to_bits());
                assert!(same, "{m}x{k}x{n} on {threads} threads: bits differ");
            }
        }
    }

    /// Products whose row blocks would take gemm's small-matrix kernels (at most 64 columns,
    /// which block `k` by 512 where the general path blocks 784 as 2 x 392), tiny ones, and
    /// one thread are left to gemm.
    #[test]
    fn products_whose_blocks_would_sum_in_another_order_are_not_split() {
        let two = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        for (m, k, n) in [
            (128, 784, 64),
            (128, 784, 10),
            (15, 4096, 300),
            (64, 64, 128),
        ] {
            assert!(
                !two.install(|| product(m, k, n, false, false, true).0),
                "{m}x{k}x{n}"
            );
        }
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        assert!(!one.install(|| product(128, 784, 300, false, false, true).0));
    }
}
