//! The modules' dependencies point one way: no cycle between top-level modules, the pure
//! leaves (`billing`, `domain`) do no IO and import nothing above them, and `store` is only the
//! ClickHouse adapter. Read from the sources' `crate::` paths.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module of each file under `src/`, and the top-level modules it names.
fn dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let relative = path.strip_prefix(&src).unwrap();
            let first = relative.components().next().unwrap();
            let module = first
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_owned();
            if module == "lib" || module == "main" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let used = graph.entry(module.clone()).or_default();
            for name in crate_paths(&text) {
                if name != module {
                    used.insert(name);
                }
            }
        }
    }
    graph
}

/// The first segment of every `crate::` path in `text`, grouped imports included.
fn crate_paths(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        let segment = |s: &str| {
            s.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
        };
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name = segment(item.trim());
                if !name.is_empty() {
                    names.insert(name);
                }
            }
        } else {
            let name = segment(rest);
            if !name.is_empty() {
                names.insert(name);
            }
        }
    }
    names
}

fn reaches(graph: &BTreeMap<String, BTreeSet<String>>, from: &str, to: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut stack: Vec<&str> = graph
        .get(from)
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect();
    while let Some(module) = stack.pop() {
        if module == to {
            return true;
        }
        if seen.insert(module) {
            stack.extend(graph.get(module).into_iter().flatten().map(String::as_str));
        }
    }
    false
}

#[test]
fn no_module_depends_on_itself_through_others() {
    let graph = dependencies();
    let cycles: Vec<&String> = graph.keys().filter(|m| reaches(&graph, m, m)).collect();
    assert!(
        cycles.is_empty(),
        "modules in a cycle: {cycles:?}\n{graph:#?}"
    );
}

#[test]
fn the_leaves_and_the_store_import_nothing_above_them() {
    let graph = dependencies();
    let allowed: [(&str, &[&str]); 3] = [
        ("billing", &[]),
        ("domain", &["billing"]),
        ("store", &["config", "domain"]),
    ];
    for (module, may_use) in allowed {
        let used = &graph[module];
        let beyond: Vec<&String> = used
            .iter()
            .filter(|u| !may_use.contains(&u.as_str()))
            .collect();
        assert!(beyond.is_empty(), "{module} uses {beyond:?}");
    }
}

#[test]
fn the_graph_is_read_from_real_imports() {
    // A check that reads nothing would pass anything.
    let graph = dependencies();
    assert!(graph["http"].contains("readmodel"), "{graph:#?}");
    assert!(graph["readmodel"].contains("store"), "{graph:#?}");
    assert!(crate_paths("use crate::{a::B, c};\nx = crate::d::e();").len() == 3);
}
