//! Resume for every registered model: a run stopped after its first epoch and resumed ends
//! bit-identical (metrics and every checkpoint tensor) to the same run trained without a stop.
//! Models take their input shape from the data, so every family trains here on generated
//! 1x28x28 MNIST-shaped images; the ResNets at width 0.25 with learnable batch norms (every
//! BN parameter, running statistic and momentum buffer goes through the checkpoint).

mod common;

use common::*;
use supermask_core::{PluginKind, Registry};

/// Small settings per model family; a model added later trains with its defaults.
fn model_table(name: &str) -> String {
    let small = if name.starts_with("resnet") {
        "width = 0.25\nbn = \"learnable\"\nstem_bn = \"learnable\"\nclasses = 10\n"
    } else if name == "fcn" {
        "hidden = [32, 16]\n"
    } else {
        ""
    };
    format!("[model]\ntype = \"{name}\"\n{small}")
}

const MASKED: &str = "[masking]\nmode = \"masked\"\nmask = { type = \"signed\" }\n\
    threshold = { type = \"max-fraction\", fraction = 0.4 }\n\
    weight_init = { type = \"elus\", variant = \"scaled-he\", gain = 1.224744871391589, dist = \"signed-constant\" }\n\
    score_init = { type = \"xavier-uniform\" }\n";

const DENSE: &str =
    "[masking]\nmode = \"dense\"\nweight_init = { type = \"he\", dist = \"uniform\" }\n";

/// Three epochs of 4 steps (the guard off: 64 images are too few to promise learning); reduce-on-plateau with patience 1 so its state moves too.
fn config(model: &str, masking: &str) -> String {
    format!(
        "seed = 3\n{}\n{masking}\n[data]\ndataset = \"mnist\"\nbatch_size = 16\naugment = true\n\
         [train]\nepochs = 3\nguard = {{ enabled = false }}\n[optimizer]\ntype = \"sgdw\"\n\
         lr = 0.02\nweight_decay = 5e-4\n[schedule]\ntype = \"reduce-on-plateau\"\n\
         factor = 0.5\npatience = 1\n[loss]\ntype = \"clipped-cross-entropy\"\n",
        model_table(model)
    )
}

fn stop_and_resume_equals_uninterrupted(e: &Env, label: &str, text: &str) {
    let cfg = e.root.join(format!("{label}.toml"));
    std::fs::write(&cfg, text).unwrap();
    let full = e.root.join(format!("{label}-full"));
    let part = e.root.join(format!("{label}-part"));
    let base = ["train", "--config", s(&cfg), "--data", s(&e.data)];
    assert_stop_and_resume_matches(e, &base, &full, &part);
    let cf = checkpoint_tensors(&full);
    // The optimizer state of every trainable tensor went through the checkpoint.
    let velocities = cf.iter().filter(|(k, _)| k.ends_with(".velocity")).count();
    assert!(velocities > 0, "{label}: no optimizer state saved");
}

#[test]
fn every_model_resumes_bit_identically() {
    supermask_train::link_plugins();
    let e = env_sized(64, 32);
    let models = Registry::names(PluginKind::Model);
    assert!(models.len() >= 8, "{models:?}");
    for name in models {
        stop_and_resume_equals_uninterrupted(&e, name, &config(name, MASKED));
    }
    // A dense ResNet: trainable weights and learnable batch norms, all with momentum.
    stop_and_resume_equals_uninterrupted(&e, "resnet20-dense", &config("resnet20", DENSE));
}

/// A run records its data root and the digests of the data it read (`data.json`): `--resume`
/// without `--data`, from a directory with no `./data`, reads the recorded root and finishes;
/// `--resume --data OTHER` with other data is refused naming the record and the split, before
/// anything is written.
#[test]
fn resume_reads_the_recorded_data_and_refuses_other_data() {
    let e = env();
    let run_dir = e.root.join("run");
    train_fcn_stopped_after_epoch_1(&e, &run_dir);
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("data.json")).unwrap()).unwrap();
    assert_eq!(
        record["root"].as_str().unwrap(),
        s(&std::fs::canonicalize(&e.data).unwrap()),
        "{record}"
    );
    assert_eq!(record["train_samples"], 640, "{record}");
    let other = e.root.join("other");
    make_mnist(&other, 320, 200);
    let before = std::fs::read(run_dir.join("checkpoint.safetensors")).unwrap();
    let o = run(&["train", "--resume", s(&run_dir), "--data", s(&other)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("data.json") && err.contains("training split") && err.contains("320"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(run_dir.join("checkpoint.safetensors")).unwrap(),
        before
    );
    assert_eq!(metrics(&run_dir).len(), 1);
    let elsewhere = e.root.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let o = std::process::Command::new(BIN)
        .args(["train", "--resume", s(&run_dir)])
        .current_dir(&elsewhere)
        .env_remove("SUPERMASK_DATA")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(metrics(&run_dir).len(), 2);
}
