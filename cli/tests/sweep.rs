//! Sweeps, aggregation and reports end to end on small generated MNIST-shaped data.

mod common;

use common::*;
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

/// A grid of two presets x two seeds with `epochs` epochs each.
fn write_grid(dir: &Path, epochs: usize) -> PathBuf {
    write_grid_of(
        dir,
        ["table1-fcn-signed-elus", "table1-fcn-baseline-he"],
        epochs,
        "",
    )
}

/// A grid of the two `presets` x two seeds with `epochs` epochs each and extra `[set]` lines.
fn write_grid_of(dir: &Path, presets: [&str; 2], epochs: usize, sets: &str) -> PathBuf {
    let grid = dir.join("grid.toml");
    let text = format!(
        "presets = [{:?}, {:?}]\nseeds = 2\n[set]\n\"train.epochs\" = {epochs}\n{sets}",
        preset(presets[0]).display().to_string(),
        preset(presets[1]).display().to_string(),
    );
    std::fs::write(&grid, text).unwrap();
    grid
}

/// `sweep --config GRID --data DATA --out OUT`.
fn sweep_args(e: &Env, grid: &Path, out: &Path) -> Vec<String> {
    [
        "sweep",
        "--config",
        s(grid),
        "--data",
        s(&e.data),
        "--out",
        s(out),
    ]
    .map(String::from)
    .to_vec()
}

/// Runs `sweep ... EXTRA` and checks it succeeds.
fn sweep_ok(e: &Env, grid: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = sweep_args(e, grid, out);
    args.extend(extra.iter().map(|x| x.to_string()));
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// The run directories under a sweep directory, by name.
fn run_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    v
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// Every run of `a` equals the same-named run of `b`: metrics without timing and every
/// checkpoint tensor, bit for bit.
fn assert_same_runs(a: &Path, b: &Path) {
    let (ra, rb) = (run_dirs(a), run_dirs(b));
    assert_eq!(
        ra.iter().map(|p| name(p)).collect::<Vec<_>>(),
        rb.iter().map(|p| name(p)).collect::<Vec<_>>()
    );
    for (x, y) in ra.iter().zip(&rb) {
        assert_eq!(
            without_timing(metrics(x)),
            without_timing(metrics(y)),
            "{}",
            name(x)
        );
        assert_eq!(checkpoint_tensors(x), checkpoint_tensors(y), "{}", name(x));
    }
}

/// "N runs trained, M already finished" from a sweep's stdout.
fn counts(stdout: &[u8]) -> (usize, usize) {
    let text = String::from_utf8_lossy(stdout);
    let line = text
        .lines()
        .find(|l| l.contains("runs trained"))
        .unwrap_or_else(|| panic!("no summary line in {text}"));
    let nums: Vec<usize> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    let n = nums.len();
    (nums[n - 3], nums[n - 2])
}

#[test]
fn sweep_killed_mid_run_resumes_to_the_same_results() {
    let e = env_sized(6400, 200);
    let grid = write_grid(&e.root, 4);
    killed_sweep_resumes_to_the_same_results(&e, &grid);
}

/// The same for ResNets: the signed preset (learnable stem BN) and the dense baseline
/// (learnable BN everywhere), narrow, on the generated 1x28x28 images. Their optimizer state
/// includes batch-norm momentum, which a positional state list once failed to restore.
#[test]
fn resnet_sweep_killed_mid_run_resumes_to_the_same_results() {
    let e = env_sized(640, 100);
    let grid = write_grid_of(
        &e.root,
        [
            "table4-resnet20-x1-signed-elus",
            "table4-resnet20-x1-baseline-he",
        ],
        4,
        "\"data.dataset\" = \"mnist\"\n\"model.width\" = 0.25\n\"data.batch_size\" = 64\n\
         \"train.guard.enabled\" = false\n",
    );
    killed_sweep_resumes_to_the_same_results(&e, &grid);
}

/// Runs the grid's sweep uninterrupted, then again elsewhere with a SIGKILL once its second
/// run is mid-way, restarts it, and checks the two sweeps are identical.
fn killed_sweep_resumes_to_the_same_results(e: &Env, grid: &Path) {
    let grid = grid.to_path_buf();
    let reference = e.root.join("reference");
    let killed = e.root.join("killed");
    let out = sweep_ok(e, &grid, &reference, &[]);
    assert_eq!(counts(&out.stdout), (4, 0));

    // Start the same sweep elsewhere and SIGKILL it once the second run has finished an
    // epoch but not its last.
    let mut child = Command::new(BIN)
        .args(sweep_args(e, &grid, &killed))
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let found = loop {
        if t0.elapsed() > Duration::from_secs(600) {
            break None;
        }
        let started: Vec<PathBuf> = if killed.exists() {
            run_dirs(&killed)
        } else {
            Vec::new()
        };
        // Mid-run: one or two epochs checkpointed (state.json, the checkpoint's mirror, is
        // written last) out of four.
        let mid = started.iter().find(|d| {
            let n = std::fs::read_to_string(d.join("metrics.jsonl"))
                .map(|t| t.lines().count())
                .unwrap_or(0);
            let state: Option<serde_json::Value> = std::fs::read_to_string(d.join("state.json"))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok());
            let epoch = state.and_then(|s| s["epoch"].as_u64()).unwrap_or(0) as usize;
            (1..3).contains(&n) && epoch == n && !d.join("summary.json").exists()
        });
        if let (Some(mid), true) = (mid, started.len() >= 2) {
            break Some(mid.clone());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    let interrupted = found.expect("the sweep never reached its second run");
    assert!(
        !interrupted.join("summary.json").exists(),
        "the kill landed mid-run"
    );
    let finished_before = run_dirs(&killed)
        .iter()
        .filter(|d| d.join("summary.json").exists())
        .count();
    assert!((1..4).contains(&finished_before));
    let before = std::fs::read_to_string(interrupted.join("metrics.jsonl")).unwrap();
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(interrupted.join("state.json")).unwrap())
            .unwrap();
    let checkpointed = state["epoch"].as_u64().unwrap() as usize;

    let out = sweep_ok(e, &grid, &killed, &[]);
    let (trained, skipped) = counts(&out.stdout);
    assert_eq!(skipped, finished_before, "finished runs are skipped");
    assert_eq!(trained + skipped, 4, "every run is done exactly once");
    // No lost and no duplicated runs: the same four directories, each finished once with
    // exactly its epochs, equal to the uninterrupted sweep bit for bit.
    assert_same_runs(&reference, &killed);
    for d in run_dirs(&killed) {
        assert_eq!(metrics(&d).len(), 4, "{}", name(&d));
    }
    // The interrupted run resumed from its checkpoint: its first epochs, timings included,
    // are the lines written before the kill, byte for byte (not retrained, and the metrics
    // file's numbers survive being read and written again).
    let after = std::fs::read_to_string(interrupted.join("metrics.jsonl")).unwrap();
    assert!(checkpointed >= 1);
    let lines = |t: &str| {
        t.lines()
            .take(checkpointed)
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(lines(&before), lines(&after));
    // A third start has nothing to do.
    let out = sweep_ok(e, &grid, &killed, &[]);
    assert_eq!(counts(&out.stdout), (0, 4));
}

#[test]
fn two_sweeps_on_one_directory_never_train_a_run_twice() {
    let e = env_sized(1280, 200);
    let grid = write_grid(&e.root, 2);
    let dir = e.root.join("shared");
    let spawn = || {
        Command::new(BIN)
            .args(sweep_args(&e, &grid, &dir))
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let (a, b) = std::thread::scope(|sc| {
        let a = sc.spawn(spawn);
        let b = sc.spawn(spawn);
        (a.join().unwrap(), b.join().unwrap())
    });
    for o in [&a, &b] {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let (ta, _) = counts(&a.stdout);
    let (tb, _) = counts(&b.stdout);
    assert_eq!(ta + tb, 4, "each run trained by exactly one sweep");
    let alone = e.root.join("alone");
    sweep_ok(&e, &grid, &alone, &[]);
    assert_same_runs(&alone, &dir);
}

#[test]
fn emitted_commands_fill_the_same_layout_as_the_sweep() {
    let e = env_sized(640, 200);
    let grid = write_grid(&e.root, 1);
    let swept = e.root.join("swept");
    let emitted = e.root.join("emitted");
    sweep_ok(&e, &grid, &swept, &["--workers", "2"]);
    let out = sweep_ok(&e, &grid, &emitted, &["--emit"]);
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(lines.len(), 4, "one command per run");
    assert!(
        !emitted
            .join(run_dirs(&swept)[0].file_name().unwrap())
            .exists(),
        "--emit trains nothing"
    );
    for line in &lines {
        assert!(
            line.contains(" train ") && line.ends_with("--continue"),
            "{line}"
        );
        let o = Command::new("sh")
            .args(["-c", line])
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{line}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    assert_same_runs(&swept, &emitted);
    // A requeued job finds its run finished and does nothing.
    let o = Command::new("sh").args(["-c", &lines[0]]).output().unwrap();
    assert!(o.status.success());
    assert_same_runs(&swept, &emitted);
}

#[test]
fn train_refuses_a_directory_another_process_holds() {
    let e = env_sized(640, 200);
    let out = e.root.join("busy");
    std::fs::create_dir_all(&out).unwrap();
    let lock = std::fs::File::create(out.join(".lock")).unwrap();
    lock.try_lock().unwrap();
    let cfg = preset("table1-fcn-signed-elus");
    let args = one_epoch_args(&cfg, &e, &out);
    let o = run(&args);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("being trained by another process"), "{err}");
    assert!(!out.join("metrics.jsonl").exists(), "nothing written");
    drop(lock);
    ok(&args);
}

#[test]
fn bad_grid_files_fail_before_anything_trains() {
    let e = env_sized(640, 200);
    let cases = [
        (
            format!(
                "presets = [{:?}]\nseeds = 1\n[grid]\n\"optimizer.lrr\" = [0.1]\n",
                s(&preset("table1-fcn-signed-elus"))
            ),
            "invalid config",
        ),
        (
            format!(
                "presets = [{:?}]\nseeds = 1\n[grid]\nseed = [1, 2]\n",
                s(&preset("table1-fcn-signed-elus"))
            ),
            "seeds",
        ),
        (
            "presets = [\"missing.toml\"]\nseeds = 1\n".to_string(),
            "not found",
        ),
        ("seeds = 1\n".to_string(), "name a preset"),
        (
            format!(
                "presets = [{:?}]\nseeds = 1\n[grid]\n\"optimizer.lr\" = 0.1\n",
                s(&preset("table1-fcn-signed-elus"))
            ),
            "non-empty list",
        ),
    ];
    for (i, (text, expect)) in cases.iter().enumerate() {
        let grid = e.root.join(format!("bad{i}.toml"));
        std::fs::write(&grid, text).unwrap();
        let out = e.root.join(format!("bad-out{i}"));
        let o = run(&[
            "sweep",
            "--config",
            s(&grid),
            "--data",
            s(&e.data),
            "--out",
            s(&out),
        ]);
        assert!(!o.status.success(), "{text}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(expect), "{text}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(!out.exists(), "nothing written for {text}");
    }
}

#[test]
fn aggregate_and_report_summarize_the_groups() {
    let e = env_sized(640, 200);
    let grid = write_grid(&e.root, 2);
    let dir = e.root.join("sweep");
    sweep_ok(&e, &grid, &dir, &["--workers", "2"]);
    ok(&["aggregate", s(&dir)]);
    let csv = std::fs::read_to_string(dir.join("aggregate.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "two groups: {csv}");
    // The ELUS group's mean final test accuracy is the mean of its two runs' last epochs.
    let elus: Vec<PathBuf> = run_dirs(&dir)
        .into_iter()
        .filter(|d| name(d).starts_with("table1-fcn-signed-elus"))
        .collect();
    assert_eq!(elus.len(), 2);
    let expect = elus
        .iter()
        .map(|d| 100.0 * metrics(d).last().unwrap().test_acc)
        .sum::<f64>()
        / 2.0;
    let row: Vec<&str> = rows[0].split(',').collect();
    assert_eq!(row[0], "table1-fcn-signed-elus");
    assert_eq!(row[1], "2");
    let got: f64 = row[2].parse().unwrap();
    assert!((got - expect).abs() < 1e-9, "{got} vs {expect}");
    // The signed group has a CSR size and a baseline to compare training time with.
    assert_eq!(row[17], "table1-fcn-baseline-he", "{}", rows[0]);

    let report = e.root.join("out/report.md");
    ok(&["report", s(&dir), "--out", s(&report), "--data", s(&e.data)]);
    let md = std::fs::read_to_string(&report).unwrap();
    // The grid's `[set]` shortened the presets: not the paper's experiment, no comparison.
    assert!(!md.contains("## Ours vs the paper"), "{md}");
    for fig in [
        "fcn-mnist-test-acc",
        "fcn-mnist-remaining",
        "mask-shares",
        "mask-equality",
        "fc1-abs-sum-table1-fcn-signed-elus",
        "figure1-input-and-mask",
    ] {
        for ext in ["png", "svg"] {
            let f = e.root.join(format!("out/figures/report-{fig}.{ext}"));
            assert!(f.exists(), "{} missing", f.display());
            assert!(
                md.contains(&format!("figures/report-{fig}.{ext}")),
                "report links {fig}.{ext}"
            );
        }
    }
    let o = run(&[
        "aggregate",
        s(&dir),
        "--compare",
        "nope:table1-fcn-signed-elus",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr)
        .contains("groups: table1-fcn-signed-elus, table1-fcn-baseline-he"));
}

/// `sweep --emit | head -n 1`: the reader closes the pipe after one line while the sweep still
/// has lines to write (2,000 runs, more than a pipe buffer holds); the sweep stops quietly with
/// exit status 0 instead of panicking on the closed pipe.
#[cfg(unix)]
#[test]
fn emit_into_a_pipe_closed_early_exits_quietly() {
    let e = env();
    let grid = e.root.join("many.toml");
    std::fs::write(
        &grid,
        format!(
            "presets = [{:?}]\nseeds = 2000\n",
            preset("table1-fcn-signed-elus").display().to_string()
        ),
    )
    .unwrap();
    let out = e.root.join("emitted");
    let cmd = format!(
        "'{BIN}' sweep --config '{}' --out '{}' --emit | head -n 1; echo \"status ${{PIPESTATUS[0]}}\"",
        s(&grid),
        s(&out)
    );
    let o = Command::new("bash")
        .args(["-c", &cmd])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "one command, then the status: {stdout}");
    assert!(lines[0].contains(" train "), "{stdout}");
    assert_eq!(lines[1], "status 0", "stderr: {stderr}");
    assert!(stderr.is_empty(), "nothing on stderr: {stderr}");
}
