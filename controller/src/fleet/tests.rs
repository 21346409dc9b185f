//! The fleet rules on the seed cluster's reports and the seed policy.

use super::*;
use fleetward_proto::{report_from_json, AptEntry, Facts};

pub(super) const SEED_POLICY: &str = include_str!("../../../packaging/policy/seed.toml");
pub(super) const SEED: [(&str, &str); 3] = [
    (
        "pve-01",
        include_str!("../../../agent/tests/fixtures/seed/pve-01/expected.json"),
    ),
    (
        "pve-02",
        include_str!("../../../agent/tests/fixtures/seed/pve-02/expected.json"),
    ),
    (
        "pve-03",
        include_str!("../../../agent/tests/fixtures/seed/pve-03/expected.json"),
    ),
];

fn seed() -> Vec<(String, Facts)> {
    SEED.iter()
        .map(|(name, json)| match report_from_json(json) {
            Ok(r) => (name.to_string(), r.facts),
            Err(e) => panic!("{name}: {e}"),
        })
        .collect()
}

fn views(nodes: &[(String, Facts)]) -> Vec<NodeView<'_>> {
    nodes
        .iter()
        .map(|(name, facts)| NodeView { name, facts })
        .collect()
}

fn seed_policy() -> Policy {
    match Policy::parse(SEED_POLICY) {
        Ok(p) => p,
        Err(e) => panic!("seed.toml: {e}"),
    }
}

/// (node, code) of each finding.
fn codes(findings: &[FleetFinding]) -> Vec<(&str, &str)> {
    findings
        .iter()
        .map(|f| (f.node.as_str(), f.finding.code.as_str()))
        .collect()
}

fn node<'a>(nodes: &'a mut [(String, Facts)], name: &str) -> &'a mut Facts {
    match nodes.iter_mut().find(|(n, _)| n == name) {
        Some((_, f)) => f,
        None => panic!("no node {name}"),
    }
}

/// A one-line entry in `/etc/apt/sources.list`.
fn add_sources_list_entry(f: &mut Facts, uri: &str, suite: &str, component: &str) {
    f.apt.entries.push(AptEntry {
        file: "/etc/apt/sources.list".into(),
        line: 1,
        enabled: true,
        types: vec!["deb".into()],
        uris: vec![uri.into()],
        suites: vec![suite.into()],
        components: vec![component.into()],
        ..AptEntry::default()
    });
}

#[test]
fn seed_checks_clean_and_has_no_drift() {
    let nodes = seed();
    let v = views(&nodes);
    assert_eq!(check(&seed_policy(), &v), []);
    assert_eq!(drift(&v), []);
    // Two nodes that differ in Setup Mode only: no drift either.
    assert_eq!(drift(&v[1..]), []);
}

#[test]
fn captured_policy_checks_clean_everywhere_and_round_trips() {
    let nodes = seed();
    let v = views(&nodes);
    let captured = capture(&nodes[0].1);
    assert_eq!(check(&captured, &v), []);
    for (_, f) in &nodes {
        assert_eq!(check(&capture(f), &v), []);
    }
    let text = captured.to_toml();
    assert_eq!(Policy::parse(&text), Ok(captured.clone()), "{text}");
    let seed = seed_policy();
    assert_eq!(Policy::parse(&seed.to_toml()), Ok(seed));
    // Setup Mode is not captured; Secure Boot state is.
    assert!(!text.contains("setup"), "{text}");
    assert!(text.contains("secure_boot = \"disabled\""), "{text}");
}

#[test]
fn extra_sources_list_entry() {
    let mut nodes = seed();
    add_sources_list_entry(
        node(&mut nodes, "pve-02"),
        "http://download.proxmox.com/debian/pve",
        "trixie",
        "pve-test",
    );
    let v = views(&nodes);
    let policy = check(&seed_policy(), &v);
    assert_eq!(
        codes(&policy),
        [
            ("pve-02", "policy.apt-files"),
            ("pve-02", "policy.apt-repo")
        ]
    );
    assert_eq!(
        policy[0].finding.message,
        "/etc/apt/sources.list is not empty (entries at line 1)"
    );
    assert_eq!(
        policy[1].finding.message,
        "extra repo deb http://download.proxmox.com/debian/pve trixie pve-test (/etc/apt/sources.list)"
    );
    assert_eq!(
        policy[1].finding.path.as_deref(),
        Some("/etc/apt/sources.list")
    );

    let drift = drift(&v);
    assert_eq!(codes(&drift), [("pve-02", "drift.apt")]);
    assert_eq!(
        drift[0].finding.message,
        "pve-02 differs from pve-01, pve-03: extra repo deb http://download.proxmox.com/debian/pve trixie pve-test"
    );
}

#[test]
fn duplicate_sources_list_entry_is_a_file_problem_only() {
    let mut nodes = seed();
    add_sources_list_entry(
        node(&mut nodes, "pve-01"),
        "http://deb.debian.org/debian/",
        "trixie",
        "main",
    );
    let v = views(&nodes);
    assert_eq!(
        codes(&check(&seed_policy(), &v)),
        [("pve-01", "policy.apt-files")]
    );
    // The enabled repository set is unchanged (the agent reports apt.duplicate).
    assert_eq!(drift(&v), []);
}

#[test]
fn different_nameserver() {
    let mut nodes = seed();
    let f = node(&mut nodes, "pve-03");
    f.dns.resolv_conf.nameservers = vec!["1.1.1.1".into()];
    f.dns.interfaces.nameservers = vec!["1.1.1.1".into()];
    let v = views(&nodes);
    let policy = check(&seed_policy(), &v);
    assert_eq!(codes(&policy), [("pve-03", "policy.dns")]);
    assert_eq!(
        policy[0].finding.message,
        "nameservers 1.1.1.1, policy wants 192.168.1.110"
    );
    let drift = drift(&v);
    assert_eq!(codes(&drift), [("pve-03", "drift.dns")]);
    assert_eq!(
        drift[0].finding.message,
        "pve-03 differs from pve-01, pve-02: interfaces dns-nameservers 1.1.1.1 (others: \
         192.168.1.110); nameservers 1.1.1.1 (others: 192.168.1.110)"
    );
}

#[test]
fn resolv_conf_only_nameserver_change_is_also_not_persistent() {
    let mut nodes = seed();
    node(&mut nodes, "pve-03").dns.resolv_conf.nameservers = vec!["1.1.1.1".into()];
    let v = views(&nodes);
    let policy = check(&seed_policy(), &v);
    assert_eq!(codes(&policy), [("pve-03", "policy.dns")]);
    assert_eq!(
        policy[0].finding.message,
        "nameservers 1.1.1.1, policy wants 192.168.1.110; /etc/network/interfaces \
         dns-nameservers 192.168.1.110, resolv.conf 1.1.1.1 (ifreload -a changes DNS)"
    );
}

#[test]
fn removed_disabled_reference() {
    let mut nodes = seed();
    let f = node(&mut nodes, "pve-01");
    let gone = "/etc/apt/sources.list.d/ceph.sources.disabled";
    f.apt.files.retain(|file| file.path != gone);
    f.apt.ignored_entries.retain(|e| e.file != gone);
    let v = views(&nodes);
    let policy = check(&seed_policy(), &v);
    assert_eq!(codes(&policy), [("pve-01", "policy.apt-files")]);
    assert_eq!(
        policy[0].finding.message,
        "missing ceph.sources.disabled; no disabled reference to \
         https://enterprise.proxmox.com/debian/ceph-squid"
    );
    // drift.apt compares enabled repositories only.
    assert_eq!(drift(&v), []);
}

#[test]
fn enabled_enterprise_repo() {
    let mut nodes = seed();
    let f = node(&mut nodes, "pve-02");
    let mut e = f.apt.ignored_entries[0].clone();
    e.enabled = true;
    e.file = "/etc/apt/sources.list.d/ceph.sources".into();
    f.apt.entries.push(e);
    let policy = check(&seed_policy(), &views(&nodes));
    assert_eq!(codes(&policy), [("pve-02", "policy.apt-repo")]);
    let repo = &policy[0].finding.message;
    assert!(
        repo.contains(
            "extra repo deb https://enterprise.proxmox.com/debian/ceph-squid trixie enterprise"
        ),
        "{repo}"
    );
    assert!(repo.contains("is enabled in /etc/apt/sources.list.d/ceph.sources, policy keeps it only as a disabled reference"), "{repo}");
}

#[test]
fn boot_policy_and_drift() {
    let mut nodes = seed();
    let f = node(&mut nodes, "pve-02");
    f.boot.packages.push(fleetward_proto::PackageFacts {
        name: "systemd-boot".into(),
        version: "257.8-1~deb13u2".into(),
    });
    f.boot.esp_list_exists = true;
    f.node.running_kernel = Some("6.14.11-1-pve".into());
    let v = views(&nodes);
    let policy = check(&seed_policy(), &v);
    assert_eq!(codes(&policy), [("pve-02", "policy.boot")]);
    assert_eq!(
        policy[0].finding.message,
        "package systemd-boot 257.8-1~deb13u2 installed, policy wants it absent; ESP sync \
         configured (/etc/kernel/proxmox-boot-uuids exists), policy wants not-configured"
    );
    let drift = drift(&v);
    assert_eq!(
        codes(&drift),
        [("pve-02", "drift.boot"), ("pve-02", "drift.kernel")]
    );
    assert_eq!(
        drift[0].finding.message,
        "pve-02 differs from pve-01, pve-03: ESP sync configured (others: not configured); \
         extra package systemd-boot"
    );
    assert_eq!(drift[1].finding.severity, fleetward_proto::Severity::Info);
}

#[test]
fn diff_of_two_seed_nodes_shows_identities_first() {
    let nodes = seed();
    let rows = diff(&nodes[0].1, &nodes[2].1);
    let differing: Vec<&str> = rows
        .iter()
        .take_while(|r| r.differs())
        .map(|r| r.key.as_str())
        .collect();
    assert_eq!(
        differing,
        [
            "boot.setup_mode",
            "ceph.osds",
            "dns.hosts",
            "esp[3F2A-91C4]",
            "esp[3F2C-5DE0]",
            "guest[100]",
            "guest[101]",
            "guest[103]",
            "guest[200]",
            "guest[203]",
            "guest[900]",
            "guest[901]",
            "node.boot_id",
            "node.hostname"
        ]
    );
    assert!(rows.len() > 30);
    let flat = flatten(&nodes[0].1);
    assert_eq!(
        flat.get("apt.repo[deb http://deb.debian.org/debian trixie main]")
            .map(String::as_str),
        Some("enabled")
    );
    assert_eq!(
        flat.get(
            "apt.disabled[deb https://enterprise.proxmox.com/debian/pve trixie pve-enterprise]"
        )
        .map(String::as_str),
        Some("disabled")
    );
    assert_eq!(
        flat.get("boot.secure_boot").map(String::as_str),
        Some("disabled")
    );
    assert_eq!(
        flat.get("dns.search").map(String::as_str),
        Some("fritz.box")
    );
}

/// Guests, OSDs, the monitor role and HA maintenance differ per node by nature: flattened
/// (for `node diff` and history), never drift.
#[test]
fn guests_ceph_and_ha_are_per_node_not_drift() {
    let mut nodes = seed();
    let f = node(&mut nodes, "pve-02");
    f.guests.clear();
    if let Some(ceph) = f.ceph.as_mut() {
        ceph.monitor_here = false;
        ceph.osds_here.clear();
        ceph.noout = Some(true);
    }
    f.ha.maintenance = Some(true);
    let flat = flatten(&nodes[0].1);
    assert_eq!(
        flat.get("guest[100]").map(String::as_str),
        Some("qemu running, name web-01, onboot, order 2, up 30, ha")
    );
    assert_eq!(flat.get("ceph.monitor").map(String::as_str), Some("yes"));
    assert_eq!(flat.get("ceph.osds").map(String::as_str), Some("0 1"));
    assert_eq!(flat.get("ha.resources").map(String::as_str), Some("5"));
    assert_eq!(flat.get("ha.maintenance").map(String::as_str), Some("no"));
    assert_eq!(drift(&views(&nodes)), []);
    let rows = diff(&nodes[0].1, &nodes[1].1);
    assert!(rows
        .iter()
        .any(|r| r.key == "ha.maintenance" && r.differs()));
}

/// The ingestion path's packed flatten is the map's, pair for pair, and the changes between
/// two packed flats are the changes between the packed old and the new map.
#[test]
fn packed_flatten_equals_the_map_and_its_changes() {
    let nodes = seed();
    for (name, f) in &nodes {
        let map = super::flatten(f);
        let packed = super::flatten_packed(f);
        let from_map: Vec<(&str, &str)> =
            map.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(packed.iter().collect::<Vec<_>>(), from_map, "{name}");
    }
    for pair in nodes.windows(2) {
        let (a, b) = (&pair[0].1, &pair[1].1);
        let old = super::flatten_packed(a);
        assert_eq!(
            super::changes_between(&old, &super::flatten_packed(b)),
            super::changes_since(&old, &super::flatten(b))
        );
        assert!(!super::changes_between(&old, &super::flatten_packed(b)).is_empty());
    }
}
