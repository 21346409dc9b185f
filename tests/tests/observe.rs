//! Observe-only agents end to end: an agent that inspects a fixture tree without
//! `--simulate`, and one run with `--observe-only`, report as observe-only; `nodes` shows
//! them so, and neither a rollout nor a shutdown is planned with them.

use fleetward_tests::{wait_for, Agent, AgentRun, Controller};
use std::time::Duration;

#[test]
fn observe_only_nodes_are_shown_and_no_operation_is_planned_with_them() {
    let c = Controller::start();
    // `--root DIR` without `--simulate`: observe-only by itself.
    let (root, state) = Agent::enroll(&c, "pve-01");
    let plain = Agent::run("pve-01", root, state);
    // `--observe-only`, even with the simulated executor.
    let (root, state) = Agent::enroll(&c, "pve-02");
    let asked = Agent::run_with(
        "pve-02",
        root,
        state,
        AgentRun {
            simulate: true,
            observe_only: true,
            ..AgentRun::default()
        },
    );
    wait_for(
        "both nodes online and observe-only",
        Duration::from_secs(30),
        || {
            let nodes = c.cli_json(&["nodes"]);
            ["pve-01", "pve-02"]
                .iter()
                .all(|n| {
                    nodes.as_array().unwrap().iter().any(|v| {
                        v["name"] == *n && v["state"] == "online" && v["observe_only"] == true
                    })
                })
                .then_some(())
        },
    );

    let plan = c.cli_json(&["rollout", "plan"]);
    let mut blocked: Vec<&str> = plan["blocked"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    blocked.sort();
    assert_eq!(blocked, ["pve-01", "pve-02"], "{plan:#}");
    let text = plan.to_string();
    assert!(text.contains("pve-01 is observe-only"), "{plan:#}");
    assert!(text.contains("pve-02 is observe-only"), "{plan:#}");

    let out = c.cli(&["rollout", "start", "--yes"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a rollout started: {err}");
    assert!(err.contains("observe-only: pve-01, pve-02"), "{err}");

    let out = c.cli(&["shutdown", "plan"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a shutdown was planned: {err}");
    assert!(err.contains("observe-only"), "{err}");

    for a in [&plain, &asked] {
        let log = std::fs::read_to_string(a.state.path().join("agent.log")).unwrap_or_default();
        assert!(log.contains("observe-only"), "{}: {log}", a.name);
        assert!(
            !a.state.path().join("sim-actions.jsonl").exists(),
            "{}: an action ran",
            a.name
        );
    }
}
