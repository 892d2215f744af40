//! Property tests of the mask plugins: straight-through gradients and mask values.

use candle_core::{Device, Tensor, Var};
use proptest::prelude::*;
use std::sync::Arc;
use supermask_core::{registry::Plugin, MaskCtx, MaskFn, Taus};
use supermask_tests::all_plugins;

fn masks() -> Vec<(&'static str, Arc<dyn MaskFn>)> {
    let v: Vec<_> = all_plugins()
        .into_iter()
        .filter_map(|(_, name, p)| match p {
            Plugin::Mask(m) => Some((name, m)),
            _ => None,
        })
        .collect();
    assert!(
        v.len() >= 3,
        "signed, binary and bernoulli must be registered"
    );
    v
}

fn shape_and_values() -> impl Strategy<Value = (usize, usize, Vec<f32>, Vec<f32>, Vec<f32>)> {
    (1usize..12, 1usize..12).prop_flat_map(|(r, c)| {
        let n = r * c;
        (
            Just(r),
            Just(c),
            prop::collection::vec(-1.0f32..1.0, n),
            prop::collection::vec(-0.05f32..0.05, n),
            prop::collection::vec(-2.0f32..2.0, n),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// For every mask plugin, `d/dM sum(G * (W * g(M))) = G * W` exactly (the STE), in train
    /// and eval mode, on random shapes and values.
    #[test]
    fn score_gradient_is_upstream_times_weight(
        (r, c, w, m, g) in shape_and_values(),
        seed in any::<u64>(),
        train in any::<bool>(),
    ) {
        let dev = Device::Cpu;
        let taus = Taus { neg: -0.01, pos: 0.01 };
        for (name, mask) in masks() {
            let wt = Tensor::from_vec(w.clone(), (r, c), &dev).unwrap();
            let gt = Tensor::from_vec(g.clone(), (r, c), &dev).unwrap();
            let scores = Var::from_vec(m.clone(), (r, c), &dev).unwrap();
            let ctx = MaskCtx { train, seed };
            let eff = wt.mul(&supermask_core::mask::apply(mask.as_ref(), scores.as_tensor(), taus, &ctx).unwrap()).unwrap();
            let loss = eff.mul(&gt).unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            let got = grads.get(scores.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for i in 0..r * c {
                let want = g[i] * w[i];
                prop_assert!((got[i] - want).abs() <= 1e-6 * want.abs().max(1.0),
                    "{name}: grad[{i}] = {} but G*W = {want}", got[i]);
            }
        }
    }

    /// Every mask's values lie in its declared range.
    #[test]
    fn mask_values_are_in_declared_range(
        (r, c, _w, m, _g) in shape_and_values(),
        seed in any::<u64>(),
        train in any::<bool>(),
    ) {
        let taus = Taus { neg: -0.01, pos: 0.01 };
        for (name, mask) in masks() {
            let s = Tensor::from_vec(m.clone(), (r, c), &Device::Cpu).unwrap();
            let hard = mask.hard(&s, taus, &MaskCtx { train, seed }).unwrap();
            let allowed = mask.range().values();
            for v in hard.flatten_all().unwrap().to_vec1::<f32>().unwrap() {
                prop_assert!(allowed.contains(&v), "{name}: value {v} not in {allowed:?}");
            }
        }
    }

    /// The signed mask is equation 1 exactly: -1 iff M <= tau_n, +1 iff M >= tau_p, else 0,
    /// checked at the thresholds themselves and one float step on either side of them.
    #[test]
    fn signed_mask_matches_equation_1_at_thresholds(
        a in -1.0f32..1.0,
        gap in 1e-6f32..1.0,
        extra in prop::collection::vec(-2.0f32..2.0, 0..20),
    ) {
        let taus = Taus { neg: a, pos: a + gap };
        let up = |x: f32| f32::from_bits(if x >= 0.0 { x.to_bits() + 1 } else { x.to_bits() - 1 });
        let down = |x: f32| f32::from_bits(if x > 0.0 { x.to_bits() - 1 } else if x == 0.0 { (-f32::MIN_POSITIVE).to_bits() } else { x.to_bits() + 1 });
        let mut scores = vec![taus.neg, up(taus.neg), down(taus.neg), taus.pos, up(taus.pos), down(taus.pos)];
        scores.extend(extra);
        let mask = supermask_plugins::masks::SignedMask::default();
        let t = Tensor::from_vec(scores.clone(), scores.len(), &Device::Cpu).unwrap();
        let got = mask.hard(&t, taus, &MaskCtx::eval()).unwrap().to_vec1::<f32>().unwrap();
        for (s, g) in scores.iter().zip(got) {
            let want = if *s <= taus.neg { -1.0 } else if *s >= taus.pos { 1.0 } else { 0.0 };
            prop_assert_eq!(g, want, "score {} with taus {:?}", s, taus);
        }
    }
}

/// The Bernoulli mask keeps each entry with probability sigmoid(M): over many entries with the
/// same score the kept share is within 5 standard errors of sigmoid(M); and the same seed gives
/// the same sample.
#[test]
fn bernoulli_keeps_with_probability_sigmoid() {
    let mask = supermask_plugins::masks::BernoulliMask::default();
    let taus = Taus {
        neg: -0.01,
        pos: 0.01,
    };
    for m in [-2.0f32, -0.5, 0.0, 1.0] {
        let n = 20_000;
        let s = Tensor::from_vec(vec![m; n], n, &Device::Cpu).unwrap();
        let ctx = MaskCtx {
            train: true,
            seed: 7,
        };
        let a = mask.hard(&s, taus, &ctx).unwrap().to_vec1::<f32>().unwrap();
        let b = mask.hard(&s, taus, &ctx).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a, b, "same seed, same sample");
        let p = 1.0 / (1.0 + (-m as f64).exp());
        let share = a.iter().sum::<f32>() as f64 / n as f64;
        let se = (p * (1.0 - p) / n as f64).sqrt();
        assert!(
            (share - p).abs() < 5.0 * se,
            "M={m}: kept {share}, sigmoid {p}"
        );
    }
}
