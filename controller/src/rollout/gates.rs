//! Named gates: pure functions of the [`ClusterView`] that pass or say why not.
//!
//! Unknown is never safe: a missing node, a missing vote count or an unknown quorum state
//! fails the gate.

use std::collections::BTreeSet;

use super::{ClusterView, Gate, NodeView};

/// Why a gate did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateFailure {
    pub gate: Gate,
    pub reason: String,
}

pub type GateResult = Result<(), GateFailure>;

fn fail(gate: Gate, reason: impl Into<String>) -> GateResult {
    Err(GateFailure {
        gate,
        reason: reason.into(),
    })
}

/// Error findings that make a reboot (or an upgrade that leads to one) unsafe. A trailing
/// `*` is a prefix match. A duplicate source (`apt.duplicate`) is not among them: apt only
/// warns about it and upgrades all the same.
pub const UNSAFE_FINDINGS: &[&str] = &[
    "boot.esp-*",
    "boot.kernel-hook-missing",
    "apt.parse-error",
    "apt.suite-mismatch",
    // apt's own simulation says the upgrade would remove proxmox-ve (or another core,
    // essential or running-kernel package): the node is refused at preflight.
    "upgrade.removes-protected",
];

fn is_unsafe(code: &str) -> bool {
    UNSAFE_FINDINGS.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => code.starts_with(prefix),
        None => code == *p,
    })
}

/// The node's agent acts: an observe-only agent (`fleetward-agent run --observe-only`, or
/// one inspecting a tree other than `/` without `--simulate`) refuses every action, so no
/// rollout starts on it.
pub fn acts(view: &ClusterView, node: &str) -> GateResult {
    match view.nodes.get(node) {
        Some(nv) if nv.observe_only => fail(
            Gate::ObserveOnly,
            format!("{node} is observe-only: its agent refuses every action (it runs with --observe-only, or inspects a tree other than / without --simulate)"),
        ),
        _ => Ok(()),
    }
}

/// Online, heard from recently, and has reported (a node that connected a moment ago and
/// has not sent its report yet is unknown state, not a healthy member).
fn fresh(nv: &NodeView, max_silence_ms: u64) -> bool {
    nv.online && nv.report_seq > 0 && nv.last_seen_age_ms.is_some_and(|a| a <= max_silence_ms)
}

/// The node whose turn it is is online and heard from recently.
pub fn node_reachable(view: &ClusterView, node: &str, max_silence_ms: u64) -> GateResult {
    match view.nodes.get(node) {
        Some(nv) if fresh(nv, max_silence_ms) => Ok(()),
        Some(nv) if nv.online && nv.report_seq == 0 => fail(
            Gate::NodeReachable,
            format!("{node} has not sent a report yet"),
        ),
        Some(nv) if nv.online => fail(
            Gate::NodeReachable,
            format!("{node} has not been heard from recently"),
        ),
        Some(_) => fail(Gate::NodeReachable, format!("{node} is offline")),
        None => fail(
            Gate::NodeReachable,
            format!("{node} is unknown to the controller"),
        ),
    }
}

/// Every cluster member except `node` and the nodes already `out` is online and reported
/// recently.
pub fn others_online(
    view: &ClusterView,
    node: &str,
    out: &BTreeSet<String>,
    max_silence_ms: u64,
) -> GateResult {
    for (name, nv) in &view.nodes {
        if name == node || out.contains(name) {
            continue;
        }
        if !fresh(nv, max_silence_ms) {
            return fail(
                Gate::NodesOnline,
                format!("{name} is offline, silent or has not reported yet; nothing starts on unknown state"),
            );
        }
    }
    Ok(())
}

/// The cluster is quorate, and stays quorate when `node` and every node already `out` are
/// gone: the votes of the remaining online members (plus a QDevice the driver knows is up)
/// reach `expected_votes / 2 + 1`, with the largest `expected_votes` any member reports.
///
/// The votes are the configured ones, as each agent reads them from corosync.conf: a
/// member's own `quorum_votes`, and expected votes that include the QDevice's configured
/// `votes` (or `quorum.expected_votes` when set). A QDevice's votes count as present only
/// through `ClusterView::qdevice_votes`: whether it is up is not in any file an agent reads,
/// and unknown is never safe.
pub fn quorum_margin(view: &ClusterView, node: &str, out: &BTreeSet<String>) -> GateResult {
    let mut expected: u32 = 0;
    let mut remaining: u32 = view.qdevice_votes;
    for (name, nv) in &view.nodes {
        if !nv.online {
            continue;
        }
        match nv.expected_votes {
            Some(e) => expected = expected.max(e),
            None => {
                return fail(
                    Gate::Quorum,
                    format!("{name} does not report expected votes"),
                )
            }
        }
        if out.contains(name) {
            continue;
        }
        if nv.quorate != Some(true) {
            return fail(
                Gate::Quorum,
                format!("{name} does not see a quorate cluster"),
            );
        }
        if name == node {
            continue;
        }
        match nv.votes {
            Some(v) => remaining = remaining.saturating_add(v),
            None => return fail(Gate::Quorum, format!("{name} does not report its votes")),
        }
    }
    if expected == 0 {
        return fail(Gate::Quorum, "no online member reports expected votes");
    }
    let needed = expected / 2 + 1;
    if remaining < needed {
        return fail(
            Gate::Quorum,
            format!(
                "without {node} the cluster would have {remaining} of {needed} votes needed \
                 for quorum"
            ),
        );
    }
    Ok(())
}

/// No `error` finding on the node that makes a reboot unsafe (see [`UNSAFE_FINDINGS`]).
pub fn no_unsafe_findings(view: &ClusterView, node: &str) -> GateResult {
    let Some(nv) = view.nodes.get(node) else {
        return fail(Gate::UnsafeFindings, format!("{node} has no report"));
    };
    let bad: Vec<&str> = nv
        .error_findings
        .iter()
        .map(String::as_str)
        .filter(|c| is_unsafe(c))
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        fail(
            Gate::UnsafeFindings,
            format!("{node} has error findings: {}", bad.join(", ")),
        )
    }
}

/// Ceph, where present, is healthy apart from `noout` as every online member sees it.
pub fn ceph_healthy(view: &ClusterView) -> GateResult {
    for (name, nv) in &view.nodes {
        if nv.online && nv.ceph_healthy == Some(false) {
            return fail(
                Gate::Ceph,
                format!("Ceph is not healthy as seen from {name}"),
            );
        }
    }
    Ok(())
}

/// Every ESP of the node holds the kernel that will boot.
pub fn esp_holds_next_kernel(view: &ClusterView, node: &str) -> GateResult {
    match view.nodes.get(node) {
        Some(nv) if nv.esp_holds_next_kernel && nv.next_kernel.is_some() => Ok(()),
        Some(nv) => fail(
            Gate::EspHoldsKernel,
            format!(
                "not every ESP of {node} holds the next kernel {}",
                nv.next_kernel.as_deref().unwrap_or("(unknown)")
            ),
        ),
        None => fail(Gate::EspHoldsKernel, format!("{node} has no report")),
    }
}

/// Before a node starts: its agent acts (not observe-only), it is reachable, the others are
/// online, quorum survives without it (and without the nodes already `out`), no unsafe
/// finding, Ceph healthy.
pub fn preflight(
    view: &ClusterView,
    node: &str,
    out: &BTreeSet<String>,
    max_silence_ms: u64,
) -> GateResult {
    acts(view, node)?;
    node_reachable(view, node, max_silence_ms)?;
    others_online(view, node, out, max_silence_ms)?;
    quorum_margin(view, node, out)?;
    no_unsafe_findings(view, node)?;
    ceph_healthy(view)
}

/// Right before `Reboot` is sent: the preflight conditions again (the world may have changed
/// during the upgrade, and may have brought a new unsafe finding) and every ESP holds the
/// next kernel.
pub fn pre_reboot(
    view: &ClusterView,
    node: &str,
    out: &BTreeSet<String>,
    max_silence_ms: u64,
) -> GateResult {
    preflight(view, node, out, max_silence_ms)?;
    esp_holds_next_kernel(view, node)
}

/// After the reboot: the node runs the expected kernel, sees a quorate cluster, has no
/// error finding it did not have before it started, and its guests that start on boot are
/// running again.
pub fn post_reboot(
    nv: &NodeView,
    node: &str,
    expected_kernel: Option<&str>,
    baseline: &BTreeSet<String>,
    guests: &BTreeSet<u32>,
) -> GateResult {
    if nv.running_kernel.as_deref() != expected_kernel {
        return fail(
            Gate::RunningKernel,
            format!(
                "{node} runs {} but {} was expected",
                nv.running_kernel.as_deref().unwrap_or("(unknown)"),
                expected_kernel.unwrap_or("(unknown)")
            ),
        );
    }
    if nv.quorate != Some(true) {
        return fail(
            Gate::Quorum,
            format!("{node} does not see a quorate cluster yet"),
        );
    }
    let new: Vec<&str> = nv
        .error_findings
        .difference(baseline)
        .map(String::as_str)
        .collect();
    if !new.is_empty() {
        return fail(
            Gate::NewFindings,
            format!("{node} has new error findings: {}", new.join(", ")),
        );
    }
    let missing: Vec<String> = guests
        .difference(&nv.running_guests)
        .map(u32::to_string)
        .collect();
    if !missing.is_empty() {
        return fail(
            Gate::GuestsReturned,
            format!("{node}: guests not running again: {}", missing.join(", ")),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{healthy_view, names};
    use super::*;
    use crate::rollout::view::node_view;
    use fleetward_proto::{ClusterFacts, ClusterMember, Facts, Report, SCHEMA_VERSION};

    /// A report of `me` in a cluster whose members have the given configured votes, with
    /// corosync.conf's expected votes `expected`.
    fn report(me: &str, votes: &[(&str, u32)], expected: u32) -> Report {
        let mut facts = Facts::default();
        facts.node.hostname = Some(me.to_string());
        facts.cluster = ClusterFacts {
            members_file: true,
            standalone: false,
            name: Some("c".into()),
            quorate: Some(true),
            members: votes
                .iter()
                .map(|(n, v)| ClusterMember {
                    name: (*n).to_string(),
                    id: None,
                    online: true,
                    ip: None,
                    votes: *v,
                })
                .collect(),
            expected_votes: Some(expected),
            corosync_conf: Some("/etc/pve/corosync.conf".into()),
            ..ClusterFacts::default()
        };
        Report {
            schema_version: SCHEMA_VERSION,
            facts,
            findings: Vec::new(),
        }
    }

    fn view_from_reports(votes: &[(&str, u32)], expected: u32) -> ClusterView {
        let mut view = ClusterView::default();
        for (n, _) in votes {
            let r = report(n, votes, expected);
            let mut nv = node_view(Some(&r), true, Some(0), 1);
            nv.esp_holds_next_kernel = true;
            view.nodes.insert((*n).to_string(), nv);
        }
        view
    }

    #[test]
    fn quorum_uses_configured_node_votes() {
        // pve1 carries two votes of four: without it 2 of the 3 needed remain.
        let votes = [("pve1", 2), ("pve2", 1), ("pve3", 1)];
        let view = view_from_reports(&votes, 4);
        let none = BTreeSet::new();
        assert_eq!(view.nodes["pve1"].votes, Some(2));
        let err = quorum_margin(&view, "pve1", &none).unwrap_err();
        assert_eq!(err.gate, Gate::Quorum);
        assert!(err.reason.contains("2 of 3"), "{}", err.reason);
        // Without pve2, pve1's two votes and pve3's one make the 3 needed.
        assert!(quorum_margin(&view, "pve2", &none).is_ok());
    }

    #[test]
    fn quorum_counts_the_qdevice_in_expected_votes_but_not_as_present_unless_known() {
        // Two nodes and a QDevice with one vote: expected 3, 2 needed.
        let votes = [("pve1", 1), ("pve2", 1)];
        let mut view = view_from_reports(&votes, 3);
        let none = BTreeSet::new();
        assert!(quorum_margin(&view, "pve1", &none).is_err());
        view.qdevice_votes = 1;
        assert!(quorum_margin(&view, "pve1", &none).is_ok());
    }

    #[test]
    fn a_duplicate_source_does_not_stop_a_rollout() {
        let mut view = healthy_view(&names(3));
        if let Some(nv) = view.nodes.get_mut("pve1") {
            nv.error_findings.insert("apt.duplicate".into());
        }
        assert!(no_unsafe_findings(&view, "pve1").is_ok());
        if let Some(nv) = view.nodes.get_mut("pve1") {
            nv.error_findings.insert("apt.parse-error".into());
        }
        assert!(no_unsafe_findings(&view, "pve1").is_err());
    }

    #[test]
    fn an_observe_only_node_fails_preflight_by_name() {
        let votes = [("pve1", 1), ("pve2", 1), ("pve3", 1)];
        let mut reports: Vec<Report> = votes.iter().map(|(n, _)| report(n, &votes, 3)).collect();
        reports[0].facts.agent.observe_only = true;
        let mut view = ClusterView::default();
        for r in &reports {
            let mut nv = node_view(Some(r), true, Some(0), 1);
            nv.esp_holds_next_kernel = true;
            view.nodes
                .insert(r.facts.node.hostname.clone().unwrap_or_default(), nv);
        }
        let none = BTreeSet::new();
        let err = preflight(&view, "pve1", &none, 60_000).unwrap_err();
        assert_eq!(err.gate, Gate::ObserveOnly);
        assert!(
            err.reason.contains("pve1 is observe-only"),
            "{}",
            err.reason
        );
        assert!(preflight(&view, "pve2", &none, 60_000).is_ok());
    }
}
