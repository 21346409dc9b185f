//! Re-sends and foreign answers end to end: during a rolling update of pve-01 (real
//! controller, real agents with the simulated executor), another node's certificate opens
//! a session, says `Hello` 40 times and sends a failed result for pve-01's running step.
//! The result is refused and audited, the step is unaffected, nothing halts, and pve-01's
//! agent executes each action once.

use fleetward_agent::executor::simulated::read_log;
use fleetward_proto::action::Action;
use fleetward_proto::api::agent_message::{self, Kind};
use fleetward_proto::api::agent_service_client::AgentServiceClient;
use fleetward_proto::api::AgentMessage;
use fleetward_tests::{support, wait_for, Agent, AgentRun, Controller};
use std::time::Duration;

const NODES: [&str; 3] = ["pve-01", "pve-02", "pve-03"];

fn node(c: &Controller, name: &str) -> Agent {
    let dir = support::fixtures_dir().join("seed").join(name);
    let (root, state) = Agent::enroll_fixture(c, name, &dir);
    let sim = root.path().join("var/lib/fleetward-sim");
    std::fs::create_dir_all(&sim).unwrap();
    std::fs::write(
        sim.join("pending.json"),
        r#"{"packages": [{"package": "proxmox-ve", "version": "9.0.1"}], "kernel": "6.14.11-1-pve"}"#,
    )
    .unwrap();
    // Slow actions: a step stays outstanding long enough to be answered by someone else.
    Agent::run_with(
        name,
        root,
        state,
        AgentRun::default()
            .sim_reboot_secs(0.3)
            .sim_action_secs(4.0),
    )
}

/// The command id of the action pve-01's agent is running now (from its log).
fn running_step(a: &Agent) -> String {
    wait_for("pve-01 runs a step", Duration::from_secs(60), || {
        a.log()
            .lines()
            .filter(|l| l.contains("action starting"))
            .filter_map(|l| l.split("command_id=").nth(1))
            .filter_map(|rest| rest.split_whitespace().next())
            .next_back()
            .map(|id| id.trim_matches('"').to_string())
    })
}

/// A session with `cert`/`key`: 40 `Hello`s, then a failed result for `id`.
fn impersonate(c: &Controller, cert: &str, key: &str, id: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let channel = c.channel(Some((cert, key))).await.expect("connect");
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        for _ in 0..40 {
            tx.send(AgentMessage::new(Kind::Hello(agent_message::Hello {
                agent_version: "0.0.0".into(),
                boot_id: "forged".into(),
            })))
            .await
            .unwrap();
        }
        tx.send(AgentMessage::new(Kind::CommandResult(
            agent_message::CommandResult {
                command_id: id.into(),
                ok: false,
                message: "forged failure".into(),
                exit_code: Some(1),
                replayed: false,
                ceph: None,
            },
        )))
        .await
        .unwrap();
        let mut client = AgentServiceClient::new(channel);
        let mut inbound = client
            .session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("session")
            .into_inner();
        tokio::time::sleep(Duration::from_millis(500)).await;
        drop(tx);
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Ok(Some(_)) = inbound.message().await {}
        })
        .await;
    });
}

#[test]
fn a_result_from_another_nodes_certificate_is_refused_and_hellos_do_not_halt() {
    let mut c = Controller::start();
    let path = c.dir.path().join("controller.toml");
    let text = std::fs::read_to_string(&path).unwrap()
        + "host_node = \"pve-03\"\n\n[rollout]\ntick_ms = 100\n";
    std::fs::write(&path, text).unwrap();
    c.restart();
    let agents: Vec<Agent> = NODES.iter().map(|n| node(&c, n)).collect();
    wait_for("nodes online with reports", Duration::from_secs(60), || {
        let nodes = c.cli_json(&["nodes"]);
        NODES
            .iter()
            .all(|n| {
                let online = nodes
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|x| x["name"] == *n && x["state"] == "online");
                online && !c.cli_json(&["node", "show", n])["report"].is_null()
            })
            .then_some(())
    });
    c.cli_json(&["rollout", "start", "--yes", "--nodes", "pve-01"]);
    let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| running_step(&agents[0])))
        .unwrap_or_else(|_| {
            panic!(
                "no step: {:#}\n{}",
                c.cli_json(&["rollout", "status"]),
                agents[0].log()
            )
        });
    assert!(step.contains("/pve-01/"), "{step}");
    // Another node, enrolled like any other while the step runs (its certificate is valid;
    // enrolled before the start, its absence from the cluster would fail the preflight).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (cert, key) = rt.block_on(async {
        let token = c.token(Some("pve-04"), 600).await;
        c.enroll("pve-04", &token).await.expect("enroll pve-04")
    });
    drop(rt);
    impersonate(&c, &cert, &key, &step);
    // Out of the cluster again, so that the gates before the reboot see every member.
    c.cli_json(&["node", "revoke", "pve-04"]);

    let s = wait_for("the rollout to settle", Duration::from_secs(120), || {
        let s = c.cli_json(&["rollout", "status"]);
        let word = s["rollout"]["status"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        (!matches!(word.as_str(), "running" | "planned")).then_some(s)
    });
    assert_eq!(s["rollout"]["status"], "completed", "{s:#}");
    let audit = c.cli_json(&["audit"]).to_string();
    assert!(audit.contains("rollout.result-refused"), "{audit}");
    assert!(audit.contains(&step), "{audit}");
    let log = read_log(&agents[0].sim_log()).expect("action log");
    for action in [
        Action::MaintenanceOn,
        Action::AptDistUpgrade,
        Action::Reboot,
    ] {
        let n = log.iter().filter(|e| e.ok && e.action == action).count();
        assert_eq!(n, 1, "{action:?} ran {n} times: {log:?}");
    }
}
