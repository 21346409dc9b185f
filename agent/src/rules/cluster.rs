//! `cluster.*`: quorum as this node sees it.

use super::{is_pve, At, Findings};
use fleetward_proto::{ClusterFacts, Facts, Severity::*};

const MEMBERS: &str = "/etc/pve/.members";

/// Votes needed for quorum and votes present, counting a QDevice as one vote.
pub fn votes(c: &ClusterFacts) -> (u32, u32) {
    let q = u32::from(c.qdevice);
    let expected = c.expected_votes.unwrap_or(c.members.len() as u32) + q;
    let online: u32 = c
        .members
        .iter()
        .filter(|m| m.online)
        .map(|m| m.votes)
        .sum::<u32>()
        + q;
    (expected / 2 + 1, online)
}

pub(super) fn check(f: &Facts, out: &mut Findings) {
    let c = &f.cluster;
    if !is_pve(f) || c.standalone || !c.members_file {
        return;
    }
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
    let (needed, online) = votes(c);
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
