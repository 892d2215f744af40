//! The methods crates in the `supermask` binary: edge-popup and biprop train the generated
//! (learnable) task to high accuracy at exactly their kept share, and an exported biprop model
//! (ternary layers of magnitude alpha) infers with the training model's predictions; biprop's
//! checkpoints store each layer's alpha, and a checkpoint whose alpha disagrees is refused.

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
            biprop_checkpoint_stores_alpha(&e, &out, &last.layers);
        }
    }
}

/// Global top-k: one cut over all layers reaches its share after the ramp (0.5 kept at the
/// first epoch, then the cubic ramp down to 0.2) and the task is learned.
#[test]
fn global_top_k_follows_its_ramp_to_the_share_of_all_weights() {
    let e = env();
    let out = e.root.join("global");
    train_preset(
        &e,
        &[],
        "../methods/global-topk-fcn-mnist",
        &["train.epochs=4", "masking.threshold.ramp_epochs=2"],
        &out,
    );
    let m = metrics(&out);
    // Evaluation after epoch e uses the cut for epoch e (0-based) + 1: ramp share
    // 1 - (0.8 + (0.5 - 0.8) (1 - 1/2)^3) = 0.2375 after the first epoch, then 0.2.
    let want = [0.2375, 0.2, 0.2, 0.2];
    for (x, w) in m.iter().zip(want) {
        assert!(
            (x.remaining - w).abs() < 1e-5,
            "epoch {}: {} vs {w}",
            x.epoch,
            x.remaining
        );
    }
    // The layers share one cut, not one share: their shares differ.
    let last = m.last().unwrap();
    let shares: Vec<f64> = last.layers.iter().map(|l| l.remaining).collect();
    assert!(
        shares.windows(2).any(|w| (w[0] - w[1]).abs() > 1e-3),
        "{shares:?}"
    );
    assert!(last.test_acc > 0.9, "{last:?}");
}

/// Each layer's `LAYER.alpha` in a biprop checkpoint is chrundle/biprop's
/// `sum(|W| * mask) / int(k n)` over the stored weights and scores (mask: the top `k = 0.5` of
/// `|scores|`, GetSubnet's arithmetic), and `eval` refuses the checkpoint once alpha is edited.
fn biprop_checkpoint_stores_alpha(
    e: &Env,
    dir: &std::path::Path,
    layers: &[supermask_train::metrics::LayerMetrics],
) {
    let tensors: std::collections::HashMap<_, _> = checkpoint_tensors(dir).into_iter().collect();
    for l in layers {
        let alpha = &tensors[&format!("{}.alpha", l.name)];
        let w = &tensors[&format!("{}.weight", l.name)];
        let m = &tensors[&format!("{}.scores", l.name)];
        let n = w.len();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| m[a].abs().total_cmp(&m[b].abs()));
        let pruned = (0.5 * n as f64) as usize;
        let kept: f64 = order[pruned..].iter().map(|&i| f64::from(w[i].abs())).sum();
        let expected = kept / ((0.5 * n as f64) as usize) as f64;
        assert_eq!(alpha.len(), 1, "{}", l.name);
        let rel = (f64::from(alpha[0]) - expected).abs() / expected;
        assert!(rel < 1e-5, "{}: alpha {} vs {expected}", l.name, alpha[0]);
    }
    let path = dir.join("checkpoint.safetensors");
    let mut raw = candle_core::safetensors::load(&path, &candle_core::Device::Cpu).unwrap();
    let key = format!("{}.alpha", layers[0].name);
    let doubled = (&raw[&key] * 2.0).unwrap();
    raw.insert(key.clone(), doubled);
    candle_core::safetensors::save(&raw, &path).unwrap();
    let o = run(&["eval", s(dir), "--data", s(&e.data)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains(&key), "{err}");
}
