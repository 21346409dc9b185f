//! `rollout plan`: what a rollout would do, computed now, without doing it (pure).

use std::collections::{BTreeMap, BTreeSet};

use fleetward_proto::{GuestState, Report, Upgrade};
use serde::{Deserialize, Serialize};

use super::{gates, ClusterView, NodeView, Plan, RebootPolicy};

/// The plan of a node with nothing to do in fresh lists: skipped, its guests untouched.
pub const NOTHING_TO_DO: &str =
    "nothing to do: no package to upgrade, no reboot needed (skipped; guests untouched)";

/// Rough durations behind the downtime estimate, in seconds (documented, not measured).
pub const EST_MIGRATE_PER_HA_GUEST: u64 = 60;
pub const EST_UPGRADE: u64 = 300;
pub const EST_REBOOT: u64 = 180;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DryRun {
    pub plan: Plan,
    pub nodes: Vec<NodePlan>,
    /// Nodes whose gate fails now: `rollout start` would halt at the first of them.
    pub blocked: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePlan {
    pub name: String,
    pub position: usize,
    /// The preflight gate evaluated now (with every other node in its current state).
    pub gate: Result<(), String>,
    pub steps: Vec<String>,
    pub packages: Vec<Upgrade>,
    pub reboot: bool,
    /// The kernel the node boots after the upgrade: a new kernel among the packages, else
    /// the next kernel the node reports now.
    pub next_kernel: Option<String>,
    pub guests: Vec<GuestPlan>,
    /// Rough: migrations + upgrade + reboot.
    pub downtime_secs: u64,
    /// Left out of the rollout: nothing to upgrade in lists just refreshed, no reboot.
    pub skipped: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestPlan {
    pub vmid: u32,
    pub name: Option<String>,
    pub what: String,
}

/// What `plan` would do to each node, given the view and the nodes' latest reports.
/// `lists_fresh`: the reports follow an `apt-get update` just done (`--refresh-lists`), so a
/// node with nothing to do is skipped; with older lists its turn still refreshes them and
/// upgrades what they then offer, so its maintenance cycle is planned.
pub fn dry_run(
    plan: &Plan,
    view: &ClusterView,
    reports: &BTreeMap<String, &Report>,
    lists_fresh: bool,
) -> DryRun {
    let silence = plan.timeouts.max_silence_ms;
    let mut nodes = Vec::new();
    let mut blocked = Vec::new();
    for (i, name) in plan.nodes.iter().enumerate() {
        let gate = gates::preflight(view, name, &BTreeSet::new(), silence).map_err(|f| f.reason);
        let report = reports.get(name).copied();
        let packages = report
            .map(|r| r.facts.apt.upgradable.clone())
            .unwrap_or_default();
        let nv = view.nodes.get(name);
        let reboot = reboots(plan.reboot_policy, report, nv);
        if lists_fresh && packages.is_empty() && !reboot {
            nodes.push(NodePlan {
                name: name.clone(),
                position: i + 1,
                gate,
                steps: vec![NOTHING_TO_DO.into()],
                packages,
                reboot,
                next_kernel: nv.and_then(|n| n.next_kernel.clone()),
                guests: Vec::new(),
                downtime_secs: 0,
                skipped: true,
            });
            continue;
        }
        if gate.is_err() {
            blocked.push(name.clone());
        }
        let mut steps = vec![
            "preflight gate".to_string(),
            "maintenance on (HA guests migrate away)".into(),
            "wait for HA guests to leave".into(),
            "apt-get update".into(),
            format!("apt-get dist-upgrade ({} packages)", packages.len()),
            "boot check: every ESP holds the next kernel (one proxmox-boot-tool refresh if not)"
                .into(),
        ];
        let osds = nv.is_some_and(|n| n.ceph_osds);
        if reboot && osds {
            steps.push("ceph osd set noout (this node holds OSDs)".into());
        }
        if reboot {
            steps.push("reboot, wait for a new boot id".into());
            steps.push(
                "post-reboot gate: expected kernel, quorum, no new error, guests back".into(),
            );
        }
        if reboot && osds {
            steps.push("ceph osd unset noout (unless another node still holds it)".into());
        }
        steps.push("maintenance off (HA guests return)".into());
        let guests: Vec<GuestPlan> = report
            .map(|r| r.facts.guests.as_slice())
            .unwrap_or_default()
            .iter()
            .filter(|g| g.state == GuestState::Running && g.location.is_none())
            .map(|g| GuestPlan {
                vmid: g.vmid,
                name: g.name.clone(),
                what: match (g.ha, reboot, g.onboot) {
                    (true, _, _) => "HA: migrates away with maintenance mode, returns after".into(),
                    (false, false, _) => "keeps running (no reboot)".into(),
                    (false, true, true) => "shut down by the reboot, started again on boot".into(),
                    (false, true, false) => {
                        "shut down by the reboot, STAYS STOPPED (no onboot)".into()
                    }
                },
            })
            .collect();
        let ha = guests.iter().filter(|g| g.what.starts_with("HA")).count() as u64;
        let downtime_secs =
            ha * EST_MIGRATE_PER_HA_GUEST + EST_UPGRADE + if reboot { EST_REBOOT } else { 0 };
        let next_kernel = new_kernel(&packages).or_else(|| nv.and_then(|n| n.next_kernel.clone()));
        nodes.push(NodePlan {
            name: name.clone(),
            position: i + 1,
            gate,
            steps,
            packages,
            reboot,
            next_kernel,
            guests,
            downtime_secs,
            skipped: false,
        });
    }
    DryRun {
        plan: plan.clone(),
        nodes,
        blocked,
    }
}

/// Whether the rollout reboots a node under `policy`: `if-needed` when its pending upgrade
/// or its running kernel asks for it.
fn reboots(policy: RebootPolicy, report: Option<&Report>, nv: Option<&NodeView>) -> bool {
    match policy {
        RebootPolicy::Always => true,
        RebootPolicy::Never => false,
        RebootPolicy::IfNeeded => {
            report.is_some_and(|r| r.facts.apt.upgrade_needs_reboot)
                || nv.is_some_and(|n| n.needs_reboot)
        }
    }
}

/// Whether a rollout has work on the node: a package to upgrade (as of its last package
/// lists) or a reboot `policy` asks for. A node without work is left out of the rollout.
pub fn has_work(policy: RebootPolicy, report: Option<&Report>, nv: Option<&NodeView>) -> bool {
    report.is_some_and(|r| !r.facts.apt.upgradable.is_empty()) || reboots(policy, report, nv)
}

/// A kernel among the packages: `proxmox-kernel-<version>[-signed]` (or the older
/// `pve-kernel-…`) with a version such as `6.14.11-1-pve`; the highest if several.
fn new_kernel(packages: &[Upgrade]) -> Option<String> {
    packages
        .iter()
        .filter_map(|p| {
            let v = p
                .package
                .strip_prefix("proxmox-kernel-")
                .or_else(|| p.package.strip_prefix("pve-kernel-"))?;
            let v = v.strip_suffix("-signed").unwrap_or(v);
            (v.starts_with(|c: char| c.is_ascii_digit()) && v.ends_with("-pve"))
                .then(|| v.to_string())
        })
        .max_by_key(|v| numbers(v))
}

/// `6.14.11-1-pve` → `[6, 14, 11, 1]`: kernel versions order by their numbers.
fn numbers(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(package: &str) -> Upgrade {
        Upgrade {
            package: package.into(),
            installed: "1".into(),
            candidate: "2".into(),
        }
    }

    /// A node with nothing to upgrade and no reboot is skipped: no maintenance (so no
    /// migration), no downtime, not counted as blocked; a node with work keeps its cycle.
    #[test]
    fn a_node_with_nothing_to_do_is_skipped_without_migrations() {
        use crate::rollout::tests::{healthy_view, names, plan};
        let plan = plan(3, 1);
        let mut view = healthy_view(&names(3));
        // pve2's gate fails, but it has nothing to do: it is not where a rollout would halt.
        let two = view.nodes.get_mut("pve2").unwrap();
        two.error_findings.insert("boot.esp-kernel-missing".into());
        let seed = || {
            fleetward_proto::report_from_json(include_str!(
                "../../../agent/tests/fixtures/seed/pve-01/expected.json"
            ))
            .expect("seed report")
        };
        let mut busy = seed();
        busy.facts.apt.upgradable = vec![up("proxmox-ve")];
        busy.facts.apt.upgrade_needs_reboot = false;
        let mut idle = seed();
        idle.facts.apt.upgradable.clear();
        idle.facts.apt.upgrade_needs_reboot = false;
        let reports = BTreeMap::from([
            ("pve1".to_string(), &busy),
            ("pve2".to_string(), &idle),
            ("pve3".to_string(), &busy),
        ]);
        // Lists of unknown age: pve2's turn may still find upgrades, so its cycle is planned.
        let stale = dry_run(&plan, &view, &reports, false);
        assert!(!stale.nodes[1].skipped);
        assert!(stale.nodes[1]
            .steps
            .iter()
            .any(|s| s.starts_with("maintenance on")));
        assert_eq!(stale.blocked, ["pve2"]);
        let dry = dry_run(&plan, &view, &reports, true);
        let (one, two) = (&dry.nodes[0], &dry.nodes[1]);
        assert!(!one.skipped && two.skipped);
        assert!(one.steps.iter().any(|s| s.starts_with("maintenance on")));
        assert!(one.downtime_secs > 0);
        assert_eq!(two.steps, [NOTHING_TO_DO]);
        assert_eq!((two.downtime_secs, two.guests.len()), (0, 0));
        assert!(dry.blocked.is_empty(), "{:?} {:?}", dry.blocked, one.gate);
        let policy = RebootPolicy::IfNeeded;
        assert!(has_work(policy, Some(&busy), view.nodes.get("pve1")));
        assert!(!has_work(policy, Some(&idle), view.nodes.get("pve2")));
        assert!(has_work(
            RebootPolicy::Always,
            Some(&idle),
            view.nodes.get("pve2")
        ));
        view.nodes.get_mut("pve2").unwrap().needs_reboot = true;
        assert!(has_work(policy, Some(&idle), view.nodes.get("pve2")));
        assert!(!has_work(
            RebootPolicy::Never,
            Some(&idle),
            view.nodes.get("pve2")
        ));
    }

    #[test]
    fn the_new_kernel_is_found_among_the_packages() {
        let pkgs = [
            up("proxmox-ve"),
            up("proxmox-kernel-6.14.9-1-pve-signed"),
            up("proxmox-kernel-6.14.11-1-pve-signed"),
            up("proxmox-kernel-6.14"),
            up("proxmox-kernel-helper"),
        ];
        assert_eq!(new_kernel(&pkgs).as_deref(), Some("6.14.11-1-pve"));
        assert_eq!(
            new_kernel(&[up("pve-kernel-5.15.158-2-pve")]).as_deref(),
            Some("5.15.158-2-pve")
        );
        assert_eq!(new_kernel(&[up("proxmox-ve")]), None);
    }
}
