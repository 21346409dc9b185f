//! Harness for end-to-end tests: start the real `fleetward` controller in a private data
//! directory on 127.0.0.1 (port chosen by the kernel), talk to it with the real CLI or with
//! raw gRPC clients holding certificates the test makes. Processes are killed on drop.
//!
//! The binaries come from the workspace's target directory; `.ci/run` builds them
//! (`cargo build --workspace --bins`) before `cargo test`.
#![forbid(unsafe_code)]

pub mod fakefleet;
/// The agent's fixture builder (seed trees with real FAT images), shared with `agent/tests`.
#[path = "../../agent/tests/support/mod.rs"]
pub mod support;

use fleetward_pki::{generate_key_and_csr, Ca, Identity, KeyPairPem, Role};
use fleetward_proto::api::{
    agent_service_client::AgentServiceClient, operator_service_client::OperatorServiceClient,
};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity as TlsIdentity};

/// A workspace binary (`fleetward`, `fleetward-agent`), built by `cargo build --bins`.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (.ci/run does)",
        path.display()
    );
    path
}

/// Wait until `f` returns Some, or panic after `timeout` naming `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running controller with its own data directory: a `fleetward serve` process, or
/// ([`Controller::start_in_process`]) the same server in this test process, so the test can
/// use the server's own API ([`Controller::server`]: `send_command`, `subscribe`).
pub struct Controller {
    pub dir: tempfile::TempDir,
    pub addr: String,
    child: Option<Child>,
    in_process: Option<InProcess>,
}

/// `controller.toml` text lifting the per-node report rate limit, for tests and benchmarks
/// whose nodes report as fast as they can (see `[ingest]` in the README).
pub const NO_RATE_LIMIT: &str =
    "[ingest]\nreports_per_min = 1000000000\nreport_burst = 1000000000\n\
     report_bytes_per_min = 1000000000000000\nreport_burst_bytes = 1000000000000000\n";

/// `serve` on its own thread and runtime in this process.
struct InProcess {
    server: std::sync::Arc<fleetward_controller::state::Controller>,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Controller {
    /// `fleetward init` + `fleetward serve --listen 127.0.0.1:0`.
    pub fn start() -> Controller {
        Self::start_with(&[])
    }

    /// Like [`Controller::start`], with `key = value` settings replacing `init`'s in
    /// `controller.toml` (`"# key"` replaces a commented-out example line).
    pub fn start_with(settings: &[(&str, &str)]) -> Controller {
        let mut c = Self::init(settings);
        c.restart();
        c
    }

    /// Like [`Controller::start_with`], with `extra` TOML appended to `controller.toml`
    /// (sections such as `[shutdown]` that `init` does not write).
    pub fn start_with_toml(settings: &[(&str, &str)], extra: &str) -> Controller {
        let mut c = Self::init(settings);
        let config = c.dir.path().join("controller.toml");
        let text = std::fs::read_to_string(&config).expect("controller.toml");
        std::fs::write(&config, format!("{text}\n{extra}\n")).expect("write controller.toml");
        c.restart();
        c
    }

    /// `fleetward init` (by the binary), then the server in this process on 127.0.0.1:0
    /// (`listen.addr` written as `serve` does, so the CLI finds it).
    pub fn start_in_process() -> Controller {
        use fleetward_controller::{config::Config, paths::DataDir, serve};
        let mut c = Self::init(&[]);
        let dir = DataDir::new(c.dir.path());
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let mut cfg = Config::load(&dir.config()).expect("controller.toml");
                cfg.data_dir = Some(dir.root().to_path_buf());
                let loaded = serve::load(&dir, cfg).expect("serve::load");
                let server = loaded.controller.clone();
                let listener = serve::bind("127.0.0.1:0").await.expect("bind");
                let addr = listener.local_addr().expect("local_addr");
                fleetward_pki::write_public(&dir.listen_addr(), &format!("{addr}\n"))
                    .expect("listen.addr");
                ready_tx.send((server, addr.to_string())).expect("ready");
                serve::run(loaded, listener, async {
                    let _ = stopped.await;
                })
                .await
                .expect("serve::run");
            });
        });
        let (server, addr) = ready
            .recv_timeout(Duration::from_secs(20))
            .expect("the in-process controller did not start");
        c.addr = addr;
        c.in_process = Some(InProcess {
            server,
            stop,
            thread,
        });
        c
    }

    /// The in-process server (only after [`Controller::start_in_process`]).
    pub fn server(&self) -> std::sync::Arc<fleetward_controller::state::Controller> {
        self.in_process
            .as_ref()
            .expect("not an in-process controller: use Controller::start_in_process")
            .server
            .clone()
    }

    fn init(settings: &[(&str, &str)]) -> Controller {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new(bin("fleetward"))
            .args(["init", "--name", "e2e", "--data-dir"])
            .arg(dir.path())
            .output()
            .expect("fleetward init");
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let config = dir.path().join("controller.toml");
        let mut text = std::fs::read_to_string(&config).expect("controller.toml");
        for (key, value) in settings {
            text = text
                .lines()
                .map(|l| {
                    // `("# policy", v)` turns init's commented-out example into a setting.
                    if l.starts_with(&format!("{key} =")) {
                        format!("{} = {value}", key.trim_start_matches("# "))
                    } else {
                        l.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
        }
        std::fs::write(&config, text + "\n").expect("write controller.toml");
        Controller {
            dir,
            addr: String::new(),
            child: None,
            in_process: None,
        }
    }

    /// Start (again) `serve` on the same data dir and, after the first start, the same
    /// address (agents reconnect to the URL they enrolled with).
    pub fn restart(&mut self) {
        self.kill();
        let listen = if self.addr.is_empty() {
            "127.0.0.1:0".to_string()
        } else {
            self.addr.clone()
        };
        let addr_file = self.dir.path().join("listen.addr");
        let _ = std::fs::remove_file(&addr_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("serve.log"))
            .expect("log file");
        let mut cmd = Command::new(bin("fleetward"));
        // The controller's own hostname, as a test decides it (`set_test_hostname`).
        if let Ok(h) = std::fs::read_to_string(self.dir.path().join("test-hostname")) {
            cmd.env("FLEETWARD_TEST_HOSTNAME", h.trim());
        }
        let child = cmd
            .args(["serve", "--listen", &listen, "--data-dir"])
            .arg(self.dir.path())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("fleetward serve");
        self.child = Some(child);
        self.addr = wait_for("the controller to listen", Duration::from_secs(20), || {
            let a = std::fs::read_to_string(&addr_file).ok()?;
            let a = a.trim().to_string();
            std::net::TcpStream::connect(&a).ok().map(|_| a)
        });
    }

    /// The hostname the controller believes it has from its next (re)start on
    /// (`FLEETWARD_TEST_HOSTNAME`): it then runs "on" the node reporting that hostname.
    pub fn set_test_hostname(&self, hostname: &str) {
        std::fs::write(self.dir.path().join("test-hostname"), hostname).expect("test-hostname");
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, no clean-up: for crash tests. (An in-process server is shut down.)
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(p) = self.in_process.take() {
            let _ = p.stop.send(());
            let _ = p.thread.join();
        }
    }

    /// Whether the serve process is still running.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    pub fn ca(&self) -> Ca {
        Ca::load(&self.dir.path().join("ca")).expect("load CA")
    }

    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ca/ca.crt")).expect("ca.crt")
    }

    /// Run the operator CLI against this controller (`--data-dir`), JSON output.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin("fleetward"))
            .args(args)
            .args(["--output", "json", "--data-dir"])
            .arg(self.dir.path())
            .output()
            .expect("fleetward cli")
    }

    /// `fleetward <args> --data-dir <dir>` in its text form (for commands with no JSON form).
    pub fn cli_text(&self, args: &[&str]) -> Output {
        Command::new(bin("fleetward"))
            .args(args)
            .arg("--data-dir")
            .arg(self.dir.path())
            .output()
            .expect("fleetward cli")
    }

    /// `cli` that must succeed; returns its parsed JSON.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "fleetward {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "fleetward {args:?}: not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// A TLS channel trusting this controller's CA, with an optional client identity.
    pub async fn channel(
        &self,
        client: Option<(&str, &str)>,
    ) -> Result<Channel, tonic::transport::Error> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.ca_pem()))
            .domain_name("localhost");
        if let Some((cert, key)) = client {
            tls = tls.identity(TlsIdentity::from_pem(cert, key));
        }
        Channel::from_shared(format!("https://{}", self.addr))
            .expect("url")
            .tls_config(tls)?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect()
            .await
    }

    /// An operator client using the first operator's credentials.
    pub async fn operator(&self) -> OperatorServiceClient<Channel> {
        let cert = std::fs::read_to_string(self.dir.path().join("operators/admin.crt"))
            .expect("admin.crt");
        let key = std::fs::read_to_string(self.dir.path().join("operators/admin.key"))
            .expect("admin.key");
        OperatorServiceClient::new(self.channel(Some((&cert, &key))).await.expect("connect"))
    }

    /// Credentials minted directly by this controller's CA (what enrollment would give).
    pub fn mint(&self, role: Role, name: &str, validity: Duration) -> (String, String) {
        let (cert, key) = self
            .ca()
            .issue(
                &Identity::new(role, name).expect("identity"),
                validity,
                &[],
                &[],
            )
            .expect("issue");
        (cert.pem, key.pem().to_string())
    }

    /// Create a join token through the operator API.
    pub async fn token(&self, node: Option<&str>, ttl_seconds: u64) -> String {
        self.operator()
            .await
            .create_token(fleetward_proto::api::CreateTokenRequest {
                ttl_seconds,
                node_name: node.map(String::from),
            })
            .await
            .expect("create token")
            .into_inner()
            .token
    }

    /// Enroll `name` over raw gRPC (no client certificate); returns (cert, key) on success.
    pub async fn enroll(&self, name: &str, token: &str) -> Result<(String, String), tonic::Status> {
        let (key, csr): (KeyPairPem, String) =
            generate_key_and_csr(&Identity::new(Role::Agent, name).expect("identity"))
                .expect("csr");
        let mut client = AgentServiceClient::new(self.channel(None).await.expect("connect"));
        let resp = client
            .enroll(fleetward_proto::api::EnrollRequest {
                token: token.to_string(),
                node_name: name.to_string(),
                csr_pem: csr,
            })
            .await?;
        Ok((resp.into_inner().cert_pem, key.pem().to_string()))
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The seed fixture directory of the agent's tests (`agent/tests/fixtures/...`).
pub fn agent_fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../agent/tests/fixtures")
        .join(rel)
}

/// The smallest valid report for `host`, with `boot_id` as a marker.
pub fn minimal_report(host: &str, boot_id: Option<String>) -> fleetward_proto::Report {
    use fleetward_proto::{Facts, NodeFacts, Report, SCHEMA_VERSION};
    Report {
        schema_version: SCHEMA_VERSION,
        facts: Facts {
            node: NodeFacts {
                hostname: Some(host.into()),
                boot_id,
                ..NodeFacts::default()
            },
            ..Facts::default()
        },
        findings: vec![],
    }
}

/// How [`Agent::run_with`] starts `fleetward-agent run`. `AgentRun::default()` is what
/// [`Agent::run`] does: inspect and heartbeat every second, observe-only (a fixture root
/// without `--simulate`: every action is refused).
///
/// ```ignore
/// let agent = Agent::run_with(name, root, state, AgentRun::default().simulate().sim_reboot_secs(0.2));
/// ```
#[derive(Debug, Clone, Default)]
pub struct AgentRun {
    /// `--simulate`: actions change the fixture root (log in `STATE/sim-actions.jsonl`).
    pub simulate: bool,
    /// `--sim-reboot-secs` (only with `simulate`); the agent's default (2 s) when `None`.
    pub sim_reboot_secs: Option<f64>,
    /// `--sim-action-secs`: how long each simulated action takes.
    pub sim_action_secs: Option<f64>,
    /// `--observe-only`: report, and refuse every action.
    pub observe_only: bool,
    /// `--sim-ha-delay-secs`: HA requests take effect this long after the command.
    pub sim_ha_delay_secs: Option<f64>,
    /// `--sim-osd-delay-secs`: after a simulated boot the node's OSDs read down this long.
    pub sim_osd_delay_secs: Option<f64>,
}

impl AgentRun {
    /// Use the simulated executor on the fixture root.
    pub fn simulate(mut self) -> Self {
        self.simulate = true;
        self
    }

    /// How long a simulated reboot stays disconnected (implies `simulate`).
    pub fn sim_reboot_secs(mut self, secs: f64) -> Self {
        self.simulate = true;
        self.sim_reboot_secs = Some(secs);
        self
    }

    /// HA is asynchronous: HA guests' stop/start requests and node maintenance on/off
    /// take effect `secs` later
    /// (implies `simulate`).
    pub fn sim_ha_delay_secs(mut self, secs: f64) -> Self {
        self.simulate = true;
        self.sim_ha_delay_secs = Some(secs);
        self
    }

    /// After a simulated boot the node's Ceph OSDs read down for `secs` (implies
    /// `simulate`).
    pub fn sim_osd_delay_secs(mut self, secs: f64) -> Self {
        self.simulate = true;
        self.sim_osd_delay_secs = Some(secs);
        self
    }

    /// How long each simulated action takes (implies `simulate`).
    pub fn sim_action_secs(mut self, secs: f64) -> Self {
        self.simulate = true;
        self.sim_action_secs = Some(secs);
        self
    }
}

/// A real `fleetward-agent run` on a seed node's fixture root; killed on drop.
pub struct Agent {
    pub name: String,
    pub root: tempfile::TempDir,
    pub state: tempfile::TempDir,
    child: Child,
    run: AgentRun,
}

impl Agent {
    /// Build the seed node's fixture root and enroll it with a fresh token.
    pub fn enroll(c: &Controller, name: &str) -> (tempfile::TempDir, tempfile::TempDir) {
        Self::enroll_fixture(c, name, &support::fixtures_dir().join("seed").join(name))
    }

    /// Build the fixture at `dir` (a fixture directory, see `agent/tests/support`) and enroll
    /// it as node `name` with a fresh token.
    pub fn enroll_fixture(
        c: &Controller,
        name: &str,
        dir: &Path,
    ) -> (tempfile::TempDir, tempfile::TempDir) {
        Self::enroll_root(c, name, support::build(dir))
    }

    /// Enroll `name` on a fixture root the test built itself (e.g. a seed root renamed).
    pub fn enroll_root(
        c: &Controller,
        name: &str,
        root: tempfile::TempDir,
    ) -> (tempfile::TempDir, tempfile::TempDir) {
        let state = tempfile::tempdir().expect("tempdir");
        let t = c.cli_json(&["token", "create", "--node", name, "--ttl", "10m"]);
        let cmd = t["enroll_command"].as_str().expect("enroll_command");
        assert!(
            cmd.contains(t["token"].as_str().unwrap())
                && cmd.contains(t["ca_sha256"].as_str().unwrap())
        );
        // The printed line: `FLEETWARD_TOKEN=… fleetward-agent enroll …` (the token in the
        // environment, never in argv).
        let mut words = cmd.split_whitespace();
        let token = words
            .next()
            .and_then(|w| w.strip_prefix("FLEETWARD_TOKEN="))
            .expect("the enroll line passes the token in FLEETWARD_TOKEN");
        assert_eq!(words.next(), Some("fleetward-agent"), "{cmd}");
        assert!(
            !words.clone().any(|w| w.contains(token)),
            "token in argv: {cmd}"
        );
        let out = Command::new(bin("fleetward-agent"))
            .env("FLEETWARD_TOKEN", token)
            .args(words)
            .arg("--state-dir")
            .arg(state.path())
            .arg("--root")
            .arg(root.path())
            .output()
            .expect("fleetward-agent enroll");
        assert!(
            out.status.success(),
            "enroll {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (root, state)
    }

    /// `fleetward-agent run` on an enrolled state dir, inspecting and heartbeating every second.
    pub fn run(name: &str, root: tempfile::TempDir, state: tempfile::TempDir) -> Agent {
        Self::run_with(name, root, state, AgentRun::default())
    }

    /// Like [`Agent::run`], with the options of `run` (e.g. `--simulate`).
    pub fn run_with(
        name: &str,
        root: tempfile::TempDir,
        state: tempfile::TempDir,
        run: AgentRun,
    ) -> Agent {
        let child = Self::spawn(root.path(), state.path(), &run);
        Agent {
            name: name.into(),
            root,
            state,
            child,
            run,
        }
    }

    fn spawn(root: &Path, state: &Path, run: &AgentRun) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(state.join("agent.log"))
            .expect("agent.log");
        let mut cmd = Command::new(bin("fleetward-agent"));
        cmd.args(["run", "--interval", "1", "--heartbeat", "1", "--state-dir"])
            .arg(state)
            .arg("--root")
            .arg(root);
        if run.observe_only {
            cmd.arg("--observe-only");
        }
        if run.simulate {
            cmd.arg("--simulate");
            if let Some(secs) = run.sim_reboot_secs {
                cmd.arg(format!("--sim-reboot-secs={secs}"));
            }
            if let Some(secs) = run.sim_action_secs {
                cmd.arg(format!("--sim-action-secs={secs}"));
            }
            if let Some(secs) = run.sim_ha_delay_secs {
                cmd.arg(format!("--sim-ha-delay-secs={secs}"));
            }
            if let Some(secs) = run.sim_osd_delay_secs {
                cmd.arg(format!("--sim-osd-delay-secs={secs}"));
            }
        }
        cmd.env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("fleetward-agent run")
    }

    /// Enroll and run.
    pub fn start(c: &Controller, name: &str) -> Agent {
        let (root, state) = Self::enroll(c, name);
        Self::run(name, root, state)
    }

    /// Enroll and run with the simulated executor (`--simulate`), simulated reboots taking
    /// `reboot_secs`.
    pub fn start_simulated(c: &Controller, name: &str, reboot_secs: f64) -> Agent {
        let (root, state) = Self::enroll(c, name);
        Self::run_with(
            name,
            root,
            state,
            AgentRun::default().sim_reboot_secs(reboot_secs),
        )
    }

    /// Start `run` again with the same options (after it exited, e.g. a simulated
    /// power-off: a simulated node that is powered off boots again). Kills a running one.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(self.root.path(), self.state.path(), &self.run);
    }

    /// The exit status, once `run` has exited (it does on a simulated power-off).
    pub fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The `run` process's id (e.g. to SIGSTOP a node's agent in a test).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The simulated executor's action log (`--simulate`).
    pub fn sim_log(&self) -> PathBuf {
        self.state.path().join("sim-actions.jsonl")
    }

    /// A node path inside this agent's fixture root.
    pub fn path(&self, node_path: &str) -> PathBuf {
        self.root.path().join(node_path.trim_start_matches('/'))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state.path().join("agent.log")).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The next event of `node` from the in-process controller's stream that `pick` accepts
/// (events of other kinds are skipped; a lagging receiver skips what it missed), waiting at
/// most `wait`.
pub fn wait_event<T>(
    rx: &mut tokio::sync::broadcast::Receiver<fleetward_controller::events::AgentEvent>,
    node: &str,
    what: &str,
    wait: Duration,
    mut pick: impl FnMut(&fleetward_controller::events::AgentEventKind) -> Option<T>,
) -> T {
    use tokio::sync::broadcast::error::TryRecvError;
    let start = std::time::Instant::now();
    loop {
        match rx.try_recv() {
            Ok(e) if e.node == node => {
                if let Some(v) = pick(&e.kind) {
                    return v;
                }
            }
            Ok(_) | Err(TryRecvError::Lagged(_)) => {}
            Err(TryRecvError::Empty) => {
                assert!(start.elapsed() < wait, "timed out waiting for {what}");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("event stream: {e}"),
        }
    }
}
