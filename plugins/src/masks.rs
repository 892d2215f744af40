//! Mask functions. All use the straight-through estimator of
//! [`supermask_core::mask::apply`]: `dL/dM = dL/d(W g(M)) * W`.

use candle_core::{DType, Tensor};
use rand::Rng;
use serde::{Deserialize, Serialize};
use supermask_core::{mask, register_plugin, rng, MaskCtx, MaskFn, MaskRange, Result, Taus};

/// The signed Supermask, equation 1 of the paper:
/// `g(M) = -1 if M <= tau_n; 0 if tau_n < M < tau_p; +1 if M >= tau_p`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedMask {}

#[typetag::serde(name = "signed")]
impl MaskFn for SignedMask {
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
}
register_plugin!(
    Mask,
    "signed",
    SignedMask,
    "signed Supermask {-1,0,1}: -1 if M <= tau_n, +1 if M >= tau_p, else 0 (eq. 1)"
);

/// The deterministic binary Supermask: `g(M) = 1 if M >= tau_p else 0` (the `{0, 1}` mask of
/// the paper's Figure 3 comparison; `tau_n` is unused).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BinaryMask {}

#[typetag::serde(name = "binary")]
impl MaskFn for BinaryMask {
    fn range(&self) -> MaskRange {
        MaskRange::Binary
    }

    fn hard(&self, scores: &Tensor, taus: Taus, _ctx: &MaskCtx) -> Result<Tensor> {
        Ok(scores.ge(taus.pos as f64)?.to_dtype(scores.dtype())?)
    }

    fn hard_into(&self, scores: &[f32], taus: Taus, _ctx: &MaskCtx, out: &mut [f32]) -> bool {
        for (o, &m) in out.iter_mut().zip(scores) {
            *o = f32::from(m >= taus.pos);
        }
        true
    }
}
register_plugin!(
    Mask,
    "binary",
    BinaryMask,
    "binary Supermask {0,1}: 1 if M >= tau_p, else 0 (deterministic threshold)"
);

/// Zhou et al. (2019)'s stochastic Supermask: in training every entry is kept with
/// probability `sigmoid(M)`, sampled anew at every forward pass (`m ~ Bernoulli(sigmoid(M))`),
/// with the straight-through gradient to `M`. In evaluation the mask is the deterministic
/// `sigmoid(M) >= 0.5`, i.e. `M >= 0` (thresholds are unused).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BernoulliMask {}

#[typetag::serde(name = "bernoulli")]
impl MaskFn for BernoulliMask {
    fn range(&self) -> MaskRange {
        MaskRange::Binary
    }

    fn hard(&self, scores: &Tensor, _taus: Taus, ctx: &MaskCtx) -> Result<Tensor> {
        if !ctx.train {
            return Ok(scores.ge(0.0)?.to_dtype(scores.dtype())?);
        }
        let prob = (scores.to_dtype(DType::F32)?.neg()?.exp()? + 1.0)?.recip()?;
        let mut r = rng::stream(ctx.seed, &[0xBE57]);
        let u: Vec<f32> = (0..scores.elem_count())
            .map(|_| r.random::<f32>())
            .collect();
        let u = Tensor::from_vec(u, scores.dims(), scores.device())?;
        Ok(u.lt(&prob)?.to_dtype(scores.dtype())?)
    }
}
register_plugin!(Mask, "bernoulli", BernoulliMask, "Zhou et al. stochastic mask {0,1}: keep with probability sigmoid(M) each forward, STE; eval keeps M >= 0");
