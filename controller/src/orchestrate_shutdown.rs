//! The shutdown driver: where the pure [`crate::shutdown`] machine's decisions become I/O.
//! Built like the rollout driver ([`crate::orchestrate`]).
//!
//! One task owns the active shutdown. For every event (a session event, an operator or UPS
//! request, a timer tick) it:
//!
//! 1. builds the [`ShutdownView`] from the controller's latest reports and sessions
//!    ([`view`]),
//! 2. calls [`shutdown::step`],
//! 3. **writes the new state and its notices to the store and flushes** (write-ahead),
//! 4. only then sends the actions (the [`shutdown::Key`] is the command id, which the agent
//!    executes at most once) and delivers notices (audit log, webhook).
//!
//! If step 3 fails nothing is sent. On start the task loads the unfinished shutdown
//! (`shutdown-*` in the store's operations) and, after a short grace for the agents it
//! expects to reconnect (`[shutdown] recover_grace_ms`), steps it with
//! [`Event::Recovered`], which re-sends outstanding actions under the same keys. Without the
//! grace, a restarted controller would step on a half-reconnected cluster and count nodes
//! that are merely reconnecting as powered off (skipping their power-off) or their guests as
//! unstartable. A reconnecting agent gets `Recovered` too (a command to an offline node is
//! lost, not queued). `Down` waits for `fleetward startup`; that persisted state carries
//! everything the startup needs, so a controller that was powered off with its host (the
//! last node) resumes from it.
//!
//! # HA disarm support
//!
//! The report does not carry the pve-ha-manager version (the agent lists only boot
//! packages), so `[shutdown] ha_mode` decides: `disarm` (the operator knows every node runs
//! pve-ha-manager >= 5.1.3: one cluster-wide `disarm-ha freeze`), `maintenance` (per-node
//! maintenance mode, works on every version), or `auto` (the default): disarm when every
//! online node's report knows the disarm state (`facts.ha.disarmed` is set). Real agents
//! leave that unknown today, so on real nodes `auto` means maintenance mode; simulated
//! nodes report it and get the disarm path.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::clock::now_ms;
use crate::config::{Config as ControllerConfig, HaMode};
use crate::events::{AgentEvent, AgentEventKind};
use crate::shutdown::{
    self, Command, Event, GuestView, Key, NodeView, Notice, Plan, ShutdownState, ShutdownView,
    Stage, UpReason,
};
use crate::state::Controller;
use crate::store::OpEvent;
use fleetward_proto::action::ActionRequest;
use fleetward_proto::{api, GuestState, Report};

/// Id prefix of shutdowns in the store's `operations` tree.
pub const SHUTDOWN_PREFIX: &str = "shutdown-";

/// A shutdown as stored: the machine's state plus what only the driver knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shutdown {
    pub state: ShutdownState,
    pub created_ms: u64,
    /// Who started it (operator name, or `ups` for a power event).
    pub actor: String,
}

impl Shutdown {
    pub fn id(&self) -> &str {
        &self.state.plan.id
    }

    /// Cancelled and restored, or started up again. `Down` is not finished: it waits for
    /// `fleetward startup`.
    pub fn finished(&self) -> bool {
        self.state.stage == Stage::Finished
    }
}

/// What the shutdown API asks the driver.
pub enum Request {
    Start {
        plan: Box<Plan>,
        actor: String,
        reply: oneshot::Sender<Result<Shutdown, String>>,
    },
    /// `Cancel`, `PowerRestored` or `StartUp` for the active shutdown (`id`: must be it).
    /// The reply carries the notices of that step (a `Refused` one says why nothing
    /// happened).
    Control {
        id: Option<String>,
        event: Event,
        reply: oneshot::Sender<Result<(Shutdown, Vec<Notice>), String>>,
    },
}

/// The handle the shutdown API holds.
#[derive(Clone)]
pub struct Shutdowns {
    tx: mpsc::Sender<Request>,
}

impl Shutdowns {
    pub async fn request(&self, req: Request) -> Result<(), String> {
        self.tx
            .send(req)
            .await
            .map_err(|_| "the shutdown driver stopped".to_string())
    }
}

/// One node as the shutdown machine sees it, from its latest report and its session.
pub fn node_view(
    report: Option<&Report>,
    online: bool,
    session_boot_id: Option<String>,
) -> NodeView {
    let Some(r) = report else {
        return NodeView {
            online,
            boot_id: session_boot_id,
            ..NodeView::default()
        };
    };
    let f = &r.facts;
    let guests = f
        .guests
        .iter()
        .filter(|g| g.state != GuestState::Migrated)
        .map(|g| GuestView {
            vmid: g.vmid,
            kind: g.kind,
            running: g.state == GuestState::Running,
            onboot: g.onboot,
            order: g.order,
            up: g.up.map(u64::from),
            down: g.down.map(u64::from),
            ha: g.ha,
        })
        .collect();
    NodeView {
        online,
        // The session's Hello is newer than any report after a reboot.
        boot_id: session_boot_id.or_else(|| f.node.boot_id.clone()),
        quorate: f.cluster.quorate,
        ceph_mon: f.ceph.as_ref().is_some_and(|c| c.monitor_here),
        ceph_osds: f.ceph.as_ref().is_some_and(|c| !c.osds_here.is_empty()),
        guests,
    }
}

/// Whether the cluster-wide HA disarm is used (see the module docs).
pub fn ha_disarm_supported(mode: HaMode, online_reports: &[Option<&Report>]) -> bool {
    match mode {
        HaMode::Disarm => true,
        HaMode::Maintenance => false,
        HaMode::Auto => {
            !online_reports.is_empty()
                && online_reports
                    .iter()
                    .all(|r| r.is_some_and(|r| r.facts.ha.disarmed.is_some()))
        }
    }
}

/// The cluster as the controller sees it now: every enrolled, not revoked node.
pub fn view(ctl: &Controller) -> ShutdownView {
    let mut view = ShutdownView::default();
    let nodes = match ctl.store().list_nodes() {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(error = %e, "cannot list nodes for the shutdown view");
            return view;
        }
    };
    let mut latest = Vec::new();
    for rec in nodes.into_iter().filter(|r| !r.revoked) {
        let online = ctl.is_online(&rec.name);
        let report = ctl.latest(&rec.name).map(|(r, _)| r);
        let boot = online.then(|| rec.boot_id.clone()).flatten();
        view.nodes
            .insert(rec.name.clone(), node_view(report.as_deref(), online, boot));
        if online {
            latest.push(report);
        }
    }
    let refs: Vec<Option<&Report>> = latest.iter().map(|r| r.as_deref()).collect();
    view.ha_disarm_supported = ha_disarm_supported(ctl.config().shutdown.ha_mode, &refs);
    view
}

/// The machine's configuration for a new plan.
pub fn plan_config(
    cfg: &ControllerConfig,
    reason: Option<String>,
    deadline_ms: Option<u64>,
) -> shutdown::Config {
    shutdown::Config {
        tiers: (!cfg.shutdown.tiers.is_empty()).then(|| cfg.shutdown.tiers.clone()),
        controller_host: cfg.host_node.clone(),
        deadline_ms,
        reason,
        timing: cfg.shutdown.timing(),
    }
}

/// The nodes a restarted controller waits for before it steps the operation again: those
/// that should be up in the operation's current stage.
pub fn expected_nodes(s: &ShutdownState) -> Vec<String> {
    let plan = &s.plan;
    let members = plan
        .tiers
        .iter()
        .flatten()
        .filter(|n| !plan.offline.contains(n));
    match s.stage {
        Stage::Planned | Stage::Down | Stage::AwaitNodes | Stage::Finished => Vec::new(),
        Stage::StopGuests { .. } | Stage::DisarmHa | Stage::SetNoout | Stage::PowerOff { .. } => {
            members
                .filter(|n| s.last_sent(n, "power-off").is_none())
                .cloned()
                .collect()
        }
        Stage::UnsetNoout | Stage::ArmHa | Stage::StartGuests { .. } => members
            .filter(|n| !s.missing.contains(*n))
            .filter(|n| {
                s.up_reason == Some(UpReason::Startup) || s.last_sent(n, "power-off").is_none()
            })
            .cloned()
            .collect(),
    }
}

struct Driver {
    ctl: Arc<Controller>,
    active: Option<Shutdown>,
    webhook: Option<String>,
    /// After a restart: nothing is stepped until this time (unix ms) or until every
    /// expected node is back; then one `Recovered`.
    grace_until: Option<u64>,
}

/// Starts the driver task; it resumes an unfinished shutdown from the store first.
pub fn spawn(ctl: Arc<Controller>) -> Shutdowns {
    let (tx, rx) = mpsc::channel::<Request>(16);
    let events = ctl.subscribe();
    let tick = Duration::from_millis(ctl.config().shutdown.tick_ms.max(10));
    let d = Driver {
        webhook: ctl.config().webhook.clone(),
        ctl,
        active: None,
        grace_until: None,
    };
    crate::orchestrate::run_loop(d, events, rx, tick);
    Shutdowns { tx }
}

impl crate::orchestrate::Drive for Driver {
    type Request = Request;
    fn recover(&mut self) {
        Driver::recover(self)
    }
    fn on_agent_event(&mut self, ev: AgentEvent) {
        Driver::on_agent_event(self, ev)
    }
    fn on_lagged(&mut self) {
        self.step_logged(Event::Recovered)
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
        let all: Vec<Shutdown> = match self.ctl.store().list_operations(SHUTDOWN_PREFIX) {
            Ok(all) => all,
            Err(e) => {
                tracing::error!(error = %e, "cannot read shutdowns; the driver will not act");
                return;
            }
        };
        if let Some(s) = all
            .into_iter()
            .filter(|s| !s.finished())
            .max_by_key(|s| s.created_ms)
        {
            tracing::info!(shutdown = %s.id(), stage = ?s.state.stage, "resuming shutdown after restart");
            self.active = Some(s);
            self.grace_until =
                Some(now_ms().saturating_add(self.ctl.config().shutdown.recover_grace_ms));
            self.check_grace();
        }
    }

    /// Ends the grace when its time is up or every expected node is back.
    fn check_grace(&mut self) {
        let Some(until) = self.grace_until else {
            return;
        };
        let Some(s) = &self.active else {
            self.grace_until = None;
            return;
        };
        let missing: Vec<String> = expected_nodes(&s.state)
            .into_iter()
            .filter(|n| !self.ctl.is_online(n))
            .collect();
        if missing.is_empty() || now_ms() >= until {
            if !missing.is_empty() {
                tracing::warn!(missing = ?missing, "recovery grace over; resuming without these nodes");
            }
            self.end_grace();
        }
    }

    fn end_grace(&mut self) {
        if self.grace_until.take().is_some() {
            self.step_logged(Event::Recovered);
        }
    }

    fn on_tick(&mut self) {
        if self.grace_until.is_some() {
            self.check_grace();
            return;
        }
        self.step_logged(Event::Tick { now_ms: now_ms() });
    }

    fn on_agent_event(&mut self, ev: AgentEvent) {
        if self.grace_until.is_some() {
            // Nothing is stepped yet: `Recovered` at the end of the grace re-sends every
            // outstanding action, and the agents answer those again from their record.
            self.check_grace();
            return;
        }
        let node = ev.node;
        let event = match ev.kind {
            AgentEventKind::Report => Event::NodeChanged { node },
            AgentEventKind::Connected { .. } => Event::Recovered,
            AgentEventKind::Disconnected => {
                if self.ctl.is_online(&node) {
                    return; // replaced by a newer session
                }
                Event::NodeChanged { node }
            }
            AgentEventKind::CommandAck { .. } => return,
            AgentEventKind::CommandOutput { id, line } => {
                tracing::debug!(node = %node, command = %id, "{line}");
                return;
            }
            AgentEventKind::CommandResult {
                id, ok, message, ..
            } => {
                let Some(key) = self.sent_key(&id) else {
                    return; // not ours
                };
                Event::CommandResult {
                    key,
                    ok,
                    output: message,
                }
            }
        };
        self.step_logged(event);
    }

    /// The key of a send whose text is `id`.
    fn sent_key(&self, id: &str) -> Option<Key> {
        let s = self.active.as_ref()?;
        s.state
            .sent
            .iter()
            .rev()
            .find(|s| s.key.to_string() == id)
            .map(|s| s.key.clone())
    }

    fn on_request(&mut self, req: Request) {
        // The operator acts knowingly: a request ends the recovery grace.
        self.end_grace();
        match req {
            Request::Start { plan, actor, reply } => {
                if let Some(s) = self.active.as_ref().filter(|s| !s.finished()) {
                    let why = if s.state.stage == Stage::Down {
                        "it powered the cluster off; run `fleetward startup` first"
                    } else {
                        "cancel it first, or wait for it"
                    };
                    let _ = reply.send(Err(format!(
                        "shutdown {} is not finished (stage {}): {why}",
                        s.id(),
                        stage_word(s.state.stage)
                    )));
                    return;
                }
                let previous = self.active.take();
                self.active = Some(Shutdown {
                    state: ShutdownState::new(*plan),
                    created_ms: now_ms(),
                    actor,
                });
                match self.step(Event::Start { now_ms: now_ms() }) {
                    Ok(_) => {
                        let _ = reply.send(self.active.clone().ok_or_else(|| "not started".into()));
                    }
                    Err(e) => {
                        self.active = previous;
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Request::Control { id, event, reply } => {
                let matches = self
                    .active
                    .as_ref()
                    .is_some_and(|s| id.as_deref().is_none_or(|id| id == s.id()));
                if !matches {
                    let _ = reply.send(Err(match id {
                        Some(id) => format!("shutdown {id} is not the current shutdown"),
                        None => "there is no shutdown".into(),
                    }));
                    return;
                }
                let result = self.step(event).and_then(|notices| {
                    self.active
                        .clone()
                        .map(|s| (s, notices))
                        .ok_or_else(|| "no shutdown".to_string())
                });
                let _ = reply.send(result);
            }
        }
    }

    fn step_logged(&mut self, event: Event) {
        if let Err(e) = self.step(event) {
            tracing::error!(error = %e, "shutdown step failed");
        }
    }

    /// One step: view → machine → persist → send. Returns the step's notices.
    fn step(&mut self, event: Event) -> Result<Vec<Notice>, String> {
        let Some(current) = self.active.as_ref() else {
            return Ok(Vec::new());
        };
        // A finished shutdown only answers the operator's requests (with a refusal).
        let automatic = matches!(
            event,
            Event::Tick { .. }
                | Event::NodeChanged { .. }
                | Event::CommandResult { .. }
                | Event::Recovered
        );
        if current.finished() && automatic {
            return Ok(Vec::new());
        }
        let view = view(&self.ctl);
        let (state, commands) = shutdown::step(&current.state, &event, &view);
        let mut next = current.clone();
        next.state = state;
        let now = now_ms();
        let notices: Vec<Notice> = commands
            .iter()
            .filter_map(|c| match c {
                Command::Notify(n) => Some(n.clone()),
                Command::SendAction { .. } => None,
            })
            .collect();
        let events: Vec<OpEvent> = notices
            .iter()
            .map(|n| OpEvent {
                time_ms: now,
                event: serde_json::to_value(n).unwrap_or_default(),
            })
            .collect();
        // A tick that only moved the clock is not worth a flush.
        let mut same_but_time = next.clone();
        same_but_time.state.now_ms = current.state.now_ms;
        if same_but_time != *current || !commands.is_empty() {
            // Write-ahead: nothing is sent unless the state that sends it is durable.
            if let Err(e) = self.ctl.store().put_operation(next.id(), &next, &events) {
                tracing::error!(error = %e, "cannot persist the shutdown; sending nothing");
                return Err(format!("cannot persist the shutdown: {e}"));
            }
        }
        let id = next.id().to_string();
        self.active = Some(next);
        for c in commands {
            match c {
                Command::SendAction { key, node, action } => {
                    let req = ActionRequest {
                        id: key.to_string(),
                        action,
                    };
                    tracing::info!(node = %node, command = %req.id, "sending shutdown action");
                    if let Err(e) = self.ctl.send_command(&node, api::Command::action(&req)) {
                        // Re-sent on reconnect (`Recovered`); the stage's bound covers a
                        // node that never comes back.
                        tracing::warn!(node = %node, error = %e, "action not sent");
                    }
                }
                Command::Notify(n) => self.notify(&id, now, &n),
            }
        }
        Ok(notices)
    }

    fn notify(&self, id: &str, now: u64, n: &Notice) {
        let event = serde_json::to_value(n).unwrap_or_default();
        let name = event
            .get("event")
            .and_then(|e| e.as_str())
            .unwrap_or("event")
            .to_string();
        // Stage changes are in the shutdown's own event log; the audit log gets the rest.
        if !matches!(n, Notice::Stage { .. }) {
            self.ctl.audit_event(
                "fleetward",
                &format!("shutdown.{name}"),
                id,
                event.to_string(),
            );
        }
        crate::webhook::spawn_event(self.webhook.as_deref(), id, now, &event);
    }
}

/// A stage in words, for messages: `stop-guests 2`, `power-off 1`, `down`.
pub fn stage_word(s: Stage) -> String {
    match s {
        Stage::Planned => "planned".into(),
        Stage::StopGuests { group } => format!("stop-guests {}", group + 1),
        Stage::DisarmHa => "disarm-ha".into(),
        Stage::SetNoout => "set-noout".into(),
        Stage::PowerOff { tier } => format!("power-off tier {}", tier + 1),
        Stage::Down => "down".into(),
        Stage::AwaitNodes => "await-nodes".into(),
        Stage::UnsetNoout => "unset-noout".into(),
        Stage::ArmHa => "arm-ha".into(),
        Stage::StartGuests { group } => format!("start-guests {}", group + 1),
        Stage::Finished => "finished".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetward_proto::action::GuestKind;
    use fleetward_proto::{CephFacts, GuestFacts, HaFacts};

    fn report(disarmed: Option<bool>) -> Report {
        let mut r = Report {
            schema_version: fleetward_proto::SCHEMA_VERSION,
            facts: Default::default(),
            findings: vec![],
        };
        r.facts.node.boot_id = Some("boot-report".into());
        r.facts.cluster.quorate = Some(true);
        r.facts.ceph = Some(CephFacts {
            monitor_here: true,
            osds_here: vec![3],
            noout: None,
            healthy: None,
        });
        r.facts.ha = HaFacts {
            disarmed,
            ..HaFacts::default()
        };
        let guest = |vmid, state| GuestFacts {
            vmid,
            kind: GuestKind::Qemu,
            name: None,
            onboot: true,
            order: Some(2),
            up: Some(30),
            down: Some(60),
            ha: false,
            state,
            location: None,
            config: None,
        };
        r.facts.guests = vec![
            guest(100, GuestState::Running),
            guest(101, GuestState::Stopped),
            guest(102, GuestState::Migrated),
        ];
        r
    }

    #[test]
    fn node_view_maps_report_facts() {
        let r = report(Some(false));
        let v = node_view(Some(&r), true, Some("boot-hello".into()));
        assert!(v.online && v.ceph_mon && v.ceph_osds);
        assert_eq!(v.quorate, Some(true));
        assert_eq!(
            v.boot_id.as_deref(),
            Some("boot-hello"),
            "the session's boot id wins"
        );
        let ids: Vec<(u32, bool)> = v.guests.iter().map(|g| (g.vmid, g.running)).collect();
        assert_eq!(
            ids,
            vec![(100, true), (101, false)],
            "migrated guests are not here"
        );
        assert_eq!((v.guests[0].up, v.guests[0].down), (Some(30), Some(60)));
        let v = node_view(Some(&r), false, None);
        assert_eq!(v.boot_id.as_deref(), Some("boot-report"));
        let v = node_view(None, false, None);
        assert!(!v.online && v.guests.is_empty() && !v.ceph_osds);
    }

    #[test]
    fn ha_disarm_support_follows_the_mode_and_the_reports() {
        let known = report(Some(false));
        let unknown = report(None);
        assert!(ha_disarm_supported(
            HaMode::Auto,
            &[Some(&known), Some(&known)]
        ));
        assert!(!ha_disarm_supported(
            HaMode::Auto,
            &[Some(&known), Some(&unknown)]
        ));
        assert!(!ha_disarm_supported(HaMode::Auto, &[Some(&known), None]));
        assert!(!ha_disarm_supported(HaMode::Auto, &[]));
        assert!(ha_disarm_supported(HaMode::Disarm, &[Some(&unknown)]));
        assert!(!ha_disarm_supported(HaMode::Maintenance, &[Some(&known)]));
    }

    #[test]
    fn a_restarted_driver_waits_for_the_nodes_that_should_be_up() {
        let mut view = ShutdownView {
            ha_disarm_supported: true,
            ..Default::default()
        };
        for (n, mon) in [("a", false), ("b", true), ("c", false)] {
            let mut nv = node_view(Some(&report(Some(false))), n != "c", None);
            nv.ceph_mon = mon;
            view.nodes.insert(n.into(), nv);
        }
        let plan = Plan::new("shutdown-1", &view, &shutdown::Config::default(), 0).unwrap();
        let st = ShutdownState::new(plan);
        assert!(
            expected_nodes(&st).is_empty(),
            "planned: nothing to wait for"
        );
        let (st, _) = shutdown::step(&st, &Event::Start { now_ms: 1 }, &view);
        assert_eq!(expected_nodes(&st), vec!["a".to_string(), "b".to_string()]);
        let mut down = st.clone();
        down.stage = Stage::Down;
        assert!(expected_nodes(&down).is_empty());
    }
}
