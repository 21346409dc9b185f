//! The gRPC API: `AgentService` and `OperatorService`, behind one authorization layer
//! ([`Controller::authorize`]): every call but `Enroll` presents a client certificate
//! signed by our CA; its role must match the service, its serial must not be revoked, and
//! an agent only ever speaks for the node named in its certificate.

use crate::config::Config;
use crate::events::{AgentEvent, AgentEventKind, EVENTS_CAPACITY};
use crate::fleet::{self, NodeView, Policy};
use crate::store::{
    AuditEntry, FactChange, NodeRecord, ReportWrite, Store, StoreError, TokenError,
};
use fleetward_pki::{identity_from_der, not_after, serial_hex, Ca, Identity, Role};
use fleetward_proto::api::{
    self, agent_message, agent_service_server::AgentService, controller_message,
    operator_service_server::OperatorService, AgentMessage, ControllerMessage,
};
use fleetward_proto::{Report, Severity};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn internal(e: impl std::fmt::Display) -> Status {
    tracing::error!(error = %e, "internal error");
    Status::internal(e.to_string())
}

/// Who is calling, from the verified client certificate.
#[derive(Debug, Clone)]
pub struct Caller {
    pub identity: Identity,
    pub serial: String,
}

/// A report's facts flattened (`fleet::flatten`), packed (one string per node).
type Flat = fleet::PackedFlat;

type Outbound = mpsc::Sender<Result<ControllerMessage, Status>>;

/// Why a session is ended from the controller's side.
#[derive(Debug, Clone)]
struct Kill {
    revoked: bool,
    reason: String,
}

struct SessionHandle {
    id: u64,
    tx: Outbound,
    kill: watch::Sender<Option<Kill>>,
}

/// Shared controller state: the store, the CA, and the open agent sessions.
pub struct Controller {
    store: Arc<Store>,
    ca: Ca,
    cfg: Config,
    sessions: Mutex<HashMap<String, SessionHandle>>,
    heartbeats: Mutex<HashMap<String, u64>>,
    counter: AtomicU64,
    writer: ReportWriter,
    /// Every node's latest report, parsed (the fleet rules run over these).
    latest: RwLock<BTreeMap<String, Arc<Report>>>,
    /// The flattened facts of each node's latest report, kept so that a new report is
    /// flattened once (to find what changed) rather than flattening the previous one again.
    /// Packed: with 10,000 nodes the maps themselves were ~100 MiB.
    flats: Mutex<HashMap<String, Arc<Flat>>>,
    policy: RwLock<Option<Arc<LoadedPolicy>>>,
    /// Session events for the orchestration drivers.
    events: tokio::sync::broadcast::Sender<AgentEvent>,
    /// The rollout driver, once `serve` started it.
    rollouts: std::sync::OnceLock<crate::orchestrate::rollout::Rollouts>,
    /// The shutdown driver, once `serve` started it.
    shutdowns: std::sync::OnceLock<crate::orchestrate::shutdown::Shutdowns>,
    /// The package list refresh driver, once `serve` started it.
    refreshes: std::sync::OnceLock<crate::orchestrate::refresh::Refreshes>,
    /// Each node's latest report's store seq: only grows, also across restarts.
    report_seqs: Mutex<HashMap<String, u64>>,
}

/// The policy in force and where it came from.
pub struct LoadedPolicy {
    pub path: PathBuf,
    pub text: String,
    pub policy: Policy,
}

/// Read and parse a policy file; the error says which file and what is wrong.
pub fn load_policy(path: &std::path::Path) -> Result<LoadedPolicy, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read policy {}: {e}", path.display()))?;
    let policy = Policy::parse(&text).map_err(|e| format!("policy {}: {e}", path.display()))?;
    Ok(LoadedPolicy {
        path: path.to_path_buf(),
        text,
        policy,
    })
}

/// The one writer of reports: sessions hand it their reports; it stores everything that
/// arrived meanwhile with ONE write and sync ([`Store::put_reports`]) and then answers each. So no
/// report is acknowledged before it is durable, and the sync cost is shared.
struct ReportWriter {
    tx: std::sync::mpsc::Sender<WriteJob>,
}

struct WriteJob {
    node: String,
    received_ms: u64,
    json: Vec<u8>,
    changes: Vec<FactChange>,
    done: tokio::sync::oneshot::Sender<Result<u64, String>>,
}

impl ReportWriter {
    /// Most reports stored per sync.
    const BATCH: usize = 512;
    /// How long the writer waits for more reports before a sync.
    const GATHER: std::time::Duration = std::time::Duration::from_millis(4);

    fn start(store: Arc<Store>) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<WriteJob>();
        std::thread::spawn(move || {
            while let Ok(first) = rx.recv() {
                // Group commit: collect what arrives within GATHER of the first report, so
                // one sync serves many reports when they come fast (and costs one GATHER of
                // latency when they do not).
                let mut jobs = vec![first];
                let until = std::time::Instant::now() + Self::GATHER;
                while jobs.len() < Self::BATCH {
                    let left = until.saturating_duration_since(std::time::Instant::now());
                    match rx.recv_timeout(left) {
                        Ok(j) => jobs.push(j),
                        Err(_) => break,
                    }
                }
                let write = |jobs: &[WriteJob]| {
                    let writes: Vec<ReportWrite> = jobs
                        .iter()
                        .map(|j| ReportWrite {
                            node: &j.node,
                            received_ms: j.received_ms,
                            json: &j.json,
                            changes: &j.changes,
                        })
                        .collect();
                    store.put_reports(&writes)
                };
                match write(&jobs) {
                    Ok(seqs) => {
                        for (j, seq) in jobs.into_iter().zip(seqs) {
                            let _ = j.done.send(Ok(seq));
                        }
                    }
                    // One bad report must not fail the others: retry them one by one.
                    Err(_) => {
                        for j in jobs {
                            let r = write(std::slice::from_ref(&j))
                                .map(|s| s[0])
                                .map_err(|e| e.to_string());
                            let _ = j.done.send(r);
                        }
                    }
                }
            }
        });
        ReportWriter { tx }
    }

    async fn write(
        &self,
        node: &str,
        received_ms: u64,
        json: Vec<u8>,
        changes: Vec<FactChange>,
    ) -> Result<u64, Status> {
        let (done, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(WriteJob {
                node: node.to_string(),
                received_ms,
                json,
                changes,
                done,
            })
            .map_err(|_| internal("the report writer stopped"))?;
        match rx.await {
            Ok(Ok(seq)) => Ok(seq),
            Ok(Err(e)) => Err(internal(e)),
            Err(_) => Err(internal("the report writer dropped a report")),
        }
    }
}

impl Controller {
    pub fn new(
        store: Store,
        ca: Ca,
        cfg: Config,
        policy: Option<LoadedPolicy>,
    ) -> Result<Arc<Self>, StoreError> {
        let mut latest = BTreeMap::new();
        let mut report_seqs = HashMap::new();
        for rec in store.list_nodes()? {
            if let Some(seq) = store.latest_report_seq(&rec.name)? {
                report_seqs.insert(rec.name.clone(), seq);
            }
            if let Some((_, report)) = store.latest_report(&rec.name)? {
                latest.insert(rec.name, Arc::new(report));
            }
        }
        let store = Arc::new(store);
        // Report-body compaction, off the ingestion path; ends with the store.
        let weak = Arc::downgrade(&store);
        let _ = std::thread::Builder::new()
            .name("compact".into())
            .spawn(move || loop {
                std::thread::sleep(std::time::Duration::from_secs(60));
                let Some(store) = weak.upgrade() else { return };
                if let Err(e) = store.compact() {
                    tracing::error!(error = %e, "compacting report bodies failed");
                }
            });
        Ok(Arc::new(Controller {
            writer: ReportWriter::start(store.clone()),
            store,
            ca,
            cfg,
            sessions: Mutex::new(HashMap::new()),
            heartbeats: Mutex::new(HashMap::new()),
            counter: AtomicU64::new(0),
            latest: RwLock::new(latest),
            flats: Mutex::new(HashMap::new()),
            report_seqs: Mutex::new(report_seqs),
            rollouts: std::sync::OnceLock::new(),
            shutdowns: std::sync::OnceLock::new(),
            refreshes: std::sync::OnceLock::new(),
            policy: RwLock::new(policy.map(Arc::new)),
            events: broadcast::channel(EVENTS_CAPACITY).0,
        }))
    }

    /// Events of every agent session from now on (see [`crate::events`]): connects with
    /// boot ids, disconnects, stored reports, command acks, output lines and results.
    pub fn subscribe(&self) -> broadcast::Receiver<AgentEvent> {
        self.events.subscribe()
    }

    fn publish(&self, node: &str, kind: AgentEventKind) {
        // No subscriber is fine: nobody is waiting for anything.
        let _ = self.events.send(AgentEvent {
            node: node.to_string(),
            kind,
        });
    }

    /// Sends `cmd` to `node` on its open session. Build action commands with
    /// `api::Command::action(&ActionRequest { id, action })`; the id is the idempotency key
    /// (`operation/node/step/attempt`), so re-sending the same command is safe. Progress
    /// comes back as [`AgentEventKind::CommandAck`], `CommandOutput` and `CommandResult`
    /// events. Never waits: a full session queue is an error (the drivers' timeouts and
    /// re-sends cover it), as are a node that is not connected or a session that ended.
    pub fn send_command(&self, node: &str, cmd: api::Command) -> Result<(), String> {
        let tx = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(node)
            .map(|h| h.tx.clone())
            .ok_or_else(|| format!("node {node} is not connected"))?;
        let id = cmd.command_id.clone();
        tx.try_send(Ok(ControllerMessage::new(
            controller_message::Kind::Command(cmd),
        )))
        .map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => format!("node {node}: session queue full"),
            mpsc::error::TrySendError::Closed(_) => format!("node {node} disconnected"),
        })?;
        tracing::info!(node, command = %id, "command sent");
        Ok(())
    }

    /// Re-read the policy file named in the configuration. On error the old policy stays.
    pub fn reload_policy(&self) -> Result<Option<Arc<LoadedPolicy>>, String> {
        let Some(path) = &self.cfg.policy else {
            return Ok(None);
        };
        let loaded = Arc::new(load_policy(path)?);
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = Some(loaded.clone());
        tracing::info!(path = %path.display(), "policy loaded");
        Ok(Some(loaded))
    }

    pub fn policy(&self) -> Option<Arc<LoadedPolicy>> {
        self.policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The latest reports of all nodes that are not revoked.
    pub fn fleet(&self) -> Vec<(String, Arc<Report>)> {
        let revoked: Vec<String> = self
            .store
            .list_nodes()
            .map(|n| {
                n.into_iter()
                    .filter(|n| n.revoked)
                    .map(|n| n.name)
                    .collect()
            })
            .unwrap_or_default();
        self.latest
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(n, _)| !revoked.contains(n))
            .map(|(n, r)| (n.clone(), r.clone()))
            .collect()
    }

    /// What the Prometheus endpoint shows, now.
    pub fn metrics_snapshot(&self) -> crate::metrics::FleetSnapshot {
        let now = now_ms();
        let fleet = self.fleet_findings(None);
        let latest = self
            .latest
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let nodes = self
            .store
            .list_nodes()
            .unwrap_or_default()
            .into_iter()
            .filter(|rec| !rec.revoked)
            .map(|rec| {
                let report = latest.get(&rec.name);
                crate::metrics::NodeSnapshot {
                    up: self.is_online(&rec.name),
                    last_report_age_secs: self
                        .last_seen_ms(&rec)
                        .map(|t| now.saturating_sub(t) as f64 / 1000.0),
                    reboot_required: report.is_some_and(|r| r.facts.boot.reboot_required),
                    findings: report
                        .map(|r| {
                            r.findings
                                .iter()
                                .map(|f| (f.code.clone(), f.severity))
                                .collect()
                        })
                        .unwrap_or_default(),
                    drift_findings: fleet.iter().filter(|f| f.node == rec.name).count(),
                    name: rec.name,
                }
            })
            .collect();
        crate::metrics::FleetSnapshot { nodes }
    }

    /// drift.* over the fleet, plus policy.* against `policy` (default: the one in force).
    pub fn fleet_findings(&self, policy: Option<&Policy>) -> Vec<fleet::FleetFinding> {
        let fleet = self.fleet();
        let views: Vec<NodeView> = fleet
            .iter()
            .map(|(n, r)| NodeView {
                name: n,
                facts: &r.facts,
            })
            .collect();
        let mut out = fleet::drift(&views);
        let in_force = self.policy();
        if let Some(p) = policy.or(in_force.as_ref().map(|l| &l.policy)) {
            out.extend(fleet::check(p, &views));
        }
        out
    }

    /// The flattened facts of the node's latest report (cached; computed once after start).
    fn previous_flat(&self, node: &str) -> Option<Arc<Flat>> {
        if let Some(f) = self
            .flats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(node)
        {
            return Some(f.clone());
        }
        let latest = self.latest.read().unwrap_or_else(|e| e.into_inner());
        latest
            .get(node)
            .map(|p| Arc::new(Flat::pack(&fleet::flatten(&p.facts))))
    }

    /// The node's latest report (parsed) and its store seq.
    pub fn latest(&self, node: &str) -> Option<(Arc<Report>, u64)> {
        let report = self
            .latest
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(node)
            .cloned()?;
        let seq = self
            .report_seqs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(node)
            .copied()
            .unwrap_or(0);
        Some((report, seq))
    }

    /// Writes to the audit log (for drivers acting on the operator's behalf).
    pub fn audit_event(&self, actor: &str, action: &str, target: &str, detail: String) {
        if let Err(e) = self.audit(actor, action, target, detail) {
            tracing::error!(error = %e.message(), "cannot write the audit log");
        }
    }

    /// Connects the operator API to the rollout driver (once, from `serve`).
    pub fn set_rollouts(&self, r: crate::orchestrate::rollout::Rollouts) {
        let _ = self.rollouts.set(r);
    }

    fn rollouts(&self) -> Result<&crate::orchestrate::rollout::Rollouts, Status> {
        self.rollouts
            .get()
            .ok_or_else(|| Status::unavailable("the rollout driver is not running"))
    }

    /// Connects the operator API to the refresh driver (once, from `serve`).
    pub fn set_refreshes(&self, r: crate::orchestrate::refresh::Refreshes) {
        let _ = self.refreshes.set(r);
    }

    fn refreshes(&self) -> Result<&crate::orchestrate::refresh::Refreshes, Status> {
        self.refreshes
            .get()
            .ok_or_else(|| Status::unavailable("the refresh driver is not running"))
    }

    /// Connects the shutdown API to the shutdown driver (once, from `serve`).
    pub fn set_shutdowns(&self, s: crate::orchestrate::shutdown::Shutdowns) {
        let _ = self.shutdowns.set(s);
    }

    pub(crate) fn shutdowns(&self) -> Result<&crate::orchestrate::shutdown::Shutdowns, Status> {
        self.shutdowns
            .get()
            .ok_or_else(|| Status::unavailable("the shutdown driver is not running"))
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The one authorization check: a certificate is present (TLS already verified it
    /// against our CA), names a fleetward identity of `role`, and is not revoked.
    pub fn authorize<T>(&self, req: &Request<T>, role: Role) -> Result<Caller, Status> {
        let certs = req
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
        let der = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
        let identity = identity_from_der(der.as_ref()).map_err(|e| {
            Status::unauthenticated(format!("certificate carries no fleetward identity: {e}"))
        })?;
        let serial =
            serial_hex(der.as_ref()).map_err(|e| Status::unauthenticated(e.to_string()))?;
        if self.store.is_revoked(&serial).map_err(internal)? {
            return Err(Status::permission_denied("certificate revoked"));
        }
        if identity.role != role {
            return Err(Status::permission_denied(format!(
                "a {} certificate may not call {} methods",
                identity.role, role
            )));
        }
        Ok(Caller { identity, serial })
    }

    pub(crate) fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        detail: String,
    ) -> Result<(), Status> {
        tracing::info!(actor, action, target, detail = %detail, "audit");
        self.store
            .append_audit(&AuditEntry {
                time_ms: now_ms(),
                actor: actor.to_string(),
                action: action.to_string(),
                target: target.to_string(),
                detail,
            })
            .map_err(internal)
    }

    fn node_enrolled(&self, name: &str) -> Result<NodeRecord, Status> {
        match self.store.get_node(name).map_err(internal)? {
            Some(n) if n.revoked => {
                Err(Status::permission_denied(format!("node {name} is revoked")))
            }
            Some(n) => Ok(n),
            None => Err(Status::permission_denied(format!(
                "node {name} is not enrolled"
            ))),
        }
    }

    fn register(&self, node: &str, tx: Outbound) -> (u64, watch::Receiver<Option<Kill>>) {
        let id = self.counter.fetch_add(1, Ordering::Relaxed);
        let (kill, killed) = watch::channel(None);
        let old = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node.to_string(), SessionHandle { id, tx, kill });
        if let Some(old) = old {
            let _ = old.kill.send(Some(Kill {
                revoked: false,
                reason: "replaced by a newer session of the same node".into(),
            }));
        }
        (id, killed)
    }

    fn unregister(&self, node: &str, id: u64) {
        let mut s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if s.get(node).is_some_and(|h| h.id == id) {
            s.remove(node);
        }
    }

    /// Whether the node has an open session.
    pub fn is_online(&self, node: &str) -> bool {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(node)
    }

    fn kill_session(&self, node: &str, kill: Kill) {
        if let Some(h) = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(node)
        {
            let _ = h.kill.send(Some(kill));
        }
    }

    /// Close every session (shutdown): agents reconnect to the next controller.
    pub fn close_all_sessions(&self, reason: &str) {
        let all: Vec<String> = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        for node in all {
            self.kill_session(
                &node,
                Kill {
                    revoked: false,
                    reason: reason.to_string(),
                },
            );
        }
    }

    pub fn session_count(&self) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// When the node was last heard from (report, heartbeat, any message), unix ms.
    pub fn last_seen_ms(&self, rec: &NodeRecord) -> Option<u64> {
        let hb = self
            .heartbeats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&rec.name)
            .copied();
        rec.last_seen_ms.max(hb)
    }

    fn node_message(&self, rec: &NodeRecord, report: Option<&Report>) -> api::Node {
        api::Node {
            name: rec.name.clone(),
            last_seen_unix_ms: self.last_seen_ms(rec).map(|v| v as i64),
            session_state: if self.is_online(&rec.name) {
                api::SessionState::Online
            } else {
                api::SessionState::Offline
            } as i32,
            finding_counts: Some(api::FindingCounts::from_findings(
                report.map_or(&[][..], |r| &r.findings),
            )),
            cert_serial: rec.cert_serial.clone(),
            cert_not_after_unix_ms: Some(rec.cert_not_after_ms as i64),
            revoked: rec.revoked,
            agent_version: rec.agent_version.clone().unwrap_or_default(),
        }
    }

    fn sign(
        &self,
        csr_pem: &str,
        identity: &Identity,
        secs: u64,
    ) -> Result<(String, String, u64), Status> {
        let issued = self
            .ca
            .sign_csr(csr_pem, identity, Duration::from_secs(secs))
            .map_err(|e| Status::invalid_argument(format!("cannot sign the CSR: {e}")))?;
        Ok((issued.pem, issued.serial, ms(issued.not_after)))
    }
}

/// `AgentService`, called by agents.
pub struct AgentApi(pub Arc<Controller>);

type SessionStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<ControllerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn enroll(
        &self,
        req: Request<api::EnrollRequest>,
    ) -> Result<Response<api::EnrollResponse>, Status> {
        let ctl = &self.0;
        let r = req.into_inner();
        let identity = Identity::new(Role::Agent, r.node_name.clone())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        // Sign first (a bad CSR must not burn the token), then consume the token.
        let (cert_pem, serial, not_after_ms) =
            ctl.sign(&r.csr_pem, &identity, ctl.cfg.agent_cert_secs)?;
        let now = now_ms();
        let token = ctl.store.consume_token(&r.token, &r.node_name, now);
        let token = match token {
            Ok(t) => t,
            Err(TokenError::Store(e)) => return Err(internal(e)),
            Err(e) => {
                tracing::warn!(node = %r.node_name, error = %e, "enrollment refused");
                return Err(Status::permission_denied(format!(
                    "enrollment refused: {e}"
                )));
            }
        };
        let previous = ctl.store.get_node(&r.node_name).map_err(internal)?;
        if let Some(prev) = &previous {
            // A re-enrolled node's old certificate stops working.
            ctl.store
                .revoke_serial(&prev.cert_serial)
                .map_err(internal)?;
            ctl.kill_session(
                &r.node_name,
                Kill {
                    revoked: true,
                    reason: "node re-enrolled".into(),
                },
            );
        }
        ctl.store
            .upsert_node(&NodeRecord {
                name: r.node_name.clone(),
                cert_serial: serial.clone(),
                cert_not_after_ms: not_after_ms,
                enrolled_ms: now,
                last_seen_ms: previous.as_ref().and_then(|p| p.last_seen_ms),
                revoked: false,
                agent_version: None,
                boot_id: None,
            })
            .map_err(internal)?;
        ctl.audit(
            &r.node_name,
            "node.enroll",
            &r.node_name,
            format!("token {} certificate {serial}", token.id),
        )?;
        Ok(Response::new(api::EnrollResponse {
            cert_pem,
            ca_pem: ctl.ca.cert_pem().to_string(),
        }))
    }

    async fn renew(
        &self,
        req: Request<api::RenewRequest>,
    ) -> Result<Response<api::RenewResponse>, Status> {
        let ctl = &self.0;
        let caller = ctl.authorize(&req, Role::Agent)?;
        let mut rec = ctl.node_enrolled(&caller.identity.name)?;
        let (cert_pem, serial, not_after_ms) = ctl.sign(
            &req.get_ref().csr_pem,
            &caller.identity,
            ctl.cfg.agent_cert_secs,
        )?;
        tracing::info!(node = %rec.name, old = %caller.serial, new = %serial, "certificate renewed");
        rec.cert_serial = serial;
        rec.cert_not_after_ms = not_after_ms;
        ctl.store.upsert_node(&rec).map_err(internal)?;
        Ok(Response::new(api::RenewResponse { cert_pem }))
    }

    type SessionStream = SessionStream;

    async fn session(
        &self,
        req: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let ctl = self.0.clone();
        let caller = ctl.authorize(&req, Role::Agent)?;
        let node = caller.identity.name.clone();
        ctl.node_enrolled(&node)?;
        let (tx, rx) = mpsc::channel(64);
        let (id, killed) = ctl.register(&node, tx.clone());
        tracing::info!(node = %node, "session opened");
        let inbound = req.into_inner();
        tokio::spawn(async move {
            let end = drive_session(&ctl, &node, inbound, &tx, killed).await;
            ctl.unregister(&node, id);
            // Replaced by a newer session: the node is still connected.
            if !ctl.is_online(&node) {
                ctl.publish(&node, AgentEventKind::Disconnected);
            }
            match end {
                Ok(()) => tracing::info!(node = %node, "session closed"),
                Err(status) => {
                    tracing::warn!(node = %node, code = ?status.code(), message = status.message(), "session ended");
                    let _ = tx.send(Err(status)).await;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

async fn drive_session(
    ctl: &Arc<Controller>,
    node: &str,
    mut inbound: Streaming<AgentMessage>,
    tx: &Outbound,
    mut killed: watch::Receiver<Option<Kill>>,
) -> Result<(), Status> {
    use agent_message::Kind;
    let send = |kind: controller_message::Kind| {
        let tx = tx.clone();
        async move {
            tx.send(Ok(ControllerMessage::new(kind)))
                .await
                .map_err(|_| Status::cancelled("session gone"))
        }
    };
    loop {
        let msg = tokio::select! {
            m = inbound.message() => m,
            _ = killed.changed() => {
                let kill = killed.borrow().clone().unwrap_or(Kill { revoked: false, reason: "closed".into() });
                let _ = send(controller_message::Kind::Close(controller_message::Close { reason: kill.reason.clone() })).await;
                return Err(if kill.revoked {
                    Status::permission_denied(kill.reason)
                } else {
                    Status::unavailable(kill.reason)
                });
            }
        };
        let msg = match msg {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(()),
            // A decode error (e.g. a message over the size limit) goes back to the agent;
            // a vanished agent makes the reply go nowhere, which is fine.
            Err(status) => return Err(status),
        };
        ctl.heartbeats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node.to_string(), now_ms());
        match msg.kind {
            Some(Kind::Hello(h)) => {
                let mut rec = ctl.node_enrolled(node)?;
                rec.agent_version = Some(h.agent_version);
                rec.boot_id = Some(h.boot_id.clone());
                ctl.store.upsert_node(&rec).map_err(internal)?;
                ctl.publish(node, AgentEventKind::Connected { boot_id: h.boot_id });
            }
            Some(Kind::Report(r)) => {
                let seq = r.seq;
                // Boxed: what a report keeps across the write (the parsed report, its
                // flat) is large, and the session task would otherwise be that large for
                // its whole life (its allocation was ~2.8 KB per idle session, heaptrack).
                Box::pin(store_report(ctl, node, r)).await?;
                send(controller_message::Kind::ReportAck(
                    controller_message::ReportAck { seq },
                ))
                .await?;
            }
            Some(Kind::Heartbeat(h)) => {
                send(controller_message::Kind::HeartbeatAck(
                    controller_message::HeartbeatAck { seq: h.seq },
                ))
                .await?;
            }
            Some(Kind::CommandAck(a)) => {
                tracing::info!(node, command = %a.command_id, "command acknowledged");
                ctl.publish(node, AgentEventKind::CommandAck { id: a.command_id });
            }
            Some(Kind::CommandOutput(o)) => {
                tracing::debug!(node, command = %o.command_id, line = %o.line, "command output");
                ctl.publish(
                    node,
                    AgentEventKind::CommandOutput {
                        id: o.command_id,
                        line: o.line,
                    },
                );
            }
            Some(Kind::CommandResult(r)) => {
                tracing::info!(node, command = %r.command_id, ok = r.ok, exit_code = ?r.exit_code, replayed = r.replayed, message = %r.message, "command finished");
                ctl.publish(
                    node,
                    AgentEventKind::CommandResult {
                        id: r.command_id,
                        ok: r.ok,
                        message: r.message,
                        exit_code: r.exit_code,
                        replayed: r.replayed,
                    },
                );
            }
            None => return Err(Status::invalid_argument("empty agent message")),
        }
    }
}

/// Checks, diffs and stores one report, then makes it the node's latest.
async fn store_report(
    ctl: &Arc<Controller>,
    node: &str,
    r: agent_message::Report,
) -> Result<(), Status> {
    let report = r
        .parse()
        .map_err(|e| Status::invalid_argument(format!("report is not valid: {e}")))?;
    if let Some(host) = report.facts.node.hostname.as_deref() {
        let short = host.split('.').next().unwrap_or(host);
        if !short.eq_ignore_ascii_case(node) {
            return Err(Status::permission_denied(format!(
                "the certificate of node {node} may not report for node {short}"
            )));
        }
    }
    ctl.node_enrolled(node)?;
    let now = now_ms();
    let flat = fleet::flatten(&report.facts);
    let previous = ctl.previous_flat(node);
    let changes: Vec<FactChange> = match &previous {
        Some(p) => fleet::changes_since(p, &flat)
            .into_iter()
            .map(|c| FactChange {
                time_ms: now,
                key: c.key,
                old: c.old,
                new: c.new,
            })
            .collect(),
        None => Vec::new(),
    };
    // Packed now (the map is freed before the write is awaited).
    let flat = Arc::new(Flat::pack(&{ flat }));
    // Kept as a clone: the parser grew every Vec by doubling, a clone has exact capacities
    // (~17 → ~13 KB per seed report, ~26 MiB over 10,000 nodes, for ~9 µs per report).
    let report = Arc::new({ report }.clone());
    let seq = ctl.writer.write(node, now, r.report_json, changes).await?;
    ctl.report_seqs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(node.to_string(), seq);
    ctl.latest
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(node.to_string(), report);
    ctl.flats
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(node.to_string(), flat);
    ctl.publish(node, AgentEventKind::Report);
    Ok(())
}

/// `OperatorService`, called with operator certificates.
pub struct OperatorApi(pub Arc<Controller>);

fn not_found(what: &str, name: &str) -> Status {
    Status::not_found(format!("no {what} named '{name}'"))
}

#[tonic::async_trait]
impl OperatorService for OperatorApi {
    async fn list_nodes(
        &self,
        req: Request<api::ListNodesRequest>,
    ) -> Result<Response<api::ListNodesResponse>, Status> {
        let ctl = &self.0;
        ctl.authorize(&req, Role::Operator)?;
        let mut nodes = Vec::new();
        for rec in ctl.store.list_nodes().map_err(internal)? {
            let report = ctl.latest(&rec.name).map(|(r, _)| r);
            nodes.push(ctl.node_message(&rec, report.as_deref()));
        }
        Ok(Response::new(api::ListNodesResponse { nodes }))
    }

    async fn get_node(
        &self,
        req: Request<api::GetNodeRequest>,
    ) -> Result<Response<api::GetNodeResponse>, Status> {
        let ctl = &self.0;
        ctl.authorize(&req, Role::Operator)?;
        let name = &req.get_ref().name;
        let rec = ctl
            .store
            .get_node(name)
            .map_err(internal)?
            .ok_or_else(|| not_found("node", name))?;
        let report = ctl.store.latest_report(name).map_err(internal)?;
        Ok(Response::new(api::GetNodeResponse {
            node: Some(ctl.node_message(&rec, report.as_ref().map(|(_, r)| r))),
            report_json: report
                .as_ref()
                .map(|(_, r)| fleetward_proto::report_json_bytes(r)),
            report_received_unix_ms: report.map(|(t, _)| t as i64),
        }))
    }

    async fn list_findings(
        &self,
        req: Request<api::ListFindingsRequest>,
    ) -> Result<Response<api::ListFindingsResponse>, Status> {
        let ctl = &self.0;
        ctl.authorize(&req, Role::Operator)?;
        let r = req.into_inner();
        let min = match r.min_severity.map(api::Severity::try_from) {
            None | Some(Ok(api::Severity::Unspecified)) => Severity::Info,
            Some(Ok(s)) => {
                Severity::try_from(s).map_err(|e| Status::invalid_argument(e.to_string()))?
            }
            Some(Err(_)) => return Err(Status::invalid_argument("unknown severity")),
        };
        let now = now_ms();
        let mut findings = Vec::new();
        for rec in ctl.store.list_nodes().map_err(internal)? {
            if r.node.as_ref().is_some_and(|n| *n != rec.name) {
                continue;
            }
            let stale_after = ctl.cfg.stale_secs.saturating_mul(1000);
            let seen = ctl.last_seen_ms(&rec);
            if !rec.revoked
                && seen.is_none_or(|t| now.saturating_sub(t) > stale_after)
                && Severity::Warning >= min
            {
                findings.push(api::Finding {
                    node: rec.name.clone(),
                    code: "node.stale".into(),
                    severity: api::Severity::Warning as i32,
                    message: match seen {
                        Some(t) => format!(
                            "no report or heartbeat for {} s",
                            now.saturating_sub(t) / 1000
                        ),
                        None => "never reported".into(),
                    },
                    path: None,
                    line: None,
                });
            }
            if let Some((report, _)) = ctl.latest(&rec.name) {
                findings.extend(
                    report
                        .findings
                        .iter()
                        .filter(|f| f.severity >= min)
                        .map(|f| api::Finding::from_report(&rec.name, f)),
                );
            }
        }
        findings.extend(
            ctl.fleet_findings(None)
                .iter()
                .filter(|f| {
                    f.finding.severity >= min && r.node.as_ref().is_none_or(|n| *n == f.node)
                })
                .map(|f| api::Finding::from_report(&f.node, &f.finding)),
        );
        Ok(Response::new(api::ListFindingsResponse { findings }))
    }

    async fn refresh_node(
        &self,
        req: Request<api::RefreshNodeRequest>,
    ) -> Result<Response<api::RefreshNodeResponse>, Status> {
        let ctl = &self.0;
        let caller = ctl.authorize(&req, Role::Operator)?;
        let name = &req.get_ref().name;
        let tx = ctl
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .map(|h| h.tx.clone())
            .ok_or_else(|| Status::failed_precondition(format!("node {name} is not connected")))?;
        let command_id = format!(
            "refresh-{name}-{}-{}",
            now_ms(),
            ctl.counter.fetch_add(1, Ordering::Relaxed)
        );
        let cmd = api::Command {
            command_id: command_id.clone(),
            kind: Some(api::command::Kind::Refresh(api::command::Refresh {})),
        };
        tx.send(Ok(ControllerMessage::new(
            controller_message::Kind::Command(cmd),
        )))
        .await
        .map_err(|_| Status::unavailable(format!("node {name} disconnected")))?;
        ctl.audit(
            &caller.identity.name,
            "node.refresh",
            name,
            command_id.clone(),
        )?;
        Ok(Response::new(api::RefreshNodeResponse { command_id }))
    }

    async fn revoke_node(
        &self,
        req: Request<api::RevokeNodeRequest>,
    ) -> Result<Response<api::RevokeNodeResponse>, Status> {
        let ctl = &self.0;
        let caller = ctl.authorize(&req, Role::Operator)?;
        let name = &req.get_ref().name;
        let mut rec = ctl
            .store
            .get_node(name)
            .map_err(internal)?
            .ok_or_else(|| not_found("node", name))?;
        ctl.store
            .revoke_serial(&rec.cert_serial)
            .map_err(internal)?;
        rec.revoked = true;
        ctl.store.upsert_node(&rec).map_err(internal)?;
        ctl.kill_session(
            name,
            Kill {
                revoked: true,
                reason: "node revoked by an operator".into(),
            },
        );
        ctl.audit(
            &caller.identity.name,
            "node.revoke",
            name,
            format!("certificate {}", rec.cert_serial),
        )?;
        Ok(Response::new(api::RevokeNodeResponse {}))
    }

    async fn create_token(
        &self,
        req: Request<api::CreateTokenRequest>,
    ) -> Result<Response<api::CreateTokenResponse>, Status> {
        let ctl = &self.0;
        let caller = ctl.authorize(&req, Role::Operator)?;
        let r = req.into_inner();
        let ttl = if r.ttl_seconds == 0 {
            3600
        } else {
            r.ttl_seconds
        };
        if ttl > 7 * 24 * 3600 {
            return Err(Status::invalid_argument(
                "a join token may live at most 7 days",
            ));
        }
        if let Some(n) = &r.node_name {
            Identity::new(Role::Agent, n.clone())
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
        let token = fleetward_pki::random_token().map_err(internal)?;
        let now = now_ms();
        let rec = ctl
            .store
            .create_token(&token, r.node_name.as_deref(), now + ttl * 1000, now)
            .map_err(internal)?;
        ctl.audit(
            &caller.identity.name,
            "token.create",
            &rec.id,
            format!(
                "node {} ttl {ttl}s",
                r.node_name.as_deref().unwrap_or("any")
            ),
        )?;
        Ok(Response::new(api::CreateTokenResponse {
            id: rec.id,
            token,
            expires_at_unix_ms: rec.expires_ms as i64,
            ca_sha256: ctl.ca.fingerprint_sha256(),
        }))
    }

    async fn list_tokens(
        &self,
        req: Request<api::ListTokensRequest>,
    ) -> Result<Response<api::ListTokensResponse>, Status> {
        let ctl = &self.0;
        ctl.authorize(&req, Role::Operator)?;
        let tokens = ctl
            .store
            .list_tokens()
            .map_err(internal)?
            .into_iter()
            .map(|t| api::TokenInfo {
                id: t.id,
                node_name: t.node,
                expires_at_unix_ms: t.expires_ms as i64,
                used: t.used_ms.is_some(),
                revoked: t.revoked,
            })
            .collect();
        Ok(Response::new(api::ListTokensResponse { tokens }))
    }

    async fn revoke_token(
        &self,
        req: Request<api::RevokeTokenRequest>,
    ) -> Result<Response<api::RevokeTokenResponse>, Status> {
        let ctl = &self.0;
        let caller = ctl.authorize(&req, Role::Operator)?;
        let id = &req.get_ref().id;
        match ctl.store.revoke_token(id) {
            Ok(_) => {}
            Err(StoreError::UnknownToken(_)) => return Err(not_found("token", id)),
            Err(e) => return Err(internal(e)),
        }
        ctl.audit(&caller.identity.name, "token.revoke", id, String::new())?;
        Ok(Response::new(api::RevokeTokenResponse {}))
    }

    async fn issue_operator(
        &self,
        req: Request<api::IssueOperatorRequest>,
    ) -> Result<Response<api::IssueOperatorResponse>, Status> {
        let ctl = &self.0;
        let caller = ctl.authorize(&req, Role::Operator)?;
        let r = req.into_inner();
        let identity = Identity::new(Role::Operator, r.name.clone())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let secs = ctl.cfg.operator_cert_secs;
        let (cert_pem, key_pem, serial) = match &r.csr_pem {
            Some(csr) => {
                let (pem, serial, _) = ctl.sign(csr, &identity, secs)?;
                (pem, None, serial)
            }
            None => {
                let (cert, key) = ctl
                    .ca
                    .issue(&identity, Duration::from_secs(secs), &[], &[])
                    .map_err(internal)?;
                (cert.pem, Some(key.pem().to_string()), cert.serial)
            }
        };
        ctl.audit(
            &caller.identity.name,
            "operator.issue",
            &r.name,
            format!("certificate {serial}"),
        )?;
        Ok(Response::new(api::IssueOperatorResponse {
            cert_pem,
            key_pem,
            ca_pem: ctl.ca.cert_pem().to_string(),
        }))
    }

    async fn list_audit(
        &self,
        req: Request<api::ListAuditRequest>,
    ) -> Result<Response<api::ListAuditResponse>, Status> {
        let ctl = &self.0;
        ctl.authorize(&req, Role::Operator)?;
        let limit = match req.get_ref().limit {
            0 => 100,
            n => n as usize,
        };
        let entries = ctl
            .store
            .list_audit(limit)
            .map_err(internal)?
            .into_iter()
            .map(|e| api::AuditEntry {
                time_unix_ms: e.time_ms as i64,
                actor: e.actor,
                action: e.action,
                target: e.target,
                detail: e.detail,
            })
            .collect();
        Ok(Response::new(api::ListAuditResponse { entries }))
    }

    async fn list_drift(
        &self,
        req: Request<api::ListDriftRequest>,
    ) -> Result<Response<api::ListFindingsResponse>, Status> {
        let ctl = &self.0;
        ctl.authorize(&req, Role::Operator)?;
        Ok(Response::new(fleet_response(&ctl.fleet_findings(None))))
    }

    async fn node_diff(
        &self,
        req: Request<api::NodeDiffRequest>,
    ) -> Result<Response<api::NodeDiffResponse>, Status> {
        let ctl = &self.0;
        ctl.authorize(&req, Role::Operator)?;
        let r = req.get_ref();
        let latest = |name: &str| {
            ctl.latest
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(name)
                .cloned()
                .ok_or_else(|| not_found("node with a report", name))
        };
        let (a, b) = (latest(&r.a)?, latest(&r.b)?);
        let rows = fleet::diff(&a.facts, &b.facts)
            .into_iter()
            .map(|d| api::DiffRow {
                differs: d.a != d.b,
                key: d.key,
                a: d.a,
                b: d.b,
            })
            .collect();
        Ok(Response::new(api::NodeDiffResponse { rows }))
    }

    async fn node_history(
        &self,
        req: Request<api::NodeHistoryRequest>,
    ) -> Result<Response<api::NodeHistoryResponse>, Status> {
        let ctl = &self.0;
        ctl.authorize(&req, Role::Operator)?;
        let name = &req.get_ref().name;
        ctl.store
            .get_node(name)
            .map_err(internal)?
            .ok_or_else(|| not_found("node", name))?;
        let changes = ctl
            .store
            .fact_changes(name)
            .map_err(internal)?
            .into_iter()
            .map(|c| api::FactChange {
                time_unix_ms: c.time_ms as i64,
                key: c.key,
                old: c.old,
                new: c.new,
            })
            .collect();
        Ok(Response::new(api::NodeHistoryResponse { changes }))
    }

    async fn policy_show(
        &self,
        req: Request<api::PolicyShowRequest>,
    ) -> Result<Response<api::PolicyText>, Status> {
        let ctl = &self.0;
        ctl.authorize(&req, Role::Operator)?;
        Ok(Response::new(policy_text(ctl.policy().as_deref())))
    }

    async fn policy_check(
        &self,
        req: Request<api::PolicyCheckRequest>,
    ) -> Result<Response<api::ListFindingsResponse>, Status> {
        let ctl = &self.0;
        ctl.authorize(&req, Role::Operator)?;
        let given = match &req.get_ref().policy_toml {
            Some(text) => Some(
                Policy::parse(text)
                    .map_err(|e| Status::invalid_argument(format!("policy: {e}")))?,
            ),
            None => None,
        };
        let policy =
            match (&given, ctl.policy()) {
                (Some(p), _) => p.clone(),
                (None, Some(l)) => l.policy.clone(),
                (None, None) => return Err(Status::failed_precondition(
                    "no policy configured: set `policy = \"FILE\"` in controller.toml, or pass one",
                )),
            };
        let fleet = ctl.fleet();
        let views: Vec<NodeView> = fleet
            .iter()
            .map(|(n, r)| NodeView {
                name: n,
                facts: &r.facts,
            })
            .collect();
        Ok(Response::new(fleet_response(&fleet::check(
            &policy, &views,
        ))))
    }

    async fn policy_reload(
        &self,
        req: Request<api::PolicyReloadRequest>,
    ) -> Result<Response<api::PolicyText>, Status> {
        let ctl = &self.0;
        let caller = ctl.authorize(&req, Role::Operator)?;
        let loaded = ctl.reload_policy().map_err(Status::failed_precondition)?;
        let path = loaded
            .as_ref()
            .map_or(String::new(), |l| l.path.display().to_string());
        ctl.audit(&caller.identity.name, "policy.reload", &path, String::new())?;
        Ok(Response::new(policy_text(loaded.as_deref())))
    }

    async fn policy_capture(
        &self,
        req: Request<api::PolicyCaptureRequest>,
    ) -> Result<Response<api::PolicyText>, Status> {
        let ctl = &self.0;
        ctl.authorize(&req, Role::Operator)?;
        let name = &req.get_ref().node;
        let report = ctl
            .latest
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| not_found("node with a report", name))?;
        Ok(Response::new(api::PolicyText {
            path: String::new(),
            toml: fleet::capture(&report.facts).to_toml(),
        }))
    }

    async fn render_report(
        &self,
        req: Request<api::RenderReportRequest>,
    ) -> Result<Response<api::RenderReportResponse>, Status> {
        let ctl = &self.0;
        ctl.authorize(&req, Role::Operator)?;
        let format = req.get_ref().format.as_str();
        if !matches!(format, "" | "markdown") {
            return Err(Status::invalid_argument(format!(
                "unknown report format '{format}' (markdown)"
            )));
        }
        let fleet = ctl.fleet();
        let views: Vec<NodeView> = fleet
            .iter()
            .map(|(n, r)| NodeView {
                name: n,
                facts: &r.facts,
            })
            .collect();
        let findings: Vec<(String, fleetward_proto::Finding)> = fleet
            .iter()
            .flat_map(|(n, r)| r.findings.iter().map(move |f| (n.clone(), f.clone())))
            .collect();
        let policy = ctl.policy();
        let text = fleet::report::markdown(&fleet::report::Input {
            nodes: &views,
            node_findings: &findings,
            drift: &fleet::drift(&views),
            policy: policy.as_ref().map(|l| (&l.policy, l.path.as_path())),
            policy_findings: &policy
                .as_ref()
                .map(|l| fleet::check(&l.policy, &views))
                .unwrap_or_default(),
        });
        Ok(Response::new(api::RenderReportResponse { text }))
    }

    async fn rollout_plan(
        &self,
        req: Request<api::RolloutRequest>,
    ) -> Result<Response<api::RolloutPlanResponse>, Status> {
        let ctl = &self.0;
        let caller = ctl.authorize(&req, Role::Operator)?;
        let r = req.into_inner();
        if r.refresh_lists {
            refresh_lists(ctl, &caller, &plan_nodes(ctl, &r.nodes)?).await?;
        }
        let plan = rollout_plan(ctl, &r)?;
        let view = crate::orchestrate::rollout::cluster_view(ctl, &Default::default());
        let latest: Vec<(String, Arc<Report>)> = plan
            .nodes
            .iter()
            .filter_map(|n| ctl.latest(n).map(|(r, _)| (n.clone(), r)))
            .collect();
        let reports = latest
            .iter()
            .map(|(n, r)| (n.clone(), r.as_ref()))
            .collect();
        let dry = crate::rollout::dry_run(&plan, &view, &reports);
        Ok(Response::new(crate::wire::rollout_plan(&dry)))
    }

    async fn rollout_start(
        &self,
        req: Request<api::RolloutRequest>,
    ) -> Result<Response<api::RolloutStatusResponse>, Status> {
        let ctl = &self.0;
        let caller = ctl.authorize(&req, Role::Operator)?;
        let r = req.into_inner();
        let plan = rollout_plan(ctl, &r)?;
        let refused = crate::orchestrate::rollout::refused_guests(ctl, &plan.nodes);
        if !refused.is_empty() {
            return Err(Status::failed_precondition(format!(
                "non_ha_guests = \"refuse\": {}",
                refused.join("; ")
            )));
        }
        let window = (!r.window.trim().is_empty()).then(|| r.window.trim().to_string());
        if let Some(w) = &window {
            crate::window::Window::parse(w).map_err(Status::invalid_argument)?;
        }
        let audit = crate::orchestrate::Audit {
            actor: caller.identity.name.clone(),
            action: "rollout.start".into(),
            detail: format!(
                "nodes {} max-unavailable {}{}",
                plan.nodes.join(","),
                plan.max_unavailable,
                window
                    .as_deref()
                    .map(|w| format!(" window {w}"))
                    .unwrap_or_default()
            ),
        };
        let record =
            crate::orchestrate::rollout::Rollout::new(plan, window, caller.identity.name.clone());
        let (rollout, _) = ctl
            .rollouts()?
            .start(record, Some(audit))
            .await
            .map_err(driver_status)?;
        rollout_status(ctl, &rollout).await
    }

    async fn rollout_status(
        &self,
        req: Request<api::RolloutStatusRequest>,
    ) -> Result<Response<api::RolloutStatusResponse>, Status> {
        let ctl = &self.0;
        ctl.authorize(&req, Role::Operator)?;
        let id = req.into_inner().id;
        let rollout = find_rollout(ctl, &id)?;
        rollout_status(ctl, &rollout).await
    }

    async fn rollout_control(
        &self,
        req: Request<api::RolloutControlRequest>,
    ) -> Result<Response<api::RolloutStatusResponse>, Status> {
        let ctl = &self.0;
        let caller = ctl.authorize(&req, Role::Operator)?;
        let r = req.into_inner();
        let event = crate::wire::control_event(r.verb, r.node)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let audit = crate::orchestrate::Audit {
            actor: caller.identity.name.clone(),
            action: "rollout.control".into(),
            detail: match &event {
                crate::rollout::Event::Skip { node } => format!("skip {node}"),
                e => format!("{e:?}").to_lowercase(),
            },
        };
        let id = (!r.id.is_empty()).then_some(r.id);
        let (rollout, _) = ctl
            .rollouts()?
            .control(id, event, Some(audit))
            .await
            .map_err(driver_status)?;
        rollout_status(ctl, &rollout).await
    }

    async fn rollout_list(
        &self,
        req: Request<api::RolloutListRequest>,
    ) -> Result<Response<api::RolloutListResponse>, Status> {
        let ctl = &self.0;
        ctl.authorize(&req, Role::Operator)?;
        let mut all: Vec<crate::orchestrate::rollout::Rollout> = ctl
            .store
            .list_operations(crate::orchestrate::rollout::ROLLOUT_PREFIX)
            .map_err(internal)?;
        all.sort_by_key(|r| r.created_ms);
        let rollouts = all.iter().map(crate::wire::rollout).collect();
        Ok(Response::new(api::RolloutListResponse { rollouts }))
    }
}

/// Read a certificate's expiry as unix ms (for records of certificates we did not sign
/// through [`Controller::sign`]).
pub fn cert_not_after_ms(der: &[u8]) -> Option<u64> {
    not_after(der).ok().map(ms)
}

fn fleet_response(findings: &[fleet::FleetFinding]) -> api::ListFindingsResponse {
    api::ListFindingsResponse {
        findings: findings
            .iter()
            .map(|f| api::Finding::from_report(&f.node, &f.finding))
            .collect(),
    }
}

fn policy_text(p: Option<&LoadedPolicy>) -> api::PolicyText {
    api::PolicyText {
        path: p.map_or(String::new(), |l| l.path.display().to_string()),
        toml: p.map_or(String::new(), |l| l.text.clone()),
    }
}

/// The plan's nodes: the requested ones (each must be enrolled), or every enrolled, not
/// revoked node.
fn plan_nodes(ctl: &Controller, nodes: &[String]) -> Result<Vec<String>, Status> {
    if nodes.is_empty() {
        return Ok(ctl
            .store
            .list_nodes()
            .map_err(internal)?
            .into_iter()
            .filter(|n| !n.revoked)
            .map(|n| n.name)
            .collect());
    }
    for n in nodes {
        ctl.node_enrolled(n)?;
    }
    Ok(nodes.to_vec())
}

fn rollout_plan(ctl: &Controller, r: &api::RolloutRequest) -> Result<crate::rollout::Plan, Status> {
    let nodes = plan_nodes(ctl, &r.nodes)?;
    let reboot = crate::wire::reboot_policy(r.reboot)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let id = format!(
        "{}{}",
        crate::orchestrate::rollout::ROLLOUT_PREFIX,
        now_ms()
    );
    let mut plan = crate::rollout::Plan::new(
        id,
        nodes,
        r.max_unavailable.max(1) as usize,
        ctl.cfg.host_node.clone(),
        reboot,
    )
    .map_err(|e| Status::invalid_argument(e.to_string()))?;
    plan.timeouts = ctl.cfg.rollout.timeouts.clone();
    Ok(plan)
}

fn find_rollout(
    ctl: &Controller,
    id: &str,
) -> Result<crate::orchestrate::rollout::Rollout, Status> {
    if !id.is_empty() {
        return ctl
            .store
            .get_operation(id)
            .map_err(internal)?
            .ok_or_else(|| not_found("rollout", id));
    }
    let all: Vec<crate::orchestrate::rollout::Rollout> = ctl
        .store
        .list_operations(crate::orchestrate::rollout::ROLLOUT_PREFIX)
        .map_err(internal)?;
    all.into_iter()
        .max_by_key(|r| r.created_ms)
        .ok_or_else(|| Status::not_found("there is no rollout yet"))
}

/// A driver's refusal or failure as a gRPC status.
pub fn driver_status(e: crate::orchestrate::DriverError) -> Status {
    use crate::orchestrate::DriverError as E;
    match e {
        E::Refused(m) => Status::failed_precondition(m),
        E::NotFound(m) => Status::failed_precondition(m),
        e @ (E::Persist { .. } | E::Stopped(_)) => Status::unavailable(e.to_string()),
    }
}

async fn rollout_status(
    ctl: &Controller,
    rollout: &crate::orchestrate::rollout::Rollout,
) -> Result<Response<api::RolloutStatusResponse>, Status> {
    let events = ctl
        .store
        .op_events(&rollout.state.plan.id)
        .map_err(internal)?;
    let output = match ctl.rollouts() {
        Ok(r) => r.output().await,
        Err(_) => BTreeMap::new(),
    };
    Ok(Response::new(crate::wire::rollout_status(
        rollout, &events, &output,
    )))
}

/// `rollout plan --refresh-lists`: `apt-get update` on every node through its executor,
/// then a fresh report from each: an operation of the refresh driver (journaled, audited
/// before anything is sent), followed here until it ends.
async fn refresh_lists(ctl: &Controller, caller: &Caller, nodes: &[String]) -> Result<(), Status> {
    use crate::refresh::{RefreshState, Status as S};
    let refreshes = ctl.refreshes()?;
    let id = format!("refresh-{}", now_ms());
    let timeout_ms = ctl.cfg.rollout.timeouts.refresh_ms.max(1000);
    let record = RefreshState::new(&id, nodes, timeout_ms, now_ms(), &caller.identity.name);
    let audit = crate::orchestrate::Audit {
        actor: caller.identity.name.clone(),
        action: "rollout.refresh-lists".into(),
        detail: nodes.join(","),
    };
    let mut watch = refreshes.watch().await.map_err(driver_status)?;
    refreshes
        .start(record, Some(audit))
        .await
        .map_err(driver_status)?;
    loop {
        if let Some(r) = watch.borrow_and_update().as_ref().filter(|r| r.id == id) {
            match &r.status {
                S::Done => return Ok(()),
                S::Failed { reason } => return Err(Status::aborted(reason.clone())),
                S::Planned | S::Running => {}
            }
        }
        // The machine's own bound ends it; this only stops waiting if the driver is gone.
        watch
            .changed()
            .await
            .map_err(|_| Status::unavailable("the refresh driver stopped"))?;
    }
}
