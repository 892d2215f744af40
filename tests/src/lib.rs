//! Integration and property tests of supermask live in `tests/`; this library only holds
//! shared helpers for them.

use supermask_core::{registry::Plugin, PluginKind, Registry};

/// Parameters to build each registered plugin with when its defaults are not enough.
/// A plugin that needs parameters and is missing here fails the registry tests.
pub fn example_params(kind: PluginKind, name: &str) -> toml::Table {
    let text = match (kind, name) {
        (PluginKind::Threshold, "initial-rate") => "rate = 0.063",
        (PluginKind::Threshold, "adaptive") => "fraction = 0.1",
        (PluginKind::Threshold, "max-fraction") => "fraction = 0.4",
        _ => "",
    };
    toml::from_str(text).expect("valid example params")
}

/// Links the plugin crates and builds every registered plugin with [`example_params`].
pub fn all_plugins() -> Vec<(PluginKind, &'static str, Plugin)> {
    supermask_plugins::link();
    supermask_models::link();
    Registry::entries()
        .into_iter()
        .map(|e| {
            let p = Registry::create(e.kind, e.name, example_params(e.kind, e.name))
                .unwrap_or_else(|err| panic!("{} {}: {err:#}", e.kind, e.name));
            (e.kind, e.name, p)
        })
        .collect()
}
