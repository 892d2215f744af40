//! CIFAR-10/100 binary files: reader, writer, loader and error messages (generated files only).

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use supermask_datasets::{
    cifar_files, load_cifar, read_cifar_file, standardize_image, write_cifar_file, CifarDataset,
    Split,
};

const PX: usize = 3072;

fn random_pixels(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n * PX).map(|_| rng.random::<u8>()).collect()
}

fn msg(err: anyhow::Error) -> String {
    let m = format!("{err:#}");
    assert!(!m.contains('\n'), "error must be one line: {m}");
    m
}

/// Writes every file of `split` with `per_file` records; returns (pixels, labels) in load order.
fn write_split(dir: &Path, ds: CifarDataset, split: Split, per_file: usize) -> (Vec<u8>, Vec<u8>) {
    let mut all_px = Vec::new();
    let mut all_l = Vec::new();
    for (k, f) in cifar_files(dir, ds, split).iter().enumerate() {
        let px = random_pixels(
            per_file,
            100 + k as u64 + 10 * (split == Split::Test) as u64,
        );
        let classes = match ds {
            CifarDataset::Cifar10 => 10,
            CifarDataset::Cifar100 => 100,
        };
        let labels: Vec<u8> = (0..per_file)
            .map(|i| ((k * 7 + i * 3 + 1) % classes) as u8)
            .collect();
        write_cifar_file(f, ds, &px, &labels).unwrap();
        all_px.extend_from_slice(&px);
        all_l.extend_from_slice(&labels);
    }
    (all_px, all_l)
}

#[test]
fn cifar10_write_read_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("b.bin");
    let px = random_pixels(4, 1);
    let labels = [0, 9, 3, 5];
    write_cifar_file(&f, CifarDataset::Cifar10, &px, &labels).unwrap();
    assert_eq!(std::fs::metadata(&f).unwrap().len(), 4 * 3073);
    let raw = std::fs::read(&f).unwrap();
    assert_eq!(raw[3073], 9, "record layout: label byte then pixels");
    assert_eq!(&raw[3074..3074 + PX], &px[PX..2 * PX]);
    let (got_px, got_l) = read_cifar_file(&f, CifarDataset::Cifar10).unwrap();
    assert_eq!(got_px, px);
    assert_eq!(got_l, labels);
}

#[test]
fn cifar100_write_read_round_trip_with_coarse_fine_div_5() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.bin");
    let px = random_pixels(3, 2);
    let labels = [0, 99, 57];
    write_cifar_file(&f, CifarDataset::Cifar100, &px, &labels).unwrap();
    let raw = std::fs::read(&f).unwrap();
    assert_eq!(raw.len(), 3 * 3074);
    for (i, &l) in labels.iter().enumerate() {
        assert_eq!(raw[i * 3074], l / 5, "coarse label of record {i}");
        assert_eq!(raw[i * 3074 + 1], l, "fine label of record {i}");
        assert_eq!(
            &raw[i * 3074 + 2..(i + 1) * 3074],
            &px[i * PX..(i + 1) * PX]
        );
    }
    let (got_px, got_l) = read_cifar_file(&f, CifarDataset::Cifar100).unwrap();
    assert_eq!(got_px, px);
    assert_eq!(got_l, labels);
}

#[test]
fn cifar_files_follow_the_official_layout() {
    let d = Path::new("/data");
    let c10 = Path::new("/data/cifar-10-batches-bin");
    let train: Vec<PathBuf> = (1..=5)
        .map(|i| c10.join(format!("data_batch_{i}.bin")))
        .collect();
    assert_eq!(cifar_files(d, CifarDataset::Cifar10, Split::Train), train);
    assert_eq!(
        cifar_files(d, CifarDataset::Cifar10, Split::Test),
        [c10.join("test_batch.bin")]
    );
    let c100 = Path::new("/data/cifar-100-binary");
    assert_eq!(
        cifar_files(d, CifarDataset::Cifar100, Split::Train),
        [c100.join("train.bin")]
    );
    assert_eq!(
        cifar_files(d, CifarDataset::Cifar100, Split::Test),
        [c100.join("test.bin")]
    );
    assert_eq!(CifarDataset::Cifar10.name(), "cifar10");
    assert_eq!(CifarDataset::Cifar100.name(), "cifar100");
}

fn assert_standardized(images: &[f32], raw: &[u8]) {
    assert_eq!(images.len(), raw.len());
    for (img, px) in images.chunks_exact(PX).zip(raw.chunks_exact(PX)) {
        let mut want: Vec<f32> = px.iter().map(|&v| f32::from(v)).collect();
        standardize_image(&mut want);
        assert_eq!(
            img,
            want.as_slice(),
            "image = standardize_image(its record's pixels)"
        );
        let mean = img.iter().map(|&v| f64::from(v)).sum::<f64>() / PX as f64;
        let var = img
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / PX as f64;
        assert!(mean.abs() < 1e-4, "mean {mean}");
        assert!((var.sqrt() - 1.0).abs() < 1e-3, "std {}", var.sqrt());
    }
}

#[test]
fn load_cifar10_concatenates_batches_1_to_5_in_order_and_standardizes() {
    let dir = tempfile::tempdir().unwrap();
    let ds = CifarDataset::Cifar10;
    let (train_px, train_l) = write_split(dir.path(), ds, Split::Train, 3);
    let (test_px, test_l) = write_split(dir.path(), ds, Split::Test, 2);

    let train = load_cifar(dir.path(), ds, Split::Train).unwrap();
    assert_eq!(train.n, 15);
    assert_eq!(train.dim, 3072);
    assert_eq!(train.shape, vec![3, 32, 32]);
    assert_eq!(train.classes, 10);
    assert_eq!(train.labels, train_l);
    assert_standardized(&train.images, &train_px);

    let test = load_cifar(dir.path(), ds, Split::Test).unwrap();
    assert_eq!((test.n, test.dim, test.classes), (2, 3072, 10));
    assert_eq!(test.shape, vec![3, 32, 32]);
    assert_eq!(test.labels, test_l);
    assert_standardized(&test.images, &test_px);
}

#[test]
fn load_cifar100_uses_fine_labels() {
    let dir = tempfile::tempdir().unwrap();
    let ds = CifarDataset::Cifar100;
    let files = cifar_files(dir.path(), ds, Split::Train);
    let px = random_pixels(4, 3);
    let fine = [99u8, 57, 4, 23];
    write_cifar_file(&files[0], ds, &px, &fine).unwrap();
    let d = load_cifar(dir.path(), ds, Split::Train).unwrap();
    assert_eq!(d.labels, fine, "fine labels, not coarse (19, 11, 0, 4)");
    assert_eq!((d.n, d.dim, d.classes), (4, 3072, 100));
    assert_eq!(d.shape, vec![3, 32, 32]);
    assert_standardized(&d.images, &px);

    let (test_px, test_l) = write_split(dir.path(), ds, Split::Test, 2);
    let t = load_cifar(dir.path(), ds, Split::Test).unwrap();
    assert_eq!(t.labels, test_l);
    assert_standardized(&t.images, &test_px);
}

#[test]
fn truncated_file_error_names_file_and_sizes() {
    let dir = tempfile::tempdir().unwrap();
    for (ds, rec) in [
        (CifarDataset::Cifar10, 3073),
        (CifarDataset::Cifar100, 3074),
    ] {
        let f = dir.path().join(format!("{}-trunc.bin", ds.name()));
        write_cifar_file(&f, ds, &random_pixels(2, 4), &[1, 2]).unwrap();
        let mut bytes = std::fs::read(&f).unwrap();
        bytes.truncate(2 * rec - 100);
        std::fs::write(&f, &bytes).unwrap();
        let m = msg(read_cifar_file(&f, ds).unwrap_err());
        assert!(m.contains(&f.display().to_string()), "{m}");
        let want = format!(
            "truncated: {} bytes is not a whole number of {rec}-byte records",
            2 * rec - 100
        );
        assert!(m.contains(&want), "{m}");
    }
}

#[test]
fn empty_file_error_names_file() {
    let dir = tempfile::tempdir().unwrap();
    for &ds in CifarDataset::all() {
        let f = dir.path().join(format!("{}-empty.bin", ds.name()));
        std::fs::write(&f, b"").unwrap();
        let m = msg(read_cifar_file(&f, ds).unwrap_err());
        assert!(m.contains(&f.display().to_string()), "{m}");
        assert!(m.contains("empty file"), "{m}");
    }
}

#[test]
fn label_out_of_range_error_names_file_label_and_record() {
    let dir = tempfile::tempdir().unwrap();
    // CIFAR-10 label 10 in record 1.
    let f10 = dir.path().join("bad10.bin");
    let mut bytes = vec![0u8; 2 * 3073];
    bytes[3073] = 10;
    std::fs::write(&f10, &bytes).unwrap();
    let m = msg(read_cifar_file(&f10, CifarDataset::Cifar10).unwrap_err());
    assert!(m.contains(&f10.display().to_string()), "{m}");
    assert!(
        m.contains("label out of range: label 10 in record 1"),
        "{m}"
    );
    assert!(m.contains("10 classes"), "{m}");

    // CIFAR-100 fine label 100 (coarse fine) in record 0.
    let fine = dir.path().join("badfine.bin");
    let mut bytes = vec![0u8; 3074];
    bytes[0] = 19;
    bytes[1] = 100;
    std::fs::write(&fine, &bytes).unwrap();
    let m = msg(read_cifar_file(&fine, CifarDataset::Cifar100).unwrap_err());
    assert!(m.contains(&fine.display().to_string()), "{m}");
    assert!(m.contains("fine label 100 in record 0"), "{m}");
    assert!(m.contains("100 classes"), "{m}");

    // CIFAR-100 coarse label 20 (fine fine) in record 1.
    let coarse = dir.path().join("badcoarse.bin");
    let mut bytes = vec![0u8; 2 * 3074];
    bytes[3074] = 20;
    bytes[3075] = 99;
    std::fs::write(&coarse, &bytes).unwrap();
    let m = msg(read_cifar_file(&coarse, CifarDataset::Cifar100).unwrap_err());
    assert!(m.contains(&coarse.display().to_string()), "{m}");
    assert!(m.contains("coarse label 20 in record 1"), "{m}");
    assert!(m.contains("20 coarse classes"), "{m}");
}

#[test]
fn load_cifar_reports_the_corrupt_batch_file() {
    let dir = tempfile::tempdir().unwrap();
    let ds = CifarDataset::Cifar10;
    write_split(dir.path(), ds, Split::Train, 2);
    let bad = &cifar_files(dir.path(), ds, Split::Train)[3];
    std::fs::write(bad, vec![0u8; 3073 + 5]).unwrap();
    let m = msg(load_cifar(dir.path(), ds, Split::Train).unwrap_err());
    assert!(m.contains(&bad.display().to_string()), "{m}");
    assert!(m.contains("truncated"), "{m}");
}

#[test]
fn missing_files_error_names_each_missing_file_the_fetch_command_and_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let ds = CifarDataset::Cifar10;
    write_split(dir.path(), ds, Split::Train, 1);
    let files = cifar_files(dir.path(), ds, Split::Train);
    std::fs::remove_file(&files[1]).unwrap();
    std::fs::remove_file(&files[3]).unwrap();
    let m = msg(load_cifar(dir.path(), ds, Split::Train).unwrap_err());
    for (i, f) in files.iter().enumerate() {
        let named = m.contains(&f.display().to_string());
        assert_eq!(named, i == 1 || i == 3, "file {}: {m}", f.display());
    }
    assert!(
        m.contains(&format!("supermask data fetch cifar10 --data {d}")),
        "{m}"
    );
    assert!(
        m.contains("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"),
        "{m}"
    );
    assert!(
        m.contains(&format!("tar xzf cifar-10-binary.tar.gz -C {d}")),
        "{m}"
    );

    let m = msg(load_cifar(dir.path(), CifarDataset::Cifar100, Split::Test).unwrap_err());
    let test = &cifar_files(dir.path(), CifarDataset::Cifar100, Split::Test)[0];
    assert!(m.contains(&test.display().to_string()), "{m}");
    assert!(
        m.contains(&format!("supermask data fetch cifar100 --data {d}")),
        "{m}"
    );
    assert!(
        m.contains("https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz"),
        "{m}"
    );
    assert!(
        m.contains(&format!("tar xzf cifar-100-binary.tar.gz -C {d}")),
        "{m}"
    );
}

#[test]
fn write_rejects_bad_pixel_count_and_out_of_range_labels() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("w.bin");
    let m = msg(write_cifar_file(&f, CifarDataset::Cifar10, &[0; 100], &[1]).unwrap_err());
    assert!(m.contains("w.bin") && m.contains("pixel bytes"), "{m}");
    let m = msg(write_cifar_file(&f, CifarDataset::Cifar10, &[0; PX], &[10]).unwrap_err());
    assert!(m.contains("w.bin") && m.contains("label 10"), "{m}");
    let m = msg(write_cifar_file(&f, CifarDataset::Cifar100, &[0; PX], &[100]).unwrap_err());
    assert!(m.contains("w.bin") && m.contains("label 100"), "{m}");
    assert!(!f.exists(), "nothing written");
}

#[test]
#[ignore = "downloads the real CIFAR archives (about 330 MB) from www.cs.toronto.edu"]
fn fetch_and_load_real_cifar() {
    let data = match std::env::var_os("SUPERMASK_DATA") {
        Some(_) => supermask_datasets::resolve_data_dir(None),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("data"),
    };
    for &ds in CifarDataset::all() {
        let files = supermask_datasets::fetch_cifar(ds, &data).unwrap();
        assert!(files.iter().all(|f| f.is_file()));
        for (split, n) in [(Split::Train, 50000), (Split::Test, 10000)] {
            let d = load_cifar(&data, ds, split).unwrap();
            assert_eq!(d.n, n, "{} {split:?}", ds.name());
            assert_eq!(d.shape, vec![3, 32, 32]);
            let mut counts = vec![0usize; d.classes];
            d.labels.iter().for_each(|&l| counts[l as usize] += 1);
            assert!(
                counts.iter().all(|&c| c == n / d.classes),
                "balanced: {counts:?}"
            );
        }
    }
}
