//! The effective weight `W * g(M)` of one forward pass, in the form the fused kernels use:
//! dense (a row-major matrix) or sparse ternary (per row, the kept column indices, with the
//! signs and one magnitude when the frozen weights are signed constants, else the kept values).
//!
//! Both forms compute the same products: [`Effective::matmul`] `out = Weff * xt` and
//! [`Effective::matmul_t`] `out = Weff^T * gt`, where `xt` / `gt` are row-major with `n`
//! columns (a batch for linear layers, output positions for convolutions).

use super::{
    gemm::{self, Mat},
    vectorized, ELEMENTWISE_CHUNK,
};
use rayon::prelude::*;

/// The kept entries of a matrix, row by row.
#[derive(Clone, Debug, PartialEq)]
pub struct Ternary {
    /// Rows of the weight matrix.
    pub rows: usize,
    /// Columns of the weight matrix.
    pub cols: usize,
    /// Row `r`'s entries are `idx[ptr[r]..ptr[r + 1]]`.
    pub ptr: Vec<usize>,
    /// Column index of every kept entry.
    pub idx: Vec<u32>,
    /// How the kept entries' values are stored.
    pub values: Values,
}

/// Values of a [`Ternary`] matrix's kept entries.
#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    /// Every kept entry is `+magnitude` or `-magnitude` (signed-constant weights): row `r`'s
    /// positive entries come first, `idx[ptr[r]..split[r]]`, then the negative ones. The
    /// kernels add and subtract inputs and multiply once by `magnitude`.
    Signs {
        /// Start of row `r`'s negative entries.
        split: Vec<usize>,
        /// The common magnitude `|W|` of the layer.
        magnitude: f32,
    },
    /// The kept entries' values `W * g(M)`, aligned with `idx`.
    Weights(Vec<f32>),
}

/// The effective weight of one forward pass.
#[derive(Clone, Debug, PartialEq)]
pub enum Effective {
    /// Row-major `rows x cols` values of `W * g(M)`.
    Dense {
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
        /// Values.
        data: Vec<f32>,
    },
    /// Kept entries only.
    Sparse(Ternary),
}

/// How to lay the effective weight out.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Layout {
    /// Always dense.
    Dense,
    /// Always sparse ternary.
    Sparse,
    /// Sparse when the share of kept entries is below the given density.
    Auto(f64),
}

impl Effective {
    /// Builds `W * mask` as a `rows x cols` matrix. `magnitude` is `Some(|w|)` when every frozen
    /// weight has that absolute value (then the sparse form stores signs only).
    pub fn build(
        weight: &[f32],
        mask: &[f32],
        rows: usize,
        cols: usize,
        magnitude: Option<f32>,
        layout: Layout,
    ) -> Self {
        assert_eq!(weight.len(), rows * cols, "effective weight: weight size");
        assert_eq!(mask.len(), rows * cols, "effective weight: mask size");
        let sparse = match layout {
            Layout::Dense => false,
            Layout::Sparse => true,
            Layout::Auto(below) => {
                let kept: usize = mask
                    .par_chunks(ELEMENTWISE_CHUNK)
                    .map(|m| {
                        vectorized(
                            #[inline(always)]
                            || m.iter().map(|&m| usize::from(m != 0.0)).sum::<usize>(),
                        )
                    })
                    .sum();
                (kept as f64) < below * (rows * cols) as f64
            }
        };
        if !sparse {
            // Collected in place, without zero-filling a buffer first (the fill alone took
            // as long as the products on the FCN's first layer).
            let mut data = Vec::new();
            weight
                .par_iter()
                .zip(mask)
                .with_min_len(ELEMENTWISE_CHUNK)
                .map(|(w, m)| w * m)
                .collect_into_vec(&mut data);
            return Effective::Dense { rows, cols, data };
        }
        let mut ptr = Vec::with_capacity(rows + 1);
        let mut idx = Vec::new();
        ptr.push(0);
        let values = match magnitude {
            Some(magnitude) => {
                let mut split = Vec::with_capacity(rows);
                for (w, m) in weight.chunks_exact(cols).zip(mask.chunks_exact(cols)) {
                    let kept = |positive: bool| {
                        w.iter().zip(m).enumerate().filter_map(move |(i, (w, m))| {
                            let v = w * m;
                            (v != 0.0 && (v > 0.0) == positive).then_some(i as u32)
                        })
                    };
                    idx.extend(kept(true));
                    split.push(idx.len());
                    idx.extend(kept(false));
                    ptr.push(idx.len());
                }
                Values::Signs { split, magnitude }
            }
            None => {
                let mut vals = Vec::new();
                for (w, m) in weight.chunks_exact(cols).zip(mask.chunks_exact(cols)) {
                    for (i, (w, m)) in w.iter().zip(m).enumerate() {
                        let v = w * m;
                        if v != 0.0 {
                            idx.push(i as u32);
                            vals.push(v);
                        }
                    }
                    ptr.push(idx.len());
                }
                Values::Weights(vals)
            }
        };
        Effective::Sparse(Ternary {
            rows,
            cols,
            ptr,
            idx,
            values,
        })
    }

    /// `(rows, cols)` of the weight matrix.
    pub fn dims(&self) -> (usize, usize) {
        match self {
            Effective::Dense { rows, cols, .. } => (*rows, *cols),
            Effective::Sparse(t) => (t.rows, t.cols),
        }
    }

    /// Whether this is the sparse form.
    pub fn is_sparse(&self) -> bool {
        matches!(self, Effective::Sparse(_))
    }

    /// `out[rows x n] = Weff * xt[cols x n]` (both row-major), single-threaded.
    pub fn matmul(&self, xt: &[f32], n: usize, out: &mut [f32]) {
        let (rows, cols) = self.dims();
        assert!(
            xt.len() >= cols * n && out.len() >= rows * n,
            "matmul sizes"
        );
        match self {
            Effective::Dense { data, .. } => gemm::matmul(
                out,
                Mat::rows(data, rows, cols),
                Mat::rows(xt, cols, n),
                false,
                false,
            ),
            Effective::Sparse(t) => vectorized(
                #[inline(always)]
                || t.matmul(xt, n, out),
            ),
        }
    }

    /// `out[cols x n] = Weff^T * gt[rows x n]` (both row-major), single-threaded.
    pub fn matmul_t(&self, gt: &[f32], n: usize, out: &mut [f32]) {
        let (rows, cols) = self.dims();
        assert!(
            gt.len() >= rows * n && out.len() >= cols * n,
            "matmul_t sizes"
        );
        match self {
            Effective::Dense { data, .. } => gemm::matmul(
                out,
                Mat::rows(data, rows, cols).t(),
                Mat::rows(gt, rows, n),
                false,
                false,
            ),
            Effective::Sparse(t) => vectorized(
                #[inline(always)]
                || t.matmul_t(gt, n, out),
            ),
        }
    }
}

/// Columns of one register block of [`Ternary::matmul_rows`]: four AVX2 vectors of
/// accumulators, enough independent adds to cover the add latency.
const ROW_BLOCK: usize = 32;

/// `x[c..c + ROW_BLOCK]` as an array, so the block's loops have a fixed length.
#[inline(always)]
fn block_at(x: &[f32], c: usize) -> &[f32; ROW_BLOCK] {
    x[c..c + ROW_BLOCK].try_into().expect("a whole block")
}

/// `acc += x` element-wise (a loop the compiler vectorizes).
#[inline(always)]
fn add_to(acc: &mut [f32], x: &[f32]) {
    for (a, x) in acc.iter_mut().zip(x) {
        *a += x;
    }
}

/// `acc -= x` element-wise.
#[inline(always)]
fn sub_from(acc: &mut [f32], x: &[f32]) {
    for (a, x) in acc.iter_mut().zip(x) {
        *a -= x;
    }
}

/// `acc += w * x` element-wise.
#[inline(always)]
fn axpy(acc: &mut [f32], w: f32, x: &[f32]) {
    for (a, x) in acc.iter_mut().zip(x) {
        *a += w * x;
    }
}

#[inline(always)]
fn scale(acc: &mut [f32], s: f32) {
    for a in acc {
        *a *= s;
    }
}

/// Sum of the rows `xt[i]` for `i` in `idx`, with four independent accumulators so the adds
/// do not wait on each other (one chain would be bound by the add latency).
#[inline(always)]
fn sum_rows<const N: usize>(xt: &[[f32; N]], idx: &[u32]) -> [f32; N] {
    let mut acc = [[0.0f32; N]; 4];
    let mut quads = idx.chunks_exact(4);
    for q in &mut quads {
        for (a, &i) in acc.iter_mut().zip(q) {
            let v = &xt[i as usize];
            for k in 0..N {
                a[k] += v[k];
            }
        }
    }
    for &i in quads.remainder() {
        let v = &xt[i as usize];
        for k in 0..N {
            acc[0][k] += v[k];
        }
    }
    let mut out = [0.0f32; N];
    for k in 0..N {
        out[k] = (acc[0][k] + acc[1][k]) + (acc[2][k] + acc[3][k]);
    }
    out
}

/// `sum x[i]` over `idx`, with four independent accumulators (one chain would wait on the
/// add latency at every entry).
#[inline(always)]
fn gather_sum(x: &[f32], idx: &[u32]) -> f32 {
    let mut acc = [0.0f32; 4];
    let mut quads = idx.chunks_exact(4);
    for q in &mut quads {
        for (a, &i) in acc.iter_mut().zip(q) {
            *a += x[i as usize];
        }
    }
    for &i in quads.remainder() {
        acc[0] += x[i as usize];
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3])
}

impl Ternary {
    #[inline(always)]
    fn row(xt: &[f32], i: u32, n: usize) -> &[f32] {
        let i = i as usize;
        &xt[i * n..(i + 1) * n]
    }

    /// `out = Weff * xt`: every output row sums (adds or subtracts) the kept input rows.
    #[inline(always)]
    fn matmul(&self, xt: &[f32], n: usize, out: &mut [f32]) {
        if n == 1 {
            return self.matvec(xt, out);
        }
        self.matmul_rows(n, |i| Self::row(xt, i, n), out);
    }

    /// `out[rows x n] = Weff * X` where `row(i)` is row `i` of `X` (`n` values): every output
    /// row sums (adds or subtracts) the kept rows, in the order of `idx`. Call inside
    /// [`vectorized`].
    ///
    /// The columns run in blocks of [`ROW_BLOCK`] held in registers over all of a row's kept
    /// entries, so each entry costs loads and adds but no store; the tail columns accumulate
    /// in `out`. Every output value takes the same operations in the same order either way
    /// (from `0.0`, the positive rows, then the negative ones, then the magnitude), so the
    /// blocking changes no bit.
    #[inline(always)]
    pub(crate) fn matmul_rows<'a>(
        &self,
        n: usize,
        row: impl Fn(u32) -> &'a [f32],
        out: &mut [f32],
    ) {
        self.matmul_rows_at(n, row, out, n)
    }

    /// [`Ternary::matmul_rows`] with output row `r` at `out[r * stride..][..n]` (`stride >=
    /// n`; the values between rows are not touched). Call inside [`vectorized`].
    #[inline(always)]
    pub(crate) fn matmul_rows_at<'a>(
        &self,
        n: usize,
        row: impl Fn(u32) -> &'a [f32],
        out: &mut [f32],
        stride: usize,
    ) {
        debug_assert!(stride >= n);
        let rows: Vec<&[f32]> = self.idx.iter().map(|&i| &row(i)[..n]).collect();
        let full = n - n % ROW_BLOCK;
        for (r, acc) in out
            .chunks_mut(stride)
            .map(|c| &mut c[..n])
            .take(self.rows)
            .enumerate()
        {
            let (start, end) = (self.ptr[r], self.ptr[r + 1]);
            let (head, tail) = acc.split_at_mut(full);
            match &self.values {
                Values::Signs { split, magnitude } => {
                    let (plus, minus) = (&rows[start..split[r]], &rows[split[r]..end]);
                    for (c, block) in head.chunks_exact_mut(ROW_BLOCK).enumerate() {
                        let c = c * ROW_BLOCK;
                        let mut a = [0.0f32; ROW_BLOCK];
                        for x in plus {
                            let x = block_at(x, c);
                            for k in 0..ROW_BLOCK {
                                a[k] += x[k];
                            }
                        }
                        for x in minus {
                            let x = block_at(x, c);
                            for k in 0..ROW_BLOCK {
                                a[k] -= x[k];
                            }
                        }
                        for (o, a) in block.iter_mut().zip(a) {
                            *o = a * magnitude;
                        }
                    }
                    tail.fill(0.0);
                    for x in plus {
                        add_to(tail, &x[full..]);
                    }
                    for x in minus {
                        sub_from(tail, &x[full..]);
                    }
                    scale(tail, *magnitude);
                }
                Values::Weights(v) => {
                    let (kept, w) = (&rows[start..end], &v[start..end]);
                    for (c, block) in head.chunks_exact_mut(ROW_BLOCK).enumerate() {
                        let c = c * ROW_BLOCK;
                        let mut a = [0.0f32; ROW_BLOCK];
                        for (x, &w) in kept.iter().zip(w) {
                            let x = block_at(x, c);
                            for k in 0..ROW_BLOCK {
                                a[k] += w * x[k];
                            }
                        }
                        block.copy_from_slice(&a);
                    }
                    tail.fill(0.0);
                    for (x, &w) in kept.iter().zip(w) {
                        axpy(tail, w, &x[full..]);
                    }
                }
            }
        }
    }

    /// `out = Weff * xt` for a block of `N` columns stored as `[f32; N]` rows (feature-major
    /// activations of `N` samples): every kept entry is one fixed-width vector add, with no
    /// per-entry slice handling, so short blocks that stay in L1 run at full speed. For
    /// inference engines; `xt.len()` must be `cols` and `out.len()` `rows`.
    pub fn matmul_block<const N: usize>(&self, xt: &[[f32; N]], out: &mut [[f32; N]]) {
        assert!(
            xt.len() >= self.cols && out.len() >= self.rows,
            "matmul_block sizes"
        );
        vectorized(
            #[inline(always)]
            || {
                for (r, o) in out.iter_mut().take(self.rows).enumerate() {
                    let (start, end) = (self.ptr[r], self.ptr[r + 1]);
                    let mut acc = [0.0f32; N];
                    match &self.values {
                        Values::Signs { split, magnitude } => {
                            let plus = sum_rows(xt, &self.idx[start..split[r]]);
                            let minus = sum_rows(xt, &self.idx[split[r]..end]);
                            for k in 0..N {
                                acc[k] = (plus[k] - minus[k]) * magnitude;
                            }
                        }
                        Values::Weights(w) => {
                            for (&i, &w) in self.idx[start..end].iter().zip(&w[start..end]) {
                                let v = &xt[i as usize];
                                for k in 0..N {
                                    acc[k] += w * v[k];
                                }
                            }
                        }
                    }
                    *o = acc;
                }
            },
        )
    }

    /// `out = Weff * x` for one column (a single sample): gather-sums over the kept indices,
    /// without the per-entry slice handling of the batched loop.
    #[inline(always)]
    fn matvec(&self, x: &[f32], out: &mut [f32]) {
        let x = &x[..self.cols];
        for (r, o) in out.iter_mut().take(self.rows).enumerate() {
            let (start, end) = (self.ptr[r], self.ptr[r + 1]);
            *o = match &self.values {
                Values::Signs { split, magnitude } => {
                    let plus = gather_sum(x, &self.idx[start..split[r]]);
                    let minus = gather_sum(x, &self.idx[split[r]..end]);
                    (plus - minus) * magnitude
                }
                Values::Weights(v) => self.idx[start..end]
                    .iter()
                    .zip(&v[start..end])
                    .map(|(&i, &w)| w * x[i as usize])
                    .sum(),
            };
        }
    }

    /// `out = Weff^T * gt`: every kept entry scatters its output row into its input row.
    #[inline(always)]
    fn matmul_t(&self, gt: &[f32], n: usize, out: &mut [f32]) {
        let out = &mut out[..self.cols * n];
        out.fill(0.0);
        for r in 0..self.rows {
            let g = &gt[r * n..(r + 1) * n];
            let (start, end) = (self.ptr[r], self.ptr[r + 1]);
            match &self.values {
                Values::Signs { split, .. } => {
                    for &i in &self.idx[start..split[r]] {
                        let i = i as usize;
                        add_to(&mut out[i * n..(i + 1) * n], g);
                    }
                    for &i in &self.idx[split[r]..end] {
                        let i = i as usize;
                        sub_from(&mut out[i * n..(i + 1) * n], g);
                    }
                }
                Values::Weights(v) => {
                    for (&i, &w) in self.idx[start..end].iter().zip(&v[start..end]) {
                        let i = i as usize;
                        axpy(&mut out[i * n..(i + 1) * n], w, g);
                    }
                }
            }
        }
        if let Values::Signs { magnitude, .. } = self.values {
            scale(out, magnitude);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Effective, Layout, Ternary};

    /// Values in [-1, 1) with 24-bit fractions, so that any change in the order of a sum
    /// changes its bits.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        crate::rng::spread_values(n, seed, -1.0, 1.0)
    }

    /// Output `(r, j)` of [`Ternary::matmul_rows`] by its definition, one value at a time:
    /// from `0.0`, add the positive rows' entries in `idx` order, subtract the negative ones,
    /// then scale; or add `w x` per kept entry.
    fn by_definition(t: &Ternary, xt: &[f32], n: usize, r: usize, j: usize) -> f32 {
        let (start, end) = (t.ptr[r], t.ptr[r + 1]);
        let x = |i: u32| xt[i as usize * n + j];
        match &t.values {
            super::Values::Signs { split, magnitude } => {
                let mut a = 0.0f32;
                for &i in &t.idx[start..split[r]] {
                    a += x(i);
                }
                for &i in &t.idx[split[r]..end] {
                    a -= x(i);
                }
                a * magnitude
            }
            super::Values::Weights(v) => {
                let mut a = 0.0f32;
                for (&i, &w) in t.idx[start..end].iter().zip(&v[start..end]) {
                    a += w * x(i);
                }
                a
            }
        }
    }

    /// The register-blocked rows give every output the bits of its definition, for widths
    /// below, at and between whole blocks (so both the blocks and the tail are covered).
    #[test]
    fn matmul_rows_equals_its_definition_bit_for_bit() {
        let (rows, cols) = (7, 40);
        let w: Vec<f32> = values(rows * cols, 1)
            .iter()
            .map(|v| 0.3f32.copysign(*v))
            .collect();
        let mask: Vec<f32> = values(rows * cols, 2)
            .iter()
            .map(|v| if v.abs() < 0.5 { 0.0 } else { v.signum() })
            .collect();
        for magnitude in [Some(0.3), None] {
            let Effective::Sparse(t) =
                Effective::build(&w, &mask, rows, cols, magnitude, Layout::Sparse)
            else {
                panic!("the sparse layout was asked for");
            };
            for n in [1, 5, 31, 32, 33, 64, 77] {
                let xt = values(cols * n, n as u64);
                let mut out = vec![f32::NAN; rows * n];
                t.matmul_rows(n, |i| &xt[i as usize * n..(i as usize + 1) * n], &mut out);
                for r in 0..rows {
                    for j in 0..n {
                        let want = by_definition(&t, &xt, n, r, j);
                        assert_eq!(
                            out[r * n + j].to_bits(),
                            want.to_bits(),
                            "row {r}, column {j} of {n}, magnitude {magnitude:?}"
                        );
                    }
                }
            }
        }
    }
}
