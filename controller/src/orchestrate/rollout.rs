//! Rolling updates on the one driver ([`super`]): the rollout machine ([`crate::rollout`])
//! with its journal record, its view of the cluster, and its maintenance window.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Effect, Handle, Machine};
use crate::clock::now_ms;
use crate::config::{NonHaGuests, RolloutConfig};
use crate::operation::{Key, Wake};
use crate::rollout::{
    self, node_view, ClusterView, Command, Event, Notice, Phase, RolloutState, Status,
};
use crate::state::Controller;
use crate::window::Window;
use fleetward_proto::action::Action as AgentAction;

/// Id prefix of rollouts in the store's `operations` tree.
pub const ROLLOUT_PREFIX: &str = "rollout-";

/// A rollout as stored: the machine's state plus what only the driver knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub state: RolloutState,
    /// Nodes are only started inside this window.
    #[serde(default)]
    pub window: Option<String>,
    /// The driver paused it because the window closed (not the operator).
    #[serde(default)]
    pub window_paused: bool,
    pub created_ms: u64,
    pub actor: String,
}

impl Rollout {
    pub fn new(plan: rollout::Plan, window: Option<String>, actor: String) -> Self {
        Rollout {
            state: RolloutState::new(plan),
            window,
            window_paused: false,
            created_ms: now_ms(),
            actor,
        }
    }

    pub fn id(&self) -> &str {
        &self.state.plan.id
    }

    pub fn finished(&self) -> bool {
        matches!(self.state.status, Status::Completed | Status::Aborted)
    }
}

/// The handle the operator API holds.
pub type Rollouts = Handle<RolloutMachine>;

/// Starts the rollout driver; it resumes an unfinished rollout from the store first.
pub fn spawn(ctl: std::sync::Arc<Controller>) -> Rollouts {
    let cfg = ctl.config().rollout.clone();
    let tick = Duration::from_millis(cfg.tick_ms);
    super::spawn(ctl, RolloutMachine::new(cfg), tick)
}

/// The cluster as the controller sees it now: every enrolled, not revoked node.
/// `reconnecting`: nodes in their turn whose session ended less than the driver's offline
/// grace ago; they count as online until the grace is over (the machine then hears
/// `NodeOffline`).
pub fn cluster_view(ctl: &Controller, reconnecting: &BTreeSet<String>) -> ClusterView {
    let now = now_ms();
    let mut view = ClusterView::default();
    for rec in ctl.store().list_nodes().unwrap_or_default() {
        if rec.revoked {
            continue;
        }
        let latest = ctl.latest(&rec.name);
        let age = ctl.last_seen_ms(&rec).map(|t| now.saturating_sub(t));
        let mut nv = node_view(
            latest.as_ref().map(|(r, _)| r.as_ref()),
            ctl.is_online(&rec.name) || reconnecting.contains(&rec.name),
            age,
            latest.as_ref().map_or(0, |(_, seq)| *seq),
        );
        // Where the report cannot tell `noout`, the OSD map the agent read after its noout
        // action (its OSD counts are not used: read before a reboot, they would be stale).
        if let Some(p) = ctl.ceph_probe(&rec.name) {
            nv.noout = nv.noout.or(Some(p.noout));
        }
        view.nodes.insert(rec.name, nv);
    }
    view
}

/// Maps the machine's action to the agent's.
fn agent_action(a: rollout::Action, cfg: &RolloutConfig) -> AgentAction {
    match a {
        rollout::Action::MaintenanceOn => AgentAction::MaintenanceOn,
        rollout::Action::WaitGuestsMigrated => AgentAction::WaitGuestsMigrated {
            timeout_secs: (cfg.timeouts.action_ms / 1000).min(3600),
        },
        rollout::Action::AptUpdate => AgentAction::AptUpdate,
        rollout::Action::AptDistUpgrade => AgentAction::AptDistUpgrade,
        rollout::Action::BootRefresh => AgentAction::BootRefresh,
        rollout::Action::CephSetNoout => AgentAction::CephSetNoout,
        rollout::Action::Reboot => AgentAction::Reboot,
        rollout::Action::CephUnsetNoout => AgentAction::CephUnsetNoout,
        rollout::Action::MaintenanceOff => AgentAction::MaintenanceOff,
    }
}

/// Non-HA guests running on the plan's nodes, when the policy refuses them.
pub fn refused_guests(ctl: &Controller, nodes: &[String]) -> Vec<String> {
    if ctl.config().rollout.non_ha_guests != NonHaGuests::Refuse {
        return Vec::new();
    }
    nodes
        .iter()
        .filter_map(|n| {
            let (r, _) = ctl.latest(n)?;
            let ids: Vec<String> = r
                .facts
                .guests
                .iter()
                .filter(|g| !g.ha && g.state == fleetward_proto::GuestState::Running)
                .map(|g| {
                    if g.ha_ignored {
                        format!("{} (HA resource in state ignored)", g.vmid)
                    } else {
                        g.vmid.to_string()
                    }
                })
                .collect();
            (!ids.is_empty()).then(|| format!("{n} runs non-HA guests {}", ids.join(", ")))
        })
        .collect()
}

/// The rollout machine on the driver.
pub struct RolloutMachine {
    cfg: RolloutConfig,
}

impl RolloutMachine {
    pub fn new(cfg: RolloutConfig) -> Self {
        RolloutMachine { cfg }
    }
}

impl Machine for RolloutMachine {
    const KIND: &'static str = "rollout";
    type Record = Rollout;
    type Event = Event;
    type View = ClusterView;
    type Notice = Notice;

    fn id(r: &Rollout) -> &str {
        r.id()
    }
    fn created_ms(r: &Rollout) -> u64 {
        r.created_ms
    }
    fn finished(r: &Rollout) -> bool {
        r.finished()
    }
    fn busy(r: &Rollout) -> String {
        format!(
            "rollout {} is not finished ({}): stop it with `fleetward rollout abort` \
             (`--restore` brings its nodes back), or preempt it with `fleetward shutdown \
             start --preempt`",
            r.id(),
            status_word(&r.state.status)
        )
    }
    fn clock(r: &mut Rollout) -> &mut u64 {
        &mut r.state.now_ms
    }
    fn start(_now_ms: u64) -> Event {
        Event::Start
    }

    fn wake(&self, r: &Rollout, w: Wake) -> Option<Event> {
        Some(match w {
            Wake::Tick { now_ms } => Event::Tick { now_ms },
            // A report of a node outside the plan changes nothing the machine acts on now;
            // the next tick sees it (e.g. for the "others online" gate).
            Wake::NodeChanged { node } => {
                r.state.node(&node)?;
                Event::NodeChanged { node }
            }
            Wake::NodeOffline { node } => Event::NodeOffline { node },
            Wake::CommandResult { key, ok, output } => Event::CommandResult { key, ok, output },
            Wake::Recovered => Event::Recovered,
        })
    }

    fn outstanding(r: &Rollout) -> Vec<Key> {
        r.state
            .nodes
            .iter()
            .filter_map(|n| n.pending.as_ref())
            .map(|p| p.key.clone())
            .collect()
    }

    /// Every enrolled node except those waiting for their reboot.
    fn expected_online(&self, r: &Rollout, ctl: &Controller) -> Vec<String> {
        let rebooting = |name: &str| {
            r.state
                .node(name)
                .is_some_and(|n| n.phase == Phase::AwaitReturn)
        };
        ctl.store()
            .list_nodes()
            .unwrap_or_default()
            .into_iter()
            .filter(|rec| !rec.revoked && !rebooting(&rec.name))
            .map(|rec| rec.name)
            .collect()
    }

    fn recover_grace_ms(&self, r: &Rollout) -> u64 {
        r.state.plan.timeouts.max_silence_ms
    }

    /// A node in its turn whose session just ended counts as online until the grace is
    /// over; any other disconnected node is offline at once (it must not look online to
    /// the gate that starts the next node).
    fn view(&self, r: &Rollout, ctl: &Controller, reconnecting: &BTreeSet<String>) -> ClusterView {
        let in_turn: BTreeSet<String> = reconnecting
            .iter()
            .filter(|n| r.state.node(n).is_some_and(|n| n.phase.in_flight()))
            .cloned()
            .collect();
        cluster_view(ctl, &in_turn)
    }

    fn step(&self, r: &Rollout, ev: &Event, view: &ClusterView) -> (Rollout, Vec<Effect<Notice>>) {
        let (state, commands) = rollout::step(&r.state, ev, view);
        let effects = commands
            .into_iter()
            .map(|c| match c {
                Command::SendAction { key, node, action } => Effect::Send {
                    key,
                    node,
                    action: agent_action(action, &self.cfg),
                },
                Command::RequestRefresh { node } => Effect::Refresh { node },
                Command::Notify(n) => Effect::Notify(n),
            })
            .collect();
        let mut next = r.clone();
        next.state = state;
        (next, effects)
    }

    /// Phase changes are in the rollout's own event log; the audit log gets the rest.
    fn audited(n: &Notice) -> bool {
        !matches!(n, Notice::Phase { .. })
    }

    fn refusal(n: &Notice) -> Option<&str> {
        match n {
            Notice::Refused { reason } => Some(reason),
            _ => None,
        }
    }

    /// The maintenance window: paused when it closes, resumed when it opens again (only
    /// if the window paused it, not the operator).
    fn on_tick(&self, r: &mut Rollout, now_ms: u64) -> Vec<Event> {
        let Some(w) = r.window.as_deref().and_then(|w| Window::parse(w).ok()) else {
            return Vec::new();
        };
        match (&r.state.status, r.window_paused, w.contains_ms(now_ms)) {
            (Status::Running, _, false) => {
                r.window_paused = true;
                vec![Event::Pause]
            }
            (Status::Paused, true, true) => {
                r.window_paused = false;
                vec![Event::Resume]
            }
            _ => Vec::new(),
        }
    }

    /// An operator's pause or resume takes over from the window.
    fn on_control(&self, r: &mut Rollout, ev: &Event) {
        if matches!(ev, Event::Pause | Event::Resume) {
            r.window_paused = false;
        }
    }
}

/// One word for a status.
pub fn status_word(s: &Status) -> &'static str {
    match s {
        Status::Planned => "planned",
        Status::Running => "running",
        Status::Paused => "paused",
        Status::Halted { .. } => "halted",
        Status::Aborted => "aborted",
        Status::Completed => "completed",
    }
}
