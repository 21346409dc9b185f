//! Data-driven fixture tests: every directory under `tests/fixtures/{seed,scenarios}` is
//! built into a private root, inspected, and compared with the `expected.json` beside it.
//! Set `FLEETWARD_BLESS=1` to (re)write the expected files after reviewing a change.

mod support;

use fleetward_agent::{inspect::inspect, root::Root};
use fleetward_proto::{Finding, GuestState, Report, Severity};
use std::collections::BTreeSet;
use std::path::Path;

fn bless() -> bool {
    std::env::var_os("FLEETWARD_BLESS").is_some()
}

fn run(dir: &Path) -> Report {
    let root = support::build(dir);
    inspect(&Root::new(root.path()))
}

fn check_expected<
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
>(
    dir: &Path,
    actual: &T,
) {
    let path = dir.join("expected.json");
    let json = serde_json::to_string_pretty(actual).unwrap() + "\n";
    if bless() {
        std::fs::write(&path, json).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with FLEETWARD_BLESS=1 to create it)",
            path.display()
        )
    });
    assert_eq!(
        json,
        want,
        "{}: inspect output differs from expected.json",
        dir.display()
    );
}

fn codes(findings: &[Finding]) -> BTreeSet<String> {
    findings.iter().map(|f| f.code.clone()).collect()
}

/// The codes each seed node documents as found (SEED.md): ESP sync disabled everywhere,
/// the disabled enterprise references kept as ignored files, and pve-03's Setup Mode.
fn documented_seed_codes(name: &str) -> BTreeSet<String> {
    let mut c: BTreeSet<String> = ["boot.esp-sync-disabled", "apt.ignored-file"]
        .map(String::from)
        .into();
    if name == "pve-03" {
        c.insert("boot.secure-boot-setup-mode".into());
    }
    c
}

#[test]
fn seed_nodes() {
    let seeds = support::fixtures("seed");
    assert_eq!(seeds.len(), 3, "the seed cluster has three nodes");
    for dir in seeds {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let report = run(&dir);
        check_expected(&dir, &report);
        assert_eq!(
            codes(&report.findings),
            documented_seed_codes(&name),
            "{name}"
        );
        assert!(report.worst_severity() < Some(Severity::Error), "{name}");
        assert_eq!(report.facts.node.hostname.as_deref(), Some(name.as_str()));
    }
}

#[test]
fn scenarios() {
    for dir in support::fixtures("scenarios") {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let report = run(&dir);
        check_expected(&dir, &report.findings);
        // A scenario named after a code must produce it; its clean variant
        // (`<code>-clean`) must not.
        if let Some(code) = name.strip_suffix("-clean") {
            assert!(
                code.contains('.') && !codes(&report.findings).contains(code),
                "clean variant {name} produces {code}: {:?}",
                codes(&report.findings)
            );
        } else if name.contains('.') {
            assert!(
                codes(&report.findings).contains(&name),
                "scenario {name} does not produce its code: {:?}",
                codes(&report.findings)
            );
        }
    }
}

/// Every code of the catalogue (CHECKS.md) that the agent produces is shown by a scenario,
/// and none of them appears on the clean seed nodes beyond what the seed documents.
#[test]
fn every_code_has_a_scenario() {
    let catalogue = [
        "boot.secure-boot-setup-mode",
        "boot.esp-sync-disabled",
        "boot.esp-list-missing",
        "boot.esp-uuid-invalid",
        "boot.esp-uuid-missing",
        "boot.esp-kernel-missing",
        "boot.esp-diverged",
        "boot.esp-low-space",
        "boot.grub-efi-missing",
        "boot.removable-not-updated",
        "boot.systemd-boot-meta",
        "boot.systemd-boot-on-bios",
        "boot.kernel-hook-missing",
        "boot.reboot-required",
        "boot.kernel-pinned",
        "boot.efi-not-mounted",
        "apt.parse-error",
        "apt.duplicate",
        "apt.enterprise-enabled",
        "apt.test-repo",
        "apt.suite-mismatch",
        "apt.security-suite",
        "apt.no-proxmox-repo",
        "apt.legacy-format",
        "apt.ignored-file",
        "dns.no-nameserver",
        "dns.not-persistent",
        "dns.too-many-nameservers",
        "dns.hostname-loopback",
        "dns.hostname-unresolvable",
        "cluster.not-quorate",
        "cluster.node-offline",
        "cluster.no-vote-margin",
        "boot.esp-list-unterminated",
        "boot.kernel-unsuitable",
        "boot.dkms-not-built",
        "dns.hostname-not-local",
        "cluster.nodelist-mismatch",
        "cluster.non-default-votes",
        "apt.lists-unreadable",
        "apt.low-space",
        "system.no-time-sync",
    ];
    // Codes of the second round, and the corrected ones, also have a clean variant.
    let with_clean = [
        "boot.esp-list-unterminated",
        "boot.kernel-unsuitable",
        "boot.dkms-not-built",
        "dns.hostname-not-local",
        "cluster.nodelist-mismatch",
        "cluster.non-default-votes",
        "apt.lists-unreadable",
        "apt.low-space",
        "system.no-time-sync",
        "boot.systemd-boot-meta",
        "apt.parse-error",
    ];
    let scenario_names: BTreeSet<String> = support::fixtures("scenarios")
        .iter()
        .map(|d| d.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for code in catalogue {
        assert!(
            scenario_names.contains(code),
            "no scenario directory for {code}"
        );
    }
    for code in with_clean {
        assert!(
            scenario_names.contains(&format!("{code}-clean")),
            "no clean variant for {code}"
        );
    }
}

fn finding<'a>(findings: &'a [Finding], code: &str) -> Vec<&'a Finding> {
    findings.iter().filter(|f| f.code == code).collect()
}

/// pve8to9's exception: the systemd-boot meta-package is still needed on a Proxmox VE 8 node
/// whose ESPs proxmox-boot-tool keeps with systemd-boot; on Proxmox VE 9 it is an error.
#[test]
fn systemd_boot_meta_pve8_and_pve9() {
    let pve9 = run(&support::fixtures_dir().join("scenarios/systemd-boot-meta-pve9"));
    let meta = finding(&pve9.findings, "boot.systemd-boot-meta");
    assert_eq!(meta.len(), 1, "{:?}", pve9.findings);
    assert_eq!(meta[0].severity, Severity::Error);
    let pve8 = run(&support::fixtures_dir().join("scenarios/boot.systemd-boot-meta-clean"));
    assert!(finding(&pve8.findings, "boot.systemd-boot-meta").is_empty());
    assert!(pve8
        .facts
        .boot
        .packages
        .iter()
        .any(|p| p.name == "systemd-boot"));
}

/// An ESP list whose first line is not UTF-8 exists: no "not configured" finding, the bad
/// line is an unreadable line, and the next line is still judged.
#[test]
fn garbled_esp_list_is_unknown_not_absent() {
    let r = run(&support::fixtures_dir().join("scenarios/esp-list-garbled"));
    let got = codes(&r.findings);
    for absent in ["boot.esp-sync-disabled", "boot.esp-list-missing"] {
        assert!(!got.contains(absent), "{absent}: {got:?}");
    }
    let invalid = finding(&r.findings, "boot.esp-uuid-invalid");
    assert_eq!(invalid.len(), 1, "{:?}", r.findings);
    assert_eq!(invalid[0].line, Some(2));
    let bad: Vec<Option<u32>> = r
        .facts
        .unreadable
        .iter()
        .filter(|u| u.path == "/etc/kernel/proxmox-boot-uuids")
        .map(|u| u.line)
        .collect();
    assert_eq!(bad, [Some(1)]);
    assert!(r.facts.boot.esp_list_exists);
}

/// A resolv.conf with a binary line exists, and its other lines still count.
#[test]
fn garbled_resolv_conf_keeps_its_good_lines() {
    let r = run(&support::fixtures_dir().join("scenarios/resolv-conf-garbled"));
    let rc = &r.facts.dns.resolv_conf;
    assert!(rc.exists);
    assert_eq!(rc.nameservers, ["192.168.1.110"]);
    assert_eq!(rc.search, ["fritz.box"]);
    assert!(!codes(&r.findings).contains("dns.no-nameserver"));
    assert!(r
        .facts
        .unreadable
        .iter()
        .any(|u| u.path == "/etc/resolv.conf" && u.line == Some(2)));
}

/// The ESP list's last line without a newline is skipped by proxmox-boot-tool: it is
/// reported, and that ESP is not judged as a synced one.
#[test]
fn unterminated_esp_list_line_is_not_a_synced_esp() {
    let r = run(&support::fixtures_dir().join("scenarios/boot.esp-list-unterminated"));
    let f = finding(&r.findings, "boot.esp-list-unterminated");
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].line, Some(2));
    assert_eq!(r.facts.boot.esp_list, ["6D31-87F4"]);
    assert!(r
        .facts
        .esps
        .iter()
        .all(|e| e.uuid.as_deref() != Some("CE07-78FC")));
}

/// apt's package lists offer newer versions of installed packages: the facts list them with
/// the highest fitting candidate; packages not installed (a new kernel ABI), other
/// architectures and lower versions are left out; compressed indexes (`.lz4`) are decoded.
#[test]
fn upgrades_pending_facts() {
    let dir = support::fixtures_dir().join("scenarios/upgrades-pending");
    let apt = run(&dir).facts.apt;
    let got: Vec<(&str, &str, &str)> = apt
        .upgradable
        .iter()
        .map(|u| {
            (
                u.package.as_str(),
                u.installed.as_str(),
                u.candidate.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("proxmox-kernel-helper", "9.0.4", "9.0.5"),
            ("proxmox-ve", "9.0.0", "9.0.1"),
            ("pve-manager", "9.0.11", "9.0.13"),
        ]
    );
    // proxmox-ve is a reboot package (it moves the default kernel series).
    assert!(apt.upgrade_needs_reboot);
}

/// A guest configuration with bad lines: each bad line is an unreadable fact with its file
/// and line, and the guest still arrives with what the other lines say.
#[test]
fn malformed_guest_conf_keeps_the_guest() {
    let dir = support::fixtures_dir().join("scenarios/guest-conf-malformed");
    let facts = run(&dir).facts;
    let conf = "/etc/pve/nodes/pve-01/qemu-server/100.conf";
    let lines: Vec<Option<u32>> = facts
        .unreadable
        .iter()
        .filter(|u| u.path == conf)
        .map(|u| u.line)
        .collect();
    assert_eq!(lines, [Some(7), Some(8), Some(14)]);
    let g = facts
        .guests
        .iter()
        .find(|g| g.vmid == 100)
        .expect("guest 100");
    assert_eq!(g.name.as_deref(), Some("web-01"));
    assert!(!g.onboot, "the bad onboot line is not read as on");
    assert_eq!((g.order, g.up), (None, None));
    assert!(g.ha);
    assert_eq!(g.state, GuestState::Running);
    assert_eq!(facts.guests.len(), 4, "the other guests still arrive");
}

/// A real (not simulated) node: running state as Proxmox decides it (qemu-server's pid
/// file whose process is that VM's QEMU, LXC command sockets in `/proc/net/unix`),
/// HA maintenance from the manager's status, the shutdown policy from datacenter.cfg, a
/// monitor found by address in `mon_host`, and Ceph flags unknown.
#[test]
fn guests_on_a_real_node() {
    let dir = support::fixtures_dir().join("scenarios/guests-real-node");
    let facts = run(&dir).facts;
    let states: Vec<(u32, GuestState)> = facts.guests.iter().map(|g| (g.vmid, g.state)).collect();
    assert_eq!(
        states,
        [
            (100, GuestState::Running),
            // pid file left behind, its pid reused by sshd
            (101, GuestState::Stopped),
            (200, GuestState::Running),
            // a stale cgroup directory, no command socket
            (201, GuestState::Stopped),
            // no pid file
            (900, GuestState::Stopped),
        ]
    );
    assert!(facts.guests.iter().all(|g| g.config.is_some()));
    let ceph = facts.ceph.expect("ceph.conf exists");
    assert!(ceph.monitor_here);
    assert_eq!(ceph.osds_here, [0, 1]);
    assert_eq!((ceph.noout, ceph.healthy), (None, None));
    assert_eq!(facts.ha.maintenance, Some(true));
    // manager_status: `disarm.state` is `disarmed`; vm:101 failed (`error`); pve-01's LRM
    // went back to `wait_for_agent_lock` in mode `disarm`: its watchdog is released.
    assert_eq!(facts.ha.disarmed, Some(true));
    assert_eq!(facts.ha.error_resources, ["vm:101"]);
    assert_eq!(facts.ha.lrm_watchdog, Some(false));
    // ct:201 is `state ignored`: HA does not manage it.
    let ct = facts.guests.iter().find(|g| g.vmid == 201).unwrap();
    assert!(!ct.ha && ct.ha_ignored);
    assert!(facts
        .guests
        .iter()
        .any(|g| g.vmid == 100 && g.ha && !g.ha_ignored));
    assert_eq!(facts.ha.resources, 5);
    assert_eq!(facts.ha.shutdown_policy.as_deref(), Some("migrate"));
    assert!(facts.unreadable.is_empty(), "{:?}", facts.unreadable);
}

/// Without `/proc/1` or a cgroup v2 file system under the root (a plain fixture tree), the
/// agent does not guess whether a guest runs; without the simulation's state either, Ceph's
/// flags are unknown.
#[test]
fn guest_state_unknown_without_runtime() {
    let dir = support::fixtures_dir().join("scenarios/guests-real-node");
    let built = support::build(&dir);
    std::fs::remove_dir_all(built.path().join("proc/1")).unwrap();
    let facts = inspect(&Root::new(built.path())).facts;
    assert!(facts.guests.iter().all(|g| g.state == GuestState::Unknown));
}
