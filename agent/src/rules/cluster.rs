//! `cluster.*`: quorum as this node sees it.

use super::{is_pve, At, Findings};
use fleetward_proto::{ClusterFacts, Facts, Severity::*};
use std::collections::BTreeSet;

const MEMBERS: &str = "/etc/pve/.members";

/// Votes needed for quorum and votes present, with the configured votes: each member's
/// `quorum_votes`, the QDevice's `votes` (counted as present), `expected_votes` from
/// corosync.conf, and `two_node` (one vote of two is quorate). `None` when the votes are
/// unknown (corosync.conf unreadable, or no cluster view).
pub fn votes(c: &ClusterFacts) -> Option<(u32, u32)> {
    let expected = c.expected_votes?;
    let q = c.qdevice_votes.unwrap_or(u32::from(c.qdevice));
    let online: u32 = c
        .members
        .iter()
        .filter(|m| m.online)
        .fold(0u32, |a, m| a.saturating_add(m.votes))
        .saturating_add(q);
    let needed = if c.two_node && expected == 2 {
        1
    } else {
        expected / 2 + 1
    };
    Some((needed, online))
}

pub(super) fn check(f: &Facts, out: &mut Findings) {
    let c = &f.cluster;
    if !is_pve(f) || c.standalone || !c.members_file {
        return;
    }
    // pve8to9's `check_cluster_corosync`: "Cluster Filesystem readonly, lost quorum?!" and
    // "<n> nodes are offline!".
    if c.quorate == Some(false) {
        out.push(
            "cluster.not-quorate",
            Error,
            format!(
                "cluster '{}' is not quorate: /etc/pve is read-only",
                c.name.as_deref().unwrap_or("?")
            ),
        )
        .at(MEMBERS, None);
    }
    for m in c.members.iter().filter(|m| !m.online) {
        out.push(
            "cluster.node-offline",
            Warning,
            format!("cluster member {} is offline", m.name),
        )
        .at(MEMBERS, None);
    }
    let view_known = c.name.is_some() && !c.members.is_empty();
    if let Some((needed, online)) = votes(c).filter(|_| view_known) {
        let biggest = c
            .members
            .iter()
            .filter(|m| m.online)
            .map(|m| m.votes)
            .max()
            .unwrap_or(0);
        if online.saturating_sub(biggest) < needed {
            out.push(
                "cluster.no-vote-margin",
                Warning,
                format!("{online} votes present, {needed} needed for quorum: losing one more node loses quorum"),
            )
            .at(MEMBERS, None);
        }
    }
    let Some(conf) = c.corosync_conf.as_deref() else {
        return;
    };

    // pve8to9's `check_cluster_corosync` compares the sizes of corosync.conf's nodelist and
    // pmxcfs's; the names are compared here, which also catches a renamed node.
    if view_known {
        let corosync: BTreeSet<&str> = c.corosync_nodes.iter().map(|n| n.name.as_str()).collect();
        let members: BTreeSet<&str> = c.members.iter().map(|m| m.name.as_str()).collect();
        if corosync != members {
            let only = |a: &BTreeSet<&str>, b: &BTreeSet<&str>| {
                let v: Vec<&str> = a.difference(b).copied().collect();
                if v.is_empty() {
                    "none".to_string()
                } else {
                    v.join(", ")
                }
            };
            out.push(
                "cluster.nodelist-mismatch",
                Error,
                format!(
                    "corosync.conf's nodelist and /etc/pve/.members name different nodes (only in corosync.conf: {}; only in .members: {})",
                    only(&corosync, &members),
                    only(&members, &corosync)
                ),
            )
            .at(conf, c.corosync_nodes.iter().find(|n| !members.contains(n.name.as_str())).map(|n| n.line));
        }
    }

    // pve8to9's `check_cluster_corosync`: "non-default quorum_votes distribution detected",
    // and expected votes other than the nodes' plus the QDevice's.
    for n in c.corosync_nodes.iter().filter(|n| n.votes != 1) {
        out.push(
            "cluster.non-default-votes",
            Warning,
            format!(
                "node {} has quorum_votes {} (not 1): quorum arithmetic is not one node, one vote",
                n.name, n.votes
            ),
        )
        .at(conf, Some(n.line));
    }
    if c.quorum_expected_votes.is_some() || c.two_node {
        let mut set = Vec::new();
        if let Some(e) = c.quorum_expected_votes {
            set.push(format!("expected_votes: {e}"));
        }
        if c.two_node {
            set.push("two_node: 1".to_string());
        }
        out.push(
            "cluster.non-default-votes",
            Warning,
            format!(
                "the quorum section sets {}: quorum no longer follows the nodes' votes",
                set.join(" and ")
            ),
        )
        .at(conf, c.quorum_line);
    }
}
