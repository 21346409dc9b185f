//! Prometheus metrics: the fleet's state and the controller process, served as plain HTTP
//! on a listener of its own (off by default; loopback unless explicitly allowed).
//!
//! Rendering is pure apart from reading `/proc/self` for the process metrics: [`render`]
//! turns a [`FleetSnapshot`] into the exposition with `prometheus-client` (a fresh
//! registry per scrape, so a node that disappears leaves no stale series). [`serve`] is
//! the I/O edge: HTTP/1.1 (hyper) answering `GET /metrics`, 404 for any other path.
//!
//! The body is OpenMetrics text (`# EOF` at the end), served with the OpenMetrics content
//! type; metric names and types are chosen so the same bytes also pass
//! `promtool check metrics` (the classic text parser plus its lint) without complaint.

use fleetward_proto::Severity;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// The address suggested for `metrics_listen` (9464 is the customary port of
/// OpenTelemetry's Prometheus exporter; nothing else of fleetward uses it).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";

/// The content type of what [`render`] produces.
pub const CONTENT_TYPE_OPENMETRICS: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// At most this many scrape connections at once; more are closed on accept.
const MAX_CONNECTIONS: usize = 32;
/// A client must send its request head within this time.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// On shutdown, open connections get this long to finish their response.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// One node as the metrics see it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSnapshot {
    pub name: String,
    /// The node has an open agent session (or whatever the controller counts as "up").
    pub up: bool,
    /// Seconds since the node's last report or heartbeat; `None` if it never reported
    /// (the age series is then absent, not zero).
    pub last_report_age_secs: Option<f64>,
    pub reboot_required: bool,
    /// `(code, severity)` of every finding in the node's latest report; repeated codes
    /// are counted.
    pub findings: Vec<(String, Severity)>,
    /// Pending drift findings (`drift.*`/`policy.*`) the controller holds for the node.
    pub drift_findings: usize,
}

/// The fleet at the moment of a scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetSnapshot {
    pub nodes: Vec<NodeSnapshot>,
    /// The controller's own certificates: `(name, not-after as unix seconds)`, e.g.
    /// `("ca", …)` and `("server", …)` (the server certificate `serve` uses).
    pub certificates: Vec<(String, i64)>,
    /// Unrevoked operator identities with a known expiry.
    pub operators: Vec<OperatorSnapshot>,
    /// Report ingestion's limits (`[ingest]`).
    pub ingest: IngestSnapshot,
}

/// One operator identity as the metrics see it.
#[derive(Debug, Clone, PartialEq)]
pub struct OperatorSnapshot {
    pub name: String,
    pub scope: String,
    /// When its current certificate expires, unix seconds.
    pub not_after_secs: f64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertificateLabels {
    certificate: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperatorLabels {
    operator: String,
    scope: String,
}

/// What report ingestion refused, and the free space its disk guard watches.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IngestSnapshot {
    /// Free bytes on the data directory's file system (`None`: could not tell).
    pub data_dir_free_bytes: Option<u64>,
    /// `min_free_bytes`: below it reports are refused.
    pub min_free_bytes: u64,
    /// Reports refused since the start, by reason (`size`, `rate`, `disk`).
    pub refused: Vec<(&'static str, u64)>,
    /// Reports identical to the node's latest, acknowledged without storing them again.
    pub unchanged: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SeverityLabels {
    node: String,
    severity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FindingLabels {
    node: String,
    code: String,
    severity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

const SEVERITIES: [Severity; 3] = [Severity::Info, Severity::Warning, Severity::Error];

/// Render the exposition for `snapshot` plus the controller's process metrics.
///
/// Metrics (all gauges):
/// - `fleetward_nodes` — number of nodes known;
/// - `fleetward_node_up{node}` — 1 if the node is connected;
/// - `fleetward_node_last_report_age_seconds{node}` — absent for a node that never reported;
/// - `fleetward_node_reboot_required{node}` — 0/1;
/// - `fleetward_node_findings{node,severity}` — findings per severity, every severity
///   present (0 when none);
/// - `fleetward_findings{node,code,severity}` — findings per code (only codes present);
/// - `fleetward_node_drift_findings{node}` — pending drift findings;
/// - `fleetward_operator_cert_expiry_timestamp_seconds{operator,scope}` — when each
///   unrevoked operator's current certificate expires (unix seconds);
/// - `fleetward_build_info{version}` — always 1;
/// - `fleetward_certificate_expiry_timestamp_seconds{certificate}` — when the controller's
///   `ca` and `server` certificates expire (unix seconds);
/// - `fleetward_data_dir_free_bytes`, `fleetward_data_dir_min_free_bytes` — free space on
///   the data directory's file system (absent if unknown) and the threshold below which
///   reports are refused;
/// - `fleetward_reports_refused{reason}` (`size`, `rate`, `disk`) and
///   `fleetward_reports_unchanged` — counts since the start;
/// - `process_cpu_seconds`, `process_resident_memory_bytes`, `process_virtual_memory_bytes`,
///   `process_open_fds`, `process_max_fds`, `process_start_time_seconds` — see
///   [`ProcessStats`]; each is left out if `/proc` cannot tell it.
pub fn render(snapshot: &FleetSnapshot) -> String {
    let mut registry = Registry::default();
    register_fleet(&mut registry, snapshot);
    register_ingest(&mut registry, &snapshot.ingest);
    if let Some(stats) = ProcessStats::read() {
        stats.register(&mut registry);
    }
    let mut out = String::new();
    // Writing into a String cannot fail.
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("encoding metrics into a String");
    out
}

fn register_ingest(registry: &mut Registry, i: &IngestSnapshot) {
    let int = |v: u64| ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
    if let Some(free) = i.data_dir_free_bytes {
        registry.register(
            "fleetward_data_dir_free_bytes",
            "Free bytes on the file system of the controller's data directory",
            int(free),
        );
    }
    registry.register(
        "fleetward_data_dir_min_free_bytes",
        "Below this many free bytes on the data directory reports are refused (min_free_bytes)",
        int(i.min_free_bytes),
    );
    // Gauges that only grow (reset at a restart): `promtool check metrics` reads the
    // Prometheus text format, where OpenMetrics counters lose their help text.
    let refused = Family::<ReasonLabels, Gauge>::default();
    for (reason, n) in &i.refused {
        refused
            .get_or_create(&ReasonLabels {
                reason: (*reason).to_string(),
            })
            .set(i64::try_from(*n).unwrap_or(i64::MAX));
    }
    registry.register(
        "fleetward_reports_refused",
        "Reports refused since the start, by reason (size, rate, disk)",
        refused,
    );
    registry.register(
        "fleetward_reports_unchanged",
        "Reports identical to the node's latest, acknowledged without storing them again",
        int(i.unchanged),
    );
}

fn register_fleet(registry: &mut Registry, snapshot: &FleetSnapshot) {
    let build = Family::<BuildLabels, Gauge>::default();
    build
        .get_or_create(&BuildLabels {
            version: env!("CARGO_PKG_VERSION").to_string(),
        })
        .set(1);
    registry.register(
        "fleetward_build_info",
        "fleetward controller build; the value is always 1",
        build,
    );

    registry.register(
        "fleetward_nodes",
        "Number of nodes known to the controller",
        ConstGauge::new(snapshot.nodes.len() as i64),
    );

    let operator_expiry = Family::<OperatorLabels, FloatGauge>::default();
    for o in &snapshot.operators {
        operator_expiry
            .get_or_create(&OperatorLabels {
                operator: o.name.clone(),
                scope: o.scope.clone(),
            })
            .set(o.not_after_secs);
    }
    registry.register(
        "fleetward_operator_cert_expiry_timestamp_seconds",
        "When the operator's current certificate expires, unix seconds",
        operator_expiry,
    );

    let up = Family::<NodeLabels, Gauge>::default();
    let age = Family::<NodeLabels, FloatGauge>::default();
    let reboot = Family::<NodeLabels, Gauge>::default();
    let by_severity = Family::<SeverityLabels, Gauge>::default();
    let by_code = Family::<FindingLabels, Gauge>::default();
    let drift = Family::<NodeLabels, Gauge>::default();

    for n in &snapshot.nodes {
        let node = NodeLabels {
            node: n.name.clone(),
        };
        up.get_or_create(&node).set(i64::from(n.up));
        if let Some(secs) = n.last_report_age_secs.filter(|s| s.is_finite()) {
            age.get_or_create(&node).set(secs.max(0.0));
        }
        reboot
            .get_or_create(&node)
            .set(i64::from(n.reboot_required));
        drift
            .get_or_create(&node)
            .set(i64::try_from(n.drift_findings).unwrap_or(i64::MAX));

        // Count in a BTreeMap first so the families see each label set once.
        let mut counts: BTreeMap<(&str, Severity), i64> = BTreeMap::new();
        for (code, sev) in &n.findings {
            *counts.entry((code.as_str(), *sev)).or_default() += 1;
        }
        for sev in SEVERITIES {
            let total: i64 = counts
                .iter()
                .filter(|((_, s), _)| *s == sev)
                .map(|(_, c)| c)
                .sum();
            by_severity
                .get_or_create(&SeverityLabels {
                    node: n.name.clone(),
                    severity: sev.as_str().to_string(),
                })
                .set(total);
        }
        for ((code, sev), count) in counts {
            by_code
                .get_or_create(&FindingLabels {
                    node: n.name.clone(),
                    code: code.to_string(),
                    severity: sev.as_str().to_string(),
                })
                .set(count);
        }
    }

    registry.register(
        "fleetward_node_up",
        "1 if the node's agent has a session with the controller, else 0",
        up,
    );
    registry.register(
        "fleetward_node_last_report_age_seconds",
        "Seconds since the node last reported or sent a heartbeat (absent if it never did)",
        age,
    );
    registry.register(
        "fleetward_node_reboot_required",
        "1 if the node's latest report says a reboot is required, else 0",
        reboot,
    );
    registry.register(
        "fleetward_node_findings",
        "Findings in the node's latest report, by severity",
        by_severity,
    );
    registry.register(
        "fleetward_findings",
        "Findings in the node's latest report, by finding code and severity",
        by_code,
    );
    registry.register(
        "fleetward_node_drift_findings",
        "Pending drift and policy findings the controller holds for the node",
        drift,
    );

    let expiry = Family::<CertificateLabels, Gauge>::default();
    for (name, not_after) in &snapshot.certificates {
        expiry
            .get_or_create(&CertificateLabels {
                certificate: name.clone(),
            })
            .set(*not_after);
    }
    registry.register(
        "fleetward_certificate_expiry_timestamp_seconds",
        "When the controller's certificate expires (ca: the cluster CA; server: its TLS certificate), unix seconds",
        expiry,
    );
}

/// The controller process's own metrics, named as the Prometheus client libraries name
/// them. Read from `/proc/self` (Linux only).
///
/// CPU time is the gauge `process_cpu_seconds`, not the client libraries' counter
/// `process_cpu_seconds_total`: prometheus-client writes counters in OpenMetrics form
/// (`# TYPE process_cpu_seconds counter` above a `process_cpu_seconds_total` sample),
/// which the classic text parser of `promtool check metrics` reads as a second, untyped
/// family without help text; and a gauge named `..._total` fails promtool's lint. A
/// gauge without the suffix is clean everywhere, and `rate()` works on it all the same.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: Option<f64>,
    pub resident_memory_bytes: Option<u64>,
    pub virtual_memory_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    pub start_time_seconds: Option<f64>,
}

/// The fields of `/proc/<pid>/stat` used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFields {
    /// User + system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// Start time after boot, in clock ticks.
    pub start_ticks: u64,
    pub vsize_bytes: u64,
}

/// Parse `/proc/<pid>/stat`. The command name (field 2) may hold spaces and parentheses,
/// so fields are counted after its last `)`.
pub fn parse_stat(text: &str) -> Option<StatFields> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    // f[0] is field 3 (state); field N is f[N - 3].
    let num = |field: usize| f.get(field - 3)?.parse::<u64>().ok();
    Some(StatFields {
        cpu_ticks: num(14)?.checked_add(num(15)?)?,
        start_ticks: num(22)?,
        vsize_bytes: num(23)?,
    })
}

/// A `Key:   1234 kB` line of `/proc/<pid>/status`, in bytes.
pub fn parse_status_kb(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix(':')?;
        let mut parts = value.split_ascii_whitespace();
        let n = parts.next()?.parse::<u64>().ok()?;
        match parts.next() {
            Some("kB") => n.checked_mul(1024),
            _ => None,
        }
    })
}

/// `btime` (boot time, seconds since the epoch) from `/proc/stat`.
pub fn parse_btime(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

impl ProcessStats {
    /// Read the current process's statistics; `None` if `/proc/self` is not there at all.
    pub fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let stat = parse_stat(&stat);
        // Clock ticks per second from sysconf; 100 (USER_HZ on every Linux port) if that
        // fails.
        let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .filter(|t| *t > 0)
            .map_or(100.0, |t| t as f64);
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let btime = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| parse_btime(&s));
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.filter(|e| e.is_ok()).count() as u64);
        let max_fds = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .ok()
            .map(|(soft, _hard)| soft)
            .filter(|soft| *soft != nix::sys::resource::RLIM_INFINITY);
        Some(ProcessStats {
            cpu_seconds: stat.map(|s| s.cpu_ticks as f64 / ticks),
            resident_memory_bytes: parse_status_kb(&status, "VmRSS"),
            virtual_memory_bytes: stat.map(|s| s.vsize_bytes),
            open_fds,
            max_fds,
            start_time_seconds: stat
                .zip(btime)
                .map(|(s, b)| b as f64 + s.start_ticks as f64 / ticks),
        })
    }

    fn register(&self, registry: &mut Registry) {
        let float = |v: f64| ConstGauge::<f64>::new(v);
        let int = |v: u64| ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
        if let Some(v) = self.cpu_seconds {
            registry.register(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                float(v),
            );
        }
        if let Some(v) = self.resident_memory_bytes {
            registry.register(
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                int(v),
            );
        }
        if let Some(v) = self.virtual_memory_bytes {
            registry.register(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                int(v),
            );
        }
        if let Some(v) = self.open_fds {
            registry.register(
                "process_open_fds",
                "Number of open file descriptors",
                int(v),
            );
        }
        if let Some(v) = self.max_fds {
            registry.register(
                "process_max_fds",
                "Maximum number of open file descriptors",
                int(v),
            );
        }
        if let Some(v) = self.start_time_seconds {
            registry.register(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                float(v),
            );
        }
    }
}

/// Resolve `addr` for the metrics listener. Unless `allow_remote`, every address it
/// resolves to must be a loopback address: the endpoint has no authentication and shows
/// the fleet's node names and problems.
pub fn check_listen(addr: &str, allow_remote: bool) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| format!("metrics listen address {addr:?}: {e}"))?
        .collect();
    let first = *addrs
        .first()
        .ok_or_else(|| format!("metrics listen address {addr:?} resolves to nothing"))?;
    if !allow_remote {
        if let Some(bad) = addrs.iter().find(|a| !a.ip().is_loopback()) {
            return Err(format!(
                "metrics listen address {addr:?} ({bad}) is not a loopback address; the \
                 metrics endpoint has no authentication (allow it explicitly to listen \
                 beyond this host)"
            ));
        }
    }
    Ok(first)
}

/// Serve `GET /metrics` (and `HEAD`) on `listener` until `shutdown` resolves, rendering
/// `snapshot()` afresh for every scrape; any other path is 404, any other method 405.
/// On shutdown the listener closes and open connections get a few seconds to finish.
///
/// `snapshot` runs on the blocking thread pool, so it may read the store.
pub async fn serve(
    listener: TcpListener,
    snapshot: Arc<dyn Fn() -> FleetSnapshot + Send + Sync>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut conns = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Typically EMFILE/ENFILE or a connection reset before accept:
                        // back off briefly instead of spinning.
                        tracing::warn!(error = %e, "metrics listener: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, "metrics listener: too many connections; closing");
                    continue;
                };
                let snapshot = snapshot.clone();
                let mut stop = stop_rx.clone();
                conns.spawn(async move {
                    let _slot = slot;
                    let svc = service_fn(move |req| {
                        let snapshot = snapshot.clone();
                        async move { Ok::<_, Infallible>(respond(req, snapshot).await) }
                    });
                    let conn = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), svc);
                    tokio::pin!(conn);
                    let result = tokio::select! {
                        r = conn.as_mut() => r,
                        _ = stop.changed() => {
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    };
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "metrics connection");
                    }
                });
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("metrics connections did not finish in time; closing them");
        conns.shutdown().await;
    }
    Ok(())
}

async fn respond(
    req: Request<Incoming>,
    snapshot: Arc<dyn Fn() -> FleetSnapshot + Send + Sync>,
) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found; metrics are at /metrics\n",
        );
    }
    let head = match *req.method() {
        Method::GET => false,
        Method::HEAD => true,
        _ => {
            let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
    };
    let body = match tokio::task::spawn_blocking(move || render(&snapshot())).await {
        Ok(body) => body,
        Err(e) => {
            tracing::error!(error = %e, "rendering metrics failed");
            return plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "rendering metrics failed\n",
            );
        }
    };
    let len = body.len();
    let mut r = Response::new(Full::new(if head {
        Bytes::new()
    } else {
        Bytes::from(body)
    }));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(CONTENT_TYPE_OPENMETRICS),
    );
    if head {
        r.headers_mut()
            .insert(hyper::header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    r
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_command_name() {
        // Fields 3.. of a real /proc/self/stat, behind a command name with ") (" in it.
        let text = "4242 (a) (b c) S 1 4242 4242 0 -1 4194560 1000 0 0 0 150 50 0 0 20 0 \
                    9 0 123456 987654321 2000 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 \
                    17 1 0 0 0 0 0\n";
        assert_eq!(
            parse_stat(text),
            Some(StatFields {
                cpu_ticks: 200,
                start_ticks: 123456,
                vsize_bytes: 987654321
            })
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1 2"), None);
    }

    #[test]
    fn status_and_btime() {
        let status = "Name:\tfleetward\nVmSize:\t  1000 kB\nVmRSS:\t    20 kB\n";
        assert_eq!(parse_status_kb(status, "VmRSS"), Some(20 * 1024));
        assert_eq!(parse_status_kb(status, "VmSize"), Some(1000 * 1024));
        assert_eq!(parse_status_kb(status, "VmSwap"), None);
        assert_eq!(
            parse_btime("cpu 1 2 3\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
        assert_eq!(parse_btime("cpu 1 2 3\n"), None);
    }

    #[test]
    fn process_stats_on_linux() {
        let s = ProcessStats::read().expect("/proc/self");
        assert!(s.resident_memory_bytes.unwrap() > 0);
        assert!(s.open_fds.unwrap() >= 3);
        assert!(s.start_time_seconds.unwrap() > 1_500_000_000.0);
    }

    #[test]
    fn empty_fleet_renders() {
        let text = render(&FleetSnapshot::default());
        assert!(text.contains("fleetward_nodes 0\n"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
