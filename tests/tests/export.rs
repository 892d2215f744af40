//! The exported model through the sparse ternary engine against the training model it came
//! from: FCN, Conv net and ResNet logits agree to 1e-4 relative (the only difference is the
//! order of float additions); the file round-trips.

use candle_core::{Device, Tensor};
use supermask_cli::export::export_trainer;
use supermask_datasets::Dataset;
use supermask_export::{format, Engine};
use supermask_train::{config::RunConfig, Trainer};

fn preset(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/../configs/paper/{name}.toml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// `n` samples of `shape` with values in [-2, 2) (xorshift), labels 0.
fn data(n: usize, shape: &[usize], seed: u64) -> Dataset {
    let dim: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let images = (0..n * dim)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 22) as f32) - 2.0
        })
        .collect();
    Dataset {
        images,
        labels: vec![0; n],
        n,
        dim,
        shape: shape.to_vec(),
        classes: 10,
    }
}

/// Deterministic values in `[lo, hi)` for a tensor named `key` (FNV-1a of the name seeds
/// [`supermask_core::rng::spread_values`]), so every batch-norm tensor gets its own values.
fn values_for(key: &str, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    let seed = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    supermask_core::rng::spread_values(n, seed, lo, hi)
}

/// Engine logits vs the trainer's evaluation logits, per sample relative to the sample's
/// largest logit, for batch 1 and a batch of all samples. With `random_bn`, the model's batch
/// norms get random parameters and statistics first.
fn engine_matches_model_with(
    preset_name: &str,
    overrides: &[&str],
    shape: &[usize],
    n: usize,
    random_bn: bool,
) {
    supermask_train::link_plugins();
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    let cfg = RunConfig::from_toml(&preset(preset_name), &overrides, preset_name).unwrap();
    let mut trainer = Trainer::new(&cfg, shape, &Device::Cpu).unwrap();
    if random_bn {
        for bn in trainer.model_mut().norms_mut() {
            let sizes: Vec<(String, usize)> = bn
                .named_tensors()
                .into_iter()
                .map(|(k, t)| (k, t.elem_count()))
                .collect();
            bn.load_tensors(&|key: &str| {
                let n = sizes
                    .iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, n)| *n)
                    .unwrap();
                let (lo, hi) = if key.ends_with("running_var") {
                    (0.3, 3.0)
                } else if key.ends_with("gamma") {
                    (0.5, 1.5)
                } else {
                    (-0.5, 0.5)
                };
                Ok(Tensor::from_vec(
                    values_for(key, n, lo, hi),
                    n,
                    &Device::Cpu,
                )?)
            })
            .unwrap();
        }
    }
    let m = export_trainer(&cfg, &trainer).unwrap();
    // Through the file format too.
    let m = format::decode(&format::encode(&m).unwrap()).unwrap();
    let engine = Engine::new(&m).unwrap();
    let d = data(n, shape, 7);
    // A file without the stored architecture (as written before it was stored) runs the
    // architecture its model spec describes: the same steps, so the same logits, bit for bit.
    let mut old = m.clone();
    old.model
        .as_object_mut()
        .unwrap()
        .remove("arch")
        .expect("an arch");
    assert_eq!(
        Engine::new(&old).unwrap().forward(&d.images, n).unwrap(),
        engine.forward(&d.images, n).unwrap(),
        "{preset_name}: the spec's architecture runs differently from the stored one"
    );
    let want = trainer.logits(&d).unwrap();
    let c = engine.classes();
    let mut batched = engine.forward(&d.images, n).unwrap();
    let mut single = Vec::new();
    for x in d.images.chunks_exact(d.dim) {
        single.extend(engine.forward(x, 1).unwrap());
    }
    for got in [&mut batched, &mut single] {
        for (a, b) in got.chunks_exact(c).zip(want.chunks_exact(c)) {
            let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for (x, y) in a.iter().zip(b) {
                assert!(
                    (x - y).abs() <= 1e-4 * scale,
                    "{preset_name} {overrides:?}: {a:?} vs {b:?}"
                );
            }
        }
    }
}

fn engine_matches_model(preset_name: &str, overrides: &[&str], shape: &[usize], n: usize) {
    engine_matches_model_with(preset_name, overrides, shape, n, false)
}

#[test]
fn exported_fcn_runs_like_the_training_model() {
    // The preset's scores at init keep ~96% of the weights: dense-ish patterns; and a
    // threshold that keeps ~4%, the trained density.
    engine_matches_model("table1-fcn-signed-elus", &[], &[1, 28, 28], 37);
    engine_matches_model(
        "table1-fcn-signed-elus",
        &["masking.threshold={ type = \"initial-rate\", rate = 0.96 }"],
        &[1, 28, 28],
        37,
    );
}

#[test]
fn exported_conv_net_runs_like_the_training_model() {
    engine_matches_model(
        "table2-conv2-signed-elus",
        &["masking.threshold={ type = \"initial-rate\", rate = 0.9 }"],
        &[3, 32, 32],
        3,
    );
}

/// ResNet20 in every batch-norm setting the presets use, masked (dense convs at the preset's
/// 25% kept, sparse at 5%) and dense, with random batch-norm parameters and statistics.
#[test]
fn exported_resnet_runs_like_the_training_model() {
    let sparse = ["masking.threshold={ type = \"initial-rate\", rate = 0.95 }"];
    for (name, overrides) in [
        ("table4-resnet20-x1-signed-elus", &[][..]),
        ("table4-resnet20-x1-signed-elus", &sparse[..]),
        ("table6-resnet20-signed-elus-bn-learnable", &sparse[..]),
        ("table6-resnet20-signed-elus-bn-frozen-stats", &sparse[..]),
        ("table4-resnet20-x1-baseline-he", &[][..]),
    ] {
        engine_matches_model_with(name, overrides, &[3, 32, 32], 3, true);
    }
}

#[test]
fn exported_resnet_with_a_missing_batch_norm_tensor_is_refused() {
    supermask_train::link_plugins();
    let name = "table6-resnet20-signed-elus-bn-learnable";
    let cfg = RunConfig::from_toml(&preset(name), &[], name).unwrap();
    let trainer = Trainer::for_config(&cfg, &Device::Cpu).unwrap();
    let mut m = export_trainer(&cfg, &trainer).unwrap();
    // Batch-norm tensors travel with the masked layers and round-trip.
    let back = format::decode(&format::encode(&m).unwrap()).unwrap();
    assert_eq!(back, m);
    assert!(Engine::new(&m).is_ok());
    m.tensors.retain(|(n, _, _)| n != "s2.b1.bn2.gamma");
    let err = format!("{:#}", Engine::new(&m).err().expect("a missing tensor"));
    assert!(
        err.contains("s2.b1.bn2.gamma") && err.contains("s2.b1.conv2"),
        "{err}"
    );
}

/// The stored architecture must describe the file's layers: a layer renamed or reshaped in the
/// architecture, or one the architecture lacks, is refused with its name.
#[test]
fn an_architecture_that_disagrees_with_the_layers_is_refused() {
    supermask_train::link_plugins();
    let name = "table2-conv2-signed-elus";
    let cfg = RunConfig::from_toml(&preset(name), &[], name).unwrap();
    let trainer = Trainer::new(&cfg, &[1, 12, 12], &Device::Cpu).unwrap();
    let m = export_trainer(&cfg, &trainer).unwrap();
    assert!(Engine::new(&m).is_ok());
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut bad = m.clone();
        f(&mut bad.model["arch"]);
        format!("{:#}", Engine::new(&bad).err().expect("refused"))
    };
    let err = edit(&|a| a["steps"][0]["name"] = "convX".into());
    assert!(err.contains("convX") && err.contains("conv1"), "{err}");
    // Steps that chain but give conv1 and conv2 other shapes than the file's.
    let err = edit(&|a| {
        a["steps"][0]["c_out"] = 32.into();
        a["steps"][2]["c_in"] = 32.into();
    });
    assert!(
        err.contains("conv1") && err.contains("[32, 1, 3, 3]"),
        "{err}"
    );
    let err = edit(&|a| {
        let steps = a["steps"].as_array_mut().unwrap();
        steps.truncate(steps.len() - 2);
    });
    assert!(err.contains("fc3"), "{err}");
}
