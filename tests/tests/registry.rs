//! Registry tests: names unique per kind, every name round-trips through a TOML config,
//! unknown names list the known ones.

use std::collections::HashSet;
use supermask_core::{registry::Plugin, PluginKind, Registry};
use supermask_tests::all_plugins;

fn to_toml(p: &Plugin) -> String {
    match p {
        Plugin::Mask(x) => toml::to_string(x.as_ref()),
        Plugin::Threshold(x) => toml::to_string(x.as_ref()),
        Plugin::Init(x) => toml::to_string(x.as_ref()),
        Plugin::Model(x) => toml::to_string(x.as_ref()),
        Plugin::Loss(x) => toml::to_string(x.as_ref()),
    }
    .unwrap()
}

#[test]
fn names_are_unique_per_kind() {
    all_plugins();
    let mut seen = HashSet::new();
    for e in Registry::entries() {
        assert!(
            seen.insert((e.kind, e.name)),
            "duplicate {} plugin `{}`",
            e.kind,
            e.name
        );
        assert!(
            !e.description.is_empty(),
            "{} `{}` has no description",
            e.kind,
            e.name
        );
    }
}

#[test]
fn expected_plugins_are_registered() {
    all_plugins();
    let want = [
        (PluginKind::Mask, vec!["bernoulli", "binary", "signed"]),
        (
            PluginKind::Threshold,
            vec!["adaptive", "fixed", "initial-rate", "max-fraction"],
        ),
        (
            PluginKind::Loss,
            vec!["clipped-cross-entropy", "cross-entropy"],
        ),
        (
            PluginKind::Init,
            vec![
                "elu",
                "elus",
                "elus-uniform",
                "he",
                "xavier",
                "xavier-uniform",
            ],
        ),
    ];
    for (kind, names) in want {
        let got = Registry::names(kind);
        for n in names {
            assert!(got.contains(&n), "{kind} `{n}` missing from {got:?}");
        }
    }
    assert!(Registry::names(PluginKind::Model).contains(&"fcn"));
}

/// Build -> serialize (typetag) -> parse through the registry -> serialize again gives the
/// same TOML, and the written `type` is the registered name.
#[test]
fn every_plugin_round_trips_through_toml() {
    let all = all_plugins();
    assert!(all.len() >= 13);
    for (kind, name, plugin) in all {
        let text = to_toml(&plugin);
        let table: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(
            table.get("type").and_then(|v| v.as_str()),
            Some(name),
            "{kind} {name}: {text}"
        );
        let again = Registry::create_from_table(kind, table).unwrap();
        assert_eq!(to_toml(&again), text, "{kind} {name}");
    }
}

#[test]
fn unknown_name_lists_known_ones() {
    all_plugins();
    let err = Registry::create(PluginKind::Mask, "ternary", toml::Table::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown mask plugin `ternary`"), "{err}");
    assert!(err.contains("bernoulli, binary, signed"), "{err}");
}

#[test]
fn bad_parameters_name_the_plugin() {
    all_plugins();
    let params: toml::Table = toml::from_str("tau_n = \"low\"").unwrap();
    let err = Registry::create(PluginKind::Threshold, "fixed", params)
        .unwrap_err()
        .to_string();
    assert!(err.contains("threshold `fixed`"), "{err}");
}
