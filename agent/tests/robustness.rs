//! Robustness: a truncated or binary-garbage version of every input file yields findings or
//! a documented unreadable fact, never a panic, and exit 0 or 1, never a crash.
//!
//! Every regular file of two built fixtures (the seed node pve-01, and the scenario
//! `zfs-systemd-boot` with an ESP list and two listed FAT images) is in turn truncated to
//! half its length, replaced by 4 KiB of pseudo-random bytes, emptied, and replaced by a
//! directory; the tree is inspected in-process after each mutation and restored after it.
//! A handful of key files is then garbled under the real binary.
//!
//! Unknown is never absent: for every file the agent reads in any fixture (seed or scenario),
//! the findings with the file garbled (wholly, or only its first line) are compared with the
//! findings with the file absent; a finding that the garbled file adds and that the absent
//! file also adds concludes "missing", "disabled" or "none" from a file that is there.

mod support;

use fleetward_agent::collect::collect_with_inputs;
use fleetward_agent::inspect::inspect;
use fleetward_agent::root::{text_from_bytes, FileRead, Root};
use fleetward_agent::rules::UNREADABLE_INPUT;
use fleetward_proto::Report;
use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Read};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;

const GARBAGE_BYTES: usize = 4096;

/// The fixtures mutated: a GRUB node with /boot/efi, and a systemd-boot node with two listed ESPs.
const SEED: &str = "seed/pve-01";
const ZFS: &str = "scenarios/zfs-systemd-boot";

/// Text files whose garbage the agent neither reports nor needs to, each with the reason.
/// Every other file's garbage must be named by `facts.unreadable`, by a finding's `path`, or
/// (for a FAT image) by the `error` of the ESP read from it.
fn garbage_not_an_input(node: &str) -> Option<&'static str> {
    let boot_file = node.strip_prefix("/boot/").is_some_and(|name| {
        !name.contains('/')
            && ["vmlinuz-", "initrd.img-", "config-"]
                .iter()
                .any(|p| name.starts_with(p))
    });
    if boot_file {
        return Some(
            "/boot kernel, initrd and config files: only their names are listed (installed \
             kernels); their content is never read",
        );
    }
    if node.starts_with("/var/lib/ceph/osd/ceph-") {
        return Some(
            "files in an OSD's directory: only the directory's existence (an OSD on this node) \
             is read",
        );
    }
    match node {
        "/etc/hostname" => Some(
            "shadowed by /proc/sys/kernel/hostname (the running kernel's name), which both \
             fixtures provide; /etc/hostname is read only when that is missing or empty",
        ),
        "/etc/kernel/postinst.d/zz-proxmox-boot" => Some(
            "the kernel hook is checked for existence and dpkg ownership; the script's content \
             is not an input",
        ),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mutation {
    /// Truncated to half its length (wherever that falls, UTF-8 boundary or not).
    Truncate,
    /// Replaced by 4 KiB of pseudo-random bytes.
    Garbage,
    Empty,
    /// Replaced by an (empty) directory of the same name.
    Directory,
}

const MUTATIONS: [Mutation; 4] = [
    Mutation::Truncate,
    Mutation::Garbage,
    Mutation::Empty,
    Mutation::Directory,
];

/// Deterministic pseudo-random bytes: xorshift64 seeded by the file's index.
fn garbage(index: usize) -> Vec<u8> {
    let mut x = (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(GARBAGE_BYTES);
    while out.len() < GARBAGE_BYTES {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(GARBAGE_BYTES);
    out
}

/// Every regular file under `dir` (symbolic links are not followed), sorted.
fn regular_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).expect("read built root").flatten() {
            let ft = e.file_type().expect("file type");
            if ft.is_dir() {
                todo.push(e.path());
            } else if ft.is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// `/etc/hosts` for `<root>/etc/hosts`.
fn node_path(root: &Path, real: &Path) -> String {
    let rel = real.strip_prefix(root).expect("file under the root");
    format!("/{}", rel.to_string_lossy())
}

/// Replace the file at `real` (moved aside to `backup`) by its mutation.
fn apply(real: &Path, backup: &Path, m: Mutation, index: usize) -> io::Result<()> {
    fs::rename(real, backup)?;
    match m {
        Mutation::Truncate => {
            let len = fs::metadata(backup)?.len();
            let mut half = fs::File::open(backup)?.take(len / 2);
            io::copy(&mut half, &mut fs::File::create(real)?)?;
        }
        Mutation::Garbage => fs::write(real, garbage(index))?,
        Mutation::Empty => fs::write(real, [])?,
        Mutation::Directory => fs::create_dir(real)?,
    }
    Ok(())
}

/// Put the original back.
fn restore(real: &Path, backup: &Path) {
    match fs::symlink_metadata(real) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(real).expect("remove mutated directory"),
        Ok(_) => fs::remove_file(real).expect("remove mutated file"),
        Err(_) => {}
    }
    fs::rename(backup, real).expect("restore the original file");
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string panic payload)".into())
}

/// Whether the report says that the input at `node` was bad: an unreadable fact, a finding
/// located at it, or the read error of the ESP whose device it is.
fn documented(report: &Report, node: &str) -> bool {
    let f = &report.facts;
    f.unreadable.iter().any(|u| u.path == node)
        || report
            .findings
            .iter()
            .any(|x| x.path.as_deref() == Some(node))
        || f.esps
            .iter()
            .any(|e| e.device.as_deref() == Some(node) && e.error.is_some())
}

/// Mutate every file of the built fixture in turn; the problems found, one line each.
fn mutate_every_file(fixture: &str) -> Vec<String> {
    let built = support::build(&support::fixtures_dir().join(fixture));
    let root_dir = built.path();
    let root = Root::new(root_dir);
    let baseline = inspect(&root);
    let aside = tempfile::tempdir().expect("tempdir");
    let files = regular_files(root_dir);
    let by_uuid = files
        .iter()
        .filter(|p| node_path(root_dir, p).starts_with("/dev/disk/by-uuid/"))
        .count();
    assert!(by_uuid >= 1, "{fixture}: no FAT image was built");
    assert!(
        files
            .iter()
            .any(|p| node_path(root_dir, p).contains("efivars/")),
        "{fixture}: no efivars"
    );

    let mut problems = Vec::new();
    for (index, real) in files.iter().enumerate() {
        let node = node_path(root_dir, real);
        let original = fs::read(real).expect("read original");
        let is_text = matches!(text_from_bytes(original), FileRead::Text(_));
        for m in MUTATIONS {
            let backup = aside.path().join(format!("{index}"));
            apply(real, &backup, m, index)
                .unwrap_or_else(|e| panic!("{fixture}: mutating {node} ({m:?}): {e}"));
            let result = catch_unwind(AssertUnwindSafe(|| inspect(&root)));
            restore(real, &backup);
            let report = match result {
                Ok(r) => r,
                Err(p) => {
                    let msg = panic_message(p.as_ref());
                    problems.push(format!("{fixture}: {node} {m:?}: inspect panicked: {msg}"));
                    continue;
                }
            };
            if m == Mutation::Garbage && !documented(&report, &node) {
                match garbage_not_an_input(&node) {
                    Some(_) if is_text => {}
                    _ => problems.push(format!(
                        "{fixture}: {node} ({}) replaced by garbage: neither facts.unreadable \
                         nor a finding's path names it (unreadable: {:?}, findings: {:?})",
                        if is_text { "text" } else { "binary" },
                        report.facts.unreadable,
                        report
                            .findings
                            .iter()
                            .map(|f| (&f.code, &f.path))
                            .collect::<Vec<_>>()
                    )),
                }
            }
        }
    }
    // Every mutation was undone: the tree inspects as it did before.
    assert_eq!(
        inspect(&root),
        baseline,
        "{fixture}: restoring the originals"
    );
    problems
}

#[test]
fn every_file_truncated_garbled_emptied_or_a_directory() {
    let mut problems = mutate_every_file(SEED);
    problems.extend(mutate_every_file(ZFS));
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// The garbage mutation of key inputs under the real binary: exit 0 or 1 (never 2, a
/// panic's 101 or a signal) and a JSON report on stdout that names the bad input.
#[test]
fn binary_survives_garbage_inputs() {
    let built = support::build(&support::fixtures_dir().join(SEED));
    let root_dir = built.path();
    let aside = tempfile::tempdir().expect("tempdir");
    let keys = [
        "/etc/apt/sources.list.d/debian.sources",
        "/etc/pve/.members",
        "/var/lib/dpkg/status",
        "/dev/disk/by-uuid/3F2A-91C4",
        "/etc/resolv.conf",
    ];
    for (index, node) in keys.iter().enumerate() {
        let real = root_dir.join(node.trim_start_matches('/'));
        assert!(real.is_file(), "{node} is not in the built seed");
        let backup = aside.path().join("orig");
        apply(&real, &backup, Mutation::Garbage, index).expect("mutate");
        let out = Command::new(env!("CARGO_BIN_EXE_fleetward-agent"))
            .args(["inspect", "--root"])
            .arg(root_dir)
            .args(["--format", "json"])
            .env("RUST_BACKTRACE", "1")
            .output()
            .expect("run fleetward-agent");
        restore(&real, &backup);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            matches!(out.status.code(), Some(0 | 1)),
            "{node} garbled: status {:?}, stderr:\n{stderr}",
            out.status
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{node} garbled: stdout is not JSON: {e}"));
        assert!(v["facts"].is_object(), "{node}: no facts object");
        assert!(v["findings"].is_array(), "{node}: no findings array");
        let unreadable = v["facts"]["unreadable"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let esp_error = v["facts"]["esps"].as_array().is_some_and(|esps| {
            esps.iter()
                .any(|e| e["device"] == *node && e["error"].is_string())
        });
        assert!(
            unreadable.iter().any(|u| u["path"] == *node) || esp_error,
            "{node} garbled: the report does not name it: {unreadable:?}"
        );
    }
}

/// Codes of the findings `r` has that `base` does not (the unreadable-input finding aside:
/// it is how a garbled file is documented).
fn added_codes(base: &Report, r: &Report) -> BTreeSet<String> {
    r.findings
        .iter()
        .filter(|f| f.code != UNREADABLE_INPUT && !base.findings.contains(f))
        .map(|f| f.code.clone())
        .collect()
}

/// How a present file is garbled.
#[derive(Debug, Clone, Copy)]
enum Garble {
    /// 4 KiB of pseudo-random bytes.
    Whole,
    /// A first line that is not text, the original content after it.
    FirstLine,
}

#[test]
fn garbled_input_is_never_reported_as_absent() {
    let mut fixtures = support::fixtures("seed");
    fixtures.extend(support::fixtures("scenarios"));
    let aside = tempfile::tempdir().expect("tempdir");
    let mut covered: BTreeSet<String> = BTreeSet::new();
    let mut attempted: BTreeSet<String> = BTreeSet::new();
    let mut problems = Vec::new();
    for dir in fixtures {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let built = support::build(&dir);
        let root = Root::new(built.path());
        let (_, inputs) = collect_with_inputs(&root);
        attempted.extend(inputs.iter().cloned());
        // Each input file once over all fixtures: the first fixture that has it.
        let todo: Vec<(String, PathBuf)> = inputs
            .into_iter()
            .filter(|p| !covered.contains(p))
            .filter_map(|p| {
                let real = root.resolve(&p).ok()?;
                real.is_file().then_some((p, real))
            })
            .collect();
        if todo.is_empty() {
            continue;
        }
        let baseline = inspect(&root);
        for (index, (node, real)) in todo.into_iter().enumerate() {
            covered.insert(node.clone());
            let backup = aside.path().join("orig");
            fs::rename(&real, &backup).expect("move aside");
            let absent = inspect(&root);
            let original = fs::read(&backup).expect("read original");
            for garble in [Garble::Whole, Garble::FirstLine] {
                let bytes = match garble {
                    Garble::Whole => garbage(index),
                    Garble::FirstLine => [&b"\xff\xfe\x00\x01\n"[..], &original].concat(),
                };
                fs::write(&real, bytes).expect("write garbled");
                let garbled = inspect(&root);
                let absence: Vec<String> = added_codes(&baseline, &garbled)
                    .intersection(&added_codes(&baseline, &absent))
                    .cloned()
                    .collect();
                if !absence.is_empty() {
                    problems.push(format!(
                        "{name}: {node} garbled ({garble:?}) gives what its absence gives: {absence:?}"
                    ));
                }
            }
            fs::remove_file(&real).expect("remove garbled");
            fs::rename(&backup, &real).expect("restore");
        }
        assert_eq!(inspect(&root), baseline, "{name}: restoring the originals");
    }
    // The inputs of the fixtures: configuration, package database, ESP images, package lists,
    // the kernel's files. A drop here means the walk above stopped covering them.
    for must in [
        "/etc/kernel/proxmox-boot-uuids",
        "/etc/resolv.conf",
        "/etc/hosts",
        "/etc/network/interfaces",
        "/etc/pve/.members",
        "/etc/pve/corosync.conf",
        "/var/lib/dpkg/status",
        "/var/cache/debconf/config.dat",
        "/proc/self/mountinfo",
        "/etc/kernel/proxmox-boot-pin",
        "/var/lib/dpkg/info/proxmox-kernel-helper.list",
        "/dev/disk/by-uuid/6D31-87F4",
        "/proc/net/fib_trie",
        "/var/lib/fleetward-sim/free-space",
    ] {
        assert!(
            covered.contains(must),
            "{must} was not garbled: {covered:?}"
        );
    }
    let never: Vec<&String> = attempted
        .difference(&covered)
        .filter(|p| never_in_a_fixture(p).is_none())
        .collect();
    assert!(
        never.is_empty(),
        "inputs the agent reads that no fixture holds (add a fixture or a reason): {never:?}"
    );
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// Inputs the agent tries that no fixture holds, each with why that is fine; every other
/// input is garbled in some fixture.
fn never_in_a_fixture(node: &str) -> Option<&'static str> {
    if node.starts_with("/var/lib/dpkg/info/")
        && node != "/var/lib/dpkg/info/proxmox-kernel-helper.list"
    {
        return Some(
            "other packages' file lists are searched for the kernel hook's owner when \
             proxmox-kernel-helper's does not name it: the same read and the same guard as \
             proxmox-kernel-helper.list (garbled here) and the foreign owner's list",
        );
    }
    if node.starts_with("/etc/pve/nodes/") && node.ends_with("/lrm_status") {
        return Some(
            "each node reads its own LRM status: the same read and parser as pve-01's \
             (garbled in the guests-real-node scenario)",
        );
    }
    if node.starts_with("/dev/disk/by-uuid/") {
        return Some(
            "an ESP listed without a device (boot.esp-uuid-missing): its absence is that \
             scenario; every ESP image that exists is garbled",
        );
    }
    None
}
