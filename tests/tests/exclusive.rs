//! One operation at a time (issue 13, items 6–8) end to end: the real controller, three
//! real agents with the simulated executor on the seed nodes' roots, the operator CLI.
//!
//! - A shutdown started during a rollout is refused; with `--preempt` or a
//!   `power-event on-battery` the rollout stops sending, its in-flight action settles, and
//!   no node receives a rollout action after the shutdown's first action (the agents' own
//!   action logs), with the preemption in both event logs and the audit log.
//! - `rollout abort` asks (refused without a terminal), a plain abort leaves a node in
//!   maintenance and `findings` says `node.left-in-maintenance` until it is cleared;
//!   `abort --restore` leaves no node in maintenance and no `noout`.
//! - Without `host_node`, a controller whose hostname is a node's runs "on" it: the
//!   shutdown plan puts that node last and alone.

use fleetward_agent::executor::simulated::{read_log, LogEntry};
use fleetward_tests::{support, wait_for, Agent, AgentRun, Controller};
use serde_json::Value;
use std::time::Duration;

const NODES: [&str; 3] = ["pve-01", "pve-02", "pve-03"];
const WAIT: Duration = Duration::from_secs(40);

/// Rollout and shutdown settings with a fast tick; `host` is the `host_node` line.
fn controller(host: &str) -> Controller {
    Controller::start_with_toml(
        &[],
        &format!(
            "{host}\n[rollout]\naction_ms = 30000\nrefresh_ms = 20000\nreboot_ms = 20000\n\
             post_reboot_ms = 20000\nmax_silence_ms = 10000\ntick_ms = 100\n\n\
             [shutdown]\ntick_ms = 100\npreempt_wait_ms = 20000\n"
        ),
    )
}

/// The seed nodes with a pending upgrade; every simulated action takes `action_secs`.
fn cluster(c: &Controller, action_secs: f64) -> Vec<Agent> {
    let pending = r#"{"packages": [{"package": "pve-manager", "version": "9.0.12"}],
        "kernel": "6.14.11-1-pve"}"#;
    let agents: Vec<Agent> = NODES
        .iter()
        .map(|n| {
            let dir = support::fixtures_dir().join("seed").join(n);
            let (root, state) = Agent::enroll_fixture(c, n, &dir);
            let sim = root.path().join("var/lib/fleetward-sim");
            std::fs::create_dir_all(&sim).unwrap();
            std::fs::write(sim.join("pending.json"), pending).unwrap();
            let mut run = AgentRun::default().sim_reboot_secs(0.3);
            if action_secs > 0.0 {
                run = run.sim_action_secs(action_secs);
            }
            Agent::run_with(n, root, state, run)
        })
        .collect();
    wait_for("three nodes online with reports", WAIT, || {
        let nodes = c.cli_json(&["nodes"]);
        let list = nodes.as_array()?;
        let ok = NODES.iter().all(|n| {
            list.iter()
                .any(|x| x["name"] == *n && x["state"] == "online")
        }) && NODES
            .iter()
            .all(|n| !c.cli_json(&["node", "show", n])["report"].is_null());
        ok.then_some(())
    });
    agents
}

/// A command's JSON whatever its verdict (0 or 1).
fn cli_any(c: &Controller, args: &[&str]) -> Value {
    let out = c.cli(args);
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "fleetward {args:?}: {out:?}"
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

fn rollout(c: &Controller) -> Value {
    cli_any(c, &["rollout", "status"])
}

/// Starts a rollout and waits until pve-01 is in maintenance (wait-guests or later).
fn rollout_in_maintenance(c: &Controller) {
    c.cli_json(&["rollout", "start", "--yes"]);
    wait_for("pve-01 in maintenance", WAIT, || {
        let s = rollout(c);
        let n = s["rollout"]["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["name"] == "pve-01")?
            .clone();
        let phase = n["phase"].as_str()?;
        (!matches!(phase, "pending" | "maintenance-on")).then_some(())
    });
}

fn logs(agents: &[Agent]) -> Vec<LogEntry> {
    let mut all: Vec<LogEntry> = agents
        .iter()
        .flat_map(|a| read_log(&a.sim_log()).unwrap())
        .collect();
    all.sort_by_key(|e| (e.started_ms, e.finished_ms));
    all
}

fn events(s: &Value, kind: &str) -> Vec<Value> {
    s["events"]
        .as_array()
        .map(|e| e.iter().filter(|e| e["event"] == kind).cloned().collect())
        .unwrap_or_default()
}

/// After a preempting start: the rollout was halted (preempted) then aborted; the
/// shutdown says it preempted it; no rollout action started (or was still running) once
/// the shutdown's first action began.
fn assert_preempted(c: &Controller, agents: &[Agent]) {
    let s = rollout(c);
    assert_eq!(s["rollout"]["status"], "aborted", "{s:#}");
    let halted = events(&s, "halted");
    assert!(
        halted.iter().any(|e| e["gate"] == "preempted"),
        "rollout events: {s:#}"
    );
    assert_eq!(events(&s, "aborted").len(), 1);
    let sd = cli_any(c, &["shutdown", "status"]);
    let pre = events(&sd, "preempted");
    assert_eq!(pre.len(), 1, "shutdown events: {sd:#}");
    let rollout_id = s["rollout"]["id"].as_str().unwrap();
    assert!(
        pre[0]["reason"].as_str().unwrap().contains(rollout_id),
        "{pre:?}"
    );
    let audit = c.cli_json(&["audit"]).to_string();
    assert!(audit.contains("rollout.preempt"), "{audit}");
    // Let the shutdown act for a while, then read every agent's own log.
    wait_for("three shutdown actions executed", WAIT, || {
        let n = logs(agents)
            .iter()
            .filter(|e| e.id.starts_with("shutdown-"))
            .count();
        (n >= 3).then_some(())
    });
    let log = logs(agents);
    let first = log
        .iter()
        .find(|e| e.id.starts_with("shutdown-"))
        .unwrap()
        .started_ms;
    let rollout_actions: Vec<&LogEntry> = log
        .iter()
        .filter(|e| e.id.starts_with("rollout-"))
        .collect();
    assert!(!rollout_actions.is_empty());
    for e in &rollout_actions {
        assert!(
            e.finished_ms <= first,
            "a rollout action ran after the shutdown began: {e:?} (first shutdown action at {first})"
        );
    }
}

#[test]
fn a_shutdown_during_a_rollout_is_refused_and_preempt_stops_the_rollout_first() {
    let c = controller("host_node = \"pve-03\"");
    let agents = cluster(&c, 1.0);
    rollout_in_maintenance(&c);
    let out = c.cli(&["shutdown", "start", "--yes"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("one operation at a time")
            && err.contains("rollout")
            && err.contains("fleetward rollout abort")
            && err.contains("--preempt"),
        "{err}"
    );
    assert!(logs(&agents).iter().all(|e| !e.id.starts_with("shutdown-")));
    // A second rollout is refused the same way.
    let out = c.cli(&["rollout", "start", "--yes"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");

    let out = c.cli(&["shutdown", "start", "--yes", "--preempt"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_preempted(&c, &agents);
}

#[test]
fn power_loss_preempts_a_rollout() {
    let c = controller("host_node = \"pve-03\"");
    let agents = cluster(&c, 1.0);
    rollout_in_maintenance(&c);
    let out = c.cli(&["power-event", "on-battery", "--runtime", "900"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_preempted(&c, &agents);
}

fn left_findings(c: &Controller) -> Vec<Value> {
    c.cli_json(&["findings"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["code"] == "node.left-in-maintenance")
        .cloned()
        .collect()
}

#[test]
fn abort_asks_names_what_it_leaves_and_restore_brings_it_back() {
    let c = controller("host_node = \"pve-03\"");
    let agents = cluster(&c, 0.2);
    rollout_in_maintenance(&c);

    // No terminal to answer on: refused, nothing aborted.
    let out = c.cli(&["rollout", "abort"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    assert_ne!(rollout(&c)["rollout"]["status"], "aborted");

    // A plain abort leaves pve-01 in maintenance: the status and `findings` say so.
    let s = cli_any(&c, &["rollout", "abort", "--yes"]);
    assert_eq!(s["rollout"]["status"], "aborted");
    assert_eq!(s["rollout"]["left_changed"], serde_json::json!(["pve-01"]));
    let pve01 = &agents[0];
    let marker = pve01.path("/var/lib/fleetward-sim/maintenance");
    wait_for("pve-01 in maintenance on disk", WAIT, || {
        marker.exists().then_some(())
    });
    let f = wait_for("node.left-in-maintenance for pve-01", WAIT, || {
        let f = left_findings(&c);
        (!f.is_empty()).then_some(f)
    });
    assert!(f.iter().all(|f| f["node"] == "pve-01"), "{f:?}");
    assert_eq!(f[0]["severity"], "warning");
    // A person brings it back: the finding goes with the next report.
    std::fs::remove_file(&marker).unwrap();
    c.cli_json(&["node", "refresh", "pve-01"]);
    wait_for("the finding cleared", WAIT, || {
        left_findings(&c).is_empty().then_some(())
    });

    // Abort --restore: maintenance off (and noout unset) before it ends.
    rollout_in_maintenance(&c);
    let s = cli_any(&c, &["rollout", "abort", "--yes", "--restore"]);
    assert_ne!(s["rollout"]["status"], "completed");
    let s = wait_for("the restore to end", WAIT, || {
        let s = rollout(&c);
        (s["rollout"]["status"] == "aborted").then_some(s)
    });
    assert_eq!(s["rollout"]["left_changed"], serde_json::json!([]), "{s:#}");
    assert_eq!(events(&s, "restored").len(), 1, "{s:#}");
    for a in &agents {
        assert!(
            !a.path("/var/lib/fleetward-sim/maintenance").exists(),
            "{}",
            a.name
        );
        assert!(
            !a.path("/var/lib/fleetward-sim/ceph-noout").exists(),
            "{}",
            a.name
        );
    }
    let offs = logs(&agents)
        .iter()
        .filter(|e| e.id.starts_with(s["rollout"]["id"].as_str().unwrap()))
        .filter(|e| e.action.name() == "maintenance-off")
        .count();
    assert_eq!(offs, 1);
    wait_for("no node.left-in-maintenance", WAIT, || {
        left_findings(&c).is_empty().then_some(())
    });
}

#[test]
fn without_host_node_the_node_the_controller_runs_on_is_powered_off_last_and_alone() {
    let c = controller("");
    c.set_test_hostname("pve-02");
    let mut c = c;
    c.restart();
    let _agents = cluster(&c, 0.0);
    let plan = c.cli_json(&["shutdown", "plan"]);
    let p = &plan["plan"];
    assert_eq!(p["controller_host"], "pve-02", "{plan:#}");
    assert_eq!(p["controller_host_unknown"], false);
    let tiers = p["tiers"].as_array().unwrap();
    assert_eq!(
        tiers.last().unwrap(),
        &serde_json::json!(["pve-02"]),
        "{plan:#}"
    );
    assert!(tiers[..tiers.len() - 1]
        .iter()
        .all(|t| !t.as_array().unwrap().contains(&serde_json::json!("pve-02"))));
    let summary = plan["summary"].to_string();
    assert!(summary.contains("found: hostname pve-02"), "{summary}");
}
