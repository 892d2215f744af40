//! End-to-end tests of the `supermask` binary's failures: bad input, divergence, refusing
//! to overwrite or shorten a run; each gives one clear error and loses nothing.

mod common;

use common::*;
use std::path::Path;

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
        &[
            "unknown mask plugin `ternary`",
            "bernoulli, binary, biprop, edge-popup, magnitude, signed",
        ],
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
