//! The hostile suite: a careful user's bad day, run against the release binary. Kills at each
//! file write (an injected failure point, not timing luck), corrupted checkpoints of every
//! tensor kind, sizes that would need absurd memory, a gzip bomb, empty data and config values
//! that must fail before anything is written. Each case gives one clear error (or, after a
//! kill, resumes to exactly the uninterrupted run) and loses nothing.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use std::{
    collections::HashMap,
    path::Path,
    process::{Command, Output},
};

/// `supermask ARGS` with extra environment variables.
fn run_env(args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args).env("RUST_LOG", "warn");
    for (k, v) in vars {
        c.env(k, v);
    }
    c.output().expect("binary runs")
}

/// Exactly one `error:` line containing every `expect`, exit status 1, no panic.
fn one_error(o: &Output, what: &str, expect: &[&str]) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{what}: {err}");
    let lines: Vec<_> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{what}: one error line, got: {err}");
    assert!(lines[0].starts_with("error: "), "{what}: {err}");
    assert!(!err.contains("panicked"), "{what}: {err}");
    for e in expect {
        assert!(err.contains(e), "{what}: stderr lacks `{e}`: {err}");
    }
    err
}

/// Names of the `.tmp-*` files in `dir`.
fn temps(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".tmp-"))
                .collect()
        })
        .unwrap_or_default()
}

fn fcn_args<'a>(cfg: &'a Path, e: &'a Env, out: &'a Path, epochs: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--config",
        s(cfg),
        "--set",
        epochs,
        "--data",
        s(&e.data),
        "--out",
        s(out),
        "--continue",
    ]
}

/// A process aborted at each write's last instant before its rename, and between the
/// checkpoint's rename and `state.json`'s, in either epoch: `--continue` then finishes the run
/// with the metrics and checkpoint of the uninterrupted run, removes the temporary file the
/// kill left, and `state.json` matches the checkpoint again.
#[test]
fn a_kill_at_each_write_resumes_to_the_uninterrupted_run() {
    let e = env();
    let cfg = preset("table1-fcn-signed-elus");
    let full = e.root.join("full");
    ok(&fcn_args(&cfg, &e, &full, "train.epochs=2"));
    let want_state = std::fs::read_to_string(full.join("state.json")).unwrap();
    let points = [
        "before-rename:config.toml",
        "before-rename:metrics.jsonl",
        "before-rename:metrics.jsonl#2",
        "before-rename:checkpoint.safetensors",
        "before-rename:checkpoint.safetensors#2",
        "between-checkpoint-and-state",
        "between-checkpoint-and-state#2",
        "before-rename:state.json#2",
        "before-rename:summary.json",
    ];
    for (i, point) in points.iter().enumerate() {
        let out = e.root.join(format!("killed{i}"));
        let args = fcn_args(&cfg, &e, &out, "train.epochs=2");
        let o = run_env(&args, &[("SUPERMASK_FAIL_POINT", point)]);
        assert!(
            !o.status.success(),
            "{point}: the injected failure did not fire"
        );
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("aborting here"),
            "{point}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        ok(&args);
        assert_eq!(
            without_timing(metrics(&out)),
            without_timing(metrics(&full)),
            "{point}: metrics"
        );
        assert_eq!(
            checkpoint_tensors(&out),
            checkpoint_tensors(&full),
            "{point}: checkpoint"
        );
        assert_eq!(
            std::fs::read_to_string(out.join("state.json")).unwrap(),
            want_state,
            "{point}: state.json"
        );
        assert!(out.join("summary.json").exists(), "{point}: not finished");
        assert_eq!(
            temps(&out),
            Vec::<String>::new(),
            "{point}: temporary files left"
        );
    }
}

/// The tensors of a checkpoint, as saved (dtype kept).
fn load_raw(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("checkpoint.safetensors"), &Device::Cpu).unwrap()
}

fn save_raw(dir: &Path, t: &HashMap<String, Tensor>) {
    candle_core::safetensors::save(t, dir.join("checkpoint.safetensors")).unwrap();
}

/// Replaces the checkpoint's loop state JSON (`loop.state`) through `edit`.
fn edit_state(t: &mut HashMap<String, Tensor>, edit: impl Fn(&mut serde_json::Value)) {
    let bytes = t["loop.state"].to_vec1::<u8>().unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    edit(&mut v);
    let b = serde_json::to_vec(&v).unwrap();
    let n = b.len();
    t.insert(
        "loop.state".into(),
        Tensor::from_vec(b, n, &Device::Cpu).unwrap(),
    );
}

/// Sets one value of an f32 tensor.
fn poke(t: &mut HashMap<String, Tensor>, key: &str, value: f32) {
    let old = &t[key];
    let mut v = old.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    v[0] = value;
    let new = Tensor::from_vec(v, old.dims(), &Device::Cpu).unwrap();
    t.insert(key.into(), new);
}

/// A checkpoint whose safetensors container is valid but whose contents are not (a NaN or
/// infinite value in each tensor kind, a wrong dtype, a missing momentum buffer, a negative
/// plateau factor, a step count near 2^64, a negative running variance) is refused by
/// `--resume` with one error naming the file and the tensor or key, before it trains, and the
/// checkpoint is left as it was.
#[test]
fn corrupt_checkpoint_contents_are_refused_by_name() {
    let e = env();
    let cfg = preset("table4-resnet20-x1-signed-elus");
    let good = e.root.join("good");
    // A narrow ResNet20 on 28x28 images: masked convs, batch norms and a dense head.
    let mut args = vec!["train", "--config", s(&cfg), "--data", s(&e.data)];
    for set in [
        "data.dataset=mnist",
        "model.classes=10",
        "model.width=0.25",
        "data.train_subset=64",
        "data.batch_size=32",
        "train.epochs=2",
        "train.guard.enabled=false",
    ] {
        args.extend(["--set", set]);
    }
    args.extend(["--out", s(&good), "--stop-after", "1"]);
    ok(&args);
    let base = load_raw(&good);
    let keys: Vec<&String> = base.keys().collect();
    let find = |suffix: &str| -> String {
        keys.iter()
            .find(|k| k.ends_with(suffix))
            .unwrap_or_else(|| panic!("no tensor *{suffix} in {keys:?}"))
            .to_string()
    };
    let scores = find("s1.b1.conv1.scores");
    let weight = find("s1.b1.conv1.weight");
    let head = find("head.weight");
    let gamma = find("stem.bn.gamma");
    let var = find("stem.bn.running_var");
    let vel = find("s2.b1.conv2.scores.velocity");
    let taus = find("s1.b1.conv1.taus");
    type Edit = Box<dyn Fn(&mut HashMap<String, Tensor>)>;
    let k = |s: &String| s.clone();
    // One value of a tensor set to a bad one: (case, tensor, value, extra expected text).
    let pokes = [
        ("NaN score", &scores, f32::NAN, "NaN"),
        ("infinite weight", &weight, f32::INFINITY, "inf"),
        ("infinite dense weight", &head, f32::NEG_INFINITY, "inf"),
        ("NaN batch-norm scale", &gamma, f32::NAN, "NaN"),
        ("negative running variance", &var, -1.0, "negative"),
        ("NaN momentum", &vel, f32::NAN, "NaN"),
        ("NaN threshold", &taus, f32::NAN, "NaN"),
    ];
    let mut cases: Vec<(&str, Edit, Vec<String>)> = pokes
        .into_iter()
        .map(|(what, key, value, text)| {
            let s = k(key);
            let edit: Edit = Box::new(move |t| poke(t, &s, value));
            (what, edit, vec![key.clone(), text.to_string()])
        })
        .collect();
    // A tensor stored in another dtype.
    for (what, key, dtype) in [
        ("f64 scores", &scores, DType::F64),
        ("f16 momentum", &vel, DType::F16),
        ("u8 weight", &weight, DType::U8),
    ] {
        let s = k(key);
        let edit: Edit = Box::new(move |t| {
            let x = t[&s].to_dtype(dtype).unwrap();
            t.insert(s.clone(), x);
        });
        cases.push((what, edit, vec![key.clone(), "dtype".into()]));
    }
    cases.extend::<Vec<(&str, Edit, Vec<String>)>>(vec![
        (
            "missing momentum",
            Box::new({
                let s = k(&vel);
                move |t| {
                    t.remove(&s);
                }
            }),
            vec![vel.clone()],
        ),
        (
            "negative plateau factor",
            Box::new(|t| edit_state(t, |v| v["plateau"]["factor"] = (-0.2).into())),
            vec!["plateau.factor".into()],
        ),
        (
            "a newer checkpoint format",
            Box::new(|t| edit_state(t, |v| v["format"] = 2.into())),
            vec!["newer supermask".into()],
        ),
        (
            "step near 2^64",
            Box::new(|t| edit_state(t, |v| v["step"] = (u64::MAX - 1).into())),
            vec!["steps after epoch 1".into()],
        ),
        (
            "loop state as f32",
            Box::new(|t| {
                let x = t["loop.state"].to_dtype(DType::F32).unwrap();
                t.insert("loop.state".into(), x);
            }),
            vec!["loop.state".into()],
        ),
    ]);
    for (i, (what, edit, expect)) in cases.iter().enumerate() {
        let dir = e.root.join(format!("bad{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["config.toml", "metrics.jsonl", "state.json"] {
            std::fs::copy(good.join(f), dir.join(f)).unwrap();
        }
        let mut t = base.clone();
        edit(&mut t);
        save_raw(&dir, &t);
        let before = std::fs::read(dir.join("checkpoint.safetensors")).unwrap();
        let o = run(&["train", "--resume", s(&dir), "--data", s(&e.data)]);
        let mut want: Vec<&str> = expect.iter().map(String::as_str).collect();
        want.push("checkpoint.safetensors");
        one_error(&o, what, &want);
        assert_eq!(
            std::fs::read(dir.join("checkpoint.safetensors")).unwrap(),
            before,
            "{what}: the checkpoint changed"
        );
        assert_eq!(metrics(&dir).len(), 1, "{what}: metrics changed");
    }
}

/// Widths that would need absurd memory fail when the model is built, naming the layer and
/// the memory, before the run directory exists; the limit comes from the machine or from
/// `SUPERMASK_MEMORY_LIMIT`.
#[test]
fn absurd_sizes_fail_before_allocating() {
    let e = env();
    let fcn = preset("table1-fcn-signed-elus");
    let resnet = preset("table4-resnet20-x1-signed-elus");
    let out = e.root.join("out");
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (
            vec![
                "--config",
                s(&fcn),
                "--set",
                "model.hidden=[4000000000, 100]",
            ],
            vec![],
            vec!["layer fc1", "per sample"],
        ),
        (
            vec![
                "--config",
                s(&fcn),
                "--set",
                "model.hidden=[200000, 200000]",
            ],
            vec![],
            vec!["fc2", "memory"],
        ),
        // 300x784 + 100x300 + 10x100 weights need 6.4 MB: refused under a 1 MB limit.
        (
            vec!["--config", s(&fcn)],
            vec![("SUPERMASK_MEMORY_LIMIT", "1M")],
            vec!["266200 weights", "1.0 MiB"],
        ),
        (
            vec![
                "--config",
                s(&resnet),
                "--set",
                "model.width=1e15",
                "--set",
                "data.dataset=mnist",
                "--set",
                "model.classes=10",
            ],
            vec![],
            vec!["layer stem.conv", "per sample"],
        ),
        (
            vec![
                "--config",
                s(&resnet),
                "--set",
                "model.width=3000",
                "--set",
                "data.dataset=mnist",
                "--set",
                "model.classes=10",
            ],
            vec![],
            vec!["memory"],
        ),
        (
            vec!["--config", s(&fcn)],
            vec![("SUPERMASK_MEMORY_LIMIT", "lots")],
            vec!["SUPERMASK_MEMORY_LIMIT=lots"],
        ),
    ];
    for (cfg_args, vars, expect) in cases {
        let mut args = vec!["train"];
        args.extend(&cfg_args);
        args.extend(["--data", s(&e.data), "--out", s(&out)]);
        let o = run_env(&args, &vars);
        one_error(&o, &format!("{cfg_args:?} {vars:?}"), &expect);
        assert!(!out.exists(), "{cfg_args:?}: {} was created", out.display());
    }
}

/// A 1 MB gzip file that decompresses to 1 GiB, under an IDX header that promises 640 images:
/// the reader stops where the header says the data ends, so under a 600 MB address-space limit
/// the run fails with one clear error instead of running out of memory.
#[cfg(unix)]
#[test]
fn a_gzip_bomb_is_read_only_as_far_as_its_header_says() {
    use std::io::Write;
    let e = env();
    let f = e.data.join("mnist/train-images-idx3-ubyte");
    let raw = std::fs::read(&f).unwrap();
    std::fs::remove_file(&f).unwrap();
    let gz = e.data.join("mnist/train-images-idx3-ubyte.gz");
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).unwrap(),
        flate2::Compression::fast(),
    );
    enc.write_all(&raw).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..1024 {
        enc.write_all(&zeros).unwrap();
    }
    enc.finish().unwrap();
    assert!(std::fs::metadata(&gz).unwrap().len() < 8 << 20);
    let cfg = preset("table1-fcn-signed-elus");
    let out = e.root.join("out");
    let cmd = format!(
        "ulimit -v 600000 && exec '{BIN}' train --config '{}' --data '{}' --out '{}'",
        s(&cfg),
        s(&e.data),
        s(&out)
    );
    let o = Command::new("sh")
        .args(["-c", &cmd])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    one_error(
        &o,
        "gzip bomb",
        &["train-images-idx3-ubyte.gz", "trailing bytes"],
    );
    assert!(!out.exists());
}

/// Empty data and values that only the data or the machine can refute fail before the run
/// directory exists.
#[test]
fn empty_data_and_bad_values_fail_before_writing() {
    let e = env();
    let fcn = preset("table1-fcn-signed-elus");
    let out = e.root.join("out");
    // A generated MNIST under `root/NAME` whose split `prefix` ("train" or "t10k") is empty.
    let with_empty_split = |name: &str, prefix: &str| {
        let dir = e.root.join(name);
        make_mnist(&dir, 64, 32);
        let f = |kind: &str| dir.join(format!("mnist/{prefix}-{kind}"));
        supermask_datasets::write_idx_images(&f("images-idx3-ubyte"), &[], 0, 28, 28).unwrap();
        supermask_datasets::write_idx_labels(&f("labels-idx1-ubyte"), &[]).unwrap();
        dir
    };
    let empty = with_empty_split("empty", "train");
    let no_test = with_empty_split("no-test", "t10k");
    let data = s(&e.data);
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec!["--data", s(&empty)], vec!["0 training"]),
        (vec!["--data", s(&no_test)], vec!["0 test"]),
        (
            vec!["--data", data, "--set", "model.elu_alpha=nan"],
            vec!["elu_alpha"],
        ),
    ];
    for (extra, expect) in cases {
        let mut args = vec!["train", "--config", s(&fcn), "--out", s(&out)];
        args.extend(&extra);
        let o = run(&args);
        one_error(&o, &format!("{extra:?}"), &expect);
        assert!(!out.exists(), "{extra:?}: {} was created", out.display());
    }
    let o = run(&[
        "--threads",
        "100000",
        "train",
        "--config",
        s(&fcn),
        "--data",
        data,
        "--out",
        s(&out),
    ]);
    one_error(&o, "--threads 100000", &["--threads"]);
    assert!(!out.exists());
}

/// Sweeps: a grid of absurdly many runs, missing data, and impossible worker or thread counts
/// fail with one error before the sweep directory exists.
#[test]
fn bad_sweeps_fail_before_the_sweep_directory_exists() {
    let e = env();
    let fcn = preset("table1-fcn-signed-elus");
    let grid = |name: &str, text: String| {
        let p = e.root.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let many = grid(
        "many.toml",
        format!("presets = [{:?}]\nseeds = 18446744073709551615\n", s(&fcn)),
    );
    let wide = grid(
        "wide.toml",
        format!(
            "presets = [{:?}]\nseeds = 1000\n[grid]\n\"optimizer.lr\" = [{}]\n",
            s(&fcn),
            (1..=200)
                .map(|i| format!("0.{i:03}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    let small = grid(
        "small.toml",
        format!(
            "presets = [{:?}]\nseeds = 2\n[set]\n\"train.epochs\" = 1\n",
            s(&fcn)
        ),
    );
    let nowhere = e.root.join("nowhere");
    let out = e.root.join("sweep-out");
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec!["sweep", "--config", s(&many), "--data", s(&e.data)],
            vec!["at most 100000"],
        ),
        (
            vec!["sweep", "--config", s(&wide), "--data", s(&e.data)],
            vec!["200000 runs"],
        ),
        (
            vec!["sweep", "--config", s(&small), "--data", s(&nowhere)],
            vec!["train-images-idx3-ubyte"],
        ),
        (
            vec![
                "sweep",
                "--config",
                s(&small),
                "--data",
                s(&e.data),
                "--workers",
                "0",
            ],
            vec!["--workers"],
        ),
        (
            vec![
                "--threads",
                "64",
                "sweep",
                "--config",
                s(&small),
                "--data",
                s(&e.data),
                "--workers",
                "1000",
            ],
            vec!["exceeds this machine's"],
        ),
    ];
    for (args, expect) in cases {
        let mut a = args.clone();
        a.extend(["--out", s(&out)]);
        let o = run(&a);
        one_error(&o, &format!("{args:?}"), &expect);
        assert!(!out.exists(), "{args:?}: {} was created", out.display());
    }
}

/// Two sweeps with different grids started at the same instant into one directory: exactly
/// one plan wins, the other sweep is refused, and every run directory belongs to the winner.
#[test]
fn two_sweeps_started_at_once_never_mix_their_runs() {
    let e = env_sized(64, 32);
    let fcn = preset("table1-fcn-signed-elus");
    let out = e.root.join("shared");
    let grids: Vec<_> = [0.01, 0.02]
        .iter()
        .enumerate()
        .map(|(i, lr)| {
            let p = e.root.join(format!("g{i}.toml"));
            std::fs::write(
                &p,
                format!(
                    "presets = [{:?}]\nseeds = 2\n[set]\n\"train.epochs\" = 1\n\"optimizer.lr\" = {lr}\n",
                    s(&fcn)
                ),
            )
            .unwrap();
            p
        })
        .collect();
    for round in 0..3 {
        let _ = std::fs::remove_dir_all(&out);
        let children: Vec<_> = grids
            .iter()
            .map(|g| {
                Command::new(BIN)
                    .args([
                        "sweep",
                        "--config",
                        s(g),
                        "--data",
                        s(&e.data),
                        "--out",
                        s(&out),
                    ])
                    .env("RUST_LOG", "warn")
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let outputs: Vec<_> = children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect();
        let wins = outputs.iter().filter(|o| o.status.success()).count();
        assert_eq!(wins, 1, "round {round}: exactly one sweep runs");
        for o in outputs.iter().filter(|o| !o.status.success()) {
            one_error(o, "the second sweep", &["holds another sweep"]);
        }
        let plan: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("sweep.json")).unwrap())
                .unwrap();
        let planned: Vec<String> = plan["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["dir"].as_str().unwrap().to_string())
            .collect();
        let mut dirs: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|d| d.unwrap())
            .filter(|d| d.file_type().unwrap().is_dir())
            .map(|d| d.file_name().to_string_lossy().into_owned())
            .collect();
        dirs.sort();
        let mut planned_sorted = planned.clone();
        planned_sorted.sort();
        assert_eq!(dirs, planned_sorted, "round {round}: run directories");
    }
}
