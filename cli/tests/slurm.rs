//! `sweep --emit slurm` on a real single-node Slurm (`.ci/slurm-up` starts one; CI sets
//! `SUPERMASK_REQUIRE_SLURM=1`, so there a missing cluster fails the test; elsewhere the test
//! says it was skipped): the job array trains every run, one task killed mid-run and requeued
//! resumes to the uninterrupted run's numbers, and `aggregate` sees each run once.

mod common;

use common::*;
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

const EPOCHS: usize = 60;

fn sh(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn slurm_available() -> bool {
    let idle = Command::new("sinfo")
        .args(["-h", "-o", "%T"])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l == "idle")
        });
    if !idle {
        assert!(
            std::env::var_os("SUPERMASK_REQUIRE_SLURM").is_none(),
            "SUPERMASK_REQUIRE_SLURM is set but Slurm has no idle node (run .ci/slurm-up)"
        );
        eprintln!("SKIPPED: no Slurm cluster with an idle node (.ci/slurm-up starts one)");
    }
    idle
}

/// Polls `done` every 200 ms for up to `secs` seconds.
fn wait_for(secs: u64, what: &str, mut done: impl FnMut() -> bool) {
    let t = Instant::now();
    while !done() {
        assert!(t.elapsed() < Duration::from_secs(secs), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn epochs_done(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("metrics.jsonl")).map_or(0, |t| t.lines().count())
}

#[test]
fn a_slurm_job_array_trains_the_sweep_and_a_requeued_task_resumes() {
    if !slurm_available() {
        return;
    }
    let e = env();
    let grid = e.root.join("grid.toml");
    std::fs::write(
        &grid,
        format!(
            "presets = [{:?}]\nseeds = 2\n[set]\n\"train.epochs\" = {EPOCHS}\n",
            preset("table1-fcn-signed-elus").display().to_string()
        ),
    )
    .unwrap();
    let out = e.root.join("sweep");
    let o = ok(&[
        "sweep",
        "--config",
        s(&grid),
        "--data",
        s(&e.data),
        "--out",
        s(&out),
        "--emit",
        "slurm",
        "--slurm-time",
        "00:10:00",
    ]);
    let script = e.root.join("sweep.sbatch");
    std::fs::write(&script, &o.stdout).unwrap();
    let commands: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.starts_with("  '"))
        .map(|l| l.trim().trim_matches('\'').to_string())
        .collect();
    assert_eq!(commands.len(), 2, "one array task per run");
    let job = sh("sbatch", &["--parsable", s(&script)]);
    let task0 = format!("{job}_0");
    let run0: PathBuf = {
        let word = commands[0].split(" --out ").nth(1).unwrap();
        PathBuf::from(word.split(' ').next().unwrap())
    };
    // Kill task 0 mid-run and requeue it (as a node failure would).
    wait_for(120, "task 0 trains its first epochs", || {
        epochs_done(&run0) >= 2
    });
    let before = epochs_done(&run0);
    sh("scontrol", &["requeue", &task0]);
    let requeued = Instant::now();
    // Slurm holds a requeued job back for a while (its begin time moves ahead); start it early,
    // but not within the same wall-clock second as the requeue: slurmd revokes the killed run's
    // credential, and a credential created in the second of its revocation counts as revoked
    // ("Killing non-startable batch job: Job credential revoked"), which fails the task.
    wait_for(60, "task 0 requeued", || {
        let state = sh("squeue", &["-h", "-j", &task0, "-o", "%T"]);
        matches!(state.as_str(), "PENDING" | "RUNNING")
    });
    std::thread::sleep(Duration::from_secs(3).saturating_sub(requeued.elapsed()));
    let _ = Command::new("scontrol")
        .args(["update", &format!("JobId={task0}"), "StartTime=now"])
        .output();
    wait_for(300, "the job array finishes", || {
        sh("squeue", &["-h", "-j", &job]).is_empty()
    });
    let shown = sh("scontrol", &["show", "job", &task0]);
    assert!(
        shown.contains("JobState=COMPLETED"),
        "task 0 completed: {shown}\n{}",
        std::fs::read_to_string(out.join(format!("slurm-{job}_0.out"))).unwrap_or_default()
    );
    assert!(
        shown.contains("Restarts=1"),
        "task 0 was requeued once: {shown}"
    );
    assert!(
        before < EPOCHS,
        "task 0 was still training when it was killed"
    );

    // Every run once, finished, and the requeued one equal to an uninterrupted run.
    let runs: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .map(|d| d.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(runs.len(), 2, "{runs:?}");
    for r in &runs {
        let m = metrics(r);
        assert_eq!(
            m.iter().map(|x| x.epoch).collect::<Vec<_>>(),
            (1..=EPOCHS).collect::<Vec<_>>(),
            "{}: each epoch once",
            r.display()
        );
        assert!(r.join("summary.json").is_file());
    }
    let alone = e.root.join("alone");
    let cmd = commands[0].replace(s(&run0), s(&alone));
    let o = Command::new("bash")
        .args(["-c", &cmd])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        without_timing(metrics(&run0)),
        without_timing(metrics(&alone))
    );
    assert_eq!(checkpoint_tensors(&run0), checkpoint_tensors(&alone));
    ok(&["aggregate", s(&out)]);
    let csv = std::fs::read_to_string(out.join("aggregate.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{csv}");
    assert_eq!(rows[0].split(',').nth(1), Some("2"), "two seeds: {csv}");
}
