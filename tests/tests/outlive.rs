//! Actions outlive the agent (issue #13, item 4), on the simulator: the agent is killed
//! (SIGKILL) during a simulated `dist-upgrade`; restarted, and sent the same key again (as
//! the controller re-sends on reconnect), it finds the action's unit, lets it finish, and
//! reports its one result — the upgrade is applied once.

use fleetward_controller::events::{AgentEvent, AgentEventKind};
use fleetward_proto::action::{Action, ActionRequest};
use fleetward_proto::api::Command;
use fleetward_tests::{Agent, AgentRun, Controller};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

const WAIT: Duration = Duration::from_secs(40);

/// [`fleetward_tests::wait_event`] with this file's bound.
fn wait_event<T>(
    rx: &mut broadcast::Receiver<AgentEvent>,
    node: &str,
    what: &str,
    pick: impl FnMut(&AgentEventKind) -> Option<T>,
) -> T {
    fleetward_tests::wait_event(rx, node, what, WAIT, pick)
}

fn result_of(rx: &mut broadcast::Receiver<AgentEvent>, id: &str) -> (bool, String, bool) {
    wait_event(rx, "pve-01", &format!("the result of {id}"), |k| match k {
        AgentEventKind::CommandResult {
            id: i,
            ok,
            message,
            replayed,
            ..
        } if i == id => Some((*ok, message.clone(), *replayed)),
        _ => None,
    })
}

fn upgrades_in_log(agent: &Agent) -> usize {
    std::fs::read_to_string(agent.sim_log())
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"apt-dist-upgrade\""))
        .count()
}

#[test]
fn dist_upgrade_survives_an_agent_sigkill_and_completes_once() {
    let c = Controller::start_in_process();
    let server = c.server();
    let mut rx = server.subscribe();
    let (root, state) = Agent::enroll(&c, "pve-01");
    std::fs::write(
        root.path().join("var/lib/fleetward-sim/pending.json"),
        r#"{"kernel": "6.14.11-1-pve", "packages": [{"package": "pve-manager", "version": "9.0.15"}]}"#,
    )
    .unwrap();
    let mut agent = Agent::run_with(
        "pve-01",
        root,
        state,
        AgentRun::default()
            .sim_reboot_secs(0.2)
            .sim_action_secs(3.0),
    );
    wait_event(&mut rx, "pve-01", "Connected", |k| {
        matches!(k, AgentEventKind::Connected { .. }).then_some(())
    });

    let id = "rollout-1/pve-01/upgrade/1";
    let send = || {
        server
            .send_command(
                "pve-01",
                Command::action(&ActionRequest {
                    id: id.into(),
                    action: Action::AptDistUpgrade,
                }),
            )
            .unwrap()
    };
    send();
    // Running: its first output line arrived; the upgrade itself takes 3 s.
    wait_event(&mut rx, "pve-01", "the upgrade's first line", |k| match k {
        AgentEventKind::CommandOutput { id: i, line } if i == id => {
            line.contains("simulated apt-dist-upgrade").then_some(())
        }
        _ => None,
    });
    let started = Instant::now();
    agent.restart(); // SIGKILL, then `run` again with the same state and root.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the agent was not killed during the upgrade"
    );
    assert_eq!(upgrades_in_log(&agent), 0, "applied before the kill?");
    wait_event(&mut rx, "pve-01", "Connected again", |k| {
        matches!(k, AgentEventKind::Connected { .. }).then_some(())
    });

    // The controller re-sends the step under the same key: the unit is found and finishes.
    send();
    let (ok, message, replayed) = result_of(&mut rx, id);
    assert!(ok && replayed, "{message}");
    assert_eq!(upgrades_in_log(&agent), 1);
    let status = std::fs::read_to_string(agent.path("/var/lib/dpkg/status")).unwrap();
    assert!(status.contains("Package: proxmox-kernel-6.14.11-1-pve-signed"));

    // Once more: the recorded result, nothing applied again.
    send();
    let (ok, _, replayed) = result_of(&mut rx, id);
    assert!(ok && replayed);
    assert_eq!(upgrades_in_log(&agent), 1);
}
