//! The coordinated cluster shutdown and startup: a pure state machine
//! `step(&state, &event, &view) -> (state, commands)`, built like [`crate::rollout`].
//!
//! It does no I/O, reads no clock (time arrives in [`Event::Start`], [`Event::Tick`] and
//! [`Event::StartUp`]), touches no network and no database. The driver (not in this module)
//! builds a [`ShutdownView`] from the agents' reports and sessions, calls [`step`],
//! **persists** the returned [`ShutdownState`] (write-ahead), and only then sends the
//! returned [`Command`]s. After a crash it loads the state and sends [`Event::Recovered`],
//! which re-emits every outstanding command with the **same** [`Key`]; it sends `Recovered`
//! too when an agent reconnects (a command to an offline node is lost, not queued). The
//! driver ticks at least every few seconds: bounds and the deadline are only noticed on an
//! event, so the deadline guarantee holds up to the tick interval (keep it well under
//! [`Timing::safety_ms`]).
//!
//! # Stages
//!
//! Shutdown: `Planned → StopGuests{group} … → DisarmHa → SetNoout → AwaitWatchdogs →
//! PowerOff{tier} … → Down`.
//! Bring-up, after [`Event::StartUp`] in `Down` (the *startup*) or after [`Event::Cancel`] /
//! [`Event::PowerRestored`] before the point of no return (the *restore*):
//! `[AwaitNodes (startup only)] → UnsetNoout → ArmHa → StartGuests{group} … → Finished`.
//! `UnsetNoout` sends `ceph osd unset noout` only once no node's report says an OSD is down
//! or out (Proxmox's Ceph procedure, pve-docs `pveceph.adoc` `[[pveceph_shutdown]]`: all
//! Ceph services up before the unset); at its bound it moves on with `noout` left set and
//! the reason in the `MovedOn` notice.
//! Stages with nothing to do are skipped; every stage's sends are fixed when it is entered
//! ([`ShutdownState::stage_targets`]) and persisted with it.
//!
//! # Order
//!
//! Proxmox starts guests with an `order` first, ascending, then the unordered ones. The
//! shutdown is the exact reverse: **unordered guests first, then descending `order`**. One
//! group is every guest with the same order value (all unordered guests are one group), on
//! any node; a group's stops are sent together (parallel over nodes) and the next group is
//! sent only when every stop of the group answered (or the group's time is up). Startup and
//! restore go the other way: ascending order, unordered last, waiting after each group for
//! the group's largest `up` delay.
//!
//! Guest stops are `qm|pct shutdown --timeout T --forceStop 1`: the guest's own `down`
//! value (or [`Timing::default_guest_timeout_secs`]), then force. HA: one cluster-wide
//! `HaDisarm` when every node supports it ([`ShutdownView::ha_disarm_supported`]), else
//! `MaintenanceOn` on every node. Ceph: one `CephSetNoout` (only `noout`, as Proxmox
//! documents) when any node runs Ceph. Then, before the first power-off, `AwaitWatchdogs`
//! waits until every online node of the tiers reports its HA resource manager (LRM) no
//! longer holding its watchdog ([`NodeView::lrm_watchdog`]): pve-ha-manager's LRM releases
//! it asynchronously after the disarm (`src/PVE/HA/LRM.pm` `work`), and a node whose LRM
//! still holds it when quorum goes can self-fence (hard reset) instead of powering off. A
//! node whose report cannot tell is not waited for, and the stage says so
//! ([`Notice::WatchdogsUnobservable`]); at its bound (a flag stage's, ending when the first
//! tier is due) the stage moves on naming the nodes still holding one. Cluster-wide actions go to the node that stays up
//! longest (first match walking the tiers from the last one), which is also where the
//! restore finds it. Power-off tiers: explicit ([`Config::tiers`]) or, by default, nodes
//! without a Ceph monitor, then monitor nodes, then the controller's own host alone.
//! A node offline when its tier began that comes back later gets its power-off in whatever
//! power-off stage it returns (the next stage waits for it); a returning node of a later
//! tier is held until every earlier tier is down again, or until the current stage's bound.
//!
//! # Time, the deadline, and why timeouts move on here
//!
//! Every stage has a bound (see [`Schedule`]). In a rollout a timeout halts: nothing
//! proceeds on unknown state. **Here a passed bound moves on** (outstanding sends are
//! abandoned, a [`Notice::MovedOn`] names them): during a power loss, going down is the
//! safe direction, and a running guest is still shut down by the node's own power-off
//! (`pve-guests.service`). With a deadline the bounds are cut so that the last `PowerOff`
//! is sent `safety_ms` before it ([`Schedule::compute`]), and guest stops become short forced
//! stops when the graceful budget does not fit.
//!
//! # Point of no return
//!
//! Until the first `PowerOff` is sent, `Cancel` or `PowerRestored` stops the shutdown and
//! restores: unset `noout` (if it was sent), `HaArm` / `MaintenanceOff` (mirroring what was
//! sent), and start every guest whose stop was sent, in startup order. Afterwards `Cancel`
//! is refused ([`Notice::Refused`]) and the shutdown continues.
//!
//! # The controller's own host
//!
//! It is alone in the last tier. Its `PowerOff` is the last command; the state is `Down`
//! before it is sent, and that persisted state carries everything the startup needs (the
//! plan's guest snapshot, what was stopped, which HA mode and flags were used). A pending
//! `PowerOff` is re-sent on `Recovered` only when the node is online with the boot id it had
//! when the power-off was first sent: after the power came back (new boot id) it never is.
//!
//! # Invariants (property tests in `proptests.rs`)
//!
//! 1. No `PowerOff` for tier k+1 before every node of tier k confirmed (result ok) and went
//!    offline, unless tier k's bound passed.
//! 2. The controller's host gets the last `PowerOff`, alone.
//! 3. After a cancel before the point of no return, every guest whose stop was sent gets a
//!    `GuestStart`, and `noout` is unset if it was set.
//! 4. With a deadline that fits the minimum budget and agents that answer promptly, every
//!    `PowerOff` is emitted at a time ≤ the deadline.
//! 5. `Recovered` re-emits only keys already emitted; a (node, step) gets a new key only
//!    after its previous key failed explicitly.
//! 6. The first `PowerOff` is emitted only when no online node of the tiers reports its HA
//!    resource manager holding its watchdog, unless the wait's bound passed.

mod machine;
mod plan;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use fleetward_proto::action::{Action, GuestKind};
use serde::{Deserialize, Serialize};

pub use machine::step;
pub use plan::{PlanError, PlanStep, Schedule};

/// Attempts per (node, step) before a failing action is given up (and the stage moves on).
pub const MAX_ATTEMPTS: u32 = 3;

/// One guest as the driver sees it (from the node's report).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestView {
    pub vmid: u32,
    pub kind: GuestKind,
    pub running: bool,
    pub onboot: bool,
    /// Proxmox `startup: order=N` (`None` = unordered).
    pub order: Option<u32>,
    /// `startup: up=N` seconds to wait after starting it.
    pub up: Option<u64>,
    /// `startup: down=N` seconds to wait for its shutdown.
    pub down: Option<u64>,
    /// Managed by HA.
    pub ha: bool,
    /// The agent cannot tell whether it runs (then it is observed neither running nor
    /// stopped).
    #[serde(default)]
    pub unknown: bool,
}

/// One node as the driver sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NodeView {
    /// Session up and heard from recently.
    pub online: bool,
    /// Changes on every boot; lets a resend tell "not yet powered off" from "came back".
    pub boot_id: Option<String>,
    /// Quorate as this node sees it.
    pub quorate: Option<bool>,
    pub ceph_mon: bool,
    pub ceph_osds: bool,
    pub guests: Vec<GuestView>,
    /// The node's agent is observe-only: it refuses every action, so no plan includes it.
    #[serde(default)]
    pub observe_only: bool,
    /// The node has sent a report (its guest list is known).
    #[serde(default)]
    pub reported: bool,
    /// The node's HA maintenance state as its report reads it; `None`: not known.
    #[serde(default)]
    pub ha_maintenance: Option<bool>,
    /// HA disarmed cluster-wide as this node's report reads it; `None`: not known.
    #[serde(default)]
    pub ha_disarmed: Option<bool>,
    /// Ceph's `noout` flag as this node's report reads it; `None`: not known.
    #[serde(default)]
    pub noout: Option<bool>,
    /// The node's HA resource manager (LRM) still holds its watchdog, as its report reads
    /// it (`/etc/pve/nodes/<node>/lrm_status`); `None`: not known.
    #[serde(default)]
    pub lrm_watchdog: Option<bool>,
    /// Every OSD this node's report counts is up and in (a live node counts the cluster's
    /// OSD map, a simulated one its own OSDs); `None`: not known.
    #[serde(default)]
    pub osds_up_in: Option<bool>,
    /// The latest report is from an earlier boot than the session's Hello: its facts
    /// describe the node before it went down, not now (a node just powered on, whose first
    /// report has not arrived yet).
    #[serde(default)]
    pub stale: bool,
}

/// The cluster for one call of [`step`]. A node missing from `nodes` counts as offline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ShutdownView {
    pub nodes: BTreeMap<String, NodeView>,
    /// Every node's pve-ha-manager supports `crm-command disarm-ha` (>= 5.1.3).
    pub ha_disarm_supported: bool,
    /// When the view was taken (unix ms). Every step starts from it, so a stage entered on a
    /// report or a result has its bound counted from that moment, not from the last tick;
    /// 0 where time comes from ticks alone (the pure tests).
    #[serde(default)]
    pub now_ms: u64,
}

impl ShutdownView {
    pub fn online(&self, node: &str) -> bool {
        self.nodes.get(node).is_some_and(|n| n.online)
    }

    /// Some online node says the cluster is quorate.
    pub fn quorate(&self) -> bool {
        self.nodes
            .values()
            .any(|n| n.online && !n.stale && n.quorate == Some(true))
    }
}

/// Waits and bounds, in milliseconds, except the guest timeout that mirrors Proxmox's own
/// `down=` seconds. Also keys of `controller.toml`'s `[shutdown]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timing {
    /// A guest's shutdown timeout when it has no `down` value (Proxmox's default is 180 s).
    pub default_guest_timeout_secs: u64,
    /// Added to a guest-stop group's largest timeout before the group counts as late.
    pub guest_margin_ms: u64,
    /// Bound for one flag/HA/guest-start stage.
    pub action_ms: u64,
    /// The least a flag stage gets when a deadline squeezes the plan.
    pub min_action_ms: u64,
    /// Bound for a power-off tier to confirm and disconnect.
    pub tier_wait_ms: u64,
    /// The least a tier gets when a deadline squeezes the plan.
    pub min_tier_wait_ms: u64,
    /// The last `PowerOff` is due this long before the deadline.
    pub safety_ms: u64,
    /// Startup: how long to wait for every node to return (quorum is always waited for).
    pub startup_wait_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            default_guest_timeout_secs: 180,
            guest_margin_ms: 15_000,
            action_ms: 120_000,
            min_action_ms: 10_000,
            tier_wait_ms: 300_000,
            min_tier_wait_ms: 30_000,
            safety_ms: 30_000,
            startup_wait_ms: 15 * 60_000,
        }
    }
}

/// The operator's configuration for a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Config {
    /// Explicit power-off tiers (every node exactly once); `None` = the default tiers.
    pub tiers: Option<Vec<Vec<String>>>,
    /// The node the controller runs on, if it is a cluster member: powered off last, alone.
    pub controller_host: Option<String>,
    /// Absolute deadline (driver's ms clock), e.g. now + the UPS's remaining runtime.
    pub deadline_ms: Option<u64>,
    pub reason: Option<String>,
    pub timing: Timing,
}

/// A guest in the plan's snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedGuest {
    pub node: String,
    pub vmid: u32,
    pub kind: GuestKind,
    pub running: bool,
    pub onboot: bool,
    pub order: Option<u32>,
    pub up_secs: u64,
    /// `down` or the default.
    pub timeout_secs: u64,
    pub ha: bool,
}

/// Guests stopped (or started) together: one startup-order value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestGroup {
    pub order: Option<u32>,
    pub guests: Vec<PlannedGuest>,
}

/// How HA is kept from fencing or migrating.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case")]
pub enum HaPlan {
    /// One `HaDisarm`, sent to `node`.
    Disarm { node: String },
    /// `MaintenanceOn` on each node.
    Maintenance { nodes: Vec<String> },
}

/// The reviewed plan. Build it with [`Plan::new`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub id: String,
    pub reason: Option<String>,
    pub created_ms: u64,
    pub deadline_ms: Option<u64>,
    pub controller_host: Option<String>,
    /// Running guests in stop order (unordered first, then descending order).
    pub stop_groups: Vec<GuestGroup>,
    pub ha: HaPlan,
    /// The node that gets `CephSetNoout`; `None` = no Ceph.
    pub noout: Option<String>,
    /// Power-off tiers in order; the controller's host, if a member, alone in the last.
    pub tiers: Vec<Vec<String>>,
    /// Every guest of every node at plan time (startup starts those with `onboot`).
    pub guests: Vec<PlannedGuest>,
    /// Nodes with Ceph OSDs: the startup waits for all of them before unsetting `noout`.
    pub osd_nodes: BTreeSet<String>,
    /// Nodes offline when the plan was made (reported; nothing is sent to them).
    pub offline: Vec<String>,
    pub timing: Timing,
}

/// The idempotency key, shared with every operation: `shutdown-id/node/step/attempt`.
pub use crate::operation::Key;

/// The step name of an action in a key.
pub fn step_name(action: &Action) -> String {
    match action {
        Action::GuestStop { vmid, .. } => format!("guest-stop-{vmid}"),
        Action::GuestStart { vmid, .. } => format!("guest-start-{vmid}"),
        other => other.name().to_owned(),
    }
}

/// Where a stage is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "stage", rename_all = "kebab-case")]
pub enum Stage {
    Planned,
    StopGuests {
        group: usize,
    },
    DisarmHa,
    SetNoout,
    /// Before the first power-off: every node to be powered off reports that its HA
    /// resource manager released its watchdog (bounded; nothing is sent).
    AwaitWatchdogs,
    PowerOff {
        tier: usize,
    },
    /// Every power-off sent; waiting for the power to return and `StartUp`.
    Down,
    /// Startup: waiting for quorum and the nodes (bounded).
    AwaitNodes,
    UnsetNoout,
    ArmHa,
    StartGuests {
        group: usize,
    },
    /// Terminal: shutdown cancelled and restored, or startup done.
    Finished,
}

impl Stage {
    fn is_shutdown(self) -> bool {
        matches!(
            self,
            Stage::Planned
                | Stage::StopGuests { .. }
                | Stage::DisarmHa
                | Stage::SetNoout
                | Stage::AwaitWatchdogs
                | Stage::PowerOff { .. }
        )
    }
}

/// Why the bring-up runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpReason {
    /// Operator `shutdown cancel` before the point of no return.
    Cancel,
    /// The UPS said power is back before the point of no return.
    PowerRestored,
    /// `fleetward startup` after the cluster was down.
    Startup,
}

/// What became of a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Pending,
    Ok,
    Failed,
    /// Unanswered when its stage moved on; never re-sent.
    Abandoned,
}

/// One emitted action: the journal of every send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sent {
    pub key: Key,
    pub action: Action,
    pub outcome: Outcome,
    /// The node's boot id when sent (used for `PowerOff` only).
    pub boot_id: Option<String>,
}

/// Everything the machine knows; persisted by the driver before commands are sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShutdownState {
    pub plan: Plan,
    pub stage: Stage,
    /// Latest time seen (never goes back).
    pub now_ms: u64,
    /// The bounds, fixed at `Start`.
    pub schedule: Option<Schedule>,
    /// When the current stage moves on regardless.
    pub stage_deadline_ms: Option<u64>,
    /// The (node, action) pairs of the current stage, fixed on entry.
    pub stage_targets: Vec<(String, Action)>,
    /// Startup/restore: the next guest group waits until then (`up` delay).
    pub hold_until_ms: Option<u64>,
    /// The first `PowerOff` was sent: cancel is refused from now on.
    pub no_return: bool,
    pub up_reason: Option<UpReason>,
    /// Bring-up guest groups (ascending order, unordered last), fixed when it begins.
    pub start_groups: Vec<GuestGroup>,
    /// Startup: nodes that did not return within the bound.
    pub missing: BTreeSet<String>,
    /// Startup: a notice about waiting for quorum was sent.
    pub quorum_notified: bool,
    /// Every send, in order.
    pub sent: Vec<Sent>,
}

impl ShutdownState {
    pub fn new(plan: Plan) -> Self {
        ShutdownState {
            plan,
            stage: Stage::Planned,
            now_ms: 0,
            schedule: None,
            stage_deadline_ms: None,
            stage_targets: Vec::new(),
            hold_until_ms: None,
            no_return: false,
            up_reason: None,
            start_groups: Vec::new(),
            missing: BTreeSet::new(),
            quorum_notified: false,
            sent: Vec::new(),
        }
    }

    /// The latest send of (node, step), if any.
    pub fn last_sent(&self, node: &str, step: &str) -> Option<&Sent> {
        self.sent
            .iter()
            .rev()
            .find(|s| s.key.node == node && s.key.step == step)
    }

    /// Sends still waiting for an answer.
    pub fn outstanding(&self) -> impl Iterator<Item = &Sent> {
        self.sent.iter().filter(|s| s.outcome == Outcome::Pending)
    }

    /// True once anything of `step` (any node) was sent.
    pub fn was_sent(&self, step: &str) -> bool {
        self.sent.iter().any(|s| s.key.step == step)
    }
}

/// What happened. Node facts are in the view, not in events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// Operator confirmed the plan (or a UPS event started it).
    Start {
        now_ms: u64,
    },
    Tick {
        now_ms: u64,
    },
    CommandResult {
        key: Key,
        ok: bool,
        output: String,
    },
    /// A node's report or session changed (a wake-up; the machine is level-triggered).
    NodeChanged {
        node: String,
    },
    /// Operator `shutdown cancel`.
    Cancel,
    /// UPS: power is back.
    PowerRestored,
    /// `fleetward startup`, in `Down`.
    StartUp {
        now_ms: u64,
    },
    /// The driver restarted from the journal: re-send what is outstanding, same keys.
    Recovered,
}

/// What the driver must do, after persisting the new state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    SendAction {
        key: Key,
        node: String,
        action: Action,
    },
    /// For the audit log, `shutdown status` and the webhook.
    Notify(Notice),
}

/// Events worth telling a person about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Notice {
    Started {
        /// Guest stops are short and forced because the deadline is near.
        forced: bool,
    },
    Stage {
        stage: Stage,
    },
    /// A stage's bound passed; these keys are abandoned and the operation continues.
    MovedOn {
        stage: Stage,
        abandoned: Vec<String>,
        /// Actions that answered ok whose effect was never observed (e.g. `pve-01: guest
        /// 101 still running`).
        #[serde(default)]
        unobserved: Vec<String>,
    },
    ActionFailed {
        key: String,
        output: String,
        retrying: bool,
    },
    /// Nothing was sent to this node: it was already offline.
    NodeAlreadyDown {
        node: String,
    },
    Cancelled {
        reason: UpReason,
    },
    Refused {
        reason: String,
    },
    /// Every power-off was sent.
    Down,
    StartupBegun,
    WaitingForQuorum,
    /// Startup: these nodes did not return within the bound; the rest continue.
    NotReturned {
        nodes: Vec<String>,
    },
    /// `noout` stays set because these OSD nodes are missing.
    NooutLeftSet {
        missing: Vec<String>,
    },
    GuestsNotStarted {
        node: String,
        vmids: Vec<u32>,
    },
    /// Entering [`Stage::AwaitWatchdogs`]: these online nodes' reports cannot tell whether
    /// their HA resource manager holds its watchdog ("not observable on this node"); they
    /// are not waited for.
    WatchdogsUnobservable {
        nodes: Vec<String>,
    },
    Finished,
    /// This shutdown preempted another operation (power loss outranks maintenance):
    /// which, and how its in-flight actions ended. Written by the driver at the start.
    Preempted {
        detail: String,
    },
}
