//! Global top-k: the framework's conformance checks on both plugins, the one cut over all
//! layers, and biprop's cubic ramp.

use candle_core::{Device, Tensor};
use supermask_core::{MaskCtx, MaskFn, PluginKind, Threshold};
use supermask_global_topk::{GlobalTopK, MagnitudeMask};
use supermask_train::conformance;

#[test]
fn both_plugins_conform() {
    supermask_global_topk::link();
    let ran = conformance::check_plugin(PluginKind::Mask, "magnitude").unwrap();
    assert_eq!(ran, ["toml round trip", "mask"]);
    let ran = conformance::check_plugin(PluginKind::Threshold, "global-top-k").unwrap();
    assert!(ran.contains(&"toml round trip"), "{ran:?}");
}

/// Two layers of 4 and 6 scores, keep 0.3 of the 10: int(0.7 * 10) = 7 pruned, so the cut is
/// the 7th smallest |M| over both layers and 3 weights stay, wherever they are.
#[test]
fn one_cut_over_all_layers_keeps_the_share_of_all_weights() {
    let a = Tensor::new(&[0.9f32, -0.1, 0.2, -0.3], &Device::Cpu).unwrap();
    let b = Tensor::new(&[0.05f32, -0.8, 0.7, 0.15, -0.25, 0.35], &Device::Cpu).unwrap();
    let rule = GlobalTopK {
        keep: 0.3,
        ramp_epochs: 0,
    };
    let taus = rule.update_at(&[a.clone(), b.clone()], &[], 5).unwrap();
    // |M| sorted: .05 .1 .15 .2 .25 .3 .35 | .7 .8 .9 -> the cut is 0.35.
    assert_eq!(taus[0].pos, 0.35);
    assert_eq!(taus[0], taus[1]);
    let m = MagnitudeMask {};
    let ga = m.hard(&a, taus[0], &MaskCtx::eval()).unwrap();
    let gb = m.hard(&b, taus[1], &MaskCtx::eval()).unwrap();
    assert_eq!(ga.to_vec1::<f32>().unwrap(), [1.0, 0.0, 0.0, 0.0]);
    assert_eq!(gb.to_vec1::<f32>().unwrap(), [0.0, 1.0, 1.0, 0.0, 0.0, 0.0]);
    // Keeping everything keeps everything (their z[-1] would prune all).
    let all = GlobalTopK {
        keep: 1.0,
        ramp_epochs: 0,
    };
    let t = all.update_at(std::slice::from_ref(&a), &[], 0).unwrap();
    assert_eq!(
        m.hard(&a, t[0], &MaskCtx::eval())
            .unwrap()
            .to_vec1::<f32>()
            .unwrap(),
        [1.0; 4]
    );
}

/// Their ramp (biprop main.py): pruned share s_f + (0.5 - s_f)(1 - e/10)^3, s_f = 1 - keep,
/// e.g. keep 0.2 at epoch 5: 0.8 + (0.5 - 0.8) * 0.125 = 0.7625 pruned, 0.2375 kept.
#[test]
fn the_kept_share_follows_their_cubic_ramp() {
    let r = GlobalTopK {
        keep: 0.2,
        ramp_epochs: 10,
    };
    assert!((r.kept_share(0) - 0.5).abs() < 1e-12);
    assert!((r.kept_share(5) - 0.2375).abs() < 1e-12);
    assert_eq!(r.kept_share(10), 0.2);
    assert_eq!(r.kept_share(50), 0.2);
    let shares: Vec<f64> = (0..=10).map(|e| r.kept_share(e)).collect();
    assert!(shares.windows(2).all(|w| w[1] <= w[0]), "{shares:?}");
    // keep > 0.5: no ramp, as their guard.
    let wide = GlobalTopK {
        keep: 0.7,
        ramp_epochs: 10,
    };
    assert_eq!(wide.kept_share(0), 0.7);
    assert!(GlobalTopK {
        keep: 0.0,
        ramp_epochs: 1
    }
    .validate()
    .is_err());
}
