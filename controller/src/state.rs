//! The controller's shared state, apart from any API: the store, the CA, the configuration
//! and policy, and one map of per-node state (open session, latest report, its packed facts
//! and store seq, last message time). The gRPC services (`api`), report ingestion
//! (`ingest`) and the orchestration drivers all work through [`Controller`]; it knows none
//! of them.
//!
//! [`Controller::authorize`] is the one place that decides who may call: a client
//! certificate from our CA (TLS verified it), a fleetward identity of the required role, a
//! serial that is not revoked, and for an agent a serial bound to its node (the node's
//! current certificate, or for a short overlap the one its last renewal replaced).
//! `api`'s layer asks it for every call. Beside it,
//! [`Controller::speaks_for`] decides that an agent reports only for its own node.

use crate::clock::{ms, now_ms};
use crate::config::Config;
use crate::events::{AgentEvent, AgentEventKind, EVENTS_CAPACITY};
use crate::fleet::{self, NodeView, Policy};
use crate::store::{
    AuditEntry, NodeRecord, SerialError, SerialUse, Store, StoreError, TokenError, TokenRecord,
};
use fleetward_pki::{
    identity_from_der, not_after, scope_from_der, serial_hex, Ca, Identity, Role, Scope,
};
use fleetward_proto::api::{self, controller_message, ControllerMessage};
use fleetward_proto::Report;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, watch};
use tonic::transport::CertificateDer;
use tonic::{Request, Status};

/// An internal error as a gRPC status. The full error goes to the log under a correlation
/// id; the caller sees only a generic message with that id, never the error's text (which
/// may name files, paths or other server internals).
pub(crate) fn internal(e: impl std::fmt::Display) -> Status {
    let id = correlation_id();
    tracing::error!(error = %e, error_id = %id, "internal error");
    Status::internal(format!(
        "internal error (error id {id}; see the controller log)"
    ))
}

/// A short id unique within this controller's log: the process start time and a counter,
/// so that ids from different runs do not collide either.
fn correlation_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let start = *START.get_or_init(now_ms);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{:x}-{n:x}", start % 0x1_0000_0000)
}

/// How long after a renewal the replaced certificate is still accepted, unless the new one
/// is used first (an agent renews mid-session and reconnects with the new certificate at
/// once; this covers an agent that could not save it and retries).
pub const RENEW_OVERLAP_MS: u64 = 10 * 60 * 1000;

/// A refused certificate change as a gRPC status.
fn serial_status(e: SerialError) -> Status {
    match e {
        SerialError::Store(e) => internal(e),
        e => Status::permission_denied(e.to_string()),
    }
}

/// "No `what` named `name`" as a gRPC status.
pub(crate) fn not_found(what: &str, name: &str) -> Status {
    Status::not_found(format!("no {what} named '{name}'"))
}

/// Who is calling, from the verified client certificate. `api`'s authorization layer puts
/// it into every authenticated request's extensions; [`Caller::of`] takes it out.
#[derive(Debug, Clone)]
pub struct Caller {
    pub identity: Identity,
    pub serial: String,
    /// An operator's scope (from its certificate; none there: admin). `None` for agents.
    pub scope: Option<Scope>,
}

impl Caller {
    /// The verified caller of `req`. Only the authorization layer inserts one, so a
    /// handler that asks for it cannot run for an unverified caller.
    pub fn of<T>(req: &Request<T>) -> Result<&Caller, Status> {
        req.extensions()
            .get::<Caller>()
            .ok_or_else(|| Status::unauthenticated("a verified client certificate is required"))
    }
}

/// A report's facts flattened (`fleet::flatten`), packed (one string per node).
pub(crate) type Flat = fleet::PackedFlat;

/// The sending side of an agent session's response stream.
pub(crate) type Outbound = mpsc::Sender<Result<ControllerMessage, Status>>;

/// Why a session is ended from the controller's side.
#[derive(Debug, Clone)]
pub(crate) struct Kill {
    /// The node's certificate no longer counts (the session ends with PERMISSION_DENIED
    /// rather than UNAVAILABLE, so the agent does not just reconnect).
    pub revoked: bool,
    pub reason: String,
}

struct SessionHandle {
    id: u64,
    tx: Outbound,
    kill: watch::Sender<Option<Kill>>,
}

/// Everything the controller keeps in memory about one node. The report, its flat and its
/// seq change together under the slot's lock, so a reader never sees a new report with an
/// old seq; the last-message time is an atomic so that a heartbeat takes no lock at all.
pub(crate) struct NodeSlot {
    state: Mutex<NodeState>,
    /// Unix ms of the last message on any of the node's sessions; 0 = none since start.
    heard_ms: AtomicU64,
    /// What ingestion keeps per node: its rate budget and the latest report's digest.
    pub(crate) intake: Mutex<Intake>,
}

/// Counts of what ingestion refused or did not store again (for metrics): `ingest` counts, `metrics` shows.
#[derive(Debug, Default)]
pub struct IngestCounters {
    pub refused_size: AtomicU64,
    pub refused_rate: AtomicU64,
    pub refused_disk: AtomicU64,
    pub unchanged: AtomicU64,
}

/// Per node, for ingestion's limits (`ingest.rs` decides with it).
#[derive(Debug, Default)]
pub(crate) struct Intake {
    /// XXH3-128 of the canonical bytes of the node's latest stored report (none after a
    /// start until its first report).
    pub digest: Option<u128>,
    /// Token buckets: reports and bytes left, and when they were last refilled (unix ms;
    /// 0 = never, i.e. full).
    pub reports: f64,
    pub bytes: f64,
    pub refilled_ms: u64,
}

#[derive(Default)]
struct NodeState {
    session: Option<SessionHandle>,
    /// The latest report, parsed (the fleet rules run over these). Kept as an
    /// exact-capacity clone: ~13 KB per seed report.
    report: Option<Arc<Report>>,
    /// The report's flattened facts, kept so that a new report is flattened once (to find
    /// what changed) rather than flattening the previous one again. Computed lazily after
    /// a start.
    flat: Option<Arc<Flat>>,
    /// The latest report's store seq: only grows, also across restarts.
    seq: u64,
    /// The OSD map as the node's agent last read it after a `ceph osd set/unset noout`
    /// (`CommandResult.ceph`); in memory only.
    ceph_probe: Option<CephProbe>,
}

/// Ceph's OSD map as an agent's read-only probe read it after a noout action: what the
/// drivers use where the node's report cannot tell (`noout`/OSDs unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CephProbe {
    pub noout: bool,
    pub osds: fleetward_proto::OsdCounts,
}

impl NodeSlot {
    fn new(state: NodeState) -> Self {
        NodeSlot {
            state: Mutex::new(state),
            heard_ms: AtomicU64::new(0),
            intake: Mutex::new(Intake::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NodeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that the node was heard from at `now` (unix ms).
    pub(crate) fn heard(&self, now: u64) {
        self.heard_ms.store(now, Ordering::Relaxed);
    }

    fn heard_ms(&self) -> Option<u64> {
        match self.heard_ms.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t),
        }
    }
}

/// Shared controller state: the store, the CA, and every node's in-memory state.
pub struct Controller {
    store: Arc<Store>,
    ca: Ca,
    cfg: Config,
    /// Per node; a slot is created on a node's first report or session and then kept.
    nodes: RwLock<HashMap<String, Arc<NodeSlot>>>,
    counter: AtomicU64,
    policy: RwLock<Option<Arc<LoadedPolicy>>>,
    /// Session events for the orchestration drivers.
    events: broadcast::Sender<AgentEvent>,
    ingest_counters: IngestCounters,
    /// Which operation holds the controller (one at a time, whatever its kind).
    operations: crate::operation::Operations,
    /// Who the controller's own host is (hostname, addresses), to find `host_node`.
    host: RwLock<crate::host::HostIdentity>,
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

/// Read a certificate's expiry as unix ms (for records of certificates we did not sign
/// through [`Controller::sign`]).
pub fn cert_not_after_ms(der: &[u8]) -> Option<u64> {
    not_after(der).ok().map(ms)
}

impl Controller {
    pub fn new(
        store: Store,
        ca: Ca,
        cfg: Config,
        policy: Option<LoadedPolicy>,
    ) -> Result<Arc<Self>, StoreError> {
        let mut nodes = HashMap::new();
        for rec in store.list_nodes()? {
            let seq = store.latest_report_seq(&rec.name)?;
            let report = store.latest_report(&rec.name)?;
            if seq.is_none() && report.is_none() {
                continue;
            }
            let state = NodeState {
                report: report.map(|(_, r)| Arc::new(r)),
                seq: seq.unwrap_or(0),
                ..NodeState::default()
            };
            nodes.insert(rec.name, Arc::new(NodeSlot::new(state)));
        }
        let store = Arc::new(store);
        // Report-body compaction, off the ingestion path; ends with the store. Every minute,
        // and as soon as `compact_after_bytes` were written since the last one (so a
        // flood of reports cannot grow the journal for a minute unchecked).
        let weak = Arc::downgrade(&store);
        let after_bytes = cfg.ingest.compact_after_bytes.max(1);
        let _ = std::thread::Builder::new()
            .name("compact".into())
            .spawn(move || {
                let (mut last, mut written) = (std::time::Instant::now(), 0);
                loop {
                    std::thread::sleep(Duration::from_millis(250));
                    let Some(store) = weak.upgrade() else { return };
                    let now_written = store.journal_written();
                    if last.elapsed() < Duration::from_secs(60)
                        && now_written.saturating_sub(written) < after_bytes
                    {
                        continue;
                    }
                    (last, written) = (std::time::Instant::now(), now_written);
                    if let Err(e) = store.compact() {
                        tracing::error!(error = %e, "compacting report bodies failed");
                    }
                }
            });
        Ok(Arc::new(Controller {
            store,
            ca,
            cfg,
            nodes: RwLock::new(nodes),
            counter: AtomicU64::new(0),
            policy: RwLock::new(policy.map(Arc::new)),
            events: broadcast::channel(EVENTS_CAPACITY).0,
            ingest_counters: IngestCounters::default(),
            operations: crate::operation::Operations::default(),
            host: RwLock::new(crate::host::HostIdentity::default()),
        }))
    }

    fn slot(&self, node: &str) -> Option<Arc<NodeSlot>> {
        self.nodes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(node)
            .cloned()
    }

    fn slot_or_insert(&self, node: &str) -> Arc<NodeSlot> {
        if let Some(s) = self.slot(node) {
            return s;
        }
        self.nodes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(node.to_string())
            .or_insert_with(|| Arc::new(NodeSlot::new(NodeState::default())))
            .clone()
    }

    fn slots(&self) -> Vec<(String, Arc<NodeSlot>)> {
        self.nodes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect()
    }

    /// Events of every agent session from now on (see [`crate::events`]): connects with
    /// boot ids, disconnects, stored reports, command acks, output lines and results.
    pub fn subscribe(&self) -> broadcast::Receiver<AgentEvent> {
        self.events.subscribe()
    }

    pub(crate) fn publish(&self, node: &str, kind: AgentEventKind) {
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
            .session_sender(node)
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

    /// The sending side of the node's open session, if it has one.
    pub(crate) fn session_sender(&self, node: &str) -> Option<Outbound> {
        let slot = self.slot(node)?;
        let state = slot.lock();
        state.session.as_ref().map(|h| h.tx.clone())
    }

    /// A number not handed out before by this process (command and session ids).
    pub(crate) fn next_id(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed)
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

    /// The latest reports of all nodes that are not revoked, by node name.
    pub fn fleet(&self) -> Vec<(String, Arc<Report>)> {
        let revoked: HashSet<String> = self
            .store
            .list_nodes()
            .map(|n| {
                n.into_iter()
                    .filter(|n| n.revoked)
                    .map(|n| n.name)
                    .collect()
            })
            .unwrap_or_default();
        let mut out: Vec<(String, Arc<Report>)> = self
            .slots()
            .into_iter()
            .filter(|(n, _)| !revoked.contains(n))
            .filter_map(|(n, s)| {
                let report = s.lock().report.clone()?;
                Some((n, report))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// `node.left-in-maintenance`: HA maintenance or Ceph `noout` that no operation holds.
    pub fn left_in_maintenance(&self) -> Vec<fleet::FleetFinding> {
        let fleet = self.fleet();
        let views = NodeView::of(&fleet);
        fleet::left::left_in_maintenance(&views, self.operations.held().is_some())
    }

    /// What the Prometheus endpoint shows, now.
    pub fn metrics_snapshot(&self) -> crate::metrics::FleetSnapshot {
        let now = now_ms();
        let fleet = self.fleet_findings(None);
        let nodes = self
            .store
            .list_nodes()
            .unwrap_or_default()
            .into_iter()
            .filter(|rec| !rec.revoked)
            .map(|rec| {
                let report = self.latest(&rec.name).map(|(r, _)| r);
                crate::metrics::NodeSnapshot {
                    up: self.is_online(&rec.name),
                    last_report_age_secs: self
                        .last_seen_ms(&rec)
                        .map(|t| now.saturating_sub(t) as f64 / 1000.0),
                    reboot_required: report
                        .as_ref()
                        .is_some_and(|r| r.facts.boot.reboot_required),
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
        let operators = self
            .store
            .list_operators()
            .unwrap_or_default()
            .into_iter()
            .filter(|o| !o.revoked && o.not_after_ms > 0)
            .map(|o| crate::metrics::OperatorSnapshot {
                name: o.name,
                scope: o.scope,
                not_after_secs: o.not_after_ms as f64 / 1000.0,
            })
            .collect();
        let c = &self.ingest_counters;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let ingest = crate::metrics::IngestSnapshot {
            data_dir_free_bytes: self.store.free_bytes().ok(),
            min_free_bytes: self.cfg.ingest.min_free_bytes,
            refused: vec![
                ("size", n(&c.refused_size)),
                ("rate", n(&c.refused_rate)),
                ("disk", n(&c.refused_disk)),
            ],
            unchanged: n(&c.unchanged),
        };
        crate::metrics::FleetSnapshot {
            nodes,
            operators,
            ingest,
            ..Default::default()
        }
    }

    /// drift.* over the fleet, plus policy.* against `policy` (default: the one in force).
    pub fn fleet_findings(&self, policy: Option<&Policy>) -> Vec<fleet::FleetFinding> {
        let fleet = self.fleet();
        let views = NodeView::of(&fleet);
        let mut out = fleet::drift(&views);
        let in_force = self.policy();
        if let Some(p) = policy.or(in_force.as_ref().map(|l| &l.policy)) {
            out.extend(fleet::check(p, &views));
        }
        out
    }

    /// The flattened facts of the node's latest report (cached; computed once after start,
    /// outside the slot's lock).
    pub(crate) fn previous_flat(&self, slot: &NodeSlot) -> Option<Arc<Flat>> {
        let report = {
            let state = slot.lock();
            if let Some(f) = &state.flat {
                return Some(f.clone());
            }
            state.report.clone()?
        };
        Some(Arc::new(Flat::pack(&fleet::flatten(&report.facts))))
    }

    /// Makes a stored report the node's latest: report, flat and seq in one step. A
    /// report with an older seq than the one in place (a replaced session's late write)
    /// does not replace it.
    pub(crate) fn commit_report(
        &self,
        slot: &NodeSlot,
        seq: u64,
        report: Arc<Report>,
        flat: Arc<Flat>,
    ) {
        let mut state = slot.lock();
        if state.report.is_some() && seq < state.seq {
            return;
        }
        state.seq = seq;
        state.report = Some(report);
        state.flat = Some(flat);
    }

    /// What ingestion refused or did not store again since the start.
    pub fn ingest_counters(&self) -> &IngestCounters {
        &self.ingest_counters
    }

    /// Records an unchanged report (stored as such at `seq`): the latest report stays,
    /// its seq moves on.
    pub(crate) fn commit_unchanged(&self, slot: &NodeSlot, seq: u64) {
        let mut state = slot.lock();
        state.seq = state.seq.max(seq);
    }

    /// The node's latest report (parsed) and its store seq.
    pub fn latest(&self, node: &str) -> Option<(Arc<Report>, u64)> {
        let slot = self.slot(node)?;
        let state = slot.lock();
        Some((state.report.clone()?, state.seq))
    }

    /// Writes to the audit log (for drivers acting on the operator's behalf).
    pub fn audit_event(&self, actor: &str, action: &str, target: &str, detail: String) {
        if let Err(e) = self.audit(actor, action, target, detail) {
            tracing::error!(error = %e.message(), "cannot write the audit log");
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Which operation holds the controller (the drivers' one exclusivity decision).
    pub fn operations(&self) -> &crate::operation::Operations {
        &self.operations
    }

    /// The controller's own host as found at start (`host::lookup`), or as a test set it.
    pub fn host_identity(&self) -> crate::host::HostIdentity {
        self.host.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_host_identity(&self, id: crate::host::HostIdentity) {
        *self.host.write().unwrap_or_else(|e| e.into_inner()) = id;
    }

    /// Where the controller runs now, as `host::find` decides it from the configuration,
    /// the controller's identity and every enrolled, not revoked node's latest report.
    pub fn host_node(&self) -> crate::host::HostNode {
        let nodes: Vec<crate::host::NodeIdentity> = self
            .store
            .list_nodes()
            .unwrap_or_default()
            .into_iter()
            .filter(|r| !r.revoked)
            .map(|r| {
                let report = self.latest(&r.name).map(|(r, _)| r);
                let f = report.as_ref().map(|r| &r.facts);
                crate::host::NodeIdentity {
                    hostname: f.and_then(|f| f.node.hostname.clone()),
                    addresses: f
                        .map(|f| f.dns.hosts.local_addresses.clone())
                        .unwrap_or_default(),
                    addresses_complete: f.is_some_and(|f| f.dns.hosts.local_addresses_complete),
                    name: r.name,
                }
            })
            .collect();
        crate::host::find(
            self.cfg.host_node.as_deref(),
            self.cfg.host_outside_cluster,
            &self.host_identity(),
            &nodes,
        )
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The store, shared (the report writer thread holds it).
    pub(crate) fn store_handle(&self) -> Arc<Store> {
        self.store.clone()
    }

    pub(crate) fn ca(&self) -> &Ca {
        &self.ca
    }

    /// The one authorization decision: a certificate is present (TLS already verified it
    /// against our CA), names a fleetward identity of `role`, and is not revoked.
    /// `peer_certs` is the chain the client presented, its own certificate first.
    pub fn authorize(
        &self,
        peer_certs: Option<&[CertificateDer<'_>]>,
        role: Role,
    ) -> Result<Caller, Status> {
        let der = peer_certs
            .and_then(|c| c.first())
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
        let mut scope = None;
        match role {
            Role::Agent => self.bound_to_node(&identity.name, &serial)?,
            Role::Operator => {
                let carried = scope_from_der(der.as_ref()).map_err(|e| {
                    Status::unauthenticated(format!("certificate carries no valid scope: {e}"))
                })?;
                self.operator_current(&identity.name, &serial)?;
                scope = Some(carried.unwrap_or(Scope::Admin));
            }
            Role::Controller => {}
        }
        Ok(Caller {
            identity,
            serial,
            scope,
        })
    }

    /// An agent certificate counts only while its serial is bound to its node: the node's
    /// current serial, or the one its last renewal replaced during the overlap. The first
    /// use of the current serial retires the replaced one (revoked, audited).
    fn bound_to_node(&self, node: &str, serial: &str) -> Result<(), Status> {
        let rec = self
            .store
            .get_node(node)
            .map_err(internal)?
            .ok_or_else(|| Status::permission_denied(format!("node {node} is not enrolled")))?;
        if rec.revoked {
            return Err(Status::permission_denied(format!("node {node} is revoked")));
        }
        match rec.serial_use(serial, now_ms()) {
            None => Err(Status::permission_denied(format!(
                "certificate {serial} is not the current certificate of node {node}"
            ))),
            Some(SerialUse::Previous) => Ok(()),
            Some(SerialUse::Current) if rec.previous_serial.is_none() => Ok(()),
            Some(SerialUse::Current) => {
                if let Some(old) = self
                    .store
                    .retire_previous(node, serial)
                    .map_err(serial_status)?
                {
                    self.audit(
                        node,
                        "node.cert.retire",
                        node,
                        format!("certificate {old} revoked: its successor {serial} is in use"),
                    )?;
                }
                Ok(())
            }
        }
    }

    /// The other half of the decision, for what an agent sends: the agent of `node` speaks
    /// only for `node`, so a report whose hostname (short name, any case) names another
    /// node is refused.
    pub(crate) fn speaks_for(&self, node: &str, report: &Report) -> Result<(), Status> {
        if let Some(host) = report.facts.node.hostname.as_deref() {
            let short = host.split('.').next().unwrap_or(host);
            if !short.eq_ignore_ascii_case(node) {
                return Err(Status::permission_denied(format!(
                    "the certificate of node {node} may not report for node {short}"
                )));
            }
        }
        Ok(())
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

    /// The node's record, if it is enrolled and not revoked.
    pub(crate) fn node_enrolled(&self, name: &str) -> Result<NodeRecord, Status> {
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

    /// Records an agent's hello (version, boot id) on its node's record.
    pub(crate) fn record_hello(
        &self,
        node: &str,
        agent_version: &str,
        boot_id: &str,
    ) -> Result<(), Status> {
        self.store
            .record_hello(node, agent_version, boot_id)
            .map(|_| ())
            .map_err(serial_status)
    }

    /// Makes `tx` the node's session (ending an older one); returns the session id, the
    /// receiver of a kill, and the node's slot for the session to record messages in.
    pub(crate) fn register(
        &self,
        node: &str,
        tx: Outbound,
    ) -> (u64, watch::Receiver<Option<Kill>>, Arc<NodeSlot>) {
        let id = self.next_id();
        let (kill, killed) = watch::channel(None);
        let slot = self.slot_or_insert(node);
        let old = slot.lock().session.replace(SessionHandle { id, tx, kill });
        if let Some(old) = old {
            let _ = old.kill.send(Some(Kill {
                revoked: false,
                reason: "replaced by a newer session of the same node".into(),
            }));
        }
        (id, killed, slot)
    }

    /// Forgets session `id` if it is still the node's session.
    pub(crate) fn unregister(&self, slot: &NodeSlot, id: u64) {
        let mut state = slot.lock();
        if state.session.as_ref().is_some_and(|h| h.id == id) {
            state.session = None;
        }
    }

    /// Remembers the OSD map the node's agent read after a noout action.
    pub fn record_ceph_probe(&self, node: &str, probe: CephProbe) {
        if let Some(slot) = self.slot(node) {
            slot.lock().ceph_probe = Some(probe);
        }
    }

    /// The OSD map the node's agent last read after a noout action, if any.
    pub fn ceph_probe(&self, node: &str) -> Option<CephProbe> {
        self.slot(node).and_then(|s| s.lock().ceph_probe)
    }

    /// Whether the node has an open session.
    pub fn is_online(&self, node: &str) -> bool {
        self.slot(node).is_some_and(|s| s.lock().session.is_some())
    }

    /// Ends the node's session, if any, telling it why.
    fn kill_session(&self, node: &str, kill: Kill) {
        let Some(slot) = self.slot(node) else { return };
        let handle = slot.lock().session.take();
        if let Some(h) = handle {
            let _ = h.kill.send(Some(kill));
        }
    }

    /// Close every session (shutdown): agents reconnect to the next controller.
    pub fn close_all_sessions(&self, reason: &str) {
        for (_, slot) in self.slots() {
            let handle = slot.lock().session.take();
            if let Some(h) = handle {
                let _ = h.kill.send(Some(Kill {
                    revoked: false,
                    reason: reason.to_string(),
                }));
            }
        }
    }

    pub fn session_count(&self) -> usize {
        self.slots()
            .iter()
            .filter(|(_, s)| s.lock().session.is_some())
            .count()
    }

    /// When the node was last heard from (report, heartbeat, any message), unix ms.
    pub fn last_seen_ms(&self, rec: &NodeRecord) -> Option<u64> {
        let heard = self.slot(&rec.name).and_then(|s| s.heard_ms());
        rec.last_seen_ms.max(heard)
    }

    /// Signs a CSR for `identity`, valid `secs`: (certificate PEM, serial, expiry unix ms).
    pub(crate) fn sign(
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

/// Node, token and operator bookkeeping: what the APIs change, each step audited.
impl Controller {
    /// Enrolls `node` with a join token: signs its CSR (first: a bad CSR must not burn the
    /// token), then in one store transaction consumes the token and records the node. A
    /// node that is already enrolled is replaced only with a token created for it; every
    /// certificate it had is revoked and its session ended, and the audit log says it was
    /// replaced. Returns the certificate (PEM).
    pub(crate) fn enroll(&self, token: &str, node: &str, csr_pem: &str) -> Result<String, Status> {
        let identity = Identity::new(Role::Agent, node.to_string())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (cert_pem, serial, not_after_ms) =
            self.sign(csr_pem, &identity, self.cfg.agent_cert_secs)?;
        let now = now_ms();
        let rec = NodeRecord::new(node, &serial, not_after_ms, now);
        let (token, previous) = match self.store.enroll_node(token, &rec, now) {
            Ok(t) => t,
            Err(TokenError::Store(e)) => return Err(internal(e)),
            Err(e) => {
                tracing::warn!(node = %node, error = %e, "enrollment refused");
                return Err(Status::permission_denied(format!(
                    "enrollment refused: {e}"
                )));
            }
        };
        match previous {
            Some(prev) => {
                self.kill_session(
                    node,
                    Kill {
                        revoked: true,
                        reason: "node re-enrolled".into(),
                    },
                );
                self.audit(
                    node,
                    "node.replace",
                    node,
                    format!(
                        "token {} (bound to {node}) certificate {serial} replaces the enrolled node; revoked certificates {}",
                        token.id,
                        prev.all_serials().join(", ")
                    ),
                )?;
            }
            None => self.audit(
                node,
                "node.enroll",
                node,
                format!("token {} certificate {serial}", token.id),
            )?,
        }
        Ok(cert_pem)
    }

    /// A new certificate for the calling agent's enrolled node. The caller's certificate
    /// stays accepted for [`RENEW_OVERLAP_MS`] or until the new one is used; audited.
    /// Returns the certificate (PEM).
    pub(crate) fn renew(&self, caller: &Caller, csr_pem: &str) -> Result<String, Status> {
        let node = &caller.identity.name;
        self.node_enrolled(node)?;
        // Signed first: a certificate whose serial the record never takes speaks for nobody.
        let (cert_pem, serial, not_after_ms) =
            self.sign(csr_pem, &caller.identity, self.cfg.agent_cert_secs)?;
        let now = now_ms();
        let renewal = self
            .store
            .renew_node(
                node,
                &caller.serial,
                &serial,
                not_after_ms,
                now,
                now + RENEW_OVERLAP_MS,
            )
            .map_err(serial_status)?;
        tracing::info!(node = %node, old = %caller.serial, new = %serial, "certificate renewed");
        let mut detail = format!(
            "certificate {serial} replaces {}, accepted until {serial} is used (at most {} s)",
            renewal.replaced,
            RENEW_OVERLAP_MS / 1000
        );
        if !renewal.revoked.is_empty() {
            detail.push_str(&format!("; revoked {}", renewal.revoked.join(", ")));
        }
        self.audit(node, "node.renew", node, detail)?;
        Ok(cert_pem)
    }

    /// Revokes node `name` and every certificate ever issued to it, and ends its session
    /// at once.
    pub(crate) fn revoke_node(&self, actor: &str, name: &str) -> Result<(), Status> {
        let rec = match self.store.revoke_node(name) {
            Ok(rec) => rec,
            Err(SerialError::NotEnrolled(_)) => return Err(not_found("node", name)),
            Err(e) => return Err(serial_status(e)),
        };
        self.kill_session(
            name,
            Kill {
                revoked: true,
                reason: "node revoked by an operator".into(),
            },
        );
        self.audit(
            actor,
            "node.revoke",
            name,
            format!("certificates {}", rec.all_serials().join(", ")),
        )
    }

    /// A join token, for any node or only `node`, valid `ttl_secs` (0: one hour; at most
    /// seven days). Returns its record and the token itself (shown once, stored hashed).
    pub(crate) fn create_token(
        &self,
        actor: &str,
        node: Option<&str>,
        ttl_secs: u64,
    ) -> Result<(TokenRecord, String), Status> {
        let ttl = if ttl_secs == 0 { 3600 } else { ttl_secs };
        if ttl > 7 * 24 * 3600 {
            return Err(Status::invalid_argument(
                "a join token may live at most 7 days",
            ));
        }
        if let Some(n) = node {
            Identity::new(Role::Agent, n.to_string())
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
        let token = fleetward_pki::random_token().map_err(internal)?;
        let now = now_ms();
        let rec = self
            .store
            .create_token(&token, node, now + ttl * 1000, now)
            .map_err(internal)?;
        self.audit(
            actor,
            "token.create",
            &rec.id,
            format!("node {} ttl {ttl}s", node.unwrap_or("any")),
        )?;
        Ok((rec, token))
    }

    /// Revokes join token `id`.
    pub(crate) fn revoke_token(&self, actor: &str, id: &str) -> Result<(), Status> {
        match self.store.revoke_token(id) {
            Ok(_) => {}
            Err(StoreError::UnknownToken(_)) => return Err(not_found("token", id)),
            Err(e) => return Err(internal(e)),
        }
        self.audit(actor, "token.revoke", id, String::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(host: &str) -> Report {
        let mut r = fleetward_proto::report_from_json(include_str!(
            "../../agent/tests/fixtures/seed/pve-01/expected.json"
        ))
        .expect("seed report");
        r.facts.node.hostname = Some(host.to_string());
        r
    }

    fn controller(dir: &std::path::Path) -> Arc<Controller> {
        let store = Store::open(dir.join("db")).expect("store");
        let ca = Ca::generate("test").expect("CA");
        Controller::new(store, ca, Config::new("test", None), None).expect("controller")
    }

    fn flat(r: &Report) -> Arc<Flat> {
        Arc::new(Flat::pack(&fleet::flatten(&r.facts)))
    }

    #[test]
    fn internal_errors_hide_their_text_behind_a_correlation_id() {
        let a = internal("cannot write /var/lib/fleetward/db/segment-0042: No space left");
        let b = internal("cannot write /var/lib/fleetward/db/segment-0042: No space left");
        assert_eq!(a.code(), tonic::Code::Internal);
        assert!(!a.message().contains("segment"), "{}", a.message());
        assert!(!a.message().contains('/'), "{}", a.message());
        assert!(a.message().contains("error id"), "{}", a.message());
        assert_ne!(a.message(), b.message(), "each error gets its own id");
    }

    #[test]
    fn report_flat_and_seq_change_together_and_never_go_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctl = controller(dir.path());
        assert!(ctl.latest("a").is_none());
        let slot = ctl.slot_or_insert("a");
        assert!(ctl.previous_flat(&slot).is_none());
        let first = Arc::new(report("a"));
        ctl.commit_report(&slot, 5, first.clone(), flat(&first));
        let (r, seq) = ctl.latest("a").expect("latest");
        assert_eq!((Arc::ptr_eq(&r, &first), seq), (true, 5));
        assert!(ctl.previous_flat(&slot).is_some());
        // A late write of an older report does not replace the newer one.
        let older = Arc::new(report("a"));
        ctl.commit_report(&slot, 3, older.clone(), flat(&older));
        let (r, seq) = ctl.latest("a").expect("latest");
        assert_eq!((Arc::ptr_eq(&r, &first), seq), (true, 5));
        assert_eq!(ctl.fleet().len(), 1);
    }

    #[test]
    fn a_newer_session_replaces_the_older_and_ends_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctl = controller(dir.path());
        let (tx1, _rx1) = mpsc::channel(1);
        let (id1, killed1, slot) = ctl.register("a", tx1);
        assert!(ctl.is_online("a"));
        assert_eq!(slot.heard_ms(), None);
        slot.heard(42);
        assert_eq!(slot.heard_ms(), Some(42));
        let (tx2, _rx2) = mpsc::channel(1);
        let (id2, _killed2, _) = ctl.register("a", tx2);
        let kill = killed1
            .borrow()
            .clone()
            .expect("the older session is ended");
        assert!(!kill.revoked);
        // The older session's end does not take the newer one with it.
        ctl.unregister(&slot, id1);
        assert!(ctl.is_online("a"));
        assert_eq!(ctl.session_count(), 1);
        ctl.unregister(&slot, id2);
        assert!(!ctl.is_online("a"));
        assert!(ctl.send_command("a", api::Command::refresh("x")).is_err());
    }

    #[test]
    fn an_agent_speaks_only_for_its_node() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctl = controller(dir.path());
        assert!(ctl.speaks_for("pve1", &report("pve1.example.org")).is_ok());
        assert!(ctl.speaks_for("pve1", &report("PVE1")).is_ok());
        let err = ctl
            .speaks_for("pve1", &report("pve2"))
            .expect_err("another node");
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
    }
}
