//! Load benchmark: many simulated agents with real certificates against the real controller.
//!
//! ```text
//! cargo build --release --workspace --bins
//! cargo run --release -p fleetward-tests --example load -- --sessions 1000 --idle 10000 --seconds 20
//! # quick smoke run:
//! cargo run --release -p fleetward-tests --example load -- --sessions 50 --idle 200 --seconds 3 --rate 250
//! ```
//!
//! What it does, in one process (the controller is the real `fleetward serve`, a child
//! process started by the e2e harness in a temporary data dir):
//!
//! 0. Enrolls `max(--sessions, --idle)` nodes `sim-00000..` through the real API (a join
//!    token per node from `OperatorService.CreateToken`, then `AgentService.Enroll` with a
//!    fresh key + CSR), `--enroll-parallel` at a time, and prints the rate.
//! 1. **A-max** (closed loop): `--sessions` sessions, each its own TLS connection, each
//!    keeping `--inflight` reports unacknowledged (send the next when an ack arrives), for
//!    `--seconds` after `--warmup`. Throughput = acks received in the window / window.
//! 2. **A-rate** (open loop): the same sessions send at a fixed total rate `--rate`
//!    (each session every `sessions/rate` s, on schedule, whether or not acks came back; at
//!    most `--max-outstanding` per session, a tick that finds that many unacknowledged is
//!    counted as *skipped*). Latency is measured from the *scheduled* send time to the ack,
//!    so a stalled server cannot hide its queueing (no coordinated omission). This is the
//!    phase that answers "sustains R reports/s with p99 < 50 ms": in a closed loop with
//!    S×W reports always outstanding, Little's law fixes latency at S×W / throughput
//!    (1000×4 / 5000/s = 800 ms), so closed-loop latency says nothing about the target.
//! 3. **B-idle**: `--idle` sessions (≤ `--handshakes` connecting at once) send Hello and one
//!    report, then a heartbeat every `--heartbeat` s. Once all are up and `--hold` s have
//!    passed, the controller's VmRSS/VmHWM are read from `/proc/<pid>/status`.
//! 4. **C-bare** (baseline): the controller is stopped; an in-process tonic server with the
//!    same TLS setup (the controller's server.crt/server.key, client certificates from its
//!    CA required) whose `Session` only acks (ReportAck per Report, no JSON parsing, no
//!    storage) runs on its own 2-thread runtime, and A-max runs against it. Ratio =
//!    ours / bare. The bare server sets TCP_NODELAY on accepted sockets (what tonic's
//!    `Server::serve` does; `serve_with_incoming` with a plain `TcpListenerStream` does not).
//!
//! Each report is the seed fixture's full report (`agent/tests/fixtures/seed/pve-01/
//! expected.json`) with `facts.node.hostname` set to the simulated node and
//! `facts.node.boot_id` changed on every send.
//!
//! CPU figures come from `/proc/<pid>/stat` (utime+stime, USER_HZ assumed 100) over the
//! measurement window; "client" is this process (minus the bare server's threads in C).
//! The harness (`fleetward_tests::bin`) finds `fleetward` two directories above the running
//! executable; for an example that is `target/release/examples/load` → `target/release/`.

use clap::Parser;
use fleetward_proto::api::{
    self, agent_message, agent_service_client::AgentServiceClient,
    agent_service_server::AgentService, agent_service_server::AgentServiceServer,
    controller_message, AgentMessage, ControllerMessage,
};
use fleetward_proto::Report;
use fleetward_tests::Controller;
use std::collections::VecDeque;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{sleep_until, timeout, Instant as TInstant, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Identity as TlsIdentity, Server, ServerTlsConfig,
};
use tonic::{Request, Response, Status, Streaming};

#[derive(Parser, Debug, Clone)]
#[command(about = "fleetward load benchmark (see the source's header)")]
struct Args {
    /// Concurrent sessions in the throughput phases (A-max, A-rate, C-bare).
    #[arg(long, default_value_t = 1000)]
    sessions: usize,
    /// Concurrent idle sessions in phase B (0 skips it).
    #[arg(long, default_value_t = 10_000)]
    idle: usize,
    /// Measurement window of each throughput phase, seconds.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Warm-up before each measurement window, seconds.
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// Unacknowledged reports per session in the closed-loop phases.
    #[arg(long, default_value_t = 4)]
    inflight: usize,
    /// Total offered reports/s in the open-loop phase A-rate (0 skips it).
    #[arg(long, default_value_t = 5000)]
    rate: u64,
    /// Open loop: at most this many unacknowledged reports per session.
    #[arg(long, default_value_t = 16)]
    max_outstanding: usize,
    /// Heartbeat interval of idle sessions, seconds.
    #[arg(long, default_value_t = 5)]
    heartbeat: u64,
    /// Keep all idle sessions up this long before sampling RSS, seconds.
    #[arg(long, default_value_t = 15)]
    hold: u64,
    /// TLS handshakes (connections being opened) in flight at once.
    #[arg(long, default_value_t = 256)]
    handshakes: usize,
    /// Enrollments in flight at once.
    #[arg(long, default_value_t = 32)]
    enroll_parallel: usize,
    /// Run the idle phase B before the throughput phases (its RSS then excludes what
    /// phase A's reports left in the controller's database cache).
    #[arg(long)]
    idle_first: bool,
    /// Skip the bare tonic baseline (phase C).
    #[arg(long)]
    no_bare: bool,
    /// Worker threads of the load client's runtime.
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
}

/// Placeholder boot id in the report template, overwritten on every send.
const BOOT_PLACEHOLDER: &str = "00000000-0000-4000-8000-000000000000";
const ACK_TIMEOUT: Duration = Duration::from_secs(60);

/// An enrolled simulated node.
type Agent = fleetward_tests::fakefleet::Enrolled;

/// The realistic report of one node, as bytes with a patchable boot id.
struct Template {
    bytes: Vec<u8>,
    boot_at: usize,
}

impl Template {
    fn new(seed: &Report, node: &str) -> Template {
        let mut r = seed.clone();
        r.facts.node.hostname = Some(node.to_string());
        r.facts.node.boot_id = Some(BOOT_PLACEHOLDER.to_string());
        // The indented form, as agents sent it before the wire became compact: the
        // benchmark's payload stays the same across versions.
        let bytes = fleetward_proto::report_to_json(&r).into_bytes();
        let boot_at = bytes
            .windows(BOOT_PLACEHOLDER.len())
            .position(|w| w == BOOT_PLACEHOLDER.as_bytes())
            .expect("placeholder in the report JSON");
        Template { bytes, boot_at }
    }

    /// The report for send number `n` of session `s` (a distinct, valid boot id).
    fn message(&self, s: usize, n: u64) -> AgentMessage {
        let mut b = self.bytes.clone();
        let id = format!(
            "{:08x}-0000-4000-8000-{:012x}",
            s as u32,
            n & 0xffff_ffff_ffff
        );
        b[self.boot_at..self.boot_at + id.len()].copy_from_slice(id.as_bytes());
        AgentMessage::new(agent_message::Kind::Report(agent_message::Report {
            seq: n,
            report_json: b,
        }))
    }
}

fn hello() -> AgentMessage {
    AgentMessage::new(agent_message::Kind::Hello(agent_message::Hello {
        agent_version: "load-sim".into(),
        boot_id: "load".into(),
    }))
}

// ---------------------------------------------------------------------------------------
// /proc sampling
// ---------------------------------------------------------------------------------------

/// (VmRSS, VmHWM) in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// utime+stime of a /proc stat file, seconds (USER_HZ = 100).
fn cpu_secs(stat_path: &str) -> f64 {
    let s = std::fs::read_to_string(stat_path).unwrap_or_default();
    let Some(rest) = s.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (t(11) + t(12)) as f64 / 100.0
}

fn proc_cpu(pid: u32) -> f64 {
    cpu_secs(&format!("/proc/{pid}/stat"))
}

/// Per-thread (comm, user s, sys s) of a process, by tid.
fn threads(pid: u32) -> std::collections::HashMap<String, (String, f64, f64)> {
    let mut out = std::collections::HashMap::new();
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for e in rd.flatten() {
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let t = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) as f64 / 100.0;
        out.insert(
            e.file_name().to_string_lossy().into_owned(),
            (comm.trim().to_string(), t(11), t(12)),
        );
    }
    out
}

/// Where a process's CPU went between two `threads` samples over `secs`: per thread name,
/// the thread count, user and sys cores, busiest thread first within the name.
fn thread_breakdown(
    before: &std::collections::HashMap<String, (String, f64, f64)>,
    after: &std::collections::HashMap<String, (String, f64, f64)>,
    secs: f64,
) -> String {
    let mut by: std::collections::BTreeMap<String, (usize, f64, f64, f64)> = Default::default();
    for (tid, (comm, u, s)) in after {
        let (u0, s0) = before.get(tid).map_or((0.0, 0.0), |b| (b.1, b.2));
        let (du, ds) = ((u - u0) / secs, (s - s0) / secs);
        if du + ds <= 0.0 {
            continue;
        }
        let e = by.entry(comm.clone()).or_default();
        e.0 += 1;
        e.1 += du;
        e.2 += ds;
        e.3 = e.3.max(du + ds);
    }
    let mut v: Vec<_> = by.into_iter().collect();
    v.sort_by(|a, b| (b.1 .1 + b.1 .2).total_cmp(&(a.1 .1 + a.1 .2)));
    v.iter()
        .map(|(c, (n, u, s, top))| {
            format!("{c} x{n}: user {u:.2} + sys {s:.2} cores (busiest thread {top:.2})")
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// CPU seconds of this process's threads named `bare-srv*` (the baseline server).
fn bare_threads_cpu() -> f64 {
    let Ok(rd) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    rd.flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.starts_with("bare-srv"))
        })
        .map(|e| cpu_secs(&e.path().join("stat").to_string_lossy()))
        .sum()
}

/// Busy fraction of the whole machine between two `/proc/stat` samples: (busy, total) jiffies.
fn machine_jiffies() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// CPU use over a window, in cores.
#[derive(Default, Clone, Copy)]
struct Cpu {
    server: f64,
    client: f64,
    machine: f64,
}

struct CpuProbe {
    server: Box<dyn Fn() -> f64 + Send>,
    at: Instant,
    s0: f64,
    c0: f64,
    m0: (u64, u64),
}

impl CpuProbe {
    fn start(server: Box<dyn Fn() -> f64 + Send>) -> Self {
        CpuProbe {
            s0: server(),
            c0: proc_cpu(std::process::id()),
            m0: machine_jiffies(),
            at: Instant::now(),
            server,
        }
    }
    fn stop(&self, client_minus_server: bool) -> Cpu {
        let secs = self.at.elapsed().as_secs_f64();
        let s = (self.server)() - self.s0;
        let mut c = proc_cpu(std::process::id()) - self.c0;
        if client_minus_server {
            c -= s;
        }
        let m1 = machine_jiffies();
        let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let busy = (m1.0 - self.m0.0) as f64 / ((m1.1 - self.m0.1).max(1)) as f64 * ncpu;
        Cpu {
            server: s / secs,
            client: c / secs,
            machine: busy,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------------------

fn tls_for(ca: &Certificate, agent: &Agent) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(ca.clone())
        .domain_name("localhost")
        .identity(TlsIdentity::from_pem(&agent.cert, &agent.key))
}

async fn connect(url: &str, tls: ClientTlsConfig) -> Result<Channel, String> {
    Channel::from_shared(url.to_string())
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(30))
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))
}

/// Connect one channel per agent, at most `parallel` handshakes at once.
async fn connect_all(
    url: &str,
    ca: &Certificate,
    agents: &[Arc<Agent>],
    parallel: usize,
) -> Vec<(usize, Channel)> {
    let sem = Arc::new(Semaphore::new(parallel));
    let mut set = JoinSet::new();
    for (i, a) in agents.iter().enumerate() {
        let (url, tls, sem) = (url.to_string(), tls_for(ca, a), sem.clone());
        set.spawn(async move {
            let _p = sem.acquire_owned().await.expect("semaphore");
            (i, connect(&url, tls).await)
        });
    }
    let mut out = Vec::new();
    let mut errs = 0;
    while let Some(r) = set.join_next().await {
        match r.expect("connect task") {
            (i, Ok(ch)) => out.push((i, ch)),
            (_, Err(e)) => {
                errs += 1;
                if errs <= 3 {
                    eprintln!("  connect failed: {e}");
                }
            }
        }
    }
    if errs > 0 {
        eprintln!("  {errs} connections failed");
    }
    out.sort_by_key(|(i, _)| *i);
    out
}

// ---------------------------------------------------------------------------------------
// Enrollment
// ---------------------------------------------------------------------------------------

async fn enroll_all(c: &Controller, n: usize, parallel: usize) -> Vec<Arc<Agent>> {
    let names: Vec<String> = (0..n).map(|i| format!("sim-{i:05}")).collect();
    fleetward_tests::fakefleet::enroll(c, &names, parallel)
        .await
        .into_iter()
        .map(Arc::new)
        .collect()
}

// ---------------------------------------------------------------------------------------
// Throughput sessions
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Mode {
    /// Keep this many reports unacknowledged.
    Closed(usize),
    /// Send every `interval`, first at `offset` after start; at most `max` unacknowledged.
    Open {
        interval: Duration,
        offset: Duration,
        max: usize,
    },
}

#[derive(Clone, Copy)]
struct Window {
    go: TInstant,
    measure: TInstant,
    end: TInstant,
}

#[derive(Default)]
struct SessionStats {
    acked_in_window: u64,
    sent: u64,
    acked: u64,
    skipped: u64,
    lat_us: Vec<u32>,
    error: Option<String>,
}

async fn throughput_session(
    idx: usize,
    ch: Channel,
    tpl: Arc<Template>,
    mode: Mode,
    ready: Arc<AtomicUsize>,
    mut go: watch::Receiver<Option<Window>>,
) -> SessionStats {
    let mut st = SessionStats::default();
    let (tx, rx) = mpsc::channel::<AgentMessage>(64);
    let mut client = AgentServiceClient::new(ch).max_encoding_message_size(64 << 20);
    let _ = tx.send(hello()).await;
    let mut inbound = match client.session(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(e) => {
            ready.fetch_add(1, Ordering::Relaxed);
            st.error = Some(format!("session: {e}"));
            return st;
        }
    };
    ready.fetch_add(1, Ordering::Relaxed);
    let w = loop {
        if let Some(w) = *go.borrow_and_update() {
            break w;
        }
        if go.changed().await.is_err() {
            return st;
        }
    };
    sleep_until(w.go).await;
    // (seq, scheduled send time)
    let mut out: VecDeque<(u64, TInstant)> = VecDeque::new();
    let mut seq = 0u64;
    let (period, max_out) = match mode {
        Mode::Closed(n) => (Duration::from_secs(3600), n),
        Mode::Open {
            interval, max: m, ..
        } => (interval, m),
    };
    let first_tick = match mode {
        Mode::Open { offset, .. } => w.go + offset,
        Mode::Closed(_) => w.end,
    };
    let mut ticker = tokio::time::interval_at(first_tick, period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let open = matches!(mode, Mode::Open { .. });
    loop {
        let now = TInstant::now();
        if !open && now < w.end && out.len() < max_out {
            seq += 1;
            if tx.send(tpl.message(idx, seq)).await.is_err() {
                st.error = Some("send: session gone".into());
                break;
            }
            st.sent += 1;
            out.push_back((seq, now));
            continue;
        }
        if out.is_empty() && now >= w.end {
            break;
        }
        tokio::select! {
            biased;
            t = ticker.tick(), if open && now < w.end => {
                if out.len() >= max_out {
                    if t >= w.measure { st.skipped += 1; }
                    continue;
                }
                seq += 1;
                if tx.send(tpl.message(idx, seq)).await.is_err() {
                    st.error = Some("send: session gone".into());
                    break;
                }
                st.sent += 1;
                out.push_back((seq, t));
            }
            m = timeout(ACK_TIMEOUT, inbound.message()) => {
                let m = match m {
                    Err(_) => { st.error = Some(format!("no ack within {ACK_TIMEOUT:?}")); break; }
                    Ok(Err(s)) => { st.error = Some(format!("stream: {s}")); break; }
                    Ok(Ok(None)) => { st.error = Some("stream ended".into()); break; }
                    Ok(Ok(Some(m))) => m,
                };
                if let Some(controller_message::Kind::ReportAck(a)) = m.kind {
                    let at = TInstant::now();
                    // Acks come in order: the controller handles a session's messages one by one.
                    while let Some((s, t)) = out.pop_front() {
                        if s == a.seq {
                            st.acked += 1;
                            if at >= w.measure && at < w.end {
                                st.acked_in_window += 1;
                            }
                            if t >= w.measure && t < w.end {
                                st.lat_us.push(at.duration_since(t).as_micros().min(u32::MAX as u128) as u32);
                            }
                            break;
                        }
                        if s > a.seq { out.push_front((s, t)); break; }
                    }
                }
            }
        }
    }
    drop(tx);
    st
}

struct PhaseResult {
    connected: usize,
    connect_secs: f64,
    throughput: f64,
    sent: u64,
    acked: u64,
    skipped: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    mean_ms: f64,
    errors: usize,
    first_error: Option<String>,
    cpu: Cpu,
    /// Per-thread CPU of the server process (controller phases only).
    server_threads: Option<String>,
}

#[allow(clippy::too_many_arguments)]
async fn run_throughput(
    label: &str,
    url: &str,
    ca: &Certificate,
    agents: &[Arc<Agent>],
    seed: &Report,
    args: &Args,
    mode_of: impl Fn(usize) -> Mode,
    server_cpu: Box<dyn Fn() -> f64 + Send>,
    server_in_process: bool,
    server_pid: Option<u32>,
) -> PhaseResult {
    eprintln!("[{label}] connecting {} sessions ...", agents.len());
    let t0 = Instant::now();
    let chans = connect_all(url, ca, agents, args.handshakes).await;
    let connect_secs = t0.elapsed().as_secs_f64();
    let connected = chans.len();
    eprintln!("[{label}] {connected} connected in {connect_secs:.1} s; opening sessions");
    let ready = Arc::new(AtomicUsize::new(0));
    let (go_tx, go_rx) = watch::channel(None);
    let mut set = JoinSet::new();
    for (i, ch) in chans {
        let tpl = Arc::new(Template::new(seed, &agents[i].name));
        set.spawn(throughput_session(
            i,
            ch,
            tpl,
            mode_of(i),
            ready.clone(),
            go_rx.clone(),
        ));
    }
    while ready.load(Ordering::Relaxed) < connected {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let go = TInstant::now() + Duration::from_millis(200);
    let w = Window {
        go,
        measure: go + Duration::from_secs(args.warmup),
        end: go + Duration::from_secs(args.warmup + args.seconds),
    };
    go_tx.send_replace(Some(w));
    eprintln!(
        "[{label}] running: {} s warm-up + {} s measured",
        args.warmup, args.seconds
    );
    sleep_until(w.measure).await;
    let probe = CpuProbe::start(server_cpu);
    let th0 = server_pid.map(threads);
    sleep_until(w.end).await;
    let cpu = probe.stop(server_in_process);
    let server_threads = server_pid
        .zip(th0)
        .map(|(p, t0)| thread_breakdown(&t0, &threads(p), args.seconds as f64));
    let mut all = SessionStats::default();
    let mut errors = 0;
    let mut first_error = None;
    while let Some(r) = set.join_next().await {
        let s = r.expect("session task");
        all.acked_in_window += s.acked_in_window;
        all.sent += s.sent;
        all.acked += s.acked;
        all.skipped += s.skipped;
        all.lat_us.extend(s.lat_us);
        if let Some(e) = s.error {
            errors += 1;
            first_error.get_or_insert(e);
        }
    }
    all.lat_us.sort_unstable();
    let pct = |p: f64| {
        if all.lat_us.is_empty() {
            return f64::NAN;
        }
        let i = ((all.lat_us.len() as f64 * p).ceil() as usize).clamp(1, all.lat_us.len()) - 1;
        all.lat_us[i] as f64 / 1000.0
    };
    let mean_ms =
        all.lat_us.iter().map(|&v| v as f64).sum::<f64>() / all.lat_us.len().max(1) as f64 / 1000.0;
    PhaseResult {
        connected,
        connect_secs,
        throughput: all.acked_in_window as f64 / args.seconds as f64,
        sent: all.sent,
        acked: all.acked,
        skipped: all.skipped,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: pct(1.0),
        mean_ms,
        errors,
        first_error,
        cpu,
        server_threads,
    }
}

// ---------------------------------------------------------------------------------------
// Idle sessions
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct IdleStats {
    heartbeats: u64,
    hb_max_us: u64,
    error: Option<String>,
}

#[allow(clippy::too_many_arguments)]
async fn idle_session(
    idx: usize,
    url: String,
    tls: ClientTlsConfig,
    tpl: Template,
    hb: Duration,
    sem: Arc<Semaphore>,
    up: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    mut stop: watch::Receiver<bool>,
) -> IdleStats {
    let mut st = IdleStats::default();
    let permit = sem.acquire_owned().await.expect("semaphore");
    let fail = |st: &mut IdleStats, e: String| {
        failed.fetch_add(1, Ordering::Relaxed);
        st.error = Some(e);
    };
    let ch = match connect(&url, tls).await {
        Ok(c) => c,
        Err(e) => {
            fail(&mut st, e);
            return st;
        }
    };
    let (tx, rx) = mpsc::channel::<AgentMessage>(4);
    let mut client = AgentServiceClient::new(ch).max_encoding_message_size(64 << 20);
    let _ = tx.send(hello()).await;
    let _ = tx.send(tpl.message(idx, 1)).await;
    drop(tpl);
    let mut inbound = match client.session(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(e) => {
            fail(&mut st, format!("session: {e}"));
            return st;
        }
    };
    match timeout(ACK_TIMEOUT, inbound.message()).await {
        Ok(Ok(Some(ControllerMessage {
            kind: Some(controller_message::Kind::ReportAck(_)),
        }))) => {}
        other => {
            fail(&mut st, format!("first report: {other:?}"));
            return st;
        }
    }
    drop(permit);
    up.fetch_add(1, Ordering::Relaxed);
    // Spread the heartbeats over the interval.
    let offset = hb.mul_f64((idx % 997) as f64 / 997.0);
    let mut ticker = tokio::time::interval_at(TInstant::now() + offset, hb);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut seq = 0;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = ticker.tick() => {
                seq += 1;
                let t = TInstant::now();
                let msg = AgentMessage::new(agent_message::Kind::Heartbeat(agent_message::Heartbeat { seq }));
                if tx.send(msg).await.is_err() {
                    st.error = Some("heartbeat: session gone".into());
                    break;
                }
                match timeout(ACK_TIMEOUT, inbound.message()).await {
                    Ok(Ok(Some(ControllerMessage { kind: Some(controller_message::Kind::HeartbeatAck(a)) }))) if a.seq == seq => {
                        st.heartbeats += 1;
                        st.hb_max_us = st.hb_max_us.max(t.elapsed().as_micros() as u64);
                    }
                    other => {
                        st.error = Some(format!("heartbeat ack: {other:?}"));
                        break;
                    }
                }
            }
        }
    }
    st
}

struct IdleResult {
    up: usize,
    failed: usize,
    connect_secs: f64,
    rss_before_kib: u64,
    rss_kib: u64,
    hwm_kib: u64,
    online: Option<usize>,
    heartbeats: u64,
    hb_max_ms: f64,
    errors_after_up: usize,
    first_error: Option<String>,
    server_cpu_idle: f64,
}

async fn run_idle(
    c: &Controller,
    ca: &Certificate,
    agents: &[Arc<Agent>],
    seed: &Report,
    args: &Args,
) -> IdleResult {
    let pid = c.pid().expect("controller pid");
    let rss_before_kib = rss_kib(pid).0;
    let n = agents.len();
    eprintln!(
        "[B-idle] opening {n} sessions (≤ {} at once) ...",
        args.handshakes
    );
    let sem = Arc::new(Semaphore::new(args.handshakes));
    let (up, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut set = JoinSet::new();
    let t0 = Instant::now();
    for (i, a) in agents.iter().enumerate() {
        set.spawn(idle_session(
            i,
            c.url(),
            tls_for(ca, a),
            Template::new(seed, &a.name),
            Duration::from_secs(args.heartbeat),
            sem.clone(),
            up.clone(),
            failed.clone(),
            stop_rx.clone(),
        ));
    }
    let mut last = Instant::now();
    while up.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if last.elapsed() > Duration::from_secs(5) {
            last = Instant::now();
            eprintln!(
                "[B-idle]   {} up, {} failed, controller RSS {} MiB",
                up.load(Ordering::Relaxed),
                failed.load(Ordering::Relaxed),
                rss_kib(pid).0 / 1024
            );
        }
    }
    let connect_secs = t0.elapsed().as_secs_f64();
    let (upn, failn) = (up.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!(
        "[B-idle] {upn} up, {failn} failed after {connect_secs:.1} s; holding {} s",
        args.hold
    );
    let cpu0 = proc_cpu(pid);
    tokio::time::sleep(Duration::from_secs(args.hold)).await;
    let server_cpu_idle = (proc_cpu(pid) - cpu0) / args.hold as f64;
    let (rss, hwm) = rss_kib(pid);
    // Cross-check with the controller's own view (after the RSS sample: ListNodes reads
    // every node's latest report).
    let online = match c
        .operator()
        .await
        .max_decoding_message_size(256 << 20)
        .list_nodes(api::ListNodesRequest {})
        .await
    {
        Ok(r) => Some(
            r.into_inner()
                .nodes
                .iter()
                .filter(|n| n.session_state == api::SessionState::Online as i32)
                .count(),
        ),
        Err(e) => {
            eprintln!("[B-idle] ListNodes failed: {e}");
            None
        }
    };
    let _ = stop_tx.send(true);
    let mut heartbeats = 0;
    let mut hb_max_us = 0;
    let mut errors = 0usize;
    let mut first_error = None;
    while let Some(r) = set.join_next().await {
        let s = r.expect("idle task");
        heartbeats += s.heartbeats;
        hb_max_us = hb_max_us.max(s.hb_max_us);
        if let Some(e) = s.error {
            errors += 1;
            first_error.get_or_insert(e);
        }
    }
    IdleResult {
        up: upn,
        failed: failn,
        connect_secs,
        rss_before_kib,
        rss_kib: rss,
        hwm_kib: hwm,
        online,
        heartbeats,
        hb_max_ms: hb_max_us as f64 / 1000.0,
        errors_after_up: errors.saturating_sub(failn),
        first_error,
        server_cpu_idle,
    }
}

// ---------------------------------------------------------------------------------------
// The bare baseline server
// ---------------------------------------------------------------------------------------

struct Bare;

type AckStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<ControllerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for Bare {
    async fn enroll(
        &self,
        _: Request<api::EnrollRequest>,
    ) -> Result<Response<api::EnrollResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }
    async fn renew(
        &self,
        _: Request<api::RenewRequest>,
    ) -> Result<Response<api::RenewResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }
    type SessionStream = AckStream;
    async fn session(
        &self,
        req: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<AckStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                let kind = match m.kind {
                    Some(agent_message::Kind::Report(r)) => {
                        controller_message::Kind::ReportAck(controller_message::ReportAck {
                            seq: r.seq,
                        })
                    }
                    Some(agent_message::Kind::Heartbeat(h)) => {
                        controller_message::Kind::HeartbeatAck(controller_message::HeartbeatAck {
                            seq: h.seq,
                        })
                    }
                    _ => continue,
                };
                if tx.send(Ok(ControllerMessage::new(kind))).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Start the bare server on its own 2-worker runtime (threads `bare-srv`); returns its
/// address and a stopper.
fn start_bare(data_dir: &Path) -> (String, std::sync::mpsc::Sender<()>) {
    let read = |f: &str| std::fs::read_to_string(data_dir.join(f)).expect(f);
    let tls = ServerTlsConfig::new()
        .identity(TlsIdentity::from_pem(
            read("server.crt"),
            read("server.key"),
        ))
        .client_ca_root(Certificate::from_pem(read("ca/ca.crt")));
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("bare-srv")
            .enable_all()
            .build()
            .expect("bare runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            addr_tx
                .send(listener.local_addr().expect("addr").to_string())
                .expect("addr");
            let (stop_async_tx, stop_async_rx) = tokio::sync::oneshot::channel::<()>();
            std::thread::spawn(move || {
                let _ = stop_rx.recv();
                let _ = stop_async_tx.send(());
            });
            Server::builder()
                .tls_config(tls)
                .expect("tls")
                .http2_keepalive_interval(Some(Duration::from_secs(30)))
                .add_service(AgentServiceServer::new(Bare))
                // TCP_NODELAY on accepted sockets, as `Server::serve` would set it
                // (a plain `TcpListenerStream` leaves Nagle on: small acks then wait
                // for the peer's delayed ACK, up to 40 ms).
                .serve_with_incoming_shutdown(
                    TcpIncoming::from(listener).with_nodelay(Some(true)),
                    async {
                        let _ = stop_async_rx.await;
                    },
                )
                .await
                .expect("bare serve");
        });
    });
    (addr_rx.recv().expect("bare addr"), stop_tx)
}

// ---------------------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------------------

fn raise_nofile() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        eprintln!("setrlimit(NOFILE, {hard}): {e}");
    }
    getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit").0
}

fn mib(kib: u64) -> String {
    format!("{:.0} MiB", kib as f64 / 1024.0)
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

fn main() {
    let args = Args::parse();
    let cmdline = format!(
        "cargo run --release -p fleetward-tests --example load -- {}",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
    let nofile = raise_nofile();
    let need = args.sessions.max(args.idle) + 100;
    if (nofile as usize) < need {
        eprintln!("warning: RLIMIT_NOFILE is {nofile}, the run needs about {need}");
    }
    let seed_path = fleetward_tests::agent_fixture("seed/pve-01/expected.json");
    let seed: Report = fleetward_proto::report_from_json(
        &std::fs::read_to_string(&seed_path).expect("seed expected.json"),
    )
    .expect("seed report parses");
    let report_bytes = Template::new(&seed, "sim-00000").bytes.len();

    eprintln!(
        "starting the controller ({})",
        fleetward_tests::bin("fleetward").display()
    );
    // Started before the runtime: the harness waits synchronously. It inherits our
    // raised RLIMIT_NOFILE.
    // Each node sends reports as fast as acks come back, far beyond a real agent's rate: the
    // per-node rate limit (`[ingest]`) is lifted for this measurement.
    // Enrollment shares one connection without a client certificate, which
    // `unverified_lifetime_ms` (60 s) would cut on a slow machine enrolling 10,000 nodes.
    let mut c = Controller::start_with_toml(
        &[],
        &format!(
            "{}[connections]\nunverified_lifetime_ms = 3600000\n",
            fleetward_tests::NO_RATE_LIMIT
        ),
    );
    let pid = c.pid().expect("pid");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads)
        .thread_name("load-client")
        .enable_all()
        .build()
        .expect("runtime");
    let ca = Certificate::from_pem(c.ca_pem());

    rt.block_on(async {
        let n = args.sessions.max(args.idle);
        eprintln!(
            "enrolling {n} nodes ({} in parallel) ...",
            args.enroll_parallel
        );
        let t0 = Instant::now();
        let agents = enroll_all(&c, n, args.enroll_parallel).await;
        let enroll_secs = t0.elapsed().as_secs_f64();
        eprintln!(
            "enrolled {n} in {enroll_secs:.1} s ({:.0}/s)",
            n as f64 / enroll_secs
        );

        let url = c.url();
        let ctl_cpu = move || proc_cpu(pid);
        let mut idle = None;
        if args.idle_first && args.idle > 0 {
            idle = Some(run_idle(&c, &ca, &agents[..args.idle], &seed, &args).await);
        }
        let a_max = run_throughput(
            "A-max ours",
            &url,
            &ca,
            &agents[..args.sessions],
            &seed,
            &args,
            |_| Mode::Closed(args.inflight),
            Box::new(ctl_cpu),
            false,
            Some(pid),
        )
        .await;
        let a_rate = if args.rate > 0 {
            let interval = Duration::from_secs_f64(args.sessions as f64 / args.rate as f64);
            let sessions = args.sessions;
            Some(
                run_throughput(
                    "A-rate ours",
                    &url,
                    &ca,
                    &agents[..args.sessions],
                    &seed,
                    &args,
                    move |i| Mode::Open {
                        interval,
                        offset: interval.mul_f64(i as f64 / sessions as f64),
                        max: args.max_outstanding,
                    },
                    Box::new(ctl_cpu),
                    false,
                    Some(pid),
                )
                .await,
            )
        } else {
            None
        };
        let (rss_after_a, _) = rss_kib(pid);
        if !args.idle_first && args.idle > 0 {
            idle = Some(run_idle(&c, &ca, &agents[..args.idle], &seed, &args).await);
        }
        let ctl_log_errors = c
            .log()
            .lines()
            .filter(|l| l.contains("ERROR") || l.contains("internal error"))
            .count();
        c.kill();

        let bare = if args.no_bare {
            None
        } else {
            let (addr, stop) = start_bare(c.dir.path());
            let r = run_throughput(
                "C-bare",
                &format!("https://{addr}"),
                &ca,
                &agents[..args.sessions],
                &seed,
                &args,
                |_| Mode::Closed(args.inflight),
                Box::new(bare_threads_cpu),
                true,
                None,
            )
            .await;
            let _ = stop.send(());
            Some(r)
        };

        // ---- the table ----
        let ncpu = std::thread::available_parallelism().map_or(0, |n| n.get());
        println!();
        println!("fleetward load benchmark");
        println!("command: {cmdline}");
        println!(
            "machine: {ncpu} CPUs (\"other CPU\" = busy CPU of the whole machine not used by server or client: interference); controller = release `fleetward serve` (child process, data dir on {}); \
             report = seed pve-01 expected.json, {report_bytes} bytes JSON",
            std::env::temp_dir().display()
        );
        println!(
            "enrollment: {n} nodes (token + CSR/sign over the API, {} parallel) in {enroll_secs:.1} s = {:.0} nodes/s",
            args.enroll_parallel,
            n as f64 / enroll_secs
        );
        println!();
        println!("| phase | sessions | throughput (acked/s) | latency p50 / p99 / max (ms) | server CPU | client CPU | other CPU | notes |");
        println!("|---|---|---|---|---|---|---|---|");
        let row = |name: &str, r: &PhaseResult, note: String| {
            println!(
                "| {name} | {} (connect {:.1} s) | {:.0} | {:.1} / {:.1} / {:.1} (mean {:.1}) | {:.2} cores | {:.2} cores | {:.2} cores | {note} |",
                r.connected, r.connect_secs, r.throughput, r.p50_ms, r.p99_ms, r.max_ms, r.mean_ms,
                r.cpu.server, r.cpu.client, (r.cpu.machine - r.cpu.server - r.cpu.client).max(0.0)
            )
        };
        let errs = |r: &PhaseResult| match &r.first_error {
            Some(e) => format!("; {} session errors, first: {e}", r.errors),
            None => String::new(),
        };
        row(
            "A-max: controller, closed loop",
            &a_max,
            format!(
                "{} in flight/session; sent {} acked {}{}",
                args.inflight,
                a_max.sent,
                a_max.acked,
                errs(&a_max)
            ),
        );
        if let Some(r) = &a_rate {
            row(
                "A-rate: controller, open loop",
                r,
                format!(
                    "offered {} /s; skipped (≥{} outstanding) {}; latency from scheduled send{}",
                    args.rate,
                    args.max_outstanding,
                    r.skipped,
                    errs(r)
                ),
            );
        }
        if let Some(r) = &bare {
            row(
                "C-bare: tonic+rustls ack-only, closed loop",
                r,
                format!("{} in flight/session{}", args.inflight, errs(r)),
            );
        }
        println!();
        for (name, r) in [("A-max", Some(&a_max)), ("A-rate", a_rate.as_ref())] {
            if let Some(t) = r.and_then(|r| r.server_threads.as_ref()) {
                println!("controller threads during {name}: {t}");
            }
        }
        if let Some(i) = &idle {
            println!();
            println!(
                "B-idle: {} sessions up ({} failed) in {:.1} s, held {} s with heartbeats every {} s; \
                 controller sees {} online; {} heartbeats acked (max {:.1} ms); {} errors after up{}",
                i.up,
                i.failed,
                i.connect_secs,
                args.hold,
                args.heartbeat,
                i.online.map_or("?".into(), |o| o.to_string()),
                i.heartbeats,
                i.hb_max_ms,
                i.errors_after_up,
                i.first_error.as_ref().map_or(String::new(), |e| format!(" (first: {e})"))
            );
            println!(
                "B-idle: controller VmRSS {} with all sessions up (before phase B: {}; after the A phases: {}); \
                 VmHWM so far {}; controller CPU while idle {:.3} cores",
                mib(i.rss_kib),
                mib(i.rss_before_kib),
                mib(rss_after_a),
                mib(i.hwm_kib),
                i.server_cpu_idle
            );
        }
        if ctl_log_errors > 0 {
            println!("controller log: {ctl_log_errors} error lines (see serve.log)");
        }
        println!();
        println!("| target | measured | verdict |");
        println!("|---|---|---|");
        if let Some(r) = &a_rate {
            println!(
                "| {} sessions sustain ≥ {} reports/s | {:.0}/s acked at offered {} (closed-loop max {:.0}/s) | {} |",
                args.sessions,
                args.rate,
                r.throughput,
                args.rate,
                a_max.throughput,
                verdict(r.throughput >= args.rate as f64 * 0.99 && r.errors == 0)
            );
            println!(
                "| p99 ingest latency < 50 ms at that rate | p99 {:.1} ms | {} |",
                r.p99_ms,
                verdict(r.p99_ms < 50.0)
            );
        }
        if let Some(i) = &idle {
            println!(
                "| {} idle sessions < 1 GiB controller RSS | {} (HWM {}) | {} |",
                args.idle,
                mib(i.rss_kib),
                mib(i.hwm_kib),
                verdict(i.rss_kib < 1024 * 1024 && i.failed == 0)
            );
        }
        if let Some(b) = &bare {
            let ratio = a_max.throughput / b.throughput;
            println!(
                "| throughput ratio ours / bare ≥ 0.5 | {:.0} / {:.0} = {ratio:.3} | {} |",
                a_max.throughput,
                b.throughput,
                verdict(ratio >= 0.5)
            );
        }
    });
}
