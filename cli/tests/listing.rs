//! End-to-end tests of the `supermask` binary's listings: plugins, presets, models.

mod common;

use common::*;
use std::path::Path;
use supermask_train::config::RunConfig;

#[test]
fn plugins_lists_every_kind_with_descriptions() {
    let o = ok(&["plugins"]);
    let text = String::from_utf8_lossy(&o.stdout);
    for k in ["mask:", "threshold:", "init:", "model:", "loss:"] {
        assert!(text.contains(k), "{text}");
    }
    for n in [
        "signed",
        "binary",
        "bernoulli",
        "fixed",
        "initial-rate",
        "adaptive",
        "he",
        "xavier",
        "elus",
        "elu",
        "xavier-uniform",
        "elus-uniform",
        "max-fraction",
        "cross-entropy",
        "clipped-cross-entropy",
        "fcn",
    ] {
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with(&format!("{n} "))),
            "{n} missing: {text}"
        );
    }
}

#[test]
fn every_preset_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/paper");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "toml") {
            RunConfig::load(Some(&p), &[]).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
            n += 1;
        }
    }
    assert!(n >= 6, "the six Table 1 presets");
}

/// Every corrected Conv/ResNet preset names, in its header, the `--set` overrides that select
/// the first (diverging) recipe; those overrides apply and give that recipe: a global
/// `initial-rate` threshold and the loss on logits.
#[test]
fn every_corrected_preset_can_select_the_first_recipe() {
    supermask_train::link_plugins();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/paper");
    let marker = "# The first recipe (diverges on real images): ";
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        let Some(line) = text.lines().find_map(|l| l.strip_prefix(marker)) else {
            continue;
        };
        // `--set 'k=v' --set k=v ...`, single-quoted where the value has spaces.
        let sets: Vec<String> = line
            .split("--set ")
            .map(|x| x.trim().trim_matches('\'').to_string())
            .filter(|x| !x.is_empty())
            .collect();
        let cfg = RunConfig::load(Some(&p), &sets)
            .unwrap_or_else(|e| panic!("{}: {sets:?}: {e:#}", p.display()));
        let toml = cfg.to_toml().unwrap();
        assert!(
            toml.contains("type = \"cross-entropy\""),
            "{}: {toml}",
            p.display()
        );
        if cfg.masking.threshold().is_some() {
            assert!(toml.contains("initial-rate"), "{}", p.display());
        }
        n += 1;
    }
    assert!(
        n >= 19,
        "{n} signed presets carry the first recipe's overrides"
    );
}

/// `models --config F --set ...` counts the configured variant on its dataset's input:
/// ResNet20 at width 2 on CIFAR-10 has 967w^2 + 27w + 4w*classes weights with w = 32, i.e.
/// 992,352 (REPRODUCTION-NOTES; the paper's Table 4 x2 row), and on Fashion-MNIST's 1x28x28
/// input the stem conv has 9w instead of 27w weights: 992,352 - 18*32 = 991,776.
#[test]
fn models_counts_a_configured_variant() {
    let cfg = preset("table4-resnet20-x1-signed-elus");
    for (dataset, input, count) in [
        ("cifar10", "3x32x32", "992352"),
        ("fashion-mnist", "1x28x28", "991776"),
    ] {
        let set = format!("data.dataset={dataset}");
        let o = ok(&[
            "models",
            "--config",
            s(&cfg),
            "--set",
            "model.width=2",
            "--set",
            &set,
        ]);
        let text = String::from_utf8_lossy(&o.stdout);
        let rows: Vec<Vec<&str>> = text
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(rows.len(), 1, "one row: {text}");
        assert_eq!(rows[0][..4], ["resnet20", input, count, "10"], "{text}");
    }
}

#[test]
fn models_lists_every_model_with_its_weight_count() {
    let o = ok(&["models"]);
    let text = String::from_utf8_lossy(&o.stdout);
    // Table 7 and REPRODUCTION-NOTES at the paper's input shapes; resnet110 is the regular
    // 18-block net.
    for (name, input, count) in [
        ("fcn", "784", "266200"),
        ("conv2", "3x32x32", "4300992"),
        ("conv4", "3x32x32", "2425024"),
        ("conv6", "3x32x32", "2261184"),
        ("conv8", "3x32x32", "5275840"),
        ("resnet20", "3x32x32", "248624"),
        ("resnet56", "3x32x32", "834992"),
        ("resnet110", "3x32x32", "1705904"),
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name}: {text}"));
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[1..3], [input, count], "{line}");
    }
}
