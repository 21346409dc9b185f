//! The transition function. Level-triggered: `step` applies the event, then re-evaluates
//! the current stage against the view and moves on as far as it can, so a lost wake-up never
//! blocks progress and a duplicated event finds nothing left to do.

use fleetward_proto::action::Action;

use super::plan::{group_graceful_ms, group_guests};
use super::{
    step_name, Command, Event, GuestGroup, HaPlan, Notice, Outcome, Schedule, Sent, ShutdownState,
    ShutdownView, Stage, UpReason, MAX_ATTEMPTS,
};

/// Bound on stage changes in one step (there are fewer stages than this in any plan that
/// fits in memory; it only guards against a bug looping).
const MAX_TRANSITIONS: usize = 10_000;
/// Action output kept in a notice.
const MAX_OUTPUT_CHARS: usize = 300;

/// The shutdown/startup transition function: pure, total, deterministic.
///
/// The caller persists the returned state before it sends the returned commands.
pub fn step(
    state: &ShutdownState,
    event: &Event,
    view: &ShutdownView,
) -> (ShutdownState, Vec<Command>) {
    let mut m = Machine {
        s: state.clone(),
        out: Vec::new(),
        view,
    };
    m.s.now_ms = m.s.now_ms.max(view.now_ms);
    m.apply(event);
    m.advance();
    (m.s, m.out)
}

struct Machine<'v> {
    s: ShutdownState,
    out: Vec<Command>,
    view: &'v ShutdownView,
}

impl Machine<'_> {
    fn notify(&mut self, notice: Notice) {
        self.out.push(Command::Notify(notice));
    }

    fn schedule(&self) -> Schedule {
        self.s
            .schedule
            .clone()
            .unwrap_or_else(|| Schedule::compute(&self.s.plan, self.s.now_ms))
    }

    fn plan_nodes(&self) -> impl Iterator<Item = &String> {
        self.s.plan.tiers.iter().flatten()
    }

    fn refuse(&mut self, reason: impl Into<String>) {
        self.notify(Notice::Refused {
            reason: reason.into(),
        });
    }

    fn apply(&mut self, event: &Event) {
        match event {
            Event::Start { now_ms } => {
                if self.s.stage != Stage::Planned {
                    self.refuse("the shutdown has already started");
                    return;
                }
                self.s.now_ms = self.s.now_ms.max(*now_ms);
                let schedule = Schedule::compute(&self.s.plan, self.s.now_ms);
                let forced = schedule.forced;
                self.s.schedule = Some(schedule);
                self.notify(Notice::Started { forced });
                let next = self.next(Stage::Planned);
                self.enter(next);
            }
            Event::Tick { now_ms } => self.s.now_ms = self.s.now_ms.max(*now_ms),
            Event::CommandResult { key, ok, output } => self.on_result(key, *ok, output),
            Event::NodeChanged { .. } => {}
            Event::Cancel | Event::PowerRestored => {
                let reason = if *event == Event::Cancel {
                    UpReason::Cancel
                } else {
                    UpReason::PowerRestored
                };
                let stage = self.s.stage;
                if stage == Stage::Planned {
                    self.s.up_reason = Some(reason);
                    self.s.stage = Stage::Finished;
                    self.notify(Notice::Cancelled { reason });
                    self.notify(Notice::Finished);
                } else if stage.is_shutdown() && !self.s.no_return {
                    self.s.up_reason = Some(reason);
                    self.notify(Notice::Cancelled { reason });
                    self.s.start_groups = self.restore_groups(false);
                    let next = self.next_up(None);
                    self.enter(next);
                } else if stage.is_shutdown() || stage == Stage::Down {
                    self.refuse(
                        "cancel refused: a node has already been powered off (point of no \
                         return); the shutdown continues. Run `fleetward startup` when power \
                         is back",
                    );
                } else {
                    self.refuse("nothing to cancel: no shutdown is in progress");
                }
            }
            Event::StartUp { now_ms } => {
                self.s.now_ms = self.s.now_ms.max(*now_ms);
                if self.s.stage != Stage::Down {
                    self.refuse("startup refused: the cluster was not shut down by this plan");
                    return;
                }
                self.s.up_reason = Some(UpReason::Startup);
                self.s.start_groups = self.restore_groups(true);
                self.notify(Notice::StartupBegun);
                self.enter(Stage::AwaitNodes);
            }
            Event::Recovered => self.resend_outstanding(),
        }
    }

    /// Bring-up guest groups: every guest whose stop was sent, plus (startup) every
    /// `onboot` guest; ascending order, unordered last.
    fn restore_groups(&self, with_onboot: bool) -> Vec<GuestGroup> {
        let guests = self
            .s
            .plan
            .guests
            .iter()
            .filter(|g| {
                let stopped = self
                    .s
                    .last_sent(&g.node, &format!("guest-stop-{}", g.vmid))
                    .is_some();
                stopped || (with_onboot && g.onboot)
            })
            .cloned()
            .collect();
        group_guests(guests, false)
    }

    fn on_result(&mut self, key: &super::Key, ok: bool, output: &str) {
        let Some(idx) = self.s.sent.iter().position(|s| s.key == *key) else {
            return;
        };
        let was = self.s.sent[idx].outcome;
        if !matches!(was, Outcome::Pending | Outcome::Abandoned) {
            return; // a duplicate answer
        }
        self.s.sent[idx].outcome = if ok { Outcome::Ok } else { Outcome::Failed };
        if ok {
            return;
        }
        let action = self.s.sent[idx].action.clone();
        let node = key.node.clone();
        let in_stage = was == Outcome::Pending
            && self
                .s
                .stage_targets
                .iter()
                .any(|(n, a)| *n == node && *a == action);
        let retrying = in_stage && key.attempt < MAX_ATTEMPTS;
        let out: String = output.chars().take(MAX_OUTPUT_CHARS).collect();
        self.notify(Notice::ActionFailed {
            key: key.to_string(),
            output: out,
            retrying,
        });
        if retrying {
            self.send(&node, action);
        }
    }

    /// Sends under a new attempt number (never reusing a key).
    fn send(&mut self, node: &str, action: Action) {
        let step = step_name(&action);
        let attempt = self
            .s
            .last_sent(node, &step)
            .map_or(0, |s| s.key.attempt)
            .saturating_add(1);
        let key = super::Key {
            operation: self.s.plan.id.clone(),
            node: node.to_owned(),
            step,
            attempt,
        };
        let boot_id = self.view.nodes.get(node).and_then(|n| n.boot_id.clone());
        if action == Action::PowerOff {
            self.s.no_return = true;
        }
        self.s.sent.push(Sent {
            key: key.clone(),
            action: action.clone(),
            outcome: Outcome::Pending,
            boot_id,
        });
        self.out.push(Command::SendAction {
            key,
            node: node.to_owned(),
            action,
        });
    }

    /// Re-sends every unanswered command with its original key. A `PowerOff` only while the
    /// node is online with the boot id it had when the power-off was first sent.
    fn resend_outstanding(&mut self) {
        let mut again = Vec::new();
        for s in self.s.outstanding() {
            if s.action == Action::PowerOff {
                let nv = self.view.nodes.get(&s.key.node);
                let same_boot = nv
                    .is_some_and(|nv| nv.online && nv.boot_id.is_some() && nv.boot_id == s.boot_id);
                if !same_boot {
                    continue;
                }
            }
            again.push(Command::SendAction {
                key: s.key.clone(),
                node: s.key.node.clone(),
                action: s.action.clone(),
            });
        }
        self.out.extend(again);
    }

    /// The stage after `stage` in the shutdown sequence.
    fn next(&self, stage: Stage) -> Stage {
        let p = &self.s.plan;
        let mut seq = vec![Stage::Planned];
        seq.extend((0..p.stop_groups.len()).map(|group| Stage::StopGuests { group }));
        seq.push(Stage::DisarmHa);
        if p.noout.is_some() {
            seq.push(Stage::SetNoout);
        }
        if !p.tiers.is_empty() {
            seq.push(Stage::AwaitWatchdogs);
        }
        seq.extend((0..p.tiers.len()).map(|tier| Stage::PowerOff { tier }));
        seq.push(Stage::Down);
        if stage.is_shutdown() {
            let pos = seq.iter().position(|s| *s == stage);
            return pos
                .and_then(|i| seq.get(i + 1).copied())
                .unwrap_or(Stage::Down);
        }
        self.next_up(Some(stage))
    }

    /// The bring-up stage after `stage` (`None`: the first one).
    fn next_up(&self, stage: Option<Stage>) -> Stage {
        let mut seq = Vec::new();
        if self.s.up_reason == Some(UpReason::Startup) {
            seq.push(Stage::AwaitNodes);
        }
        seq.push(Stage::UnsetNoout);
        seq.push(Stage::ArmHa);
        seq.extend((0..self.s.start_groups.len()).map(|group| Stage::StartGuests { group }));
        seq.push(Stage::Finished);
        match stage {
            None => seq[0],
            Some(st) => seq
                .iter()
                .position(|s| *s == st)
                .and_then(|i| seq.get(i + 1).copied())
                .unwrap_or(Stage::Finished),
        }
    }

    fn abandon_pending(&mut self) -> Vec<String> {
        let mut keys = Vec::new();
        for s in self.s.sent.iter_mut() {
            if s.outcome == Outcome::Pending {
                s.outcome = Outcome::Abandoned;
                keys.push(s.key.to_string());
            }
        }
        keys
    }

    fn first_online<'a>(&self, candidates: impl IntoIterator<Item = &'a String>) -> Option<String> {
        candidates
            .into_iter()
            .find(|n| self.view.online(n))
            .cloned()
    }

    /// Guest-stop parameters for a group: (bound in ms, timeout override in seconds).
    fn group_budget(&self, group: usize) -> (u64, Option<u64>) {
        let sch = self.schedule();
        let Some(g) = self.s.plan.stop_groups.get(group) else {
            return (0, None);
        };
        let graceful = group_graceful_ms(g, &self.s.plan.timing);
        let Some(end) = sch.guests_end_ms else {
            return (graceful, None);
        };
        let left = (self.s.plan.stop_groups.len() - group) as u64;
        let share = end.saturating_sub(self.s.now_ms) / left.max(1);
        if sch.forced || share < graceful {
            (share, Some(share / 2 / 1000))
        } else {
            (graceful, None)
        }
    }

    fn targets_for(&mut self, stage: Stage) -> Vec<(String, Action)> {
        let plan = self.s.plan.clone();
        match stage {
            Stage::StopGuests { group } => {
                let (_, cap) = self.group_budget(group);
                plan.stop_groups
                    .get(group)
                    .map(|g| {
                        g.guests
                            .iter()
                            .map(|guest| {
                                let timeout_secs = match cap {
                                    Some(c) => guest.timeout_secs.min(c),
                                    None => guest.timeout_secs,
                                };
                                (
                                    guest.node.clone(),
                                    Action::GuestStop {
                                        vmid: guest.vmid,
                                        kind: guest.kind,
                                        timeout_secs,
                                        force: true,
                                    },
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            }
            Stage::DisarmHa => match &plan.ha {
                HaPlan::Disarm { node } => vec![(node.clone(), Action::HaDisarm)],
                HaPlan::Maintenance { nodes } => nodes
                    .iter()
                    .map(|n| (n.clone(), Action::MaintenanceOn))
                    .collect(),
            },
            Stage::SetNoout => plan
                .noout
                .iter()
                .map(|n| (n.clone(), Action::CephSetNoout))
                .collect(),
            Stage::PowerOff { tier } => {
                let mut t = Vec::new();
                for n in plan.tiers.get(tier).into_iter().flatten() {
                    if self.view.online(n) {
                        t.push((n.clone(), Action::PowerOff));
                    } else {
                        self.notify(Notice::NodeAlreadyDown { node: n.clone() });
                    }
                }
                t
            }
            Stage::UnsetNoout => {
                if !self.s.was_sent("ceph-set-noout") {
                    return Vec::new();
                }
                let missing: Vec<String> = plan
                    .osd_nodes
                    .iter()
                    .filter(|n| self.s.missing.contains(*n))
                    .cloned()
                    .collect();
                if !missing.is_empty() {
                    self.notify(Notice::NooutLeftSet { missing });
                    return Vec::new();
                }
                let node = self
                    .first_online(plan.noout.iter())
                    .or_else(|| self.first_online(plan.osd_nodes.iter()))
                    .or_else(|| self.first_online(plan.tiers.iter().rev().flatten()))
                    // Nobody online: the planned node; re-sent when an agent reconnects.
                    .or_else(|| plan.noout.clone());
                node.map(|n| vec![(n, Action::CephUnsetNoout)])
                    .unwrap_or_default()
            }
            Stage::ArmHa => {
                if self.s.was_sent("ha-disarm") {
                    let anchor = match &plan.ha {
                        HaPlan::Disarm { node } => Some(node.clone()),
                        HaPlan::Maintenance { .. } => None,
                    };
                    let node = self
                        .first_online(anchor.iter())
                        .or_else(|| self.first_online(plan.tiers.iter().rev().flatten()))
                        .or(anchor);
                    return node.map(|n| vec![(n, Action::HaArm)]).unwrap_or_default();
                }
                plan.tiers
                    .iter()
                    .flatten()
                    .filter(|n| self.s.last_sent(n, "maintenance-on").is_some())
                    .filter(|n| !self.s.missing.contains(*n))
                    .map(|n| (n.clone(), Action::MaintenanceOff))
                    .collect()
            }
            Stage::StartGuests { group } => {
                let Some(g) = self.s.start_groups.get(group).cloned() else {
                    return Vec::new();
                };
                let mut t = Vec::new();
                let mut not_started: std::collections::BTreeMap<String, Vec<u32>> =
                    std::collections::BTreeMap::new();
                for guest in g.guests {
                    let running = self
                        .view
                        .nodes
                        .get(&guest.node)
                        .and_then(|n| n.guests.iter().find(|v| v.vmid == guest.vmid))
                        .is_some_and(|v| v.running);
                    if running {
                        // Observed running already (e.g. `pve-guests` started it at boot):
                        // a second start is not sent.
                        continue;
                    }
                    if self.view.online(&guest.node) {
                        t.push((
                            guest.node.clone(),
                            Action::GuestStart {
                                vmid: guest.vmid,
                                kind: guest.kind,
                            },
                        ));
                    } else {
                        not_started.entry(guest.node).or_default().push(guest.vmid);
                    }
                }
                for (node, vmids) in not_started {
                    self.notify(Notice::GuestsNotStarted { node, vmids });
                }
                t
            }
            Stage::AwaitWatchdogs => {
                let nodes: Vec<String> = self
                    .watchdog_nodes()
                    .into_iter()
                    .filter(|n| {
                        self.view
                            .nodes
                            .get(n)
                            .and_then(|v| v.lrm_watchdog)
                            .is_none()
                    })
                    .collect();
                if !nodes.is_empty() {
                    self.notify(Notice::WatchdogsUnobservable { nodes });
                }
                Vec::new()
            }
            Stage::Planned | Stage::Down | Stage::AwaitNodes | Stage::Finished => Vec::new(),
        }
    }

    /// The nodes whose LRM watchdog the shutdown waits for: every node of the tiers that is
    /// online (an offline one gets no power-off).
    fn watchdog_nodes(&self) -> Vec<String> {
        self.plan_nodes()
            .filter(|n| self.view.online(n))
            .cloned()
            .collect()
    }

    /// Nodes to be powered off whose report says their LRM still holds its watchdog.
    fn watchdogs_held(&self) -> Vec<String> {
        self.watchdog_nodes()
            .into_iter()
            .filter(|n| self.view.nodes.get(n).and_then(|v| v.lrm_watchdog) == Some(true))
            .collect()
    }

    fn bound_for(&self, stage: Stage) -> Option<u64> {
        let now = self.s.now_ms;
        let sch = self.schedule();
        let t = &self.s.plan.timing;
        let capped = |rel: u64, abs: Option<u64>| {
            let r = now.saturating_add(rel);
            Some(abs.map_or(r, |a| r.min(a)))
        };
        match stage {
            Stage::StopGuests { group } => capped(self.group_budget(group).0, sch.guests_end_ms),
            Stage::DisarmHa => capped(sch.flag_ms, sch.ha_end_ms),
            Stage::SetNoout => capped(sch.flag_ms, sch.noout_end_ms),
            // Ends when the first tier is due (no budget of its own: it only waits).
            Stage::AwaitWatchdogs => capped(sch.flag_ms, sch.noout_end_ms.or(sch.ha_end_ms)),
            Stage::PowerOff { tier } => capped(sch.tier_ms, sch.tier_end_ms.get(tier).copied()),
            Stage::AwaitNodes => capped(t.startup_wait_ms, None),
            Stage::UnsetNoout | Stage::ArmHa => capped(t.action_ms, None),
            Stage::StartGuests { group } => {
                let up = self.s.start_groups.get(group).map_or(0, max_up_ms);
                capped(t.action_ms.saturating_add(up), None)
            }
            Stage::Planned | Stage::Down | Stage::Finished => None,
        }
    }

    fn enter(&mut self, stage: Stage) {
        if stage != Stage::Down {
            self.abandon_pending();
        }
        self.s.stage = stage;
        self.s.hold_until_ms = None;
        self.s.stage_deadline_ms = self.bound_for(stage);
        self.notify(Notice::Stage { stage });
        let targets = self.targets_for(stage);
        self.s.stage_targets = targets.clone();
        // `noout` is unset only once every OSD is up and in: sent later by `advance`.
        if stage == Stage::UnsetNoout && !self.osds_down().is_empty() {
            return;
        }
        for (node, action) in targets {
            self.send(&node, action);
        }
        match stage {
            Stage::Down => self.notify(Notice::Down),
            Stage::Finished => self.notify(Notice::Finished),
            _ => {}
        }
    }

    /// The controller's host is in this tier (then it is the last one, alone).
    fn own_tier(&self, tier: usize) -> bool {
        let p = &self.s.plan;
        p.controller_host
            .as_ref()
            .is_some_and(|h| p.tiers.get(tier).is_some_and(|t| t.contains(h)))
    }

    /// A node of the current power-off tier, or of an earlier one, that was offline when its
    /// tier began and is back now gets its power-off too: its tier is not down while it is
    /// up. Tier by tier: a node is held while an earlier tier is not down (every node off,
    /// as in [`Self::settled`]), unless `release` (the stage's bound passed, so every earlier
    /// tier's bound did too). Returns whether a node is held: the stage is not settled then.
    /// Not in the controller's host's tier: its power-off is the last one.
    fn top_up_tier(&mut self, release: bool) -> bool {
        let Stage::PowerOff { tier } = self.s.stage else {
            return false;
        };
        if self.own_tier(tier) {
            return false;
        }
        let tiers: Vec<Vec<String>> = self.s.plan.tiers.iter().take(tier + 1).cloned().collect();
        let mut clear = true;
        let mut held = false;
        for nodes in tiers {
            for n in &nodes {
                if self.view.online(n) && self.s.last_sent(n, "power-off").is_none() {
                    if clear || release {
                        self.s.stage_targets.push((n.clone(), Action::PowerOff));
                        self.send(n, Action::PowerOff);
                    } else {
                        held = true;
                    }
                }
            }
            clear = clear && nodes.iter().all(|n| self.node_off(n));
        }
        held
    }

    /// The node is off as far as the next tier is concerned: offline without a power-off,
    /// confirmed and offline, given up after [`MAX_ATTEMPTS`], or abandoned (its stage moved
    /// on at its bound, which is past its tier's bound: bounds grow tier by tier).
    fn node_off(&self, node: &str) -> bool {
        let online = self.view.online(node);
        match self.s.last_sent(node, "power-off") {
            None => !online,
            Some(s) => match s.outcome {
                Outcome::Ok => !online,
                Outcome::Failed => s.key.attempt >= MAX_ATTEMPTS,
                Outcome::Abandoned => true,
                Outcome::Pending => false,
            },
        }
    }

    /// Every target of the current stage answered (and, for power-off, went offline), or
    /// gave up after [`MAX_ATTEMPTS`].
    fn settled(&mut self) -> bool {
        let stage = self.s.stage;
        if let Stage::PowerOff { tier } = stage {
            if self.own_tier(tier) {
                return true; // we cannot watch ourselves go down
            }
        }
        let all = self.s.stage_targets.iter().all(|(node, action)| {
            let Some(s) = self.s.last_sent(node, &step_name(action)) else {
                return false;
            };
            match s.outcome {
                Outcome::Ok if *action == Action::PowerOff => !self.view.online(node),
                Outcome::Ok => self.observed(node, action),
                Outcome::Failed => s.key.attempt >= MAX_ATTEMPTS,
                Outcome::Pending | Outcome::Abandoned => false,
            }
        });
        if !all {
            return false;
        }
        if stage == Stage::AwaitWatchdogs {
            return self.watchdogs_held().is_empty();
        }
        if let Stage::StartGuests { group } = stage {
            let hold = match self.s.hold_until_ms {
                Some(h) => h,
                None => {
                    let up = self.s.start_groups.get(group).map_or(0, max_up_ms);
                    let h = self.s.now_ms.saturating_add(up);
                    self.s.hold_until_ms = Some(h);
                    h
                }
            };
            return self.s.now_ms >= hold;
        }
        true
    }

    /// The action's effect is observed in the latest report of the node that carried it
    /// out: a stopped guest reads stopped (or left the node), a started one running, HA
    /// maintenance/disarm and `noout` read as requested (the cluster-wide flags come from
    /// cluster-wide sources — `/etc/pve/ha/*`, the OSD map — so that node sees them). A flag
    /// the node's report cannot tell (`None`) cannot be observed: the answer alone settles
    /// it then.
    fn observed(&self, node: &str, action: &Action) -> bool {
        let nv = self.view.nodes.get(node);
        let guest = |vmid: u32| nv.and_then(|n| n.guests.iter().find(|g| g.vmid == vmid));
        let flag =
            |get: fn(&super::NodeView) -> Option<bool>, want: bool| nv.and_then(get) != Some(!want);
        match action {
            Action::GuestStop { vmid, .. } => match guest(*vmid) {
                Some(g) => !g.running && !g.unknown,
                // Not on the node any more (HA moved it), or nothing reported to compare.
                None => true,
            },
            Action::GuestStart { vmid, .. } => guest(*vmid).is_none_or(|g| g.running),
            Action::MaintenanceOn => nv.and_then(|n| n.ha_maintenance) != Some(false),
            Action::MaintenanceOff => nv.and_then(|n| n.ha_maintenance) != Some(true),
            Action::HaDisarm => flag(|n| n.ha_disarmed, true),
            Action::HaArm => flag(|n| n.ha_disarmed, false),
            Action::CephSetNoout => flag(|n| n.noout, true),
            Action::CephUnsetNoout => flag(|n| n.noout, false),
            _ => true,
        }
    }

    /// The current stage's actions that answered ok but whose effect is not observed.
    fn unobserved(&self) -> Vec<String> {
        if self.s.stage == Stage::AwaitWatchdogs {
            return self
                .watchdogs_held()
                .into_iter()
                .map(|n| format!("{n}: HA resource manager still holds its watchdog"))
                .collect();
        }
        self.s
            .stage_targets
            .iter()
            .filter(|(node, action)| {
                *action != Action::PowerOff
                    && self
                        .s
                        .last_sent(node, &step_name(action))
                        .is_some_and(|s| s.outcome == Outcome::Ok)
                    && !self.observed(node, action)
            })
            .map(|(node, action)| format!("{node}: {}", unobserved_words(action)))
            .collect()
    }

    /// Online nodes whose report says some OSD is down or out, and OSD nodes whose latest
    /// report is from before their boot (it still shows the OSDs as they were at the
    /// power-off). A report of this boot that cannot tell does not hold the unset back.
    fn osds_down(&self) -> Vec<String> {
        self.view
            .nodes
            .iter()
            .filter(|(_, v)| v.online)
            .filter_map(|(n, v)| {
                if v.stale && v.ceph_osds {
                    Some(format!("{n} (no report since its boot)"))
                } else {
                    (!v.stale && v.osds_up_in == Some(false)).then(|| n.clone())
                }
            })
            .collect()
    }

    /// `UnsetNoout` entered while OSDs were down: its unset, once they are all up and in.
    fn send_held_unset(&mut self) {
        if self.s.stage != Stage::UnsetNoout || !self.osds_down().is_empty() {
            return;
        }
        let held: Vec<(String, Action)> = self
            .s
            .stage_targets
            .iter()
            .filter(|(n, a)| self.s.last_sent(n, &step_name(a)).is_none())
            .cloned()
            .collect();
        for (node, action) in held {
            self.send(&node, action);
        }
    }

    fn advance(&mut self) {
        for _ in 0..MAX_TRANSITIONS {
            let stage = self.s.stage;
            self.send_held_unset();
            match stage {
                Stage::Planned | Stage::Down | Stage::Finished => return,
                Stage::AwaitNodes => {
                    if !self.view.quorate() {
                        if !self.s.quorum_notified {
                            self.s.quorum_notified = true;
                            self.notify(Notice::WaitingForQuorum);
                        }
                        return;
                    }
                    let missing: std::collections::BTreeSet<String> = self
                        .plan_nodes()
                        .filter(|n| !self.view.online(n))
                        .cloned()
                        .collect();
                    let timed_out = self.s.stage_deadline_ms.is_some_and(|d| self.s.now_ms >= d);
                    if !missing.is_empty() && !timed_out {
                        return;
                    }
                    if !missing.is_empty() {
                        self.notify(Notice::NotReturned {
                            nodes: missing.iter().cloned().collect(),
                        });
                    }
                    self.s.missing = missing;
                    let next = self.next(stage);
                    self.enter(next);
                }
                _ => {
                    let held = self.top_up_tier(false);
                    if !held && self.settled() {
                        let next = self.next(stage);
                        self.enter(next);
                        continue;
                    }
                    let late = self.s.stage_deadline_ms.is_some_and(|d| self.s.now_ms >= d);
                    // Restoring flags waits while no node at all is online: moving on would
                    // leave noout set or HA disarmed with nobody to tell.
                    let nobody = matches!(stage, Stage::UnsetNoout | Stage::ArmHa)
                        && !self.plan_nodes().any(|n| self.view.online(n));
                    if !late || nobody {
                        return;
                    }
                    let mut unobserved = self.unobserved();
                    if stage == Stage::UnsetNoout && !self.s.stage_targets.is_empty() {
                        let down = self.osds_down();
                        if !down.is_empty() {
                            unobserved.push(format!(
                                "OSDs not all up and in on {}: noout left set",
                                down.join(", ")
                            ));
                        }
                    }
                    let abandoned = self.abandon_pending();
                    self.notify(Notice::MovedOn {
                        stage,
                        abandoned,
                        unobserved,
                    });
                    self.top_up_tier(true);
                    let next = self.next(stage);
                    self.enter(next);
                }
            }
        }
    }
}

fn unobserved_words(action: &Action) -> String {
    match action {
        Action::GuestStop { vmid, .. } => format!("guest {vmid} still running"),
        Action::GuestStart { vmid, .. } => format!("guest {vmid} not running"),
        Action::MaintenanceOn => "HA maintenance not entered".into(),
        Action::MaintenanceOff => "HA maintenance not left".into(),
        Action::HaDisarm => "HA not disarmed".into(),
        Action::HaArm => "HA not armed".into(),
        Action::CephSetNoout => "noout not set".into(),
        Action::CephUnsetNoout => "noout still set".into(),
        other => format!("{} not observed", other.name()),
    }
}

fn max_up_ms(g: &GuestGroup) -> u64 {
    g.guests
        .iter()
        .map(|x| x.up_secs)
        .max()
        .unwrap_or(0)
        .saturating_mul(1000)
}
