//! `data.validation`: seeded training images held out and evaluated every epoch, and
//! `aggregate --epoch best-validation` reporting each run at its best validation epoch.

mod common;

use common::*;

fn data_json(run: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("data.json")).unwrap()).unwrap()
}

#[test]
fn held_out_images_are_evaluated_every_epoch_and_tables_can_pick_the_best_one() {
    let e = env();
    let sweep = sweep_elus_fcn(&e, "\"train.epochs\" = 4\n\"data.validation\" = 100\n");
    let mut runs: Vec<_> = std::fs::read_dir(&sweep)
        .unwrap()
        .map(|d| d.unwrap().path())
        .filter(|p| p.join("summary.json").is_file())
        .collect();
    runs.sort();
    assert_eq!(runs.len(), 2);
    let mut best_test = Vec::new();
    for r in &runs {
        // 640 generated training images: 100 held out, 540 trained on; the test set is whole.
        let d = data_json(r);
        assert_eq!(
            (d["train_samples"].as_u64(), d["test_samples"].as_u64()),
            (Some(540), Some(200))
        );
        let m = metrics(r);
        assert!(m
            .iter()
            .all(|x| x.val_acc.is_some() && x.val_loss.is_some()));
        // The generated task is learnable: the held-out images are classified as well as the
        // test images, far above chance (10%).
        let last = m.last().unwrap();
        assert!(last.val_acc.unwrap() > 0.9, "{last:?}");
        let best = m
            .iter()
            .fold(
                None::<&supermask_train::metrics::EpochMetrics>,
                |b, x| match b {
                    Some(b) if b.val_acc >= x.val_acc => Some(b),
                    _ => Some(x),
                },
            )
            .unwrap();
        best_test.push(100.0 * best.test_acc);
    }
    let out = e.root.join("agg");
    let o = ok(&[
        "aggregate",
        s(&sweep),
        "--out",
        s(&out),
        "--epoch",
        "best-validation",
    ]);
    let md = String::from_utf8_lossy(&o.stdout);
    assert!(md.contains("highest validation accuracy"), "{md}");
    let csv = std::fs::read_to_string(out.join("aggregate.csv")).unwrap();
    let row: Vec<&str> = csv.lines().nth(1).unwrap().split(',').collect();
    let mean: f64 = row[2].parse().unwrap();
    let want = (best_test[0] + best_test[1]) / 2.0;
    assert!((mean - want).abs() < 1e-9, "{mean} vs {want}: {csv}");

    // Runs without a validation set cannot be ranked by it: one error naming the run.
    let plain = e.root.join("plain");
    train_preset(
        &e,
        &[],
        "table1-fcn-signed-elus",
        &["train.epochs=1"],
        &plain,
    );
    let o = run(&["aggregate", s(&plain), "--epoch", "best-validation"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("data.validation") && err.contains("plain"),
        "{err}"
    );
    let o = run(&[
        "train",
        "--config",
        s(&preset("table1-fcn-signed-elus")),
        "--set",
        "data.validation=640",
        "--data",
        s(&e.data),
        "--out",
        s(&e.root.join("all-held")),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("data.validation"),
        "{err}"
    );
}
