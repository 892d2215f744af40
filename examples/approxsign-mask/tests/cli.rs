//! This crate's binary is the whole `supermask` command line with its mask added: it lists the
//! plugin, trains, resumes, sweeps, evaluates, exports, infers and reports with it, on a small
//! generated MNIST-shaped dataset with learnable class structure (no network, no real data).

use serde_json::Value;
use std::{
    path::Path,
    process::{Command, Output},
};

const BIN: &str = env!("CARGO_BIN_EXE_supermask-approxsign");

/// Class c lights up rows 2c+2..2c+5, plus noise: the framework's generated task
/// ([`supermask_datasets::write_learnable_mnist`], which its own CLI tests use too).
fn make_mnist(root: &Path, train: usize, test: usize) {
    supermask_datasets::write_learnable_mnist(root, train, test).unwrap();
}

fn run(args: &[&str]) -> Output {
    let out = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("binary runs");
    assert!(
        out.status.success(),
        "{args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

fn config() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("configs/fcn-approxsign.toml")
        .display()
        .to_string()
}

#[test]
fn plugins_lists_the_mask() {
    let out = run(&["plugins"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("signed-approxsign"), "{text}");
    // The framework's own plugins are there too.
    assert!(
        text.contains("signed ") && text.contains("max-fraction"),
        "{text}"
    );
}

/// Train 2 epochs with a stop and resume after the first, evaluate, export, infer through the
/// ternary engine, and check the numbers agree with each other and that the mask learns.
#[test]
fn trains_resumes_evaluates_exports_and_infers() {
    let tmp = tempfile::tempdir().unwrap();
    make_mnist(tmp.path(), 1200, 300);
    let data = tmp.path().display().to_string();
    let out = tmp.path().join("run").display().to_string();
    let common = [
        "--config",
        &config(),
        "--data",
        &data,
        "--out",
        &out,
        "--set",
        "train.epochs=2",
    ];
    let mut first = vec!["train"];
    first.extend(common);
    first.extend(["--stop-after", "1"]);
    run(&first);
    run(&["train", "--resume", &out, "--data", &data]);
    let metrics = std::fs::read_to_string(Path::new(&out).join("metrics.jsonl")).unwrap();
    let last: Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    assert_eq!(last["epoch"], 2);
    let acc = last["test_acc"].as_f64().unwrap();
    assert!(acc >= 0.6, "test accuracy {acc} after 2 epochs");

    let eval = json(&run(&["eval", &out, "--data", &data, "--json"]));
    assert_eq!(
        eval["test_acc"].as_f64(),
        Some(acc),
        "eval vs the last epoch"
    );

    let model = tmp.path().join("m.ssm").display().to_string();
    run(&["export", &out, "--out", &model]);
    let infer = json(&run(&[
        "infer",
        &model,
        "--data",
        &data,
        "--compare",
        &out,
        "--json",
    ]));
    assert_eq!(infer["prediction_mismatches"], 0, "{infer}");
}

/// A sweep of this mask beside the paper's signed mask (2 seeds each), then `aggregate` and
/// `report` over it.
#[test]
fn sweeps_and_reports() {
    let tmp = tempfile::tempdir().unwrap();
    make_mnist(tmp.path(), 600, 200);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let grid = tmp.path().join("grid.toml");
    std::fs::write(
        &grid,
        format!(
            "presets = [{:?}, {:?}]\nseeds = 2\n[set]\n\"train.epochs\" = 1\n",
            root.join("configs/fcn-approxsign.toml"),
            root.join("../../configs/paper/table1-fcn-signed-elus.toml")
        ),
    )
    .unwrap();
    let sweep = tmp.path().join("sweep").display().to_string();
    let data = tmp.path().display().to_string();
    run(&[
        "sweep",
        "--config",
        &grid.display().to_string(),
        "--out",
        &sweep,
        "--data",
        &data,
    ]);
    let agg = tmp.path().join("agg").display().to_string();
    let out = run(&["aggregate", &sweep, "--out", &agg]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("fcn-approxsign") && text.contains("table1-fcn-signed-elus"),
        "{text}"
    );
    let report = tmp.path().join("report.md");
    run(&["report", &sweep, "--out", &report.display().to_string()]);
    let md = std::fs::read_to_string(&report).unwrap();
    assert!(md.contains("fcn-approxsign"), "{md}");
}
