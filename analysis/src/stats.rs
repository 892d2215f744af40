//! Means, quantile bands and Welch's t-test, as the paper reports them (mean with 5% and 95%
//! quantiles over runs; numpy's default linear-interpolation quantile).

use statrs::distribution::{ContinuousCDF, StudentsT};

/// The `q` quantile of sorted values, linearly interpolated between order statistics
/// (numpy's default `method="linear"`, Hyndman and Fan type 7). `None` when empty.
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let h = (sorted.len() - 1) as f64 * q;
    let lo = h.floor() as usize;
    let hi = h.ceil() as usize;
    Some(sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo]))
}

/// Mean with the 5% and 95% quantiles of a sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Band {
    /// Sample size.
    pub n: usize,
    /// Arithmetic mean.
    pub mean: f64,
    /// 5% quantile.
    pub q05: f64,
    /// 95% quantile.
    pub q95: f64,
}

impl Band {
    /// The band of `values`; `None` when empty or when a value is not finite.
    pub fn of(values: &[f64]) -> Option<Band> {
        if values.is_empty() || values.iter().any(|v| !v.is_finite()) {
            return None;
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        Some(Band {
            n: values.len(),
            mean: values.iter().sum::<f64>() / values.len() as f64,
            q05: quantile(&sorted, 0.05)?,
            q95: quantile(&sorted, 0.95)?,
        })
    }

    /// The band with every value multiplied by `k` (fractions to percent).
    pub fn scaled(self, k: f64) -> Band {
        Band {
            n: self.n,
            mean: self.mean * k,
            q05: self.q05 * k,
            q95: self.q95 * k,
        }
    }
}

/// Sample variance (denominator `n - 1`).
fn variance(v: &[f64]) -> f64 {
    let m = v.iter().sum::<f64>() / v.len() as f64;
    v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() - 1) as f64
}

/// Welch's unequal-variance t-test.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Welch {
    /// The t statistic of `mean(a) - mean(b)`.
    pub t: f64,
    /// Welch-Satterthwaite degrees of freedom.
    pub df: f64,
    /// Two-sided p-value.
    pub p: f64,
}

/// Welch's two-sided t-test of equal means. `None` when either sample has fewer than two
/// values, or when both have zero variance (the statistic is undefined).
pub fn welch(a: &[f64], b: &[f64]) -> Option<Welch> {
    if a.len() < 2 || b.len() < 2 {
        return None;
    }
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let (va, vb) = (variance(a) / na, variance(b) / nb);
    let se2 = va + vb;
    if se2.is_nan() || se2 <= 0.0 {
        return None;
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let t = (mean(a) - mean(b)) / se2.sqrt();
    let df = se2 * se2 / (va * va / (na - 1.0) + vb * vb / (nb - 1.0));
    let dist = StudentsT::new(0.0, 1.0, df).ok()?;
    let p = 2.0 * (1.0 - dist.cdf(t.abs()));
    Some(Welch { t, df, p })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// numpy.quantile([1, 2, 3, 4, 10], [0.05, 0.5, 0.95]) = [1.2, 3.0, 8.8]: h = 4q, so
    /// q=0.05 -> 1 + 0.2 * 1, q=0.95 -> 4 + 0.8 * 6.
    #[test]
    fn quantiles_interpolate_like_numpy() {
        let b = Band::of(&[10.0, 2.0, 1.0, 4.0, 3.0]).unwrap();
        assert!((b.q05 - 1.2).abs() < 1e-12);
        assert!((b.q95 - 8.8).abs() < 1e-12);
        assert!((b.mean - 4.0).abs() < 1e-12);
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0, 10.0], 0.5), Some(3.0));
        assert_eq!(Band::of(&[]), None);
        assert_eq!(Band::of(&[1.0, f64::NAN]), None);
    }

    /// Reference values from scipy 1.17.1, `scipy.stats.ttest_ind(a, b, equal_var=False)`:
    /// statistic, p-value and df printed for these two samples.
    #[test]
    fn welch_matches_scipy() {
        let cases = [
            (
                [1.0, 2.0, 3.0, 4.0, 5.0],
                [3.0, 4.5, 6.0, 7.5, 6.0],
                (-2.304073731539133, 0.050343431355941944, 7.951200979357507),
            ),
            (
                [0.9738, 0.9751, 0.9761, 0.9745, 0.9770],
                [0.9712, 0.9725, 0.9701, 0.9733, 0.9719],
                (4.4342892720609575, 0.0021917940888718807, 7.989111249479002),
            ),
        ];
        for (a, b, (t, p, df)) in cases {
            let w = welch(&a, &b).unwrap();
            assert!((w.t - t).abs() < 1e-9, "t {} vs {t}", w.t);
            assert!((w.df - df).abs() < 1e-9, "df {} vs {df}", w.df);
            assert!((w.p - p).abs() < 1e-9, "p {} vs {p}", w.p);
        }
    }

    #[test]
    fn welch_is_undefined_without_spread_or_samples() {
        assert!(welch(&[1.0], &[2.0, 3.0]).is_none());
        assert!(welch(&[1.0, 1.0], &[2.0, 2.0]).is_none());
    }
}
