//! `node.left-in-maintenance` (warning): a node in HA maintenance, or a cluster with Ceph
//! `noout` set, while no operation holds the controller — what an aborted rollout (or a
//! person) left behind. Derived from the latest reports at each look, so it appears in
//! `findings` until the node reports maintenance off and noout unset.

use fleetward_proto::{Finding, Severity};

use super::{FleetFinding, NodeView};

/// The finding's code (controller-side; not one of the agent's `CHECKS.md` codes).
pub const LEFT_IN_MAINTENANCE: &str = "node.left-in-maintenance";

/// The findings for `nodes`, or none while an operation holds the controller (`held`:
/// it may have put them there and will bring them back). `noout` is cluster-wide: it is
/// reported once, on the first node (by name) that sees it set.
pub fn left_in_maintenance(nodes: &[NodeView<'_>], held: bool) -> Vec<FleetFinding> {
    if held {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut sorted: Vec<&NodeView<'_>> = nodes.iter().collect();
    sorted.sort_by_key(|n| n.name);
    let mut noout_said = false;
    for n in sorted {
        let finding = |message: String| FleetFinding {
            node: n.name.to_string(),
            finding: Finding {
                code: LEFT_IN_MAINTENANCE.into(),
                severity: Severity::Warning,
                message,
                path: None,
                line: None,
            },
        };
        if n.facts.ha.maintenance == Some(true) {
            out.push(finding(format!(
                "{} is in HA maintenance mode and no operation holds it (an aborted \
                 rollout?): `ha-manager crm-command node-maintenance disable {}`",
                n.name, n.name
            )));
        }
        if !noout_said && n.facts.ceph.as_ref().and_then(|c| c.noout) == Some(true) {
            noout_said = true;
            out.push(finding(
                "the cluster's Ceph noout flag is set and no operation holds it: \
                 `ceph osd unset noout` once every OSD is up"
                    .into(),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetward_proto::{CephFacts, Facts};

    #[test]
    fn maintenance_and_noout_left_behind_are_findings_unless_an_operation_holds_them() {
        let mut a = Facts::default();
        a.ha.maintenance = Some(true);
        let noout = CephFacts {
            monitor_here: false,
            osds_here: vec![1],
            noout: Some(true),
            healthy: None,
            osds: None,
        };
        a.ceph = Some(noout.clone());
        let b = Facts {
            ceph: Some(noout),
            ..Facts::default()
        };
        // Unknown is not "in maintenance".
        let c = Facts::default();
        let views = [
            NodeView {
                name: "pve-02",
                facts: &b,
            },
            NodeView {
                name: "pve-01",
                facts: &a,
            },
            NodeView {
                name: "pve-03",
                facts: &c,
            },
        ];
        let f = left_in_maintenance(&views, false);
        let got: Vec<(&str, bool)> = f
            .iter()
            .map(|f| (f.node.as_str(), f.finding.message.contains("noout")))
            .collect();
        assert_eq!(got, vec![("pve-01", false), ("pve-01", true)]);
        assert!(f
            .iter()
            .all(|f| f.finding.code == LEFT_IN_MAINTENANCE
                && f.finding.severity == Severity::Warning));
        assert!(left_in_maintenance(&views, true).is_empty());
    }
}
