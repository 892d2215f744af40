//! Datasets as plugins. Every dataset that `data.dataset` can name implements [`DatasetSource`]
//! and registers itself with [`crate::register_dataset!`], next to its definition, in this crate
//! or in any other crate linked into the binary (the way masks and thresholds register in
//! `supermask_core::registry`). Loading, fetching and the input shape a model is built for all
//! go through [`find_dataset`]; nothing else matches dataset names.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, Result};

use crate::{Dataset, Split};

/// A dataset: its name, its sample shape and classes (known without reading files, or given by
/// the config for datasets read from the user's own files), how to load a split and how to
/// fetch its files.
pub trait DatasetSource: Sync + 'static {
    /// Canonical name: the value of `data.dataset`, lower case.
    fn name(&self) -> &'static str;
    /// Other spellings `supermask data fetch` accepts (compared case-insensitively), e.g.
    /// `fashion_mnist`. Configs use the canonical name.
    fn aliases(&self) -> &'static [&'static str] {
        &[]
    }
    /// One line for `supermask plugins`.
    fn description(&self) -> &'static str;
    /// Per-sample shape, channels first (`[1, 28, 28]`, `[3, 32, 32]`): the input shape of a
    /// model trained on it. `None` for a dataset whose shape depends on its files (the `files`
    /// dataset): the config's `data.shape` gives it, and loading checks the files against it.
    fn sample_shape(&self) -> Option<Vec<usize>>;
    /// Number of classes, every label below it; `None` when the files decide (each loaded split
    /// says its own in [`Dataset::classes`]).
    fn classes(&self) -> Option<usize>;
    /// Loads one split with images standardized, or one error naming what is missing or bad.
    fn load(&self, data_dir: &Path, split: Split) -> Result<Dataset>;
    /// Downloads and verifies the dataset's files under `data_dir`; returns their paths. A
    /// dataset that cannot be downloaded says so in its error.
    fn fetch(&self, data_dir: &Path) -> Result<Vec<PathBuf>>;
}

/// One registered dataset (what [`crate::register_dataset!`] submits).
pub struct DatasetEntry {
    /// The dataset.
    pub source: &'static dyn DatasetSource,
}

supermask_core::inventory::collect!(DatasetEntry);

/// Registers a dataset: `register_dataset!(MyData);` where `MyData` is a constant value (a unit
/// struct, an enum variant) of a type implementing [`DatasetSource`]. A binary sees the datasets
/// of every crate it links; a crate nothing else refers to must be referenced (for instance by
/// calling a `link()` function of it) so the linker keeps it.
#[macro_export]
macro_rules! register_dataset {
    ($source:expr) => {
        $crate::__inventory::submit! {
            $crate::DatasetEntry { source: &$source }
        }
    };
}

/// Every registered dataset sorted by name, or the first clash of two names or aliases.
fn checked() -> &'static std::result::Result<Vec<&'static dyn DatasetSource>, String> {
    static ALL: OnceLock<std::result::Result<Vec<&'static dyn DatasetSource>, String>> =
        OnceLock::new();
    ALL.get_or_init(|| {
        check(
            supermask_core::inventory::iter::<DatasetEntry>
                .into_iter()
                .map(|e| e.source),
        )
    })
}

/// Sorts `sources` by name and rejects two datasets answering to the same spelling.
fn check(
    sources: impl IntoIterator<Item = &'static dyn DatasetSource>,
) -> std::result::Result<Vec<&'static dyn DatasetSource>, String> {
    let mut all: Vec<_> = sources.into_iter().collect();
    all.sort_by_key(|s| s.name());
    let mut seen: std::collections::BTreeMap<String, &'static str> = Default::default();
    for s in &all {
        for spelling in std::iter::once(s.name()).chain(s.aliases().iter().copied()) {
            let key = spelling.to_ascii_lowercase();
            if let Some(first) = seen.insert(key, s.name()) {
                return Err(format!(
                    "two datasets answer to the name `{spelling}` (`{first}` and `{}`): \
                     rename one of them",
                    s.name()
                ));
            }
        }
    }
    Ok(all)
}

/// Every registered dataset, sorted by name. Fails when two datasets claim the same name or
/// alias.
pub fn datasets() -> Result<&'static [&'static dyn DatasetSource]> {
    checked()
        .as_ref()
        .map(Vec::as_slice)
        .map_err(|e| anyhow!("dataset registry: {e}"))
}

/// Canonical names of every registered dataset, sorted.
pub fn dataset_names() -> Vec<&'static str> {
    datasets()
        .map(|all| all.iter().map(|s| s.name()).collect())
        .unwrap_or_default()
}

/// The dataset answering to `name` (its canonical name or an alias, case-insensitive). The
/// error lists the known names and how a dataset from another crate becomes known.
pub fn find_dataset(name: &str) -> Result<&'static dyn DatasetSource> {
    let all = datasets()?;
    let want = name.trim().to_ascii_lowercase();
    all.iter()
        .copied()
        .find(|s| s.name() == want || s.aliases().iter().any(|a| a.eq_ignore_ascii_case(&want)))
        .ok_or_else(|| {
            anyhow!(
                "unknown dataset `{name}`; known datasets: {} (a dataset from another crate is \
                 known once that crate registers it with register_dataset! and is linked)",
                dataset_names().join(", ")
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake(&'static str, &'static [&'static str]);

    impl DatasetSource for Fake {
        fn name(&self) -> &'static str {
            self.0
        }
        fn aliases(&self) -> &'static [&'static str] {
            self.1
        }
        fn description(&self) -> &'static str {
            "fake"
        }
        fn sample_shape(&self) -> Option<Vec<usize>> {
            Some(vec![1, 2, 2])
        }
        fn classes(&self) -> Option<usize> {
            Some(2)
        }
        fn load(&self, _: &Path, _: Split) -> Result<Dataset> {
            anyhow::bail!("fake")
        }
        fn fetch(&self, _: &Path) -> Result<Vec<PathBuf>> {
            anyhow::bail!("fake")
        }
    }

    static A: Fake = Fake("a", &["alpha"]);
    static B: Fake = Fake("b", &["ALPHA"]);
    static C: Fake = Fake("c", &[]);

    #[test]
    fn a_clash_of_names_or_aliases_is_an_error_naming_both() {
        let Err(err) = check([&A as &dyn DatasetSource, &B]) else {
            panic!("a clash was accepted")
        };
        assert!(
            err.contains("`a`") && err.contains("`b`") && err.contains("ALPHA"),
            "{err}"
        );
        let Ok(ok) = check([&C as &dyn DatasetSource, &A]) else {
            panic!("no clash, but an error")
        };
        assert_eq!(ok.iter().map(|s| s.name()).collect::<Vec<_>>(), ["a", "c"]);
    }

    #[test]
    fn the_built_in_datasets_are_registered_with_their_aliases() {
        assert_eq!(
            dataset_names(),
            ["cifar10", "cifar100", "fashion-mnist", "files", "mnist"]
        );
        assert_eq!(
            find_dataset("Fashion_MNIST").unwrap().name(),
            "fashion-mnist"
        );
        assert_eq!(find_dataset("cifar-100").unwrap().classes(), Some(100));
        assert_eq!(
            find_dataset("mnist").unwrap().sample_shape(),
            Some(vec![1, 28, 28])
        );
        let err = find_dataset("imagenet").err().expect("unknown").to_string();
        assert!(
            err.contains("imagenet") && err.contains("cifar10, cifar100"),
            "{err}"
        );
    }
}
