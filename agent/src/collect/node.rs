//! Node identity and the cluster view.

use super::{Input, Reader};
use crate::parse::{cluster, control::Installed, kv};
use fleetward_proto::{ClusterFacts, ClusterMember, CorosyncNode, NodeFacts, OsRelease};

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
    let text = match r.input(MEMBERS) {
        Input::Read(t) => t,
        Input::Missing => {
            return ClusterFacts {
                standalone: true,
                ..ClusterFacts::default()
            }
        }
        // It exists: a cluster view that is unknown, not a standalone node.
        Input::Unreadable => {
            return ClusterFacts {
                members_file: true,
                ..ClusterFacts::default()
            }
        }
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
    let mut corosync_conf = None;
    let mut corosync = None;
    for path in ["/etc/pve/corosync.conf", "/etc/corosync/corosync.conf"] {
        match r.input(path) {
            Input::Missing => continue,
            Input::Read(t) => {
                corosync_conf = Some(path.to_string());
                corosync = Some(cluster::corosync(&t));
            }
            Input::Unreadable => {}
        }
        break;
    }
    // Without a readable corosync.conf the votes are unknown; members then show one vote
    // each for display, but no expected votes are claimed.
    let votes_of = |name: &str| {
        corosync
            .as_ref()
            .and_then(|c| c.nodes.iter().find(|n| n.name == name))
            .map_or(1, |n| n.votes)
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
    let c = corosync.unwrap_or_default();
    let known = corosync_conf.is_some();
    ClusterFacts {
        members_file: true,
        standalone,
        name: parsed.cluster_name,
        quorate: parsed.quorate,
        members,
        expected_votes: (!standalone && known).then(|| c.expected_votes()),
        qdevice: c.qdevice,
        qdevice_votes: c.qdevice.then(|| c.qdevice_votes()),
        corosync_conf,
        corosync_nodes: c
            .nodes
            .iter()
            .map(|n| CorosyncNode {
                name: n.name.clone(),
                votes: n.votes,
                line: n.line,
            })
            .collect(),
        quorum_expected_votes: c.expected_votes,
        two_node: c.two_node,
        quorum_line: c.quorum_line,
    }
}
