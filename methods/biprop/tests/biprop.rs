//! Biprop's mask: the framework's conformance checks, their alpha, the binarised effective
//! weight and its gradient.

use candle_core::{Device, Tensor, Var};
use supermask_biprop::BipropMask;
use supermask_core::{ops::reference, ops::MaskedArgs, MaskCtx, MaskFn, PluginKind, Taus};
use supermask_train::conformance;

#[test]
fn biprop_conforms() {
    supermask_biprop::link();
    let ran = conformance::check_plugin(PluginKind::Mask, "biprop").unwrap();
    assert_eq!(ran, ["toml round trip", "mask"]);
}

/// Four weights, keep 0.5: the two largest |M| (positions 0 and 3) are kept, alpha =
/// (|1.0| + |-4.0|) / int(0.5 * 4) = 2.5, the effective weight `alpha sign(W) mask` =
/// [2.5, 0, 0, -2.5]; the score gradient of `sum(W_eff)` is `W * sign(M)` = [1, -2, -3, 4].
#[test]
fn the_effective_weight_is_alpha_sign_w_on_the_kept_entries() {
    let m = BipropMask { keep: 0.5 };
    let w = Tensor::new(&[1.0f32, 2.0, -3.0, -4.0], &Device::Cpu).unwrap();
    let scores = Var::from_vec(vec![0.3f32, -0.2, 0.05, -0.4], 4, &Device::Cpu).unwrap();
    let taus = Taus {
        neg: -0.01,
        pos: 0.01,
    };
    let args = MaskedArgs {
        name: "l",
        weight: &w,
        scores: scores.as_tensor(),
        magnitude: None,
        mask: &m,
        taus,
        mask_ctx: MaskCtx::eval(),
    };
    let eff = reference::masked_weight(&args).unwrap();
    assert_eq!(eff.to_vec1::<f32>().unwrap(), [2.5, 0.0, 0.0, -2.5]);
    let hard = m.hard(scores.as_tensor(), taus, &MaskCtx::eval()).unwrap();
    assert_eq!(m.alpha(&w, &hard).unwrap(), 2.5);
    let grads = eff.sum_all().unwrap().backward().unwrap();
    let g = grads
        .get(scores.as_tensor())
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(g, [1.0, -2.0, -3.0, 4.0]);
}

/// Their denominator is `int(k n)`, not the kept count: keep 0.5 of 5 prunes int(2.5) = 2,
/// keeps 3, and divides by int(2.5) = 2, so alpha = 3 * 2.0 / 2 = 3.
#[test]
fn alpha_divides_by_their_truncated_share() {
    let m = BipropMask { keep: 0.5 };
    let w = Tensor::new(&[2.0f32; 5], &Device::Cpu).unwrap();
    let hard = Tensor::new(&[1.0f32, 1.0, 1.0, 0.0, 0.0], &Device::Cpu).unwrap();
    assert_eq!(m.alpha(&w, &hard).unwrap(), 3.0);
}
