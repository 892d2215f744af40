//! Edge-popup's mask: the framework's conformance checks, hidden-networks' top-k arithmetic and
//! the straight-through gradient through |M|.

use candle_core::{Device, Tensor, Var};
use supermask_core::{mask, MaskCtx, MaskFn, PluginKind, Taus};
use supermask_edge_popup::{pruned_count, top_k_into, EdgePopupMask};
use supermask_train::conformance;

#[test]
fn edge_popup_conforms() {
    supermask_edge_popup::link();
    let ran = conformance::check_plugin(PluginKind::Mask, "edge-popup").unwrap();
    assert_eq!(ran, ["toml round trip", "mask"]);
}

/// `int((1 - k) * n)` in f64 as their code: e.g. k = 0.3 of 10 prunes int(7.000000000000001) =
/// 7; k = 0.5 of 235200 (the FCN's first layer) prunes 117600.
#[test]
fn the_pruned_count_is_their_truncated_product() {
    assert_eq!(pruned_count(0.3, 10), 7);
    assert_eq!(pruned_count(0.5, 235_200), 117_600);
    assert_eq!(pruned_count(1.0, 99), 0);
    assert_eq!(pruned_count(0.01, 7), 6);
}

/// The kept entries are exactly those a full sort of |M| keeps (hidden-networks sorts), for
/// random scores of several sizes and shares.
#[test]
fn top_k_keeps_the_largest_magnitudes_as_a_full_sort_does() {
    let mut s = 12345u64;
    for (n, keep) in [
        (1usize, 0.5),
        (10, 0.3),
        (1000, 0.5),
        (4097, 0.05),
        (300, 1.0),
    ] {
        let scores: Vec<f32> = (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
                ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect();
        let mut out = vec![0f32; n];
        top_k_into(&scores, keep, &mut out);
        let mut sorted: Vec<usize> = (0..n).collect();
        sorted.sort_by(|&a, &b| scores[a].abs().total_cmp(&scores[b].abs()));
        let j = pruned_count(keep, n);
        let mut want = vec![1f32; n];
        for &i in &sorted[..j] {
            want[i] = 0.0;
        }
        assert_eq!(out, want, "n {n} keep {keep}");
        assert_eq!(out.iter().sum::<f32>() as usize, n - j);
    }
}

/// `dL/dM = dL/dg * sign(M)`: with loss `sum(W * g(M))` the score gradient is `W * sign(M)`
/// for kept and pruned entries alike (the straight-through estimator passes both).
#[test]
fn the_gradient_goes_straight_through_the_absolute_value() {
    let m = EdgePopupMask { keep: 0.5 };
    let scores = [0.3f32, -0.2, 0.05, -0.4];
    let w = [1.0f32, 2.0, -3.0, 4.0];
    let s = Var::from_vec(scores.to_vec(), 4, &Device::Cpu).unwrap();
    let taus = Taus {
        neg: -0.01,
        pos: 0.01,
    };
    let g = mask::apply(&m, s.as_tensor(), taus, &MaskCtx::eval()).unwrap();
    assert_eq!(g.to_vec1::<f32>().unwrap(), [1.0, 0.0, 0.0, 1.0]);
    let wt = Tensor::new(&w, &Device::Cpu).unwrap();
    let grads = (g * wt).unwrap().sum_all().unwrap().backward().unwrap();
    let got = grads.get(s.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(got, [1.0, -2.0, -3.0, -4.0]);
}

#[test]
fn a_share_outside_zero_to_one_is_refused() {
    for keep in [0.0, -0.1, 1.5, f64::NAN] {
        let err = EdgePopupMask { keep }.validate().unwrap_err();
        assert!(err.to_string().contains("keep"), "{err}");
    }
}
