//! Many simulated nodes in one process, for rollout scale tests and the rollout overhead
//! benchmark: each is a real agent session (its own certificate from real enrollment, mutual
//! TLS, the real protocol) whose node is a small in-memory model instead of a fixture root
//! and a `fleetward-agent` process. Fifty real agent processes would measure process
//! start-up; these measure the controller.
//!
//! The model: every node runs [`OLD_KERNEL`] and is offered [`NEW_KERNEL`] (with
//! `proxmox-ve`) by apt. `apt-dist-upgrade` installs it, `reboot` drops the session, waits
//! [`FleetOptions::reboot`] and reconnects with a new boot id running the new kernel.
//! Maintenance on/off is counted in [`Fleet::out_now`]/[`Fleet::max_out`]. Ceph's `noout` is
//! one cluster-wide flag ([`Fleet::noout`]): a node's `ceph osd set/unset noout` changes it,
//! and the next report of every node shows it, as the OSD map would; every OSD is up and in.
//! Actions are
//! executed at most once per command id (a re-sent id is answered from memory, like the
//! real agent's `actions.json`).

use crate::Controller;
use fleetward_pki::{generate_key_and_csr, Identity, Role};
use fleetward_proto::action::{Action, ActionRequest};
use fleetward_proto::api::{
    self, agent_message, agent_service_client::AgentServiceClient, command, controller_message,
    AgentMessage,
};
use fleetward_proto::Report;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity as TlsIdentity};

pub const OLD_KERNEL: &str = "6.14.8-2-pve";
pub const NEW_KERNEL: &str = "6.14.11-1-pve";

/// An enrolled node's credentials.
#[derive(Debug, Clone)]
pub struct Enrolled {
    pub name: String,
    pub cert: String,
    pub key: String,
}

/// Enrolls `names` through the real API, `parallel` at a time: a join token per node from
/// `OperatorService.CreateToken`, then `AgentService.Enroll` with a key and CSR made here.
/// One operator and one anonymous connection are shared (HTTP/2 multiplexes). In `names`
/// order.
pub async fn enroll(c: &Controller, names: &[String], parallel: usize) -> Vec<Enrolled> {
    let op = c.operator().await;
    let anon = AgentServiceClient::new(c.channel(None).await.expect("connect"));
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for (i, name) in names.iter().cloned().enumerate() {
        let (mut op, mut anon, sem) = (op.clone(), anon.clone(), sem.clone());
        set.spawn(async move {
            let _permit = sem.acquire_owned().await.expect("semaphore");
            let token = op
                .create_token(api::CreateTokenRequest {
                    ttl_seconds: 3600,
                    node_name: Some(name.clone()),
                })
                .await
                .expect("create token")
                .into_inner()
                .token;
            let identity = Identity::new(Role::Agent, &name).expect("identity");
            let (key, csr) = generate_key_and_csr(&identity).expect("csr");
            let cert = anon
                .enroll(api::EnrollRequest {
                    token,
                    node_name: name.clone(),
                    csr_pem: csr,
                })
                .await
                .expect("enroll")
                .into_inner()
                .cert_pem;
            let key = key.pem().to_string();
            (i, Enrolled { name, cert, key })
        });
    }
    let mut out = Vec::with_capacity(names.len());
    while let Some(r) = set.join_next().await {
        out.push(r.expect("enroll task"));
    }
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, e)| e).collect()
}

#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// How long a reboot keeps the node away.
    pub reboot: Duration,
    /// How long every other action takes.
    pub action: Duration,
}

/// What the simulated nodes did, for assertions and measurements.
#[derive(Default)]
pub struct Fleet {
    /// Nodes in maintenance now, and the most ever at once.
    pub out_now: AtomicUsize,
    pub max_out: AtomicUsize,
    /// The fake cluster's Ceph `noout` flag (the OSD map's, shared by every node).
    pub noout: AtomicBool,
    /// Per node: executed (not replayed) actions, by name.
    pub executed: Mutex<HashMap<String, Vec<String>>>,
    /// When each action command arrived (node, action, time), in arrival order.
    pub arrivals: Mutex<Vec<(String, String, Instant)>>,
    /// When each node sent the result of its maintenance-off and the report after its
    /// reboot (node, what, time).
    pub sent: Mutex<Vec<(String, &'static str, Instant)>>,
}

impl Fleet {
    pub fn count(&self, node: &str, action: &str) -> usize {
        self.executed
            .lock()
            .unwrap()
            .get(node)
            .map_or(0, |v| v.iter().filter(|a| *a == action).count())
    }
}

struct Model {
    name: String,
    running: String,
    installed: Vec<String>,
    boot: u64,
    pending: bool,
    maintenance: bool,
}

impl Model {
    fn next(&self) -> String {
        self.installed.last().cloned().unwrap_or_default()
    }
}

/// The report of a model node, from the seed report: hostname, boot id, kernels, pending
/// upgrade, and a cluster of `members` (all online, one vote each, quorate).
fn report(seed: &Report, m: &Model, members: &[String], fleet: &Fleet) -> Report {
    let mut r = seed.clone();
    let f = &mut r.facts;
    if let Some(ceph) = f.ceph.as_mut() {
        ceph.noout = Some(fleet.noout.load(Ordering::SeqCst));
        let total = u32::try_from(ceph.osds_here.len()).unwrap_or(u32::MAX);
        ceph.osds = Some(fleetward_proto::OsdCounts {
            total,
            up: total,
            inside: total,
        });
    }
    f.node.hostname = Some(m.name.clone());
    f.node.boot_id = Some(format!("00000000-0000-4000-8000-{:012x}", m.boot));
    f.node.running_kernel = Some(m.running.clone());
    f.boot.next_kernel = Some(m.next());
    f.boot.installed_kernels = m.installed.clone();
    f.boot.reboot_required = false;
    f.guests.clear();
    f.ha.maintenance = Some(m.maintenance);
    f.cluster.quorate = Some(true);
    f.cluster.expected_votes = Some(members.len() as u32);
    if let Some(template) = f.cluster.members.first().cloned() {
        f.cluster.members = members
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let mut x = template.clone();
                x.name = n.clone();
                x.id = Some(i as u32 + 1);
                x.online = true;
                x.votes = 1;
                x.ip = None;
                x
            })
            .collect();
    }
    f.apt.upgradable = if m.pending {
        vec![fleetward_proto::Upgrade {
            package: "proxmox-ve".into(),
            installed: "9.0.0".into(),
            candidate: "9.0.1".into(),
        }]
    } else {
        Vec::new()
    };
    f.apt.upgrade_needs_reboot = m.pending;
    r
}

fn msg(kind: agent_message::Kind) -> AgentMessage {
    AgentMessage::new(kind)
}

/// Runs one node until `stop` is dropped: connect, hello, report, then answer commands
/// and heartbeat; a reboot reconnects after the delay.
#[allow(clippy::too_many_arguments)]
pub async fn run_node(
    url: String,
    ca_pem: String,
    node: Enrolled,
    seed: Arc<Report>,
    members: Arc<Vec<String>>,
    opts: FleetOptions,
    fleet: Arc<Fleet>,
) {
    let mut m = Model {
        name: node.name.clone(),
        running: OLD_KERNEL.into(),
        installed: vec!["6.14.5-1-pve".into(), OLD_KERNEL.into()],
        boot: rand_boot(&node.name, 0),
        pending: true,
        maintenance: false,
    };
    let mut done: HashMap<String, bool> = HashMap::new();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca_pem))
        .domain_name("localhost")
        .identity(TlsIdentity::from_pem(&node.cert, &node.key));
    let mut seq = 0u64;
    loop {
        let Ok(endpoint) = Channel::from_shared(url.clone()) else {
            return;
        };
        let channel = match endpoint.tls_config(tls.clone()) {
            Ok(e) => match e.connect().await {
                Ok(c) => c,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            Err(_) => return,
        };
        let mut client = AgentServiceClient::new(channel);
        let (tx, rx) = mpsc::channel::<AgentMessage>(64);
        let hello = agent_message::Hello {
            agent_version: "fake".into(),
            boot_id: report(&seed, &m, &members, &fleet)
                .facts
                .node
                .boot_id
                .unwrap_or_default(),
        };
        let _ = tx.send(msg(agent_message::Kind::Hello(hello))).await;
        let send_report = |m: &Model, seq: &mut u64| {
            *seq += 1;
            msg(agent_message::Kind::Report(agent_message::Report::new(
                *seq,
                &report(&seed, m, &members, &fleet),
            )))
        };
        let _ = tx.send(send_report(&m, &mut seq)).await;
        let Ok(resp) = client.session(ReceiverStream::new(rx)).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut inbound = resp.into_inner();
        let mut beat = tokio::time::interval(Duration::from_secs(1));
        let rebooted = loop {
            let msg_in = tokio::select! {
                m = inbound.message() => m,
                _ = beat.tick() => {
                    seq += 1;
                    let hb = agent_message::Heartbeat { seq };
                    if tx.send(msg(agent_message::Kind::Heartbeat(hb))).await.is_err() {
                        break false;
                    }
                    continue;
                }
            };
            let Ok(Some(cm)) = msg_in else { break false };
            let Some(controller_message::Kind::Command(cmd)) = cm.kind else {
                continue;
            };
            let id = cmd.command_id.clone();
            let ack = agent_message::CommandAck {
                command_id: id.clone(),
            };
            let _ = tx.send(msg(agent_message::Kind::CommandAck(ack))).await;
            match cmd.kind {
                Some(command::Kind::Refresh(_)) => {
                    let _ = tx.send(send_report(&m, &mut seq)).await;
                }
                Some(command::Kind::Action(a)) => {
                    let Ok(req) = a.request(&id) else { continue };
                    let replayed = done.contains_key(&id);
                    fleet.arrivals.lock().unwrap().push((
                        m.name.clone(),
                        req.action.name().to_string(),
                        Instant::now(),
                    ));
                    if !replayed {
                        tokio::time::sleep(opts.action).await;
                        apply(&mut m, &req, &fleet);
                        done.insert(id.clone(), true);
                    }
                    let res = agent_message::CommandResult {
                        command_id: id.clone(),
                        ok: true,
                        message: String::new(),
                        exit_code: Some(0),
                        replayed,
                        ceph: None,
                    };
                    if req.action == Action::MaintenanceOff {
                        fleet.sent.lock().unwrap().push((
                            m.name.clone(),
                            "maintenance-off",
                            Instant::now(),
                        ));
                    }
                    let _ = tx.send(msg(agent_message::Kind::CommandResult(res))).await;
                    if req.action == Action::Reboot && !replayed {
                        break true;
                    }
                    let _ = tx.send(send_report(&m, &mut seq)).await;
                }
                None => {}
            }
        };
        drop(tx);
        if rebooted {
            tokio::time::sleep(opts.reboot).await;
            m.running = m.next();
            m.boot = rand_boot(&m.name, m.boot + 1);
            fleet
                .sent
                .lock()
                .unwrap()
                .push((m.name.clone(), "back", Instant::now()));
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn rand_boot(name: &str, n: u64) -> u64 {
    let h = name
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b.into()));
    (h.wrapping_mul(1000) + n) & 0xffff_ffff_ffff
}

fn apply(m: &mut Model, req: &ActionRequest, fleet: &Fleet) {
    fleet
        .executed
        .lock()
        .unwrap()
        .entry(m.name.clone())
        .or_default()
        .push(req.action.name().to_string());
    match req.action {
        Action::MaintenanceOn if !m.maintenance => {
            m.maintenance = true;
            let now = fleet.out_now.fetch_add(1, Ordering::SeqCst) + 1;
            fleet.max_out.fetch_max(now, Ordering::SeqCst);
        }
        Action::MaintenanceOff if m.maintenance => {
            m.maintenance = false;
            fleet.out_now.fetch_sub(1, Ordering::SeqCst);
        }
        Action::CephSetNoout => fleet.noout.store(true, Ordering::SeqCst),
        Action::CephUnsetNoout => fleet.noout.store(false, Ordering::SeqCst),
        Action::AptDistUpgrade if m.pending => {
            m.pending = false;
            m.installed.push(NEW_KERNEL.into());
        }
        _ => {}
    }
}

/// A fake fleet of `names` against `c`: enrolls them (`parallel` at a time) and runs each
/// as [`run_node`] on a 2-thread runtime, returned with the fleet's record. Keep the runtime:
/// dropping it stops the nodes.
pub fn start(
    c: &Controller,
    names: &[String],
    parallel: usize,
    opts: FleetOptions,
) -> (tokio::runtime::Runtime, Arc<Fleet>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let enrolled = rt.block_on(enroll(c, names, parallel));
    let fleet = Arc::new(Fleet::default());
    let (seed, members) = (Arc::new(seed_report()), Arc::new(names.to_vec()));
    for e in enrolled {
        rt.spawn(run_node(
            c.url(),
            c.ca_pem(),
            e,
            seed.clone(),
            members.clone(),
            opts.clone(),
            fleet.clone(),
        ));
    }
    (rt, fleet)
}

/// The seed node's report (the template every fake node's report is made from).
pub fn seed_report() -> Report {
    let path = crate::agent_fixture("seed/pve-01/expected.json");
    let text = std::fs::read_to_string(&path).expect("seed expected.json");
    fleetward_proto::report_from_json(&text).expect("seed report")
}
