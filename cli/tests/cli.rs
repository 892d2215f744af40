//! End-to-end tests of the `supermask` binary on small generated IDX datasets.

mod common;

use common::*;
use std::path::Path;
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

/// Runs a failing command: exactly one `error:` line on stderr, exit status 1, and no run
/// directory left behind.
fn fails(args: &[&str], out: &Path, expect: &[&str]) {
    let o = run(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
    let lines: Vec<_> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one error line, got: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    for e in expect {
        assert!(err.contains(e), "stderr lacks `{e}`: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out.exists(), "{} was created", out.display());
}

#[test]
fn bad_inputs_fail_with_one_clear_error() {
    let e = env();
    let cfg = preset("table1-fcn-signed-elus");
    let out = e.root.join("out");
    let base = [
        "train",
        "--config",
        s(&cfg),
        "--out",
        s(&out),
        "--set",
        "train.epochs=1",
    ];
    let with = |extra: &[&str]| -> Vec<String> {
        base.iter().chain(extra).map(|x| x.to_string()).collect()
    };
    let call = |extra: &[&str], expect: &[&str]| {
        let v = with(extra);
        fails(
            &v.iter().map(String::as_str).collect::<Vec<_>>(),
            &out,
            expect,
        );
    };
    let missing = e.root.join("nowhere");
    call(
        &["--data", s(&missing)],
        &["train-images-idx3-ubyte", "supermask data fetch mnist"],
    );
    call(
        &["--data", s(&e.data), "--set", "masking.mask.type=ternary"],
        &["unknown mask plugin `ternary`", "bernoulli, binary, signed"],
    );
    call(
        &[
            "--data",
            s(&e.data),
            "--set",
            "masking.threshold.tau_n=0.02",
        ],
        &["tau_n < tau_p"],
    );
    call(
        &["--data", s(&e.data), "--set", "optimizer.lr=-0.1"],
        &["optimizer.lr must be > 0"],
    );
    call(
        &["--data", s(&e.data), "--set", "optimizer.momentun=0.9"],
        &["unknown field `momentun`"],
    );

    // A truncated IDX file.
    let bad = e.root.join("bad");
    make_mnist(&bad, 64, 32);
    let f = bad.join("mnist/train-images-idx3-ubyte");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    call(
        &["--data", s(&bad)],
        &["train-images-idx3-ubyte", "truncated"],
    );
}

#[test]
fn nan_loss_stops_with_an_error_and_no_summary() {
    let e = env();
    let cfg = preset("table1-fcn-baseline-elu");
    let out = e.root.join("out");
    let o = run(&[
        "train",
        "--config",
        s(&cfg),
        "--set",
        "train.epochs=2",
        "--set",
        "optimizer.lr=1e12",
        "--data",
        s(&e.data),
        "--out",
        s(&out),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("training loss became"), "{err}");
    assert!(
        !out.join("summary.json").exists(),
        "a failed run must not look finished"
    );
}

#[test]
fn refuses_to_overwrite_a_run() {
    let e = env();
    let cfg = preset("table1-fcn-signed-elus");
    let out = e.root.join("run");
    let args = one_epoch_args(&cfg, &e, &out);
    ok(&args);
    let before = std::fs::read(out.join("metrics.jsonl")).unwrap();
    let o = run(&args);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already holds a run"));
    assert_eq!(
        std::fs::read(out.join("metrics.jsonl")).unwrap(),
        before,
        "nothing lost"
    );
}

#[test]
fn plugins_lists_every_kind_with_descriptions() {
    let o = ok(&["plugins"]);
    let text = String::from_utf8_lossy(&o.stdout);
    for k in ["mask:", "threshold:", "init:", "model:", "loss:"] {
        assert!(text.contains(k), "{text}");
    }
    for n in [
        "signed",
        "binary",
        "bernoulli",
        "fixed",
        "initial-rate",
        "adaptive",
        "he",
        "xavier",
        "elus",
        "elu",
        "xavier-uniform",
        "elus-uniform",
        "max-fraction",
        "cross-entropy",
        "clipped-cross-entropy",
        "fcn",
    ] {
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with(&format!("{n} "))),
            "{n} missing: {text}"
        );
    }
}

#[test]
fn every_preset_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/paper");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "toml") {
            RunConfig::load(Some(&p), &[]).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
            n += 1;
        }
    }
    assert!(n >= 6, "the six Table 1 presets");
}

/// Every corrected Conv/ResNet preset names, in its header, the `--set` overrides that select
/// the first (diverging) recipe; those overrides apply and give that recipe: a global
/// `initial-rate` threshold and the loss on logits.
#[test]
fn every_corrected_preset_can_select_the_first_recipe() {
    supermask_train::link_plugins();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/paper");
    let marker = "# The first recipe (diverges on real images): ";
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        let Some(line) = text.lines().find_map(|l| l.strip_prefix(marker)) else {
            continue;
        };
        // `--set 'k=v' --set k=v ...`, single-quoted where the value has spaces.
        let sets: Vec<String> = line
            .split("--set ")
            .map(|x| x.trim().trim_matches('\'').to_string())
            .filter(|x| !x.is_empty())
            .collect();
        let cfg = RunConfig::load(Some(&p), &sets)
            .unwrap_or_else(|e| panic!("{}: {sets:?}: {e:#}", p.display()));
        let toml = cfg.to_toml().unwrap();
        assert!(
            toml.contains("type = \"cross-entropy\""),
            "{}: {toml}",
            p.display()
        );
        if cfg.masking.threshold().is_some() {
            assert!(toml.contains("initial-rate"), "{}", p.display());
        }
        n += 1;
    }
    assert!(
        n >= 19,
        "{n} signed presets carry the first recipe's overrides"
    );
}

#[test]
fn cuda_device_without_cuda_build_is_one_clear_error() {
    if supermask_train::device::CUDA_BUILT {
        return; // a CUDA build may have a GPU; this test is about CPU-only builds
    }
    let e = env();
    let out = e.root.join("out");
    let cfg = preset("table1-fcn-signed-elus");
    fails(
        &[
            "train",
            "--config",
            s(&cfg),
            "--data",
            s(&e.data),
            "--out",
            s(&out),
            "--device",
            "cuda",
        ],
        &out,
        &["built without CUDA support", "--features cuda"],
    );
    fails(
        &[
            "train",
            "--config",
            s(&cfg),
            "--data",
            s(&e.data),
            "--out",
            s(&out),
            "--device",
            "tpu",
        ],
        &out,
        &["unknown device `tpu`"],
    );
}

#[test]
fn models_lists_every_model_with_its_weight_count() {
    let o = ok(&["models"]);
    let text = String::from_utf8_lossy(&o.stdout);
    // Table 7 and REPRODUCTION-NOTES at the paper's input shapes; resnet110 is the regular
    // 18-block net.
    for (name, input, count) in [
        ("fcn", "784", "266200"),
        ("conv2", "3x32x32", "4300992"),
        ("conv4", "3x32x32", "2425024"),
        ("conv6", "3x32x32", "2261184"),
        ("conv8", "3x32x32", "5275840"),
        ("resnet20", "3x32x32", "248624"),
        ("resnet56", "3x32x32", "834992"),
        ("resnet110", "3x32x32", "1705904"),
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name}: {text}"));
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[1..3], [input, count], "{line}");
    }
}

#[test]
fn missing_cifar_data_names_the_files_and_how_to_get_them() {
    let e = env();
    let out = e.root.join("out");
    let cfg = preset("table2-conv2-signed-elus");
    fails(
        &[
            "train",
            "--config",
            s(&cfg),
            "--data",
            s(&e.data),
            "--out",
            s(&out),
        ],
        &out,
        &[
            "data_batch_1.bin",
            "test_batch.bin",
            "supermask data fetch cifar10",
            "cifar-10-binary.tar.gz",
        ],
    );
}

#[test]
fn resume_cannot_shorten_a_run_and_loses_nothing() {
    let e = env();
    let cfg = preset("table1-fcn-signed-elus");
    let out = e.root.join("run");
    ok(&[
        "train",
        "--config",
        s(&cfg),
        "--set",
        "train.epochs=2",
        "--data",
        s(&e.data),
        "--out",
        s(&out),
    ]);
    let before = std::fs::read(out.join("summary.json")).unwrap();
    let o = run(&[
        "train",
        "--resume",
        s(&out),
        "--set",
        "train.epochs=1",
        "--data",
        s(&e.data),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("would shorten it"));
    assert_eq!(
        std::fs::read(out.join("summary.json")).unwrap(),
        before,
        "nothing lost"
    );
    // Extending a finished run continues it.
    ok(&[
        "train",
        "--resume",
        s(&out),
        "--set",
        "train.epochs=3",
        "--data",
        s(&e.data),
    ]);
    assert_eq!(metrics(&out).len(), 3);
}

/// The divergence guard stops a run whose mean training loss exceeds its bound with one error
/// naming the guard, the bound and the likely causes, after saving the epoch (metrics and
/// checkpoint; no summary), and `train.guard.enabled = false` lets the same run finish.
#[test]
fn divergence_guard_stops_with_a_clear_error_and_keeps_the_checkpoint() {
    let e = env();
    let cfg = preset("table1-fcn-signed-elus");
    let out = e.root.join("guarded");
    let o = run(&[
        "train",
        "--config",
        s(&cfg),
        "--set",
        "train.epochs=3",
        "--set",
        "train.guard.max_train_loss=0.001",
        "--data",
        s(&e.data),
        "--out",
        s(&out),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    for want in [
        "divergence guard",
        "max_train_loss",
        "learning rate",
        "epoch 1",
    ] {
        assert!(err.contains(want), "`{want}` missing: {err}");
    }
    assert_eq!(metrics(&out).len(), 1, "the tripping epoch is saved");
    assert!(out.join("checkpoint.safetensors").exists());
    assert!(!out.join("summary.json").exists());

    let free = e.root.join("unguarded");
    ok(&[
        "train",
        "--config",
        s(&cfg),
        "--set",
        "train.epochs=2",
        "--set",
        "train.guard={ enabled = false, max_train_loss = 0.001 }",
        "--data",
        s(&e.data),
        "--out",
        s(&free),
    ]);
    assert!(free.join("summary.json").exists());
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
