//! The plan (validated from a view and the configuration), the time budget, and the
//! human-readable rendering. Pure: no I/O, no clock (`now_ms` is an argument).

use std::collections::BTreeSet;

use fleetward_proto::action::{valid_node_name, Action};
use serde::{Deserialize, Serialize};

use super::{
    step_name, Config, GuestGroup, HaPlan, Plan, PlannedGuest, ShutdownView, Stage, Timing,
};

/// Why a plan was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("the view has no nodes")]
    NoNodes,
    #[error("no node is online: nothing could carry out the shutdown")]
    NoOnlineNode,
    #[error("invalid node name {0:?}")]
    InvalidNode(String),
    #[error("tier {0} is empty")]
    EmptyTier(usize),
    #[error("tier lists unknown node {0}")]
    UnknownNode(String),
    #[error("node {0} appears in two tiers")]
    Duplicate(String),
    #[error("node {0} is in no tier")]
    NotInTiers(String),
    #[error("the controller's host {0} must be alone in the last tier")]
    ControllerHostNotLast(String),
    #[error("observe-only: {} (the agent refuses every action: no shutdown is planned with it)", .0.join(", "))]
    ObserveOnly(Vec<String>),
}

/// One step of the shutdown as the plan shows it (and as the machine sends it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanStep {
    pub stage: Stage,
    pub node: String,
    pub action: Action,
}

/// The time budget, fixed when the shutdown starts. Relative bounds apply from the moment a
/// stage is entered; with a deadline, absolute latest ends are computed backwards from
/// `deadline - safety`, and a stage moves on at the earlier of the two.
///
/// Arithmetic, with `T` tiers, `W = T - 1` waits between tiers (the last tier's wait does
/// not delay any power-off), `F` flag stages (HA, noout), `G` the graceful guest budget
/// (sum over groups of the group's largest timeout plus the margin), `L = deadline -
/// safety` and `A = L - start`:
///
/// - graceful when `G + F·action + W·tier <= A` (or no deadline): every bound as configured;
/// - otherwise forced: `tier' = clamp(A/2/W, min_tier, tier)`, `flag' = clamp(A/4/F,
///   min_action, action)`, and guests get the rest, `A - W·tier' - F·flag'` (possibly 0),
///   stopped with `force` and short timeouts;
/// - latest ends: tier `i`'s wait ends at `L - (W-1-i)·tier'`, so the last power-off is due
///   at `L`; `noout` ends when tier 0 is due (`L - W·tier'`), HA `flag'` earlier, guests
///   `flag'` before that.
///
/// `fits` is false when even the minimum bounds exceed `A`; the ends are still anchored at
/// `L`, so the power-offs are still all due before the deadline, with shorter waits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    pub start_ms: u64,
    pub forced: bool,
    pub fits: bool,
    /// The whole guest-stop stage.
    pub guest_ms: u64,
    /// One flag stage (HA disarm or maintenance, noout).
    pub flag_ms: u64,
    /// One tier's wait for confirmation and disconnection.
    pub tier_ms: u64,
    pub guests_end_ms: Option<u64>,
    pub ha_end_ms: Option<u64>,
    pub noout_end_ms: Option<u64>,
    /// Latest end of tier i's wait, for i < T - 1 (empty without a deadline).
    pub tier_end_ms: Vec<u64>,
}

/// The graceful budget of one guest group: its largest timeout plus the margin.
pub(super) fn group_graceful_ms(group: &GuestGroup, timing: &Timing) -> u64 {
    let max = group
        .guests
        .iter()
        .map(|g| g.timeout_secs)
        .max()
        .unwrap_or(0);
    max.saturating_mul(1000)
        .saturating_add(timing.guest_margin_ms)
}

impl Schedule {
    /// The budget for a shutdown of `plan` starting at `start_ms`.
    pub fn compute(plan: &Plan, start_ms: u64) -> Schedule {
        let t = &plan.timing;
        let waits = plan.tiers.len().saturating_sub(1) as u64;
        let flags = 1 + u64::from(plan.noout.is_some());
        let g: u64 = plan
            .stop_groups
            .iter()
            .map(|gr| group_graceful_ms(gr, t))
            .fold(0, u64::saturating_add);
        let graceful = Schedule {
            start_ms,
            forced: false,
            fits: true,
            guest_ms: g,
            flag_ms: t.action_ms,
            tier_ms: t.tier_wait_ms,
            guests_end_ms: None,
            ha_end_ms: None,
            noout_end_ms: None,
            tier_end_ms: Vec::new(),
        };
        let Some(deadline) = plan.deadline_ms else {
            return graceful;
        };
        let l = deadline.saturating_sub(t.safety_ms);
        let a = l.saturating_sub(start_ms);
        let need = g
            .saturating_add(flags.saturating_mul(t.action_ms))
            .saturating_add(waits.saturating_mul(t.tier_wait_ms));
        let mut s = graceful;
        if need > a {
            let clamp = |v: u64, lo: u64, hi: u64| v.min(hi).max(lo.min(hi));
            s.forced = true;
            s.tier_ms = (a / 2).checked_div(waits).map_or(t.tier_wait_ms, |v| {
                clamp(v, t.min_tier_wait_ms, t.tier_wait_ms)
            });
            s.flag_ms = clamp(a / 4 / flags, t.min_action_ms, t.action_ms);
            let reserved = waits
                .saturating_mul(s.tier_ms)
                .saturating_add(flags.saturating_mul(s.flag_ms));
            s.fits = reserved <= a;
            s.guest_ms = a.saturating_sub(reserved);
        }
        let w = usize::try_from(waits).unwrap_or(usize::MAX);
        s.tier_end_ms = (0..w)
            .map(|i| {
                let after = (w - 1 - i) as u64;
                l.saturating_sub(after.saturating_mul(s.tier_ms))
            })
            .collect();
        let power_start = l.saturating_sub(waits.saturating_mul(s.tier_ms));
        let ha_end = if plan.noout.is_some() {
            s.noout_end_ms = Some(power_start);
            power_start.saturating_sub(s.flag_ms)
        } else {
            power_start
        };
        s.ha_end_ms = Some(ha_end);
        s.guests_end_ms = Some(ha_end.saturating_sub(s.flag_ms));
        s
    }

    /// How long the shutdown takes at most (until the last power-off is sent).
    pub fn expected_ms(&self, plan: &Plan) -> u64 {
        let waits = plan.tiers.len().saturating_sub(1) as u64;
        // HA, noout, and the wait for the HA watchdogs before the first tier.
        let flags = 2 + u64::from(plan.noout.is_some());
        let sum = self
            .guest_ms
            .saturating_add(flags.saturating_mul(self.flag_ms))
            .saturating_add(waits.saturating_mul(self.tier_ms));
        match plan.deadline_ms {
            Some(d) => sum.min(
                d.saturating_sub(plan.timing.safety_ms)
                    .saturating_sub(self.start_ms),
            ),
            None => sum,
        }
    }
}

/// Groups guests by order value. `descending` gives the stop order (unordered first, then
/// descending order); otherwise the start order (ascending, unordered last).
pub(super) fn group_guests(guests: Vec<PlannedGuest>, descending: bool) -> Vec<GuestGroup> {
    let mut orders: Vec<Option<u32>> = guests
        .iter()
        .map(|g| g.order)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    // BTreeSet order: None < Some(1) < Some(2) ...
    if descending {
        // None first, then Some descending.
        orders.sort_by(|a, b| match (a, b) {
            (None, None) => std::cmp::Ordering::Equal,
            (None, Some(_)) => std::cmp::Ordering::Less,
            (Some(_), None) => std::cmp::Ordering::Greater,
            (Some(x), Some(y)) => y.cmp(x),
        });
    } else {
        orders.sort_by(|a, b| match (a, b) {
            (None, None) => std::cmp::Ordering::Equal,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(_), None) => std::cmp::Ordering::Less,
            (Some(x), Some(y)) => x.cmp(y),
        });
    }
    orders
        .into_iter()
        .map(|order| {
            let mut gs: Vec<PlannedGuest> = guests
                .iter()
                .filter(|g| g.order == order)
                .cloned()
                .collect();
            gs.sort_by(|a, b| (a.vmid, &a.node).cmp(&(b.vmid, &b.node)));
            GuestGroup { order, guests: gs }
        })
        .collect()
}

impl Plan {
    /// Builds and validates the plan from the cluster view and the configuration.
    pub fn new(
        id: impl Into<String>,
        view: &ShutdownView,
        config: &Config,
        now_ms: u64,
    ) -> Result<Plan, PlanError> {
        if view.nodes.is_empty() {
            return Err(PlanError::NoNodes);
        }
        for name in view.nodes.keys() {
            valid_node_name(name).map_err(|_| PlanError::InvalidNode(name.clone()))?;
        }
        if !view.nodes.values().any(|n| n.online) {
            return Err(PlanError::NoOnlineNode);
        }
        let observe_only: Vec<String> = view
            .nodes
            .iter()
            .filter(|(_, n)| n.observe_only)
            .map(|(name, _)| name.clone())
            .collect();
        if !observe_only.is_empty() {
            return Err(PlanError::ObserveOnly(observe_only));
        }
        let host = config
            .controller_host
            .clone()
            .filter(|h| view.nodes.contains_key(h));
        let tiers = match &config.tiers {
            Some(explicit) => validate_tiers(view, explicit, host.as_deref())?,
            None => default_tiers(view, host.as_deref()),
        };
        let timing = config.timing.clone();
        let mut guests = Vec::new();
        for (node, nv) in &view.nodes {
            for g in &nv.guests {
                guests.push(PlannedGuest {
                    node: node.clone(),
                    vmid: g.vmid,
                    kind: g.kind,
                    running: g.running && nv.online,
                    onboot: g.onboot,
                    order: g.order,
                    up_secs: g.up.unwrap_or(0),
                    timeout_secs: g.down.unwrap_or(timing.default_guest_timeout_secs),
                    ha: g.ha,
                });
            }
        }
        let running: Vec<PlannedGuest> = guests.iter().filter(|g| g.running).cloned().collect();
        let stop_groups = group_guests(running, true);
        let anchor = |pred: &dyn Fn(&str) -> bool| -> Option<String> {
            tiers
                .iter()
                .rev()
                .flat_map(|t| t.iter())
                .find(|n| view.online(n) && pred(n))
                .cloned()
        };
        let ha = if view.ha_disarm_supported {
            HaPlan::Disarm {
                node: anchor(&|_| true).ok_or(PlanError::NoOnlineNode)?,
            }
        } else {
            HaPlan::Maintenance {
                nodes: tiers
                    .iter()
                    .flat_map(|t| t.iter())
                    .filter(|n| view.online(n))
                    .cloned()
                    .collect(),
            }
        };
        let is_ceph = |n: &str| view.nodes.get(n).is_some_and(|v| v.ceph_mon || v.ceph_osds);
        let is_mon = |n: &str| view.nodes.get(n).is_some_and(|v| v.ceph_mon);
        let noout = if view.nodes.keys().any(|n| is_ceph(n)) {
            anchor(&is_mon).or_else(|| anchor(&is_ceph))
        } else {
            None
        };
        let osd_nodes = view
            .nodes
            .iter()
            .filter(|(_, v)| v.ceph_osds)
            .map(|(n, _)| n.clone())
            .collect();
        let offline = view
            .nodes
            .iter()
            .filter(|(_, v)| !v.online)
            .map(|(n, _)| n.clone())
            .collect();
        Ok(Plan {
            id: id.into(),
            reason: config.reason.clone(),
            created_ms: now_ms,
            deadline_ms: config.deadline_ms,
            controller_host: host,
            stop_groups,
            ha,
            noout,
            tiers,
            guests,
            osd_nodes,
            offline,
            timing,
        })
    }

    /// Every shutdown step in the order the machine sends them. Guest-stop timeouts are
    /// those of a start at plan time: with a deadline that does not leave room for the
    /// graceful waits they are cut as the machine cuts them (the machine recomputes them
    /// from the time actually left when each group starts).
    pub fn steps(&self) -> Vec<PlanStep> {
        let schedule = Schedule::compute(self, self.created_ms);
        let groups = self.stop_groups.len().max(1) as u64;
        let share = schedule.guest_ms / groups;
        let mut out = Vec::new();
        for (i, g) in self.stop_groups.iter().enumerate() {
            let cut = schedule.guests_end_ms.is_some()
                && (schedule.forced || share < group_graceful_ms(g, &self.timing));
            for guest in &g.guests {
                let timeout_secs = if cut {
                    guest.timeout_secs.min(share / 2 / 1000)
                } else {
                    guest.timeout_secs
                };
                out.push(PlanStep {
                    stage: Stage::StopGuests { group: i },
                    node: guest.node.clone(),
                    action: Action::GuestStop {
                        vmid: guest.vmid,
                        kind: guest.kind,
                        timeout_secs,
                        force: true,
                    },
                });
            }
        }
        match &self.ha {
            HaPlan::Disarm { node } => out.push(PlanStep {
                stage: Stage::DisarmHa,
                node: node.clone(),
                action: Action::HaDisarm,
            }),
            HaPlan::Maintenance { nodes } => {
                for n in nodes {
                    out.push(PlanStep {
                        stage: Stage::DisarmHa,
                        node: n.clone(),
                        action: Action::MaintenanceOn,
                    });
                }
            }
        }
        if let Some(n) = &self.noout {
            out.push(PlanStep {
                stage: Stage::SetNoout,
                node: n.clone(),
                action: Action::CephSetNoout,
            });
        }
        for (i, tier) in self.tiers.iter().enumerate() {
            for n in tier {
                if self.offline.contains(n) {
                    continue;
                }
                out.push(PlanStep {
                    stage: Stage::PowerOff { tier: i },
                    node: n.clone(),
                    action: Action::PowerOff,
                });
            }
        }
        out
    }

    /// The plan as text lines for the CLI: header, one table row per step, the budget.
    pub fn summary(&self) -> Vec<String> {
        let schedule = Schedule::compute(self, self.created_ms);
        let mut lines = vec![format!(
            "Shutdown plan {}{}",
            self.id,
            self.reason
                .as_deref()
                .map(|r| format!(" (reason: {r})"))
                .unwrap_or_default()
        )];
        match self.deadline_ms {
            Some(d) => lines.push(format!(
                "Deadline: in {}; guest stops {}{}",
                human_ms(d.saturating_sub(self.created_ms)),
                if schedule.forced {
                    "FORCED (the graceful budget does not fit)"
                } else {
                    "graceful"
                },
                if schedule.fits {
                    ""
                } else {
                    "; WARNING: even the minimum waits do not fit"
                }
            )),
            None => lines.push("Deadline: none".to_owned()),
        }
        if !self.offline.is_empty() {
            lines.push(format!(
                "Offline now (nothing is sent to them): {}",
                self.offline.join(", ")
            ));
        }
        lines.push(format!("{:>3}  {:<24} {:<16} ACTION", "#", "STAGE", "NODE"));
        for (i, s) in self.steps().iter().enumerate() {
            lines.push(format!(
                "{:>3}  {:<24} {:<16} {}",
                i + 1,
                self.stage_label(s.stage),
                s.node,
                describe(&s.action)
            ));
        }
        if !self.tiers.is_empty() {
            lines.push(format!(
                "Before the first power-off: waits up to {} for every node's HA resource \
                 manager to release its watchdog (one still held can self-fence the node \
                 instead of powering it off).",
                human_ms(schedule.flag_ms)
            ));
        }
        // The last tier is not waited for: the duration ends with its power-off.
        lines.push(match self.tiers.len() {
            0 | 1 => "One power-off tier: nothing waits between tiers.".to_owned(),
            n => format!(
                "Each of the first {} tiers waits up to {} for its nodes to confirm and \
                 disconnect before the next tier.",
                n - 1,
                human_ms(schedule.tier_ms)
            ),
        });
        lines.push(format!(
            "Expected duration: at most {}",
            human_ms(schedule.expected_ms(self))
        ));
        lines
    }

    fn stage_label(&self, stage: Stage) -> String {
        match stage {
            Stage::StopGuests { group } => {
                match self.stop_groups.get(group).and_then(|g| g.order) {
                    Some(o) => format!("stop guests (order {o})"),
                    None => "stop guests (unordered)".to_owned(),
                }
            }
            Stage::DisarmHa => match self.ha {
                HaPlan::Disarm { .. } => "HA disarm (cluster-wide)".to_owned(),
                HaPlan::Maintenance { .. } => "HA maintenance mode".to_owned(),
            },
            Stage::SetNoout => "ceph noout".to_owned(),
            Stage::PowerOff { tier } => {
                let last = tier + 1 == self.tiers.len();
                let own = last
                    && self
                        .controller_host
                        .as_ref()
                        .is_some_and(|h| self.tiers.get(tier).is_some_and(|t| t.contains(h)));
                if own {
                    format!("power off tier {} (own)", tier + 1)
                } else {
                    format!("power off tier {}", tier + 1)
                }
            }
            other => format!("{other:?}"),
        }
    }
}

fn describe(action: &Action) -> String {
    match action {
        Action::GuestStop {
            vmid,
            kind,
            timeout_secs,
            force,
        } => format!(
            "{} {vmid} shutdown, timeout {timeout_secs} s{}",
            kind.tool(),
            if *force { " then force" } else { "" }
        ),
        Action::GuestStart { vmid, kind } => format!("{} {vmid} start", kind.tool()),
        other => step_name(other),
    }
}

fn human_ms(ms: u64) -> String {
    let s = ms / 1000;
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s} s"),
        (0, m, s) => format!("{m} min {s} s"),
        (h, m, _) => format!("{h} h {m} min"),
    }
}

fn default_tiers(view: &ShutdownView, host: Option<&str>) -> Vec<Vec<String>> {
    let not_host = |n: &&String| Some(n.as_str()) != host;
    let plain: Vec<String> = view
        .nodes
        .iter()
        .filter(|(n, v)| not_host(n) && !v.ceph_mon)
        .map(|(n, _)| n.clone())
        .collect();
    let mons: Vec<String> = view
        .nodes
        .iter()
        .filter(|(n, v)| not_host(n) && v.ceph_mon)
        .map(|(n, _)| n.clone())
        .collect();
    let own: Vec<String> = host.map(|h| vec![h.to_owned()]).unwrap_or_default();
    [plain, mons, own]
        .into_iter()
        .filter(|t| !t.is_empty())
        .collect()
}

fn validate_tiers(
    view: &ShutdownView,
    tiers: &[Vec<String>],
    host: Option<&str>,
) -> Result<Vec<Vec<String>>, PlanError> {
    let mut seen = BTreeSet::new();
    for (i, t) in tiers.iter().enumerate() {
        if t.is_empty() {
            return Err(PlanError::EmptyTier(i + 1));
        }
        for n in t {
            if !view.nodes.contains_key(n) {
                return Err(PlanError::UnknownNode(n.clone()));
            }
            if !seen.insert(n.clone()) {
                return Err(PlanError::Duplicate(n.clone()));
            }
        }
    }
    if let Some(missing) = view.nodes.keys().find(|n| !seen.contains(*n)) {
        return Err(PlanError::NotInTiers(missing.clone()));
    }
    if let Some(h) = host {
        let alone_last = tiers.last().is_some_and(|t| t.len() == 1 && t[0] == h);
        if !alone_last {
            return Err(PlanError::ControllerHostNotLast(h.to_owned()));
        }
    }
    Ok(tiers.to_vec())
}

#[cfg(test)]
mod observe_only_tests {
    use super::super::tests::five_nodes;
    use super::*;

    #[test]
    fn a_plan_with_an_observe_only_node_is_refused_by_name() {
        let mut view = five_nodes();
        if let Some(n) = view.nodes.get_mut("pve2") {
            n.observe_only = true;
        }
        let err = Plan::new("p", &view, &Config::default(), 0).unwrap_err();
        assert_eq!(err, PlanError::ObserveOnly(vec!["pve2".into()]));
        assert!(err.to_string().starts_with("observe-only: pve2"), "{err}");
    }
}
