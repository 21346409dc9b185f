//! The transition function. Level-triggered: `step` first applies the event (a result, an
//! operator action, the time), then re-evaluates every started node against the view and
//! starts new nodes if there is room. So a lost wake-up never blocks progress, and a
//! duplicated event finds nothing left to do.

use std::collections::BTreeSet;

use super::gates::{self, GateFailure};
use super::{
    Action, ClusterView, Command, Event, Gate, Key, Notice, PendingCommand, Phase, RebootPolicy,
    RolloutState, Status,
};

/// Bound on the phase changes one node can make in one step (there are fewer phases).
const MAX_PHASES_PER_STEP: usize = 16;
/// Action output kept in a halt reason.
const MAX_OUTPUT_CHARS: usize = 300;

/// The rollout's transition function: pure, total, deterministic.
///
/// The caller persists the returned state before it sends the returned commands.
pub fn step(
    state: &RolloutState,
    event: &Event,
    view: &ClusterView,
) -> (RolloutState, Vec<Command>) {
    let mut m = Machine {
        s: state.clone(),
        out: Vec::new(),
        view,
    };
    m.apply(event);
    m.advance();
    (m.s, m.out)
}

struct Machine<'v> {
    s: RolloutState,
    out: Vec<Command>,
    view: &'v ClusterView,
}

impl Machine<'_> {
    /// Running or paused: started nodes may progress.
    fn active(&self) -> bool {
        matches!(self.s.status, Status::Running | Status::Paused)
    }

    fn notify(&mut self, notice: Notice) {
        self.out.push(Command::Notify(notice));
    }

    /// Stops the line. The first halt wins; an aborted or completed rollout stays so.
    fn halt(&mut self, node: &str, failure: GateFailure) {
        if !self.active() {
            return;
        }
        self.s.status = Status::Halted {
            node: node.to_owned(),
            gate: failure.gate,
            reason: failure.reason.clone(),
        };
        self.notify(Notice::Halted {
            node: node.to_owned(),
            gate: failure.gate,
            reason: failure.reason,
        });
    }

    fn index(&self, node: &str) -> Option<usize> {
        self.s.nodes.iter().position(|n| n.name == node)
    }

    fn timeout_for(&self, phase: Phase) -> u64 {
        let t = &self.s.plan.timeouts;
        match phase {
            Phase::BootCheck => t.refresh_ms,
            Phase::AwaitReturn => t.reboot_ms,
            Phase::PostRebootGate => t.post_reboot_ms,
            _ => t.action_ms,
        }
    }

    fn overdue(&self, idx: usize) -> bool {
        self.s.nodes[idx]
            .deadline_ms
            .is_some_and(|d| self.s.now_ms > d)
    }

    /// Names of started nodes other than `idx`: they count as gone for quorum purposes.
    fn others_out(&self, idx: usize) -> BTreeSet<String> {
        self.s
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| *i != idx && n.phase.in_flight())
            .map(|(_, n)| n.name.clone())
            .collect()
    }

    fn current_seq(&self, idx: usize) -> u64 {
        self.view
            .nodes
            .get(&self.s.nodes[idx].name)
            .map_or(0, |nv| nv.report_seq)
    }

    fn enter(&mut self, idx: usize, phase: Phase) {
        let n = &mut self.s.nodes[idx];
        n.phase = phase;
        n.pending = None;
        n.deadline_ms = None;
        let node = n.name.clone();
        if phase == Phase::Done {
            self.notify(Notice::NodeDone { node });
        } else {
            self.notify(Notice::Phase { node, phase });
        }
    }

    fn enter_boot_check(&mut self, idx: usize) {
        let floor = self.current_seq(idx);
        let n = &mut self.s.nodes[idx];
        n.report_floor = floor;
        n.refresh_requested = false;
        self.enter(idx, Phase::BootCheck);
    }

    /// Sends `action` under a new attempt number (never reusing a key).
    fn send(&mut self, idx: usize, action: Action) {
        let rollout = self.s.plan.id.clone();
        let n = &mut self.s.nodes[idx];
        let attempt = n
            .attempts
            .get(&action)
            .copied()
            .unwrap_or(0)
            .saturating_add(1);
        n.attempts.insert(action, attempt);
        let key = Key::new(&rollout, &n.name, action.as_str(), attempt);
        n.pending = Some(PendingCommand {
            key: key.clone(),
            action,
            acked: false,
        });
        self.out.push(Command::SendAction {
            key,
            node: n.name.clone(),
            action,
        });
    }

    /// Re-sends every unanswered command with its original key. A `Reboot` is re-sent only
    /// if the view still allows it and the node has not rebooted yet.
    fn resend_outstanding(&mut self) {
        if !self.active() {
            return;
        }
        for idx in 0..self.s.nodes.len() {
            let n = &self.s.nodes[idx];
            if !n.phase.in_flight() {
                continue;
            }
            if n.phase == Phase::BootCheck && n.refresh_requested {
                self.out.push(Command::RequestRefresh {
                    node: n.name.clone(),
                });
            }
            let Some(p) = &n.pending else { continue };
            if p.acked {
                continue;
            }
            if p.action == Action::Reboot {
                let nv = self.view.nodes.get(&n.name);
                let still_ok = nv.is_some_and(|nv| {
                    nv.online
                        && nv.esp_holds_next_kernel
                        && nv.next_kernel.is_some()
                        && nv.boot_id.is_some()
                        && nv.boot_id == n.boot_id_before
                });
                if !still_ok {
                    continue;
                }
            }
            self.out.push(Command::SendAction {
                key: p.key.clone(),
                node: n.name.clone(),
                action: p.action,
            });
        }
    }

    fn apply(&mut self, event: &Event) {
        match event {
            Event::Start => {
                if self.s.status == Status::Planned {
                    self.s.status = Status::Running;
                    self.notify(Notice::Started);
                }
            }
            Event::Tick { now_ms } => {
                self.s.now_ms = self.s.now_ms.max(*now_ms);
                if self.active() {
                    for idx in 0..self.s.nodes.len() {
                        let phase = self.s.nodes[idx].phase;
                        if phase.in_flight() && self.s.nodes[idx].deadline_ms.is_none() {
                            let d = self.s.now_ms.saturating_add(self.timeout_for(phase));
                            self.s.nodes[idx].deadline_ms = Some(d);
                        }
                    }
                }
            }
            Event::CommandResult { key, ok, output } => self.on_result(key, *ok, output),
            Event::NodeChanged { .. } | Event::Recovered => {
                if matches!(event, Event::Recovered) {
                    self.resend_outstanding();
                }
            }
            Event::NodeOffline { node } => {
                let Some(idx) = self.index(node) else { return };
                let phase = self.s.nodes[idx].phase;
                if phase.in_flight() && phase != Phase::AwaitReturn {
                    self.halt(
                        node,
                        GateFailure {
                            gate: Gate::NodeReachable,
                            reason: format!(
                                "{node} stopped reporting during its turn ({}); \
                                 nothing proceeds on unknown state",
                                phase.name()
                            ),
                        },
                    );
                }
            }
            Event::Pause => {
                if self.s.status == Status::Running {
                    self.s.status = Status::Paused;
                    self.notify(Notice::Paused);
                }
            }
            Event::Resume => {
                if let Status::Halted {
                    gate: Gate::Preempted,
                    ..
                } = &self.s.status
                {
                    self.notify(Notice::Refused {
                        reason: "a shutdown preempted this rollout; it cannot be resumed \
                                 (start a new rollout after the shutdown)"
                            .into(),
                    });
                    return;
                }
                if matches!(self.s.status, Status::Paused | Status::Halted { .. }) {
                    self.s.status = Status::Running;
                    for idx in 0..self.s.nodes.len() {
                        if !self.s.nodes[idx].phase.in_flight() {
                            continue;
                        }
                        self.s.nodes[idx].deadline_ms = None;
                        if self.s.nodes[idx].phase == Phase::BootCheck {
                            // A person looked at it: a fresh report and one more refresh.
                            let floor = self.current_seq(idx);
                            let n = &mut self.s.nodes[idx];
                            n.report_floor = floor;
                            n.refresh_requested = false;
                            n.refresh_attempted = false;
                        }
                    }
                    self.notify(Notice::Resumed);
                    self.resend_outstanding();
                }
            }
            Event::Abort => {
                if !matches!(self.s.status, Status::Aborted | Status::Completed) {
                    self.s.status = Status::Aborted;
                    self.notify(Notice::Aborted);
                }
            }
            Event::Preempt { by } => {
                if !matches!(self.s.status, Status::Aborted | Status::Completed) {
                    let reason = format!(
                        "preempted by {by}: nothing new is sent; in-flight actions settle, \
                         then the rollout is aborted"
                    );
                    self.s.status = Status::Halted {
                        node: String::new(),
                        gate: Gate::Preempted,
                        reason: reason.clone(),
                    };
                    self.notify(Notice::Halted {
                        node: String::new(),
                        gate: Gate::Preempted,
                        reason,
                    });
                }
            }
            Event::AbortRestore => {
                let open = !matches!(self.s.status, Status::Aborted | Status::Completed);
                if open && !self.s.restoring {
                    self.s.restoring = true;
                    // Active again, so the restore steps are sent; no node starts.
                    self.s.status = Status::Paused;
                    for n in self.s.nodes.iter_mut().filter(|n| n.phase.in_flight()) {
                        n.deadline_ms = None;
                    }
                    let nodes = self.s.in_flight().map(|n| n.name.clone()).collect();
                    self.notify(Notice::Restoring { nodes });
                    self.resend_outstanding();
                }
            }
            Event::Skip { node } => {
                let idx = self.index(node);
                let open = !matches!(self.s.status, Status::Aborted | Status::Completed);
                match idx {
                    Some(idx) if open && self.s.nodes[idx].phase == Phase::Pending => {
                        self.s.nodes[idx].phase = Phase::Skipped;
                        self.notify(Notice::Skipped { node: node.clone() });
                    }
                    _ => self.notify(Notice::Refused {
                        reason: format!(
                            "skip {node}: only a node that has not started can be skipped"
                        ),
                    }),
                }
            }
        }
    }

    fn on_result(&mut self, key: &Key, ok: bool, output: &str) {
        let Some(idx) = self.index(&key.node) else {
            return;
        };
        let Some(action) = self.s.nodes[idx]
            .pending
            .as_ref()
            .filter(|p| p.key == *key && !p.acked)
            .map(|p| p.action)
        else {
            return; // a duplicate, or the answer to an older attempt
        };
        let node = key.node.clone();
        if !ok {
            self.s.nodes[idx].pending = None;
            let out: String = output.chars().take(MAX_OUTPUT_CHARS).collect();
            self.halt(
                &node,
                GateFailure {
                    gate: Gate::CommandFailed,
                    reason: format!("{} failed on {node}: {out}", action.as_str()),
                },
            );
            return;
        }
        match action {
            // The agent took the reboot; the proof is the new boot id, not this answer.
            Action::Reboot => {
                if let Some(p) = self.s.nodes[idx].pending.as_mut() {
                    p.acked = true;
                }
            }
            // Proxmox only queued the request (maintenance), or the flag is the OSD map's
            // (noout): done when the reports show the effect.
            Action::MaintenanceOn
            | Action::MaintenanceOff
            | Action::CephSetNoout
            | Action::CephUnsetNoout => {
                if let Some(p) = self.s.nodes[idx].pending.as_mut() {
                    p.acked = true;
                }
                if self.effect_observed(idx, action) {
                    self.effect_done(idx, action);
                }
            }
            Action::WaitGuestsMigrated => {
                if !self.ha_error_halt(idx) {
                    self.enter(idx, Phase::AptUpdate);
                }
            }
            Action::AptUpdate => self.enter(idx, Phase::Upgrade),
            Action::AptDistUpgrade => {
                self.s.nodes[idx].refresh_attempted = false;
                self.enter_boot_check(idx);
            }
            Action::BootRefresh => self.enter_boot_check(idx),
        }
    }

    /// At the wait for migration, an HA resource in state `error` on the node halts the
    /// rollout, naming it: HA does not move a failed resource, so the reboot would stop it
    /// unannounced. `ignored` resources are not HA-managed: the agent reports them as
    /// non-HA guests, governed by `non_ha_guests`. A report that cannot read the HA
    /// manager's status cannot tell: that halts too. Returns whether it halted.
    fn ha_error_halt(&mut self, idx: usize) -> bool {
        let name = self.s.nodes[idx].name.clone();
        let Some(nv) = self.view.nodes.get(&name) else {
            return false;
        };
        let errors = nv.ha_errors.clone();
        if nv.ha_errors_unknown && errors.is_empty() {
            self.halt(
                &name,
                GateFailure {
                    gate: Gate::HaResourceError,
                    reason: format!(
                        "{name}'s report cannot read /etc/pve/ha/manager_status: whether an \
                         HA resource on it is in state error (HA would not move it) is not \
                         known; nothing proceeds on unknown state"
                    ),
                },
            );
            return true;
        }
        if errors.is_empty() {
            return false;
        }
        self.halt(
            &name,
            GateFailure {
                gate: Gate::HaResourceError,
                reason: format!(
                    "HA resource{} {} on {name} in state error: HA will not move {}; clear \
                     the error (ha-manager set SID --state disabled, then started) and resume",
                    if errors.len() == 1 { "" } else { "s" },
                    errors.join(", "),
                    if errors.len() == 1 { "it" } else { "them" },
                ),
            },
        );
        true
    }

    /// The effect of an answered flag action shows in the node's latest report: HA
    /// maintenance (`/etc/pve/ha/manager_status`) or Ceph's `noout` (the OSD map's flags)
    /// reads as requested. A report that cannot tell (`None`) cannot be observed: the
    /// answer settles it then.
    fn effect_observed(&self, idx: usize, action: Action) -> bool {
        let nv = self.view.nodes.get(&self.s.nodes[idx].name);
        let (value, want) = match action {
            Action::MaintenanceOn => (nv.and_then(|n| n.ha_maintenance), true),
            Action::MaintenanceOff => (nv.and_then(|n| n.ha_maintenance), false),
            Action::CephSetNoout => (nv.and_then(|n| n.noout), true),
            Action::CephUnsetNoout => (nv.and_then(|n| n.noout), false),
            _ => return true,
        };
        value != Some(!want)
    }

    fn effect_done(&mut self, idx: usize, action: Action) {
        match action {
            Action::MaintenanceOn => self.enter(idx, Phase::WaitGuests),
            Action::CephSetNoout => self.enter(idx, Phase::AwaitReturn),
            Action::CephUnsetNoout => self.enter(idx, Phase::MaintenanceOff),
            Action::MaintenanceOff => self.enter(idx, Phase::Done),
            _ => {}
        }
    }

    /// Online nodes whose report says some OSD is down or out (as Proxmox's Ceph procedure asks,
    /// `noout` is unset only once every OSD is back up and in; pve-docs `pveceph.adoc`,
    /// `[[pveceph_shutdown]]`), with their counts. A report that cannot tell does not hold
    /// the unset back.
    fn osds_not_up_in(&self) -> Vec<String> {
        let view = self.view;
        view.nodes
            .iter()
            .filter(|(_, v)| v.online && v.osds_up_in == Some(false))
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn advance(&mut self) {
        if !self.active() {
            return;
        }
        for idx in 0..self.s.nodes.len() {
            if self.s.nodes[idx].phase.in_flight() {
                self.advance_node(idx);
                if !self.active() {
                    return;
                }
            }
        }
        if self.s.restoring {
            if self.s.in_flight().next().is_none() {
                self.s.status = Status::Aborted;
                self.notify(Notice::Restored);
                self.notify(Notice::Aborted);
            }
            return;
        }
        if self.s.status == Status::Running {
            self.start_nodes();
        }
        if self.active() && self.s.nodes.iter().all(|n| n.phase.terminal()) {
            self.s.status = Status::Completed;
            self.notify(Notice::Completed);
        }
    }

    /// Starts pending nodes in plan order while there is room and the preflight gate passes.
    fn start_nodes(&mut self) {
        loop {
            let in_flight = self.s.in_flight().count();
            if in_flight >= self.s.plan.max_unavailable {
                return;
            }
            let Some(idx) = self.s.nodes.iter().position(|n| n.phase == Phase::Pending) else {
                return;
            };
            let name = self.s.nodes[idx].name.clone();
            if self.s.plan.controller_host.as_deref() == Some(name.as_str()) && in_flight > 0 {
                return; // the controller's host goes alone, last
            }
            let out = self.others_out(idx);
            let silence = self.s.plan.timeouts.max_silence_ms;
            if let Err(f) = gates::preflight(self.view, &name, &out, silence) {
                self.halt(&name, f);
                return;
            }
            let nv = self.view.nodes.get(&name);
            self.s.nodes[idx].baseline_errors =
                nv.map(|nv| nv.error_findings.clone()).unwrap_or_default();
            self.s.nodes[idx].baseline_guests = nv
                .map(|nv| {
                    nv.running_guests
                        .intersection(&nv.onboot_local_guests)
                        .copied()
                        .collect()
                })
                .unwrap_or_default();
            self.notify(Notice::NodeStarted { node: name });
            self.enter(idx, Phase::MaintenanceOn);
            self.advance_node(idx);
            if !self.active() {
                return;
            }
        }
    }

    /// Whether a node other than `idx` holds Ceph `noout` for its own reboot (between its
    /// `ceph osd set noout` and its own unset).
    fn others_hold_noout(&self, idx: usize) -> bool {
        let view = self.view;
        self.s.nodes.iter().enumerate().any(|(i, o)| {
            i != idx
                && matches!(
                    o.phase,
                    Phase::CephNoout | Phase::AwaitReturn | Phase::PostRebootGate
                )
                && view.nodes.get(&o.name).is_some_and(|v| v.ceph_osds)
        })
    }

    /// Another node whose `ceph osd unset noout` was sent and has not settled.
    fn unset_in_flight(&self, idx: usize) -> Option<String> {
        self.s
            .nodes
            .iter()
            .enumerate()
            .find(|(i, o)| *i != idx && o.phase == Phase::CephUnset && o.pending.is_some())
            .map(|(_, o)| o.name.clone())
    }

    /// While restoring (`abort --restore`): where a started node goes instead of its next
    /// step. A node with an action in flight (or a reboot under way) keeps waiting for it:
    /// dpkg is never interrupted. One that set `noout` unsets it (unless another node
    /// still holds it, as in the normal path), every other goes to maintenance off.
    fn restore_phase(&self, idx: usize) -> Option<Phase> {
        let n = &self.s.nodes[idx];
        if !self.s.restoring || n.pending.is_some() {
            return None;
        }
        let osds = self.view.nodes.get(&n.name).is_some_and(|v| v.ceph_osds);
        Some(match n.phase {
            Phase::AwaitReturn | Phase::PostRebootGate if osds && !self.others_hold_noout(idx) => {
                Phase::CephUnset
            }
            Phase::CephUnset => Phase::CephUnset,
            _ => Phase::MaintenanceOff,
        })
    }

    fn advance_node(&mut self, idx: usize) {
        for _ in 0..MAX_PHASES_PER_STEP {
            if !self.active() || !self.advance_once(idx) {
                return;
            }
        }
    }

    /// One evaluation of a started node; true when it changed phase and should be
    /// evaluated again.
    fn advance_once(&mut self, idx: usize) -> bool {
        let name = self.s.nodes[idx].name.clone();
        let phase = self.s.nodes[idx].phase;
        if !phase.in_flight() {
            return false;
        }
        if let Some(next) = self.restore_phase(idx).filter(|p| *p != phase) {
            self.enter(idx, next);
            return true;
        }
        let silence = self.s.plan.timeouts.max_silence_ms;
        // Offline is expected only while waiting for the reboot.
        if phase != Phase::AwaitReturn {
            if let Err(f) = gates::node_reachable(self.view, &name, silence) {
                self.halt(
                    &name,
                    GateFailure {
                        gate: f.gate,
                        reason: format!("{} during its turn ({})", f.reason, phase.name()),
                    },
                );
                return false;
            }
        }
        let Some(nv) = self.view.nodes.get(&name) else {
            return false; // AwaitReturn on a node absent from the view: keep waiting
        };
        if phase == Phase::WaitGuests && self.ha_error_halt(idx) {
            return false;
        }
        match phase {
            Phase::MaintenanceOn
            | Phase::WaitGuests
            | Phase::AptUpdate
            | Phase::Upgrade
            | Phase::BootRefresh
            | Phase::CephNoout
            | Phase::CephUnset
            | Phase::MaintenanceOff => {
                let Some(action) = phase.action() else {
                    return false;
                };
                let answered = self.s.nodes[idx].pending.as_ref().is_some_and(|p| p.acked);
                // `noout` is one cluster-wide flag: an unset is not sent while another
                // node holds it (that node unsets it later), and a set waits for an unset
                // in flight (else the two race and one of them is never observed).
                if phase == Phase::CephUnset
                    && self.s.nodes[idx].pending.is_none()
                    && self.others_hold_noout(idx)
                {
                    self.enter(idx, Phase::MaintenanceOff);
                    return true;
                }
                if phase == Phase::CephNoout && self.s.nodes[idx].pending.is_none() {
                    if let Some(other) = self.unset_in_flight(idx) {
                        if self.overdue(idx) {
                            self.halt(
                                &name,
                                GateFailure {
                                    gate: Gate::CommandTimeout,
                                    reason: format!(
                                        "ceph-set-noout on {name} waited for {other}'s \
                                         ceph-unset-noout, which did not settle"
                                    ),
                                },
                            );
                        }
                        return false;
                    }
                }
                if phase == Phase::CephUnset && self.s.nodes[idx].pending.is_none() {
                    let down = self.osds_not_up_in();
                    if !down.is_empty() {
                        if self.overdue(idx) {
                            self.halt(
                                &name,
                                GateFailure {
                                    gate: Gate::Ceph,
                                    reason: format!(
                                        "OSDs not all up and in on {} after {name}'s turn; \
                                         noout stays set",
                                        down.join(", ")
                                    ),
                                },
                            );
                        }
                        return false;
                    }
                }
                if answered && self.effect_observed(idx, action) {
                    self.effect_done(idx, action);
                    return true;
                }
                if answered && self.overdue(idx) {
                    self.halt(
                        &name,
                        GateFailure {
                            gate: Gate::CommandTimeout,
                            reason: format!(
                                "{} on {name} answered ok but its effect was never observed \
                                 (the node's report does not show it)",
                                action.as_str()
                            ),
                        },
                    );
                } else if self.s.nodes[idx].pending.is_none() {
                    self.send(idx, action);
                } else if self.overdue(idx) {
                    self.halt(
                        &name,
                        GateFailure {
                            gate: Gate::CommandTimeout,
                            reason: format!("{} on {name} did not answer in time", action.as_str()),
                        },
                    );
                }
                false
            }
            Phase::BootCheck => {
                if !self.s.nodes[idx].refresh_requested {
                    self.s.nodes[idx].refresh_requested = true;
                    self.out
                        .push(Command::RequestRefresh { node: name.clone() });
                }
                if nv.report_seq <= self.s.nodes[idx].report_floor {
                    if self.overdue(idx) {
                        self.halt(
                            &name,
                            GateFailure {
                                gate: Gate::ReportFreshness,
                                reason: format!("no fresh report from {name} after the upgrade"),
                            },
                        );
                    }
                    return false;
                }
                if let Err(f) = gates::esp_holds_next_kernel(self.view, &name) {
                    if !self.s.nodes[idx].refresh_attempted {
                        self.s.nodes[idx].refresh_attempted = true;
                        self.enter(idx, Phase::BootRefresh);
                        return true;
                    }
                    self.halt(
                        &name,
                        GateFailure {
                            gate: f.gate,
                            reason: format!("{} after one boot refresh; not rebooting", f.reason),
                        },
                    );
                    return false;
                }
                let needs = match self.s.plan.reboot_policy {
                    RebootPolicy::Always => true,
                    RebootPolicy::Never => false,
                    RebootPolicy::IfNeeded => {
                        nv.needs_reboot || nv.running_kernel != nv.next_kernel
                    }
                };
                if !needs {
                    self.enter(idx, Phase::MaintenanceOff);
                    return true;
                }
                if nv.boot_id.is_none() {
                    self.halt(
                        &name,
                        GateFailure {
                            gate: Gate::UnknownState,
                            reason: format!(
                                "{name} reports no boot id; a reboot could not be proven"
                            ),
                        },
                    );
                    return false;
                }
                let n = &mut self.s.nodes[idx];
                n.boot_id_before = nv.boot_id.clone();
                n.expected_kernel = nv.next_kernel.clone();
                let next = if nv.ceph_osds {
                    Phase::CephNoout
                } else {
                    Phase::AwaitReturn
                };
                self.enter(idx, next);
                true
            }
            Phase::AwaitReturn => {
                let n = &self.s.nodes[idx];
                if nv.online && nv.boot_id.is_some() && nv.boot_id != n.boot_id_before {
                    self.enter(idx, Phase::PostRebootGate);
                    return true;
                }
                if n.pending.is_none() {
                    let out = self.others_out(idx);
                    match gates::pre_reboot(self.view, &name, &out, silence) {
                        Ok(()) => self.send(idx, Action::Reboot),
                        Err(f) => self.halt(&name, f),
                    }
                } else if self.overdue(idx) {
                    self.halt(
                        &name,
                        GateFailure {
                            gate: Gate::RebootReturn,
                            reason: format!("{name} did not come back with a new boot id"),
                        },
                    );
                }
                false
            }
            Phase::PostRebootGate => {
                let n = &self.s.nodes[idx];
                let expected = n.expected_kernel.as_deref();
                let verdict =
                    gates::post_reboot(nv, &name, expected, &n.baseline_errors, &n.baseline_guests);
                match verdict {
                    Ok(()) => {
                        // Another OSD node between its noout and its own unset.
                        let view = self.view;
                        let holds = |o: &super::NodeState| {
                            matches!(
                                o.phase,
                                Phase::CephNoout | Phase::AwaitReturn | Phase::PostRebootGate
                            ) && view.nodes.get(&o.name).is_some_and(|v| v.ceph_osds)
                        };
                        let others_hold = self
                            .s
                            .nodes
                            .iter()
                            .enumerate()
                            .any(|(i, o)| i != idx && holds(o));
                        let next = if nv.ceph_osds && !others_hold {
                            Phase::CephUnset
                        } else {
                            Phase::MaintenanceOff
                        };
                        self.enter(idx, next);
                        true
                    }
                    // A wrong kernel will not fix itself: halt at once.
                    Err(f) if f.gate == Gate::RunningKernel && nv.running_kernel.is_some() => {
                        self.halt(&name, f);
                        false
                    }
                    Err(f) => {
                        if self.overdue(idx) {
                            self.halt(&name, f);
                        }
                        false
                    }
                }
            }
            Phase::Pending | Phase::Done | Phase::Skipped => false,
        }
    }
}
