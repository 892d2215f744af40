//! The methods crates in the `supermask` binary: edge-popup and biprop train the generated
//! (learnable) task to high accuracy at exactly their kept share, and an exported biprop model
//! (ternary layers of magnitude alpha) infers with the training model's predictions.

mod common;

use common::*;

#[test]
fn edge_popup_and_biprop_learn_at_their_share_and_biprop_exports_exactly() {
    let e = env();
    for (method, preset_name) in [
        ("edge-popup", "../methods/edge-popup-fcn-mnist"),
        ("biprop", "../methods/biprop-fcn-mnist"),
    ] {
        let out = e.root.join(method);
        train_preset(&e, &[], preset_name, &["train.epochs=3"], &out);
        let last = metrics(&out).last().unwrap().clone();
        // The generated task is learnable (chance is 10%).
        assert!(last.test_acc > 0.9, "{method}: {last:?}");
        // keep = 0.5: int(0.5 n) of every layer pruned (n even in the FCN's layers).
        for l in &last.layers {
            assert_eq!(l.remaining, 0.5, "{method} {}", l.name);
        }
        let ssm = e.root.join(format!("{method}.ssm"));
        ok(&["export", s(&out), "--out", s(&ssm)]);
        let o = ok(&[
            "infer",
            s(&ssm),
            "--data",
            s(&e.data),
            "--compare",
            s(&out),
            "--json",
        ]);
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(r["prediction_mismatches"], 0, "{method}: {r}");
        assert_eq!(r["accuracy"].as_f64(), Some(last.test_acc), "{method}: {r}");
        if method == "biprop" {
            // Each layer is stored ternary, sign(W) * mask at two bits a weight with one
            // magnitude, alpha (Kaiming normal weights would otherwise be stored as floats).
            let o = ok(&["inspect", s(&ssm)]);
            let text = String::from_utf8_lossy(&o.stdout);
            assert_eq!(text.matches("packed2bit").count(), 3, "{text}");
        }
    }
}
