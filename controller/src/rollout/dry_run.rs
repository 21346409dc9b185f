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
    /// `packages` is apt's own transaction (`apt-get -s dist-upgrade` on the node), NEW
    /// packages included (with an empty `installed`); false: the node's package lists
    /// compared with dpkg's status (apt was not asked: observe-only, or an older agent).
    #[serde(default)]
    pub from_apt: bool,
    /// Packages the upgrade removes (apt's transaction), `name version`.
    #[serde(default)]
    pub removed: Vec<String>,
    /// Packages apt keeps back.
    #[serde(default)]
    pub kept_back: Vec<String>,
    /// apt was asked and could not say what the upgrade does.
    #[serde(default)]
    pub apt_error: Option<String>,
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
        let apt = report.map(|r| &r.facts.apt);
        let tx = apt.and_then(|a| a.transaction.as_ref());
        let packages = packages_of(report);
        let removed: Vec<String> = tx
            .map(|t| {
                t.removed
                    .iter()
                    .map(|r| match &r.version {
                        Some(v) => format!("{} {v}", r.package),
                        None => r.package.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let kept_back = tx.map(|t| t.kept_back.clone()).unwrap_or_default();
        let apt_error = apt.and_then(|a| a.transaction_error.clone());
        let nv = view.nodes.get(name);
        let reboot = reboots(plan.reboot_policy, report, nv);
        if lists_fresh && packages.is_empty() && removed.is_empty() && !reboot {
            nodes.push(NodePlan {
                name: name.clone(),
                position: i + 1,
                gate,
                steps: vec![NOTHING_TO_DO.into()],
                packages,
                from_apt: tx.is_some(),
                removed,
                kept_back,
                apt_error,
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
            match tx {
                Some(t) => format!(
                    "apt-get dist-upgrade ({} upgraded, {} new, {} removed, {} kept back; \
                     apt's transaction, asked again right before)",
                    t.upgrades.len(),
                    t.new.len(),
                    t.removed.len(),
                    t.kept_back.len()
                ),
                None => format!("apt-get dist-upgrade ({} packages)", packages.len()),
            },
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
                what: {
                    let what: String = match (g.ha, reboot, g.onboot) {
                        (true, _, _) => {
                            "HA: migrates away with maintenance mode, returns after".into()
                        }
                        (false, false, _) => "keeps running (no reboot)".into(),
                        (false, true, true) => {
                            "shut down by the reboot, started again on boot".into()
                        }
                        (false, true, false) => {
                            "shut down by the reboot, STAYS STOPPED (no onboot)".into()
                        }
                    };
                    // An `ignored` HA resource is a guest HA will not move (pve-ha-manager
                    // `src/PVE/HA/Config.pm` `service_check_ha_state`): a non-HA guest.
                    if g.ha_ignored {
                        format!(
                            "non-HA (HA resource in state ignored: HA will not move it): {what}"
                        )
                    } else {
                        what
                    }
                },
            })
            .collect();
        let ha = guests.iter().filter(|g| g.what.starts_with("HA")).count() as u64;
        let downtime_secs =
            ha * EST_MIGRATE_PER_HA_GUEST + EST_UPGRADE + if reboot { EST_REBOOT } else { 0 };
        // apt's transaction knows the kernel that boots after it (pins respected); without
        // it, a new kernel among the upgradable packages, else the node's next kernel now.
        let next_kernel = match tx {
            Some(t) => t
                .kernel_after
                .clone()
                .or_else(|| nv.and_then(|n| n.next_kernel.clone())),
            None => new_kernel(&packages).or_else(|| nv.and_then(|n| n.next_kernel.clone())),
        };
        nodes.push(NodePlan {
            name: name.clone(),
            position: i + 1,
            gate,
            steps,
            packages,
            from_apt: tx.is_some(),
            removed,
            kept_back,
            apt_error,
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
            let tx_reboot = report
                .and_then(|r| r.facts.apt.transaction.as_ref())
                .is_some_and(|t| {
                    t.upgrades
                        .iter()
                        .chain(&t.new)
                        .any(|u| fleetward_proto::upgrade_needs_reboot(&u.package))
                });
            report.is_some_and(|r| r.facts.apt.upgrade_needs_reboot)
                || tx_reboot
                || nv.is_some_and(|n| n.needs_reboot)
        }
    }
}

/// What the upgrade installs: apt's transaction (upgrades and NEW packages) when the
/// agent asked apt, else what the node's lists offer against dpkg's status.
fn packages_of(report: Option<&Report>) -> Vec<Upgrade> {
    let apt = report.map(|r| &r.facts.apt);
    match apt.and_then(|a| a.transaction.as_ref()) {
        Some(t) => t.upgrades.iter().chain(&t.new).cloned().collect(),
        None => apt.map(|a| a.upgradable.clone()).unwrap_or_default(),
    }
}

/// Whether a rollout has work on the node: a package to upgrade or remove (as of its last
/// package lists) or a reboot `policy` asks for. A node without work is left out.
pub fn has_work(policy: RebootPolicy, report: Option<&Report>, nv: Option<&NodeView>) -> bool {
    let removes = report
        .and_then(|r| r.facts.apt.transaction.as_ref())
        .is_some_and(|t| !t.removed.is_empty());
    !packages_of(report).is_empty() || removes || reboots(policy, report, nv)
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

    /// With apt's transaction in the report, the plan lists its upgrades and NEW packages,
    /// its removals and kept-back packages, and the kernel after it; without, the lists.
    fn by_ref(m: &BTreeMap<String, Report>) -> BTreeMap<String, &Report> {
        m.iter().map(|(k, v)| (k.clone(), v)).collect()
    }

    #[test]
    fn the_plan_follows_apts_transaction() {
        use fleetward_proto::{AptTransaction, Removal, SCHEMA_VERSION};
        let plan = crate::rollout::tests::plan(1, 1);
        let view = crate::rollout::tests::healthy_view(&plan.nodes);
        let mut report = Report {
            schema_version: SCHEMA_VERSION,
            facts: Default::default(),
            findings: vec![],
        };
        report.facts.apt.upgradable = vec![up("pve-manager")];
        let reports = |r: &Report| BTreeMap::from([("pve1".to_string(), r.clone())]);
        let one = |d: &DryRun| d.nodes[0].clone();
        let m = reports(&report);
        let lists = one(&dry_run(&plan, &view, &by_ref(&m), false));
        assert!(!lists.from_apt);
        assert_eq!(lists.packages, [up("pve-manager")]);
        assert_eq!(lists.next_kernel.as_deref(), Some("6.8.12-1-pve"));

        report.facts.apt.transaction = Some(AptTransaction {
            upgrades: vec![up("pve-manager")],
            new: vec![Upgrade {
                package: "proxmox-kernel-6.14.11-1-pve-signed".into(),
                installed: String::new(),
                candidate: "6.14.11-1".into(),
            }],
            removed: vec![Removal {
                package: "proxmox-ve".into(),
                version: Some("9.0.0".into()),
                essential: false,
            }],
            kept_back: vec!["pve-firmware".into()],
            kernel_after: Some("6.14.11-1-pve".into()),
        });
        let m = reports(&report);
        let tx = one(&dry_run(&plan, &view, &by_ref(&m), false));
        assert!(tx.from_apt);
        assert_eq!(tx.packages.len(), 2);
        assert_eq!(tx.removed, ["proxmox-ve 9.0.0"]);
        assert_eq!(tx.kept_back, ["pve-firmware"]);
        assert_eq!(tx.next_kernel.as_deref(), Some("6.14.11-1-pve"));
        assert!(tx.reboot, "a new kernel needs a reboot");
    }

    /// An HA resource in state `ignored` is a guest HA will not move: the plan lists it as
    /// a non-HA guest (what the reboot does to it), not as one that migrates away.
    #[test]
    fn an_ignored_ha_resource_is_planned_as_a_non_ha_guest() {
        use fleetward_proto::action::GuestKind;
        use fleetward_proto::{GuestFacts, GuestState, SCHEMA_VERSION};
        let plan = crate::rollout::tests::plan(1, 1);
        let mut view = crate::rollout::tests::healthy_view(&plan.nodes);
        view.nodes.get_mut("pve1").unwrap().needs_reboot = true;
        let guest = |vmid, ha, ha_ignored, onboot| GuestFacts {
            vmid,
            kind: GuestKind::Qemu,
            name: None,
            onboot,
            order: None,
            up: None,
            down: None,
            ha,
            state: GuestState::Running,
            location: None,
            config: None,
            ha_ignored,
        };
        let mut report = Report {
            schema_version: SCHEMA_VERSION,
            facts: Default::default(),
            findings: vec![],
        };
        report.facts.apt.upgradable = vec![up("pve-manager")];
        report.facts.guests = vec![
            guest(100, true, false, true),
            guest(101, false, true, false),
            guest(102, false, false, true),
        ];
        let m = BTreeMap::from([("pve1".to_string(), report)]);
        let dry = dry_run(&plan, &view, &by_ref(&m), false);
        let what: Vec<(u32, &str)> = dry.nodes[0]
            .guests
            .iter()
            .map(|g| (g.vmid, g.what.as_str()))
            .collect();
        assert_eq!(
            what,
            [
                (
                    100,
                    "HA: migrates away with maintenance mode, returns after"
                ),
                (
                    101,
                    "non-HA (HA resource in state ignored: HA will not move it): shut down \
                     by the reboot, STAYS STOPPED (no onboot)"
                ),
                (102, "shut down by the reboot, started again on boot"),
            ]
        );
    }
}
