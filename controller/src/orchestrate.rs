//! The rollout driver: the one place where the pure machine's decisions become I/O.
//!
//! One task owns the active rollout. For every event (a session event, an operator request,
//! a timer tick) it:
//!
//! 1. builds the [`ClusterView`] from the controller's latest reports and sessions,
//! 2. calls [`rollout::step`],
//! 3. **writes the new state and its notices to the store and flushes** (write-ahead),
//! 4. only then sends the commands (actions with their idempotency keys as command ids,
//!    refresh requests) and delivers notices (audit log, webhook).
//!
//! If step 3 fails nothing is sent. After a crash or restart the task loads the unfinished
//! rollout and steps it with [`Event::Recovered`], which re-sends outstanding commands under
//! the same keys; agents answer those from their at-most-once record instead of acting
//! twice. An agent that reconnects gets the same treatment.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::clock::now_ms;
use crate::config::{NonHaGuests, RolloutConfig};
use crate::events::{AgentEvent, AgentEventKind};
use crate::rollout::{
    self, node_view, ClusterView, Command, Event, IdempotencyKey, Notice, Plan, RebootPolicy,
    RolloutState, Status, Timeouts,
};
use crate::state::Controller;
use crate::store::OpEvent;
use crate::window::Window;
use fleetward_proto::action::{Action as AgentAction, ActionRequest};
use fleetward_proto::api;

/// Id prefix of rollouts in the store's `operations` tree.
pub const ROLLOUT_PREFIX: &str = "rollout-";

/// How many output lines per node `rollout status` shows.
const OUTPUT_LINES: usize = 20;

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
    fn id(&self) -> &str {
        &self.state.plan.id
    }

    fn finished(&self) -> bool {
        matches!(self.state.status, Status::Completed | Status::Aborted)
    }
}

/// What the operator API asks the driver.
pub enum Request {
    Start {
        plan: Plan,
        window: Option<String>,
        actor: String,
        reply: oneshot::Sender<Result<Rollout, String>>,
    },
    Control {
        id: Option<String>,
        event: Event,
        actor: String,
        reply: oneshot::Sender<Result<Rollout, String>>,
    },
    Output {
        reply: oneshot::Sender<BTreeMap<String, Vec<String>>>,
    },
}

/// The handle the operator API holds.
#[derive(Clone)]
pub struct Rollouts {
    tx: mpsc::Sender<Request>,
}

impl Rollouts {
    pub async fn request(&self, req: Request) -> Result<(), String> {
        self.tx
            .send(req)
            .await
            .map_err(|_| "the rollout driver stopped".to_string())
    }
}

/// Builds the timeouts of a plan from the configuration.
pub fn timeouts(cfg: &RolloutConfig) -> Timeouts {
    Timeouts {
        action_ms: cfg.action_timeout_secs * 1000,
        refresh_ms: cfg.refresh_timeout_secs * 1000,
        reboot_ms: cfg.reboot_timeout_secs * 1000,
        post_reboot_ms: cfg.post_reboot_timeout_secs * 1000,
        max_silence_ms: cfg.max_silence_secs * 1000,
    }
}

/// The cluster as the controller sees it now: every enrolled, not revoked node.
pub fn cluster_view(ctl: &Controller) -> ClusterView {
    let now = now_ms();
    let mut view = ClusterView::default();
    for rec in ctl.store().list_nodes().unwrap_or_default() {
        if rec.revoked {
            continue;
        }
        let latest = ctl.latest(&rec.name);
        let age = ctl.last_seen_ms(&rec).map(|t| now.saturating_sub(t));
        let nv = node_view(
            latest.as_ref().map(|(r, _)| r.as_ref()),
            ctl.is_online(&rec.name),
            age,
            latest.as_ref().map_or(0, |(_, seq)| *seq),
        );
        view.nodes.insert(rec.name, nv);
    }
    view
}

/// Maps the machine's action to the agent's.
fn agent_action(a: rollout::Action, cfg: &RolloutConfig) -> AgentAction {
    match a {
        rollout::Action::MaintenanceOn => AgentAction::MaintenanceOn,
        rollout::Action::WaitGuestsMigrated => AgentAction::WaitGuestsMigrated {
            timeout_secs: cfg.action_timeout_secs.min(3600),
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
                .map(|g| g.vmid.to_string())
                .collect();
            (!ids.is_empty()).then(|| format!("{n} runs non-HA guests {}", ids.join(", ")))
        })
        .collect()
}

/// How long a node may be disconnected before the rollout treats it as gone.
const OFFLINE_GRACE_MS: u64 = 10_000;

struct Driver {
    ctl: Arc<Controller>,
    active: Option<Rollout>,
    /// After the controller restarts, agents need a moment to reconnect: until this time
    /// (or until they are all back) the resumed rollout is not stepped, so a node that is
    /// merely reconnecting does not halt it.
    reconnect_grace_until: Option<u64>,
    /// Nodes whose session ended (unix ms): a node that reconnects within
    /// [`OFFLINE_GRACE_MS`] (an agent restarted by its own package upgrade, a dropped
    /// connection) does not halt the rollout; the machine hears of it only after that.
    offline_since: HashMap<String, u64>,
    /// Recent output lines of running actions, per node.
    output: HashMap<String, VecDeque<String>>,
    webhook: Option<String>,
}

/// Starts the driver task; it resumes an unfinished rollout from the store first.
pub fn spawn(ctl: Arc<Controller>) -> Rollouts {
    let (tx, rx) = mpsc::channel::<Request>(16);
    let events = ctl.subscribe();
    let tick = Duration::from_millis(ctl.config().rollout.tick_ms.max(10));
    let d = Driver {
        webhook: ctl.config().webhook.clone(),
        ctl,
        active: None,
        reconnect_grace_until: None,
        offline_since: HashMap::new(),
        output: HashMap::new(),
    };
    run_loop(d, events, rx, tick);
    Rollouts { tx }
}

/// What a driver task does with each input; [`run_loop`] feeds it.
pub(crate) trait Drive: Send + 'static {
    type Request: Send + 'static;
    /// Once, before anything else: resume an unfinished operation from the store.
    fn recover(&mut self);
    fn on_agent_event(&mut self, ev: AgentEvent);
    /// Events were missed: the machines are level-triggered, one more look suffices.
    fn on_lagged(&mut self);
    fn on_tick(&mut self);
    fn on_request(&mut self, req: Self::Request);
}

/// The driver task: session events, a timer and operator requests, one at a time, until
/// the controller drops the event broadcast or the request channel.
pub(crate) fn run_loop<D: Drive>(
    mut d: D,
    mut events: broadcast::Receiver<AgentEvent>,
    mut rx: mpsc::Receiver<D::Request>,
    tick: Duration,
) {
    tokio::spawn(async move {
        d.recover();
        let mut timer = tokio::time::interval(tick);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Ok(ev) => d.on_agent_event(ev),
                    Err(broadcast::error::RecvError::Lagged(_)) => d.on_lagged(),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = timer.tick() => d.on_tick(),
                req = rx.recv() => match req {
                    Some(req) => d.on_request(req),
                    None => return,
                },
            }
        }
    });
}

impl Drive for Driver {
    type Request = Request;
    fn recover(&mut self) {
        Driver::recover(self)
    }
    fn on_agent_event(&mut self, ev: AgentEvent) {
        Driver::on_agent_event(self, ev)
    }
    fn on_lagged(&mut self) {
        self.step(Event::Recovered)
    }
    fn on_tick(&mut self) {
        Driver::on_tick(self)
    }
    fn on_request(&mut self, req: Request) {
        Driver::on_request(self, req)
    }
}

impl Driver {
    fn recover(&mut self) {
        let all: Vec<Rollout> = match self.ctl.store().list_operations(ROLLOUT_PREFIX) {
            Ok(all) => all,
            Err(e) => {
                tracing::error!(error = %e, "cannot read rollouts; the driver will not act");
                return;
            }
        };
        if let Some(r) = all
            .into_iter()
            .filter(|r| !r.finished())
            .max_by_key(|r| r.created_ms)
        {
            tracing::info!(rollout = %r.id(), "resuming rollout after restart");
            let grace = r.state.plan.timeouts.max_silence_ms;
            self.active = Some(r);
            self.reconnect_grace_until = Some(now_ms().saturating_add(grace));
            self.step(Event::Recovered);
        }
    }

    fn on_tick(&mut self) {
        let now = now_ms();
        let gone: Vec<String> = self
            .offline_since
            .iter()
            .filter(|(_, since)| now.saturating_sub(**since) >= OFFLINE_GRACE_MS)
            .map(|(node, _)| node.clone())
            .collect();
        for node in gone {
            self.offline_since.remove(&node);
            if !self.ctl.is_online(&node) {
                self.step(Event::NodeOffline { node });
            }
        }
        if self.reconnect_grace_until.is_some() {
            // Still (or just no longer) waiting for agents after a restart: re-send what is
            // outstanding once they are back.
            self.step(Event::Recovered);
            return;
        }
        if let Some(r) = &self.active {
            if let Some(w) = r.window.as_deref().and_then(|w| Window::parse(w).ok()) {
                let inside = w.contains_ms(now);
                match (&r.state.status, r.window_paused, inside) {
                    (Status::Running, _, false) => {
                        self.set_window_paused(true);
                        self.step(Event::Pause);
                    }
                    (Status::Paused, true, true) => {
                        self.set_window_paused(false);
                        self.step(Event::Resume);
                    }
                    _ => {}
                }
            }
        }
        self.step(Event::Tick { now_ms: now });
    }

    fn set_window_paused(&mut self, paused: bool) {
        if let Some(r) = self.active.as_mut() {
            r.window_paused = paused;
        }
    }

    fn on_agent_event(&mut self, ev: AgentEvent) {
        let node = ev.node;
        let event = match ev.kind {
            AgentEventKind::Report => Event::NodeReport { node },
            AgentEventKind::Connected { .. } => {
                self.offline_since.remove(&node);
                Event::Recovered
            }
            AgentEventKind::Disconnected => {
                if !self.ctl.is_online(&node) {
                    // Not replaced by a newer session: gone, unless back within the grace
                    // (see `on_tick`).
                    self.offline_since.entry(node).or_insert_with(now_ms);
                }
                return;
            }
            AgentEventKind::CommandAck { .. } => return,
            AgentEventKind::CommandOutput { id, line } => {
                tracing::info!(node = %node, command = %id, "{line}");
                let lines = self.output.entry(node).or_default();
                lines.push_back(line);
                while lines.len() > OUTPUT_LINES {
                    lines.pop_front();
                }
                return;
            }
            AgentEventKind::CommandResult {
                id, ok, message, ..
            } => {
                let Some(key) = self.pending_key(&id) else {
                    return; // not ours, or an answer to an older attempt
                };
                Event::CommandResult {
                    key,
                    ok,
                    output: message,
                }
            }
        };
        self.step(event);
    }

    /// The outstanding key whose text is `id`.
    fn pending_key(&self, id: &str) -> Option<IdempotencyKey> {
        let r = self.active.as_ref()?;
        r.state
            .nodes
            .iter()
            .filter_map(|n| n.pending.as_ref())
            .find(|p| p.key.to_string() == id)
            .map(|p| p.key.clone())
    }

    fn on_request(&mut self, req: Request) {
        match req {
            Request::Start {
                plan,
                window,
                actor,
                reply,
            } => {
                if let Some(r) = self.active.as_ref().filter(|r| !r.finished()) {
                    let _ = reply.send(Err(format!(
                        "rollout {} is not finished ({}); abort it first",
                        r.id(),
                        status_word(&r.state.status)
                    )));
                    return;
                }
                self.output.clear();
                self.active = Some(Rollout {
                    state: RolloutState::new(plan),
                    window,
                    window_paused: false,
                    created_ms: now_ms(),
                    actor,
                });
                self.step(Event::Start);
                let _ = reply.send(self.active.clone().ok_or_else(|| "not started".into()));
            }
            Request::Control {
                id,
                event,
                actor,
                reply,
            } => {
                let matches = self
                    .active
                    .as_ref()
                    .is_some_and(|r| id.as_deref().is_none_or(|id| id == r.id()));
                if !matches {
                    let _ = reply.send(Err(match id {
                        Some(id) => format!("rollout {id} is not the current rollout"),
                        None => "there is no rollout".into(),
                    }));
                    return;
                }
                if matches!(event, Event::Pause | Event::Resume) {
                    self.set_window_paused(false);
                }
                if let Some(r) = &self.active {
                    let what = match &event {
                        Event::Skip { node } => format!("skip {node}"),
                        e => format!("{e:?}").to_lowercase(),
                    };
                    self.ctl
                        .audit_event(&actor, "rollout.control", r.id(), what);
                }
                self.step(event);
                let _ = reply.send(self.active.clone().ok_or_else(|| "no rollout".into()));
            }
            Request::Output { reply } => {
                let out = self
                    .output
                    .iter()
                    .map(|(k, v)| (k.clone(), v.iter().cloned().collect()))
                    .collect();
                let _ = reply.send(out);
            }
        }
    }

    /// Whether to hold off after a restart: within the grace period and some node that is
    /// expected online (every enrolled node except those waiting for their reboot) is not
    /// back yet. Ends for good once everyone is back or the time is up.
    fn reconnecting(&mut self, view: &ClusterView) -> bool {
        let (Some(until), Some(r)) = (self.reconnect_grace_until, self.active.as_ref()) else {
            return false;
        };
        let rebooting = |name: &str| {
            r.state
                .node(name)
                .is_some_and(|n| n.phase == rollout::Phase::AwaitReturn)
        };
        let missing = view
            .nodes
            .iter()
            .any(|(name, nv)| !nv.online && !rebooting(name));
        if missing && now_ms() < until {
            return true;
        }
        self.reconnect_grace_until = None;
        false
    }

    /// One step: view → machine → persist → send.
    fn step(&mut self, event: Event) {
        // Without an unfinished rollout nothing is built: the view costs a pass over every
        // node, and reports arrive by the thousand per second.
        let Some(current) = self.active.as_ref() else {
            return;
        };
        if current.finished() && !matches!(event, Event::Start) {
            return;
        }
        // A report of a node outside the plan changes nothing the machine acts on now; the
        // next tick sees it (e.g. for the "others online" gate).
        if let Event::NodeReport { node } = &event {
            if current.state.node(node).is_none() {
                return;
            }
        }
        let view = cluster_view(&self.ctl);
        if self.reconnecting(&view) {
            return;
        }
        let Some(current) = self.active.as_ref() else {
            return;
        };
        let (state, commands) = rollout::step(&current.state, &event, &view);
        let mut next = current.clone();
        next.state = state;
        let now = now_ms();
        let notices: Vec<&Notice> = commands
            .iter()
            .filter_map(|c| match c {
                Command::Notify(n) => Some(n),
                _ => None,
            })
            .collect();
        let events: Vec<OpEvent> = notices
            .iter()
            .map(|n| OpEvent {
                time_ms: now,
                event: serde_json::to_value(n).unwrap_or_default(),
            })
            .collect();
        if next != *current || !events.is_empty() {
            // Write-ahead: nothing is sent unless the state that sends it is durable.
            if let Err(e) = self.ctl.store().put_operation(next.id(), &next, &events) {
                tracing::error!(error = %e, "cannot persist the rollout; sending nothing");
                return;
            }
        }
        let id = next.id().to_string();
        self.active = Some(next);
        let cfg = self.ctl.config().rollout.clone();
        for c in commands {
            match c {
                Command::SendAction { key, node, action } => {
                    let req = ActionRequest {
                        id: key.to_string(),
                        action: agent_action(action, &cfg),
                    };
                    tracing::info!(node = %node, command = %req.id, "sending action");
                    self.output.remove(&node);
                    if let Err(e) = self.ctl.send_command(&node, api::Command::action(&req)) {
                        // The machine's timeouts and reachability gate handle it.
                        tracing::warn!(node = %node, error = %e, "action not sent");
                    }
                }
                Command::RequestRefresh { node } => {
                    let cid = format!("{id}/{node}/refresh/{}", now_ms());
                    if let Err(e) = self.ctl.send_command(&node, api::Command::refresh(cid)) {
                        tracing::warn!(node = %node, error = %e, "refresh not sent");
                    }
                }
                Command::Notify(n) => self.notify(&id, now, &n),
            }
        }
    }

    fn notify(&self, id: &str, now: u64, n: &Notice) {
        let event = serde_json::to_value(n).unwrap_or_default();
        let name = event
            .get("event")
            .and_then(|e| e.as_str())
            .unwrap_or("event")
            .to_string();
        // Phase changes are in the rollout's own event log; the audit log gets the rest.
        if !matches!(n, Notice::Phase { .. }) {
            self.ctl.audit_event(
                "fleetward",
                &format!("rollout.{name}"),
                id,
                event.to_string(),
            );
        }
        crate::webhook::spawn_event(self.webhook.as_deref(), id, now, &event);
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

/// Parses `--reboot`.
pub fn reboot_policy(s: &str) -> Result<RebootPolicy, String> {
    match s {
        "" | "if-needed" => Ok(RebootPolicy::IfNeeded),
        "always" => Ok(RebootPolicy::Always),
        "never" => Ok(RebootPolicy::Never),
        other => Err(format!(
            "unknown reboot policy {other:?} (if-needed, always, never)"
        )),
    }
}
