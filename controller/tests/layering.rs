//! The controller's modules form layers: the `crate::` references between its top-level
//! modules (comments aside) have no cycle, the shared state knows neither the APIs nor the
//! drivers, the drivers do not reach into the APIs, only `store` names sled, and the
//! store's journal and blob files import nothing from `store` itself.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// The file's code without `//` comments (doc links are not dependencies).
fn code(path: &Path) -> String {
    std::fs::read_to_string(path)
        .expect("read file")
        .lines()
        .map(|l| l.split_once("//").map_or(l, |(code, _)| code))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level module a file under `src/` belongs to (`api/agent.rs` → `api`).
fn module_of(path: &Path) -> String {
    let rel = path.strip_prefix(src()).expect("under src");
    let first = rel
        .components()
        .next()
        .expect("a component")
        .as_os_str()
        .to_string_lossy()
        .to_string();
    first.trim_end_matches(".rs").to_string()
}

/// Top-level module → the top-level modules its code names as `crate::<module>`.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in files(&src()) {
        let from = module_of(&path);
        if from == "main" {
            continue;
        }
        let text = code(&path);
        let targets = g.entry(from.clone()).or_default();
        for (i, _) in text.match_indices("crate::") {
            // `fleetward_controller::crate::` does not exist; skip `$crate::` in macros.
            if text[..i].ends_with('$') {
                continue;
            }
            let name: String = text[i + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name != from {
                targets.insert(name);
            }
        }
    }
    g
}

fn cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|s| s == n) {
            let mut c = stack[at..].to_vec();
            c.push(n.to_string());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, g, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for n in g.keys() {
        if let Some(c) = visit(n, g, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn modules_form_a_dag() {
    let g = graph();
    assert!(g.contains_key("state") && g.contains_key("api"), "{g:?}");
    if let Some(c) = cycle(&g) {
        panic!("import cycle: {}", c.join(" → "));
    }
}

#[test]
fn forbidden_edges() {
    let g = graph();
    let forbidden: &[(&str, &[&str])] = &[
        // The state knows no API, no ingestion path and no driver.
        ("state", &["api", "ingest", "orchestrate", "serve", "cli"]),
        ("ingest", &["api", "orchestrate", "serve", "cli"]),
        // The driver uses the state, never the APIs.
        ("orchestrate", &["api", "ingest", "serve", "cli"]),
        // The pure machines and fleet rules do no I/O: no state, store, API or driver.
        (
            "rollout",
            &[
                "state",
                "store",
                "api",
                "ingest",
                "orchestrate",
                "serve",
                "cli",
            ],
        ),
        (
            "shutdown",
            &[
                "state",
                "store",
                "api",
                "ingest",
                "orchestrate",
                "serve",
                "cli",
            ],
        ),
        (
            "refresh",
            &[
                "state",
                "store",
                "api",
                "ingest",
                "orchestrate",
                "serve",
                "cli",
            ],
        ),
        (
            "fleet",
            &[
                "state",
                "store",
                "api",
                "ingest",
                "orchestrate",
                "serve",
                "cli",
            ],
        ),
        // The CLI is a client of the API: no internals.
        (
            "cli",
            &[
                "state",
                "store",
                "api",
                "ingest",
                "orchestrate",
                "rollout",
                "shutdown",
                "refresh",
                "wire",
                "serve",
            ],
        ),
        // The leaves.
        (
            "operation",
            &[
                "rollout",
                "shutdown",
                "refresh",
                "orchestrate",
                "state",
                "store",
            ],
        ),
        ("clock", &["state", "api", "store"]),
        ("store", &["state", "api", "ingest", "serve", "orchestrate"]),
    ];
    for (from, tos) in forbidden {
        let edges = g.get(*from).cloned().unwrap_or_default();
        for to in *tos {
            assert!(!edges.contains(*to), "{from} must not import {to}");
        }
    }
}

#[test]
fn only_the_store_names_sled_and_its_parts_stay_below_it() {
    for path in files(&src()) {
        let text = code(&path);
        if module_of(&path) != "store" {
            assert!(
                !text.contains("sled::") && !text.contains("use sled"),
                "{} names sled: only `store` may",
                path.display()
            );
        }
    }
    for part in ["journal.rs", "blobs.rs"] {
        let text = code(&src().join("store").join(part));
        assert!(
            !text.contains("crate::"),
            "store/{part} imports from the crate"
        );
        for line in text.lines().filter(|l| l.contains("super::")) {
            assert!(
                line.contains("super::blobs::") || line.trim_start().starts_with("use super::*"),
                "store/{part} reaches into `store`: {line}"
            );
        }
    }
}
