//! The agent's session executes actions: a real `session::run::run` (with the simulated
//! executor) against a small in-process `AgentService` on 127.0.0.1 over mutual TLS.
//!
//! The test server hands each session to the test as a [`Conn`]: the agent's messages
//! (reports and heartbeats are acknowledged automatically) and a sender for commands.

use fleetward_agent::executor::simulated::{read_log, LogEntry};
use fleetward_agent::executor::{Action, ActionRequest, GuestKind};
use fleetward_agent::session::run::{self, RunOptions, SimOptions, SIM_ACTION_LOG};
use fleetward_agent::session::state::{AgentConfig, StateDir};
use fleetward_pki::{Ca, Identity, Role};
use fleetward_proto::api::agent_message::Kind as Out;
use fleetward_proto::api::agent_service_server::{AgentService, AgentServiceServer};
use fleetward_proto::api::controller_message::{self, Kind as In};
use fleetward_proto::api::{self, command, AgentMessage, Command, ControllerMessage};
use std::fs;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Identity as TlsIdentity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

const NODE: &str = "pve-01";
const WAIT: Duration = Duration::from_secs(15);

/// One agent session as the test sees it.
struct Conn {
    from_agent: mpsc::UnboundedReceiver<AgentMessage>,
    to_agent: mpsc::UnboundedSender<ControllerMessage>,
}

struct TestService {
    sessions: mpsc::UnboundedSender<Conn>,
}

type SessionStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<ControllerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for TestService {
    async fn enroll(
        &self,
        _: Request<api::EnrollRequest>,
    ) -> Result<Response<api::EnrollResponse>, Status> {
        Err(Status::unimplemented("test server"))
    }

    async fn renew(
        &self,
        _: Request<api::RenewRequest>,
    ) -> Result<Response<api::RenewResponse>, Status> {
        Err(Status::unimplemented("test server"))
    }

    type SessionStream = SessionStream;

    async fn session(
        &self,
        req: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<SessionStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(256);
        let (to_test, from_agent) = mpsc::unbounded_channel();
        let (to_agent, mut commands) = mpsc::unbounded_channel::<ControllerMessage>();
        let _ = self.sessions.send(Conn {
            from_agent,
            to_agent,
        });
        // The only holder of `tx`: when the agent ends its side, ours ends too.
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    m = inbound.message() => {
                        let Ok(Some(m)) = m else { return };
                        let ack = match &m.kind {
                            Some(Out::Report(r)) => Some(In::ReportAck(controller_message::ReportAck { seq: r.seq })),
                            Some(Out::Heartbeat(h)) => Some(In::HeartbeatAck(controller_message::HeartbeatAck { seq: h.seq })),
                            _ => None,
                        };
                        if let Some(ack) = ack {
                            let _ = tx.send(Ok(ControllerMessage::new(ack))).await;
                        }
                        let _ = to_test.send(m);
                    }
                    c = commands.recv() => match c {
                        Some(c) => { let _ = tx.send(Ok(c)).await; }
                        None => return,
                    },
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// A tiny simulated node: one kernel, a pending upgrade with a new kernel, two guests.
fn tiny_root(dir: &Path) {
    let status = "Package: proxmox-kernel-6.14.8-2-pve-signed\nStatus: install ok installed\n\
                  Architecture: amd64\nVersion: 6.14.8-2\n\n\
                  Package: proxmox-kernel-6.14\nStatus: install ok installed\n\
                  Architecture: all\nVersion: 6.14.8-2\n\n\
                  Package: pve-manager\nStatus: install ok installed\n\
                  Architecture: amd64\nVersion: 9.0.11\n\n";
    let files = [
        ("etc/hostname", "pve-01\n"),
        ("boot/vmlinuz-6.14.8-2-pve", "k\n"),
        ("boot/initrd.img-6.14.8-2-pve", "i\n"),
        ("boot/config-6.14.8-2-pve", "c\n"),
        ("proc/sys/kernel/osrelease", "6.14.8-2-pve\n"),
        (
            "proc/sys/kernel/random/boot_id",
            "4a0c8f3e-1b52-4c0e-9f0d-2d6a1c7e0b11\n",
        ),
        ("var/lib/dpkg/status", status),
        (
            "var/lib/fleetward-sim/pending.json",
            r#"{"kernel": "6.14.11-1-pve",
                "packages": [{"package": "pve-manager", "version": "9.0.15"}]}"#,
        ),
        (
            "var/lib/fleetward-sim/guests.json",
            r#"[{"vmid": 100, "kind": "qemu", "state": "running", "onboot": true, "ha": true},
                {"vmid": 200, "kind": "lxc", "state": "running", "onboot": false}]"#,
        ),
    ];
    for (p, text) in files {
        let p = dir.join(p);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }
}

struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    state: PathBuf,
    sessions: mpsc::UnboundedReceiver<Conn>,
}

impl Setup {
    /// A CA, a TLS test server on 127.0.0.1, an enrolled state dir and a fixture root.
    async fn new() -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let state = tmp.path().join("state");
        tiny_root(&root);
        let ca = Ca::generate("test").unwrap();
        let month = Duration::from_secs(30 * 86_400);
        let (server_cert, server_key) = ca
            .issue(
                &Identity::new(Role::Controller, "controller").unwrap(),
                month,
                &["localhost".into()],
                &["127.0.0.1".parse().unwrap()],
            )
            .unwrap();
        let (agent_cert, agent_key) = ca
            .issue(&Identity::new(Role::Agent, NODE).unwrap(), month, &[], &[])
            .unwrap();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (sessions_tx, sessions) = mpsc::unbounded_channel();
        let tls = ServerTlsConfig::new()
            .identity(TlsIdentity::from_pem(server_cert.pem, server_key.pem()))
            .client_ca_root(Certificate::from_pem(ca.cert_pem()));
        let server = Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(AgentServiceServer::new(TestService {
                sessions: sessions_tx,
            }))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
        tokio::spawn(server);

        StateDir::new(&state)
            .save_enrollment(
                &AgentConfig {
                    controller: format!("https://127.0.0.1:{}", addr.port()),
                    node_name: NODE.into(),
                },
                &agent_key,
                &agent_cert.pem,
                ca.cert_pem(),
            )
            .unwrap();
        Setup {
            _tmp: tmp,
            root,
            state,
            sessions,
        }
    }

    /// Starts `fleetward-agent run --simulate --sim-reboot-secs 0` in-process.
    fn start_agent(&self) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
        let opts = RunOptions {
            state_dir: self.state.clone(),
            root: self.root.clone(),
            interval: Duration::from_secs(3600),
            heartbeat: Duration::from_secs(1),
            observe_only: false,
            simulate: Some(SimOptions {
                reboot_delay: Duration::ZERO,
                action_duration: Duration::ZERO,
                ha_delay: None,
                osd_delay: None,
            }),
        };
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(async move {
            run::run(opts, shutdown).await.expect("agent run failed");
        });
        (stop, task)
    }

    async fn next_session(&mut self) -> Conn {
        timeout(WAIT, self.sessions.recv())
            .await
            .expect("timed out waiting for a session")
            .expect("server gone")
    }

    fn log(&self) -> Vec<LogEntry> {
        read_log(&self.state.join(SIM_ACTION_LOG)).unwrap()
    }

    fn file(&self, node_path: &str) -> String {
        fs::read_to_string(self.root.join(node_path.trim_start_matches('/'))).unwrap()
    }
}

impl Conn {
    /// The next message of the agent that is not a heartbeat.
    async fn next(&mut self) -> Out {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let m = tokio::time::timeout_at(deadline, self.from_agent.recv())
                .await
                .expect("timed out waiting for the agent")
                .expect("the session ended");
            match m.kind {
                Some(Out::Heartbeat(_)) | None => continue,
                Some(kind) => return kind,
            }
        }
    }

    fn send(&self, cmd: Command) {
        self.to_agent
            .send(ControllerMessage::new(In::Command(cmd)))
            .expect("session gone");
    }

    fn action(&self, id: &str, action: Action) {
        self.send(Command::action(&ActionRequest {
            id: id.into(),
            action,
        }));
    }

    /// Messages about command `id` up to and including its result (reports and messages
    /// about other commands are skipped).
    async fn until_result(&mut self, id: &str) -> (Vec<Out>, api::agent_message::CommandResult) {
        let mut seen = Vec::new();
        loop {
            match self.next().await {
                Out::CommandResult(r) if r.command_id == id => return (seen, r),
                Out::CommandAck(a) if a.command_id == id => seen.push(Out::CommandAck(a)),
                Out::CommandOutput(o) if o.command_id == id => seen.push(Out::CommandOutput(o)),
                _ => {}
            }
        }
    }

    /// Waits until the controller side of this session ends (the agent closed it).
    async fn ended(&mut self) {
        let end = timeout(WAIT, async {
            while self.from_agent.recv().await.is_some() {}
        })
        .await;
        assert!(end.is_ok(), "the agent did not close the session");
    }

    async fn hello(&mut self) -> String {
        match self.next().await {
            Out::Hello(h) => h.boot_id,
            other => panic!("expected Hello first, got {other:?}"),
        }
    }
}

fn outputs(seen: &[Out]) -> Vec<String> {
    seen.iter()
        .filter_map(|m| match m {
            Out::CommandOutput(o) => Some(o.line.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_action_ack_output_result_replay_and_order() {
    let mut s = Setup::new().await;
    let (stop, agent) = s.start_agent();
    let mut c = s.next_session().await;
    assert_eq!(c.hello().await, "4a0c8f3e-1b52-4c0e-9f0d-2d6a1c7e0b11");

    // ack -> output -> result.
    let id = "op-1/pve-01/maintenance-on/1";
    c.action(id, Action::MaintenanceOn);
    let (seen, result) = c.until_result(id).await;
    assert!(matches!(seen.first(), Some(Out::CommandAck(_))), "{seen:?}");
    let lines = outputs(&seen);
    assert!(
        lines.iter().any(|l| l.contains("maintenance: set")),
        "{lines:?}"
    );
    assert!(result.ok && !result.replayed, "{result:?}");
    assert_eq!(result.exit_code, Some(0));
    assert!(result.message.contains("maintenance: set"), "{result:?}");
    assert!(s.root.join("var/lib/fleetward-sim/maintenance").exists());

    // The same id again: remembered, not executed again.
    c.action(id, Action::MaintenanceOn);
    let (seen, again) = c.until_result(id).await;
    assert!(again.ok && again.replayed, "{again:?}");
    assert_eq!(again.exit_code, Some(0));
    assert!(outputs(&seen).is_empty(), "a replay runs nothing: {seen:?}");
    let runs = |log: &[LogEntry], id: &str| log.iter().filter(|e| e.id == id).count();
    assert_eq!(runs(&s.log(), id), 1);

    // Bad actions are refused with the reason; the session goes on.
    c.send(Command {
        command_id: "bad-json".into(),
        kind: Some(command::Kind::Action(command::Action {
            action_json: "{not json".into(),
        })),
    });
    let (seen, bad) = c.until_result("bad-json").await;
    assert!(matches!(seen.first(), Some(Out::CommandAck(_))));
    assert!(!bad.ok && bad.message.contains("invalid action"), "{bad:?}");
    assert_eq!(bad.exit_code, None);
    c.action(
        "bad-vmid",
        Action::GuestStart {
            vmid: 7,
            kind: GuestKind::Lxc,
        },
    );
    let (_, bad) = c.until_result("bad-vmid").await;
    assert!(!bad.ok && bad.message.contains("VMID"), "{bad:?}");

    // Queued in order: update then upgrade, sent back to back; then a fresh report shows
    // the effect (nothing upgradable any more, the new kernel installed).
    c.action("op-1/pve-01/apt-update/1", Action::AptUpdate);
    c.action("op-1/pve-01/upgrade/1", Action::AptDistUpgrade);
    let mut results = Vec::new();
    let mut report_after = None;
    while report_after.is_none() {
        match c.next().await {
            Out::CommandResult(r) => results.push(r),
            Out::Report(r) if results.len() == 2 => report_after = Some(r.parse().unwrap()),
            _ => {}
        }
    }
    let ids: Vec<_> = results.iter().map(|r| r.command_id.as_str()).collect();
    assert_eq!(ids, ["op-1/pve-01/apt-update/1", "op-1/pve-01/upgrade/1"]);
    assert!(results.iter().all(|r| r.ok), "{results:?}");
    let report: fleetward_proto::Report = report_after.unwrap();
    assert!(
        report.facts.apt.upgradable.is_empty(),
        "{:?}",
        report.facts.apt
    );
    assert!(s.root.join("boot/vmlinuz-6.14.11-1-pve").exists());

    // Refresh commands still work (SeenCommands).
    c.send(Command::refresh("refresh-1"));
    let (_, r) = c.until_result("refresh-1").await;
    assert!(r.ok, "{r:?}");

    let log = s.log();
    let names: Vec<_> = log.iter().map(|e| e.action.name()).collect();
    assert_eq!(
        names,
        ["maintenance-on", "apt-update", "apt-dist-upgrade"],
        "bad actions never reach the executor"
    );

    stop.send(true).unwrap();
    timeout(WAIT, agent).await.expect("agent stops").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_simulated_reboot_reconnects_with_new_boot_id_and_power_off_exits() {
    let mut s = Setup::new().await;
    let (_stop, agent) = s.start_agent();
    let mut c = s.next_session().await;
    let first_boot = c.hello().await;

    c.action("op-2/pve-01/upgrade/1", Action::AptDistUpgrade);
    assert!(c.until_result("op-2/pve-01/upgrade/1").await.1.ok);
    let reboot = "op-2/pve-01/reboot/1";
    c.action(reboot, Action::Reboot);
    let (_, r) = c.until_result(reboot).await;
    assert!(r.ok && !r.replayed, "{r:?}");
    c.ended().await;

    // Reconnects with the new boot id, running the new kernel.
    let mut c = s.next_session().await;
    let second_boot = c.hello().await;
    assert_ne!(second_boot, first_boot);
    assert_eq!(
        second_boot,
        s.file("/proc/sys/kernel/random/boot_id").trim()
    );
    assert_eq!(s.file("/proc/sys/kernel/osrelease"), "6.14.11-1-pve\n");

    // The reboot re-sent after the reconnect is replayed, not repeated, and the session
    // stays open.
    c.action(reboot, Action::Reboot);
    let (_, r) = c.until_result(reboot).await;
    assert!(r.ok && r.replayed, "{r:?}");
    c.send(Command::refresh("refresh-after-reboot"));
    assert!(c.until_result("refresh-after-reboot").await.1.ok);
    let reboots = |s: &Setup| {
        s.log()
            .iter()
            .filter(|e| e.action == Action::Reboot)
            .count()
    };
    assert_eq!(reboots(&s), 1);
    assert_eq!(
        s.file("/proc/sys/kernel/random/boot_id").trim(),
        second_boot
    );

    // Power-off: the result arrives, the session closes, `run` returns.
    c.action("op-3/pve-01/power-off/1", Action::PowerOff);
    let (_, r) = c.until_result("op-3/pve-01/power-off/1").await;
    assert!(r.ok, "{r:?}");
    c.ended().await;
    timeout(WAIT, agent)
        .await
        .expect("run returns after a power-off")
        .unwrap();
    assert!(s.root.join("var/lib/fleetward-sim/powered-off").exists());

    // Starting the agent again powers the node on: a new boot.
    let (stop, agent) = s.start_agent();
    let mut c = s.next_session().await;
    let third_boot = c.hello().await;
    assert!(third_boot != second_boot && third_boot != first_boot);
    assert!(!s.root.join("var/lib/fleetward-sim/powered-off").exists());
    assert_eq!(reboots(&s), 1);
    stop.send(true).unwrap();
    timeout(WAIT, agent).await.expect("agent stops").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_simulate_refuses_the_live_root() {
    let s = Setup::new().await;
    let opts = RunOptions {
        state_dir: s.state.clone(),
        root: PathBuf::from("/"),
        interval: Duration::from_secs(3600),
        heartbeat: Duration::from_secs(1),
        observe_only: false,
        simulate: Some(SimOptions {
            reboot_delay: Duration::ZERO,
            action_duration: Duration::ZERO,
            ha_delay: None,
            osd_delay: None,
        }),
    };
    let (_stop, shutdown) = watch::channel(false);
    let err = run::run(opts, shutdown).await.unwrap_err();
    assert!(err.to_string().contains("live system"), "{err}");
}
