//! Threshold rules giving `(tau_n, tau_p)` for every masked layer.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use supermask_core::{register_plugin, Result, Taus, Threshold, UpdateEvery};

fn default_tau_n() -> f32 {
    -0.01
}
fn default_tau_p() -> f32 {
    0.01
}

/// Explicit thresholds for every layer (the paper's "fixed threshold", section 2; the authors'
/// default is `tau_n = -0.01`, `tau_p = 0.01`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixed {
    /// Scores `<= tau_n` map to -1.
    #[serde(default = "default_tau_n")]
    pub tau_n: f32,
    /// Scores `>= tau_p` map to +1.
    #[serde(default = "default_tau_p")]
    pub tau_p: f32,
}

#[typetag::serde(name = "fixed")]
impl Threshold for Fixed {
    fn validate(&self) -> Result<()> {
        Taus {
            neg: self.tau_n,
            pos: self.tau_p,
        }
        .validate()?;
        Ok(())
    }

    fn init(&self, scores: &[Tensor]) -> Result<Vec<Taus>> {
        Ok(vec![
            Taus {
                neg: self.tau_n,
                pos: self.tau_p
            };
            scores.len()
        ])
    }
}
register_plugin!(
    Threshold,
    "fixed",
    Fixed,
    "explicit tau_n < tau_p for every layer, fixed during training (section 2)"
);

fn abs_values(scores: &[Tensor]) -> Result<Vec<f32>> {
    let mut all = Vec::new();
    for s in scores {
        all.extend(
            s.flatten_all()?
                .to_dtype(DType::F32)?
                .abs()?
                .to_vec1::<f32>()?,
        );
    }
    Ok(all)
}

/// One symmetric threshold `tau` (`tau_n = -tau`, `tau_p = tau`) chosen at initialization so
/// that the given share of all mask entries starts at 0, i.e. `|M| < tau` (the "initial
/// pruning rate" row of Table 11). `global` (default) uses one tau over all masked layers, so
/// larger layers start sparser; otherwise each layer gets its own tau.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitialRate {
    /// Target share of zero mask entries at initialization, in `[0, 1)`.
    pub rate: f64,
    /// One tau over all layers (true) or one per layer (false).
    #[serde(default = "default_true")]
    pub global: bool,
}

fn default_true() -> bool {
    true
}

/// The smallest `tau > 0` with `#{|x| < tau} = round(rate * n)` for distinct values.
fn tau_for_rate(mut abs: Vec<f32>, rate: f64) -> Result<f32> {
    anyhow::ensure!(!abs.is_empty(), "no scores to choose a threshold from");
    let k = ((rate * abs.len() as f64).round() as usize).min(abs.len() - 1);
    let (_, kth, _) = abs.select_nth_unstable_by(k, f32::total_cmp);
    Ok(kth.max(f32::MIN_POSITIVE))
}

#[typetag::serde(name = "initial-rate")]
impl Threshold for InitialRate {
    fn validate(&self) -> Result<()> {
        anyhow::ensure!(
            (0.0..1.0).contains(&self.rate),
            "initial-rate: rate must be in [0, 1), got {}",
            self.rate
        );
        Ok(())
    }

    fn init(&self, scores: &[Tensor]) -> Result<Vec<Taus>> {
        let sym = |tau: f32| Taus {
            neg: -tau,
            pos: tau,
        };
        if self.global {
            let tau = tau_for_rate(abs_values(scores)?, self.rate)?;
            Ok(vec![sym(tau); scores.len()])
        } else {
            scores
                .iter()
                .map(|s| {
                    Ok(sym(tau_for_rate(
                        abs_values(std::slice::from_ref(s))?,
                        self.rate,
                    )?))
                })
                .collect()
        }
    }
}
register_plugin!(
    Threshold,
    "initial-rate",
    InitialRate,
    "one symmetric tau chosen at init so that `rate` of all mask entries start at 0 (Table 11)",
    example = "rate = 0.063"
);

/// Edge-popup style adaptive thresholds (Ramanujan et al., 2020; the authors' "score" mode):
/// the top `fraction` of scores map to +1 and the bottom `fraction` to -1 (a binary mask keeps
/// only the top), per layer or over all layers, recomputed every step or epoch.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Adaptive {
    /// Share of entries at each end that are kept, in `(0, 0.5)`.
    pub fraction: f64,
    /// One ranking over all layers (true) or one per layer (false, default).
    #[serde(default)]
    pub global: bool,
    /// When the thresholds are recomputed.
    #[serde(default = "default_every")]
    pub every: UpdateEvery,
}

fn default_every() -> UpdateEvery {
    UpdateEvery::Step
}

/// `(k-th smallest, k-th largest)` with `k = max(1, round(fraction * n))`.
fn tails(mut v: Vec<f32>, fraction: f64) -> Result<Taus> {
    let n = v.len();
    anyhow::ensure!(
        n >= 2,
        "adaptive threshold needs at least 2 scores per ranking"
    );
    let k = ((fraction * n as f64).round() as usize).clamp(1, n / 2);
    let neg = *v.select_nth_unstable_by(k - 1, f32::total_cmp).1;
    let pos = *v.select_nth_unstable_by(n - k, f32::total_cmp).1;
    Taus { neg, pos }.validate()
}

impl Adaptive {
    fn compute(&self, scores: &[Tensor]) -> Result<Vec<Taus>> {
        let values = |s: &Tensor| -> Result<Vec<f32>> {
            Ok(s.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
        };
        if self.global {
            let mut all = Vec::new();
            for s in scores {
                all.extend(values(s)?);
            }
            Ok(vec![tails(all, self.fraction)?; scores.len()])
        } else {
            scores
                .iter()
                .map(|s| tails(values(s)?, self.fraction))
                .collect()
        }
    }
}

#[typetag::serde(name = "adaptive")]
impl Threshold for Adaptive {
    fn validate(&self) -> Result<()> {
        anyhow::ensure!(
            self.fraction > 0.0 && self.fraction < 0.5,
            "adaptive: fraction must be in (0, 0.5), got {}",
            self.fraction
        );
        anyhow::ensure!(
            self.every != UpdateEvery::Never,
            "adaptive: `every` must be \"step\" or \"epoch\" (use `fixed` for constant thresholds)"
        );
        Ok(())
    }

    fn init(&self, scores: &[Tensor]) -> Result<Vec<Taus>> {
        self.compute(scores)
    }

    fn every(&self) -> UpdateEvery {
        self.every
    }

    fn update(&self, scores: &[Tensor], _current: &[Taus]) -> Result<Vec<Taus>> {
        self.compute(scores)
    }
}
register_plugin!(Threshold, "adaptive", Adaptive, "top/bottom `fraction` of the signed scores kept as +1/-1, per layer or global, recomputed each step or epoch (not edge-popup, which ranks |M|: the edge-popup mask)", example = "fraction = 0.1");

/// The authors' rule for their Conv nets and ResNets (REPRODUCTION-NOTES, "Corrections"): per
/// masked layer `tau_l = fraction * max|M_init,l|`, computed once from the layer's initial
/// scores and then fixed; symmetric (`tau_n = -tau_l`, `tau_p = tau_l`). With uniform score
/// initializers about `fraction` of every layer starts at 0. Their configs: Conv2-8 0.4,
/// ResNet20 (all widths) 0.75, ResNet56 0.8. The thresholds are saved in checkpoints with the
/// scores (`<layer>.taus`), so a resumed run keeps them.
///
/// The authors compared strictly (`M > tau` keeps +1); the masks here keep `M >= tau`. The
/// two differ only for a score exactly equal to a threshold, which (with `fraction < 1`) is
/// never a layer's initial maximum and has probability zero afterwards.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaxFraction {
    /// Multiple of the layer's largest initial `|M|`, in `(0, 1)`.
    pub fraction: f64,
}

#[typetag::serde(name = "max-fraction")]
impl Threshold for MaxFraction {
    fn validate(&self) -> Result<()> {
        anyhow::ensure!(
            self.fraction > 0.0 && self.fraction < 1.0,
            "max-fraction: fraction must be in (0, 1), got {}",
            self.fraction
        );
        Ok(())
    }

    fn init(&self, scores: &[Tensor]) -> Result<Vec<Taus>> {
        scores
            .iter()
            .map(|s| {
                let max = abs_values(std::slice::from_ref(s))?
                    .into_iter()
                    .fold(0.0f32, f32::max);
                let tau = (self.fraction * f64::from(max)) as f32;
                anyhow::ensure!(
                    tau.is_finite() && tau > 0.0,
                    "max-fraction: a layer's initial scores have max |M| = {max}; the threshold \
                     needs a finite, non-zero maximum"
                );
                Taus {
                    neg: -tau,
                    pos: tau,
                }
                .validate()
            })
            .collect()
    }
}
register_plugin!(
    Threshold,
    "max-fraction",
    MaxFraction,
    "the authors' Conv/ResNet rule: per layer tau = fraction * max|M_init|, fixed after init, symmetric",
    example = "fraction = 0.4"
);
