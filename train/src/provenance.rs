//! Where a run's data came from: `data.json` in the run directory records the data root and
//! the digest of each split as loaded ([`Dataset::digest`]). `--resume`/`--continue` read from
//! the recorded root unless a data directory is named, and refuse data whose digest differs
//! (a resumed run on other data would silently mix two experiments).

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use supermask_core::fsio::write_atomic;
use supermask_core::Result;
use supermask_datasets::Dataset;

/// The record's file name in a run directory.
pub const DATA_FILE: &str = "data.json";

/// What a run read: the data root, the dataset and the digests of the splits it used (the
/// training split after `data.train_subset`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataRecord {
    /// The data root, absolute where it could be resolved.
    pub root: PathBuf,
    /// The dataset's name.
    pub dataset: String,
    /// Training samples used.
    pub train_samples: usize,
    /// [`Dataset::digest`] of the training samples used.
    pub train_sha256: String,
    /// Test samples.
    pub test_samples: usize,
    /// [`Dataset::digest`] of the test split.
    pub test_sha256: String,
}

impl DataRecord {
    /// The record of `train` and `test` of `dataset`, read under `root`.
    pub fn of(root: &Path, dataset: &str, train: &Dataset, test: &Dataset) -> Self {
        Self {
            root: std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf()),
            dataset: dataset.to_string(),
            train_samples: train.n,
            train_sha256: train.digest(),
            test_samples: test.n,
            test_sha256: test.digest(),
        }
    }

    /// The record in run directory `dir`; `None` for a run written before records existed.
    pub fn read(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(DATA_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("{}: not a data record: {e}", path.display()))
    }

    /// Writes the record into run directory `dir` (atomically).
    pub fn write(&self, dir: &Path) -> Result<()> {
        write_atomic(
            &dir.join(DATA_FILE),
            serde_json::to_string_pretty(self)?.as_bytes(),
        )
    }

    /// Checks that `now` (the data about to be used) is the data this record names; the error
    /// names the run's record, the split and both digests.
    pub fn check_same(&self, now: &DataRecord, dir: &Path) -> Result<()> {
        let file = dir.join(DATA_FILE);
        for (split, was, is, n_was, n_is) in [
            (
                "training",
                &self.train_sha256,
                &now.train_sha256,
                self.train_samples,
                now.train_samples,
            ),
            (
                "test",
                &self.test_sha256,
                &now.test_sha256,
                self.test_samples,
                now.test_samples,
            ),
        ] {
            anyhow::ensure!(
                was == is,
                "{}: the run trained on {} data under {} ({split} split: {n_was} samples, sha256 \
                 {was}), but the {split} split under {} differs ({n_is} samples, sha256 {is}); \
                 resume it on the recorded data (--data {})",
                file.display(),
                self.dataset,
                self.root.display(),
                now.root.display(),
                self.root.display()
            );
        }
        Ok(())
    }
}

/// The data root for training into `out`: the directory the user named (`--data` or
/// `$SUPERMASK_DATA`), else, for a run that exists, the root it recorded, else `./data`.
pub fn data_root_for(out: &Path, named: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = named {
        return Ok(p);
    }
    Ok(DataRecord::read(out)?.map_or_else(|| PathBuf::from("data"), |r| r.root))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(labels: &[u8], pixel: f32) -> Dataset {
        Dataset {
            images: vec![pixel; labels.len() * 4],
            labels: labels.to_vec(),
            n: labels.len(),
            dim: 4,
            shape: vec![1, 2, 2],
            classes: 10,
        }
    }

    #[test]
    fn a_changed_label_or_pixel_changes_the_record_and_fails_the_check() {
        let dir = Path::new("run");
        let a = DataRecord::of(Path::new("d"), "mnist", &set(&[1, 2], 0.5), &set(&[3], 0.5));
        let same = DataRecord::of(Path::new("d"), "mnist", &set(&[1, 2], 0.5), &set(&[3], 0.5));
        a.check_same(&same, dir).unwrap();
        let label = DataRecord::of(Path::new("e"), "mnist", &set(&[1, 4], 0.5), &set(&[3], 0.5));
        let err = a.check_same(&label, dir).unwrap_err().to_string();
        assert!(
            err.contains("training split") && err.contains("run/data.json"),
            "{err}"
        );
        let pixel = DataRecord::of(
            Path::new("e"),
            "mnist",
            &set(&[1, 2], 0.5),
            &set(&[3], 0.25),
        );
        let err = a.check_same(&pixel, dir).unwrap_err().to_string();
        assert!(err.contains("test split"), "{err}");
    }
}
