//! `inspect`'s view of pending upgrades against apt's own (issue #13, item 3):
//!
//! - the same package lists stored plain, as `.lz4` and as `.gz` give the same upgradable set;
//! - on a Debian build host, `inspect /` agrees with `apt-get -s dist-upgrade` (read-only,
//!   `-o Debug::NoLocking=1`, C locale) on which packages are upgradable and to which
//!   versions. Skipped, with a message, where there is no apt or dpkg.

mod support;

use fleetward_agent::parse::{apt_sim, compressed};
use fleetward_agent::{inspect::inspect, root::Root};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

const LISTS: &str = "var/lib/apt/lists";

fn upgradable(root: &Path) -> Vec<(String, String, String)> {
    let report = inspect(&Root::new(root));
    assert!(
        report.facts.apt.unreadable_lists.is_empty(),
        "{:?}",
        report.facts.apt.unreadable_lists
    );
    report
        .facts
        .apt
        .upgradable
        .iter()
        .map(|u| (u.package.clone(), u.installed.clone(), u.candidate.clone()))
        .collect()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
    out.extend(miniz_oxide::deflate::compress_to_vec(data, 6));
    out.extend(crc32fast::hash(data).to_le_bytes());
    out.extend((data.len() as u32).to_le_bytes());
    out
}

fn lz4(data: &[u8]) -> Vec<u8> {
    let mut enc = lz4_flex::frame::FrameEncoder::new(Vec::new());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// Rewrites every package list under `root` as `ext` (`""`: plain).
fn recompress(root: &Path, ext: &str) {
    let dir = root.join(LISTS);
    let paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    for path in paths {
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let Some(c) = compressed::by_name(&name) else {
            continue;
        };
        let plain = compressed::decode(c, &std::fs::read(&path).unwrap(), 1 << 30).unwrap();
        let stem = name
            .strip_suffix(&format!(".{}", name.rsplit('.').next().unwrap()))
            .filter(|_| c != compressed::Compression::None)
            .unwrap_or(&name)
            .to_owned();
        std::fs::remove_file(&path).unwrap();
        let (bytes, file) = match ext {
            "" => (plain, stem),
            "lz4" => (lz4(&plain), format!("{stem}.lz4")),
            "gz" => (gzip(&plain), format!("{stem}.gz")),
            _ => unreachable!(),
        };
        // A stem seen twice (the fixture keeps a plain and an .lz4 list of one name, with
        // different contents): keep both, under another name.
        let file = if dir.join(&file).exists() {
            format!("x{file}")
        } else {
            file
        };
        std::fs::write(dir.join(file), bytes).unwrap();
    }
}

#[test]
fn compressed_lists_give_the_same_upgradable_set() {
    let fixture = support::fixtures_dir().join("scenarios/upgrades-pending");
    let mut sets = BTreeMap::new();
    for ext in ["", "lz4", "gz"] {
        let root = support::build(&fixture);
        recompress(root.path(), ext);
        let names: Vec<String> = std::fs::read_dir(root.path().join(LISTS))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names
                .iter()
                .filter(|n| n.contains("_Packages"))
                .all(|n| ext.is_empty() || n.ends_with(ext)),
            "{names:?}"
        );
        sets.insert(ext, upgradable(root.path()));
    }
    assert!(!sets[""].is_empty());
    assert_eq!(sets[""], sets["lz4"]);
    assert_eq!(sets[""], sets["gz"]);
}

/// On this machine: `inspect /` and apt's simulation agree (packages and candidate
/// versions). apt may keep packages back that the lists offer (dependencies), so those are
/// compared by name only. Read-only: apt simulates without a lock; nothing is changed.
#[test]
fn on_a_debian_host_inspect_agrees_with_apt_get_simulate() {
    if !Path::new("/usr/bin/apt-get").exists() || !Path::new("/var/lib/dpkg/status").exists() {
        eprintln!("skipped: not a Debian/apt host (no /usr/bin/apt-get or dpkg status)");
        return;
    }
    let out = std::process::Command::new("/usr/bin/apt-get")
        .args(apt_sim::SIMULATE_ARGS)
        .env("LC_ALL", "C")
        .output()
        .expect("apt-get -s");
    if !out.status.success() {
        eprintln!(
            "skipped: apt-get -s dist-upgrade failed here: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let sim = apt_sim::parse(&String::from_utf8_lossy(&out.stdout));
    let name = |p: &str| p.split(':').next().unwrap_or(p).to_owned();
    let apt: BTreeMap<String, String> = sim
        .upgrades
        .iter()
        .map(|u| (name(&u.package), u.candidate.clone()))
        .collect();
    let ours: BTreeMap<String, String> = upgradable(Path::new("/"))
        .into_iter()
        .map(|(p, _, c)| (p, c))
        .collect();
    // Everything apt upgrades, inspect lists, at the same version.
    for (p, v) in &apt {
        assert_eq!(
            ours.get(p),
            Some(v),
            "apt upgrades {p} to {v}; inspect says {:?}",
            ours.get(p)
        );
    }
    // Everything inspect lists, apt upgrades or keeps back.
    for p in ours.keys() {
        assert!(
            apt.contains_key(p) || sim.kept_back.iter().any(|k| name(k) == *p),
            "inspect lists {p} as upgradable, apt neither upgrades nor keeps it back"
        );
    }
    eprintln!(
        "inspect and apt agree on {} upgradable package(s) ({} kept back)",
        apt.len(),
        sim.kept_back.len()
    );
}

/// apt's transaction in a report: the removal of proxmox-ve is an error finding (the rollout
/// refuses the node), packages kept back an info; the kernel after it is the NEW kernel.
#[test]
fn the_transaction_is_judged() {
    use fleetward_proto::Severity;
    let fixture = support::fixtures_dir().join("scenarios/upgrades-pending");
    let root = support::build(&fixture);
    let mut report = inspect(&Root::new(root.path()));
    assert!(
        report.facts.apt.transaction.is_none(),
        "inspect asks no apt"
    );
    let text = "The following packages have been kept back:\n  pve-manager\n\
                Remv proxmox-ve [9.0.0]\n\
                Inst proxmox-kernel-6.14.11-1-pve-signed (6.14.11-1 Proxmox:9.0/stable [amd64])\n";
    fleetward_agent::inspect::with_transaction(&mut report, Ok(apt_sim::parse(text)));
    let codes: Vec<(&str, Severity)> = report
        .findings
        .iter()
        .filter(|f| f.code.starts_with("upgrade."))
        .map(|f| (f.code.as_str(), f.severity))
        .collect();
    assert_eq!(
        codes,
        [
            ("upgrade.removes-protected", Severity::Error),
            ("upgrade.held-back", Severity::Info)
        ]
    );
    let t = report.facts.apt.transaction.as_ref().unwrap();
    assert_eq!(t.kernel_after.as_deref(), Some("6.14.11-1-pve"));
    // apt failing: no transaction, the reason kept, no upgrade finding.
    fleetward_agent::inspect::with_transaction(&mut report, Err("exit 100".into()));
    assert!(report.facts.apt.transaction.is_none());
    assert_eq!(
        report.facts.apt.transaction_error.as_deref(),
        Some("exit 100")
    );
    assert!(!report
        .findings
        .iter()
        .any(|f| f.code.starts_with("upgrade.")));
}
