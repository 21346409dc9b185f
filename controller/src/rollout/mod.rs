//! The rolling-update state machine: a pure function `(state, event, view) -> (state, commands)`.
//!
//! This module is the dangerous part of fleetward, so it does nothing but decide. It does no
//! I/O, reads no clock (time arrives as [`Event::Tick`]), touches no network and no database.
//! A driver (not in this module) owns all of that:
//!
//! 1. it builds a [`ClusterView`] from the store (latest report and liveness per node),
//! 2. calls [`step`] with the event that happened,
//! 3. **persists** the returned [`RolloutState`] (write-ahead: serde JSON),
//! 4. and only then sends the returned [`Command`]s.
//!
//! After a crash it loads the last persisted state and calls `step` with
//! [`Event::Recovered`], which re-emits every outstanding command with the **same**
//! [`IdempotencyKey`], so an agent that already ran it recognises it instead of repeating it.
//!
//! # Per-node phases
//!
//! `Pending → (preflight gate) → MaintenanceOn → WaitGuests → AptUpdate → Upgrade →
//! BootCheck (→ BootRefresh → BootCheck, at most once) → AwaitReturn (reboot, only if
//! needed) → PostRebootGate → MaintenanceOff → Done`, or `Skipped` by explicit operator action.
//! A failed gate never moves a node to a "failed" phase: it **halts the rollout with the node
//! left in the phase where it stopped**, so `Resume` re-runs exactly that step.
//!
//! # Invariants (each is a property test in `proptests.rs`)
//!
//! 1. Never more than `max_unavailable` nodes between `MaintenanceOn` and `Done`.
//! 2. `Reboot` is only ever emitted when the view passed to that very step says the node is
//!    online and every ESP holds the next kernel (and the node has not already rebooted).
//! 3. With `max_unavailable = 1`, no action is sent to a node while another node is started
//!    and not terminal.
//! 4. While halted, paused or aborted, no new node is started; while halted or aborted no
//!    action at all is sent.
//! 5. A node gets `AptDistUpgrade` or `Reboot` under a new key only after the previous key for
//!    that action came back as an explicit failure: duplicates, lost commands and crashes
//!    re-send the same key.
//! 6. A node that goes offline during its turn (outside the reboot wait) halts the rollout and
//!    its phase does not advance.
//!
//! The in-flight set is derived from the phases ([`RolloutState::in_flight`]) instead of
//! being stored beside them, so the two can never disagree after a crash.

mod dry_run;
mod gates;
mod machine;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
mod view;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use dry_run::{dry_run, has_work, DryRun, GuestPlan, NodePlan, NOTHING_TO_DO};
pub use gates::{
    ceph_healthy, esp_holds_next_kernel, no_unsafe_findings, node_reachable, others_online,
    post_reboot, pre_reboot, preflight, quorum_margin, GateFailure, GateResult, UNSAFE_FINDINGS,
};
pub use machine::step;
pub use view::node_view;

/// Which reboot the plan asks for after the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RebootPolicy {
    /// Reboot when the node says so (`needs_reboot`) or runs another kernel than the next one.
    #[default]
    IfNeeded,
    /// Reboot every node.
    Always,
    /// Never reboot (packages only).
    Never,
}

/// Timeouts, in milliseconds. A timeout halts the rollout: nothing proceeds on unknown state.
/// Also the `[rollout]` section's keys of `controller.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timeouts {
    /// Waiting for an action's result (the agent's executor has its own, shorter, timeouts).
    pub action_ms: u64,
    /// Waiting for a fresh report after `RequestRefresh`.
    pub refresh_ms: u64,
    /// Waiting for the node to come back with a new boot id.
    pub reboot_ms: u64,
    /// Waiting for the post-reboot gate (quorum back, no new error finding).
    pub post_reboot_ms: u64,
    /// A node not heard from (report or heartbeat) for longer counts as not online.
    pub max_silence_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            action_ms: 2 * 60 * 60 * 1000,
            refresh_ms: 5 * 60 * 1000,
            reboot_ms: 20 * 60 * 1000,
            post_reboot_ms: 10 * 60 * 1000,
            max_silence_ms: 2 * 60 * 1000,
        }
    }
}

/// What the operator asked for. Build it with [`Plan::new`], which validates and orders it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub id: String,
    /// The order nodes are taken in; the controller's own host is always last.
    pub nodes: Vec<String>,
    pub max_unavailable: usize,
    pub controller_host: Option<String>,
    pub reboot_policy: RebootPolicy,
    pub timeouts: Timeouts,
}

/// Why a plan was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("a rollout needs at least one node")]
    NoNodes,
    #[error("node {0} appears twice in the plan")]
    Duplicate(String),
    #[error("max-unavailable must be at least 1")]
    ZeroMaxUnavailable,
}

impl Plan {
    /// Validates the plan and moves the controller's host to the end (it goes last, so the
    /// controller's own reboot interrupts nothing but its own node, which it resumes).
    pub fn new(
        id: impl Into<String>,
        nodes: Vec<String>,
        max_unavailable: usize,
        controller_host: Option<String>,
        reboot_policy: RebootPolicy,
    ) -> Result<Plan, PlanError> {
        if nodes.is_empty() {
            return Err(PlanError::NoNodes);
        }
        if max_unavailable == 0 {
            return Err(PlanError::ZeroMaxUnavailable);
        }
        let mut seen = BTreeSet::new();
        for n in &nodes {
            if !seen.insert(n.as_str()) {
                return Err(PlanError::Duplicate(n.clone()));
            }
        }
        let mut nodes = nodes;
        if let Some(host) = &controller_host {
            if let Some(pos) = nodes.iter().position(|n| n == host) {
                let h = nodes.remove(pos);
                nodes.push(h);
            }
        }
        Ok(Plan {
            id: id.into(),
            nodes,
            max_unavailable,
            controller_host,
            reboot_policy,
            timeouts: Timeouts::default(),
        })
    }
}

/// The node-changing actions, mirroring the agent executor's action names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    MaintenanceOn,
    WaitGuestsMigrated,
    AptUpdate,
    AptDistUpgrade,
    BootRefresh,
    CephSetNoout,
    Reboot,
    CephUnsetNoout,
    MaintenanceOff,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::MaintenanceOn => "maintenance-on",
            Action::WaitGuestsMigrated => "wait-guests-migrated",
            Action::AptUpdate => "apt-update",
            Action::AptDistUpgrade => "apt-dist-upgrade",
            Action::BootRefresh => "boot-refresh",
            Action::CephSetNoout => "ceph-set-noout",
            Action::Reboot => "reboot",
            Action::CephUnsetNoout => "ceph-unset-noout",
            Action::MaintenanceOff => "maintenance-off",
        }
    }
}

/// A node's place in the rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Not started yet (the preflight gate runs when its turn comes).
    Pending,
    MaintenanceOn,
    WaitGuests,
    AptUpdate,
    Upgrade,
    /// Waiting for a fresh report after the upgrade; checks the ESPs hold the next kernel.
    BootCheck,
    /// One `proxmox-boot-tool refresh` attempt, then back to `BootCheck`.
    BootRefresh,
    /// The node holds Ceph OSDs and will reboot: `ceph osd set noout` first, so its OSDs
    /// are not marked out (and data not rebalanced) while it is away.
    CephNoout,
    /// Reboot sent (after the pre-reboot gate); waiting for a new boot id.
    AwaitReturn,
    /// Back with a new boot id; waiting for the expected kernel, quorum, no new error finding.
    PostRebootGate,
    /// `ceph osd unset noout` — unless another node still holds it for its own reboot (the
    /// last one back unsets it).
    CephUnset,
    MaintenanceOff,
    Done,
    /// Explicit operator action, only ever on a node that had not started.
    Skipped,
}

impl Phase {
    /// The phase's stable name (as in the journal and the API): `ceph-unset`, `await-return`.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::MaintenanceOn => "maintenance-on",
            Phase::WaitGuests => "wait-guests",
            Phase::AptUpdate => "apt-update",
            Phase::Upgrade => "upgrade",
            Phase::BootCheck => "boot-check",
            Phase::BootRefresh => "boot-refresh",
            Phase::CephNoout => "ceph-noout",
            Phase::AwaitReturn => "await-return",
            Phase::PostRebootGate => "post-reboot-gate",
            Phase::CephUnset => "ceph-unset",
            Phase::MaintenanceOff => "maintenance-off",
            Phase::Done => "done",
            Phase::Skipped => "skipped",
        }
    }

    /// The action this phase sends, if it is an action phase.
    pub fn action(self) -> Option<Action> {
        match self {
            Phase::MaintenanceOn => Some(Action::MaintenanceOn),
            Phase::WaitGuests => Some(Action::WaitGuestsMigrated),
            Phase::AptUpdate => Some(Action::AptUpdate),
            Phase::Upgrade => Some(Action::AptDistUpgrade),
            Phase::BootRefresh => Some(Action::BootRefresh),
            Phase::CephNoout => Some(Action::CephSetNoout),
            Phase::CephUnset => Some(Action::CephUnsetNoout),
            Phase::AwaitReturn => Some(Action::Reboot),
            Phase::MaintenanceOff => Some(Action::MaintenanceOff),
            Phase::Pending
            | Phase::BootCheck
            | Phase::PostRebootGate
            | Phase::Done
            | Phase::Skipped => None,
        }
    }

    /// Started and not finished: the node counts against `max_unavailable`.
    pub fn in_flight(self) -> bool {
        !matches!(self, Phase::Pending | Phase::Done | Phase::Skipped)
    }

    pub fn terminal(self) -> bool {
        matches!(self, Phase::Done | Phase::Skipped)
    }
}

/// The idempotency key, shared with every operation: `rollout-id/node/action/attempt`.
pub use crate::operation::Key;

/// A command sent and not yet answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingCommand {
    pub key: Key,
    /// The action sent under `key` (its `step` is this action's name).
    pub action: Action,
    /// Only for `Reboot`: the agent acknowledged it; we now wait for the new boot id and must
    /// not send it again.
    pub acked: bool,
}

/// One node's progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    pub name: String,
    pub phase: Phase,
    pub pending: Option<PendingCommand>,
    /// The last attempt number used per action (so a retry never reuses a key).
    pub attempts: BTreeMap<Action, u32>,
    /// Absolute time (driver's ms) after which waiting in this phase halts; armed by the
    /// first `Tick` after entering the phase.
    pub deadline_ms: Option<u64>,
    /// `BootCheck` needs a report whose sequence number exceeds this.
    pub report_floor: u64,
    pub refresh_requested: bool,
    pub refresh_attempted: bool,
    pub boot_id_before: Option<String>,
    pub expected_kernel: Option<String>,
    /// Error findings present when the node started; the post-reboot gate refuses new ones.
    pub baseline_errors: BTreeSet<String>,
    /// Non-HA `onboot` guests running when the node started: they must be running again
    /// after the reboot (HA guests come back with maintenance off, after the gate).
    #[serde(default)]
    pub baseline_guests: BTreeSet<u32>,
}

impl NodeState {
    fn new(name: String) -> Self {
        NodeState {
            name,
            phase: Phase::Pending,
            pending: None,
            attempts: BTreeMap::new(),
            deadline_ms: None,
            report_floor: 0,
            refresh_requested: false,
            refresh_attempted: false,
            boot_id_before: None,
            expected_kernel: None,
            baseline_errors: BTreeSet::new(),
            baseline_guests: BTreeSet::new(),
        }
    }
}

/// The named gates and stop conditions; every halt names one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Gate {
    Quorum,
    NodesOnline,
    UnsafeFindings,
    Ceph,
    /// The node whose turn it is stopped reporting.
    NodeReachable,
    EspHoldsKernel,
    ReportFreshness,
    CommandFailed,
    CommandTimeout,
    RebootReturn,
    RunningKernel,
    NewFindings,
    /// Guests that ran before the reboot (and start on boot) did not come back.
    GuestsReturned,
    /// The node's report lacks a fact the machine needs (boot id, next kernel).
    UnknownState,
    /// The node's agent is observe-only: it would refuse every action.
    ObserveOnly,
    /// A shutdown preempted the rollout: nothing new is sent (power loss outranks
    /// maintenance); the driver lets in-flight actions settle, then aborts it.
    Preempted,
    /// At the wait for migration: an HA resource on the node is in state `error`, which HA
    /// neither moves nor stops (pve-ha-manager `src/PVE/HA/Manager.pm`: a service in
    /// `error` stays where it is until an operator clears it), so the reboot would take it
    /// down unannounced.
    HaResourceError,
}

/// The rollout as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum Status {
    Planned,
    Running,
    /// No new node starts; started nodes finish.
    Paused,
    /// Stop the line: nothing is sent until an operator resumes.
    Halted {
        node: String,
        gate: Gate,
        reason: String,
    },
    /// Terminal: nothing is ever sent again; started nodes are left for a person.
    Aborted,
    Completed,
}

/// Everything the machine knows; persisted by the driver before commands are sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutState {
    pub plan: Plan,
    pub status: Status,
    /// One per plan node, in plan order.
    pub nodes: Vec<NodeState>,
    /// The latest time seen in a `Tick` (never goes back).
    pub now_ms: u64,
    /// `abort --restore`: no node starts; started nodes go straight to `ceph osd unset
    /// noout` (if they set it) and maintenance off, each observed; then `Aborted`.
    #[serde(default)]
    pub restoring: bool,
}

impl RolloutState {
    pub fn new(plan: Plan) -> Self {
        let nodes = plan.nodes.iter().cloned().map(NodeState::new).collect();
        RolloutState {
            plan,
            status: Status::Planned,
            nodes,
            now_ms: 0,
            restoring: false,
        }
    }

    /// Nodes the rollout started and did not finish: left in maintenance (and perhaps
    /// under `noout`) when it is aborted without `--restore`.
    pub fn left_changed(&self) -> Vec<String> {
        if self.status != Status::Aborted {
            return Vec::new();
        }
        self.in_flight().map(|n| n.name.clone()).collect()
    }

    /// Nodes started and not finished, in plan order.
    pub fn in_flight(&self) -> impl Iterator<Item = &NodeState> {
        self.nodes.iter().filter(|n| n.phase.in_flight())
    }

    pub fn node(&self, name: &str) -> Option<&NodeState> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// What happened. Facts about nodes are not in events: they are in the [`ClusterView`], the
/// one source of truth, so an event and a view can never disagree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    Start,
    Tick {
        now_ms: u64,
    },
    CommandResult {
        key: Key,
        ok: bool,
        output: String,
    },
    /// A new report of this node is in the view (a wake-up; the machine is level-triggered).
    NodeChanged {
        node: String,
    },
    /// The node's session dropped or its heartbeat stopped.
    NodeOffline {
        node: String,
    },
    Pause,
    Resume,
    Abort,
    Skip {
        node: String,
    },
    /// The driver restarted from the journal (or an agent reconnected): re-send what is
    /// outstanding, with the same keys.
    Recovered,
    /// A shutdown preempts the rollout: halted (gate `preempted`), nothing new is sent,
    /// results of in-flight actions are still taken in; a resume is refused.
    Preempt {
        by: String,
    },
    /// `abort --restore`: bring the started nodes back (noout unset, maintenance off),
    /// then `Aborted`.
    AbortRestore,
}

/// What the driver must do, after persisting the new state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    SendAction {
        key: Key,
        node: String,
        action: Action,
    },
    /// Ask the agent for a fresh inspection report.
    RequestRefresh { node: String },
    /// For the audit log and the webhook.
    Notify(Notice),
}

/// Rollout events worth telling a person about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Notice {
    Started,
    NodeStarted {
        node: String,
    },
    Phase {
        node: String,
        phase: Phase,
    },
    NodeDone {
        node: String,
    },
    Skipped {
        node: String,
    },
    Halted {
        node: String,
        gate: Gate,
        reason: String,
    },
    Paused,
    Resumed,
    Aborted,
    Completed,
    Refused {
        reason: String,
    },
    /// `abort --restore` began: these nodes are being brought back.
    Restoring {
        nodes: Vec<String>,
    },
    /// Every node `abort --restore` brought back is out of maintenance (noout unset).
    Restored,
}

/// What the driver knows about one node, from its latest report and its session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NodeView {
    pub online: bool,
    /// Since the last report or heartbeat; `None` = never heard from.
    pub last_seen_age_ms: Option<u64>,
    /// The driver's per-node report counter (monotonic); freshness is "greater than".
    pub report_seq: u64,
    pub boot_id: Option<String>,
    pub running_kernel: Option<String>,
    /// The kernel that boots next (`proxmox-boot-tool kernel list` / the default entry).
    pub next_kernel: Option<String>,
    pub needs_reboot: bool,
    /// Every ESP holds `next_kernel` (false when unknown).
    pub esp_holds_next_kernel: bool,
    /// Quorate as this node sees it.
    pub quorate: Option<bool>,
    pub votes: Option<u32>,
    pub expected_votes: Option<u32>,
    /// Codes of the node's `error` findings.
    pub error_findings: BTreeSet<String>,
    /// `None` = no Ceph on this node; `Some(healthy apart from noout)`.
    pub ceph_healthy: Option<bool>,
    /// The node holds Ceph OSDs (a reboot is wrapped in `noout`).
    #[serde(default)]
    pub ceph_osds: bool,
    /// VMIDs of guests running on this node.
    #[serde(default)]
    pub running_guests: BTreeSet<u32>,
    /// VMIDs of the node's non-HA guests with `onboot`: the node itself starts them at boot.
    #[serde(default)]
    pub onboot_local_guests: BTreeSet<u32>,
    /// The node's agent is observe-only (its report says so): it refuses every action.
    #[serde(default)]
    pub observe_only: bool,
    /// The node's HA maintenance state as its report reads it; `None`: not known.
    #[serde(default)]
    pub ha_maintenance: Option<bool>,
    /// Ceph's `noout` flag as the node's report reads it; `None`: not known.
    #[serde(default)]
    pub noout: Option<bool>,
    /// HA resources in state `error` on the node (`vm:101`), from its report.
    #[serde(default)]
    pub ha_errors: Vec<String>,
    /// The report could not read `/etc/pve/ha/manager_status`, so `ha_errors` being empty
    /// says nothing: it is not known whether a resource on the node is in error.
    #[serde(default)]
    pub ha_errors_unknown: bool,
    /// Every OSD the node's report counts is up and in (a live node counts the cluster's
    /// OSD map, a simulated one its own OSDs); `None`: not known.
    #[serde(default)]
    pub osds_up_in: Option<bool>,
}

/// The cluster as the driver sees it when it calls [`step`]: every cluster member, not
/// only the plan's nodes. A member missing from `nodes` counts as offline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ClusterView {
    pub nodes: BTreeMap<String, NodeView>,
    /// Votes of a QDevice, when the driver knows it is up.
    pub qdevice_votes: u32,
}
