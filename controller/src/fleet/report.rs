//! The cluster's actual state as an operator document (Markdown), for `fleetward report`.
//!
//! In the spirit of the operator's own cluster documents: per area (boot stack and ESP sync,
//! repositories, DNS) the facts per node, what is uniform and what differs, then the target
//! state (the policy) and whether it is met, and every check run with its result.
//!
//! Pure and deterministic: no I/O, no clock, nodes and findings sorted, so the same fleet
//! state renders to the same bytes and the document can live in git beside the policy.

use super::drift::{rule_for, Compare};
use super::normalize::{flatten, secure_boot_state};
use super::{FleetFinding, NodeView, Policy};
use fleetward_proto::{
    AptEntry, AptFileFormat, EspFacts, EspSource, Facts, Finding, Firmware, Loader, Severity,
};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// What the document is rendered from: the latest facts and every finding about them.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub nodes: &'a [NodeView<'a>],
    /// The agents' own findings, per node.
    pub node_findings: &'a [(String, Finding)],
    /// `drift.*` over `nodes`.
    pub drift: &'a [FleetFinding],
    /// The policy in force and the file it came from.
    pub policy: Option<(&'a Policy, &'a Path)>,
    /// `policy.*` of `policy` over `nodes`.
    pub policy_findings: &'a [FleetFinding],
}

/// Render the document. Same input, same bytes.
pub fn markdown(input: &Input) -> String {
    let doc = Doc::new(input);
    let mut out = String::new();
    doc.title(&mut out);
    doc.nodes_section(&mut out);
    doc.boot_section(&mut out);
    doc.apt_section(&mut out);
    doc.dns_section(&mut out);
    doc.target_section(&mut out);
    doc.checks_section(&mut out);
    out
}

/// Where a finding came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    Agent,
    Drift,
    Policy,
}

/// One row of the checks table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Row<'a> {
    node: &'a str,
    /// Descending severity sorts first.
    severity: std::cmp::Reverse<Severity>,
    code: &'a str,
    message: &'a str,
    path: Option<&'a str>,
    line: Option<u32>,
    source: Source,
}

/// One node, with its flattened facts.
struct Node<'a> {
    name: &'a str,
    facts: &'a Facts,
    flat: BTreeMap<String, String>,
}

struct Doc<'a> {
    nodes: Vec<Node<'a>>,
    rows: Vec<Row<'a>>,
    policy: Option<(&'a Policy, &'a Path)>,
}

impl<'a> Doc<'a> {
    fn new(input: &Input<'a>) -> Self {
        let mut nodes: Vec<Node<'a>> = input
            .nodes
            .iter()
            .map(|v| Node {
                name: v.name,
                facts: v.facts,
                flat: flatten(v.facts),
            })
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(b.name));
        let row = |node: &'a str, f: &'a Finding, source: Source| Row {
            node,
            severity: std::cmp::Reverse(f.severity),
            code: &f.code,
            message: &f.message,
            path: f.path.as_deref(),
            line: f.line,
            source,
        };
        let mut rows: Vec<Row<'a>> = input
            .node_findings
            .iter()
            .map(|(n, f)| row(n, f, Source::Agent))
            .chain(
                input
                    .drift
                    .iter()
                    .map(|f| row(&f.node, &f.finding, Source::Drift)),
            )
            .chain(
                input
                    .policy_findings
                    .iter()
                    .map(|f| row(&f.node, &f.finding, Source::Policy)),
            )
            .collect();
        rows.sort();
        Doc {
            nodes,
            rows,
            policy: input.policy,
        }
    }

    fn names(&self) -> Vec<&'a str> {
        self.nodes.iter().map(|n| n.name).collect()
    }

    fn count(&self, severity: Severity) -> usize {
        self.rows
            .iter()
            .filter(|r| r.severity.0 == severity)
            .count()
    }

    fn rows_from(&self, source: Source) -> impl Iterator<Item = &Row<'a>> {
        self.rows.iter().filter(move |r| r.source == source)
    }

    // === title and summary ===

    fn title(&self, out: &mut String) {
        let names = self.names();
        if names.is_empty() {
            out.push_str("# Cluster state: no nodes\n\n");
        } else {
            out.push_str(&format!("# Cluster state: {}\n\n", names.join(", ")));
        }

        let mut s = match names.len() {
            0 => "No node has reported yet.".to_string(),
            1 => format!("1 node reports: {}.", names[0]),
            n => format!("{n} nodes report: {}.", names.join(", ")),
        };
        let (e, w, i) = (
            self.count(Severity::Error),
            self.count(Severity::Warning),
            self.count(Severity::Info),
        );
        s.push_str(&format!(
            " Findings: {}, {} and {} (agent checks, drift and policy together).",
            plural(e, "error", "errors"),
            plural(w, "warning", "warnings"),
            plural(i, "info", "info"),
        ));
        let drifting: BTreeSet<&str> = self.rows_from(Source::Drift).map(|r| r.node).collect();
        if self.nodes.len() < 2 {
            s.push_str(" Drift between nodes: nothing to compare.");
        } else if drifting.is_empty() {
            s.push_str(" Drift between nodes: none.");
        } else {
            s.push_str(&format!(
                " Drift between nodes: yes, on {}.",
                join(drifting.iter().copied())
            ));
        }
        match self.policy {
            None => s.push_str(" Target state: no policy configured."),
            Some((_, path)) => {
                let unmet: BTreeSet<&str> =
                    self.rows_from(Source::Policy).map(|r| r.node).collect();
                if unmet.is_empty() {
                    s.push_str(&format!(
                        " Target state ({}): met on all nodes.",
                        code(&path.display().to_string())
                    ));
                } else {
                    s.push_str(&format!(
                        " Target state ({}): not met on {}.",
                        code(&path.display().to_string()),
                        join(unmet.iter().copied())
                    ));
                }
            }
        }
        out.push_str(&s);
        out.push_str("\n\n");
        out.push_str(
            "Rendered by `fleetward report` from each node's latest report; it states the facts as \
             found and changes only when they change.\n\n",
        );
    }

    fn nodes_section(&self, out: &mut String) {
        if self.nodes.is_empty() {
            return;
        }
        out.push_str("## Nodes\n\n");
        let rows = self
            .nodes
            .iter()
            .map(|n| {
                let f = &n.facts.node;
                let os =
                    f.os.pretty_name
                        .clone()
                        .or_else(|| {
                            let parts: Vec<&str> = [&f.os.id, &f.os.version_id, &f.os.codename]
                                .into_iter()
                                .flatten()
                                .map(String::as_str)
                                .collect();
                            (!parts.is_empty()).then(|| parts.join(" "))
                        })
                        .unwrap_or_else(|| "unknown".into());
                let pve = match (&f.pve_manager_version, &f.proxmox_ve_version) {
                    (None, None) => "not installed".to_string(),
                    (m, v) => [("pve-manager", m), ("proxmox-ve", v)]
                        .into_iter()
                        .filter_map(|(name, v)| v.as_ref().map(|v| format!("{name} {v}")))
                        .collect::<Vec<_>>()
                        .join(", "),
                };
                vec![n.name.to_string(), os, pve, cluster_view(n.facts)]
            })
            .collect::<Vec<_>>();
        table(out, &["node", "OS", "Proxmox VE", "cluster view"], &rows);
    }

    // === boot ===

    fn boot_section(&self, out: &mut String) {
        out.push_str("## Boot stack and ESP sync\n\n");
        if self.nodes.is_empty() {
            out.push_str("No facts.\n\n");
            return;
        }
        out.push_str("Firmware and boot loader:\n\n");
        let rows: Vec<Vec<String>> = self
            .nodes
            .iter()
            .map(|n| {
                let b = &n.facts.boot;
                let firmware = match b.firmware {
                    Firmware::Uefi => "UEFI",
                    Firmware::Bios => "legacy BIOS",
                };
                let packages = if b.packages.is_empty() {
                    "none".to_string()
                } else {
                    b.packages
                        .iter()
                        .map(|p| format!("{} {}", p.name, p.version))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let systemd_boot = match b.packages.iter().find(|p| p.name == "systemd-boot") {
                    Some(p) => format!("installed ({})", p.version),
                    None => "not installed".into(),
                };
                let h = &b.kernel_hook;
                let hook = match (h.exists, &h.owner) {
                    (true, Some(owner)) => format!("{}, owned by {owner}", h.path),
                    (true, None) => format!("{}, exists, owned by no package", h.path),
                    (false, _) => format!("{} missing", h.path),
                };
                vec![
                    n.name.to_string(),
                    firmware.to_string(),
                    secure_boot(n.facts),
                    packages,
                    systemd_boot,
                    hook,
                ]
            })
            .collect();
        table(
            out,
            &[
                "node",
                "firmware",
                "Secure Boot",
                "boot-loader packages",
                "systemd-boot",
                "kernel hook",
            ],
            &rows,
        );

        out.push_str("Kernels and ESP sync:\n\n");
        let rows: Vec<Vec<String>> = self
            .nodes
            .iter()
            .map(|n| {
                let b = &n.facts.boot;
                let list = if b.esp_list_exists {
                    format!("{} exists", b.esp_list_path)
                } else {
                    format!("{} does not exist", b.esp_list_path)
                };
                let esps = if n.facts.esps.is_empty() {
                    "none found".to_string()
                } else {
                    n.facts.esps.iter().map(esp).collect::<Vec<_>>().join("; ")
                };
                let mut next = b.next_kernel.clone().unwrap_or_else(|| "unknown".into());
                if let Some(pin) = &b.next_boot_pin {
                    next.push_str(&format!(" (next-boot pin {pin})"));
                } else if let Some(pin) = &b.kernel_pin {
                    next.push_str(&format!(" (pinned {pin})"));
                }
                let reboot = if b.reboot_required {
                    if b.reboot_required_reasons.is_empty() {
                        "yes".to_string()
                    } else {
                        format!("yes: {}", b.reboot_required_reasons.join("; "))
                    }
                } else {
                    "no".into()
                };
                vec![
                    n.name.to_string(),
                    list,
                    esp_sync(n.facts),
                    esps,
                    or_unknown(&n.facts.node.running_kernel),
                    next,
                    none_if_empty(b.installed_kernels.join(", ")),
                    reboot,
                ]
            })
            .collect();
        table(
            out,
            &[
                "node",
                "ESP list",
                "ESP sync",
                "ESPs",
                "running kernel",
                "next kernel",
                "installed kernels",
                "reboot required",
            ],
            &rows,
        );
        self.esp_sync_summary(out);
        self.uniform_differs(out, &["boot.", "kernel."]);
    }

    /// The ESP-sync fact in one sentence per state, as the operator's document states it.
    fn esp_sync_summary(&self, out: &mut String) {
        let mut by_state: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        for n in &self.nodes {
            let b = &n.facts.boot;
            let text = if b.esp_list_exists {
                format!(
                    "ESP sync is configured: {} lists the ESPs the kernel hook keeps in sync.",
                    code(&b.esp_list_path)
                )
            } else if needs_esp_list(n.facts) {
                format!(
                    "ESP sync is not configured ({} does not exist), but the root file system is {}: \
                     kernel updates reach no ESP.",
                    code(&b.esp_list_path),
                    b.root_fs.as_deref().unwrap_or("unknown")
                )
            } else {
                format!(
                    "ESP sync is not configured: {} does not exist, so the kernel hook logs \"No {} \
                     found, skipping ESP sync.\" and no ESP sync happens. The root file system is \
                     not ZFS or btrfs (kernels boot from `/boot`), so this is a disabled feature, \
                     not a fault.",
                    code(&b.esp_list_path),
                    b.esp_list_path
                )
            };
            by_state.entry(text).or_default().push(n.name);
        }
        let all = by_state.len() == 1;
        let mut groups: Vec<(String, Vec<&str>)> = by_state.into_iter().collect();
        groups.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.1.cmp(&b.1)));
        for (text, names) in groups {
            let who = if all && self.nodes.len() > 1 {
                "On all nodes".to_string()
            } else {
                format!("On {}", join(names.iter().copied()))
            };
            out.push_str(&format!("{who}, {text}\n\n"));
        }
    }

    // === repositories ===

    fn apt_section(&self, out: &mut String) {
        out.push_str("## Repositories\n\n");
        if self.nodes.is_empty() {
            out.push_str("No facts.\n\n");
            return;
        }
        out.push_str("Source files:\n\n");
        let rows: Vec<Vec<String>> = self
            .nodes
            .iter()
            .map(|n| {
                let apt = &n.facts.apt;
                let main = "/etc/apt/sources.list";
                let list = match apt.files.iter().find(|f| f.path == main) {
                    None => "does not exist".to_string(),
                    Some(f) if f.size == 0 => "exists, empty".to_string(),
                    Some(f) => {
                        let entries = apt.entries.iter().filter(|e| e.file == main).count();
                        format!(
                            "{}, {}",
                            plural(f.size as usize, "byte", "bytes"),
                            plural(entries, "entry", "entries")
                        )
                    }
                };
                let dir: Vec<String> = apt
                    .files
                    .iter()
                    .filter(|f| f.path != main)
                    .map(|f| {
                        let name = f
                            .path
                            .strip_prefix("/etc/apt/sources.list.d/")
                            .unwrap_or(&f.path)
                            .to_string();
                        match f.format {
                            AptFileFormat::Ignored => format!("{name} (ignored by apt)"),
                            _ => name,
                        }
                    })
                    .collect();
                vec![n.name.to_string(), list, none_if_empty(dir.join(", "))]
            })
            .collect();
        table(
            out,
            &["node", "/etc/apt/sources.list", "/etc/apt/sources.list.d/"],
            &rows,
        );

        out.push_str("Enabled repositories:\n\n");
        let mut rows = Vec::new();
        for n in &self.nodes {
            for e in n.facts.apt.entries.iter().filter(|e| e.enabled) {
                rows.push(vec![
                    n.name.to_string(),
                    repo(e),
                    signed_by(e),
                    at(&e.file, e.line),
                ]);
            }
        }
        if rows.is_empty() {
            out.push_str("None on any node.\n\n");
        } else {
            table(
                out,
                &["node", "repository", "signed by", "file:line"],
                &rows,
            );
        }

        out.push_str("Disabled references (kept, not used by apt):\n\n");
        let mut rows = Vec::new();
        for n in &self.nodes {
            let apt = &n.facts.apt;
            let disabled = apt
                .entries
                .iter()
                .filter(|e| !e.enabled)
                .map(|e| (e, "`Enabled: no`".to_string()))
                .chain(apt.ignored_entries.iter().map(|e| {
                    let why = apt
                        .files
                        .iter()
                        .find(|f| f.path == e.file)
                        .and_then(|f| f.ignored_reason.clone())
                        .unwrap_or_else(|| "apt ignores the file".into());
                    (e, why)
                }));
            for (e, why) in disabled {
                rows.push(vec![n.name.to_string(), repo(e), at(&e.file, e.line), why]);
            }
        }
        if rows.is_empty() {
            out.push_str("None on any node.\n\n");
        } else {
            table(
                out,
                &["node", "repository", "file:line", "how disabled"],
                &rows,
            );
        }

        let mut rows = Vec::new();
        for n in &self.nodes {
            for e in &n.facts.apt.errors {
                rows.push(vec![
                    n.name.to_string(),
                    at(&e.path, e.line),
                    e.message.clone(),
                ]);
            }
        }
        if !rows.is_empty() {
            out.push_str("Lines apt refuses:\n\n");
            table(out, &["node", "file:line", "problem"], &rows);
        }
        self.uniform_differs(out, &["apt."]);
    }

    // === DNS ===

    fn dns_section(&self, out: &mut String) {
        out.push_str("## DNS\n\n");
        if self.nodes.is_empty() {
            out.push_str("No facts.\n\n");
            return;
        }
        let rows: Vec<Vec<String>> = self
            .nodes
            .iter()
            .map(|n| {
                let dns = &n.facts.dns;
                let rc = &dns.resolv_conf;
                let mut kind = if rc.systemd_resolved_stub {
                    "systemd-resolved stub".to_string()
                } else if let Some(t) = &rc.symlink_target {
                    format!("symlink to {t}")
                } else if rc.exists {
                    "file".to_string()
                } else {
                    "missing".to_string()
                };
                if !rc.options.is_empty() {
                    kind.push_str(&format!(", options {}", rc.options.join(" ")));
                }
                let lines: Vec<String> = dns
                    .interfaces
                    .lines
                    .iter()
                    .map(|l| {
                        let iface = l
                            .iface
                            .as_deref()
                            .map(|i| format!("{i}: "))
                            .unwrap_or_default();
                        format!("{iface}{} {} ({})", l.key, l.value, at(&l.file, l.line))
                    })
                    .collect();
                let ifs = &dns.interfaces;
                let agree = if ifs.nameservers.is_empty() && ifs.search.is_empty() {
                    "n/a (no dns-* lines)".to_string()
                } else if (ifs.nameservers.is_empty() || ifs.nameservers == rc.nameservers)
                    && (ifs.search.is_empty() || ifs.search == rc.search)
                {
                    "yes".to_string()
                } else {
                    "no: `ifreload -a` changes DNS".to_string()
                };
                let hosts = match (&dns.hosts.name, dns.hosts.addresses.is_empty()) {
                    (Some(name), false) => format!("{name} → {}", dns.hosts.addresses.join(", ")),
                    (Some(name), true) => format!("{name}: no entry"),
                    (None, _) => "unknown (no hostname)".to_string(),
                };
                vec![
                    n.name.to_string(),
                    kind,
                    none_if_empty(rc.nameservers.join(" ")),
                    none_if_empty(rc.search.join(" ")),
                    none_if_empty(lines.join("; ")),
                    agree,
                    hosts,
                ]
            })
            .collect();
        table(
            out,
            &[
                "node",
                "/etc/resolv.conf",
                "nameservers",
                "search",
                "ifupdown dns-* lines",
                "resolv.conf agrees with ifupdown",
                "/etc/hosts",
            ],
            &rows,
        );
        self.uniform_differs(out, &["dns."]);
    }

    // === uniform / differs ===

    /// The flattened facts under `prefixes`: those equal on every node, and those that differ
    /// (which node has which value, most common value first).
    fn uniform_differs(&self, out: &mut String, prefixes: &[&str]) {
        let keys: BTreeSet<&str> = self
            .nodes
            .iter()
            .flat_map(|n| n.flat.keys())
            .map(String::as_str)
            .filter(|k| prefixes.iter().any(|p| k.starts_with(p)))
            .collect();
        let mut uniform = Vec::new();
        let mut differs = Vec::new();
        for key in keys {
            let mut groups: BTreeMap<Option<&str>, Vec<&str>> = BTreeMap::new();
            for n in &self.nodes {
                groups
                    .entry(n.flat.get(key).map(String::as_str))
                    .or_default()
                    .push(n.name);
            }
            if groups.len() == 1 {
                if let Some((Some(value), _)) = groups.iter().next() {
                    uniform.push(format!("- {}: {}\n", code(key), code(value)));
                }
                continue;
            }
            let mut groups: Vec<(Option<&str>, Vec<&str>)> = groups.into_iter().collect();
            groups.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.1.cmp(&b.1)));
            let parts: Vec<String> = groups
                .iter()
                .map(|(v, names)| {
                    let v = v.map_or_else(|| "not set".to_string(), code);
                    format!("{v} on {}", join(names.iter().copied()))
                })
                .collect();
            differs.push(format!(
                "- {}: {} — {}\n",
                code(key),
                parts.join("; "),
                drift_note(key, &groups)
            ));
        }
        if self.nodes.len() > 1 {
            out.push_str("Uniform (equal on all nodes):\n\n");
        } else {
            out.push_str("Facts:\n\n");
        }
        if uniform.is_empty() {
            out.push_str("- nothing\n");
        }
        for u in uniform {
            out.push_str(&u);
        }
        out.push('\n');
        if self.nodes.len() > 1 {
            out.push_str("Differs:\n\n");
            if differs.is_empty() {
                out.push_str("- nothing\n");
            }
            for d in differs {
                out.push_str(&d);
            }
            out.push('\n');
        }
    }

    // === target state ===

    fn target_section(&self, out: &mut String) {
        out.push_str("## Target state\n\n");
        let Some((policy, path)) = self.policy else {
            out.push_str(
                "No policy configured. `fleetward policy capture <node>` writes one from a node's \
                 facts; the controller checks every report against it.\n\n",
            );
            return;
        };
        out.push_str(&format!(
            "Policy: {}. Every node's facts are checked against it (`policy.*`).\n\n",
            code(&path.display().to_string())
        ));
        let areas = policy_areas(policy);
        let mut header = vec!["node"];
        header.extend(areas.iter().map(|a| a.title));
        let rows: Vec<Vec<String>> = self
            .nodes
            .iter()
            .map(|n| {
                let mut row = vec![n.name.to_string()];
                for area in &areas {
                    let misses: Vec<String> = self
                        .rows_from(Source::Policy)
                        .filter(|r| r.node == n.name && area.codes.contains(&r.code))
                        .map(|r| r.message.to_string())
                        .collect();
                    row.push(if !area.configured {
                        "not set in the policy".to_string()
                    } else if misses.is_empty() {
                        "✓ met".to_string()
                    } else {
                        format!("✗ not met: {}", misses.join("; "))
                    });
                }
                row
            })
            .collect();
        if rows.is_empty() {
            out.push_str("No node to check.\n\n");
        } else {
            table(out, &header, &rows);
        }
        // Policy findings about codes outside the known areas (or nodes without facts).
        let known: BTreeSet<&str> = areas.iter().flat_map(|a| a.codes.iter().copied()).collect();
        let names: BTreeSet<&str> = self.names().into_iter().collect();
        let other: Vec<&Row> = self
            .rows_from(Source::Policy)
            .filter(|r| !known.contains(r.code) || !names.contains(r.node))
            .collect();
        for r in other {
            out.push_str(&format!("- {}: {} {}\n", r.node, code(r.code), r.message));
        }
        let text = policy.to_toml();
        let fence = if text.contains("```") { "~~~~" } else { "```" };
        out.push_str(&format!("The target state:\n\n{fence}toml\n{}", text));
        if !text.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&format!("{fence}\n\n"));
    }

    // === checks ===

    fn checks_section(&self, out: &mut String) {
        out.push_str("## Checks\n\n");
        let policy = match self.policy {
            Some((_, path)) => format!("`policy.*` against {}", code(&path.display().to_string())),
            None => "`policy.*` not run (no policy configured)".to_string(),
        };
        out.push_str(&format!(
            "Checks run: the agent's `boot.*`, `apt.*`, `dns.*` and `cluster.*` checks on each node \
             (from its latest report); `drift.*` (apt, dns, boot, kernel, packages) across {}; {}.\n\n",
            plural(self.nodes.len(), "node", "nodes"),
            policy
        ));

        // Results per node and area.
        let mut areas: Vec<String> = ["boot", "apt", "dns", "cluster", "drift", "policy"]
            .into_iter()
            .map(String::from)
            .collect();
        for r in &self.rows {
            let a = area_of(r.code).to_string();
            if !areas.contains(&a) {
                areas.push(a);
            }
        }
        let mut names: BTreeSet<&str> = self.names().into_iter().collect();
        names.extend(self.rows.iter().map(|r| r.node));
        let mut header = vec!["node"];
        header.extend(areas.iter().map(String::as_str));
        let rows: Vec<Vec<String>> = names
            .iter()
            .map(|&node| {
                let mut row = vec![node.to_string()];
                for a in &areas {
                    let mine: Vec<&Row> = self
                        .rows
                        .iter()
                        .filter(|r| r.node == node && area_of(r.code) == a)
                        .collect();
                    row.push(if a == "policy" && self.policy.is_none() {
                        "not run".to_string()
                    } else {
                        result(&mine)
                    });
                }
                row
            })
            .collect();
        if !rows.is_empty() {
            out.push_str("Results:\n\n");
            table(out, &header, &rows);
        }

        out.push_str("Findings:\n\n");
        if self.rows.is_empty() {
            out.push_str("None.\n");
            return;
        }
        let rows: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| {
                let place = match (r.path, r.line) {
                    (Some(p), Some(l)) => at(p, l),
                    (Some(p), None) => p.to_string(),
                    (None, _) => "–".to_string(),
                };
                vec![
                    r.node.to_string(),
                    r.severity.0.to_string(),
                    code(r.code),
                    r.message.to_string(),
                    place,
                ]
            })
            .collect();
        table(
            out,
            &["node", "severity", "code", "message", "where"],
            &rows,
        );
    }
}

/// A policy area of the target-state table.
struct Area {
    title: &'static str,
    codes: &'static [&'static str],
    configured: bool,
}

fn policy_areas(policy: &Policy) -> Vec<Area> {
    vec![
        Area {
            title: "boot stack",
            codes: &["policy.boot"],
            configured: policy.boot.is_some(),
        },
        Area {
            title: "repositories",
            codes: &["policy.apt-files", "policy.apt-repo"],
            configured: policy.apt.is_some(),
        },
        Area {
            title: "DNS",
            codes: &["policy.dns"],
            configured: policy.dns.is_some(),
        },
    ]
}

// === cells ===

fn secure_boot(f: &Facts) -> String {
    let Some(sb) = &f.boot.secure_boot else {
        return match f.boot.firmware {
            Firmware::Bios => "n/a (legacy BIOS)".into(),
            Firmware::Uefi => "unknown".into(),
        };
    };
    let mut s = match secure_boot_state(f) {
        Some("enabled") => "Secure Boot enabled".to_string(),
        Some("disabled") => "Secure Boot disabled".to_string(),
        _ => "Secure Boot state unknown".to_string(),
    };
    if sb.setup_mode == Some(true) {
        s.push_str("; Platform is in Setup Mode");
    }
    if sb.shim_validation_disabled {
        s.push_str("; shim validation disabled (MokSBStateRT)");
    }
    s
}

/// ZFS and btrfs roots boot from the ESPs, so they need the ESP list.
fn needs_esp_list(f: &Facts) -> bool {
    matches!(f.boot.root_fs.as_deref(), Some("zfs") | Some("btrfs"))
}

fn esp_sync(f: &Facts) -> String {
    let b = &f.boot;
    if b.esp_list_exists {
        let ids: Vec<&str> = b
            .esp_list
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .collect();
        return format!(
            "configured: {}",
            plural(ids.len(), "ESP listed", "ESPs listed")
        );
    }
    if needs_esp_list(f) {
        return format!(
            "not configured, but the root file system is {}: kernel updates reach no ESP",
            b.root_fs.as_deref().unwrap_or("unknown")
        );
    }
    if b.kernel_hook.exists {
        format!(
            "not configured (the kernel hook logs 'No {} found, skipping ESP sync.')",
            b.esp_list_path
        )
    } else {
        "not configured (and no kernel hook)".to_string()
    }
}

fn esp(e: &EspFacts) -> String {
    let id = e
        .uuid
        .as_deref()
        .or(e.device.as_deref())
        .unwrap_or("unknown volume");
    let mut parts = Vec::new();
    match (e.source, &e.mountpoint) {
        (_, Some(m)) => parts.push(format!("mounted at {m}")),
        (EspSource::BootEfi, None) => parts.push("/boot/efi, not mounted".to_string()),
        (EspSource::EspList, None) => parts.push("in the ESP list".to_string()),
    }
    if !e.present {
        parts.push("device missing".into());
    }
    parts.push(match e.loader {
        Some(Loader::Grub) => "GRUB".into(),
        Some(Loader::SystemdBoot) => "systemd-boot".into(),
        Some(Loader::Both) => "GRUB and systemd-boot".into(),
        Some(Loader::Unknown) | None => "no known loader".into(),
    });
    if e.removable_loader {
        parts.push("removable loader".into());
    }
    if e.kernels.is_empty() {
        parts.push("no kernels".into());
    } else {
        parts.push(format!("kernels {}", e.kernels.join(", ")));
    }
    if let Some(m) = e.matches_others {
        parts.push(
            if m {
                "matches the other ESPs"
            } else {
                "differs from the other ESPs"
            }
            .into(),
        );
    }
    if let Some(err) = &e.error {
        parts.push(format!("unreadable: {err}"));
    }
    format!("{id} ({})", parts.join(", "))
}

fn cluster_view(f: &Facts) -> String {
    let c = &f.cluster;
    if !c.members_file {
        return "no cluster file system view (/etc/pve/.members missing)".into();
    }
    if c.standalone {
        return "standalone".into();
    }
    let mut parts = vec![c.name.clone().unwrap_or_else(|| "unnamed cluster".into())];
    parts.push(match c.quorate {
        Some(true) => "quorate".into(),
        Some(false) => "not quorate".into(),
        None => "quorum unknown".into(),
    });
    let online = c.members.iter().filter(|m| m.online).count();
    parts.push(format!("{online}/{} members online", c.members.len()));
    if c.qdevice {
        parts.push("QDevice".into());
    }
    parts.join(", ")
}

fn repo(e: &AptEntry) -> String {
    [&e.types, &e.uris, &e.suites, &e.components]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(" ")
}

fn signed_by(e: &AptEntry) -> String {
    e.options
        .get("signed-by")
        .cloned()
        .unwrap_or_else(|| "–".into())
}

/// How a differing key relates to the drift checks.
fn drift_note(key: &str, groups: &[(Option<&str>, Vec<&str>)]) -> String {
    let Some(rule) = rule_for(key) else {
        return "not compared by drift (per-node fact)".into();
    };
    if rule.compare == Compare::Presence && groups.iter().all(|(v, _)| v.is_some()) {
        return format!("{} compares only whether it is present", code(rule.code));
    }
    format!("drift check {}", code(rule.code))
}

fn area_of(code: &str) -> &str {
    code.split_once('.').map_or(code, |(a, _)| a)
}

fn result(rows: &[&Row]) -> String {
    if rows.is_empty() {
        return "no findings".into();
    }
    let mut parts = Vec::new();
    for (sev, one, many) in [
        (Severity::Error, "error", "errors"),
        (Severity::Warning, "warning", "warnings"),
        (Severity::Info, "info", "info"),
    ] {
        let n = rows.iter().filter(|r| r.severity.0 == sev).count();
        if n > 0 {
            parts.push(plural(n, one, many));
        }
    }
    parts.join(", ")
}

// === Markdown helpers ===

fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// `a, b and c`.
fn join<'s>(names: impl IntoIterator<Item = &'s str>) -> String {
    let names: Vec<&str> = names.into_iter().collect();
    match names.as_slice() {
        [] => String::new(),
        [one] => one.to_string(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

fn at(file: &str, line: u32) -> String {
    format!("{file}:{line}")
}

fn or_unknown(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "unknown".into())
}

fn none_if_empty(s: String) -> String {
    if s.is_empty() {
        "none".into()
    } else {
        s
    }
}

/// An inline code span that survives backticks in `s`.
fn code(s: &str) -> String {
    if s.contains('`') {
        format!("`` {s} ``")
    } else {
        format!("`{s}`")
    }
}

/// A table cell: one line, `|` escaped (GFM needs that even inside code spans).
fn cell(s: &str) -> String {
    s.replace('\r', "").replace('\n', " ").replace('|', "\\|")
}

fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let line = |cells: &mut dyn Iterator<Item = String>| {
        let cells: Vec<String> = cells.collect();
        format!("| {} |\n", cells.join(" | "))
    };
    out.push_str(&line(&mut header.iter().map(|h| cell(h))));
    out.push_str(&line(&mut header.iter().map(|_| "---".to_string())));
    for r in rows {
        out.push_str(&line(&mut r.iter().map(|c| cell(c))));
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::{check, drift};
    use fleetward_proto::{report_from_json, Report};

    use crate::fleet::tests::{SEED, SEED_POLICY};
    const SEED_POLICY_PATH: &str = "packaging/policy/seed.toml";

    fn seed_reports() -> Vec<(String, Report)> {
        SEED.iter()
            .map(|(n, json)| {
                (
                    n.to_string(),
                    report_from_json(json).expect("seed report parses"),
                )
            })
            .collect()
    }

    /// The document for `reports`, as the controller renders it.
    fn render(reports: &[(String, Report)], policy: Option<&Policy>) -> String {
        let views: Vec<NodeView> = reports
            .iter()
            .map(|(n, r)| NodeView {
                name: n,
                facts: &r.facts,
            })
            .collect();
        let findings: Vec<(String, Finding)> = reports
            .iter()
            .flat_map(|(n, r)| r.findings.iter().map(move |f| (n.clone(), f.clone())))
            .collect();
        let policy_findings = policy.map(|p| check(p, &views)).unwrap_or_default();
        markdown(&Input {
            nodes: &views,
            node_findings: &findings,
            drift: &drift(&views),
            policy: policy.map(|p| (p, Path::new(SEED_POLICY_PATH))),
            policy_findings: &policy_findings,
        })
    }

    fn seed_policy() -> Policy {
        Policy::parse(SEED_POLICY).expect("seed policy parses")
    }

    /// The lines of `doc` that are table rows of `node`.
    fn rows_of<'d>(doc: &'d str, node: &str) -> Vec<&'d str> {
        let prefix = format!("| {node} |");
        doc.lines().filter(|l| l.starts_with(&prefix)).collect()
    }

    #[test]
    fn same_input_same_bytes_in_any_order() {
        let reports = seed_reports();
        let policy = seed_policy();
        let a = render(&reports, Some(&policy));
        assert_eq!(a, render(&reports, Some(&policy)));
        let mut reversed = reports.clone();
        reversed.reverse();
        assert_eq!(a, render(&reversed, Some(&policy)));
    }

    #[test]
    fn pve_03_secure_boot_disabled_in_setup_mode() {
        let doc = render(&seed_reports(), None);
        let sb = rows_of(&doc, "pve-03")
            .into_iter()
            .find(|l| l.contains("Secure Boot disabled"))
            .expect("pve-03 has a Secure Boot cell");
        assert!(sb.contains("Platform is in Setup Mode"), "{sb}");
        for other in ["pve-01", "pve-02"] {
            let row = rows_of(&doc, other)
                .into_iter()
                .find(|l| l.contains("Secure Boot disabled"))
                .expect("row");
            assert!(!row.contains("Setup Mode"), "{row}");
        }
        assert!(doc.contains("- `boot.setup_mode`: `no` on pve-01 and pve-02; `yes` on pve-03"));
    }

    #[test]
    fn esp_sync_not_configured_is_a_fact_not_an_error() {
        let doc = render(&seed_reports(), None);
        for node in ["pve-01", "pve-02", "pve-03"] {
            let row = rows_of(&doc, node)
                .into_iter()
                .find(|l| l.contains("ESP sync."))
                .expect("ESP sync cell");
            assert!(
                row.contains(
                    "not configured (the kernel hook logs 'No /etc/kernel/proxmox-boot-uuids found, skipping ESP sync.')"
                ),
                "{row}"
            );
        }
        assert!(doc.contains("On all nodes, ESP sync is not configured: "));
        assert!(doc.contains("this is a disabled feature, not a fault"));
        assert!(doc.contains("- `boot.esp_sync`: `not configured`"));
        // The only finding about it is information, on every node; nothing is an error.
        let esp: Vec<&str> = doc
            .lines()
            .filter(|l| l.contains("boot.esp-sync-disabled"))
            .collect();
        assert_eq!(esp.len(), 3);
        assert!(esp.iter().all(|l| l.contains("| info |")), "{esp:?}");
        assert!(!doc.contains("| error |"));
        assert!(doc.contains("Findings: 0 errors, 1 warning and 9 info"));
    }

    #[test]
    fn seed_policy_is_met() {
        let doc = render(&seed_reports(), Some(&seed_policy()));
        assert!(doc.contains("Target state (`packaging/policy/seed.toml`): met on all nodes."));
        for node in ["pve-01", "pve-02", "pve-03"] {
            let row = rows_of(&doc, node)
                .into_iter()
                .find(|l| l.contains("met"))
                .expect("target-state row");
            assert_eq!(row, format!("| {node} | ✓ met | ✓ met | ✓ met |"));
        }
        assert!(doc.contains("[boot]\n"));
    }

    #[test]
    fn unmet_policy_and_drift_are_named() {
        let mut reports = seed_reports();
        let dns = &mut reports[1].1.facts.dns;
        dns.resolv_conf.nameservers = vec!["1.1.1.1".into()];
        let doc = render(&reports, Some(&seed_policy()));
        assert!(doc.contains("Drift between nodes: yes, on pve-02."));
        assert!(doc.contains("): not met on pve-02."));
        let row = rows_of(&doc, "pve-02")
            .into_iter()
            .find(|l| l.contains("✗ not met"))
            .expect("unmet row");
        assert!(
            row.starts_with("| pve-02 | ✓ met | ✓ met | ✗ not met: "),
            "{row}"
        );
        assert!(doc.contains("- `dns.nameservers`: `192.168.1.110` on pve-01 and pve-03; `1.1.1.1` on pve-02 — drift check `drift.dns`"));
    }

    #[test]
    fn no_policy_and_no_nodes() {
        let doc = render(&seed_reports(), None);
        assert!(doc.contains("Target state: no policy configured."));
        assert!(doc.contains("## Target state\n\nNo policy configured."));
        let empty = render(&[], None);
        assert!(empty.starts_with("# Cluster state: no nodes\n\nNo node has reported yet."));
        assert!(empty.contains("## Checks"));
    }

    #[test]
    fn cells_escape_pipes() {
        let mut reports = seed_reports();
        reports[0].1.findings.push(Finding {
            code: "apt.parse-error".into(),
            severity: Severity::Error,
            message: "bad | line\nnext".into(),
            path: Some("/etc/apt/sources.list".into()),
            line: Some(3),
        });
        let doc = render(&reports, None);
        assert!(doc.contains("| bad \\| line next | /etc/apt/sources.list:3 |"));
    }

    /// The seed cluster's document, reviewed; `FLEETWARD_BLESS=1` rewrites it.
    #[test]
    fn seed_report_golden() {
        let doc = render(&seed_reports(), Some(&seed_policy()));
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/seed-report.md");
        if std::env::var_os("FLEETWARD_BLESS").is_some() {
            std::fs::create_dir_all(path.parent().expect("parent")).expect("golden dir");
            std::fs::write(&path, &doc).expect("write golden");
            return;
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (bless with FLEETWARD_BLESS=1)", path.display()));
        assert!(
            doc == want,
            "the seed report differs from {} (review, then bless with FLEETWARD_BLESS=1):\n{doc}",
            path.display()
        );
    }
}
