//! The one orchestration driver: where a pure machine's decisions become I/O.
//!
//! Every operation (rolling update, shutdown and startup, package list refresh) is a pure
//! machine, `(record, event, view) -> (record, effects)`, adapted here by a [`Machine`]
//! implementation (`rollout`, `shutdown`, `refresh`). One task per kind owns the active
//! operation and, for every input (a session event, an operator request, a timer tick):
//!
//! 1. builds the machine's view from the controller's latest reports and sessions,
//! 2. steps the machine,
//! 3. **writes the new record and its notices to the journal** (write-ahead; a record that
//!    only moved its clock is not written),
//! 4. only then sends the effects: actions under their idempotency key ([`Key`], the command
//!    id, which the agent executes at most once), refresh requests, and notices (audit log
//!    and webhook, except progress notices, which stay in the operation's own event log).
//!
//! If step 3 fails nothing is sent, and an operator request gets the error: a start leaves
//! no operation behind, a control leaves the operation as it was. After a restart the task
//! loads the unfinished operation and waits (bounded) for the agents the operation expects
//! to be connected before it steps [`Wake::Recovered`], which re-sends outstanding actions
//! under the same keys; stepping on a half-reconnected cluster would count nodes that are
//! merely reconnecting as gone. A node whose session ends is reported to the machine as
//! offline only when it is not back within [`OFFLINE_GRACE_MS`] (an agent restarted by its
//! own package upgrade, a dropped connection); a node that reconnects gets `Recovered`.
//!
//! An ack or result counts only from the node its key names (`Key.node`, against the
//! certificate the event came with); one from any other node is refused and audited
//! (`<KIND>.ack-refused`, `<KIND>.result-refused`). A key its node acknowledged on its
//! current session is not re-sent there (the agent has it queued or running); after that
//! node reconnects, or when events were missed, outstanding keys are re-sent and the agent
//! answers them from its at-most-once record.
//!
//! Operator requests that change something are audited by the driver, before the step.

pub mod preempt;
pub mod refresh;
pub mod rollout;
pub mod shutdown;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::clock::now_ms;
use crate::events::{AgentEvent, AgentEventKind};
use crate::operation::{Key, Wake};
use crate::state::Controller;
use crate::store::{OpEvent, Store, StoreError};
use fleetward_proto::action::{Action as AgentAction, ActionRequest};
use fleetward_proto::api;

/// How long a node may be disconnected before its operation hears it is gone.
pub const OFFLINE_GRACE_MS: u64 = 10_000;

/// How many output lines of running actions are kept per node.
const OUTPUT_LINES: usize = 20;

/// What a machine asks the driver to do, after its record is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect<N> {
    /// Send an action on the node's session; the key is the command id.
    Send {
        key: Key,
        node: String,
        action: AgentAction,
    },
    /// Ask the node's agent for a fresh inspection report.
    Refresh { node: String },
    /// Tell a person: the operation's event log, and (unless progress) audit and webhook.
    Notify(N),
}

/// An orchestration as the driver runs it: a pure machine plus the glue to the controller.
pub trait Machine: Send + 'static {
    /// `rollout`, `shutdown`, `refresh`: operation ids are `<KIND>-<ms>`, audit actions
    /// `<KIND>.<event>`.
    const KIND: &'static str;
    /// The journal record: the machine's state plus what only the driver knows.
    type Record: Clone
        + PartialEq
        + std::fmt::Debug
        + Serialize
        + DeserializeOwned
        + Send
        + Sync
        + 'static;
    /// The pure machine's event.
    type Event: Clone + std::fmt::Debug + Send + 'static;
    type View;
    type Notice: Clone + std::fmt::Debug + Serialize + Send + 'static;

    fn id(r: &Self::Record) -> &str;
    fn created_ms(r: &Self::Record) -> u64;
    /// Nothing more happens without a new start.
    fn finished(r: &Self::Record) -> bool;
    /// What `r` is doing and how an operator stops it: the reason a start of any
    /// operation is refused while `r` is not finished.
    fn busy(r: &Self::Record) -> String;
    /// The record's clock (the latest tick it saw): a step that only moved it is not
    /// written to the journal.
    fn clock(r: &mut Self::Record) -> &mut u64;
    /// The machine's start event.
    fn start(now_ms: u64) -> Self::Event;
    /// The machine's event for a wake-up; `None`: nothing for this machine.
    fn wake(&self, r: &Self::Record, w: Wake) -> Option<Self::Event>;
    /// Keys sent and not answered yet; a result for another key is not this operation's.
    fn outstanding(r: &Self::Record) -> Vec<Key>;
    /// Nodes that should be connected now: after a restart the driver waits for them.
    fn expected_online(&self, r: &Self::Record, ctl: &Controller) -> Vec<String>;
    /// How long a restarted driver waits for [`Machine::expected_online`].
    fn recover_grace_ms(&self, r: &Self::Record) -> u64;
    /// The machine's view now, for the operation `r`. `reconnecting`: nodes whose session
    /// ended less than [`OFFLINE_GRACE_MS`] ago (a machine that halts on an offline node in
    /// its turn may count those in their turn as online until the grace is over).
    fn view(
        &self,
        r: &Self::Record,
        ctl: &Controller,
        reconnecting: &BTreeSet<String>,
    ) -> Self::View;
    /// One pure step.
    fn step(
        &self,
        r: &Self::Record,
        ev: &Self::Event,
        view: &Self::View,
    ) -> (Self::Record, Vec<Effect<Self::Notice>>);
    /// Progress notices stay in the operation's event log; the others are audited too.
    fn audited(n: &Self::Notice) -> bool;
    /// The reason of a notice that refuses what was asked.
    fn refusal(n: &Self::Notice) -> Option<&str>;
    /// Before each tick's step: events of the driver's own (a maintenance window's edges).
    fn on_tick(&self, _r: &mut Self::Record, _now_ms: u64) -> Vec<Self::Event> {
        Vec::new()
    }
    /// Before an operator's control event is stepped.
    fn on_control(&self, _r: &mut Self::Record, _ev: &Self::Event) {}
}

/// Why the driver did not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriverError {
    /// The machine or the driver refused (another operation running, cancel after the
    /// point of no return, skip of a started node, ...). Nothing was done.
    #[error("{0}")]
    Refused(String),
    /// There is no such operation.
    #[error("{0}")]
    NotFound(String),
    /// The journal or the audit log could not be written: nothing was done.
    #[error("cannot persist the {kind}: {reason}")]
    Persist { kind: &'static str, reason: String },
    /// The driver task is gone (the controller is stopping).
    #[error("the {0} driver stopped")]
    Stopped(&'static str),
}

/// An audit entry the driver writes before it acts on a request (the target is the
/// operation's id).
#[derive(Debug, Clone)]
pub struct Audit {
    pub actor: String,
    pub action: String,
    pub detail: String,
}

type Reply<T> = oneshot::Sender<Result<T, DriverError>>;

/// What the operator API asks a driver.
pub enum Request<M: Machine> {
    /// Start `record` (refused while another operation of any kind is not finished).
    Start {
        record: Box<M::Record>,
        audit: Option<Audit>,
        reply: Reply<(M::Record, Vec<M::Notice>)>,
    },
    /// Step an operator's `event` on the active operation (`id`: must be it).
    Control {
        id: Option<String>,
        event: M::Event,
        audit: Option<Audit>,
        reply: Reply<(M::Record, Vec<M::Notice>)>,
    },
    /// The last output lines of each node's running action.
    Output {
        reply: oneshot::Sender<BTreeMap<String, Vec<String>>>,
    },
    /// Follow the active operation: the receiver sees every record the driver writes.
    Watch {
        reply: oneshot::Sender<watch::Receiver<Option<M::Record>>>,
    },
}

/// The handle the operator API holds.
pub struct Handle<M: Machine> {
    tx: mpsc::Sender<Request<M>>,
}

impl<M: Machine> Clone for Handle<M> {
    fn clone(&self) -> Self {
        Handle {
            tx: self.tx.clone(),
        }
    }
}

impl<M: Machine> Handle<M> {
    /// One round trip: the request built around the reply channel, and its answer.
    pub async fn ask<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<T>) -> Request<M>,
    ) -> Result<T, DriverError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(request(reply))
            .await
            .map_err(|_| DriverError::Stopped(M::KIND))?;
        rx.await.map_err(|_| DriverError::Stopped(M::KIND))
    }

    pub async fn start(
        &self,
        record: M::Record,
        audit: Option<Audit>,
    ) -> Result<(M::Record, Vec<M::Notice>), DriverError> {
        self.ask(|reply| Request::Start {
            record: Box::new(record),
            audit,
            reply,
        })
        .await?
    }

    pub async fn control(
        &self,
        id: Option<String>,
        event: M::Event,
        audit: Option<Audit>,
    ) -> Result<(M::Record, Vec<M::Notice>), DriverError> {
        self.ask(|reply| Request::Control {
            id,
            event,
            audit,
            reply,
        })
        .await?
    }

    pub async fn output(&self) -> BTreeMap<String, Vec<String>> {
        self.ask(|reply| Request::Output { reply })
            .await
            .unwrap_or_default()
    }

    pub async fn watch(&self) -> Result<watch::Receiver<Option<M::Record>>, DriverError> {
        self.ask(|reply| Request::Watch { reply }).await
    }
}

/// Whether two records differ in nothing but their clock.
fn same_but_clock<M: Machine>(a: &M::Record, b: &M::Record) -> bool {
    let (mut a, mut b) = (a.clone(), b.clone());
    *M::clock(&mut a) = 0;
    *M::clock(&mut b) = 0;
    a == b
}

/// Where records and their notices are written: the store, or in tests a journal that
/// fails on demand.
pub trait Journal: Send + Sync + 'static {
    fn put(&self, id: &str, record: &serde_json::Value, events: &[OpEvent]) -> Result<(), String>;
    fn list(&self, prefix: &str) -> Result<Vec<serde_json::Value>, String>;
}

impl Journal for Store {
    fn put(&self, id: &str, record: &serde_json::Value, events: &[OpEvent]) -> Result<(), String> {
        self.put_operation(id, record, events)
            .map_err(|e: StoreError| e.to_string())
    }
    fn list(&self, prefix: &str) -> Result<Vec<serde_json::Value>, String> {
        self.list_operations(prefix).map_err(|e| e.to_string())
    }
}

/// The store as a journal (the controller's store is shared).
struct StoreJournal(Arc<Controller>);

impl Journal for StoreJournal {
    fn put(&self, id: &str, record: &serde_json::Value, events: &[OpEvent]) -> Result<(), String> {
        self.0.store().put(id, record, events)
    }
    fn list(&self, prefix: &str) -> Result<Vec<serde_json::Value>, String> {
        self.0.store().list(prefix)
    }
}

/// Starts the driver task of `machine`, journaling into the controller's store; it resumes
/// an unfinished operation first.
pub fn spawn<M: Machine>(ctl: Arc<Controller>, machine: M, tick: Duration) -> Handle<M> {
    let journal = Arc::new(StoreJournal(ctl.clone()));
    spawn_with(ctl, machine, tick, journal)
}

/// [`spawn`] with another journal.
pub fn spawn_with<M: Machine>(
    ctl: Arc<Controller>,
    machine: M,
    tick: Duration,
    journal: Arc<dyn Journal>,
) -> Handle<M> {
    let (tx, rx) = mpsc::channel::<Request<M>>(16);
    let events = ctl.subscribe();
    let d = Driver {
        webhook: ctl.config().webhook.clone(),
        watch: watch::channel(None).0,
        ctl,
        journal,
        machine,
        active: None,
        grace_until: None,
        offline_since: HashMap::new(),
        output: HashMap::new(),
        acked: HashMap::new(),
    };
    tokio::spawn(d.run(events, rx, tick.max(Duration::from_millis(10))));
    Handle { tx }
}

struct Driver<M: Machine> {
    ctl: Arc<Controller>,
    journal: Arc<dyn Journal>,
    machine: M,
    active: Option<M::Record>,
    /// After a restart: nothing is stepped until this time (unix ms) or until every
    /// expected node is back; then one `Recovered`.
    grace_until: Option<u64>,
    /// Nodes whose session ended (unix ms), not yet reported to the machine.
    offline_since: HashMap<String, u64>,
    /// Recent output lines of running actions, per node.
    output: HashMap<String, VecDeque<String>>,
    /// Per node, the outstanding keys its agent acknowledged on its current session: the
    /// agent has them queued or running, so a re-send on that session is skipped. Forgotten
    /// when the node's session changes (the agent's at-most-once record answers a re-send
    /// on the new one) and when events were missed (a result may have been among them).
    acked: HashMap<String, BTreeSet<Key>>,
    webhook: Option<String>,
    watch: watch::Sender<Option<M::Record>>,
}

impl<M: Machine> Driver<M> {
    /// Session events, a timer and operator requests, one at a time, until the controller
    /// drops the event broadcast or every handle is gone.
    async fn run(
        mut self,
        mut events: broadcast::Receiver<AgentEvent>,
        mut rx: mpsc::Receiver<Request<M>>,
        tick: Duration,
    ) {
        self.recover();
        // The first tick comes one period after the start (recovery has just stepped).
        let mut timer = tokio::time::interval_at(tokio::time::Instant::now() + tick, tick);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Ok(ev) => self.on_agent_event(ev),
                    // Events were missed: the machines are level-triggered, one more look
                    // (and a re-send of what is outstanding) suffices.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        self.acked.clear();
                        self.wake(Wake::Recovered)
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = timer.tick() => self.on_tick(),
                req = rx.recv() => match req {
                    Some(req) => self.on_request(req),
                    None => return,
                },
            }
        }
    }

    fn recover(&mut self) {
        let all = match self.journal.list(&format!("{}-", M::KIND)) {
            Ok(all) => all,
            Err(e) => {
                tracing::error!(kind = M::KIND, error = %e, "cannot read the journal; the driver will not act");
                return;
            }
        };
        let records = all
            .into_iter()
            .filter_map(|v| match serde_json::from_value::<M::Record>(v) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::error!(kind = M::KIND, error = %e, "skipping an unreadable journal record");
                    None
                }
            });
        if let Some(r) = records
            .filter(|r| !M::finished(r))
            .max_by_key(|r| M::created_ms(r))
        {
            tracing::info!(id = %M::id(&r), "resuming {} after restart", M::KIND);
            let grace = self.machine.recover_grace_ms(&r);
            self.watch.send_replace(Some(r.clone()));
            self.ctl.operations().hold(M::KIND, M::id(&r), M::busy(&r));
            self.active = Some(r);
            self.grace_until = Some(now_ms().saturating_add(grace));
            self.check_grace();
        }
    }

    /// Ends the grace when its time is up or every expected node is back.
    fn check_grace(&mut self) {
        let Some(until) = self.grace_until else {
            return;
        };
        let Some(r) = &self.active else {
            self.grace_until = None;
            return;
        };
        let missing: Vec<String> = self
            .machine
            .expected_online(r, &self.ctl)
            .into_iter()
            .filter(|n| !self.ctl.is_online(n))
            .collect();
        if missing.is_empty() || now_ms() >= until {
            if !missing.is_empty() {
                tracing::warn!(
                    kind = M::KIND,
                    ?missing,
                    "recovery grace over; resuming without these nodes"
                );
            }
            self.end_grace();
        }
    }

    fn end_grace(&mut self) {
        if self.grace_until.take().is_some() {
            self.wake(Wake::Recovered);
        }
    }

    fn on_tick(&mut self) {
        if self.grace_until.is_some() {
            self.check_grace();
            return;
        }
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
                self.wake(Wake::NodeOffline { node });
            }
        }
        let own = match self.active.as_mut() {
            Some(r) if !M::finished(r) => self.machine.on_tick(r, now),
            _ => Vec::new(),
        };
        for ev in own {
            self.step_logged(ev);
        }
        self.wake(Wake::Tick { now_ms: now });
    }

    fn on_agent_event(&mut self, ev: AgentEvent) {
        if self.grace_until.is_some() {
            // Nothing is stepped yet: `Recovered` at the end of the grace re-sends every
            // outstanding action, and the agents answer those again from their record.
            self.check_grace();
            return;
        }
        let node = ev.node;
        let wake = match ev.kind {
            AgentEventKind::Report => Wake::NodeChanged { node },
            AgentEventKind::Connected { .. } => {
                self.offline_since.remove(&node);
                self.acked.remove(&node);
                Wake::Recovered
            }
            AgentEventKind::Disconnected => {
                self.acked.remove(&node);
                // Unless a newer session replaced it, the machine hears of it after the
                // grace (`on_tick`), or sees it offline on a later step once it is over.
                if !self.ctl.is_online(&node) {
                    self.offline_since.entry(node).or_insert_with(now_ms);
                }
                return;
            }
            AgentEventKind::CommandAck { id } => {
                if let Some(key) = self.outstanding_from(&node, &id, "ack") {
                    self.acked.entry(node).or_default().insert(key);
                }
                return;
            }
            AgentEventKind::CommandOutput { id, line } => {
                tracing::debug!(kind = M::KIND, node = %node, command = %id, "{line}");
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
                let Some(key) = self.outstanding_from(&node, &id, "result") else {
                    return;
                };
                if let Some(keys) = self.acked.get_mut(&node) {
                    keys.remove(&key);
                }
                Wake::CommandResult {
                    key,
                    ok,
                    output: message,
                }
            }
        };
        self.wake(wake);
    }

    /// The outstanding key `id` names, if `node` may answer it. An answer to a key of another
    /// node (a certificate speaking for a node it is not) is refused and audited; `None`
    /// also for ids that are not ours or answer an older attempt.
    fn outstanding_from(&self, node: &str, id: &str, what: &str) -> Option<Key> {
        let key = self
            .active
            .as_ref()
            .and_then(|r| M::outstanding(r).into_iter().find(|k| k.to_string() == id))?;
        if key.node == node {
            return Some(key);
        }
        tracing::warn!(kind = M::KIND, node, command = %id, "refusing the {what} of a command for another node");
        self.ctl.audit_event(
            node,
            &format!("{}.{what}-refused", M::KIND),
            &key.operation,
            format!(
                "{node} sent the {what} of {id}, a command for {}: refused, the step is unaffected",
                key.node
            ),
        );
        None
    }

    fn on_request(&mut self, req: Request<M>) {
        // The operator acts knowingly: a request ends the recovery grace.
        if matches!(req, Request::Start { .. } | Request::Control { .. }) {
            self.end_grace();
        }
        match req {
            Request::Start {
                record,
                audit,
                reply,
            } => {
                let _ = reply.send(self.start(*record, audit));
            }
            Request::Control {
                id,
                event,
                audit,
                reply,
            } => {
                let _ = reply.send(self.control(id, event, audit));
            }
            Request::Output { reply } => {
                let out = self
                    .output
                    .iter()
                    .map(|(k, v)| (k.clone(), v.iter().cloned().collect()))
                    .collect();
                let _ = reply.send(out);
            }
            Request::Watch { reply } => {
                let _ = reply.send(self.watch.subscribe());
            }
        }
    }

    fn start(
        &mut self,
        record: M::Record,
        audit: Option<Audit>,
    ) -> Result<(M::Record, Vec<M::Notice>), DriverError> {
        // The one exclusivity decision: no start while any operation, of any kind, holds
        // the controller (`operation::Operations`).
        let id = M::id(&record).to_string();
        self.ctl
            .operations()
            .claim(M::KIND, &id, M::busy(&record))
            .map_err(DriverError::Refused)?;
        if let Err(e) = self.audit(audit.as_ref(), &id) {
            self.ctl.operations().release(&id);
            return Err(e);
        }
        let previous = self.active.replace(record);
        match self.step(M::start(now_ms())) {
            Ok(notices) => {
                self.output.clear();
                self.offline_since.clear();
                let r = self.active.clone().ok_or(DriverError::Stopped(M::KIND))?;
                Ok((r, notices))
            }
            Err(e) => {
                self.active = previous;
                self.ctl.operations().release(&id);
                Err(e)
            }
        }
    }

    fn control(
        &mut self,
        id: Option<String>,
        event: M::Event,
        audit: Option<Audit>,
    ) -> Result<(M::Record, Vec<M::Notice>), DriverError> {
        let Some(current) = self
            .active
            .as_ref()
            .filter(|r| id.as_deref().is_none_or(|id| id == M::id(r)))
        else {
            return Err(DriverError::NotFound(match id {
                Some(id) => format!("{} {id} is not the current {}", M::KIND, M::KIND),
                None => format!("there is no {}", M::KIND),
            }));
        };
        let target = M::id(current).to_string();
        self.audit(audit.as_ref(), &target)?;
        let before = self.active.clone();
        if let Some(r) = self.active.as_mut() {
            self.machine.on_control(r, &event);
        }
        match self.step(event) {
            Ok(notices) => {
                if let Some(reason) = notices.iter().find_map(M::refusal) {
                    return Err(DriverError::Refused(reason.to_string()));
                }
                let r = self.active.clone().ok_or(DriverError::Stopped(M::KIND))?;
                Ok((r, notices))
            }
            Err(e) => {
                self.active = before;
                Err(e)
            }
        }
    }

    fn audit(&self, audit: Option<&Audit>, target: &str) -> Result<(), DriverError> {
        let Some(audit) = audit else {
            return Ok(());
        };
        self.ctl
            .audit(&audit.actor, &audit.action, target, audit.detail.clone())
            .map_err(|e| DriverError::Persist {
                kind: "audit entry",
                reason: e.message().to_string(),
            })
    }

    fn wake(&mut self, w: Wake) {
        let Some(r) = self.active.as_ref().filter(|r| !M::finished(r)) else {
            return;
        };
        if self.grace_until.is_some() {
            return;
        }
        if let Some(ev) = self.machine.wake(r, w) {
            self.step_logged(ev);
        }
    }

    fn step_logged(&mut self, ev: M::Event) {
        if let Err(e) = self.step(ev) {
            tracing::error!(kind = M::KIND, error = %e, "step failed; nothing was sent");
        }
    }

    /// One step: view → machine → journal → effects. Returns the step's notices.
    fn step(&mut self, event: M::Event) -> Result<Vec<M::Notice>, DriverError> {
        let Some(current) = self.active.as_ref() else {
            return Ok(Vec::new());
        };
        let now = now_ms();
        let reconnecting: BTreeSet<String> = self
            .offline_since
            .iter()
            .filter(|(_, since)| now.saturating_sub(**since) < OFFLINE_GRACE_MS)
            .map(|(n, _)| n.clone())
            .collect();
        let view = self.machine.view(current, &self.ctl, &reconnecting);
        let (next, effects) = self.machine.step(current, &event, &view);
        let notices: Vec<M::Notice> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Notify(n) => Some(n.clone()),
                _ => None,
            })
            .collect();
        if !effects.is_empty() || !same_but_clock::<M>(current, &next) {
            // Write-ahead: nothing is sent unless the record that sends it is durable.
            let persist = |reason: String| DriverError::Persist {
                kind: M::KIND,
                reason,
            };
            let record = serde_json::to_value(&next).map_err(|e| persist(e.to_string()))?;
            let events: Vec<OpEvent> = notices
                .iter()
                .map(|n| OpEvent {
                    time_ms: now,
                    event: serde_json::to_value(n).unwrap_or_default(),
                })
                .collect();
            if let Err(e) = self.journal.put(M::id(&next), &record, &events) {
                tracing::error!(kind = M::KIND, error = %e, "cannot persist; sending nothing");
                return Err(persist(e));
            }
        }
        let id = M::id(&next).to_string();
        if M::finished(&next) {
            self.ctl.operations().release(&id);
        } else {
            self.ctl.operations().hold(M::KIND, &id, M::busy(&next));
        }
        self.watch.send_replace(Some(next.clone()));
        self.active = Some(next);
        for e in effects {
            match e {
                Effect::Send { key, node, action } => {
                    if self.acked.get(&node).is_some_and(|k| k.contains(&key)) {
                        // Queued or running on the node's current session: the agent sends
                        // its result when it is done.
                        tracing::debug!(kind = M::KIND, node = %node, command = %key, "acknowledged on this session; not re-sent");
                        continue;
                    }
                    let req = ActionRequest {
                        id: key.to_string(),
                        action,
                    };
                    tracing::info!(kind = M::KIND, node = %node, command = %req.id, "sending action");
                    self.output.remove(&node);
                    if let Err(e) = self.ctl.send_command(&node, api::Command::action(&req)) {
                        // Re-sent on reconnect (`Recovered`); the machine's bounds cover a
                        // node that never comes back.
                        tracing::warn!(kind = M::KIND, node = %node, error = %e, "action not sent");
                    }
                }
                Effect::Refresh { node } => {
                    let cid = format!("{id}/{node}/refresh/{now}");
                    if let Err(e) = self.ctl.send_command(&node, api::Command::refresh(cid)) {
                        tracing::warn!(kind = M::KIND, node = %node, error = %e, "refresh not sent");
                    }
                }
                Effect::Notify(n) => self.notify(&id, now, &n),
            }
        }
        Ok(notices)
    }

    fn notify(&self, id: &str, now: u64, n: &M::Notice) {
        let event = serde_json::to_value(n).unwrap_or_default();
        if M::audited(n) {
            let name = event
                .get("event")
                .and_then(|e| e.as_str())
                .unwrap_or("event");
            self.ctl.audit_event(
                "fleetward",
                &format!("{}.{name}", M::KIND),
                id,
                event.to_string(),
            );
        }
        crate::webhook::spawn_event(self.webhook.as_deref(), id, now, &event);
    }
}

#[cfg(test)]
mod tests {
    use super::rollout::{Rollout, RolloutMachine};
    use super::shutdown::{Shutdown, ShutdownMachine};
    use super::*;
    use crate::config::Config;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// The store, failing every write while `fail` is set.
    struct FailingJournal {
        ctl: Arc<Controller>,
        fail: AtomicBool,
    }

    impl Journal for FailingJournal {
        fn put(&self, id: &str, r: &serde_json::Value, ev: &[OpEvent]) -> Result<(), String> {
            if self.fail.load(Ordering::SeqCst) {
                return Err("disk full (test)".into());
            }
            self.ctl.store().put(id, r, ev)
        }
        fn list(&self, prefix: &str) -> Result<Vec<serde_json::Value>, String> {
            self.ctl.store().list(prefix)
        }
    }

    fn controller(dir: &std::path::Path) -> Arc<Controller> {
        let store = Store::open(dir.join("db")).unwrap();
        let ca = fleetward_pki::Ca::generate("test").unwrap();
        Controller::new(store, ca, Config::new("test", None), None).unwrap()
    }

    fn audit(action: &str) -> Option<Audit> {
        Some(Audit {
            actor: "op".into(),
            action: action.into(),
            detail: String::new(),
        })
    }

    fn stored<M: Machine>(j: &FailingJournal) -> Vec<M::Record> {
        j.list(&format!("{}-", M::KIND))
            .unwrap()
            .into_iter()
            .map(|v| serde_json::from_value(v).unwrap())
            .collect()
    }

    /// Drives `M` through: a start whose journal write fails (an error, nothing stored,
    /// nothing active), a good start, then a control whose write fails (an error, the
    /// stored and the active record unchanged).
    async fn journal_failures<M: Machine>(
        machine: M,
        record: M::Record,
        control: M::Event,
        changed: impl Fn(&M::Record) -> bool,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let ctl = controller(dir.path());
        let journal = Arc::new(FailingJournal {
            ctl: ctl.clone(),
            fail: AtomicBool::new(true),
        });
        let h = spawn_with(
            ctl.clone(),
            machine,
            Duration::from_secs(3600),
            journal.clone(),
        );
        let mut watch = h.watch().await.unwrap();

        let err = h.start(record.clone(), audit("x.start")).await.unwrap_err();
        assert!(matches!(err, DriverError::Persist { .. }), "{err:?}");
        assert!(stored::<M>(&journal).is_empty(), "nothing was journaled");
        assert!(watch.borrow_and_update().is_none(), "nothing is active");
        let err = h.control(None, control.clone(), None).await.unwrap_err();
        assert!(
            matches!(err, DriverError::NotFound(_)),
            "no half-started operation: {err:?}"
        );

        journal.fail.store(false, Ordering::SeqCst);
        let (started, _) = h.start(record, audit("x.start")).await.unwrap();
        assert_eq!(stored::<M>(&journal), vec![started.clone()]);

        journal.fail.store(true, Ordering::SeqCst);
        let err = h
            .control(None, control.clone(), audit("x.control"))
            .await
            .unwrap_err();
        assert!(matches!(err, DriverError::Persist { .. }), "{err:?}");
        assert_eq!(
            stored::<M>(&journal),
            vec![started.clone()],
            "journal unchanged"
        );
        assert_eq!(watch.borrow_and_update().as_ref(), Some(&started));

        // The same control goes through once the journal works again: the driver did not
        // keep a state it could not write.
        journal.fail.store(false, Ordering::SeqCst);
        let (after, _) = h.control(None, control, audit("x.control")).await.unwrap();
        assert!(changed(&after), "the control took effect");
        assert_eq!(stored::<M>(&journal), vec![after]);
        let actions: Vec<String> = ctl
            .store()
            .list_audit(10)
            .unwrap()
            .into_iter()
            .map(|a| a.action)
            .collect();
        assert_eq!(
            actions.iter().filter(|a| *a == "x.control").count(),
            2,
            "each control is audited before it is tried: {actions:?}"
        );
    }

    /// A machine that sends one action per key and records the results it is woken with.
    struct Echo;

    #[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
    struct EchoRecord {
        id: String,
        keys: Vec<Key>,
        results: Vec<(Key, bool)>,
        clock: u64,
    }

    #[derive(Debug, Clone)]
    enum EchoEvent {
        Send,
        Result(Key, bool),
    }

    impl Machine for Echo {
        const KIND: &'static str = "echo";
        type Record = EchoRecord;
        type Event = EchoEvent;
        type View = ();
        type Notice = String;

        fn id(r: &EchoRecord) -> &str {
            &r.id
        }
        fn created_ms(_: &EchoRecord) -> u64 {
            0
        }
        fn finished(_: &EchoRecord) -> bool {
            false
        }
        fn busy(_: &EchoRecord) -> String {
            "busy".into()
        }
        fn clock(r: &mut EchoRecord) -> &mut u64 {
            &mut r.clock
        }
        fn start(_: u64) -> EchoEvent {
            EchoEvent::Send
        }
        fn wake(&self, _: &EchoRecord, w: Wake) -> Option<EchoEvent> {
            match w {
                Wake::Recovered => Some(EchoEvent::Send),
                Wake::CommandResult { key, ok, .. } => Some(EchoEvent::Result(key, ok)),
                _ => None,
            }
        }
        fn outstanding(r: &EchoRecord) -> Vec<Key> {
            let answered: Vec<&Key> = r.results.iter().map(|(k, _)| k).collect();
            r.keys
                .iter()
                .filter(|k| !answered.contains(k))
                .cloned()
                .collect()
        }
        fn expected_online(&self, _: &EchoRecord, _: &Controller) -> Vec<String> {
            Vec::new()
        }
        fn recover_grace_ms(&self, _: &EchoRecord) -> u64 {
            0
        }
        fn view(&self, _: &EchoRecord, _: &Controller, _: &BTreeSet<String>) {}
        fn step(
            &self,
            r: &EchoRecord,
            ev: &EchoEvent,
            _: &(),
        ) -> (EchoRecord, Vec<Effect<String>>) {
            let mut next = r.clone();
            match ev {
                EchoEvent::Send => {
                    let sends = Self::outstanding(r)
                        .into_iter()
                        .map(|key| Effect::Send {
                            node: key.node.clone(),
                            key,
                            action: AgentAction::Reboot,
                        })
                        .collect();
                    (next, sends)
                }
                EchoEvent::Result(key, ok) => {
                    next.results.push((key.clone(), *ok));
                    (next, Vec::new())
                }
            }
        }
        fn audited(_: &String) -> bool {
            false
        }
        fn refusal(_: &String) -> Option<&str> {
            None
        }
    }

    /// Command ids sent so far on a session.
    fn sent<T>(rx: &mut mpsc::Receiver<Result<api::ControllerMessage, T>>) -> Vec<String> {
        let mut ids = Vec::new();
        while let Ok(Ok(msg)) = rx.try_recv() {
            if let Some(api::controller_message::Kind::Command(c)) = msg.kind {
                ids.push(c.command_id);
            }
        }
        ids
    }

    /// Lets the driver task take in what was published.
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    #[tokio::test]
    async fn acknowledged_actions_are_not_resent_and_only_their_node_may_answer() {
        let dir = tempfile::tempdir().unwrap();
        let ctl = controller(dir.path());
        let (tx1, mut rx1) = mpsc::channel(256);
        let (tx2, mut rx2) = mpsc::channel(256);
        let _s1 = ctl.register("pve-01", tx1);
        let _s2 = ctl.register("pve-02", tx2);
        let journal = Arc::new(FailingJournal {
            ctl: ctl.clone(),
            fail: AtomicBool::new(false),
        });
        let h = spawn_with(ctl.clone(), Echo, Duration::from_secs(3600), journal);
        let mut watch = h.watch().await.unwrap();
        let k1 = Key::new("echo-1", "pve-01", "reboot", 1);
        let k2 = Key::new("echo-1", "pve-02", "reboot", 1);
        let record = EchoRecord {
            id: "echo-1".into(),
            keys: vec![k1.clone(), k2.clone()],
            results: Vec::new(),
            clock: 0,
        };
        h.start(record, None).await.unwrap();
        assert_eq!(sent(&mut rx1), vec![k1.to_string()]);
        assert_eq!(sent(&mut rx2), vec![k2.to_string()]);

        // pve-01 acknowledges; pve-02 reconnects again and again: only pve-02's
        // unacknowledged action is re-sent, never pve-01's (queued or running there).
        ctl.publish("pve-01", AgentEventKind::CommandAck { id: k1.to_string() });
        settle().await;
        for _ in 0..40 {
            ctl.publish(
                "pve-02",
                AgentEventKind::Connected {
                    boot_id: "b".into(),
                },
            );
        }
        settle().await;
        assert!(
            sent(&mut rx1).is_empty(),
            "pve-01's acknowledged action not re-sent"
        );
        assert_eq!(sent(&mut rx2).len(), 40);

        // pve-02's certificate answers pve-01's step: refused, audited, the step unaffected.
        ctl.publish(
            "pve-02",
            AgentEventKind::CommandResult {
                id: k1.to_string(),
                ok: false,
                message: "forged".into(),
                exit_code: Some(1),
                replayed: false,
            },
        );
        ctl.publish("pve-02", AgentEventKind::CommandAck { id: k1.to_string() });
        settle().await;
        assert!(watch
            .borrow_and_update()
            .as_ref()
            .unwrap()
            .results
            .is_empty());
        let audit = ctl.store().list_audit(10).unwrap();
        let refused: Vec<_> = audit
            .iter()
            .filter(|a| a.action.ends_with("-refused"))
            .collect();
        assert_eq!(refused.len(), 2, "{audit:?}");
        assert!(refused
            .iter()
            .all(|a| a.actor == "pve-02" && a.target == "echo-1"));
        assert!(
            refused[0].detail.contains("pve-01"),
            "{}",
            refused[0].detail
        );

        // A new session of pve-01: its agent's own record answers the re-send.
        ctl.publish(
            "pve-01",
            AgentEventKind::Connected {
                boot_id: "b".into(),
            },
        );
        settle().await;
        assert_eq!(sent(&mut rx1), vec![k1.to_string()]);
        ctl.publish(
            "pve-01",
            AgentEventKind::CommandResult {
                id: k1.to_string(),
                ok: true,
                message: String::new(),
                exit_code: Some(0),
                replayed: true,
            },
        );
        settle().await;
        assert_eq!(
            watch.borrow_and_update().as_ref().unwrap().results,
            vec![(k1, true)]
        );
    }

    #[tokio::test]
    async fn a_rollout_whose_journal_write_fails_is_neither_started_nor_changed() {
        let plan = crate::rollout::Plan::new(
            "rollout-1",
            vec!["pve-01".into()],
            1,
            None,
            Default::default(),
        )
        .unwrap();
        let record = Rollout::new(plan, None, "op".into());
        let machine = RolloutMachine::new(Config::new("t", None).rollout);
        journal_failures(machine, record, crate::rollout::Event::Abort, |r| {
            r.state.status == crate::rollout::Status::Aborted
        })
        .await;
    }

    #[tokio::test]
    async fn a_shutdown_whose_journal_write_fails_is_neither_started_nor_cancelled() {
        use crate::shutdown::{NodeView, ShutdownView, Stage};
        let mut view = ShutdownView::default();
        view.nodes.insert(
            "pve-01".into(),
            NodeView {
                online: true,
                ..NodeView::default()
            },
        );
        let cfg = crate::shutdown::Config::default();
        let plan = crate::shutdown::Plan::new("shutdown-1", &view, &cfg, 0).unwrap();
        let record = Shutdown::new(plan, "op".into());
        journal_failures(
            ShutdownMachine::new(1000),
            record,
            crate::shutdown::Event::Cancel,
            |s| s.state.stage != Stage::Planned && s.state.up_reason.is_some(),
        )
        .await;
    }

    #[tokio::test]
    async fn one_operation_at_a_time_whatever_its_kind() {
        use crate::shutdown::{NodeView, ShutdownView};
        let dir = tempfile::tempdir().unwrap();
        let ctl = controller(dir.path());
        let rollouts = spawn(
            ctl.clone(),
            RolloutMachine::new(Config::new("t", None).rollout),
            Duration::from_secs(3600),
        );
        let shutdowns = spawn(
            ctl.clone(),
            ShutdownMachine::new(1000),
            Duration::from_secs(3600),
        );
        let plan = crate::rollout::Plan::new(
            "rollout-1",
            vec!["pve-01".into()],
            1,
            None,
            Default::default(),
        )
        .unwrap();
        rollouts
            .start(Rollout::new(plan, None, "op".into()), None)
            .await
            .unwrap();
        let mut view = ShutdownView::default();
        view.nodes.insert(
            "pve-01".into(),
            NodeView {
                online: true,
                ..NodeView::default()
            },
        );
        let cfg = crate::shutdown::Config::default();
        let plan = crate::shutdown::Plan::new("shutdown-2", &view, &cfg, 0).unwrap();
        let err = shutdowns
            .start(
                Shutdown::new(plan.clone(), "op".into()),
                audit("shutdown.start"),
            )
            .await
            .unwrap_err();
        let DriverError::Refused(why) = err else {
            panic!("{err:?}");
        };
        assert!(
            why.contains("cannot start a shutdown")
                && why.contains("rollout rollout-1")
                && why.contains("fleetward rollout abort"),
            "{why}"
        );
        assert!(
            !ctl.store()
                .list_audit(10)
                .unwrap()
                .iter()
                .any(|a| a.action == "shutdown.start"),
            "a refused start leaves no audit entry"
        );
        rollouts
            .control(None, crate::rollout::Event::Abort, None)
            .await
            .unwrap();
        assert!(
            ctl.operations().held().is_none(),
            "an aborted rollout frees it"
        );
        shutdowns
            .start(Shutdown::new(plan, "op".into()), None)
            .await
            .unwrap();
        assert_eq!(ctl.operations().held().unwrap().id, "shutdown-2");
    }
}
