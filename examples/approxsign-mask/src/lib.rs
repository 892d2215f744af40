//! A mask variant the framework does not ship, as its own crate: the signed Supermask of the
//! paper (equation 1) trained with Bi-Real Net's ApproxSign gradient (Liu et al., ECCV 2018)
//! around each threshold instead of the identity straight-through estimator.
//!
//! Values: `g(M) = -1 if M <= tau_n, +1 if M >= tau_p, else 0` (exactly the `signed` mask).
//! Gradient: `dL/dM = dL/dg * s'(M)` with the surrogate
//! `s(M) = (w/2) [phi((M - tau_p)/w) + phi((M - tau_n)/w)]`, `phi(u) = 2u - u|u|` on
//! `u in [-1, 1]` (constant outside), so `s'(M) = (1/2) [phi'(.) + phi'(.)]` with
//! `phi'(u) = 2 - 2|u|`: the gradient peaks at each threshold and is zero more than `width`
//! away from both. The mask declares this ([`MaskGradient::Surrogate`]); the framework then
//! trains its layers on the reference kernels, which implement it.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use supermask_core::{
    mask, register_plugin, MaskCtx, MaskFn, MaskGradient, MaskRange, Result, Taus,
};

/// The signed Supermask with an ApproxSign surrogate gradient of half-width `width` around each
/// threshold.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproxSignMask {
    /// Half-width of the gradient's support around each threshold (> 0).
    #[serde(default = "default_width")]
    pub width: f64,
}

fn default_width() -> f64 {
    0.05
}

impl Default for ApproxSignMask {
    fn default() -> Self {
        Self {
            width: default_width(),
        }
    }
}

/// `phi(u) = 2u - u|u|` for `u = clamp(x / w, -1, 1)`, times `w / 2`.
fn phi(x: &Tensor, w: f64) -> Result<Tensor> {
    let u = (x / w)?.clamp(-1.0, 1.0)?;
    let v = ((&u * 2.0)? - (&u * u.abs()?)?)?;
    Ok((v * (w / 2.0))?)
}

#[typetag::serde(name = "signed-approxsign")]
impl MaskFn for ApproxSignMask {
    fn range(&self) -> MaskRange {
        MaskRange::Signed
    }

    fn hard(&self, scores: &Tensor, taus: Taus, _ctx: &MaskCtx) -> Result<Tensor> {
        mask::signed_values(scores, taus)
    }

    fn hard_into(&self, scores: &[f32], taus: Taus, _ctx: &MaskCtx, out: &mut [f32]) -> bool {
        mask::signed_values_into(scores, taus, out);
        true
    }

    fn gradient(&self) -> MaskGradient {
        MaskGradient::Surrogate
    }

    fn validate(&self) -> Result<()> {
        supermask_core::anyhow::ensure!(
            self.width.is_finite() && self.width > 0.0,
            "width must be a positive number, got {}",
            self.width
        );
        Ok(())
    }

    fn surrogate(&self, scores: &Tensor, taus: Taus) -> Result<Tensor> {
        let up = phi(&(scores - taus.pos as f64)?, self.width)?;
        let down = phi(&(scores - taus.neg as f64)?, self.width)?;
        Ok((up + down)?)
    }
}

register_plugin!(
    Mask,
    "signed-approxsign",
    ApproxSignMask,
    "signed Supermask {-1,0,1} (eq. 1) with Bi-Real Net's ApproxSign gradient within `width` of each threshold",
    example = "width = 0.05"
);

/// Makes sure this crate is linked, so its registration exists (pass it to
/// `supermask_cli::main_with`, or call it before using the registry).
pub fn link() {
    std::hint::black_box(ApproxSignMask::default());
}
