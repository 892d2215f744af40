//! A bounds-checked, safe wrapper around the `gemm` crate's f32 matrix product (the GEMM candle
//! itself uses). This is the only `unsafe` code of supermask: every matrix view is checked to
//! lie inside its slice before the call, and the destination is a `&mut` slice, so it cannot
//! alias the operands.
#![allow(unsafe_code)]

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
