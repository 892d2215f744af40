//! `supermask ablate`: the trained masks evaluate to `supermask eval`'s accuracy, and each
//! sanity-check ablation (masks shuffled within layers, weights redrawn, random masks at the
//! trained shares) destroys what the generated task's training found; `report` includes the
//! table.

mod common;

use common::*;

#[test]
fn ablations_fall_to_near_chance_and_the_report_includes_them() {
    let e = env();
    let sweep = sweep_elus_fcn(&e, "\"train.epochs\" = 3\n");
    ok(&["ablate", s(&sweep), "--data", s(&e.data)]);
    let csv = std::fs::read_to_string(sweep.join("ablation.csv")).unwrap();
    let rows: Vec<Vec<String>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect();
    eprintln!("{csv}");
    assert_eq!(rows.len(), 2, "{csv}");
    for r in &rows {
        let v: Vec<f64> = r[3..7].iter().map(|x| x.parse().unwrap()).collect();
        let (trained, ablated) = (v[0], &v[1..]);
        // The trained masks are what `eval` evaluates.
        let o = ok(&[
            "eval",
            s(&sweep.join(&r[0])),
            "--data",
            s(&e.data),
            "--json",
        ]);
        let ev: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(ev["test_acc"].as_f64(), Some(trained), "{r:?}");
        // The generated task is learned (> 90%), and no ablation keeps what was learned: the
        // masks are specific to their weights and their positions.
        assert!(trained > 0.9, "{r:?}");
        for a in ablated {
            assert!(*a < trained - 0.3, "an ablation kept the accuracy: {r:?}");
        }
    }
    let md = std::fs::read_to_string(sweep.join("ablation.md")).unwrap();
    assert!(md.contains("| shuffled |") && md.contains("| 2 |"), "{md}");
    let report = e.root.join("report.md");
    ok(&[
        "report",
        s(&sweep),
        "--out",
        s(&report),
        "--data",
        s(&e.data),
    ]);
    let text = std::fs::read_to_string(&report).unwrap();
    assert!(
        text.contains("Sanity-check ablations") && text.contains("| shuffled |"),
        "{text}"
    );
    // A dense run has no mask: one error.
    let dense = e.root.join("dense");
    train_preset(
        &e,
        &[],
        "table1-fcn-baseline-he",
        &["train.epochs=1"],
        &dense,
    );
    let o = run(&["ablate", s(&dense), "--data", s(&e.data)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("no finished masked run"),
        "{err}"
    );
}
