//! Time sync and free space.
//!
//! Free space is the file system's, as `df` shows it to an unprivileged user (`statvfs`:
//! available blocks times fragment size); no process is started. Only the live host's own
//! file systems are measured: a root that is a directory tree (a fixture, a simulated node)
//! would otherwise report the free space of whatever disk holds the tree. Such a root may
//! give its free space in `/var/lib/fleetward-sim/free-space` instead (`<path> <bytes>` per
//! line, for `/` and `/var/cache/apt/archives`); without it free space is unknown.

use super::Reader;
use crate::parse::{control::Installed, kv};
use crate::simformat;
use fleetward_proto::SystemFacts;
use std::os::unix::fs::MetadataExt;

/// Time-sync daemons corosync and Ceph can rely on (pve8to9's `check_time_sync` list, plus
/// `ntp`, which Debian migrates to `ntpsec`).
pub const TIME_SYNC_PACKAGES: &[&str] =
    &["chrony", "ntp", "ntpsec", "openntpd", "systemd-timesyncd"];

const ARCHIVES: &str = "/var/cache/apt/archives";
const GIB: u64 = 1 << 30;

pub(super) fn system(r: &mut Reader, packages: &[Installed]) -> SystemFacts {
    let mut time_sync_packages: Vec<String> = packages
        .iter()
        .filter(|p| TIME_SYNC_PACKAGES.contains(&p.name.as_str()))
        .map(|p| p.name.clone())
        .collect();
    time_sync_packages.sort();
    time_sync_packages.dedup();
    let (root_free_bytes, apt_archives_free_bytes) = if r.root.is_host() {
        host_free_space()
    } else {
        match r.text(&simformat::sim_path(simformat::FREE_SPACE)) {
            Some(t) => {
                let given = kv::free_space(&t);
                let get = |p: &str| given.iter().find(|(k, _)| k == p).map(|(_, v)| *v);
                (get("/"), get(ARCHIVES))
            }
            None => (None, None),
        }
    };
    SystemFacts {
        packages_unknown: false,
        installed_packages: 0,
        time_sync_packages,
        root_free_bytes,
        apt_archives_free_bytes,
    }
}

/// Free space of the live host, rounded down to whole GiB: the report is sent again when
/// it changes, and ordinary disk activity must not change it (the check's threshold is
/// whole GiB too).
fn host_free_space() -> (Option<u64>, Option<u64>) {
    let free = |p: &str| {
        nix::sys::statvfs::statvfs(p).ok().map(|s| {
            let bytes = s.blocks_available().saturating_mul(s.fragment_size());
            bytes - bytes % GIB
        })
    };
    let dev = |p: &str| std::fs::metadata(p).ok().map(|m| m.dev());
    let root = free("/");
    let archives = match (dev("/"), dev(ARCHIVES)) {
        (Some(a), Some(b)) if a != b => free(ARCHIVES),
        _ => None,
    };
    (root, archives)
}
