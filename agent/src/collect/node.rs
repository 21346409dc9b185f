//! Node identity and the cluster view.

use super::Reader;
use crate::parse::{cluster, control::Installed, kv};
use fleetward_proto::{ClusterFacts, ClusterMember, NodeFacts, OsRelease};

pub(super) fn node(r: &mut Reader, packages: &[Installed]) -> NodeFacts {
    let first = |r: &mut Reader, p: &str| r.text(p).and_then(|t| kv::first_line(&t));
    let hostname = first(r, "/proc/sys/kernel/hostname").or_else(|| first(r, "/etc/hostname"));
    let os_text = r
        .text("/etc/os-release")
        .or_else(|| r.text("/usr/lib/os-release"))
        .unwrap_or_default();
    let os = kv::os_release(&os_text);
    let get = |k: &str| os.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    let version = |name: &str| {
        packages
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.version.clone())
    };
    NodeFacts {
        hostname,
        os: OsRelease {
            id: get("ID"),
            version_id: get("VERSION_ID"),
            codename: get("VERSION_CODENAME"),
            pretty_name: get("PRETTY_NAME"),
        },
        pve_manager_version: version("pve-manager"),
        proxmox_ve_version: version("proxmox-ve"),
        running_kernel: first(r, "/proc/sys/kernel/osrelease"),
        boot_id: first(r, "/proc/sys/kernel/random/boot_id"),
        kernel_cmdline: first(r, "/proc/cmdline"),
    }
}

pub(super) fn cluster(r: &mut Reader) -> ClusterFacts {
    const MEMBERS: &str = "/etc/pve/.members";
    let Some(text) = r.text(MEMBERS) else {
        return ClusterFacts {
            standalone: true,
            ..ClusterFacts::default()
        };
    };
    let parsed = match cluster::members(&text) {
        Ok(m) => m,
        Err(e) => {
            r.unreadable(MEMBERS, e);
            return ClusterFacts {
                members_file: true,
                ..ClusterFacts::default()
            };
        }
    };
    let corosync = r
        .text("/etc/pve/corosync.conf")
        .or_else(|| r.text("/etc/corosync/corosync.conf"))
        .map(|t| cluster::corosync(&t))
        .unwrap_or_default();
    let votes_of = |name: &str| {
        corosync
            .votes
            .iter()
            .find(|(n, _)| n == name)
            .map_or(1, |(_, v)| *v)
    };
    let members: Vec<ClusterMember> = parsed
        .nodes
        .into_iter()
        .map(|m| ClusterMember {
            votes: votes_of(&m.name),
            name: m.name,
            id: m.id,
            online: m.online,
            ip: m.ip,
        })
        .collect();
    let standalone = parsed.cluster_name.is_none();
    let expected_votes = (!standalone).then(|| {
        if corosync.votes.is_empty() {
            members.iter().map(|m| m.votes).sum()
        } else {
            corosync.votes.iter().map(|(_, v)| v).sum()
        }
    });
    ClusterFacts {
        members_file: true,
        standalone,
        name: parsed.cluster_name,
        quorate: parsed.quorate,
        members,
        expected_votes,
        qdevice: corosync.qdevice,
    }
}
