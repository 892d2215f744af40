//! The plugin registry, built on `inventory`.
//!
//! Every plugin registers itself next to its definition with [`crate::register_plugin!`]. One
//! entry point, [`Registry::create`], builds a plugin from its name and its parameters; an
//! unknown name fails with the list of known names of that kind. Config files name plugins
//! with `type = "name"`; the same names are the `typetag` names used to serialize plugins, and a
//! test checks that both agree for every entry.

use crate::{
    config::{MaskingConfig, MaskingTables},
    init::Initializer,
    loss::Loss,
    mask::MaskFn,
    model::ModelSpec,
    threshold::Threshold,
    Result,
};
use anyhow::Context;
use serde::{Deserialize, Deserializer};
use std::{fmt, sync::Arc};

/// The kinds of plugin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PluginKind {
    /// A mask function (scores -> mask values).
    Mask,
    /// A threshold rule.
    Threshold,
    /// A weight or score initializer.
    Init,
    /// A model architecture.
    Model,
    /// A training loss.
    Loss,
}

impl PluginKind {
    /// All kinds, in listing order.
    pub const ALL: [PluginKind; 5] = [
        Self::Mask,
        Self::Threshold,
        Self::Init,
        Self::Model,
        Self::Loss,
    ];

    /// Lower-case name of the kind.
    pub fn name(self) -> &'static str {
        match self {
            Self::Mask => "mask",
            Self::Threshold => "threshold",
            Self::Init => "init",
            Self::Model => "model",
            Self::Loss => "loss",
        }
    }
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A constructed plugin of any kind.
#[derive(Debug, Clone)]
pub enum Plugin {
    /// A mask function.
    Mask(Arc<dyn MaskFn>),
    /// A threshold rule.
    Threshold(Arc<dyn Threshold>),
    /// An initializer.
    Init(Arc<dyn Initializer>),
    /// A model specification.
    Model(Arc<dyn ModelSpec>),
    /// A loss.
    Loss(Arc<dyn Loss>),
}

/// One registered plugin.
#[derive(Debug)]
pub struct PluginEntry {
    /// Its kind.
    pub kind: PluginKind,
    /// Its name in config files (also its `typetag` name).
    pub name: &'static str,
    /// One line saying what it is (and which equation of the paper it implements).
    pub description: &'static str,
    /// Parameters (TOML, without `type`) that build a representative instance: the conformance
    /// checks (`supermask_train::conformance`) and the registry tests build every plugin with them.
    /// Empty when the defaults do.
    pub example: &'static str,
    /// Builds it from its parameters (the config table without the `type` key).
    pub create: fn(toml::Table) -> Result<Plugin>,
}

impl PluginEntry {
    /// [`PluginEntry::example`] parsed.
    pub fn example_params(&self) -> Result<toml::Table> {
        toml::from_str(self.example).map_err(|e| {
            anyhow::anyhow!(
                "{} `{}`: its registered example parameters are not TOML: {e}",
                self.kind,
                self.name
            )
        })
    }

    /// Builds the plugin with its example parameters.
    pub fn create_example(&self) -> Result<Plugin> {
        (self.create)(self.example_params()?)
    }
}

inventory::collect!(PluginEntry);

/// Registers a plugin type under a kind and a name. The type must implement `Deserialize`
/// and the kind's trait, with the same name in its `#[typetag::serde(name = ...)]`. An optional
/// last argument, `example = "TOML"`, gives parameters that build a representative instance
/// (needed when the type has required parameters).
///
/// ```ignore
/// supermask_core::register_plugin!(Mask, "signed", SignedMask, "signed mask {-1,0,1}, eq. 1");
/// supermask_core::register_plugin!(Threshold, "max-fraction", MaxFraction, "...",
///     example = "fraction = 0.4");
/// ```
#[macro_export]
macro_rules! register_plugin {
    ($kind:ident, $name:literal, $ty:ty, $desc:expr) => {
        $crate::register_plugin!($kind, $name, $ty, $desc, example = "");
    };
    ($kind:ident, $name:literal, $ty:ty, $desc:expr, example = $example:literal) => {
        $crate::inventory::submit! {
            $crate::registry::PluginEntry {
                kind: $crate::registry::PluginKind::$kind,
                name: $name,
                description: $desc,
                example: $example,
                create: |params| {
                    let value: $ty = $crate::toml::Value::Table(params).try_into().map_err(|e| {
                        $crate::anyhow::anyhow!("invalid parameters for {} `{}`: {}",
                            stringify!($kind).to_lowercase(), $name, e)
                    })?;
                    Ok($crate::registry::Plugin::$kind(::std::sync::Arc::new(value)))
                },
            }
        }
    };
}

/// Read access to all registered plugins.
pub struct Registry;

/// The registered entries, sorted by kind then name; an error naming every kind and name that
/// is registered twice (two crates, or one crate twice, claiming a name). Checked once, at the
/// registry's first use; registrations cannot change after the program starts.
pub fn checked_entries(
    entries: impl IntoIterator<Item = &'static PluginEntry>,
) -> std::result::Result<Vec<&'static PluginEntry>, String> {
    let mut v: Vec<_> = entries.into_iter().collect();
    v.sort_by_key(|e| (e.kind, e.name));
    let dups: Vec<String> = v
        .windows(2)
        .filter(|w| (w[0].kind, w[0].name) == (w[1].kind, w[1].name))
        .map(|w| format!("{} `{}`", w[0].kind, w[0].name))
        .collect();
    if dups.is_empty() {
        Ok(v)
    } else {
        let mut dups = dups;
        dups.dedup();
        Err(format!(
            "plugins registered more than once: {}; every (kind, name) must be unique \
             (rename one of them; `supermask plugins` lists each name with its description)",
            dups.join(", ")
        ))
    }
}

static ENTRIES: std::sync::OnceLock<std::result::Result<Vec<&'static PluginEntry>, String>> =
    std::sync::OnceLock::new();

impl Registry {
    /// All entries, sorted by kind then name; an error when a (kind, name) is registered twice
    /// ([`checked_entries`]).
    pub fn try_entries() -> Result<&'static [&'static PluginEntry]> {
        ENTRIES
            .get_or_init(|| checked_entries(inventory::iter::<PluginEntry>))
            .as_deref()
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// All entries, sorted by kind then name.
    ///
    /// # Panics
    /// When a (kind, name) is registered twice; [`Registry::try_entries`] returns that as an
    /// error, and [`Registry::get`] and [`Registry::create`] fail with it.
    pub fn entries() -> Vec<&'static PluginEntry> {
        match Self::try_entries() {
            Ok(v) => v.to_vec(),
            Err(e) => panic!("{e:#}"),
        }
    }

    /// Sorted names of one kind (empty when the registry is invalid; see
    /// [`Registry::try_entries`]).
    pub fn names(kind: PluginKind) -> Vec<&'static str> {
        Self::try_entries()
            .unwrap_or_default()
            .iter()
            .filter(|e| e.kind == kind)
            .map(|e| e.name)
            .collect()
    }

    /// The entry of `kind` called `name`, or an error listing the known names.
    pub fn get(kind: PluginKind, name: &str) -> Result<&'static PluginEntry> {
        Self::try_entries()?
            .iter()
            .copied()
            .find(|e| e.kind == kind && e.name == name)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown {kind} plugin `{name}`; known {kind} plugins: {} (a plugin from \
                     another crate exists only when that crate is linked into the binary: \
                     define it in the binary's crate or call its `link()`)",
                    Self::names(kind).join(", ")
                )
            })
    }

    /// Builds the plugin `kind`/`name` from its parameters.
    pub fn create(kind: PluginKind, name: &str, params: toml::Table) -> Result<Plugin> {
        (Self::get(kind, name)?.create)(params)
    }

    /// Builds a plugin from a config table holding `type = "name"` and its parameters.
    pub fn create_from_table(kind: PluginKind, mut table: toml::Table) -> Result<Plugin> {
        let name = match table.remove("type") {
            Some(toml::Value::String(s)) => s,
            Some(other) => anyhow::bail!("{kind} `type` must be a string, got {other}"),
            None => anyhow::bail!(
                "{kind} table has no `type`; known {kind} plugins: {}",
                Self::names(kind).join(", ")
            ),
        };
        Self::create(kind, &name, table)
    }
}

macro_rules! typed_constructor {
    ($fn_name:ident, $de_name:ident, $kind:ident, $tr:ty) => {
        /// Builds a plugin of this kind from a config table (`type` plus parameters).
        pub fn $fn_name(table: toml::Table) -> Result<Arc<$tr>> {
            match Registry::create_from_table(PluginKind::$kind, table)? {
                Plugin::$kind(p) => Ok(p),
                other => {
                    anyhow::bail!("registry returned {other:?} for kind {}", PluginKind::$kind)
                }
            }
        }

        /// Serde `deserialize_with` helper: reads a table and builds it through the registry,
        /// so config errors name the plugin and list the known ones.
        pub fn $de_name<'de, D: Deserializer<'de>>(
            d: D,
        ) -> std::result::Result<Arc<$tr>, D::Error> {
            let table = toml::Table::deserialize(d)?;
            $fn_name(table).map_err(serde::de::Error::custom)
        }
    };
}

typed_constructor!(mask_from_table, deserialize_mask, Mask, dyn MaskFn);
typed_constructor!(
    threshold_from_table,
    deserialize_threshold,
    Threshold,
    dyn Threshold
);
typed_constructor!(init_from_table, deserialize_init, Init, dyn Initializer);
typed_constructor!(model_from_table, deserialize_model, Model, dyn ModelSpec);
typed_constructor!(loss_from_table, deserialize_loss, Loss, dyn Loss);

/// Builds the masking config's plugins through the registry; an error names the key
/// (`masking.mask`, ...).
impl TryFrom<MaskingTables> for MaskingConfig {
    type Error = String;

    fn try_from(t: MaskingTables) -> std::result::Result<Self, String> {
        let built = || -> Result<MaskingConfig> {
            Ok(match t {
                MaskingTables::Masked {
                    mask,
                    threshold,
                    weight_init,
                    score_init,
                } => MaskingConfig::Masked {
                    mask: mask_from_table(mask).context("masking.mask")?,
                    threshold: threshold_from_table(threshold).context("masking.threshold")?,
                    weight_init: init_from_table(weight_init).context("masking.weight_init")?,
                    score_init: init_from_table(score_init).context("masking.score_init")?,
                },
                MaskingTables::Dense { weight_init } => MaskingConfig::Dense {
                    weight_init: init_from_table(weight_init).context("masking.weight_init")?,
                },
            })
        };
        built().map_err(|e| format!("{e:#}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: PluginKind, name: &'static str) -> &'static PluginEntry {
        Box::leak(Box::new(PluginEntry {
            kind,
            name,
            description: "test",
            example: "",
            create: |_| anyhow::bail!("not built in this test"),
        }))
    }

    /// Two registrations of one (kind, name) are an error that names it; the same name under
    /// two kinds is allowed.
    #[test]
    fn duplicate_names_are_an_error() {
        let ok = checked_entries([
            entry(PluginKind::Mask, "a"),
            entry(PluginKind::Threshold, "a"),
        ])
        .unwrap();
        assert_eq!(ok.len(), 2);
        let err = checked_entries([
            entry(PluginKind::Mask, "b"),
            entry(PluginKind::Mask, "a"),
            entry(PluginKind::Mask, "b"),
            entry(PluginKind::Mask, "b"),
        ])
        .unwrap_err();
        assert!(
            err.contains("mask `b`") && !err.contains("mask `a`"),
            "{err}"
        );
        assert_eq!(err.matches("mask `b`").count(), 1, "{err}");
    }

    #[test]
    fn unknown_names_mention_linking() {
        let err = Registry::get(PluginKind::Mask, "no-such-mask").unwrap_err();
        assert!(format!("{err}").contains("link()"), "{err}");
    }
}
