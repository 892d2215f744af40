//! Helpers shared by the CLI integration tests: generated datasets and binary runners.
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};
use supermask_train::metrics::EpochMetrics;

pub const BIN: &str = env!("CARGO_BIN_EXE_supermask");

pub fn preset(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../configs/paper")
        .join(format!("{name}.toml"))
}

/// Writes a learnable MNIST-shaped dataset: class c lights up rows 2c+2..2c+5, plus noise
/// ([`supermask_datasets::write_learnable_mnist`]).
pub fn make_mnist(root: &Path, train: usize, test: usize) {
    supermask_datasets::write_learnable_mnist(root, train, test).unwrap();
}

pub fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("binary runs")
}

pub fn ok(args: &[&str]) -> Output {
    let out = run(args);
    assert!(
        out.status.success(),
        "supermask {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn metrics(dir: &Path) -> Vec<EpochMetrics> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub struct Env {
    pub _tmp: tempfile::TempDir,
    pub data: PathBuf,
    pub root: PathBuf,
}

pub fn env() -> Env {
    env_sized(640, 200)
}

/// A temporary directory with a generated MNIST of `train` and `test` samples.
pub fn env_sized(train: usize, test: usize) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    make_mnist(&data, train, test);
    let root = tmp.path().to_path_buf();
    Env {
        _tmp: tmp,
        data,
        root,
    }
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `supermask [global...] train --config PRESET --set k=v... --data <env data> --out OUT`.
pub fn train_preset(e: &Env, global: &[&str], preset_name: &str, sets: &[&str], out: &Path) {
    let cfg = preset(preset_name);
    let mut args: Vec<&str> = global.to_vec();
    args.extend(["train", "--config", s(&cfg)]);
    for set in sets {
        args.extend(["--set", set]);
    }
    args.extend(["--data", s(&e.data), "--out", s(out)]);
    ok(&args);
}

/// The Table 1 signed ELUS FCN for two epochs on `e`'s data into `out`, stopped after the
/// first (so that `--resume` continues it).
pub fn train_fcn_stopped_after_epoch_1(e: &Env, out: &Path) {
    let cfg = preset("table1-fcn-signed-elus");
    ok(&[
        "train",
        "--config",
        s(&cfg),
        "--set",
        "train.epochs=2",
        "--data",
        s(&e.data),
        "--out",
        s(out),
        "--stop-after",
        "1",
    ]);
}

pub fn without_timing(mut m: Vec<EpochMetrics>) -> Vec<EpochMetrics> {
    for x in &mut m {
        x.seconds = 0.0;
        x.eval_seconds = 0.0;
    }
    m
}

pub fn checkpoint_tensors(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let t = candle_core::safetensors::load(
        dir.join("checkpoint.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let mut v: Vec<_> = t
        .into_iter()
        .map(|(k, t)| {
            (
                k,
                t.flatten_all()
                    .unwrap()
                    .to_dtype(candle_core::DType::F32)
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// `train --config CFG --set train.epochs=1 --data <env data> --out OUT`.
pub fn one_epoch_args<'a>(cfg: &'a Path, e: &'a Env, out: &'a Path) -> [&'a str; 9] {
    [
        "train",
        "--config",
        s(cfg),
        "--set",
        "train.epochs=1",
        "--data",
        s(&e.data),
        "--out",
        s(out),
    ]
}

/// Trains `base` (a `train` command without `--out`) into `full`, and again into `part` with
/// `--stop-after 1` followed by `--resume`; asserts the two runs end with the same metrics
/// (timing aside) and bit-identical checkpoints.
pub fn assert_stop_and_resume_matches(e: &Env, base: &[&str], full: &Path, part: &Path) {
    let mut a = base.to_vec();
    a.extend(["--out", s(full)]);
    ok(&a);
    let mut b = base.to_vec();
    b.extend(["--out", s(part), "--stop-after", "1"]);
    ok(&b);
    assert_eq!(metrics(part).len(), 1, "{}", part.display());
    assert!(
        !part.join("summary.json").exists(),
        "a stopped run is not finished"
    );
    ok(&["train", "--resume", s(part), "--data", s(&e.data)]);
    assert_eq!(
        without_timing(metrics(full)),
        without_timing(metrics(part)),
        "{}: metrics",
        part.display()
    );
    assert_eq!(
        checkpoint_tensors(full),
        checkpoint_tensors(part),
        "{}: checkpoint tensors",
        part.display()
    );
    assert!(part.join("summary.json").exists());
}

/// A 2-seed sweep of the Table 1 signed ELUS FCN preset on the env's data with the grid's
/// `[set]` lines `sets`, into `ROOT/sweep` (returned).
pub fn sweep_elus_fcn(e: &Env, sets: &str) -> PathBuf {
    let sweep = e.root.join("sweep");
    let grid = e.root.join("grid.toml");
    let preset = preset("table1-fcn-signed-elus");
    std::fs::write(
        &grid,
        format!("presets = [{:?}]\nseeds = 2\n[set]\n{sets}", s(&preset)),
    )
    .unwrap();
    ok(&[
        "sweep",
        "--config",
        s(&grid),
        "--data",
        s(&e.data),
        "--out",
        s(&sweep),
    ]);
    sweep
}
