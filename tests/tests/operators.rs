//! Operator identities (#14 item 2): a scoped identity is refused what its scope does not
//! allow and nothing changes; a revoked operator's `--watch` ends within a second, and
//! its later calls are refused while the others keep working.

use fleetward_tests::fakefleet::{self, FleetOptions};
use fleetward_tests::{bin, wait_for, Controller};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `fleetward <args>` as the operator whose `cli.toml` is `cfg`, JSON output.
fn as_op(cfg: &Path, args: &[&str]) -> Output {
    Command::new(bin("fleetward"))
        .args(args)
        .args(["--output", "json", "--config"])
        .arg(cfg)
        .output()
        .expect("fleetward cli")
}

/// Issues operator `name` with `scope` into a directory of its own; returns its cli.toml.
fn issue(c: &Controller, dir: &Path, name: &str, scope: &str) -> std::path::PathBuf {
    let out = dir.join(name);
    let v = c.cli_json(&[
        "operator",
        "issue",
        name,
        "--scope",
        scope,
        "--write-config",
        out.to_str().unwrap(),
    ]);
    assert_eq!(v["scope"], scope, "{v}");
    out.join("cli.toml")
}

/// What the admin can see of the controller's state: nodes (without their liveness),
/// tokens, operators, rollouts, and the audit log's length.
fn state(c: &Controller) -> Value {
    let mut nodes = c.cli_json(&["nodes"]);
    for n in nodes.as_array_mut().unwrap() {
        let n = n.as_object_mut().unwrap();
        n.retain(|k, _| k == "name" || k == "revoked");
    }
    // A running rollout moves on by itself: which rollouts exist, and by whom, is the state.
    let rollouts: Vec<Value> = c
        .cli_json(&["rollout", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| serde_json::json!([r["id"], r["actor"]]))
        .collect();
    let audit = c.cli_json(&["audit", "--limit", "1000"]);
    serde_json::json!({
        "nodes": nodes,
        "tokens": c.cli_json(&["token", "list"]),
        "operators": c.cli_json(&["operator", "list"]),
        "rollouts": rollouts,
        "audit": audit.as_array().unwrap().len(),
    })
}

#[test]
fn scopes_refuse_without_changing_state_and_revocation_ends_a_watch_within_a_second() {
    let c = Controller::start();
    let creds = tempfile::tempdir().unwrap();

    // Three simulated nodes whose every action takes a minute: a rollout stays running.
    let names: Vec<String> = (1..=3).map(|i| format!("node-{i}")).collect();
    let opts = FleetOptions {
        reboot: Duration::from_millis(300),
        action: Duration::from_secs(60),
    };
    let (rt, _fleet) = fakefleet::start(&c, &names, 3, opts);
    wait_for("three nodes online", Duration::from_secs(30), || {
        let nodes = c.cli_json(&["nodes"]);
        let online = nodes.as_array()?.iter().filter(|n| n["state"] == "online");
        (online.count() == 3).then_some(())
    });

    let ups = issue(&c, creds.path(), "ups", "power");
    let watcher = issue(&c, creds.path(), "watcher", "viewer");
    let ops = issue(&c, creds.path(), "ops", "operator");
    let listed = c.cli_json(&["operator", "list"]);
    let scope_of = |name: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == name)
            .map(|o| o["scope"].clone())
    };
    assert_eq!(scope_of("admin"), Some("admin".into()), "{listed}");
    assert_eq!(scope_of("ups"), Some("power".into()), "{listed}");

    // The UPS identity and the viewer read, but change nothing they may not.
    let before = state(&c);
    for (cfg, args) in [
        (&ups, vec!["token", "create", "--ttl", "10m"]),
        (&ups, vec!["rollout", "start", "--nodes", "node-1", "--yes"]),
        (&ups, vec!["operator", "issue", "evil", "--scope", "admin"]),
        (&ups, vec!["node", "revoke", "node-1"]),
        (&ups, vec!["operator", "revoke", "admin"]),
        (
            &watcher,
            vec!["power-event", "on-battery", "--runtime", "600"],
        ),
        (&watcher, vec!["node", "refresh", "node-1"]),
        (&ops, vec!["token", "create", "--ttl", "10m"]),
        (&ops, vec!["operator", "revoke", "ups"]),
    ] {
        let out = as_op(cfg, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?} must be refused: {out:?}"
        );
        assert!(err.contains("needs scope"), "{args:?}: {err}");
    }
    assert_eq!(state(&c), before, "a refused call changed state");
    for cfg in [&ups, &watcher, &ops] {
        let out = as_op(cfg, &["nodes"]);
        assert!(out.status.success(), "{out:?}");
    }

    // The operator starts a rollout; the viewer watches it.
    let out = as_op(&ops, &["rollout", "start", "--nodes", "node-1", "--yes"]);
    assert!(out.status.success(), "{out:?}");
    let mut watch = Command::new(bin("fleetward"))
        .args([
            "rollout", "status", "--watch", "--output", "json", "--config",
        ])
        .arg(&watcher)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["rollout"]["status"], "running", "{first}");
    assert!(watch.try_wait().unwrap().is_none(), "the watch goes on");

    let before = state(&c);
    let out = c.cli_json(&["operator", "revoke", "watcher"]);
    let revoked_at = Instant::now();
    assert_eq!(out["revoked"], true, "{out}");
    let status = loop {
        if let Some(s) = watch.try_wait().unwrap() {
            break s;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(5),
            "the watch did not end"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = revoked_at.elapsed();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut watch.stderr.take().unwrap(), &mut err).unwrap();
    assert!(
        took < Duration::from_secs(1),
        "the watch ended after {took:?}"
    );
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("revoked"), "{err}");

    // Refused from then on; the revocation is listed and audited, the others still work.
    let out = as_op(&watcher, &["nodes"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let listed = c.cli_json(&["operator", "list"]);
    let w = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "watcher")
        .unwrap();
    assert_eq!(w["revoked"], true, "{listed}");
    let audit = c.cli_json(&["audit", "--limit", "5"]);
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "operator.revoke" && e["target"] == "watcher"),
        "{audit}"
    );
    let mut after = state(&c);
    after["operators"] = before["operators"].clone();
    after["audit"] = before["audit"].clone();
    assert_eq!(after, before, "revoking an operator changed something else");
    assert!(as_op(&ups, &["nodes"]).status.success());
    // The last admin cannot be revoked (the data directory's own identity).
    let out = c.cli(&["operator", "revoke", "admin"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("last admin"));
    drop(rt);
}
