//! The operator API's rollout and shutdown messages, mapped from and to the controller's
//! internal state. Pure functions, and the only module that knows both sides: the
//! orchestration state (`orchestrate::rollout::Rollout`, `rollout::DryRun`,
//! `orchestrate::shutdown::Shutdown`, `shutdown::Plan`, the stored event log) on one side,
//! the typed protobuf messages of `fleetward_proto::api` on the other. The journal format
//! can change without a client noticing, as long as this mapping is kept.
//!
//! Events are stored as the machine's notice in JSON; an event this build cannot read
//! (written by another version) maps to kind `UNSPECIFIED` rather than failing the call.

use std::collections::BTreeMap;

use fleetward_proto::action::{Action, GuestKind};
use fleetward_proto::api;

use crate::orchestrate::rollout::Rollout;
use crate::orchestrate::shutdown::Shutdown;
use crate::rollout::{self, DryRun, Gate, Phase, RebootPolicy, Status};
use crate::shutdown::{self, HaPlan, Outcome, Plan, PlanStep, Schedule, Stage, UpReason};
use crate::store::OpEvent;

/// A request field the controller cannot turn into an internal value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("unknown reboot policy {0} (if-needed, always, never)")]
    RebootPolicy(i32),
    #[error("unknown rollout control verb {0} (pause, resume, abort, skip)")]
    ControlVerb(i32),
    #[error("skip needs a node")]
    SkipWithoutNode,
    #[error("unknown power event {0} (on-battery, restored)")]
    PowerEvent(i32),
    #[error("reviewed step {index}: {reason}")]
    ReviewedStep { index: usize, reason: String },
}

/// A UPS monitor's event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    OnBattery,
    Restored,
}

/// Unix milliseconds as the API carries them.
fn unix_ms(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

fn small(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

// ---------------------------------------------------------------------------------------
// Requests: API values to internal values
// ---------------------------------------------------------------------------------------

/// `RolloutRequest.reboot`; unspecified means if-needed.
pub fn reboot_policy(value: i32) -> Result<RebootPolicy, WireError> {
    match api::RebootPolicy::try_from(value) {
        Ok(api::RebootPolicy::Unspecified | api::RebootPolicy::IfNeeded) => {
            Ok(RebootPolicy::IfNeeded)
        }
        Ok(api::RebootPolicy::Always) => Ok(RebootPolicy::Always),
        Ok(api::RebootPolicy::Never) => Ok(RebootPolicy::Never),
        Err(_) => Err(WireError::RebootPolicy(value)),
    }
}

/// The machine event of `RolloutControlRequest` (`node` only for skip).
pub fn control_event(verb: i32, node: String) -> Result<rollout::Event, WireError> {
    match api::ControlVerb::try_from(verb) {
        Ok(api::ControlVerb::Pause) => Ok(rollout::Event::Pause),
        Ok(api::ControlVerb::Resume) => Ok(rollout::Event::Resume),
        Ok(api::ControlVerb::Abort) => Ok(rollout::Event::Abort),
        Ok(api::ControlVerb::Skip) if node.is_empty() => Err(WireError::SkipWithoutNode),
        Ok(api::ControlVerb::Skip) => Ok(rollout::Event::Skip { node }),
        Ok(api::ControlVerb::Unspecified) | Err(_) => Err(WireError::ControlVerb(verb)),
    }
}

/// `PowerEventRequest.event`.
pub fn power_event(value: i32) -> Result<Power, WireError> {
    match api::PowerEvent::try_from(value) {
        Ok(api::PowerEvent::OnBattery) => Ok(Power::OnBattery),
        Ok(api::PowerEvent::Restored) => Ok(Power::Restored),
        Ok(api::PowerEvent::Unspecified) | Err(_) => Err(WireError::PowerEvent(value)),
    }
}

fn stage_from_wire(s: &api::ShutdownStage) -> Option<Stage> {
    use api::ShutdownStageKind as K;
    let index = usize::try_from(s.index).ok()?;
    Some(match K::try_from(s.kind).ok()? {
        K::Unspecified => return None,
        K::Planned => Stage::Planned,
        K::StopGuests => Stage::StopGuests { group: index },
        K::DisarmHa => Stage::DisarmHa,
        K::SetNoout => Stage::SetNoout,
        K::AwaitWatchdogs => Stage::AwaitWatchdogs,
        K::PowerOff => Stage::PowerOff { tier: index },
        K::Down => Stage::Down,
        K::AwaitNodes => Stage::AwaitNodes,
        K::UnsetNoout => Stage::UnsetNoout,
        K::ArmHa => Stage::ArmHa,
        K::StartGuests => Stage::StartGuests { group: index },
        K::Finished => Stage::Finished,
    })
}

/// The steps an operator reviewed, as plan steps to compare with the current plan.
pub fn reviewed_steps(r: &api::ReviewedSteps) -> Result<Vec<PlanStep>, WireError> {
    r.steps
        .iter()
        .enumerate()
        .map(|(index, s)| {
            let bad = |reason: String| WireError::ReviewedStep { index, reason };
            let stage = s
                .stage
                .as_ref()
                .and_then(stage_from_wire)
                .ok_or_else(|| bad("no valid stage".into()))?;
            let action: Action = serde_json::from_str(&s.action_json)
                .map_err(|e| bad(format!("action_json: {e}")))?;
            Ok(PlanStep {
                stage,
                node: s.node.clone(),
                action,
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Rollout
// ---------------------------------------------------------------------------------------

fn reboot_to_wire(p: RebootPolicy) -> api::RebootPolicy {
    match p {
        RebootPolicy::IfNeeded => api::RebootPolicy::IfNeeded,
        RebootPolicy::Always => api::RebootPolicy::Always,
        RebootPolicy::Never => api::RebootPolicy::Never,
    }
}

fn phase(p: Phase) -> api::RolloutPhase {
    use api::RolloutPhase as W;
    match p {
        Phase::Pending => W::Pending,
        Phase::MaintenanceOn => W::MaintenanceOn,
        Phase::WaitGuests => W::WaitGuests,
        Phase::AptUpdate => W::AptUpdate,
        Phase::Upgrade => W::Upgrade,
        Phase::BootCheck => W::BootCheck,
        Phase::BootRefresh => W::BootRefresh,
        Phase::CephNoout => W::CephNoout,
        Phase::AwaitReturn => W::AwaitReturn,
        Phase::PostRebootGate => W::PostRebootGate,
        Phase::CephUnset => W::CephUnset,
        Phase::MaintenanceOff => W::MaintenanceOff,
        Phase::Done => W::Done,
        Phase::Skipped => W::Skipped,
    }
}

fn gate(g: Gate) -> api::RolloutGate {
    use api::RolloutGate as W;
    match g {
        Gate::Quorum => W::Quorum,
        Gate::NodesOnline => W::NodesOnline,
        Gate::UnsafeFindings => W::UnsafeFindings,
        Gate::Ceph => W::Ceph,
        Gate::NodeReachable => W::NodeReachable,
        Gate::EspHoldsKernel => W::EspHoldsKernel,
        Gate::ReportFreshness => W::ReportFreshness,
        Gate::CommandFailed => W::CommandFailed,
        Gate::CommandTimeout => W::CommandTimeout,
        Gate::RebootReturn => W::RebootReturn,
        Gate::RunningKernel => W::RunningKernel,
        Gate::NewFindings => W::NewFindings,
        Gate::GuestsReturned => W::GuestsReturned,
        Gate::UnknownState => W::UnknownState,
        Gate::ObserveOnly => W::ObserveOnly,
        Gate::Preempted => W::Preempted,
        Gate::HaResourceError => W::HaResourceError,
    }
}

fn rollout_state(s: &Status) -> api::RolloutState {
    match s {
        Status::Planned => api::RolloutState::Planned,
        Status::Running => api::RolloutState::Running,
        Status::Paused => api::RolloutState::Paused,
        Status::Halted { .. } => api::RolloutState::Halted,
        Status::Aborted => api::RolloutState::Aborted,
        Status::Completed => api::RolloutState::Completed,
    }
}

fn rollout_node(n: &rollout::NodeState) -> api::RolloutNode {
    api::RolloutNode {
        name: n.name.clone(),
        phase: phase(n.phase).into(),
        waiting_for: n.pending.as_ref().map(|p| p.key.to_string()),
        acknowledged: n.pending.as_ref().is_some_and(|p| p.acked),
        attempts: n
            .attempts
            .iter()
            .map(|(a, k)| api::ActionAttempts {
                action: a.as_str().to_string(),
                attempts: *k,
            })
            .collect(),
        expected_kernel: n.expected_kernel.clone(),
        deadline_unix_ms: n.deadline_ms.map(unix_ms),
    }
}

/// A rollout as the API shows it.
pub fn rollout(r: &Rollout) -> api::Rollout {
    let s = &r.state;
    let halt = match &s.status {
        Status::Halted {
            node,
            gate: g,
            reason,
        } => Some(api::RolloutHalt {
            node: node.clone(),
            gate: gate(*g).into(),
            reason: reason.clone(),
        }),
        _ => None,
    };
    api::Rollout {
        id: s.plan.id.clone(),
        state: rollout_state(&s.status).into(),
        halt,
        max_unavailable: small(s.plan.max_unavailable),
        reboot: reboot_to_wire(s.plan.reboot_policy).into(),
        controller_host: s.plan.controller_host.clone(),
        window: r.window.clone(),
        window_paused: r.window_paused,
        created_unix_ms: unix_ms(r.created_ms),
        actor: r.actor.clone(),
        nodes: s.nodes.iter().map(rollout_node).collect(),
        updated_unix_ms: unix_ms(s.now_ms),
    }
}

/// One stored rollout event.
pub fn rollout_event(e: &OpEvent) -> api::RolloutEvent {
    use api::RolloutEventKind as K;
    use rollout::Notice as N;
    let mut out = api::RolloutEvent {
        time_unix_ms: unix_ms(e.time_ms),
        ..Default::default()
    };
    let Ok(notice) = serde_json::from_value::<N>(e.event.clone()) else {
        return out;
    };
    let (kind, node) = match notice {
        N::Started => (K::Started, None),
        N::NodeStarted { node } => (K::NodeStarted, Some(node)),
        N::Phase { node, phase: p } => {
            out.phase = phase(p).into();
            (K::Phase, Some(node))
        }
        N::NodeDone { node } => (K::NodeDone, Some(node)),
        N::Skipped { node } => (K::Skipped, Some(node)),
        N::Halted {
            node,
            gate: g,
            reason,
        } => {
            out.gate = gate(g).into();
            out.reason = reason;
            (K::Halted, Some(node))
        }
        N::Paused => (K::Paused, None),
        N::Resumed => (K::Resumed, None),
        N::Aborted => (K::Aborted, None),
        N::Completed => (K::Completed, None),
        N::Refused { reason } => {
            out.reason = reason;
            (K::Refused, None)
        }
        N::Restoring { nodes } => {
            out.reason = nodes.join(", ");
            (K::Restoring, None)
        }
        N::Restored => (K::Restored, None),
    };
    out.kind = kind.into();
    out.node = node.unwrap_or_default();
    out
}

/// The latest output lines of each node's running action, by node name.
pub fn node_output(output: &BTreeMap<String, Vec<String>>) -> Vec<api::NodeOutput> {
    output
        .iter()
        .map(|(node, lines)| api::NodeOutput {
            node: node.clone(),
            lines: lines.clone(),
        })
        .collect()
}

/// `RolloutStatus` and the answer of every call that changes a rollout.
pub fn rollout_status(
    r: &Rollout,
    events: &[OpEvent],
    output: &BTreeMap<String, Vec<String>>,
) -> api::RolloutStatusResponse {
    api::RolloutStatusResponse {
        rollout: Some(rollout(r)),
        events: events.iter().map(rollout_event).collect(),
        output: node_output(output),
    }
}

/// The dry run.
pub fn rollout_plan(d: &DryRun) -> api::RolloutPlanResponse {
    api::RolloutPlanResponse {
        id: d.plan.id.clone(),
        max_unavailable: small(d.plan.max_unavailable),
        reboot: reboot_to_wire(d.plan.reboot_policy).into(),
        controller_host: d.plan.controller_host.clone(),
        nodes: d
            .nodes
            .iter()
            .map(|n| api::RolloutNodePlan {
                name: n.name.clone(),
                position: small(n.position),
                gate_ok: n.gate.is_ok(),
                gate_failure: n.gate.clone().err().unwrap_or_default(),
                steps: n.steps.clone(),
                packages: n
                    .packages
                    .iter()
                    .map(|p| api::PackageUpgrade {
                        package: p.package.clone(),
                        installed: p.installed.clone(),
                        candidate: p.candidate.clone(),
                    })
                    .collect(),
                reboot: n.reboot,
                next_kernel: n.next_kernel.clone(),
                guests: n
                    .guests
                    .iter()
                    .map(|g| api::RolloutGuestPlan {
                        vmid: g.vmid,
                        name: g.name.clone(),
                        what: g.what.clone(),
                    })
                    .collect(),
                downtime_secs: n.downtime_secs,
                skipped: n.skipped,
                packages_from_apt: n.from_apt,
                removed: n.removed.clone(),
                kept_back: n.kept_back.clone(),
                apt_error: n.apt_error.clone(),
            })
            .collect(),
        blocked: d.blocked.clone(),
    }
}

// ---------------------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------------------

/// A stage with its group or tier.
pub fn stage(s: Stage) -> api::ShutdownStage {
    use api::ShutdownStageKind as K;
    let (kind, index) = match s {
        Stage::Planned => (K::Planned, 0),
        Stage::StopGuests { group } => (K::StopGuests, group),
        Stage::DisarmHa => (K::DisarmHa, 0),
        Stage::SetNoout => (K::SetNoout, 0),
        Stage::AwaitWatchdogs => (K::AwaitWatchdogs, 0),
        Stage::PowerOff { tier } => (K::PowerOff, tier),
        Stage::Down => (K::Down, 0),
        Stage::AwaitNodes => (K::AwaitNodes, 0),
        Stage::UnsetNoout => (K::UnsetNoout, 0),
        Stage::ArmHa => (K::ArmHa, 0),
        Stage::StartGuests { group } => (K::StartGuests, group),
        Stage::Finished => (K::Finished, 0),
    };
    api::ShutdownStage {
        kind: kind.into(),
        index: small(index),
    }
}

fn action_json(a: &Action) -> String {
    // Serialising the plain action enum cannot fail.
    serde_json::to_string(a).unwrap_or_default()
}

/// One plan step.
pub fn plan_step(s: &PlanStep) -> api::ShutdownPlanStep {
    api::ShutdownPlanStep {
        stage: Some(stage(s.stage)),
        node: s.node.clone(),
        step: shutdown::step_name(&s.action),
        action_json: action_json(&s.action),
    }
}

fn guest_kind(k: GuestKind) -> api::GuestKind {
    match k {
        GuestKind::Qemu => api::GuestKind::Qemu,
        GuestKind::Lxc => api::GuestKind::Lxc,
    }
}

fn schedule(s: &Schedule, plan: &Plan) -> api::ShutdownSchedule {
    api::ShutdownSchedule {
        start_unix_ms: unix_ms(s.start_ms),
        forced: s.forced,
        fits: s.fits,
        guest_ms: s.guest_ms,
        flag_ms: s.flag_ms,
        tier_ms: s.tier_ms,
        guests_end_unix_ms: s.guests_end_ms.map(unix_ms),
        ha_end_unix_ms: s.ha_end_ms.map(unix_ms),
        noout_end_unix_ms: s.noout_end_ms.map(unix_ms),
        tier_end_unix_ms: s.tier_end_ms.iter().copied().map(unix_ms).collect(),
        expected_ms: s.expected_ms(plan),
    }
}

/// A plan with its steps and the schedule of a start at plan time.
pub fn shutdown_plan(p: &Plan) -> api::ShutdownPlan {
    let (ha_mode, ha_nodes) = match &p.ha {
        HaPlan::Disarm { node } => (api::HaMode::Disarm, vec![node.clone()]),
        HaPlan::Maintenance { nodes } => (api::HaMode::Maintenance, nodes.clone()),
    };
    api::ShutdownPlan {
        controller_host_note: p
            .controller_host
            .as_ref()
            .map(|h| format!("Controller host: {h}"))
            .unwrap_or_default(),
        controller_host_unknown: false,
        id: p.id.clone(),
        reason: p.reason.clone(),
        created_unix_ms: unix_ms(p.created_ms),
        deadline_unix_ms: p.deadline_ms.map(unix_ms),
        controller_host: p.controller_host.clone(),
        ha_mode: ha_mode.into(),
        ha_nodes,
        noout: p.noout.clone(),
        tiers: p
            .tiers
            .iter()
            .map(|t| api::PowerOffTier { nodes: t.clone() })
            .collect(),
        guests: p
            .guests
            .iter()
            .map(|g| api::ShutdownGuest {
                node: g.node.clone(),
                vmid: g.vmid,
                kind: guest_kind(g.kind).into(),
                running: g.running,
                onboot: g.onboot,
                order: g.order,
                up_secs: g.up_secs,
                timeout_secs: g.timeout_secs,
                ha: g.ha,
            })
            .collect(),
        osd_nodes: p.osd_nodes.iter().cloned().collect(),
        offline: p.offline.clone(),
        steps: p.steps().iter().map(plan_step).collect(),
        schedule: Some(schedule(&Schedule::compute(p, p.created_ms), p)),
    }
}

/// `ShutdownService.Plan`: the plan and its text rendering.
pub fn shutdown_plan_response(p: &Plan) -> api::ShutdownPlanResponse {
    api::ShutdownPlanResponse {
        summary: p.summary(),
        plan: Some(shutdown_plan(p)),
    }
}

fn outcome(o: Outcome) -> api::SendOutcome {
    match o {
        Outcome::Pending => api::SendOutcome::Pending,
        Outcome::Ok => api::SendOutcome::Ok,
        Outcome::Failed => api::SendOutcome::Failed,
        Outcome::Abandoned => api::SendOutcome::Abandoned,
    }
}

fn up_reason(r: UpReason) -> api::UpReason {
    match r {
        UpReason::Cancel => api::UpReason::Cancel,
        UpReason::PowerRestored => api::UpReason::PowerRestored,
        UpReason::Startup => api::UpReason::Startup,
    }
}

/// A shutdown as the API shows it.
pub fn shutdown(s: &Shutdown) -> api::Shutdown {
    let st = &s.state;
    api::Shutdown {
        id: st.plan.id.clone(),
        reason: st.plan.reason.clone(),
        actor: s.actor.clone(),
        created_unix_ms: unix_ms(s.created_ms),
        deadline_unix_ms: st.plan.deadline_ms.map(unix_ms),
        stage: Some(stage(st.stage)),
        no_return: st.no_return,
        forced: st.schedule.as_ref().is_some_and(|s| s.forced),
        up_reason: st
            .up_reason
            .map_or(api::UpReason::Unspecified, up_reason)
            .into(),
        missing: st.missing.iter().cloned().collect(),
        sent: st
            .sent
            .iter()
            .map(|x| api::ShutdownSend {
                command_id: x.key.to_string(),
                node: x.key.node.clone(),
                step: x.key.step.clone(),
                attempt: x.key.attempt,
                outcome: outcome(x.outcome).into(),
                action_json: action_json(&x.action),
            })
            .collect(),
        stage_deadline_unix_ms: st.stage_deadline_ms.map(unix_ms),
        updated_unix_ms: unix_ms(st.now_ms),
    }
}

/// One stored shutdown event.
pub fn shutdown_event(e: &OpEvent) -> api::ShutdownEvent {
    use api::ShutdownEventKind as K;
    use shutdown::Notice as N;
    let mut out = api::ShutdownEvent {
        time_unix_ms: unix_ms(e.time_ms),
        ..Default::default()
    };
    let Ok(notice) = serde_json::from_value::<N>(e.event.clone()) else {
        return out;
    };
    let kind = match notice {
        N::Started { forced } => {
            out.forced = forced;
            K::Started
        }
        N::Stage { stage: s } => {
            out.stage = Some(stage(s));
            K::Stage
        }
        N::MovedOn {
            stage: s,
            abandoned,
            unobserved,
        } => {
            out.stage = Some(stage(s));
            out.command_ids = abandoned;
            out.reason = unobserved.join("; ");
            K::MovedOn
        }
        N::ActionFailed {
            key,
            output,
            retrying,
        } => {
            out.command_ids = vec![key];
            out.output = output;
            out.retrying = retrying;
            K::ActionFailed
        }
        N::NodeAlreadyDown { node } => {
            out.node = node;
            K::NodeAlreadyDown
        }
        N::Cancelled { reason } => {
            out.up_reason = up_reason(reason).into();
            K::Cancelled
        }
        N::Refused { reason } => {
            out.reason = reason;
            K::Refused
        }
        N::Down => K::Down,
        N::StartupBegun => K::StartupBegun,
        N::WaitingForQuorum => K::WaitingForQuorum,
        N::NotReturned { nodes } => {
            out.nodes = nodes;
            K::NotReturned
        }
        N::NooutLeftSet { missing } => {
            out.nodes = missing;
            K::NooutLeftSet
        }
        N::GuestsNotStarted { node, vmids } => {
            out.node = node;
            out.vmids = vmids;
            K::GuestsNotStarted
        }
        N::WatchdogsUnobservable { nodes } => {
            out.nodes = nodes;
            K::WatchdogsUnobservable
        }
        N::Finished => K::Finished,
        N::Preempted { detail } => {
            out.reason = detail;
            K::Preempted
        }
    };
    out.kind = kind.into();
    out
}

/// The answer of every shutdown call but `Plan`: the shutdown (if any) with its event log.
pub fn shutdown_status(
    s: Option<(&Shutdown, &[OpEvent])>,
    message: String,
) -> api::ShutdownStatusResponse {
    api::ShutdownStatusResponse {
        message,
        shutdown: s.map(|(s, _)| shutdown(s)),
        events: s
            .map(|(_, events)| events.iter().map(shutdown_event).collect())
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shutdown::{Config, NodeView, ShutdownState, ShutdownView};

    fn op(event: &impl serde::Serialize) -> OpEvent {
        OpEvent {
            time_ms: 42,
            event: serde_json::to_value(event).unwrap(),
        }
    }

    /// No string field of a mapped message carries a JSON object or array.
    fn assert_no_json<M: std::fmt::Debug>(m: &M) {
        let text = format!("{m:?}");
        assert!(!text.contains("\\\"") && !text.contains("{\\"), "{text}");
    }

    #[test]
    fn every_rollout_notice_maps_to_a_kind_with_typed_fields() {
        use rollout::Notice as N;
        let node = || "pve1".to_string();
        let notices = [
            N::Started,
            N::NodeStarted { node: node() },
            N::Phase {
                node: node(),
                phase: Phase::AwaitReturn,
            },
            N::NodeDone { node: node() },
            N::Skipped { node: node() },
            N::Halted {
                node: node(),
                gate: Gate::EspHoldsKernel,
                reason: "ESP sda2 lacks 6.8".into(),
            },
            N::Paused,
            N::Resumed,
            N::Aborted,
            N::Completed,
            N::Refused {
                reason: "finished".into(),
            },
        ];
        let mut kinds = std::collections::BTreeSet::new();
        for n in &notices {
            let e = rollout_event(&op(n));
            assert_ne!(e.kind(), api::RolloutEventKind::Unspecified, "{n:?}");
            assert_eq!(e.time_unix_ms, 42);
            assert_no_json(&e);
            kinds.insert(e.kind);
        }
        assert_eq!(kinds.len(), notices.len(), "one kind per notice");
        let halted = rollout_event(&op(&notices[5]));
        assert_eq!(
            (halted.node.as_str(), halted.gate(), halted.reason.as_str()),
            (
                "pve1",
                api::RolloutGate::EspHoldsKernel,
                "ESP sda2 lacks 6.8"
            )
        );
        let phase = rollout_event(&op(&notices[2]));
        assert_eq!(phase.phase(), api::RolloutPhase::AwaitReturn);
    }

    #[test]
    fn every_shutdown_notice_maps_to_a_kind_with_typed_fields() {
        use shutdown::Notice as N;
        let notices = [
            N::Started { forced: true },
            N::Stage {
                stage: Stage::PowerOff { tier: 1 },
            },
            N::MovedOn {
                stage: Stage::StopGuests { group: 0 },
                abandoned: vec!["s/pve1/guest-stop-100/1".into()],
                unobserved: vec!["pve1: guest 100 not observed stopped".into()],
            },
            N::ActionFailed {
                key: "s/pve1/power-off/1".into(),
                output: "no".into(),
                retrying: true,
            },
            N::NodeAlreadyDown {
                node: "pve2".into(),
            },
            N::Cancelled {
                reason: UpReason::PowerRestored,
            },
            N::Refused {
                reason: "past the point of no return".into(),
            },
            N::Down,
            N::StartupBegun,
            N::WaitingForQuorum,
            N::NotReturned {
                nodes: vec!["pve5".into()],
            },
            N::NooutLeftSet {
                missing: vec!["pve3".into()],
            },
            N::GuestsNotStarted {
                node: "pve5".into(),
                vmids: vec![101, 102],
            },
            N::Finished,
            N::Preempted {
                detail: "rollout-1".into(),
            },
            N::WatchdogsUnobservable {
                nodes: vec!["pve2".into()],
            },
        ];
        let mut kinds = std::collections::BTreeSet::new();
        for n in &notices {
            let e = shutdown_event(&op(n));
            assert_ne!(e.kind(), api::ShutdownEventKind::Unspecified, "{n:?}");
            assert_no_json(&e);
            kinds.insert(e.kind);
        }
        assert_eq!(kinds.len(), notices.len(), "one kind per notice");
        let stage = shutdown_event(&op(&notices[1])).stage.unwrap();
        assert_eq!(
            (stage.kind(), stage.index),
            (api::ShutdownStageKind::PowerOff, 1)
        );
        let cancelled = shutdown_event(&op(&notices[5]));
        assert_eq!(cancelled.up_reason(), api::UpReason::PowerRestored);
        let guests = shutdown_event(&op(&notices[12]));
        assert_eq!(
            (guests.node.as_str(), guests.vmids),
            ("pve5", vec![101, 102])
        );
    }

    #[test]
    fn an_unreadable_event_is_unspecified_not_an_error() {
        let e = OpEvent {
            time_ms: 7,
            event: serde_json::json!({"event": "from-the-future", "x": 1}),
        };
        let r = rollout_event(&e);
        assert_eq!(
            (r.kind(), r.time_unix_ms),
            (api::RolloutEventKind::Unspecified, 7)
        );
        assert_eq!(
            shutdown_event(&e).kind(),
            api::ShutdownEventKind::Unspecified
        );
    }

    #[test]
    fn every_stage_round_trips() {
        let stages = [
            Stage::Planned,
            Stage::StopGuests { group: 2 },
            Stage::DisarmHa,
            Stage::SetNoout,
            Stage::PowerOff { tier: 3 },
            Stage::Down,
            Stage::AwaitNodes,
            Stage::UnsetNoout,
            Stage::ArmHa,
            Stage::StartGuests { group: 1 },
            Stage::Finished,
        ];
        for s in stages {
            assert_eq!(stage_from_wire(&stage(s)), Some(s));
        }
        assert_eq!(stage_from_wire(&api::ShutdownStage::default()), None);
    }

    #[test]
    fn request_enums_map_to_internal_values() {
        let v = |p: api::RebootPolicy| reboot_policy(p.into());
        assert_eq!(
            v(api::RebootPolicy::Unspecified),
            Ok(RebootPolicy::IfNeeded)
        );
        assert_eq!(v(api::RebootPolicy::Always), Ok(RebootPolicy::Always));
        assert_eq!(v(api::RebootPolicy::Never), Ok(RebootPolicy::Never));
        assert_eq!(reboot_policy(99), Err(WireError::RebootPolicy(99)));

        let c = |verb: api::ControlVerb, node: &str| control_event(verb.into(), node.into());
        assert_eq!(c(api::ControlVerb::Pause, ""), Ok(rollout::Event::Pause));
        assert_eq!(c(api::ControlVerb::Resume, ""), Ok(rollout::Event::Resume));
        assert_eq!(c(api::ControlVerb::Abort, ""), Ok(rollout::Event::Abort));
        assert_eq!(
            c(api::ControlVerb::Skip, "pve2"),
            Ok(rollout::Event::Skip {
                node: "pve2".into()
            })
        );
        assert_eq!(
            c(api::ControlVerb::Skip, ""),
            Err(WireError::SkipWithoutNode)
        );
        assert!(c(api::ControlVerb::Unspecified, "").is_err());

        assert_eq!(
            power_event(api::PowerEvent::OnBattery.into()),
            Ok(Power::OnBattery)
        );
        assert_eq!(
            power_event(api::PowerEvent::Restored.into()),
            Ok(Power::Restored)
        );
        assert!(power_event(0).is_err());
    }

    fn plan() -> Plan {
        let mut view = ShutdownView::default();
        for (name, vmid) in [("pve-01", 100), ("pve-02", 200)] {
            view.nodes.insert(
                name.into(),
                NodeView {
                    online: true,
                    guests: vec![shutdown::GuestView {
                        vmid,
                        kind: GuestKind::Qemu,
                        running: true,
                        onboot: true,
                        order: Some(1),
                        up: None,
                        down: None,
                        ha: false,
                        unknown: false,
                    }],
                    ..NodeView::default()
                },
            );
        }
        let cfg = Config {
            reason: Some("maintenance".into()),
            controller_host: Some("pve-02".into()),
            ..Config::default()
        };
        Plan::new("shutdown-1", &view, &cfg, 1_000).unwrap()
    }

    #[test]
    fn a_shutdown_plan_carries_steps_that_come_back_as_the_same_steps() {
        let p = plan();
        let resp = shutdown_plan_response(&p);
        assert_eq!(resp.summary, p.summary());
        let wire = resp.plan.unwrap();
        assert_eq!(wire.id, "shutdown-1");
        assert_eq!(wire.ha_mode(), api::HaMode::Maintenance);
        assert_eq!(wire.tiers.last().unwrap().nodes, vec!["pve-02".to_string()]);
        assert_eq!(wire.guests.len(), 2);
        assert_eq!(wire.steps.len(), p.steps().len());
        assert_eq!(wire.steps[0].step, "guest-stop-100");
        assert!(wire.schedule.is_some());
        // Back, as the CLI sends the steps it showed.
        let reviewed = api::ReviewedSteps {
            steps: wire.steps.clone(),
        };
        assert_eq!(reviewed_steps(&reviewed).unwrap(), p.steps());
        let mut bad = reviewed;
        bad.steps[1].action_json = "{}".into();
        assert!(matches!(
            reviewed_steps(&bad),
            Err(WireError::ReviewedStep { index: 1, .. })
        ));
    }

    #[test]
    fn a_shutdown_status_has_stage_sends_and_events() {
        let p = plan();
        let view = ShutdownView::default();
        let (state, _) = shutdown::step(
            &ShutdownState::new(p),
            &shutdown::Event::Start { now_ms: 5 },
            &view,
        );
        let s = Shutdown {
            state,
            created_ms: 3,
            actor: "admin".into(),
            preempted: None,
        };
        let events = [op(&shutdown::Notice::Started { forced: false })];
        let resp = shutdown_status(Some((&s, &events)), "started".into());
        let w = resp.shutdown.unwrap();
        assert_eq!((w.id.as_str(), w.actor.as_str()), ("shutdown-1", "admin"));
        assert_eq!(w.reason.as_deref(), Some("maintenance"));
        assert_eq!(w.stage.unwrap(), stage(s.state.stage));
        assert_eq!(w.sent.len(), s.state.sent.len());
        assert_eq!(resp.events.len(), 1);
        assert_no_json(&w.stage);
        let none = shutdown_status(None, "nothing".into());
        assert!(none.shutdown.is_none() && none.events.is_empty());
    }

    #[test]
    fn a_rollout_maps_status_halt_nodes_and_output() {
        let plan = rollout::Plan::new(
            "rollout-1",
            vec!["pve1".into(), "pve2".into()],
            1,
            Some("pve1".into()),
            RebootPolicy::Always,
        )
        .unwrap();
        let mut state = rollout::RolloutState::new(plan);
        state.status = Status::Halted {
            node: "pve2".into(),
            gate: Gate::Quorum,
            reason: "no quorum".into(),
        };
        state.nodes[0].phase = Phase::Upgrade;
        state.nodes[0]
            .attempts
            .insert(rollout::Action::AptDistUpgrade, 2);
        state.nodes[0].pending = Some(rollout::PendingCommand {
            key: rollout::Key::new("rollout-1", "pve2", "apt-dist-upgrade", 2),
            action: rollout::Action::AptDistUpgrade,
            acked: true,
        });
        let r = Rollout {
            state,
            window: Some("Sat 02:00-05:00 UTC".into()),
            window_paused: true,
            created_ms: 9,
            actor: "admin".into(),
        };
        let output = BTreeMap::from([("pve2".to_string(), vec!["Unpacking".to_string()])]);
        let resp = rollout_status(&r, &[op(&rollout::Notice::Started)], &output);
        let w = resp.rollout.unwrap();
        assert_eq!(w.state(), api::RolloutState::Halted);
        assert_eq!(w.halt.as_ref().unwrap().gate(), api::RolloutGate::Quorum);
        assert_eq!(w.reboot(), api::RebootPolicy::Always);
        // The controller's host goes last.
        assert_eq!(w.nodes[1].name, "pve1");
        let n = &w.nodes[0];
        assert_eq!(n.phase(), api::RolloutPhase::Upgrade);
        assert_eq!(
            n.waiting_for.as_deref(),
            Some("rollout-1/pve2/apt-dist-upgrade/2")
        );
        assert!(n.acknowledged);
        assert_eq!(n.attempts[0].action, "apt-dist-upgrade");
        assert_eq!(resp.output[0].lines, vec!["Unpacking".to_string()]);
        assert_eq!(resp.events[0].kind(), api::RolloutEventKind::Started);
        assert_no_json(&w);
    }
}
