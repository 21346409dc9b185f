//! `fleetward demo`: a controller and three simulated seed nodes on loopback, in a temporary
//! directory; the fleet, its drift, the rollout plan, and a complete rolling update with live
//! progress. For a newcomer without a Proxmox cluster.
//!
//! Nothing here touches the machine it runs on: the controller serves in this process on
//! 127.0.0.1 (port chosen by the kernel) from a data directory under the temporary
//! directory, and every node is a `fleetward-agent run --simulate` process acting on its own
//! fixture root there (built by `fleetward-agent sim-root` from the seed fixtures, which are
//! built into this binary: see `controller/build.rs`; `--fixtures DIR` overrides them). The
//! controller never imports the agent crate: the demo talks to the agent only as a process,
//! and to the controller only through the operator API, with the CLI's own code
//! ([`crate::cli`]) and rendering.
//!
//! Layout of the temporary directory: `controller/` (data dir; `controller.log`),
//! `fixtures/` (the built-in seed fixtures, unpacked; absent with `--fixtures`),
//! `nodes/<name>/root` (the node's tree), `nodes/<name>/state` (its state dir, `agent.log`,
//! `sim-actions.jsonl`).

use crate::cli::rollout::{state_word, status_out, RebootArg, RolloutCmd, Selection};
use crate::cli::{self, output::table, ClientCommand, ClientOpts, Format, OptsOnly};
use crate::config::Config;
use crate::paths::DataDir;
use fleetward_proto::api::{self, operator_service_client::OperatorServiceClient};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

// `SEED`: the seed fixtures (`agent/tests/fixtures/seed`), embedded by `build.rs`.
include!(concat!(env!("OUT_DIR"), "/seed_fixtures.rs"));

/// Seconds each simulated action takes by default (a simulated reboot takes 4 times as long).
pub const DEFAULT_SPEED: f64 = 0.5;
/// The kernel the simulated apt offers every node.
pub const NEW_KERNEL: &str = "6.14.11-1-pve";
/// The packages the simulated apt offers besides the kernel.
const PENDING_PACKAGES: [(&str, &str); 2] = [("proxmox-ve", "9.0.1"), ("pve-manager", "9.0.12")];

/// The whole demo gives up after this long: two minutes plus, per node, a generous dozen
/// actions and two reboots at `speed`.
pub fn demo_timeout(speed: f64, nodes: usize) -> Duration {
    let per_node = 12.0 * speed + 2.0 * reboot_secs(speed);
    Duration::from_secs(120) + Duration::from_secs_f64(per_node * nodes as f64)
}

#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// A directory of fixture directories, one per node (default: the built-in seed
    /// fixtures, see [`unpack_seed`]).
    pub fixtures: Option<PathBuf>,
    /// Keep the temporary directory.
    pub keep: bool,
    /// Seconds per simulated action.
    pub speed: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{0}")]
    Setup(String),
    #[error("{what}: {message}")]
    Api { what: String, message: String },
    #[error("the rolling update did not complete: {0}")]
    NotCompleted(String),
    #[error("interrupted")]
    Interrupted,
}

impl DemoError {
    fn setup(what: impl std::fmt::Display, e: impl std::fmt::Display) -> Self {
        DemoError::Setup(format!("{what}: {e}"))
    }
}

fn api_err(what: &str) -> impl FnOnce(cli::CliError) -> DemoError + '_ {
    move |e| DemoError::Api {
        what: what.into(),
        message: e.message().to_owned(),
    }
}

fn status_err(what: &str) -> impl FnOnce(tonic::Status) -> DemoError + '_ {
    move |e| api_err(what)(cli::CliError::from(e))
}

/// `fleetward-agent` beside this executable.
pub fn find_agent() -> Result<PathBuf, DemoError> {
    let exe = std::env::current_exe().map_err(|e| DemoError::setup("current executable", e))?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let agent = dir.join("fleetward-agent");
    if agent.is_file() {
        Ok(agent)
    } else {
        Err(DemoError::Setup(format!(
            "{} not found: the demo runs the agent binary that sits beside `fleetward`; \
             install the fleetward-agent package too, or build both with \
             `cargo build --release --workspace --bins` and run target/release/fleetward demo",
            agent.display()
        )))
    }
}

/// The node fixtures: every directory under `dir` holding a `root/` or a `base`, by name.
pub fn find_fixtures(dir: &Path) -> Result<Vec<(String, PathBuf)>, DemoError> {
    let missing = |e: std::io::Error| DemoError::Setup(format!("fixtures {}: {e}", dir.display()));
    let mut nodes = Vec::new();
    for e in std::fs::read_dir(dir).map_err(missing)? {
        let e = e.map_err(missing)?;
        let p = e.path();
        if p.join("root").is_dir() || p.join("base").is_file() {
            let p = std::fs::canonicalize(&p).unwrap_or(p);
            nodes.push((e.file_name().to_string_lossy().into_owned(), p));
        }
    }
    nodes.sort();
    if nodes.is_empty() {
        return Err(DemoError::Setup(format!(
            "no node fixtures (directories with root/) in {}",
            dir.display()
        )));
    }
    Ok(nodes)
}

/// Writes the built-in seed fixtures (one directory per node, as in the source checkout's
/// `agent/tests/fixtures/seed`) into `dir`, which is created.
pub fn unpack_seed(dir: &Path) -> Result<(), DemoError> {
    use std::os::unix::fs::PermissionsExt;
    for (rel, mode, bytes) in SEED {
        let rel = Path::new(rel);
        if !rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
        {
            return Err(DemoError::Setup(format!(
                "built-in fixture path {} is not relative",
                rel.display()
            )));
        }
        let path = dir.join(rel);
        let err = |e: std::io::Error| DemoError::setup(path.display(), e);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(err)?;
        }
        std::fs::write(&path, bytes).map_err(err)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).map_err(err)?;
    }
    Ok(())
}

/// The `[rollout]` settings of the demo: a fast tick, timeouts that halt within about half a
/// minute (longer with a slow `speed`), the last node hosting the controller.
pub fn demo_config(host_node: &str, speed: f64) -> String {
    let reboot = reboot_secs(speed);
    let slack = |x: f64| (30 + (x * 4.0).ceil() as u64) * 1000;
    format!(
        "\n# fleetward demo\nhost_node = {host_node:?}\n\n[rollout]\n\
         action_ms = {}\nrefresh_ms = {}\nreboot_ms = {}\n\
         post_reboot_ms = {}\nmax_silence_ms = 10000\ntick_ms = 200\n",
        slack(speed),
        slack(speed),
        slack(reboot),
        slack(speed),
    )
}

/// A simulated reboot takes four actions' time (at least 0.3 s).
pub fn reboot_secs(speed: f64) -> f64 {
    (speed * 4.0).max(0.3)
}

fn pending_json() -> String {
    let packages: Vec<Value> = PENDING_PACKAGES
        .iter()
        .map(|(p, v)| serde_json::json!({"package": p, "version": v}))
        .collect();
    serde_json::json!({"packages": packages, "kernel": NEW_KERNEL}).to_string() + "\n"
}

fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

fn heading(text: &str) {
    say(&format!("\n== {text}\n"));
}

/// Run the demo; the temporary directory is removed at the end unless `keep`.
pub fn run(opts: &DemoOptions) -> Result<(), DemoError> {
    let agent = find_agent()?;
    let given = opts.fixtures.as_deref().map(find_fixtures).transpose()?;
    let tmp = tempfile::Builder::new()
        .prefix("fleetward-demo-")
        .tempdir()
        .map_err(|e| DemoError::setup("creating a temporary directory", e))?;
    let fixtures = match given {
        Some(f) => f,
        None => {
            let dir = tmp.path().join("fixtures");
            unpack_seed(&dir)?;
            find_fixtures(&dir)?
        }
    };
    say(&format!(
        "fleetward demo: a controller and {} simulated nodes on 127.0.0.1, in {}\n",
        fixtures.len(),
        tmp.path().display()
    ));
    log_to(&tmp.path().join("controller.log"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| DemoError::setup("starting the async runtime", e))?;
    let result = rt.block_on(demo(tmp.path(), &agent, &fixtures, opts));
    drop(rt);
    if opts.keep {
        let path = tmp.keep();
        say(&format!(
            "kept {} (controller/ is the data dir; logs: controller.log, nodes/*/state/agent.log)\n",
            path.display()
        ));
    } else {
        if matches!(
            result,
            Err(DemoError::NotCompleted(_) | DemoError::Setup(_))
        ) {
            say_log_problems(tmp.path());
            say("(run it again with --keep to keep the controller's and the agents' logs)\n");
        }
        let path = tmp.path().to_path_buf();
        match tmp.close() {
            Ok(()) => say(&format!("removed {}\n", path.display())),
            Err(e) => eprintln!("fleetward demo: removing {}: {e}", path.display()),
        }
    }
    result
}

/// The last warnings and errors of the controller's and the agents' logs, before they go.
fn say_log_problems(dir: &Path) {
    let mut logs = vec![dir.join("controller.log")];
    if let Ok(nodes) = std::fs::read_dir(dir.join("nodes")) {
        let mut agents: Vec<_> = nodes
            .flatten()
            .map(|e| e.path().join("state/agent.log"))
            .collect();
        agents.sort();
        logs.extend(agents);
    }
    for log in logs {
        let Ok(text) = std::fs::read_to_string(&log) else {
            continue;
        };
        let problems: Vec<&str> = text
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .collect();
        if let Some(last) = problems.get(problems.len().saturating_sub(10)..) {
            if !last.is_empty() {
                let name = log.strip_prefix(dir).unwrap_or(&log).display().to_string();
                say(&format!(
                    "last warnings in {name}:\n  {}\n",
                    last.join("\n  ")
                ));
            }
        }
    }
}

/// The controller's log goes to a file: the terminal shows the demo.
fn log_to(path: &Path) {
    let Ok(file) = std::fs::File::create(path) else {
        return;
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .try_init();
}

/// The in-process controller: its stop signal and its task.
type Server = (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), crate::serve::ServeError>>,
);

/// The running parts; stopped on every way out of [`demo`].
struct Running {
    agents: Vec<Child>,
    server: Option<Server>,
}

impl Running {
    async fn stop(&mut self) {
        for a in &mut self.agents {
            let _ = a.kill().await;
        }
        self.agents.clear();
        if let Some((stop, task)) = self.server.take() {
            let _ = stop.send(());
            match tokio::time::timeout(Duration::from_secs(15), task).await {
                Ok(Ok(Err(e))) => eprintln!("fleetward demo: controller: {e}"),
                Ok(_) => {}
                Err(_) => eprintln!("fleetward demo: the controller did not stop in time"),
            }
        }
    }
}

async fn demo(
    tmp: &Path,
    agent: &Path,
    fixtures: &[(String, PathBuf)],
    opts: &DemoOptions,
) -> Result<(), DemoError> {
    let mut running = Running {
        agents: Vec::new(),
        server: None,
    };
    let limit = demo_timeout(opts.speed, fixtures.len());
    let body = steps(tmp, agent, fixtures, opts, &mut running);
    let result = tokio::select! {
        r = tokio::time::timeout(limit, body) => r.unwrap_or_else(|_| {
            Err(DemoError::NotCompleted(format!("gave up after {}s", limit.as_secs())))
        }),
        () = interrupted() => Err(DemoError::Interrupted),
    };
    say("\nstopping the agents and the controller\n");
    running.stop().await;
    result
}

async fn interrupted() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

async fn steps(
    tmp: &Path,
    agent: &Path,
    fixtures: &[(String, PathBuf)],
    opts: &DemoOptions,
    running: &mut Running,
) -> Result<(), DemoError> {
    let started = Instant::now();
    let names: Vec<&str> = fixtures.iter().map(|(n, _)| n.as_str()).collect();
    let host = names[names.len() - 1];

    // The controller: init, the demo's settings, serve in this process.
    let dir = DataDir::new(tmp.join("controller"));
    crate::init::init(&dir, "demo", Some("127.0.0.1:0"), &[])
        .map_err(|e| DemoError::setup("fleetward init", e))?;
    let text = std::fs::read_to_string(dir.config())
        .map_err(|e| DemoError::setup(dir.config().display(), e))?
        + &demo_config(host, opts.speed);
    std::fs::write(dir.config(), text).map_err(|e| DemoError::setup(dir.config().display(), e))?;
    let cfg = Config::load(&dir.config()).map_err(|e| DemoError::setup("configuration", e))?;
    let loaded = crate::serve::load(&dir, cfg)
        .map_err(|e| DemoError::setup("starting the controller", e))?;
    let listener = crate::serve::bind("127.0.0.1:0")
        .await
        .map_err(|e| DemoError::setup("listening", e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| DemoError::setup("listening", e))?;
    fleetward_pki::write_public(&dir.listen_addr(), &format!("{addr}\n"))
        .map_err(|e| DemoError::setup(dir.listen_addr().display(), e))?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(crate::serve::run(loaded, listener, async move {
        let _ = stop_rx.await;
    }));
    running.server = Some((stop_tx, task));
    let url = format!("https://{addr}");
    say(&format!(
        "controller: {url} (data dir {}; {host} hosts it, so a rollout takes it last)\n\
         while the demo runs, try: fleetward nodes --data-dir {}\n",
        dir.root().display(),
        dir.root().display()
    ));
    let copts = ClientOpts {
        data_dir: Some(dir.root().to_path_buf()),
        config: None,
        controller: Some(url.clone()),
        output: Format::Text,
    };
    let (mut client, _) = cli::connect_isolated(&copts)
        .await
        .map_err(api_err("connecting to the controller"))?;

    // The nodes: a root from the fixture, the pending upgrade, a token, enroll, run.
    let reboot = reboot_secs(opts.speed);
    say(&format!(
        "simulated actions take {}s, simulated reboots {}s (--speed)\n",
        opts.speed, reboot
    ));
    for (name, fixture) in fixtures {
        let node_dir = tmp.join("nodes").join(name);
        let (root, state) = (node_dir.join("root"), node_dir.join("state"));
        process(
            Command::new(agent)
                .arg("sim-root")
                .arg("--fixture")
                .arg(fixture)
                .arg("--out")
                .arg(&root),
            &format!("{name}: fleetward-agent sim-root"),
        )
        .await?;
        let sim = root.join("var/lib/fleetward-sim");
        std::fs::create_dir_all(&sim).map_err(|e| DemoError::setup(sim.display(), e))?;
        std::fs::write(sim.join("pending.json"), pending_json())
            .map_err(|e| DemoError::setup(sim.display(), e))?;
        let token = client
            .create_token(api::CreateTokenRequest {
                ttl_seconds: 600,
                node_name: Some(name.clone()),
            })
            .await
            .map_err(status_err("creating a join token"))?
            .into_inner();
        std::fs::create_dir_all(&state).map_err(|e| DemoError::setup(state.display(), e))?;
        process(
            Command::new(agent)
                .args(["enroll", "--controller", &url, "--token", &token.token])
                .args(["--ca-sha256", &token.ca_sha256, "--name", name])
                .arg("--state-dir")
                .arg(&state)
                .arg("--root")
                .arg(&root),
            &format!("{name}: fleetward-agent enroll"),
        )
        .await?;
        let log = std::fs::File::create(state.join("agent.log"))
            .map_err(|e| DemoError::setup(state.join("agent.log").display(), e))?;
        let child = Command::new(agent)
            .args(["run", "--interval", "1", "--heartbeat", "1", "--simulate"])
            .arg(format!("--sim-action-secs={}", opts.speed))
            .arg(format!("--sim-reboot-secs={reboot}"))
            .arg("--state-dir")
            .arg(&state)
            .arg("--root")
            .arg(&root)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| DemoError::setup(format!("{name}: starting fleetward-agent run"), e))?;
        running.agents.push(child);
        say(&format!(
            "{name}: node tree built from {} (fleetward-agent sim-root), enrolled, \
             running (fleetward-agent run --simulate)\n",
            fixture.display()
        ));
    }
    wait_reported(&mut client, &names).await?;

    heading("The fleet (fleetward nodes)");
    say(&show(
        ClientCommand::Nodes(OptsOnly {
            opts: copts.clone(),
        }),
        "nodes",
    )
    .await?);
    heading("Drift between the nodes (fleetward drift)");
    say(&show(
        ClientCommand::Drift(OptsOnly {
            opts: copts.clone(),
        }),
        "drift",
    )
    .await?);
    heading("The plan (fleetward rollout plan --refresh-lists)");
    let selection = || Selection {
        nodes: Vec::new(),
        max_unavailable: 1,
        reboot: RebootArg::IfNeeded,
    };
    let plan = RolloutCmd::Plan {
        sel: selection(),
        refresh_lists: true,
        opts: copts.clone(),
    };
    say(&show(ClientCommand::Rollout { cmd: plan }, "rollout plan").await?);

    let before = kernels(&mut client, &names).await?;
    heading("Rolling update (fleetward rollout start --yes), live");
    let start = RolloutCmd::Start {
        sel: selection(),
        window: None,
        refresh_lists: false,
        yes: true,
        watch: false,
        opts: copts.clone(),
    };
    let first = show(ClientCommand::Rollout { cmd: start }, "rollout start").await?;
    say(first.lines().next().unwrap_or_default());
    say("\n");
    let rollout_started = Instant::now();
    let (rollout, last) = watch(&mut client).await?;
    heading("Result (fleetward rollout status)");
    say(&status_out(&last, Format::Text).map_err(api_err("rollout status"))?);

    let after = kernels(&mut client, &names).await?;
    let rows: Vec<Vec<String>> = names
        .iter()
        .map(|n| {
            let (b, a) = (before.get(*n), after.get(*n));
            let kernel = |k: Option<&(String, String)>| k.map_or("-".into(), |k| k.0.clone());
            let rebooted = match (b, a) {
                (Some(b), Some(a)) if b.1 != a.1 => "yes (new boot id)",
                _ => "no",
            };
            vec![n.to_string(), kernel(b), kernel(a), rebooted.into()]
        })
        .collect();
    heading("Kernels (from the nodes' latest reports)");
    say(&table(&["NODE", "BEFORE", "NOW", "REBOOTED"], &rows));

    let on_new = after.values().filter(|(k, _)| k == NEW_KERNEL).count();
    let id = &rollout.id;
    if rollout.state() != api::RolloutState::Completed {
        let word = state_word(&rollout);
        return Err(DemoError::NotCompleted(format!(
            "rollout {id} is {word}; {on_new} of {} nodes run {NEW_KERNEL}",
            names.len()
        )));
    }
    say(&format!(
        "\nrollout {id} completed: {on_new} of {} nodes upgraded and rebooted one at a time into \
         {NEW_KERNEL} in {:.1}s (demo total {:.1}s)\n",
        names.len(),
        rollout_started.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    ));
    if on_new != names.len() {
        return Err(DemoError::NotCompleted(format!(
            "only {on_new} of {} nodes report {NEW_KERNEL}",
            names.len()
        )));
    }
    Ok(())
}

/// Run a short-lived agent command; its stdout, or an error with its stderr.
async fn process(cmd: &mut Command, what: &str) -> Result<String, DemoError> {
    let out = cmd
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| DemoError::setup(what, e))?;
    if !out.status.success() {
        return Err(DemoError::Setup(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A CLI command's text output, through the CLI's own code.
async fn show(cmd: ClientCommand, what: &str) -> Result<String, DemoError> {
    cli::execute_isolated(&cmd).await.map_err(api_err(what))
}

/// Waits until every node is online and has reported.
async fn wait_reported(
    client: &mut OperatorServiceClient<Channel>,
    names: &[&str],
) -> Result<(), DemoError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut missing = Vec::new();
        for n in names {
            let r = client
                .get_node(api::GetNodeRequest {
                    name: n.to_string(),
                })
                .await;
            let online = r.ok().map(|r| r.into_inner()).is_some_and(|r| {
                r.report_json.is_some()
                    && r.node
                        .is_some_and(|n| n.session_state() == api::SessionState::Online)
            });
            if !online {
                missing.push(*n);
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(DemoError::Setup(format!(
                "{} did not connect and report within 30 s (see nodes/*/state/agent.log; \
                 run with --keep to keep them)",
                missing.join(", ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Per node: (running kernel, boot id) from its latest report.
async fn kernels(
    client: &mut OperatorServiceClient<Channel>,
    names: &[&str],
) -> Result<BTreeMap<String, (String, String)>, DemoError> {
    let mut out = BTreeMap::new();
    for n in names {
        let resp = client
            .get_node(api::GetNodeRequest {
                name: n.to_string(),
            })
            .await
            .map_err(status_err("node show"))?
            .into_inner();
        let Some(report) = resp
            .report_json
            .and_then(|j| serde_json::from_slice::<Value>(&j).ok())
        else {
            continue;
        };
        let node = &report["facts"]["node"];
        let s = |v: &Value| v.as_str().unwrap_or("-").to_owned();
        out.insert(
            n.to_string(),
            (s(&node["running_kernel"]), s(&node["boot_id"])),
        );
    }
    Ok(out)
}

/// What a node is doing in a phase, for the live view.
fn phase_text(p: api::RolloutPhase) -> &'static str {
    use api::RolloutPhase as Phase;
    match p {
        Phase::Unspecified => "unknown",
        Phase::Pending => "waiting for its turn",
        Phase::MaintenanceOn => "HA maintenance mode on",
        Phase::WaitGuests => "waiting for HA guests to leave",
        Phase::AptUpdate => "apt-get update",
        Phase::Upgrade => "apt-get dist-upgrade",
        Phase::BootCheck => "checking that every ESP holds the next kernel",
        Phase::BootRefresh => "proxmox-boot-tool refresh",
        Phase::CephNoout => "ceph osd set noout (its OSDs stay in while it reboots)",
        Phase::CephUnset => "ceph osd unset noout",
        Phase::AwaitReturn => "rebooting: waiting for a new boot id",
        Phase::PostRebootGate => "back: checking kernel, quorum, findings, guests",
        Phase::MaintenanceOff => "HA maintenance mode off",
        Phase::Done => "done",
        Phase::Skipped => "skipped",
    }
}

/// Follows the newest rollout, one line per phase change and per new output line, until it
/// completes, halts or is aborted. Returns the rollout and its last status.
async fn watch(
    client: &mut OperatorServiceClient<Channel>,
) -> Result<(api::Rollout, api::RolloutStatusResponse), DemoError> {
    let t0 = Instant::now();
    let mut phases: BTreeMap<String, api::RolloutPhase> = BTreeMap::new();
    let mut lines: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let resp = client
            .rollout_status(api::RolloutStatusRequest { id: String::new() })
            .await
            .map_err(status_err("rollout status"))?
            .into_inner();
        let r = resp.rollout.clone().ok_or_else(|| DemoError::Api {
            what: "rollout status".into(),
            message: "the controller sent no rollout".into(),
        })?;
        let at = t0.elapsed().as_secs_f64();
        for out in &resp.output {
            if let Some(last) = out.lines.last() {
                if lines.get(&out.node) != Some(last) {
                    let clean: String = last
                        .chars()
                        .map(|c| if c.is_control() { ' ' } else { c })
                        .collect();
                    say(&format!("[{at:5.1}s] {:<8} > {clean}\n", out.node));
                    lines.insert(out.node.clone(), last.clone());
                }
            }
        }
        for n in &r.nodes {
            if phases.insert(n.name.clone(), n.phase()) != Some(n.phase()) {
                say(&format!(
                    "[{at:5.1}s] {:<8} {:<15} {}\n",
                    n.name,
                    format!("{:?}", n.phase()),
                    phase_text(n.phase())
                ));
            }
        }
        match r.state() {
            api::RolloutState::Halted => {
                let h = r.halt.clone().unwrap_or_default();
                say(&format!(
                    "[{at:5.1}s] HALTED at {} (gate {:?}): {}\n\
                     (on a real cluster: fix the cause, then `fleetward rollout resume`)\n",
                    h.node,
                    h.gate(),
                    h.reason
                ));
                return Ok((r, resp));
            }
            api::RolloutState::Completed | api::RolloutState::Aborted => return Ok((r, resp)),
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_config_is_valid_and_scales_with_speed() {
        let base = Config::new("demo", Some("127.0.0.1:0")).to_commented_toml();
        let cfg = Config::parse(
            Path::new("x"),
            &(base.clone() + &demo_config("pve-03", 0.5)),
        )
        .unwrap();
        assert_eq!(cfg.host_node.as_deref(), Some("pve-03"));
        assert_eq!(cfg.rollout.tick_ms, 200);
        assert_eq!(cfg.rollout.timeouts.reboot_ms, 38_000);
        let slow = Config::parse(Path::new("x"), &(base + &demo_config("n", 10.0))).unwrap();
        assert!(slow.rollout.timeouts.action_ms > 40_000);
        assert!(slow.rollout.timeouts.reboot_ms as f64 > reboot_secs(10.0) * 2000.0);
        assert_eq!(reboot_secs(0.0), 0.3);
        assert!(demo_timeout(0.5, 3) >= Duration::from_secs(120));
        assert!(demo_timeout(60.0, 3) > Duration::from_secs(3 * (12 * 60 + 2 * 240)));
    }

    #[test]
    fn pending_offers_the_new_kernel() {
        let v: Value = serde_json::from_str(&pending_json()).unwrap();
        assert_eq!(v["kernel"], NEW_KERNEL);
        assert_eq!(v["packages"][0]["package"], "proxmox-ve");
    }

    #[test]
    fn fixtures_are_found_or_explained() {
        let tmp = tempfile::tempdir().unwrap();
        unpack_seed(&tmp.path().join("seed")).unwrap();
        let seed = find_fixtures(&tmp.path().join("seed")).unwrap();
        let names: Vec<&str> = seed.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["pve-01", "pve-02", "pve-03"]);
        let e = find_fixtures(Path::new("/nonexistent/seed")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/seed"), "{e}");
        let empty = tempfile::tempdir().unwrap();
        let e = find_fixtures(empty.path()).unwrap_err();
        assert!(e.to_string().contains("no node fixtures"), "{e}");
    }

    /// The embedded seed is the checkout's, less the tests' expectations.
    #[test]
    fn the_built_in_seed_is_the_checkouts() {
        let tmp = tempfile::tempdir().unwrap();
        unpack_seed(tmp.path()).unwrap();
        let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/tests/fixtures/seed");
        for (rel, _, bytes) in SEED {
            assert_eq!(
                std::fs::read(tmp.path().join(rel)).unwrap(),
                *bytes,
                "{rel}"
            );
            assert_eq!(std::fs::read(checkout.join(rel)).unwrap(), *bytes, "{rel}");
            assert!(!rel.ends_with("expected.json"), "{rel}");
        }
        for node in ["pve-01", "pve-02", "pve-03"] {
            let prefix = format!("{node}/root/");
            let files = SEED
                .iter()
                .filter(|(r, _, _)| r.starts_with(&prefix))
                .count();
            let mut on_disk = 0;
            let mut dirs = vec![checkout.join(node).join("root")];
            while let Some(d) = dirs.pop() {
                for e in std::fs::read_dir(d).unwrap().flatten() {
                    if e.file_type().unwrap().is_dir() {
                        dirs.push(e.path());
                    } else {
                        on_disk += 1;
                    }
                }
            }
            assert_eq!(files, on_disk, "{node}");
            assert!(SEED
                .iter()
                .any(|(r, _, _)| r.starts_with(&format!("{node}/esp/"))));
        }
    }
}
