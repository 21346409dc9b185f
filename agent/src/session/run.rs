//! `fleetward-agent run`: keep one session with the controller open.
//!
//! Per session: `Hello` (with the boot id read afresh for every connection), a full
//! `Report`, then every `interval` a re-inspection (a `Report` if its JSON changed, else a
//! `Heartbeat`), and a `Heartbeat` whenever nothing was sent for `heartbeat`. The
//! certificate is renewed once less than a third of its validity is left. Lost sessions
//! are reopened after a jittered exponential [`Backoff`].
//!
//! Commands:
//! - `Refresh`: executed at most once (ids persisted in `commands.json`, [`SeenCommands`]).
//! - `Action` (a node-changing [`crate::executor::Action`]): acknowledged at once, then queued (in order, at
//!   most [`ACTION_QUEUE`] waiting; an id already queued or running in this session is only
//!   acknowledged, never queued twice nor answered "busy") for a worker task that runs one action at a time on a
//!   blocking thread through [`Once`] (`actions.json`: a re-sent id gets the remembered
//!   outcome with `replayed`, it is never executed twice). Output lines are streamed as
//!   `CommandOutput` while it runs, then `CommandResult` (ok, output tail or reason, exit
//!   code, replayed). Heartbeats, reports and refreshes go on meanwhile. After an action,
//!   the node is inspected again and a report sent if it changed.
//! - Observe-only ([`observe_only_reason`]: `--observe-only`, or `--root` other than `/`
//!   without `--simulate`): every action is refused by [`ObserveOnly`], which starts
//!   nothing, and every report says `facts.agent.observe_only`.
//! - An action whose (not replayed) outcome is `reboot`: the result is sent, the session
//!   closed, and the agent waits — with the real executor systemd stops it; with the
//!   simulated one it reconnects after [`SimOptions::reboot_delay`] (the files already
//!   changed, so its `Hello` carries the new boot id). `power_off`: the result is sent, the
//!   session closed, and [`run`] returns (the process exits 0).

use super::backoff::Backoff;
use super::notify;
use super::state::{Credentials, SeenCommands, StateDir};
use super::{ControllerUrl, Error, CALL_TIMEOUT};
use crate::executor::real::RealExecutor;
use crate::executor::simulated::SimulatedExecutor;
use crate::executor::{
    tail, ActionOutcome, ActionRequest, Executor, ObserveOnly, Once, OUTCOMES_FILE,
};
use crate::inspect::inspect;
use crate::root::Root;
use crate::runner::SystemRunner;
use fleetward_pki::{self as pki, Identity, Role};
use fleetward_proto::api::agent_message::{self, Kind as Out};
use fleetward_proto::api::agent_service_client::AgentServiceClient;
use fleetward_proto::api::controller_message::Kind as In;
use fleetward_proto::api::{command, AgentMessage, Command, ControllerMessage, RenewRequest};
use fleetward_proto::Report;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, sleep_until, Instant};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tracing::{debug, error, info, warn};

/// A session that lasted this long resets the backoff.
const STABLE_SESSION: Duration = Duration::from_secs(30);
/// After a failed renewal, try again this much later.
const RENEW_RETRY: Duration = Duration::from_secs(300);
/// At most one renewal per this interval, even if the new certificate is due at once
/// (a validity shorter than the CA's back-dating would otherwise renew in a loop).
const RENEW_MIN_INTERVAL: Duration = Duration::from_secs(60);
/// Messages queued for the controller before the session counts as stuck.
const OUTBOX: usize = 64;
/// Actions waiting behind the running one; more are refused ("busy").
pub const ACTION_QUEUE: usize = 32;
/// Output lines and results in flight from the action worker to the session loop.
const ACTION_EVENTS: usize = 256;
/// How much of an action's output its `CommandResult.message` carries (the tail).
pub const RESULT_MESSAGE_MAX: usize = 16 * 1024;
/// After starting a real reboot, how long to wait for systemd to stop us before assuming
/// the reboot did not happen and reconnecting.
const REBOOT_WAIT: Duration = Duration::from_secs(600);
/// File name of the simulated executor's action log in the state directory.
pub const SIM_ACTION_LOG: &str = "sim-actions.jsonl";

/// `run --simulate`: actions change the fixture root instead of the node.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// After a simulated reboot, stay disconnected this long before reconnecting.
    pub reboot_delay: Duration,
    /// How long each simulated action takes.
    pub action_duration: Duration,
    /// `Some`: HA requests take effect this long after the command (see
    /// `executor::simulated`); `None`: at once.
    pub ha_delay: Option<Duration>,
    /// After a simulated boot the node's OSDs read down this long (see
    /// `executor::simulated`); `None`: up at once.
    pub osd_delay: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub state_dir: PathBuf,
    /// The tree to inspect (`/` on a real node).
    pub root: PathBuf,
    /// Re-inspect this often.
    pub interval: Duration,
    /// Send a heartbeat when nothing was sent for this long.
    pub heartbeat: Duration,
    /// `Some`: use the [`SimulatedExecutor`] on `root` (which must not be `/`), logging to
    /// `<state_dir>/`[`SIM_ACTION_LOG`]; `None`: the [`RealExecutor`] with the system runner
    /// when `root` is `/`, else observe-only (see [`observe_only_reason`]).
    pub simulate: Option<SimOptions>,
    /// `--observe-only`: report, and refuse every action.
    pub observe_only: bool,
}

/// Why the agent `opts` describe refuses every action, or `None` when it acts. The real
/// executor changes the machine the agent runs on, so it runs only when that machine is
/// what the agent inspects (`/`); an agent inspecting another tree without `--simulate`
/// only observes. `--observe-only` gives the same anywhere.
pub fn observe_only_reason(opts: &RunOptions) -> Option<String> {
    if opts.observe_only {
        return Some(
            "this agent is observe-only (--observe-only): it reports and changes nothing".into(),
        );
    }
    if opts.simulate.is_some() {
        return None;
    }
    let live = opts
        .root
        .canonicalize()
        .is_ok_and(|root| root == Path::new("/"));
    (!live).then(|| {
        format!(
            "this agent is observe-only: it inspects {} (--root without --simulate), not the machine it runs on",
            opts.root.display()
        )
    })
}

/// The executor every action of this agent goes through.
pub type SharedExecutor = Arc<Once<Box<dyn Executor>>>;

/// The executor `opts` ask for, behind [`Once`] (`<state_dir>/actions.json`). For a
/// simulated node that is powered off, this powers it on first (a new boot): that is how a
/// simulated node is started again.
pub fn open_executor(opts: &RunOptions, node: &str) -> Result<SharedExecutor, Error> {
    open_executor_with(opts, node, || {
        Box::new(RealExecutor::new(node, SystemRunner))
    })
}

/// [`open_executor`], with `real` making the executor that changes this machine (called
/// only when the agent inspects `/` and is neither simulated nor observe-only).
pub fn open_executor_with(
    opts: &RunOptions,
    node: &str,
    real: impl FnOnce() -> Box<dyn Executor>,
) -> Result<SharedExecutor, Error> {
    let inner: Box<dyn Executor> = match &opts.simulate {
        _ if opts.observe_only => Box::new(ObserveOnly::new(
            observe_only_reason(opts).unwrap_or_default(),
        )),
        Some(options) => {
            let root = opts.root.canonicalize().map_err(|source| Error::Io {
                path: opts.root.clone(),
                source,
            })?;
            if root == Path::new("/") {
                return Err(Error::Refused(
                    "--simulate needs --root DIR (a fixture tree): refusing to simulate onto the live system".into(),
                ));
            }
            let mut sim = SimulatedExecutor::new(node, root, opts.state_dir.join(SIM_ACTION_LOG))
                .with_duration(options.action_duration);
            if let Some(d) = options.ha_delay {
                sim = sim.with_ha_delay(d);
            }
            if let Some(d) = options.osd_delay {
                sim = sim.with_osd_delay(d);
            }
            if sim.powered_off() {
                info!(root = %sim.root.display(), "simulated node was powered off: powering it on");
                sim.power_on()?;
            }
            // The node's runtime files (sockets, pid files, cgroups) follow guests.json.
            sim.sync_runtime()?;
            Box::new(sim)
        }
        None => match observe_only_reason(opts) {
            Some(reason) => Box::new(ObserveOnly::new(reason)),
            None => real(),
        },
    };
    Ok(Arc::new(Once::open(
        opts.state_dir.join(OUTCOMES_FILE),
        inner,
    )?))
}

/// Renew once less than a third of the validity (`not_after - not_before`) is left.
pub fn renewal_due(not_before: SystemTime, not_after: SystemTime, now: SystemTime) -> bool {
    let total = not_after.duration_since(not_before).unwrap_or_default();
    match not_after.duration_since(now) {
        Ok(left) => left.is_zero() || left < total / 3,
        Err(_) => true, // expired
    }
}

/// How a session ended, when not by an error.
enum Ended {
    Shutdown,
    Renewed,
    Closed(String),
    /// An action rebooted the node.
    Reboot,
    /// An action powered the node off.
    PowerOff,
}

/// How often `run --wait-for-enrollment` looks for the identity `enroll` writes.
pub const ENROLLMENT_POLL: Duration = Duration::from_secs(10);

/// Waits until `state_dir` holds an identity (`fleetward-agent enroll` has run), saying so
/// once in the log and in systemd's status line, and looking again every `poll`.
/// `Ok(false)`: `shutdown` turned true while waiting. Errors other than "not enrolled"
/// (an unreadable state directory) are returned at once.
pub async fn wait_for_enrollment(
    state_dir: &Path,
    poll: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> Result<bool, Error> {
    let state = StateDir::new(state_dir);
    let mut logged = false;
    loop {
        match state.load() {
            Ok(_) => {
                if logged {
                    info!(state_dir = %state_dir.display(), "enrolled: starting");
                }
                return Ok(true);
            }
            Err(Error::NotEnrolled(_)) if !logged => {
                logged = true;
                info!(
                    state_dir = %state_dir.display(),
                    "not enrolled: run `FLEETWARD_TOKEN=TOKEN fleetward-agent enroll --controller https://HOST:7443 --ca-sha256 HEX` on this node (`fleetward token create` on the controller prints the line); waiting"
                );
                notify::status("not enrolled: waiting for `fleetward-agent enroll`");
            }
            Err(Error::NotEnrolled(_)) => {}
            Err(e) => return Err(e),
        }
        tokio::select! {
            _ = sleep(poll) => {}
            _ = stopped(&mut shutdown) => return Ok(false),
        }
    }
}

/// Runs sessions until `shutdown` turns true. Returns an error only when the agent cannot
/// work at all (not enrolled, unreadable state).
pub async fn run(opts: RunOptions, mut shutdown: watch::Receiver<bool>) -> Result<(), Error> {
    let state = StateDir::new(&opts.state_dir);
    let node = state.load()?.config.node_name;
    let executor = open_executor(&opts, &node)?;
    let observe_only = observe_only_reason(&opts);
    if let Some(reason) = &observe_only {
        warn!("{reason}: every action will be refused");
    }
    let mut agent = Agent {
        seen: state.seen_commands()?,
        state,
        root: Root::new(&opts.root),
        opts,
        renew_after: None,
        observe_only: observe_only.is_some(),
        executor,
    };
    let mut backoff = Backoff::default();
    loop {
        let creds = agent.state.load()?;
        let url: ControllerUrl = creds.config.controller.parse()?;
        let started = Instant::now();
        let ended = agent.session(&url, &creds, &mut shutdown).await;
        if started.elapsed() > STABLE_SESSION {
            backoff.reset();
        }
        let delay = match ended {
            Ok(Ended::Shutdown) => return Ok(()),
            Ok(Ended::Renewed) => {
                backoff.reset();
                continue;
            }
            Ok(Ended::Closed(reason)) => {
                warn!(%reason, "the controller closed the session");
                backoff.next_delay()
            }
            Ok(Ended::PowerOff) => {
                info!("the node is powering off: stopping");
                return Ok(());
            }
            Ok(Ended::Reboot) => {
                backoff.reset();
                let wait = match &agent.opts.simulate {
                    Some(sim) => {
                        info!(
                            delay_ms = sim.reboot_delay.as_millis() as u64,
                            "simulated reboot: reconnecting after the delay"
                        );
                        sim.reboot_delay
                    }
                    None => {
                        info!("the node is rebooting: waiting to be stopped");
                        REBOOT_WAIT
                    }
                };
                tokio::select! {
                    _ = sleep(wait) => {}
                    _ = stopped(&mut shutdown) => return Ok(()),
                }
                if agent.opts.simulate.is_none() {
                    warn!(
                        waited_s = wait.as_secs(),
                        "still running after a reboot was started; reconnecting"
                    );
                }
                continue;
            }
            Err(e) if e.is_auth() => {
                error!(error = %e, "the controller refused this node: certificate revoked or unknown to the controller");
                backoff.max_delay()
            }
            Err(e) => {
                warn!(error = %e, "session lost");
                backoff.next_delay()
            }
        };
        info!(delay_ms = delay.as_millis() as u64, "reconnecting");
        tokio::select! {
            _ = sleep(delay) => {}
            _ = stopped(&mut shutdown) => return Ok(()),
        }
    }
}

/// Ends a session cleanly: half-close our side (queued messages still go out), then give
/// the controller a moment to end its own.
async fn close(out: Outbox, inbound: &mut tonic::Streaming<ControllerMessage>) {
    drop(out);
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(Some(_)) = inbound.message().await {}
    })
    .await;
}

async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // A dropped sender means nobody can ask us to stop: wait forever.
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

struct Agent {
    opts: RunOptions,
    state: StateDir,
    root: Root,
    seen: SeenCommands,
    renew_after: Option<Instant>,
    executor: SharedExecutor,
    /// Every action is refused (the reason is in the executor's refusals).
    observe_only: bool,
}

/// A session's action queue: the worker's channel and the ids queued or running, so that a
/// re-sent id is acknowledged as in progress rather than queued twice.
struct ActionQueue {
    jobs: mpsc::Sender<ActionRequest>,
    in_flight: HashSet<String>,
}

/// What [`ActionQueue::enqueue`] did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Enqueued {
    Queued,
    /// The same id is already queued or running: nothing was queued.
    InProgress,
    /// [`ACTION_QUEUE`] other actions are waiting: not queued.
    Busy,
    /// The worker is gone: not queued.
    Stopped,
}

impl ActionQueue {
    fn new(jobs: mpsc::Sender<ActionRequest>) -> Self {
        ActionQueue {
            jobs,
            in_flight: HashSet::new(),
        }
    }

    fn enqueue(&mut self, req: ActionRequest) -> Enqueued {
        if self.in_flight.contains(&req.id) {
            return Enqueued::InProgress;
        }
        let id = req.id.clone();
        match self.jobs.try_send(req) {
            Ok(()) => {
                self.in_flight.insert(id);
                Enqueued::Queued
            }
            Err(mpsc::error::TrySendError::Full(_)) => Enqueued::Busy,
            Err(mpsc::error::TrySendError::Closed(_)) => Enqueued::Stopped,
        }
    }

    /// The worker finished `id`: a later send of it is a new request (answered from
    /// [`Once`]'s record).
    fn done(&mut self, id: &str) {
        self.in_flight.remove(id);
    }
}

/// From the action worker to the session loop.
enum ActionEvent {
    Output { id: String, line: String },
    Done(ActionOutcome),
}

/// Runs queued actions one at a time, in order, each on a blocking thread.
async fn action_worker(
    executor: SharedExecutor,
    mut jobs: mpsc::Receiver<ActionRequest>,
    events: mpsc::Sender<ActionEvent>,
) {
    while let Some(req) = jobs.recv().await {
        let exec = executor.clone();
        let lines = events.clone();
        let id = req.id.clone();
        info!(command_id = %id, action = req.action.name(), "action starting");
        let outcome = tokio::task::spawn_blocking(move || {
            exec.execute(&req, &mut |line: &str| {
                // Lossy on purpose: when the session does not keep up, a line is dropped
                // rather than stalling the action; the result carries the output's tail.
                let _ = lines.try_send(ActionEvent::Output {
                    id: req.id.clone(),
                    line: line.to_owned(),
                });
            })
        })
        .await
        .unwrap_or_else(|e| ActionOutcome::refused(&id, format!("the executor failed: {e}")));
        info!(
            command_id = %id,
            ok = outcome.ok,
            exit_code = ?outcome.exit_code,
            replayed = outcome.replayed,
            "action finished"
        );
        let ends_session = !outcome.replayed && (outcome.reboot || outcome.power_off);
        if events.send(ActionEvent::Done(outcome)).await.is_err() || ends_session {
            return;
        }
    }
}

/// Aborts the task when dropped (the action worker of a session that ended). A blocking
/// action already running finishes on its own thread and [`Once`] records its outcome.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The sending half of a session, with the per-session sequence number shared by reports
/// and heartbeats.
struct Outbox {
    tx: mpsc::Sender<AgentMessage>,
    seq: u64,
    last_sent: Instant,
    /// JSON of the last report sent in this session.
    last_report: Option<Vec<u8>>,
    /// Reports awaiting their `ReportAck`, with the command that asked for them.
    pending: HashMap<u64, Option<String>>,
}

impl Outbox {
    fn send(&mut self, kind: Out) -> Result<(), Error> {
        self.last_sent = Instant::now();
        self.tx
            .try_send(AgentMessage::new(kind))
            .map_err(|_| Error::Protocol("the session stopped taking messages".into()))
    }

    /// Sends `kind` if there is room; drops it otherwise (for streamed output lines, which
    /// must never make a busy session fail). `false`: dropped.
    fn send_lossy(&mut self, kind: Out) -> bool {
        match self.tx.try_send(AgentMessage::new(kind)) {
            Ok(()) => {
                self.last_sent = Instant::now();
                true
            }
            Err(_) => false,
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn report(&mut self, report: &Report, command: Option<String>) -> Result<(), Error> {
        let msg = agent_message::Report::new(self.next_seq(), report);
        debug!(
            seq = msg.seq,
            bytes = msg.report_json.len(),
            "sending report"
        );
        self.pending.insert(msg.seq, command);
        self.last_report = Some(msg.report_json.clone());
        self.send(Out::Report(msg))
    }

    fn heartbeat(&mut self) -> Result<(), Error> {
        let seq = self.next_seq();
        self.send(Out::Heartbeat(agent_message::Heartbeat { seq }))
    }

    fn changed(&self, report: &Report) -> bool {
        self.last_report.as_deref() != Some(fleetward_proto::report_json_bytes(report).as_slice())
    }

    fn ack(&mut self, command_id: &str) -> Result<(), Error> {
        self.send(Out::CommandAck(agent_message::CommandAck {
            command_id: command_id.to_owned(),
        }))
    }

    fn result(
        &mut self,
        command_id: &str,
        ok: bool,
        message: impl Into<String>,
    ) -> Result<(), Error> {
        self.send(Out::CommandResult(agent_message::CommandResult {
            command_id: command_id.to_owned(),
            ok,
            message: message.into(),
            exit_code: None,
            replayed: false,
            ceph: None,
        }))
    }

    fn action_result(&mut self, o: &ActionOutcome) -> Result<(), Error> {
        self.send(Out::CommandResult(agent_message::CommandResult {
            command_id: o.id.clone(),
            ok: o.ok,
            message: tail(o.output.clone(), RESULT_MESSAGE_MAX),
            exit_code: o.exit_code,
            replayed: o.replayed,
            ceph: o.ceph.map(|m| agent_message::CephObserved {
                noout: m.noout,
                osds_total: m.osds.total,
                osds_up: m.osds.up,
                osds_in: m.osds.inside,
            }),
        }))
    }
}

impl Agent {
    async fn inspect(&self) -> Report {
        let root = self.root.clone();
        // On the live system (not a fixture tree, not simulated), Ceph health, `noout` and
        // the OSDs are only known by asking Ceph: a read-only `ceph health` (the rollout's
        // Ceph gate) and `ceph osd dump` (the flag and the OSDs up/in the unset waits for).
        let live = self.opts.simulate.is_none() && self.opts.root == std::path::Path::new("/");
        let executor = self.executor.clone();
        let work = move || {
            let mut report = inspect(&root);
            if live {
                crate::probe::ceph_health(&mut report, &SystemRunner);
                crate::probe::ceph_osd_map(&mut report, &SystemRunner);
            }
            // apt is the oracle for upgrades: its read-only simulation, through the executor
            // (real: `apt-get -s dist-upgrade` on `/`; simulated: the fixture world;
            // observe-only: not asked, it starts no process).
            if let Some(answer) = executor.simulate_upgrade() {
                crate::inspect::with_transaction(&mut report, answer);
            }
            report
        };
        let mut report = match tokio::task::spawn_blocking(work).await {
            Ok(report) => report,
            // Only a panic inside inspect gets here; inspect once more, in place.
            Err(_) => inspect(&self.root),
        };
        // The controller plans no action for a node whose agent would refuse it.
        report.facts.agent.observe_only = self.observe_only;
        report
    }

    /// One session, from connect to its end.
    async fn session(
        &mut self,
        url: &ControllerUrl,
        creds: &Credentials,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Ended, Error> {
        let endpoint = url.endpoint(&creds.ca_pem, Some((&creds.cert_pem, creds.key.pem())))?;
        let channel = tokio::select! {
            c = endpoint.connect() => c.map_err(|e| url.transport_error(&e))?,
            _ = stopped(shutdown) => return Ok(Ended::Shutdown),
        };
        if self.maybe_renew(&channel, creds).await {
            return Ok(Ended::Renewed);
        }
        let report = self.inspect().await;
        let (tx, rx) = mpsc::channel(OUTBOX);
        let mut out = Outbox {
            tx,
            seq: 0,
            last_sent: Instant::now(),
            last_report: None,
            pending: HashMap::new(),
        };
        // The boot id comes from this session's fresh inspection (read from
        // /proc/sys/kernel/random/boot_id under the root): after a reboot it is the new one.
        out.send(Out::Hello(agent_message::Hello {
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            boot_id: report.facts.node.boot_id.clone().unwrap_or_default(),
        }))?;
        out.report(&report, None)?;
        let mut client = AgentServiceClient::new(channel.clone());
        let mut inbound = tokio::select! {
            r = client.session(ReceiverStream::new(rx)) => r.map_err(Error::rpc("Session"))?.into_inner(),
            _ = stopped(shutdown) => return Ok(Ended::Shutdown),
        };
        info!(controller = %url, node = %creds.config.node_name, "session open");

        let (jobs, jobs_rx) = mpsc::channel::<ActionRequest>(ACTION_QUEUE);
        let mut queue = ActionQueue::new(jobs);
        let (events_tx, mut events) = mpsc::channel::<ActionEvent>(ACTION_EVENTS);
        let _worker = AbortOnDrop(tokio::spawn(action_worker(
            self.executor.clone(),
            jobs_rx,
            events_tx,
        )));
        let mut worker_alive = true;
        let mut dropped_lines: u64 = 0;

        let idle_limit = self.opts.heartbeat * 3 + Duration::from_secs(10);
        let mut last_received = Instant::now();
        let mut inspect_at = Instant::now() + self.opts.interval;
        loop {
            tokio::select! {
                msg = inbound.message() => match msg.map_err(Error::rpc("Session"))? {
                    Some(msg) => {
                        last_received = Instant::now();
                        if let Some(ended) = self.handle(msg, &mut out, &mut queue).await? {
                            return Ok(ended);
                        }
                    }
                    None => return Err(Error::Protocol("the controller ended the session".into())),
                },
                ev = events.recv(), if worker_alive => match ev {
                    Some(ActionEvent::Output { id, line }) => {
                        if !out.send_lossy(Out::CommandOutput(agent_message::CommandOutput {
                            command_id: id,
                            line,
                        })) {
                            dropped_lines += 1;
                            debug!(dropped_lines, "session busy: output line dropped");
                        }
                    }
                    Some(ActionEvent::Done(outcome)) => {
                        queue.done(&outcome.id);
                        out.action_result(&outcome)?;
                        if !outcome.replayed && (outcome.power_off || outcome.reboot) {
                            close(out, &mut inbound).await;
                            return Ok(if outcome.power_off { Ended::PowerOff } else { Ended::Reboot });
                        }
                        // Show the controller the action's effect at once.
                        let report = self.inspect().await;
                        if out.changed(&report) {
                            out.report(&report, None)?;
                        }
                    }
                    None => worker_alive = false,
                },
                _ = sleep_until(inspect_at) => {
                    inspect_at = Instant::now() + self.opts.interval;
                    let report = self.inspect().await;
                    if out.changed(&report) {
                        info!("inspection result changed; sending a report");
                        out.report(&report, None)?;
                    } else {
                        out.heartbeat()?;
                    }
                }
                _ = sleep_until(out.last_sent + self.opts.heartbeat) => {
                    out.heartbeat()?;
                    if self.maybe_renew(&channel, creds).await {
                        return Ok(Ended::Renewed);
                    }
                }
                _ = sleep_until(last_received + idle_limit) => {
                    return Err(Error::Protocol(format!(
                        "nothing heard from the controller for {} s", idle_limit.as_secs()
                    )));
                }
                _ = stopped(shutdown) => {
                    close(out, &mut inbound).await;
                    info!("session closed: shutting down");
                    return Ok(Ended::Shutdown);
                }
            }
        }
    }

    /// Handles one controller message; `Some` ends the session.
    async fn handle(
        &mut self,
        msg: ControllerMessage,
        out: &mut Outbox,
        queue: &mut ActionQueue,
    ) -> Result<Option<Ended>, Error> {
        match msg.kind {
            Some(In::ReportAck(ack)) => match out.pending.remove(&ack.seq) {
                Some(command) => {
                    // Ready (for systemd) once the controller has stored a first report.
                    notify::ready("connected: reports are acknowledged");
                    match command {
                        Some(command_id) => out.result(
                            &command_id,
                            true,
                            format!("inspected; report {} stored", ack.seq),
                        )?,
                        None => debug!(seq = ack.seq, "report stored"),
                    }
                }
                None => warn!(seq = ack.seq, "acknowledgement for a report never sent"),
            },
            Some(In::HeartbeatAck(ack)) => debug!(seq = ack.seq, "heartbeat acknowledged"),
            Some(In::Command(cmd)) => self.command(cmd, out, queue).await?,
            Some(In::Close(close)) => return Ok(Some(Ended::Closed(close.reason))),
            None => debug!("ignoring a controller message of an unknown kind"),
        }
        Ok(None)
    }

    async fn command(
        &mut self,
        cmd: Command,
        out: &mut Outbox,
        queue: &mut ActionQueue,
    ) -> Result<(), Error> {
        let id = cmd.command_id;
        if id.is_empty() {
            warn!("ignoring a command without an id");
            return Ok(());
        }
        match cmd.kind {
            Some(command::Kind::Refresh(_)) => {}
            Some(command::Kind::Action(a)) => {
                out.ack(&id)?;
                let req = match a.request(&id) {
                    Ok(req) => req,
                    Err(e) => {
                        warn!(command_id = %id, error = %e, "refusing an action");
                        return out.result(&id, false, e.to_string());
                    }
                };
                let name = req.action.name();
                return match queue.enqueue(req) {
                    Enqueued::Queued => {
                        info!(command_id = %id, action = name, "action queued");
                        Ok(())
                    }
                    // A re-send (a reconnect, a recovering controller): the acknowledgement
                    // above says it is in progress; its one result follows when it is done.
                    Enqueued::InProgress => {
                        info!(command_id = %id, action = name, "action already queued or running; not queued again");
                        Ok(())
                    }
                    Enqueued::Busy => out.result(
                        &id,
                        false,
                        format!("agent busy: {ACTION_QUEUE} actions already queued; not queued"),
                    ),
                    Enqueued::Stopped => {
                        out.result(&id, false, "the action worker stopped; not queued")
                    }
                };
            }
            None => {
                warn!(command_id = %id, "unknown command kind");
                out.ack(&id)?;
                let version = env!("CARGO_PKG_VERSION");
                return out.result(&id, false, format!("unknown command for agent {version}"));
            }
        }
        if self.seen.contains(&id) {
            info!(command_id = %id, "command seen before; not executing it again");
            out.ack(&id)?;
            return out.result(&id, true, "already done");
        }
        if let Err(e) = self.seen.insert(&id) {
            warn!(command_id = %id, error = %e, "cannot persist the command id");
        }
        info!(command_id = %id, "refresh requested");
        out.ack(&id)?;
        let report = self.inspect().await;
        out.report(&report, Some(id))
    }

    /// Renews the certificate if due (and not recently failed). `true`: new identity saved.
    async fn maybe_renew(&mut self, channel: &Channel, creds: &Credentials) -> bool {
        let due = match (
            pki::not_before(&creds.cert_der),
            pki::not_after(&creds.cert_der),
        ) {
            (Ok(nb), Ok(na)) => renewal_due(nb, na, SystemTime::now()),
            _ => true,
        };
        if !due || self.renew_after.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        info!("certificate is in the last third of its validity: renewing");
        match self.renew(channel, creds).await {
            Ok(not_after) => {
                let left = not_after
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                info!(valid_for_s = left.as_secs(), "certificate renewed");
                self.renew_after = Some(Instant::now() + RENEW_MIN_INTERVAL);
                true
            }
            Err(e) => {
                warn!(error = %e, "certificate renewal failed; retrying later");
                self.renew_after = Some(Instant::now() + RENEW_RETRY);
                false
            }
        }
    }

    async fn renew(&self, channel: &Channel, creds: &Credentials) -> Result<SystemTime, Error> {
        let identity = Identity::new(Role::Agent, creds.config.node_name.clone())?;
        let (key, csr_pem) = pki::generate_key_and_csr(&identity)?;
        let mut client = AgentServiceClient::new(channel.clone());
        let resp = tokio::time::timeout(CALL_TIMEOUT, client.renew(RenewRequest { csr_pem }))
            .await
            .map_err(|_| Error::Protocol("Renew timed out".into()))?
            .map_err(Error::rpc("Renew"))?
            .into_inner();
        let der = pki::ca_der_from_pem(&resp.cert_pem)?;
        if pki::identity_from_der(&der)? != identity {
            return Err(Error::Protocol(
                "renewed certificate names another identity".into(),
            ));
        }
        // Fails unless the certificate is for the new key and parses as a client cert.
        pki::client_config(
            &pki::ca_der_from_pem(&creds.ca_pem)?,
            &resp.cert_pem,
            key.pem(),
        )?;
        self.state.save_renewal(&key, &resp.cert_pem)?;
        Ok(pki::not_after(&der)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_in_the_last_third() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let day = Duration::from_secs(86_400);
        let (nb, na) = (t0, t0 + 30 * day);
        assert!(!renewal_due(nb, na, t0));
        assert!(!renewal_due(nb, na, t0 + 19 * day));
        assert!(renewal_due(nb, na, t0 + 21 * day));
        assert!(renewal_due(nb, na, na + day), "expired");
        assert!(renewal_due(na, nb, t0), "nonsense validity");
    }

    fn action(id: &str) -> ActionRequest {
        ActionRequest {
            id: id.into(),
            action: crate::executor::Action::Reboot,
        }
    }

    #[test]
    fn a_resent_action_is_in_progress_never_queued_twice_nor_busy() {
        let (jobs, _rx) = mpsc::channel(ACTION_QUEUE);
        let mut queue = ActionQueue::new(jobs);
        let id = "rollout-1/pve-01/reboot/1";
        assert_eq!(queue.enqueue(action(id)), Enqueued::Queued);
        for _ in 0..40 {
            assert_eq!(queue.enqueue(action(id)), Enqueued::InProgress);
        }
        for i in 1..ACTION_QUEUE {
            assert_eq!(queue.enqueue(action(&format!("x/{i}"))), Enqueued::Queued);
        }
        // Only distinct actions fill the queue; a re-send of a queued one is still in progress.
        assert_eq!(queue.enqueue(action("x/full")), Enqueued::Busy);
        assert_eq!(queue.enqueue(action(id)), Enqueued::InProgress);
        queue.done(id);
        assert_eq!(
            queue.enqueue(action(id)),
            Enqueued::Busy,
            "once done, a re-send is a new request (answered from the at-most-once record)"
        );
    }

    /// A [`RecordingRunner`](crate::runner::testing::RecordingRunner) the test keeps a
    /// handle on.
    struct Shared(Arc<crate::runner::testing::RecordingRunner>);

    impl crate::runner::CommandRunner for Shared {
        fn run(
            &self,
            program: &str,
            args: &[String],
            env: &[(String, String)],
            timeout: Duration,
            out: &mut dyn FnMut(&str),
        ) -> crate::runner::RunResult {
            self.0.run(program, args, env, timeout, out)
        }
    }

    fn opts(state: &Path, root: &Path, simulate: bool, observe_only: bool) -> RunOptions {
        RunOptions {
            state_dir: state.to_owned(),
            root: root.to_owned(),
            interval: Duration::from_secs(60),
            heartbeat: Duration::from_secs(15),
            simulate: simulate.then_some(SimOptions {
                reboot_delay: Duration::ZERO,
                action_duration: Duration::ZERO,
                ha_delay: None,
                osd_delay: None,
            }),
            observe_only,
        }
    }

    #[test]
    fn an_agent_acts_only_on_what_it_inspects() {
        let state = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let cases = [
            (
                opts(state.path(), root.path(), false, false),
                "--root without --simulate",
            ),
            (
                opts(state.path(), Path::new("/"), false, true),
                "--observe-only",
            ),
            (
                opts(state.path(), root.path(), true, true),
                "--observe-only",
            ),
        ];
        for (i, (o, why)) in cases.into_iter().enumerate() {
            let reason = observe_only_reason(&o).expect("observe-only");
            assert!(reason.contains(why), "{reason}");
            let runner = Arc::new(crate::runner::testing::RecordingRunner::new());
            let r = runner.clone();
            let exec = open_executor_with(&o, "pve-01", move || {
                Box::new(RealExecutor::new("pve-01", Shared(r)))
            })
            .unwrap();
            let outcome = exec.execute(&action(&format!("op/pve-01/reboot/{i}")), &mut |_| {});
            assert!(!outcome.ok && !outcome.reboot, "{outcome:?}");
            assert!(
                outcome.output.contains("observe-only"),
                "{}",
                outcome.output
            );
            assert!(runner.calls().is_empty(), "no process was started");
        }
        assert!(
            !state.path().join(SIM_ACTION_LOG).exists(),
            "the simulated executor did not run either"
        );
        let live = opts(state.path(), Path::new("/"), false, false);
        assert_eq!(observe_only_reason(&live), None, "the live root acts");
        let sim = opts(state.path(), root.path(), true, false);
        assert_eq!(
            observe_only_reason(&sim),
            None,
            "a simulated node acts on its tree"
        );
    }

    #[test]
    fn waiting_for_enrollment_ends_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (stop, shutdown) = watch::channel(false);
        let enrolled = rt.block_on(async {
            let wait = wait_for_enrollment(dir.path(), Duration::from_millis(5), shutdown);
            let stopper = async {
                sleep(Duration::from_millis(30)).await;
                stop.send(true).unwrap();
            };
            tokio::join!(wait, stopper).0
        });
        assert!(!enrolled.unwrap(), "not enrolled, stopped while waiting");
    }
}
