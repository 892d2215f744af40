//! Analyses of trained masks `g(M)` in {-1, 0, +1}: value shares per layer (Figures 2a, 7),
//! element-wise equality between runs (Figures 2b, 8), and, for a first FCN layer, the sum of
//! |mask| over runs and the input columns masked in every run (Figure 3).

/// One layer's final mask.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerMask {
    /// Layer name (`fc1`, `conv1`, ...).
    pub name: String,
    /// The weight's shape, `[out, in, ...]`.
    pub shape: Vec<usize>,
    /// The mask values, row-major, each -1, 0 or +1.
    pub values: Vec<i8>,
}

impl LayerMask {
    /// Rows (`shape[0]`) and columns (the product of the rest) of the layer as a matrix.
    pub fn matrix_dims(&self) -> (usize, usize) {
        let rows = self.shape.first().copied().unwrap_or(1);
        (rows, self.values.len() / rows.max(1))
    }

    /// Non-zero entries.
    pub fn nnz(&self) -> usize {
        self.values.iter().filter(|&&v| v != 0).count()
    }
}

/// Shares of -1, 0 and +1 in a mask.
pub fn shares(values: &[i8]) -> [f64; 3] {
    let mut c = [0usize; 3];
    for &v in values {
        c[(v.signum() + 1) as usize] += 1;
    }
    let n = values.len().max(1) as f64;
    c.map(|k| k as f64 / n)
}

/// Share of positions where two masks are equal; with `absolute`, where |a| equals |b|
/// (kept or pruned in both, whatever the sign).
pub fn equality(a: &[i8], b: &[i8], absolute: bool) -> f64 {
    assert_eq!(a.len(), b.len(), "masks of different sizes");
    let same = a
        .iter()
        .zip(b)
        .filter(|(x, y)| if absolute { x.abs() == y.abs() } else { x == y })
        .count();
    same as f64 / a.len().max(1) as f64
}

/// [`equality`] of every pair of runs (`i < j`).
pub fn pairwise_equality(runs: &[&[i8]], absolute: bool) -> Vec<f64> {
    let mut out = Vec::new();
    for i in 0..runs.len() {
        for j in i + 1..runs.len() {
            out.push(equality(runs[i], runs[j], absolute));
        }
    }
    out
}

/// Element-wise sum of |mask| over runs.
pub fn abs_sum(runs: &[&[i8]]) -> Vec<u32> {
    let n = runs.first().map_or(0, |r| r.len());
    let mut sum = vec![0u32; n];
    for r in runs {
        assert_eq!(r.len(), n, "masks of different sizes");
        for (s, &v) in sum.iter_mut().zip(r.iter()) {
            *s += v.unsigned_abs() as u32;
        }
    }
    sum
}

/// Columns of a `rows x cols` matrix (row-major) whose entries sum to at most `max_sum`; with
/// an [`abs_sum`] and `max_sum = 0`, the input columns masked in every run.
pub fn quiet_columns(sum: &[u32], rows: usize, cols: usize, max_sum: u32) -> usize {
    assert_eq!(sum.len(), rows * cols, "sum is not rows x cols");
    (0..cols)
        .filter(|&c| (0..rows).map(|r| sum[r * cols + c]).sum::<u32>() <= max_sum)
        .count()
}

/// Share of entries equal to zero in an [`abs_sum`]: weights pruned in every run.
pub fn always_pruned(sum: &[u32]) -> f64 {
    sum.iter().filter(|&&s| s == 0).count() as f64 / sum.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_count_each_value() {
        assert_eq!(shares(&[-1, 0, 0, 1]), [0.25, 0.5, 0.25]);
    }

    /// Three runs of a 2x3 mask; by hand: run pairs (0,1) agree at 4 of 6 positions, (0,2) at
    /// 2, (1,2) at 4; in absolute value (0,1) 5, (0,2) 4, (1,2) 5.
    #[test]
    fn equality_counts_matching_positions() {
        let a: &[i8] = &[1, 0, -1, 0, 1, 0];
        let b: &[i8] = &[1, 0, 1, 0, 1, 1];
        let c: &[i8] = &[-1, 0, 1, 0, 0, 1];
        assert_eq!(
            pairwise_equality(&[a, b, c], false),
            vec![4.0 / 6.0, 2.0 / 6.0, 4.0 / 6.0]
        );
        assert_eq!(
            pairwise_equality(&[a, b, c], true),
            vec![5.0 / 6.0, 4.0 / 6.0, 5.0 / 6.0]
        );
    }

    /// The sum above is [3, 0, 3, 0, 2, 2], as a 2x3 matrix rows [3, 0, 3] and [0, 2, 2]:
    /// column sums 3, 2, 5. A 2x2 sum [0, 1, 0, 0] has column sums 0 and 1.
    #[test]
    fn columns_masked_in_every_run() {
        let a: &[i8] = &[1, 0, -1, 0, 1, 0];
        let b: &[i8] = &[1, 0, 1, 0, 1, 1];
        let c: &[i8] = &[-1, 0, 1, 0, 0, 1];
        let sum = abs_sum(&[a, b, c]);
        assert_eq!(sum, vec![3, 0, 3, 0, 2, 2]);
        assert_eq!(quiet_columns(&sum, 2, 3, 0), 0);
        assert_eq!(quiet_columns(&sum, 2, 3, 2), 1);
        assert_eq!(quiet_columns(&sum, 2, 3, 3), 2);
        assert_eq!(quiet_columns(&[0, 1, 0, 0], 2, 2, 0), 1);
        assert_eq!(always_pruned(&sum), 2.0 / 6.0);
    }
}
