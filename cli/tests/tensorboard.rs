//! The TensorBoard event files a run writes, read back by the `tensorboard` Python package's
//! own reader (`EventAccumulator`). CI installs the package (`.ci/run`) and sets
//! `SUPERMASK_REQUIRE_TENSORBOARD=1`, so there a missing package fails the test; elsewhere the
//! test says it was skipped.

mod common;

use common::*;
use std::process::Command;

/// Reads every scalar of the event files under `dir` with TensorBoard's reader and prints
/// `tag step value` lines.
const READER: &str = r#"
import sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1])
acc.Reload()
for tag in sorted(acc.Tags()["scalars"]):
    for e in acc.Scalars(tag):
        print(tag, e.step, repr(e.value))
"#;

fn tensorboard_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import tensorboard"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("SUPERMASK_REQUIRE_TENSORBOARD").is_none(),
            "SUPERMASK_REQUIRE_TENSORBOARD is set but `python3 -c 'import tensorboard'` fails"
        );
        eprintln!("SKIPPED: the tensorboard Python package is not installed");
    }
    ok
}

/// A run stopped after epoch 1 of 2 and resumed: TensorBoard's reader sees each epoch once,
/// with the test accuracy, remaining weights and per-layer shares of `metrics.jsonl`.
#[test]
fn tensorboard_reads_each_epoch_of_a_resumed_run_once() {
    if !tensorboard_available() {
        return;
    }
    let e = env();
    let run_dir = e.root.join("run");
    train_fcn_stopped_after_epoch_1(&e, &run_dir);
    ok(&["train", "--resume", s(&run_dir), "--data", s(&e.data)]);
    let o = Command::new("python3")
        .args(["-c", READER, s(&run_dir)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    let m = metrics(&run_dir);
    let series = |tag: &str| -> Vec<(usize, f64)> {
        text.lines()
            .filter_map(|l| {
                let parts: Vec<&str> = l.split_whitespace().collect();
                match parts.as_slice() {
                    [t, step, value] if *t == tag => {
                        Some((step.parse().ok()?, value.parse().ok()?))
                    }
                    _ => None,
                }
            })
            .collect()
    };
    for (tag, want) in [
        (
            "accuracy/test",
            m.iter().map(|x| x.test_acc).collect::<Vec<_>>(),
        ),
        ("remaining/all", m.iter().map(|x| x.remaining).collect()),
        ("shares/fc1/+1", m.iter().map(|x| x.layers[0].pos).collect()),
        ("lr", m.iter().map(|x| x.lr).collect()),
    ] {
        let got = series(tag);
        assert_eq!(
            got.iter().map(|p| p.0).collect::<Vec<_>>(),
            [1, 2],
            "{tag}: each epoch once: {text}"
        );
        for ((_, g), w) in got.iter().zip(&want) {
            assert_eq!(*g as f32, *w as f32, "{tag}: {text}");
        }
    }
}
