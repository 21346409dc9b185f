//! `drift.*`: nodes compared with each other, key by key of their flattened facts.
//!
//! - Three or more nodes: per key, the value most nodes hold is the reference; every node
//!   holding another value is an outlier. Each outlier gets one finding per drift code,
//!   naming what differs and which nodes hold the majority.
//! - Two nodes, or a tie for the most common value: no side is picked; every node gets a
//!   finding naming the values and who holds them.
//! - One node: nothing to compare.
//!
//! Which keys count ([`rule_for`]): `drift.apt` compares the *enabled* repository set only
//! (not file names or disabled references — `policy.apt-files` covers those); `drift.dns`
//! the nameservers and search domains of resolv.conf and of the interfaces file;
//! `drift.boot` firmware mode, Secure Boot *state* (not Setup Mode, a documented per-node
//! fact with its own agent check), which boot-loader packages are installed (not their
//! versions), the kernel hook's owner and whether ESP sync is configured; `drift.kernel`
//! the running kernel; `drift.packages` the `pve-manager`/`proxmox-ve` versions.

use super::normalize::flatten;
use super::{name_list, sort_findings, FleetFinding, NodeView};
use fleetward_proto::{Finding, Severity};
use std::collections::{BTreeMap, BTreeSet};

/// How a key's values are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compare {
    /// The value itself.
    Value,
    /// Only whether the key exists (a repository enabled, a package installed).
    Presence,
}

/// A drift rule: keys starting with `prefix` belong to `code`.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub prefix: &'static str,
    pub code: &'static str,
    pub compare: Compare,
    /// How the key reads in a message (item keys append their item).
    pub label: &'static str,
}

const RULES: &[Rule] = &[
    rule("apt.repo[", "drift.apt", Compare::Presence, "repo "),
    rule(
        "dns.nameservers",
        "drift.dns",
        Compare::Value,
        "nameservers",
    ),
    rule("dns.search", "drift.dns", Compare::Value, "search"),
    rule(
        "dns.interfaces.nameservers",
        "drift.dns",
        Compare::Value,
        "interfaces dns-nameservers",
    ),
    rule(
        "dns.interfaces.search",
        "drift.dns",
        Compare::Value,
        "interfaces dns-search",
    ),
    rule("boot.firmware", "drift.boot", Compare::Value, "firmware"),
    rule(
        "boot.secure_boot",
        "drift.boot",
        Compare::Value,
        "Secure Boot",
    ),
    rule("boot.package[", "drift.boot", Compare::Presence, "package "),
    rule(
        "boot.kernel_hook",
        "drift.boot",
        Compare::Value,
        "kernel hook",
    ),
    rule("boot.esp_sync", "drift.boot", Compare::Value, "ESP sync"),
    rule(
        "kernel.running",
        "drift.kernel",
        Compare::Value,
        "running kernel",
    ),
    rule("packages.", "drift.packages", Compare::Value, ""),
];

const fn rule(
    prefix: &'static str,
    code: &'static str,
    compare: Compare,
    label: &'static str,
) -> Rule {
    Rule {
        prefix,
        code,
        compare,
        label,
    }
}

/// Severities per `CHECKS.md`: different kernels are information, the rest a warning.
pub fn severity(code: &str) -> Severity {
    if code == "drift.kernel" {
        Severity::Info
    } else {
        Severity::Warning
    }
}

/// The drift rule a flattened key falls under, if any. Exact keys match whole; `[` and `.`
/// prefixes match their items.
pub fn rule_for(key: &str) -> Option<&'static Rule> {
    RULES.iter().find(|r| {
        if r.prefix.ends_with('[') || r.prefix.ends_with('.') {
            key.starts_with(r.prefix)
        } else {
            key == r.prefix
        }
    })
}

impl Rule {
    fn label(&self, key: &str) -> String {
        let item = key
            .strip_prefix(self.prefix)
            .map(|rest| rest.strip_suffix(']').unwrap_or(rest))
            .unwrap_or("");
        format!("{}{item}", self.label)
    }
}

/// What one node is told about one drift code.
#[derive(Default)]
struct Notes {
    /// Items where this node is an outlier, grouped by the nodes holding the majority.
    against: Vec<(Vec<usize>, Vec<String>)>,
    /// Items without a majority.
    split: Vec<String>,
}

/// Compare the nodes' facts; see the module docs.
pub fn drift(nodes: &[NodeView]) -> Vec<FleetFinding> {
    if nodes.len() < 2 {
        return Vec::new();
    }
    let mut sorted: Vec<&NodeView> = nodes.iter().collect();
    sorted.sort_by_key(|n| n.name);
    let names: Vec<&str> = sorted.iter().map(|n| n.name).collect();
    let flat: Vec<BTreeMap<String, String>> = sorted.iter().map(|n| flatten(n.facts)).collect();
    let keys: BTreeSet<&str> = flat
        .iter()
        .flat_map(|m| m.keys())
        .map(String::as_str)
        .filter(|k| rule_for(k).is_some())
        .collect();

    let mut notes: BTreeMap<(usize, &'static str), Notes> = BTreeMap::new();
    for key in keys {
        let Some(rule) = rule_for(key) else { continue };
        // Value groups in order of first appearance (node names are sorted).
        let mut groups: Vec<(Option<&str>, Vec<usize>)> = Vec::new();
        for (i, m) in flat.iter().enumerate() {
            let v = m.get(key).map(|v| match rule.compare {
                Compare::Value => v.as_str(),
                Compare::Presence => "present",
            });
            match groups.iter_mut().find(|g| g.0 == v) {
                Some(g) => g.1.push(i),
                None => groups.push((v, vec![i])),
            }
        }
        if groups.len() < 2 {
            continue;
        }
        let label = rule.label(key);
        let top = groups.iter().map(|g| g.1.len()).max().unwrap_or(0);
        let leaders: Vec<&(Option<&str>, Vec<usize>)> =
            groups.iter().filter(|g| g.1.len() == top).collect();
        match leaders.as_slice() {
            [majority] if nodes.len() >= 3 => {
                for (value, members) in &groups {
                    if value == &majority.0 {
                        continue;
                    }
                    let text = outlier_text(rule, &label, *value, majority.0);
                    for &i in members {
                        let n = notes.entry((i, rule.code)).or_default();
                        match n.against.iter_mut().find(|(h, _)| h == &majority.1) {
                            Some((_, items)) => items.push(text.clone()),
                            None => n.against.push((majority.1.clone(), vec![text.clone()])),
                        }
                    }
                }
            }
            _ => {
                let text = split_text(rule, &label, &groups, &names);
                for i in 0..flat.len() {
                    notes
                        .entry((i, rule.code))
                        .or_default()
                        .split
                        .push(text.clone());
                }
            }
        }
    }

    let mut out: Vec<FleetFinding> = notes
        .into_iter()
        .map(|((i, code), n)| FleetFinding {
            node: names[i].to_string(),
            finding: Finding {
                code: code.to_string(),
                severity: severity(code),
                message: message(i, &n, &names),
                path: None,
                line: None,
            },
        })
        .collect();
    sort_findings(&mut out);
    out
}

fn shown(v: Option<&str>) -> &str {
    v.unwrap_or("none")
}

/// An outlier's item: `nameservers 1.1.1.1 (others: 192.168.1.110)`, `extra repo ...`.
fn outlier_text(rule: &Rule, label: &str, value: Option<&str>, majority: Option<&str>) -> String {
    match (rule.compare, value) {
        (Compare::Presence, Some(_)) => format!("extra {label}"),
        (Compare::Presence, None) => format!("missing {label}"),
        (Compare::Value, _) => format!("{label} {} (others: {})", shown(value), shown(majority)),
    }
}

/// An item without a majority: `nameservers 1.1.1.1 on pve-01 vs 192.168.1.110 on pve-02`.
fn split_text(
    rule: &Rule,
    label: &str,
    groups: &[(Option<&str>, Vec<usize>)],
    names: &[&str],
) -> String {
    let on = |members: &[usize]| name_list(members.iter().map(|&i| names[i]));
    match rule.compare {
        Compare::Presence => {
            let (with, without): (Vec<_>, Vec<_>) = groups.iter().partition(|g| g.0.is_some());
            let with: Vec<usize> = with.iter().flat_map(|g| g.1.iter().copied()).collect();
            let without: Vec<usize> = without.iter().flat_map(|g| g.1.iter().copied()).collect();
            format!("{label} on {}, not on {}", on(&with), on(&without))
        }
        Compare::Value => {
            let parts: Vec<String> = groups
                .iter()
                .map(|(v, members)| format!("{} on {}", shown(*v), on(members)))
                .collect();
            format!("{label} {}", parts.join(" vs "))
        }
    }
}

/// `pve-03 differs from pve-01, pve-02: ...; ...` and/or `pve-01 and pve-02 differ: ...`.
fn message(node: usize, n: &Notes, names: &[&str]) -> String {
    let mut parts = Vec::new();
    for (i, (holders, items)) in n.against.iter().enumerate() {
        let who = if i == 0 { names[node] } else { "and" };
        parts.push(format!(
            "{who} differs from {}: {}",
            name_list(holders.iter().map(|&h| names[h])),
            items.join("; ")
        ));
    }
    if !n.split.is_empty() {
        let head = match names {
            [a, b] => format!("{a} and {b} differ"),
            _ => format!("no majority among the {} nodes", names.len()),
        };
        parts.push(format!("{head}: {}", n.split.join("; ")));
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetward_proto::Facts;

    fn facts(ns: &str, kernel: &str) -> Facts {
        let mut f = Facts::default();
        f.dns.resolv_conf.nameservers = vec![ns.into()];
        f.node.running_kernel = Some(kernel.into());
        f
    }

    fn run(fs: &[(&str, &Facts)]) -> Vec<(String, String, String)> {
        let views: Vec<NodeView> = fs
            .iter()
            .map(|(name, facts)| NodeView { name, facts })
            .collect();
        drift(&views)
            .into_iter()
            .map(|f| (f.node, f.finding.code, f.finding.message))
            .collect()
    }

    #[test]
    fn rules_cover_exact_and_item_keys() {
        assert_eq!(rule_for("dns.search").map(|r| r.code), Some("drift.dns"));
        assert!(rule_for("dns.search_x").is_none());
        assert!(rule_for("dns.hosts").is_none());
        assert!(rule_for("boot.setup_mode").is_none());
        assert_eq!(
            rule_for("packages.pve-manager").map(|r| r.code),
            Some("drift.packages")
        );
        assert_eq!(severity("drift.kernel"), Severity::Info);
        assert!(rule_for("apt.disabled[deb x y z]").is_none());
    }

    #[test]
    fn majority_names_the_outlier_only() {
        let (a, c) = (facts("192.168.1.110", "6.14"), facts("1.1.1.1", "6.14"));
        let out = run(&[("pve-02", &a), ("pve-03", &c), ("pve-01", &a)]);
        assert_eq!(
            out,
            [(
                "pve-03".to_string(),
                "drift.dns".to_string(),
                "pve-03 differs from pve-01, pve-02: nameservers 1.1.1.1 (others: 192.168.1.110)"
                    .to_string()
            )]
        );
    }

    #[test]
    fn two_nodes_name_both_without_picking_a_side() {
        let (a, b) = (facts("192.168.1.110", "6.14"), facts("1.1.1.1", "6.15"));
        let out = run(&[("pve-01", &a), ("pve-02", &b)]);
        let msg =
            "pve-01 and pve-02 differ: nameservers 192.168.1.110 on pve-01 vs 1.1.1.1 on pve-02";
        assert_eq!(out.len(), 4);
        assert_eq!(out[0], ("pve-01".into(), "drift.dns".into(), msg.into()));
        assert_eq!(out[1].1, "drift.kernel");
        assert_eq!(out[2], ("pve-02".into(), "drift.dns".into(), msg.into()));
    }

    #[test]
    fn ties_and_single_nodes() {
        let (a, b) = (facts("a", "k"), facts("b", "k"));
        assert!(run(&[("n1", &a)]).is_empty());
        let out = run(&[("n1", &a), ("n2", &a), ("n3", &b), ("n4", &b)]);
        assert_eq!(out.len(), 4);
        assert_eq!(
            out[0].2,
            "no majority among the 4 nodes: nameservers a on n1, n2 vs b on n3, n4"
        );
    }

    #[test]
    fn presence_keys_say_extra_or_missing() {
        let a = facts("x", "k");
        let mut b = a.clone();
        b.boot.packages.push(fleetward_proto::PackageFacts {
            name: "systemd-boot".into(),
            version: "257".into(),
        });
        let out = run(&[("n1", &a), ("n2", &a), ("n3", &b)]);
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].2,
            "n3 differs from n1, n2: extra package systemd-boot"
        );
    }
}
