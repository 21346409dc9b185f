//! The real controller and three real agents (fixture roots of the seed nodes) on
//! loopback: init, token, enroll, run; the fleet as the operator CLI shows it; refresh;
//! revoke.

use fleetward_tests::{bin, wait_for, Agent, Controller};
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

/// The printed enroll line as (the token from its `FLEETWARD_TOKEN=`, the arguments after
/// `fleetward-agent`).
fn enroll_command(c: &Controller, node: &str) -> (String, Vec<String>) {
    let t = c.cli_json(&["token", "create", "--node", node, "--ttl", "10m"]);
    let cmd = t["enroll_command"]
        .as_str()
        .expect("enroll_command")
        .to_string();
    let mut words = cmd.split_whitespace();
    let token = words
        .next()
        .and_then(|w| w.strip_prefix("FLEETWARD_TOKEN="))
        .expect("the token is passed in the environment")
        .to_string();
    assert_eq!(words.next(), Some("fleetward-agent"));
    (token, words.map(String::from).collect())
}

fn node<'a>(nodes: &'a Value, name: &str) -> &'a Value {
    nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("{name} missing from {nodes}"))
}

fn codes(n: &Value) -> Vec<String> {
    n["findings"]
        .as_array()
        .map(|f| {
            f.iter()
                .map(|f| f["code"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn three_agents_enroll_report_refresh_and_revoke() {
    let c = Controller::start();

    // A wrong CA fingerprint: the agent refuses, and the token stays unused.
    let (token, mut args) = enroll_command(&c, "pve-01");
    let pin = args.iter().position(|a| a == "--ca-sha256").unwrap() + 1;
    args[pin] = "00".repeat(32);
    let state = tempfile::tempdir().unwrap();
    let out = Command::new(bin("fleetward-agent"))
        .env("FLEETWARD_TOKEN", &token)
        .args(&args)
        .arg("--state-dir")
        .arg(state.path())
        .args(["--name", "pve-01"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "enroll with a wrong pin succeeded");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("fingerprint"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tokens = c.cli_json(&["token", "list"]);
    assert!(
        tokens
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["used"] == false),
        "{tokens}"
    );

    let agents: Vec<Agent> = ["pve-01", "pve-02", "pve-03"]
        .iter()
        .map(|n| Agent::start(&c, n))
        .collect();

    let nodes = wait_for(
        "three nodes online with reports",
        Duration::from_secs(30),
        || {
            let nodes = c.cli_json(&["nodes"]);
            let ready = ["pve-01", "pve-02", "pve-03"].iter().all(|n| {
                nodes
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|v| v["name"] == *n && v["state"] == "online" && !codes(v).is_empty())
            });
            ready.then_some(nodes)
        },
    );
    assert_eq!(nodes.as_array().unwrap().len(), 3);
    for a in &agents {
        let n = node(&nodes, &a.name);
        let codes = codes(n);
        assert!(
            codes.contains(&"boot.esp-sync-disabled".to_string()),
            "{}: {codes:?}",
            a.name
        );
        assert_eq!(
            codes.contains(&"boot.secure-boot-setup-mode".to_string()),
            a.name == "pve-03"
        );
    }

    // Refresh: a fresh report arrives.
    let received = |c: &Controller| {
        c.cli_json(&["node", "show", "pve-01"])["report_received_unix_ms"]
            .as_i64()
            .unwrap()
    };
    let before = received(&c);
    let out = c.cli(&["node", "refresh", "pve-01"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        "a fresh report after refresh",
        Duration::from_secs(10),
        || (received(&c) > before).then_some(()),
    );

    // Revoke: the node is cut off within one second and stays off.
    let out = c.cli(&["node", "revoke", "pve-02"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = Instant::now();
    wait_for("pve-02 offline", Duration::from_secs(1), || {
        (node(&c.cli_json(&["nodes"]), "pve-02")["state"] == "offline").then_some(())
    });
    let cut = t.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let nodes = c.cli_json(&["nodes"]);
    assert_eq!(
        node(&nodes, "pve-02")["state"],
        "offline",
        "a revoked agent got back in"
    );
    assert_eq!(node(&nodes, "pve-02")["revoked"], true);
    assert_eq!(node(&nodes, "pve-01")["state"], "online");
    assert!(cut < Duration::from_secs(1), "revocation took {cut:?}");
    let audit = c.cli_json(&["audit"]);
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for a in ["token.create", "node.enroll", "node.refresh", "node.revoke"] {
        assert!(actions.contains(&a), "audit lacks {a}: {actions:?}");
    }
    assert!(
        !agents[1].log().contains("PRIVATE KEY"),
        "the agent logged its key"
    );
    assert!(
        !c.log().contains("PRIVATE KEY"),
        "the controller logged a key"
    );
}

/// With short-lived agent certificates the agent renews on its own: the certificate the
/// controller knows for the node changes, and the node stays online.
#[test]
fn agents_renew_their_certificates() {
    let c = Controller::start_with(&[("agent_cert_secs", "60")]);
    let (root, state) = Agent::enroll(&c, "pve-01");
    let enrolled = node(&c.cli_json(&["nodes"]), "pve-01").clone();
    let agent = Agent::run("pve-01", root, state);
    let renewed = wait_for(
        "a renewed certificate, online",
        Duration::from_secs(20),
        || {
            let n = node(&c.cli_json(&["nodes"]), "pve-01").clone();
            (n["cert_serial"] != enrolled["cert_serial"] && n["state"] == "online").then_some(n)
        },
    );
    assert!(
        renewed["cert_not_after_unix_ms"].as_i64() >= enrolled["cert_not_after_unix_ms"].as_i64()
    );
    let log = std::fs::read_to_string(agent.state.path().join("agent.log")).unwrap_or_default();
    assert!(
        log.contains("renew"),
        "the agent did not log its renewal: {log}"
    );
    drop(agent);
}
