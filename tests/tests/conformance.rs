//! The public conformance checks (`supermask_train::conformance`): every built-in plugin passes
//! them, and they catch the faults they exist for: a fast path that disagrees with the mask,
//! values outside the declared range, and a surrogate gradient, which must reach the scores on
//! the fused path too (issue 14: a mask's custom gradient was silently replaced by the identity
//! on the fused path).

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use supermask_core::{
    fused::{KernelConfig, KernelPath},
    mask, registry, ForwardCtx, Layer, LayerFactory, MaskCtx, MaskFn, MaskGradient, MaskRange,
    MaskingConfig, PluginKind, Result, Taus,
};
use supermask_train::conformance;

#[test]
fn every_built_in_plugin_conforms() {
    let n = conformance::check_registered(|_| true).unwrap();
    // 3 masks, 4 thresholds, 7 inits, 2 losses, 8 models (FCN, Conv2/4/6/8, ResNet20/56/110).
    assert!(n >= 24, "only {n} plugins checked");
}

#[test]
fn check_plugin_names_the_checks_it_ran() {
    let ran = conformance::check_plugin(PluginKind::Mask, "signed").unwrap();
    assert_eq!(ran, ["toml round trip", "mask"]);
}

/// `g(M) = 1 if M >= tau_p else 0`, with a fast path that is off by one entry.
#[derive(Debug, Default, Serialize, Deserialize)]
struct WrongFastPath {}

#[typetag::serde(name = "test-wrong-fast-path")]
impl MaskFn for WrongFastPath {
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
        out[0] = 1.0 - out[0];
        true
    }
}

/// Claims `{0, 1}` but gives -1 below `tau_n`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct OutOfRange {}

#[typetag::serde(name = "test-out-of-range")]
impl MaskFn for OutOfRange {
    fn range(&self) -> MaskRange {
        MaskRange::Binary
    }
    fn hard(&self, scores: &Tensor, taus: Taus, _ctx: &MaskCtx) -> Result<Tensor> {
        mask::signed_values(scores, taus)
    }
}

/// The signed mask with a sigmoid surrogate gradient: `dL/dM = dL/dg * sigmoid'(4M) * 4`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct SigmoidSurrogate {}

#[typetag::serde(name = "test-sigmoid-surrogate")]
impl MaskFn for SigmoidSurrogate {
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
    fn surrogate(&self, scores: &Tensor, _taus: Taus) -> Result<Tensor> {
        Ok(sigmoid(&(scores * 4.0)?)?)
    }
}

/// `1 / (1 + exp(-x))` from differentiable candle ops.
fn sigmoid(x: &Tensor) -> candle_core::Result<Tensor> {
    (x.neg()?.exp()? + 1.0)?.recip()
}

#[test]
fn a_fast_path_that_disagrees_with_hard_fails() {
    let err = conformance::check_mask(Arc::new(WrongFastPath {})).unwrap_err();
    assert!(
        format!("{err:#}").contains("hard_into() differs from hard()"),
        "{err:#}"
    );
}

#[test]
fn values_outside_the_declared_range_fail() {
    let err = conformance::check_mask(Arc::new(OutOfRange {})).unwrap_err();
    assert!(
        format!("{err:#}").contains("outside its declared range"),
        "{err:#}"
    );
}

#[test]
fn a_surrogate_gradient_mask_conforms() {
    conformance::check_mask(Arc::new(SigmoidSurrogate {})).unwrap();
}

/// The fused path never trains a surrogate-gradient mask with the identity gradient: on both
/// kernel paths the score gradient of `sum(layer(x))` equals the surrogate's
/// `dL/d(W g(M)) * W * 4 sigmoid'(4M)`, which differs from the identity's by far more than
/// rounding.
#[test]
fn the_fused_path_keeps_a_declared_surrogate_gradient() {
    supermask_plugins::link();
    let table = |s: &str| -> toml::Table { toml::from_str(s).unwrap() };
    let masking = MaskingConfig::Masked {
        mask: Arc::new(SigmoidSurrogate {}),
        threshold: registry::threshold_from_table(table("type = \"fixed\"")).unwrap(),
        weight_init: registry::init_from_table(table("type = \"he\"")).unwrap(),
        score_init: registry::init_from_table(table("type = \"xavier-uniform\"")).unwrap(),
    };
    let mut f = LayerFactory::new(masking, Device::Cpu, 1);
    let mut layer = f.linear("fc", 6, 4).unwrap();
    if let Layer::Masked(l) = &mut layer {
        let w: Vec<f32> = (0..24)
            .map(|i| if i % 3 == 0 { -0.5 } else { 0.5 })
            .collect();
        l.set_weight(Tensor::from_vec(w, (4, 6), &Device::Cpu).unwrap())
            .unwrap();
        let m: Vec<f32> = (0..24).map(|i| (i as f32 - 11.5) / 40.0).collect();
        l.scores()
            .set(&Tensor::from_vec(m, (4, 6), &Device::Cpu).unwrap())
            .unwrap();
    }
    let x = Tensor::ones((3, 6), DType::F32, &Device::Cpu).unwrap();
    let grad = |path| {
        let ctx = ForwardCtx {
            kernels: KernelConfig {
                path,
                ..KernelConfig::default()
            },
            ..ForwardCtx::train(0, 0, KernelConfig::default())
        };
        let y = layer.forward_t(&x, &ctx).unwrap();
        let (_, scores) = layer.trainable();
        let g = y.sum_all().unwrap().backward().unwrap();
        g.get(scores.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let Layer::Masked(l) = &layer else {
        panic!("masked layer expected")
    };
    let m = l
        .scores()
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let w = l
        .weight()
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    // dL/d(eff)[o][i] = sum over the batch of x = 3; the surrogate's chain rule on top.
    let want: Vec<f32> = m
        .iter()
        .zip(&w)
        .map(|(&m, &w)| {
            let s = 1.0 / (1.0 + (-4.0 * m).exp());
            3.0 * w * 4.0 * s * (1.0 - s)
        })
        .collect();
    let identity: Vec<f32> = w.iter().map(|&w| 3.0 * w).collect();
    for path in [KernelPath::Reference, KernelPath::Fused] {
        let got = grad(path);
        for i in 0..got.len() {
            assert!(
                (got[i] - want[i]).abs() <= 1e-5 * want[i].abs().max(1e-3),
                "{path:?} [{i}]: {} vs surrogate {}",
                got[i],
                want[i]
            );
        }
        assert_ne!(got, identity, "{path:?} trained with the identity gradient");
    }
}
