//! Integration and property tests of supermask live in `tests/`; this library only holds
//! shared helpers for them.

use supermask_core::{registry::Plugin, PluginKind, Registry};

/// Links the plugin crates and builds every registered plugin with its registered example
/// parameters ([`supermask_core::PluginEntry::example`]).
pub fn all_plugins() -> Vec<(PluginKind, &'static str, Plugin)> {
    supermask_plugins::link();
    supermask_models::link();
    Registry::entries()
        .into_iter()
        .map(|e| {
            let p = e
                .create_example()
                .unwrap_or_else(|err| panic!("{} {}: {err:#}", e.kind, e.name));
            (e.kind, e.name, p)
        })
        .collect()
}

/// A TOML table from its text (panics on a syntax error: test input).
pub fn table(s: &str) -> toml::Table {
    toml::from_str(s).unwrap()
}

/// The paper's signed mask with a fixed threshold, ELUS weights (signed constant) and
/// Xavier-uniform scores.
pub fn signed_masking() -> supermask_core::MaskingConfig {
    use supermask_core::registry::{init_from_table, mask_from_table, threshold_from_table};
    supermask_core::MaskingConfig::Masked {
        mask: mask_from_table(table("type = \"signed\"")).unwrap(),
        threshold: threshold_from_table(table("type = \"fixed\"")).unwrap(),
        weight_init: init_from_table(table("type = \"elus\"\ndist = \"signed-constant\"")).unwrap(),
        score_init: init_from_table(table("type = \"xavier-uniform\"")).unwrap(),
    }
}

/// Dense baseline layers with He weights.
pub fn dense_masking() -> supermask_core::MaskingConfig {
    supermask_core::MaskingConfig::Dense {
        weight_init: supermask_core::registry::init_from_table(table("type = \"he\"")).unwrap(),
    }
}
