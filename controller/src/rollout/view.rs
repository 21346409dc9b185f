//! What the machine knows about a node, derived from its latest report (pure).

use std::collections::BTreeSet;

use fleetward_proto::{EspSource, GuestState, Report, Severity};

use super::NodeView;

/// Where the HA manager keeps the services' states; the agent names it when it is unreadable.
const HA_MANAGER_STATUS: &str = "/etc/pve/ha/manager_status";

/// Builds a node's view from its latest report and its session's liveness.
///
/// - `next_kernel`/`running_kernel`/`boot_id`: from the report's facts.
/// - `esp_holds_next_kernel`: where proxmox-boot-tool keeps ESPs in sync (the ESP list
///   exists), every listed ESP is present and holds the next kernel; otherwise (GRUB reading
///   `/boot`) the next kernel is installed in `/boot`. Unknown next kernel → false.
/// - `observe_only`: the agent says it refuses every action.
/// - `ceph_healthy`: `None` without Ceph; health the agent cannot know (a real node, which
///   would need `ceph -s`) counts as **not** healthy: a rollout does not proceed on unknown
///   state.
pub fn node_view(
    report: Option<&Report>,
    online: bool,
    last_seen_age_ms: Option<u64>,
    report_seq: u64,
) -> NodeView {
    let mut nv = NodeView {
        online,
        last_seen_age_ms,
        report_seq,
        ..NodeView::default()
    };
    let Some(r) = report else { return nv };
    let f = &r.facts;
    nv.observe_only = f.agent.observe_only;
    nv.ha_maintenance = f.ha.maintenance;
    nv.ha_errors = f.ha.error_resources.clone();
    nv.ha_errors_unknown = f.unreadable.iter().any(|u| u.path == HA_MANAGER_STATUS);
    nv.noout = f.ceph.as_ref().and_then(|c| c.noout);
    nv.osds_up_in = f.ceph.as_ref().and_then(|c| c.osds).map(|o| o.all_up_in());
    nv.boot_id = f.node.boot_id.clone();
    nv.running_kernel = f.node.running_kernel.clone();
    nv.next_kernel = f.boot.next_kernel.clone();
    nv.needs_reboot = f.boot.reboot_required;
    nv.esp_holds_next_kernel = match &nv.next_kernel {
        None => false,
        // GRUB from /boot (ESP sync not configured): the kernel must be in /boot.
        Some(k) if !f.boot.esp_list_exists => f.boot.installed_kernels.contains(k),
        // proxmox-boot-tool: every listed ESP is present and holds it.
        Some(k) => {
            let listed: Vec<_> = f
                .esps
                .iter()
                .filter(|e| e.source == EspSource::EspList)
                .collect();
            !listed.is_empty() && listed.iter().all(|e| e.present && e.kernels.contains(k))
        }
    };
    nv.quorate = f.cluster.quorate.or(f.cluster.standalone.then_some(true));
    let host = f
        .node
        .hostname
        .as_deref()
        .map(|h| h.split('.').next().unwrap_or(h));
    nv.votes = f
        .cluster
        .members
        .iter()
        .find(|m| Some(m.name.as_str()) == host)
        .map(|m| m.votes);
    nv.expected_votes = f.cluster.expected_votes;
    nv.error_findings = r
        .findings
        .iter()
        .filter(|x| x.severity == Severity::Error)
        .map(|x| x.code.clone())
        .collect();
    nv.ceph_healthy = f.ceph.as_ref().map(|c| c.healthy.unwrap_or(false));
    nv.ceph_osds = f.ceph.as_ref().is_some_and(|c| !c.osds_here.is_empty());
    nv.running_guests = f
        .guests
        .iter()
        .filter(|g| g.state == GuestState::Running && g.location.is_none())
        .map(|g| g.vmid)
        .collect();
    nv.onboot_local_guests = f
        .guests
        .iter()
        .filter(|g| g.onboot && !g.ha)
        .map(|g| g.vmid)
        .collect::<BTreeSet<u32>>();
    nv
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetward_proto::{Facts, Unreadable, SCHEMA_VERSION};

    /// Errors in HA resources are unknown, not absent, when the report could not read the
    /// HA manager's status; any other unreadable file leaves them known.
    #[test]
    fn an_unreadable_manager_status_makes_ha_errors_unknown() {
        let report = |path: &str| Report {
            schema_version: SCHEMA_VERSION,
            facts: Facts {
                unreadable: vec![Unreadable {
                    path: path.into(),
                    line: None,
                    reason: "not JSON".into(),
                }],
                ..Facts::default()
            },
            findings: Vec::new(),
        };
        let nv = node_view(Some(&report(HA_MANAGER_STATUS)), true, Some(0), 1);
        assert!(nv.ha_errors_unknown && nv.ha_errors.is_empty());
        let nv = node_view(Some(&report("/etc/pve/ha/resources.cfg")), true, Some(0), 1);
        assert!(!nv.ha_errors_unknown);
    }
}
