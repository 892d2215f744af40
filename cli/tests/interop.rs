//! `export --format safetensors`: the effective weights for other frameworks. The file's
//! tensors are the `.ssm` export's `W * g(M)` and batch norms, its metadata the architecture;
//! where `torch` is importable, `benches/python/from_supermask.py` rebuilds the FCN and a
//! ResNet in PyTorch and gets exactly the test accuracy of `supermask eval` (CI has no torch
//! and says the PyTorch half was skipped).

mod common;

use common::*;
use std::{collections::HashMap, path::Path, process::Command};
use supermask_export::{format, LayerWeights};

/// (metadata, name -> (shape, values)) of a safetensors file, parsed by its specification.
type Tensors = HashMap<String, (Vec<usize>, Vec<f32>)>;
fn read_safetensors(path: &Path) -> (serde_json::Value, Tensors) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!(n % 8, 0, "the data starts 8-byte aligned");
    let mut header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let meta = header.remove("__metadata__").unwrap();
    let data = &bytes[8 + n..];
    let mut end = 0;
    let tensors = header
        .into_iter()
        .map(|(k, v)| {
            assert_eq!(v["dtype"], "F32");
            let shape: Vec<usize> = serde_json::from_value(v["shape"].clone()).unwrap();
            let [a, b]: [usize; 2] = serde_json::from_value(v["data_offsets"].clone()).unwrap();
            end = end.max(b);
            let values = data[a..b]
                .chunks(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            (k, (shape, values))
        })
        .collect();
    assert_eq!(end, data.len(), "no bytes after the last tensor");
    (meta, tensors)
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
        let desc: serde_json::Value =
            serde_json::from_str(meta["supermask"].as_str().unwrap()).unwrap();
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
        assert_eq!(tensors.len(), m.layers.len() + m.tensors.len());

        let torch = Command::new("python3")
            .args(["-c", "import torch, numpy"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !torch {
            eprintln!("SKIPPED the PyTorch half: torch (and numpy) are not importable");
            continue;
        }
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches/python/from_supermask.py");
        let o = Command::new("python3")
            .args([s(&script), s(&st), "--data", s(&e.data), "--json"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let theirs: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let ours: serde_json::Value =
            serde_json::from_slice(&ok(&["eval", s(run), "--data", s(&e.data), "--json"]).stdout)
                .unwrap();
        assert_eq!(
            theirs["test_acc"].as_f64(),
            ours["test_acc"].as_f64(),
            "{}",
            run.display()
        );
    }
}
