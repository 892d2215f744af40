//! Property tests of the initializers: sample variance against each formula.

use proptest::prelude::*;
use rand::{rngs::StdRng, SeedableRng};
use supermask_core::{registry::Plugin, Distribution, Fans, Initializer, PluginKind, Registry};
use supermask_tests::all_plugins;

/// The variance each registered init must produce, written from the paper independently of
/// the plugin code: He `2/fan_in`; Xavier `2/(fan_in+fan_out)`; ELU eq. 3 with p0 = 0
/// `1.5/fan_in`; ELUS eq. 3 `1.5/(fan_in (1-p0))`; score inits with p0 = 0.
fn formula(name: &str, f: Fans, p0: f64) -> f64 {
    let (fi, fo) = (f.fan_in as f64, f.fan_out as f64);
    match name {
        "he" => 2.0 / fi,
        "xavier" | "xavier-uniform" => 2.0 / (fi + fo),
        "elu" | "elus-uniform" => 1.5 / fi,
        "elus" => 1.5 / (fi * (1.0 - p0)),
        "lecun" => 1.0 / fi,
        other => panic!("init `{other}` has no reference formula in this test: add one"),
    }
}

fn with_dist(name: &str, dist: Distribution) -> std::sync::Arc<dyn Initializer> {
    let mut t = toml::Table::new();
    if !name.ends_with("-uniform") {
        let d = toml::Value::try_from(dist).unwrap();
        t.insert("dist".into(), d);
    }
    match Registry::create(PluginKind::Init, name, t).unwrap() {
        Plugin::Init(i) => i,
        _ => unreachable!(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// For every registered init and distribution, the sample variance of 40,000 draws is
    /// within 4% of the formula (the sample variance's relative standard error is at most
    /// sqrt(2/n) = 0.7% for these distributions, so this is a > 5 sigma bound), the mean is
    /// near 0, and the distribution has its shape: signed constants are +-sqrt(var), uniform
    /// draws lie within sqrt(3 var).
    #[test]
    fn sample_variance_matches_formula(
        fan_in in 1usize..2000,
        fan_out in 1usize..2000,
        p0 in 0.0f64..0.9,
        seed in any::<u64>(),
    ) {
        let names: Vec<_> = all_plugins().into_iter().filter(|(k, _, _)| *k == PluginKind::Init).map(|(_, n, _)| n).collect();
        prop_assert!(names.len() >= 6);
        let fans = Fans { fan_in, fan_out };
        for name in names {
            for dist in [Distribution::SignedConstant, Distribution::Uniform, Distribution::Normal] {
                let init = with_dist(name, dist);
                let n = 40_000;
                let mut rng = StdRng::seed_from_u64(seed);
                let x = init.sample(n, fans, p0, &mut rng);
                let want = formula(name, fans, p0);
                let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
                let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
                prop_assert!((var / want - 1.0).abs() < 0.04, "{name} {dist:?}: var {var} vs {want}");
                prop_assert!(mean.abs() < 5.0 * (want / n as f64).sqrt() + 1e-9, "{name}: mean {mean}");
                match init.distribution() {
                    Distribution::SignedConstant => {
                        let c = want.sqrt() as f32;
                        prop_assert!(x.iter().all(|v| (v.abs() - c).abs() <= 1e-6 * c));
                    }
                    Distribution::Uniform => {
                        let b = (3.0 * want).sqrt() as f32 * (1.0 + 1e-6);
                        prop_assert!(x.iter().all(|v| v.abs() <= b));
                    }
                    Distribution::Normal => {}
                }
            }
        }
    }
}

/// ELUS with the authors' `scaled-he` variant and gain sqrt(3) is He scaled by sqrt(3)
/// (Var = 6 / fan_in), whatever p0 is (section 3: "we scale a He initialization by sqrt 3").
#[test]
fn elus_scaled_he_is_he_times_sqrt3() {
    let t: toml::Table =
        toml::from_str("variant = \"scaled-he\"\ngain = 1.7320508075688772").unwrap();
    let Plugin::Init(init) = Registry::create(PluginKind::Init, "elus", t).unwrap() else {
        panic!()
    };
    for p0 in [0.0, 0.3, 0.8] {
        let v = init.variance(
            Fans {
                fan_in: 784,
                fan_out: 300,
            },
            p0,
        );
        assert!((v - 6.0 / 784.0).abs() < 1e-12, "p0 {p0}: {v}");
    }
}
