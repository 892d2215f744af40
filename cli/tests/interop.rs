//! `export --format safetensors`: the model for other frameworks. The file's tensors are the
//! `.ssm` export's `W * g(M)` and batch norms plus each masked layer's checkpointed W, scores
//! and thresholds (whose `W * g(M)` is the effective weight), its metadata the architecture and
//! the masking config; where `torch` is importable, `benches/python/from_supermask.py` rebuilds
//! the FCN and a ResNet in PyTorch, from the effective weights and as the masked net with
//! trainable scores, and gets exactly the test accuracy of `supermask eval` (CI has no torch
//! and says the PyTorch half was skipped).

mod common;

use common::*;
use std::{collections::HashMap, path::Path, process::Command};
use supermask_export::{format, LayerWeights};

/// (metadata, name -> (shape, values)) of a safetensors file, every tensor f32.
type Tensors = HashMap<String, (Vec<usize>, Vec<f32>)>;
fn read_safetensors(path: &Path) -> (HashMap<String, String>, Tensors) {
    let bytes = std::fs::read(path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors = file
        .tensors()
        .into_iter()
        .map(|(name, t)| {
            assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
            let values = t
                .data()
                .chunks(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            (name, (t.shape().to_vec(), values))
        })
        .collect();
    (header.metadata().clone().unwrap(), tensors)
}

#[test]
fn safetensors_export_holds_the_effective_weights_and_runs_in_torch() {
    let e = env();
    let fcn = e.root.join("fcn");
    train_preset(&e, &[], "table1-fcn-signed-elus", &["train.epochs=1"], &fcn);
    let resnet = e.root.join("resnet");
    train_preset(
        &e,
        &[],
        "table4-resnet20-x1-signed-elus",
        &[
            "train.epochs=1",
            "data.dataset=mnist",
            "model.classes=10",
            "model.width=0.25",
            "model.bn=learnable",
        ],
        &resnet,
    );
    for run in [&fcn, &resnet] {
        let st = e.root.join("model.safetensors");
        let ssm = e.root.join("model.ssm");
        ok(&["export", s(run), "--format", "safetensors", "--out", s(&st)]);
        ok(&["export", s(run), "--out", s(&ssm)]);
        let (meta, tensors) = read_safetensors(&st);
        let desc: serde_json::Value = serde_json::from_str(&meta["supermask"]).unwrap();
        assert!(desc["arch"]["steps"].is_array(), "{desc}");
        let m = format::read_file(&ssm).unwrap();
        for l in &m.layers {
            let want: Vec<f32> = match &l.weights {
                LayerWeights::Ternary { magnitude, pattern } => {
                    pattern.iter().map(|&p| f32::from(p) * magnitude).collect()
                }
                LayerWeights::Values(v) => v.clone(),
            };
            let (shape, got) = &tensors[&format!("{}.weight", l.name)];
            assert_eq!(shape, &l.shape, "{}", l.name);
            assert_eq!(got, &want, "{}", l.name);
        }
        for (name, shape, values) in &m.tensors {
            assert_eq!(tensors[name], (shape.clone(), values.clone()), "{name}");
        }
        // Each masked layer also carries what continuing to train needs: the checkpoint's
        // frozen W, scores and thresholds, whose W * g(M) (the signed mask's g, eq. 1) is the
        // effective weight.
        let masking: serde_json::Value = serde_json::from_str(&meta["masking"]).unwrap();
        assert_eq!(masking["mask"]["type"], "signed", "{masking}");
        let ckpt = checkpoint_tensors(run);
        let ckpt: HashMap<_, _> = ckpt.into_iter().collect();
        for l in &m.layers {
            let (_, w) = &tensors[&format!("{}.frozen_weight", l.name)];
            let (_, scores) = &tensors[&format!("{}.scores", l.name)];
            let (_, taus) = &tensors[&format!("{}.taus", l.name)];
            assert_eq!(w, &ckpt[&format!("{}.weight", l.name)], "{}", l.name);
            assert_eq!(scores, &ckpt[&format!("{}.scores", l.name)], "{}", l.name);
            let g = |m: f32| f32::from(m >= taus[1]) - f32::from(m <= taus[0]);
            let effective: Vec<f32> = w.iter().zip(scores).map(|(w, &m)| w * g(m)).collect();
            assert_eq!(
                effective,
                tensors[&format!("{}.weight", l.name)].1,
                "{}",
                l.name
            );
        }
        assert_eq!(tensors.len(), 4 * m.layers.len() + m.tensors.len());

        if !torch_importable() {
            eprintln!("SKIPPED the PyTorch half: torch (and numpy) are not importable");
            continue;
        }
        let ours: serde_json::Value =
            serde_json::from_slice(&ok(&["eval", s(run), "--data", s(&e.data), "--json"]).stdout)
                .unwrap();
        // The effective weights, then the masked net rebuilt from W, M and the thresholds
        // (trainable scores, straight-through g), which also runs one backward pass.
        for extra in [None, Some("--masked")] {
            let theirs = from_supermask(&st, &e, extra);
            assert_eq!(
                theirs["test_acc"].as_f64(),
                ours["test_acc"].as_f64(),
                "{} {extra:?}",
                run.display()
            );
            if extra.is_some() {
                assert_eq!(
                    theirs["scores_with_gradient"], theirs["scores"],
                    "every layer's scores get a gradient"
                );
                assert_eq!(
                    theirs["scores"].as_array().map(Vec::len),
                    Some(m.layers.len())
                );
            }
        }
    }
}

/// Edge-popup and biprop in PyTorch: the safetensors export of each (biprop's with each layer's
/// `alpha`) rebuilt by `from_supermask.py` from the effective weights and as the masked net (their
/// top-k of |M|, biprop's alpha * sign(W) recomputed from the mask, the straight-through gradient
/// through |M|), which builds only if its effective weights equal the exported ones exactly and
/// must give `supermask eval`'s accuracy, with a gradient on every layer's scores.
#[test]
fn edge_popup_and_biprop_rebuild_in_torch() {
    let e = env();
    for method in ["edge-popup", "biprop"] {
        let run = e.root.join(method);
        let cfg = format!("../methods/{method}-fcn-mnist");
        train_preset(&e, &[], &cfg, &["train.epochs=1"], &run);
        let st = e.root.join(format!("{method}.safetensors"));
        ok(&[
            "export",
            s(&run),
            "--format",
            "safetensors",
            "--out",
            s(&st),
        ]);
        let (meta, tensors) = read_safetensors(&st);
        let masking: serde_json::Value = serde_json::from_str(&meta["masking"]).unwrap();
        assert_eq!(masking["mask"]["type"], method, "{masking}");
        let ckpt: HashMap<_, _> = checkpoint_tensors(&run).into_iter().collect();
        for layer in ["fc1", "fc2", "fc3"] {
            let alpha = tensors.get(&format!("{layer}.alpha"));
            assert_eq!(
                alpha.map(|(_, v)| v),
                ckpt.get(&format!("{layer}.alpha")),
                "{method} {layer}: alpha only for biprop, the checkpoint's"
            );
            assert_eq!(alpha.is_some(), method == "biprop", "{method} {layer}");
        }
        if !torch_importable() {
            eprintln!("SKIPPED the PyTorch half: torch (and numpy) are not importable");
            continue;
        }
        let ours: serde_json::Value =
            serde_json::from_slice(&ok(&["eval", s(&run), "--data", s(&e.data), "--json"]).stdout)
                .unwrap();
        for extra in [None, Some("--masked")] {
            let theirs = from_supermask(&st, &e, extra);
            assert_eq!(theirs["test_acc"], ours["test_acc"], "{method} {extra:?}");
            if extra.is_some() {
                assert_eq!(theirs["scores_with_gradient"], theirs["scores"], "{method}");
                assert_eq!(theirs["scores"].as_array().map(Vec::len), Some(3));
            }
        }
    }
}

fn torch_importable() -> bool {
    Command::new("python3")
        .args(["-c", "import torch, numpy"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `from_supermask.py FILE --json [--masked]` on `e`'s data, its JSON output.
fn from_supermask(file: &Path, e: &Env, extra: Option<&str>) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches/python/from_supermask.py");
    let mut args = vec![s(&script), s(file), "--data", s(&e.data), "--json"];
    args.extend(extra);
    let o = Command::new("python3").args(&args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}
