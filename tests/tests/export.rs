//! The exported model through the sparse ternary engine against the training model it came
//! from: the Conv net and FCN logits agree to 1e-4 relative (the only difference is the order
//! of float additions); the file round-trips; ResNets are refused with a clear error.

use candle_core::Device;
use supermask_cli::{config::RunConfig, export::export_trainer, Trainer};
use supermask_datasets::Dataset;
use supermask_export::{format, Engine};

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

/// Engine logits vs the trainer's evaluation logits, per sample relative to the sample's
/// largest logit, for batch 1 and a batch of all samples.
fn engine_matches_model(preset_name: &str, overrides: &[&str], shape: &[usize], n: usize) {
    supermask_cli::link_plugins();
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    let cfg = RunConfig::from_toml(&preset(preset_name), &overrides, preset_name).unwrap();
    let trainer = Trainer::new(&cfg, &Device::Cpu).unwrap();
    let m = export_trainer(&cfg, &trainer).unwrap();
    // Through the file format too.
    let m = format::decode(&format::encode(&m).unwrap()).unwrap();
    let engine = Engine::new(&m).unwrap();
    let d = data(n, shape, 7);
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
                    "{preset_name}: {a:?} vs {b:?}"
                );
            }
        }
    }
}

#[test]
fn exported_fcn_runs_like_the_training_model() {
    // The preset's scores at init keep ~96% of the weights: dense-ish patterns; and a
    // threshold that keeps ~4%, the trained density.
    engine_matches_model("table1-fcn-signed-elus", &[], &[28, 28], 37);
    engine_matches_model(
        "table1-fcn-signed-elus",
        &["masking.threshold={ type = \"initial-rate\", rate = 0.96 }"],
        &[28, 28],
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

#[test]
fn exported_resnet_is_stored_but_not_run() {
    supermask_cli::link_plugins();
    let name = "table4-resnet20-x1-signed-elus";
    let cfg = RunConfig::from_toml(&preset(name), &[], name).unwrap();
    let trainer = Trainer::new(&cfg, &Device::Cpu).unwrap();
    let m = export_trainer(&cfg, &trainer).unwrap();
    // Batch-norm tensors travel with the masked layers.
    assert!(m
        .tensors
        .iter()
        .any(|(n, _, _)| n.ends_with("running_mean")));
    let back = format::decode(&format::encode(&m).unwrap()).unwrap();
    assert_eq!(back, m);
    let err = Engine::new(&m).err().expect("resnet engine").to_string();
    assert!(err.contains("resnet20") && err.contains("inspect"), "{err}");
}
