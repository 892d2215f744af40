//! The initializer plugin trait: fills a weight or score tensor from its fans, the layer's
//! initial share of zero mask entries `p0`, and a seeded RNG.

use crate::Result;
use rand::{rngs::StdRng, Rng};
use rand_distr::{Distribution as _, Normal, StandardUniform};
use serde::{Deserialize, Serialize};
use std::fmt::Debug;

/// Fans of a layer. Linear `[out, in]`: `fan_in = in`, `fan_out = out`. Conv `k x k x c_in x
/// c_out`: `fan_in = k*k*c_in`, `fan_out = k*k*c_out` (REPRODUCTION-NOTES).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fans {
    /// Inputs feeding one output unit.
    pub fan_in: usize,
    /// Outputs fed by one input unit.
    pub fan_out: usize,
}

/// The distribution family an initializer draws from, given its variance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Distribution {
    /// `+-sqrt(var)` with a random sign (Zhou et al.'s "signed constant").
    SignedConstant,
    /// `U(-b, b)` with `b = sqrt(3 var)`.
    Uniform,
    /// `N(0, var)`.
    #[default]
    Normal,
}

/// Draws `n` values of zero mean and variance `var` from `dist`.
pub fn sample_with_variance(dist: Distribution, var: f64, n: usize, rng: &mut StdRng) -> Vec<f32> {
    let std = var.max(0.0).sqrt();
    match dist {
        Distribution::SignedConstant => (0..n)
            .map(|_| {
                if rng.random::<bool>() {
                    std as f32
                } else {
                    -std as f32
                }
            })
            .collect(),
        Distribution::Uniform => {
            let b = (3.0 * var).sqrt();
            (0..n)
                .map(|_| {
                    let u: f64 = StandardUniform.sample(rng);
                    ((2.0 * u - 1.0) * b) as f32
                })
                .collect()
        }
        Distribution::Normal => {
            let normal = Normal::new(0.0, std).expect("std is finite and >= 0");
            (0..n).map(|_| normal.sample(rng) as f32).collect()
        }
    }
}

/// An initializer: a variance formula plus a distribution family.
#[typetag::serde(tag = "type")]
pub trait Initializer: Debug + Send + Sync {
    /// The target variance for a layer with these fans and initial zero share `p0`.
    fn variance(&self, fans: Fans, p0: f64) -> f64;

    /// The distribution family.
    fn distribution(&self) -> Distribution;

    /// Checks the parameters (called when a config is loaded).
    fn validate(&self) -> Result<()> {
        Ok(())
    }

    /// Draws `n` values.
    fn sample(&self, n: usize, fans: Fans, p0: f64, rng: &mut StdRng) -> Vec<f32> {
        sample_with_variance(self.distribution(), self.variance(fans, p0), n, rng)
    }
}
