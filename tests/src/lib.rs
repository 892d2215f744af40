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
