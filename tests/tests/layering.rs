//! The layering of the agent's and the controller's modules: their `crate::` and `super::`
//! imports form a DAG, and a few edges that would break the design are forbidden.
//!
//! A unit is a top-level module of a library crate (`src/x.rs` or `src/x/**`); `lib.rs` and
//! the binary's `main.rs` are not units. Every path `crate::x…` (also in `use crate::{x, y}`
//! groups) and `super::…` that leaves its unit is an edge, test code included; comments and
//! string literals are skipped. The layering itself is stated in ARCHITECTURE.md.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Unit → (unit it imports → first place it does, `file:line`).
type Graph = BTreeMap<String, BTreeMap<String, String>>;

/// An edge rule with the reason it exists.
enum Rule {
    /// `from` must not import any of these.
    Deny(
        &'static [&'static str],
        &'static [&'static str],
        &'static str,
    ),
    /// `from` may import only these.
    Only(&'static str, &'static [&'static str], &'static str),
}

const AGENT_RULES: &[Rule] = &[
    Rule::Deny(
        &["parse"],
        &["collect", "rules", "executor", "session", "probe"],
        "parsers are pure: text in, data out",
    ),
    Rule::Deny(
        &["rules"],
        &["collect", "executor", "session"],
        "rules judge facts; they read no files and change nothing",
    ),
    Rule::Deny(
        &["collect"],
        &["executor", "session"],
        "collect reads files and decides nothing",
    ),
    Rule::Deny(
        &["probe"],
        &["executor"],
        "probes only read; the executor is the one place that changes the node",
    ),
];

const CONTROLLER_RULES: &[Rule] = &[
    Rule::Deny(
        &["cli"],
        &[
            "orchestrate",
            "rollout",
            "shutdown",
            "store",
            "state",
            "api",
            "ingest",
            "refresh",
            "wire",
        ],
        "the CLI is a client of the operator API, not of the controller's internals",
    ),
    Rule::Deny(
        &["rollout", "shutdown", "refresh", "fleet"],
        &[
            "store",
            "state",
            "api",
            "orchestrate",
            "ingest",
            "cli",
            "serve",
        ],
        "machines and fleet rules are pure: no persistence, no transport",
    ),
    Rule::Only(
        "store",
        &["config", "paths"],
        "the store is the bottom layer: it knows the database, not its users",
    ),
    Rule::Deny(
        &["state", "ingest", "operators"],
        &["api", "orchestrate", "cli", "serve"],
        "the shared state is below the drivers and the APIs that use it",
    ),
    Rule::Only(
        "operation",
        &[],
        "the vocabulary every orchestration shares is a leaf",
    ),
    Rule::Only("clock", &[], "the clock is a leaf"),
    Rule::Deny(
        &["orchestrate"],
        &["api", "cli", "serve"],
        "the driver is called by the APIs, never the other way round",
    ),
];

#[test]
fn agent_modules_form_a_dag_without_forbidden_edges() {
    let problems = check(&workspace().join("agent/src"), AGENT_RULES);
    assert!(
        problems.is_empty(),
        "agent layering:\n{}",
        problems.join("\n")
    );
}

#[test]
fn controller_modules_form_a_dag_without_forbidden_edges() {
    let problems = check(&workspace().join("controller/src"), CONTROLLER_RULES);
    assert!(
        problems.is_empty(),
        "controller layering:\n{}",
        problems.join("\n")
    );
}

/// Only `store` names sled (so the database stays replaceable behind it).
#[test]
fn only_the_controllers_store_names_sled() {
    let src = workspace().join("controller/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    for f in files {
        let code = code_only(&std::fs::read_to_string(&f).unwrap());
        if module_path(&src, &f).first().map(String::as_str) != Some("store") {
            assert!(
                !code.contains("sled::") && !code.contains("use sled"),
                "{} names sled: only `store` may",
                f.display()
            );
        }
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every cycle and every broken rule of the crate under `src`, one line each.
fn check(src: &Path, rules: &[Rule]) -> Vec<String> {
    let graph = graph(src);
    let mut problems: Vec<String> = cycles(&graph)
        .iter()
        .map(|c| {
            let at: Vec<&str> = c.windows(2).map(|w| graph[&w[0]][&w[1]].as_str()).collect();
            format!("cycle {} (at {})", c.join(" -> "), at.join(", "))
        })
        .collect();
    for (from, targets) in &graph {
        for (to, at) in targets {
            for rule in rules {
                let reason = match rule {
                    Rule::Deny(f, t, why)
                        if f.contains(&from.as_str()) && t.contains(&to.as_str()) =>
                    {
                        why
                    }
                    Rule::Only(f, t, why) if f == from && !t.contains(&to.as_str()) => why,
                    _ => continue,
                };
                problems.push(format!("forbidden {from} -> {to} at {at}: {reason}"));
            }
        }
    }
    problems
}

/// The units of the crate under `src` and their edges.
fn graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let units: BTreeSet<String> = files
        .iter()
        .filter_map(|f| module_path(src, f).first().cloned())
        .collect();
    let mut g = Graph::new();
    for unit in &units {
        g.insert(unit.clone(), BTreeMap::new());
    }
    for file in &files {
        let path = module_path(src, file);
        let Some(unit) = path.first() else { continue };
        let text = std::fs::read_to_string(file).unwrap();
        let shown = file.strip_prefix(workspace()).unwrap_or(file);
        for (target, line) in references(&path, &code_only(&text)) {
            if units.contains(&target) && &target != unit {
                g.get_mut(unit)
                    .unwrap()
                    .entry(target)
                    .or_insert_with(|| format!("{}:{line}", shown.display()));
            }
        }
    }
    g
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file: `src/a/b.rs` → `[a, b]`, `src/a/mod.rs` → `[a]`; `lib.rs`
/// and `main.rs` (crate roots) → `[]`.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|l| l == "mod") || parts == ["lib"] || parts == ["main"] {
        parts.pop();
    }
    parts
}

/// `text` with comments, string and character literals blanked (newlines kept).
fn code_only(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |out: &mut String, s: &[char]| {
        out.extend(s.iter().map(|&ch| if ch == '\n' { '\n' } else { ' ' }));
    };
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let mut i = 0;
    while i < c.len() {
        let rest = &c[i..];
        let after_ident = i > 0 && ident(c[i - 1]);
        let end = if rest.starts_with(&['/', '/']) {
            rest.iter().position(|&ch| ch == '\n').unwrap_or(rest.len())
        } else if rest.starts_with(&['/', '*']) {
            let (mut depth, mut j) = (0usize, 0);
            while j < rest.len() {
                if rest[j..].starts_with(&['/', '*']) {
                    depth += 1;
                    j += 2;
                } else if rest[j..].starts_with(&['*', '/']) {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            j
        } else if let Some(n) = raw_string_len(rest).filter(|_| !after_ident) {
            n
        } else if rest[0] == '"' || (rest.starts_with(&['b', '"']) && !after_ident) {
            let mut j = if rest[0] == 'b' { 2 } else { 1 };
            while j < rest.len() && rest[j] != '"' {
                j += if rest[j] == '\\' { 2 } else { 1 };
            }
            (j + 1).min(rest.len())
        } else if rest[0] == '\'' && rest.get(1) == Some(&'\\') {
            rest.iter()
                .skip(2)
                .position(|&ch| ch == '\'')
                .map_or(1, |p| p + 3)
        } else if rest[0] == '\'' && rest.get(2) == Some(&'\'') {
            3
        } else {
            out.push(rest[0]);
            i += 1;
            continue;
        };
        blank(&mut out, &rest[..end]);
        i += end;
    }
    out
}

/// The length of a raw string literal (`r"…"`, `r#"…"#`, `br"…"`) at the start of `s`.
fn raw_string_len(s: &[char]) -> Option<usize> {
    let start = if s.starts_with(&['b', 'r']) {
        2
    } else if s.first() == Some(&'r') {
        1
    } else {
        return None;
    };
    let hashes = s[start..].iter().take_while(|&&ch| ch == '#').count();
    if s.get(start + hashes) != Some(&'"') {
        return None;
    }
    let body = start + hashes + 1;
    (body..s.len())
        .find(|&j| {
            s[j] == '"'
                && s[j + 1..]
                    .iter()
                    .take(hashes)
                    .filter(|&&ch| ch == '#')
                    .count()
                    == hashes
        })
        .map(|j| j + 1 + hashes)
}

/// Tokens of code: identifiers, `::`, and single punctuation characters, with their lines.
fn tokens(code: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let mut line = 1;
    let mut chars = code.chars().peekable();
    while let Some(ch) = chars.next() {
        if ch == '\n' {
            line += 1;
        } else if ch.is_alphabetic() || ch == '_' {
            let mut id = String::from(ch);
            while let Some(&n) = chars.peek().filter(|n| n.is_alphanumeric() || **n == '_') {
                id.push(n);
                chars.next();
            }
            out.push((id, line));
        } else if ch == ':' && chars.peek() == Some(&':') {
            chars.next();
            out.push(("::".into(), line));
        } else if !ch.is_whitespace() {
            out.push((ch.to_string(), line));
        }
    }
    out
}

/// The top-level modules that the code of the module at `path` refers to through `crate::`
/// or `super::`, with the line of each reference.
fn references(path: &[String], code: &str) -> Vec<(String, usize)> {
    let t = tokens(code);
    let tok = |i: usize| t.get(i).map_or("", |(s, _)| s.as_str());
    let mut out = Vec::new();
    // Inline modules (`mod tests { … }`) open at this brace depth.
    let mut inline: Vec<(String, i64)> = Vec::new();
    let mut depth: i64 = 0;
    let mut i = 0;
    while i < t.len() {
        let line = t[i].1;
        match tok(i) {
            "{" => depth += 1,
            "}" => {
                depth -= 1;
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
            }
            "mod" if tok(i + 2) == "{" => inline.push((tok(i + 1).to_owned(), depth)),
            "crate" if tok(i + 1) == "::" && (i == 0 || tok(i - 1) != "$") => {
                for m in first_segments(&t, i + 2) {
                    out.push((m, line));
                }
            }
            "super" if tok(i + 1) == "::" && (i == 0 || tok(i - 1) != "::") => {
                let mut here: Vec<String> = path.to_vec();
                here.extend(inline.iter().map(|(m, _)| m.clone()));
                let mut j = i;
                while tok(j) == "super" && tok(j + 1) == "::" {
                    here.pop();
                    j += 2;
                }
                match here.first() {
                    Some(unit) => out.push((unit.clone(), line)),
                    None => {
                        for m in first_segments(&t, j) {
                            out.push((m, line));
                        }
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// The first segment of the path at token `i`: one identifier, or for a `{…}` group the
/// first identifier of each item (`self` and `*` name no module).
fn first_segments(t: &[(String, usize)], i: usize) -> Vec<String> {
    let tok = |i: usize| t.get(i).map_or("", |(s, _)| s.as_str());
    let is_name = |s: &str| {
        s.chars()
            .next()
            .is_some_and(|c| c.is_alphabetic() || c == '_')
            && s != "self"
    };
    if tok(i) != "{" {
        return if is_name(tok(i)) {
            vec![tok(i).to_owned()]
        } else {
            Vec::new()
        };
    }
    let mut out = Vec::new();
    let (mut depth, mut item_start) = (0, true);
    for (s, _) in &t[i..] {
        match s.as_str() {
            "{" => {
                depth += 1;
                if depth > 1 {
                    item_start = false;
                }
                continue;
            }
            "}" => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            "," if depth == 1 => {
                item_start = true;
                continue;
            }
            s if item_start && depth == 1 && is_name(s) => out.push(s.to_owned()),
            _ => {}
        }
        item_start = false;
    }
    out
}

/// Every elementary cycle of `g`, each starting and ending at its smallest unit; sorted.
fn cycles(g: &Graph) -> Vec<Vec<String>> {
    fn walk(
        g: &Graph,
        start: &str,
        node: &str,
        stack: &mut Vec<String>,
        out: &mut Vec<Vec<String>>,
    ) {
        for next in g.get(node).into_iter().flat_map(|t| t.keys()) {
            if next == start {
                let mut c = stack.clone();
                c.push(start.to_owned());
                out.push(c);
            } else if next.as_str() > start && !stack.contains(next) {
                stack.push(next.clone());
                walk(g, start, next, stack, out);
                stack.pop();
            }
        }
    }
    let mut out = Vec::new();
    for start in g.keys() {
        walk(g, start, start, &mut vec![start.clone()], &mut out);
    }
    out
}

#[test]
fn the_cycle_finder_reports_each_cycle_once_with_its_path() {
    let edges = [
        ("a", "b"),
        ("b", "c"),
        ("c", "a"),
        ("b", "a"),
        ("c", "d"),
        ("d", "d"),
    ];
    let mut g = Graph::new();
    for (from, to) in edges {
        g.entry(from.into())
            .or_default()
            .insert(to.into(), "x.rs:1".into());
        g.entry(to.into()).or_default();
    }
    let found: Vec<String> = cycles(&g).iter().map(|c| c.join(" -> ")).collect();
    assert_eq!(found, ["a -> b -> a", "a -> b -> c -> a", "d -> d"]);
    g.get_mut("c").unwrap().remove("a");
    g.get_mut("b").unwrap().remove("a");
    g.get_mut("d").unwrap().remove("d");
    assert!(cycles(&g).is_empty());
}

#[test]
fn references_follow_crate_groups_super_and_inline_modules_but_not_comments() {
    let code = code_only(
        r#"
use crate::{collect::collect, parse::{kv, pve}, self as me};
use super::sibling; // crate::commented
fn f() { let s = "crate::in_string"; let c = '{'; crate::probe::x(); }
mod tests { use super::*; use super::super::rules; }
"#,
    );
    let refs = |path: &[&str]| -> Vec<String> {
        let p: Vec<String> = path.iter().map(|s| s.to_string()).collect();
        references(&p, &code).into_iter().map(|(m, _)| m).collect()
    };
    // In src/a.rs, `super::` is the crate root; in its `mod tests`, `super::` is `a`.
    assert_eq!(
        refs(&["a"]),
        ["collect", "parse", "sibling", "probe", "a", "rules"]
    );
    // In src/a/b.rs, `super::` is `a`, and `super::super::` the crate root.
    assert_eq!(
        refs(&["a", "b"]),
        ["collect", "parse", "a", "probe", "a", "a"]
    );
}
