//! The `files` dataset end to end: the generated MNIST written as `.npy` arrays trains to
//! exactly the numbers of the same images read from IDX (the same data digest); written as
//! PNG folders it trains to high accuracy; a missing or wrong `data.shape` and a data root
//! without any layout are one error each, before anything is written.

mod common;

use common::*;
use std::path::Path;
use supermask_datasets::{npy_bytes, read_idx_images, read_idx_labels};

/// The generated MNIST's `prefix` split (`train`, `t10k`): `(n, pixels, labels)`.
fn idx_split(e: &Env, prefix: &str) -> (usize, Vec<u8>, Vec<u8>) {
    let dir = e.data.join("mnist");
    let (pixels, n, _, _) =
        read_idx_images(&dir.join(format!("{prefix}-images-idx3-ubyte"))).unwrap();
    let labels = read_idx_labels(&dir.join(format!("{prefix}-labels-idx1-ubyte"))).unwrap();
    (n, pixels, labels)
}

/// The generated MNIST as `{train,test}_{images,labels}.npy` (uint8 images, int64 labels,
/// as NumPy saves them by default) under `out`.
fn write_npy(e: &Env, out: &Path) {
    std::fs::create_dir_all(out).unwrap();
    for (prefix, split) in [("train", "train"), ("t10k", "test")] {
        let (n, pixels, labels) = idx_split(e, prefix);
        let images = npy_bytes("|u1", &[n, 28, 28], &pixels);
        let wide: Vec<u8> = labels
            .iter()
            .flat_map(|&l| i64::from(l).to_le_bytes())
            .collect();
        std::fs::write(out.join(format!("{split}_images.npy")), images).unwrap();
        std::fs::write(
            out.join(format!("{split}_labels.npy")),
            npy_bytes("<i8", &[n], &wide),
        )
        .unwrap();
    }
}

/// The generated MNIST as `{train,test}/LABEL/INDEX.png` (8-bit grayscale) under `out`.
fn write_png_folders(e: &Env, out: &Path) {
    for (prefix, split) in [("train", "train"), ("t10k", "test")] {
        let (n, pixels, labels) = idx_split(e, prefix);
        for i in 0..n {
            let dir = out.join(split).join(labels[i].to_string());
            std::fs::create_dir_all(&dir).unwrap();
            let f = std::fs::File::create(dir.join(format!("{i:05}.png"))).unwrap();
            let mut enc = png::Encoder::new(f, 28, 28);
            enc.set_color(png::ColorType::Grayscale);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc.write_header().unwrap();
            w.write_image_data(&pixels[i * 784..(i + 1) * 784]).unwrap();
        }
    }
}

fn digests(run: &Path) -> (String, String) {
    let d: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("data.json")).unwrap()).unwrap();
    (
        d["train_sha256"].as_str().unwrap().to_string(),
        d["test_sha256"].as_str().unwrap().to_string(),
    )
}

const FILES: [&str; 2] = ["data.dataset=files", "data.shape=[1, 28, 28]"];

#[test]
fn npy_arrays_train_exactly_like_the_same_images_from_idx() {
    let e = env();
    let arrays = e.root.join("arrays");
    write_npy(&e, &arrays);
    let (idx_run, npy_run) = (e.root.join("idx"), e.root.join("npy"));
    train_preset(
        &e,
        &[],
        "table1-fcn-signed-elus",
        &["train.epochs=2"],
        &idx_run,
    );
    let cfg = preset("table1-fcn-signed-elus");
    ok(&[
        "train",
        "--config",
        s(&cfg),
        "--set",
        "train.epochs=2",
        "--set",
        FILES[0],
        "--set",
        FILES[1],
        "--data",
        s(&arrays),
        "--out",
        s(&npy_run),
    ]);
    assert_eq!(digests(&idx_run), digests(&npy_run));
    assert_eq!(
        without_timing(metrics(&idx_run)),
        without_timing(metrics(&npy_run))
    );
    // The run records its data; eval reads it back from the recorded root.
    let o = ok(&["eval", s(&npy_run)]);
    let acc = metrics(&npy_run).last().unwrap().test_acc;
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&format!("{acc:.4}")),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn png_folders_train_the_learnable_task_to_high_accuracy() {
    let e = env();
    let folders = e.root.join("png");
    write_png_folders(&e, &folders);
    let run = e.root.join("run");
    let cfg = preset("table1-fcn-signed-elus");
    ok(&[
        "train",
        "--config",
        s(&cfg),
        "--set",
        "train.epochs=3",
        "--set",
        FILES[0],
        "--set",
        FILES[1],
        "--data",
        s(&folders),
        "--out",
        s(&run),
    ]);
    // The generated task (class c lights rows 2c+2..2c+5) is learnable: a run that diverged or
    // mislabelled the folders stays near 10%.
    let last = metrics(&run).last().unwrap().test_acc;
    assert!(last > 0.9, "test accuracy {last}");
}

#[test]
fn a_missing_or_wrong_shape_or_layout_is_one_error_before_anything_is_written() {
    let e = env();
    let arrays = e.root.join("arrays");
    write_npy(&e, &arrays);
    let cfg = preset("table1-fcn-signed-elus");
    let out = e.root.join("out");
    let cases: [(&[&str], &Path, &str); 3] = [
        (&["data.dataset=files"], &arrays, "data.shape"),
        (
            &["data.dataset=files", "data.shape=[3, 28, 28]"],
            &arrays,
            "data.shape says [3, 28, 28]",
        ),
        (&FILES, &e.data, "train_images.npy with train_labels.npy"),
    ];
    for (sets, data, want) in cases {
        let mut args = vec!["train", "--config", s(&cfg)];
        for set in sets {
            args.extend(["--set", set]);
        }
        args.extend(["--data", s(data), "--out", s(&out)]);
        let o = run(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want), "{want}: {err}");
        assert!(!out.exists(), "{want}: the run directory was created");
    }
}
