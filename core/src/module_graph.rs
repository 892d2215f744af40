//! A test that keeps the crate's modules acyclic: plain config and context types live in
//! [`crate::config`], so behavioural modules (layers, batch norm, models, ops, registry) only
//! depend downwards. It reads the sources, collects for each top-level module the other
//! top-level modules it names (`crate::x` paths and `use crate::{x, ...}` items, outside
//! comments and test modules) and fails with the cycle it finds.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

/// The source without `//` comments and without everything from the first `#[cfg(test)]`
/// (test modules sit at the end of a file and may use anything).
fn code(src: &str) -> String {
    let src = src.split("#[cfg(test)]").next().unwrap_or("");
    src.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first path segment of every item of the `use crate::{...}` groups and of every
/// `crate::x` path in `code`.
fn named_modules(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.trim()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level items of the brace group.
            let (mut depth, mut item) = (0usize, String::new());
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.insert(ident(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 {
                    item.push(c);
                }
            }
            out.insert(ident(&item));
        } else {
            out.insert(ident(rest));
        }
    }
    out
}

fn module_graph(src_dir: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    let mut stack = vec![src_dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).expect("read src dir") {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(src_dir).expect("under src");
        let first = rel.components().next().expect("a component");
        let top = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if top == "lib" || top == "module_graph" {
            continue;
        }
        let names = named_modules(&code(&fs::read_to_string(&f).expect("read source")));
        graph.entry(top.clone()).or_default().extend(
            names.into_iter().filter(|n| {
                *n != top && !n.is_empty() && n.starts_with(|c: char| c.is_lowercase())
            }),
        );
    }
    // Keep only edges to modules of this crate (drops macro and item names such as `anyhow`).
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for deps in graph.values_mut() {
        deps.retain(|d| modules.contains(d));
    }
    graph
}

/// A cycle through `start`, as a path of module names, if there is one.
fn cycle_from(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    let mut stack = vec![vec![start.to_string()]];
    let mut seen = BTreeSet::new();
    while let Some(path) = stack.pop() {
        let last = path.last().expect("non-empty path");
        for next in graph.get(last).into_iter().flatten() {
            if next == start {
                let mut p = path.clone();
                p.push(next.clone());
                return Some(p);
            }
            if seen.insert(next.clone()) {
                let mut p = path.clone();
                p.push(next.clone());
                stack.push(p);
            }
        }
    }
    None
}

#[test]
fn the_parser_sees_grouped_and_plain_paths() {
    let src =
        "use crate::{config::{A, B}, ops::{self, C}, Result};\nfn f() { crate::layer::g() }\n\
               // crate::norm in a comment\n#[cfg(test)]\nmod tests { use crate::model; }";
    let names = named_modules(&code(src));
    let want: BTreeSet<String> = ["config", "ops", "Result", "layer"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(names, want);
}

#[test]
fn the_cycle_finder_finds_a_planted_cycle() {
    let g: BTreeMap<String, BTreeSet<String>> = [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), BTreeSet::from([v.to_string()])))
        .collect();
    assert_eq!(cycle_from(&g, "a").unwrap(), ["a", "b", "c", "a"]);
    assert!(cycle_from(&g, "d").is_none());
}

#[test]
fn core_modules_form_no_cycle() {
    let graph = module_graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(
        graph.contains_key("layer") && graph["layer"].contains("config"),
        "the graph misses known edges: {graph:?}"
    );
    for m in graph.keys() {
        if let Some(c) = cycle_from(&graph, m) {
            panic!("module cycle in supermask-core: {}", c.join(" -> "));
        }
    }
}
