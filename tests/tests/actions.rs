//! The controller's command plumbing end to end: the server in this process
//! (`Controller::send_command`, `Controller::subscribe`) and a real `fleetward-agent run
//! --simulate` on a seed node's fixture root.

use fleetward_controller::events::{AgentEvent, AgentEventKind};
use fleetward_proto::action::{Action, ActionRequest};
use fleetward_proto::api::Command;
use fleetward_tests::{Agent, Controller};
use std::time::Duration;
use tokio::sync::broadcast;

const WAIT: Duration = Duration::from_secs(30);

/// [`fleetward_tests::wait_event`] with this file's bound.
fn wait_event<T>(
    rx: &mut broadcast::Receiver<AgentEvent>,
    node: &str,
    what: &str,
    pick: impl FnMut(&AgentEventKind) -> Option<T>,
) -> T {
    fleetward_tests::wait_event(rx, node, what, WAIT, pick)
}

/// A command's result event: ok, message, exit code, replayed.
type Outcome = (bool, String, Option<i32>, bool);

/// (ack seen, output lines, result) of command `id`.
fn command_events(
    rx: &mut broadcast::Receiver<AgentEvent>,
    node: &str,
    id: &str,
) -> (bool, Vec<String>, Outcome) {
    let mut acked = false;
    let mut lines = Vec::new();
    let result = wait_event(rx, node, &format!("the result of {id}"), |k| match k {
        AgentEventKind::CommandAck { id: i } if i == id => {
            acked = true;
            None
        }
        AgentEventKind::CommandOutput { id: i, line } if i == id => {
            lines.push(line.clone());
            None
        }
        AgentEventKind::CommandResult {
            id: i,
            ok,
            message,
            exit_code,
            replayed,
        } if i == id => Some((*ok, message.clone(), *exit_code, *replayed)),
        _ => None,
    });
    (acked, lines, result)
}

#[test]
fn controller_sends_actions_and_publishes_agent_events() {
    let c = Controller::start_in_process();
    let server = c.server();
    let mut rx = server.subscribe();
    let send = |node: &str, id: &str, action: Action| {
        server.send_command(
            node,
            Command::action(&ActionRequest {
                id: id.into(),
                action,
            }),
        )
    };

    let err = send("pve-09", "x", Action::MaintenanceOn).unwrap_err();
    assert!(err.contains("not connected"), "{err}");

    let mut agent = Agent::start_simulated(&c, "pve-01", 0.2);
    let boot1 = wait_event(&mut rx, "pve-01", "Connected", |k| match k {
        AgentEventKind::Connected { boot_id } => Some(boot_id.clone()),
        _ => None,
    });
    wait_event(&mut rx, "pve-01", "the first report", |k| {
        (*k == AgentEventKind::Report).then_some(())
    });

    let id = "op-1/pve-01/maintenance-on/1";
    send("pve-01", id, Action::MaintenanceOn).unwrap();
    let (acked, lines, (ok, message, exit_code, replayed)) = command_events(&mut rx, "pve-01", id);
    assert!(acked && ok && !replayed, "{message}");
    assert_eq!(exit_code, Some(0));
    assert!(lines.iter().any(|l| l.contains("maintenance")), "{lines:?}");
    assert!(agent.path("/var/lib/fleetward-sim/maintenance").exists());

    // Re-sent: replayed, not executed again.
    send("pve-01", id, Action::MaintenanceOn).unwrap();
    let (_, lines, (ok, _, _, replayed)) = command_events(&mut rx, "pve-01", id);
    assert!(ok && replayed && lines.is_empty());

    // Reboot: result, disconnect, reconnect with a new boot id.
    let reboot = "op-1/pve-01/reboot/1";
    send("pve-01", reboot, Action::Reboot).unwrap();
    let (_, _, (ok, message, _, _)) = command_events(&mut rx, "pve-01", reboot);
    assert!(ok, "{message}");
    wait_event(&mut rx, "pve-01", "Disconnected", |k| {
        (*k == AgentEventKind::Disconnected).then_some(())
    });
    let boot2 = wait_event(&mut rx, "pve-01", "Connected again", |k| match k {
        AgentEventKind::Connected { boot_id } => Some(boot_id.clone()),
        _ => None,
    });
    assert_ne!(boot2, boot1);

    // Power-off: the agent exits 0; starting it again boots the node.
    send("pve-01", "op-2/pve-01/power-off/1", Action::PowerOff).unwrap();
    let (_, _, (ok, message, _, _)) = command_events(&mut rx, "pve-01", "op-2/pve-01/power-off/1");
    assert!(ok, "{message}");
    wait_event(&mut rx, "pve-01", "Disconnected", |k| {
        (*k == AgentEventKind::Disconnected).then_some(())
    });
    let status = fleetward_tests::wait_for("the agent to exit", WAIT, || agent.try_exit());
    assert!(status.success(), "{status:?}");
    let err = send("pve-01", "op-2/pve-01/x/1", Action::MaintenanceOff).unwrap_err();
    assert!(err.contains("not connected"), "{err}");
    agent.restart();
    let boot3 = wait_event(&mut rx, "pve-01", "Connected after power-on", |k| match k {
        AgentEventKind::Connected { boot_id } => Some(boot_id.clone()),
        _ => None,
    });
    assert!(boot3 != boot2 && boot3 != boot1);

    let log = fleetward_agent_log(&agent);
    assert_eq!(log, ["maintenance-on", "reboot", "power-off"]);
}

/// The action names in the agent's simulated action log.
fn fleetward_agent_log(agent: &Agent) -> Vec<String> {
    std::fs::read_to_string(agent.sim_log())
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("log line");
            v["action"]["action"].as_str().expect("action").to_string()
        })
        .collect()
}
