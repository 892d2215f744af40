//! The framework's conformance checks on this crate's mask: TOML round trip, declared value
//! range, the declared (ApproxSign) gradient against finite differences, fused kernels equal to
//! the reference.

use supermask_core::PluginKind;
use supermask_train::conformance;

#[test]
fn signed_approxsign_conforms() {
    supermask_approxsign::link();
    let ran = conformance::check_plugin(PluginKind::Mask, "signed-approxsign").unwrap();
    assert_eq!(ran, ["toml round trip", "mask"]);
}

/// The surrogate's derivative is ApproxSign's `1 - |u|` (half of `2 - 2|u|` per threshold) and
/// zero beyond `width` of both thresholds: checked at points where the formula is exact.
#[test]
fn the_gradient_is_approxsign_around_each_threshold() {
    use candle_core::{Device, Var};
    use supermask_core::{mask, MaskCtx, Taus};
    let m = supermask_approxsign::ApproxSignMask { width: 0.1 };
    let taus = Taus {
        neg: -0.2,
        pos: 0.2,
    };
    // Scores: at tau_p, 0.05 above it, 0.5 away from both, at tau_n, 0.1 below tau_n.
    let at = [0.2f32, 0.25, 0.7, -0.2, -0.3];
    let want = [1.0f32, 0.5, 0.0, 1.0, 0.0];
    let s = Var::from_vec(at.to_vec(), 5, &Device::Cpu).unwrap();
    let y = mask::apply(&m, s.as_tensor(), taus, &MaskCtx::eval()).unwrap();
    let g = y.sum_all().unwrap().backward().unwrap();
    let got = g.get(s.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
    for i in 0..5 {
        assert!(
            (got[i] - want[i]).abs() < 1e-5,
            "s'({}) = {} (want {})",
            at[i],
            got[i],
            want[i]
        );
    }
}

#[test]
fn a_non_positive_width_is_refused() {
    use supermask_core::MaskFn;
    let err = supermask_approxsign::ApproxSignMask { width: 0.0 }
        .validate()
        .unwrap_err();
    assert!(err.to_string().contains("width"), "{err}");
}
