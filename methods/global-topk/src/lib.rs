//! Global top-k with a sparsity ramp: one ranking of `|M|` over every masked layer, as
//! chrundle/biprop's `GlobalSubnetConv` (`trainers/default.py`, `main.py`) and Gem-Miner's
//! `global_ep` rank scores across layers:
//!
//! ```text
//! z = sort(concat(|scores| of every layer))           # recomputed before every batch
//! threshold = z[int((1 - k) * z.numel()) - 1]
//! mask = |scores| > threshold                          # strict
//! ```
//!
//! Two plugins: the threshold `global-top-k` computes that cut (as `tau_p`, after every step,
//! for the next one) and the mask `magnitude` applies it, `g(M) = 1 if |M| > tau_p else 0`,
//! with the gradient through `|M|` (edge-popup's, [`MaskGradient::StraightThroughAbs`]). The kept share
//! follows biprop's cubic ramp (Zhu & Gupta's schedule, their `main.py`): for the 0-based epoch
//! `e < ramp_epochs` the pruned share is `s_f + (0.5 - s_f) (1 - e / ramp_epochs)^3` with
//! `s_f = 1 - keep`, from `ramp_epochs` on it is `s_f`; as in their code the ramp runs only
//! for `keep <= 0.5` (it starts from half the weights kept) and `keep > 0.5` holds from the
//! start. Ties at the cut are all pruned (strict `>`), and a cut index of 0 (keep everything)
//! keeps everything (their `z[-1]` would prune all).

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use supermask_core::{
    register_plugin, MaskCtx, MaskFn, MaskGradient, MaskRange, Result, Taus, Threshold, UpdateEvery,
};

/// `g(M) = 1 if |M| > tau_p else 0`, gradient through `|M|`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MagnitudeMask {}

#[typetag::serde(name = "magnitude")]
impl MaskFn for MagnitudeMask {
    fn range(&self) -> MaskRange {
        MaskRange::Binary
    }

    fn hard(&self, scores: &Tensor, taus: Taus, _ctx: &MaskCtx) -> Result<Tensor> {
        Ok(scores
            .abs()?
            .gt(f64::from(taus.pos))?
            .to_dtype(scores.dtype())?)
    }

    fn hard_into(&self, scores: &[f32], taus: Taus, _ctx: &MaskCtx, out: &mut [f32]) -> bool {
        for (o, s) in out.iter_mut().zip(scores) {
            *o = f32::from(s.abs() > taus.pos);
        }
        true
    }

    fn gradient(&self) -> MaskGradient {
        MaskGradient::StraightThroughAbs
    }
}

register_plugin!(
    Mask,
    "magnitude",
    MagnitudeMask,
    "{0,1}: 1 if |M| > tau_p (the global-top-k threshold's cut), gradient through |M|"
);

/// The global cut of `|M|` keeping the share `keep` of all layers' weights, on a cubic ramp.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalTopK {
    /// Share of all masked weights kept at the end of the ramp, in (0, 1].
    pub keep: f64,
    /// Epochs of the cubic ramp from half the weights kept to `keep` (their
    /// `prune_rate_epoch`, 10); 0 holds `keep` from the start.
    #[serde(default = "default_ramp")]
    pub ramp_epochs: usize,
}

fn default_ramp() -> usize {
    10
}

impl GlobalTopK {
    /// The share kept in the 0-based `epoch`.
    pub fn kept_share(&self, epoch: usize) -> f64 {
        if self.keep > 0.5 || epoch >= self.ramp_epochs {
            return self.keep;
        }
        let final_pruned = 1.0 - self.keep;
        let decay = (1.0 - epoch as f64 / self.ramp_epochs as f64).powi(3);
        1.0 - (final_pruned + (0.5 - final_pruned) * decay)
    }

    /// Every layer's thresholds for the share `keep` of `scores` kept.
    pub fn taus_for(&self, scores: &[Tensor], keep: f64) -> Result<Vec<Taus>> {
        let mut all = Vec::new();
        for s in scores {
            all.extend(
                s.flatten_all()?
                    .to_dtype(DType::F32)?
                    .abs()?
                    .to_vec1::<f32>()?,
            );
        }
        let p = ((1.0 - keep) * all.len() as f64) as usize;
        let cut = if p == 0 {
            -1.0
        } else {
            let (_, v, _) = all.select_nth_unstable_by(p - 1, f32::total_cmp);
            *v
        };
        Ok(vec![
            Taus {
                neg: -f32::MAX,
                pos: cut,
            };
            scores.len()
        ])
    }
}

#[typetag::serde(name = "global-top-k")]
impl Threshold for GlobalTopK {
    fn validate(&self) -> Result<()> {
        supermask_core::anyhow::ensure!(
            self.keep > 0.0 && self.keep <= 1.0,
            "keep (the share of all weights kept) must be in (0, 1], got {}",
            self.keep
        );
        Ok(())
    }

    fn init(&self, scores: &[Tensor]) -> Result<Vec<Taus>> {
        self.taus_for(scores, self.kept_share(0))
    }

    fn every(&self) -> UpdateEvery {
        UpdateEvery::Step
    }

    fn update(&self, scores: &[Tensor], _current: &[Taus]) -> Result<Vec<Taus>> {
        self.taus_for(scores, self.keep)
    }

    fn update_at(&self, scores: &[Tensor], _current: &[Taus], epoch: usize) -> Result<Vec<Taus>> {
        self.taus_for(scores, self.kept_share(epoch))
    }
}

register_plugin!(
    Threshold,
    "global-top-k",
    GlobalTopK,
    "one cut of |M| over all layers keeping the share `keep` (with the magnitude mask), reached along biprop's cubic ramp over `ramp_epochs`",
    example = "keep = 0.2\nramp_epochs = 10"
);

/// Makes sure this crate is linked, so its registrations exist (pass it to
/// `supermask_cli::main_with`, or call it before using the registry).
pub fn link() {
    std::hint::black_box((MagnitudeMask::default(), default_ramp()));
}
