//! End-to-end tests of the `supermask` binary on small generated IDX datasets.

mod common;

use common::*;
use supermask_train::config::RunConfig;
#[test]
fn train_one_epoch_writes_the_run_files() {
    let e = env();
    let out = e.root.join("run");
    let cfg = preset("table1-fcn-signed-elus");
    ok(&[
        "train",
        "--config",
        s(&cfg),
        "--set",
        "train.epochs=1",
        "--data",
        s(&e.data),
        "--out",
        s(&out),
    ]);
    for f in [
        "config.toml",
        "metrics.jsonl",
        "summary.json",
        "checkpoint.safetensors",
        "state.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    // The effective config is a loadable config with the override applied.
    let eff = RunConfig::load(Some(&out.join("config.toml")), &[]).unwrap();
    assert_eq!(eff.train.epochs, 1);
    let m = metrics(&out);
    assert_eq!(m.len(), 1);
    let m = &m[0];
    assert_eq!(m.epoch, 1);
    for v in [m.train_acc, m.test_acc, m.remaining] {
        assert!((0.0..=1.0).contains(&v), "{v} not a fraction");
    }
    assert!(m.train_loss.is_finite() && m.test_loss.is_finite() && m.seconds > 0.0);
    let names: Vec<_> = m.layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["fc1", "fc2", "fc3"]);
    let total: usize = m.layers.iter().map(|l| l.weights).sum();
    assert_eq!(total, 266_200, "Table 7: FCN weight count");
    let mut kept = 0.0;
    for l in &m.layers {
        assert!(
            (l.neg + l.zero + l.pos - 1.0).abs() < 1e-9,
            "{}: shares sum to 1",
            l.name
        );
        assert!((l.remaining - (l.neg + l.pos)).abs() < 1e-9);
        kept += l.remaining * l.weights as f64;
    }
    assert!(
        (m.remaining - kept / 266_200.0).abs() < 1e-9,
        "overall = weighted per-layer"
    );
    // The raw JSON has the contract's keys.
    let line = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let v: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    for k in [
        "epoch",
        "train_loss",
        "train_acc",
        "test_loss",
        "test_acc",
        "remaining",
        "seconds",
        "layers",
    ] {
        assert!(v.get(k).is_some(), "metrics line lacks {k}");
    }
    for k in ["name", "remaining", "neg", "zero", "pos"] {
        assert!(v["layers"][0].get(k).is_some(), "layer entry lacks {k}");
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["test_acc"].as_f64().unwrap(), m.test_acc);

    // `eval` recomputes the same test accuracy and remaining weights from the checkpoint.
    let ev = ok(&["eval", s(&out), "--data", s(&e.data), "--json"]);
    let ev: serde_json::Value = serde_json::from_slice(&ev.stdout).unwrap();
    assert_eq!(ev["test_acc"].as_f64().unwrap(), m.test_acc);
    assert_eq!(ev["remaining"].as_f64().unwrap(), m.remaining);
}

fn resume_matches(config: &str, extra: &[&str]) {
    let e = env();
    let cfg = preset(config);
    let full = e.root.join("full");
    let part = e.root.join("part");
    let mut base = vec![
        "train",
        "--config",
        s(&cfg),
        "--set",
        "train.epochs=2",
        "--data",
        s(&e.data),
    ];
    for x in extra {
        base.extend(["--set", x]);
    }
    assert_stop_and_resume_matches(&e, &base, &full, &part);
}

#[test]
fn resume_after_epoch_1_of_2_equals_uninterrupted_run() {
    resume_matches("table1-fcn-signed-elus", &[]);
}

/// The same with the per-step random streams (Bernoulli samples) and per-step thresholds.
#[test]
fn resume_is_exact_with_stochastic_mask_and_adaptive_threshold() {
    resume_matches(
        "table1-fcn-signed-elus",
        &[
            "masking.mask={type=\"bernoulli\"}",
            "masking.threshold={type=\"adaptive\",fraction=0.2}",
        ],
    );
}

#[test]
fn same_seed_same_numbers() {
    let e = env();
    let mut runs = Vec::new();
    for name in ["a", "b"] {
        let out = e.root.join(name);
        train_preset(&e, &[], "table1-fcn-signed-elus", &["train.epochs=1"], &out);
        runs.push(without_timing(metrics(&out)));
    }
    assert_eq!(runs[0], runs[1]);
}

/// The fused kernels form every sum in an order that does not depend on the thread count
/// (per-output GEMM tiles, fixed sample chunks), so 1 and 2 threads give identical runs.
#[test]
fn thread_count_does_not_change_the_numbers() {
    let e = env();
    let mut runs = Vec::new();
    for threads in ["1", "2"] {
        let out = e.root.join(format!("t{threads}"));
        let global = ["--threads", threads];
        train_preset(
            &e,
            &global,
            "table1-fcn-signed-elus",
            &["train.epochs=2"],
            &out,
        );
        runs.push((without_timing(metrics(&out)), checkpoint_tensors(&out)));
    }
    assert_eq!(runs[0], runs[1]);
}

/// `train.kernels.path = "reference"` switches to the generic-op path, which computes the same
/// training up to float rounding: the first epoch's losses agree to 1e-4 relative.
#[test]
fn reference_kernel_path_trains_the_same_numbers() {
    let e = env();
    let mut runs = Vec::new();
    for path in ["fused", "reference"] {
        let out = e.root.join(path);
        let kernels = format!("train.kernels.path=\"{path}\"");
        let sets = ["train.epochs=1", kernels.as_str()];
        train_preset(&e, &[], "table1-fcn-signed-elus", &sets, &out);
        let config = std::fs::read_to_string(out.join("config.toml")).unwrap();
        assert!(config.contains(&format!("path = \"{path}\"")), "{config}");
        runs.push(metrics(&out).remove(0));
    }
    let rel = |a: f64, b: f64| (a - b).abs() / b.abs();
    assert!(
        rel(runs[0].train_loss, runs[1].train_loss) < 1e-4,
        "{runs:?}"
    );
    assert!(rel(runs[0].test_loss, runs[1].test_loss) < 1e-4, "{runs:?}");
}

/// `export` -> `inspect` -> `infer --compare`: the engine's predictions equal the run's on
/// the test set and its logits agree to 1e-4 relative; the accuracy equals `eval`'s; a
/// damaged file is one clear error.
#[test]
fn export_inspect_infer_round_trip() {
    let e = env();
    let run_dir = e.root.join("run");
    train_preset(
        &e,
        &[],
        "table1-fcn-signed-elus",
        &["train.epochs=2"],
        &run_dir,
    );
    let file = e.root.join("fcn.ssm");
    ok(&["export", s(&run_dir), "--out", s(&file)]);
    let inspect = String::from_utf8(ok(&["inspect", s(&file)]).stdout).unwrap();
    for name in ["fc1", "fc2", "fc3", "[300, 784]"] {
        assert!(inspect.contains(name), "{inspect}");
    }
    let out = ok(&[
        "infer",
        s(&file),
        "--data",
        s(&e.data),
        "--compare",
        s(&run_dir),
        "--json",
    ]);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["samples"], 200);
    assert_eq!(r["prediction_mismatches"], 0, "{r}");
    assert!(r["max_relative_logit_diff"].as_f64().unwrap() < 1e-4, "{r}");
    let eval = ok(&["eval", s(&run_dir), "--data", s(&e.data), "--json"]);
    let eval: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    assert_eq!(r["accuracy"], eval["test_acc"], "{r} vs {eval}");

    // One flipped byte: a checksum error, exit status 1, one line.
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    let bad = e.root.join("bad.ssm");
    std::fs::write(&bad, &bytes).unwrap();
    let out = run(&["infer", s(&bad), "--data", s(&e.data)]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("checksum") && err.lines().count() == 1,
        "{err}"
    );
}

/// A ResNet20 with learnable batch norms, trained one epoch on generated CIFAR-10 files (so its
/// BN parameters and running statistics have moved), through `export` and `infer --compare`:
/// the engine's predictions equal the run's and its logits agree to 1e-4 relative.
#[test]
fn exported_resnet_infers_like_the_run() {
    use supermask_datasets::{write_cifar_file, CifarDataset};
    let e = env_sized(10, 10);
    let data = e.root.join("cifar");
    let dir = data.join("cifar-10-batches-bin");
    let mut state = 3u64;
    let mut byte = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 56) as u8
    };
    for (name, n) in [
        ("data_batch_1.bin", 12),
        ("data_batch_2.bin", 12),
        ("data_batch_3.bin", 12),
        ("data_batch_4.bin", 12),
        ("data_batch_5.bin", 12),
        ("test_batch.bin", 24),
    ] {
        let pixels: Vec<u8> = (0..n * 3072).map(|_| byte()).collect();
        let labels: Vec<u8> = (0..n).map(|_| byte() % 10).collect();
        write_cifar_file(&dir.join(name), CifarDataset::Cifar10, &pixels, &labels).unwrap();
    }
    let run_dir = e.root.join("resnet");
    let cfg = preset("table6-resnet20-signed-elus-bn-learnable");
    ok(&[
        "train",
        "--config",
        s(&cfg),
        "--set",
        "train.epochs=1",
        "--set",
        "data.batch_size=20",
        "--data",
        s(&data),
        "--out",
        s(&run_dir),
    ]);
    let file = e.root.join("resnet.ssm");
    ok(&["export", s(&run_dir), "--out", s(&file)]);
    let out = ok(&[
        "infer",
        s(&file),
        "--data",
        s(&data),
        "--batch",
        "7",
        "--compare",
        s(&run_dir),
        "--json",
    ]);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["samples"], 24);
    assert_eq!(r["prediction_mismatches"], 0, "{r}");
    assert!(r["max_relative_logit_diff"].as_f64().unwrap() < 1e-4, "{r}");
}

#[test]
fn training_lowers_the_loss_and_prunes() {
    let e = env();
    let out = e.root.join("run");
    let cfg = preset("table1-fcn-signed-elus");
    ok(&[
        "train",
        "--config",
        s(&cfg),
        "--set",
        "train.epochs=3",
        "--data",
        s(&e.data),
        "--out",
        s(&out),
    ]);
    let m = metrics(&out);
    assert!(
        m[2].train_loss < m[0].train_loss,
        "loss {} -> {}",
        m[0].train_loss,
        m[2].train_loss
    );
    assert!(
        m[2].test_acc > 0.5,
        "the generated classes are separable: {}",
        m[2].test_acc
    );
}

/// `data.train_subset = N` trains on N seeded training images (one step per epoch here at
/// batch 128) and a subset larger than the training set fails before anything is written.
#[test]
fn train_subset_trains_on_a_seeded_subset() {
    let e = env();
    let cfg = preset("table1-fcn-signed-elus");
    let run_subset = |name: &str, n: &str| {
        let out = e.root.join(name);
        let sets = [
            "train.epochs=1".to_string(),
            format!("data.train_subset={n}"),
        ];
        let mut args = vec!["train", "--config", s(&cfg)];
        for x in &sets {
            args.extend(["--set", x]);
        }
        args.extend(["--data", s(&e.data), "--out", s(&out)]);
        (run(&args), out)
    };
    let (o, out) = run_subset("a", "100");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(metrics(&out)[0].step, 1);
    // The same subset seed picks the same images: the same numbers.
    let (_, again) = run_subset("b", "100");
    assert_eq!(
        without_timing(metrics(&out)),
        without_timing(metrics(&again))
    );
    let (o, out) = run_subset("c", "641");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("data.train_subset") && err.contains("640"),
        "{err}"
    );
    assert!(!out.exists(), "nothing is written for a bad subset");
}

/// A log written to a pipe or a file (here: the test's pipe, with the log at `info`) is plain
/// text: it has the epoch lines and no ANSI escape codes.
#[test]
fn logs_to_a_pipe_carry_no_colour_codes() {
    let e = env();
    let out = e.root.join("run");
    let cfg = preset("table1-fcn-signed-elus");
    let o = std::process::Command::new(BIN)
        .args(["train", "--config", s(&cfg), "--set", "train.epochs=1"])
        .args(["--data", s(&e.data), "--out", s(&out)])
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{log}");
    assert!(log.contains("epoch 1/1"), "{log}");
    assert!(!log.contains('\u{1b}'), "escape codes in the log: {log:?}");
}
