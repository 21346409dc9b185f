//! Cluster harmonisation end to end: the controller with the seed policy and three real
//! agents on the seed fixtures. The clean cluster has no drift and meets its policy; an
//! extra sources.list line, a different nameserver and a missing disabled reference give
//! exactly the matching drift/policy findings for that node, and fixing the files clears
//! them. Also: capture, history, diff, metrics (checked by promtool) and the markdown report.

use fleetward_tests::{wait_for, Agent, Controller};
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// (code, node) of every drift.*/policy.* finding.
fn fleet_findings(c: &Controller) -> BTreeSet<(String, String)> {
    c.cli_json(&["drift"])
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["code"].as_str().unwrap().to_string(),
                f["node"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn set(items: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    items
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn promtool() -> Option<PathBuf> {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("promtool"))
        .find(|p| p.is_file());
    assert!(
        found.is_some() || std::env::var_os("CI").is_none(),
        "promtool is missing (Debian package `prometheus`; .ci/run installs it)"
    );
    found
}

#[test]
fn drift_policy_history_metrics_and_report() {
    // The controller reads its own copy, so the test can change it and reload.
    let seed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/policy/seed.toml");
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::copy(&seed, &policy).unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let c = Controller::start_with(&[
        (
            "# policy",
            &format!("{:?}", policy.canonicalize().unwrap().display().to_string()),
        ),
        ("# metrics_listen", &format!("{metrics:?}")),
    ]);
    let agents: Vec<Agent> = ["pve-01", "pve-02", "pve-03"]
        .iter()
        .map(|n| Agent::start(&c, n))
        .collect();
    wait_for("three reports", Duration::from_secs(30), || {
        let nodes = c.cli_json(&["nodes"]);
        (nodes
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["last_seen_unix_ms"].is_i64())
            .count()
            == 3)
            .then_some(())
    });
    // Reports come in one by one; the clean cluster settles with no fleet findings.
    wait_for(
        "no drift on the clean seed cluster",
        Duration::from_secs(10),
        || fleet_findings(&c).is_empty().then_some(()),
    );
    assert_eq!(
        c.cli_json(&["policy", "check"]),
        Value::Array(vec![]),
        "the seed cluster violates the seed policy"
    );
    assert!(c.cli_json(&["policy", "show"])["toml"]
        .as_str()
        .unwrap()
        .contains("fritz.box"));

    // SIGHUP reloads the policy; a broken file keeps the old one in force.
    let text = std::fs::read_to_string(&policy).unwrap();
    std::fs::write(&policy, text.replace("192.168.1.110", "192.168.1.111")).unwrap();
    let pid = c.pid().unwrap().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    wait_for("the reloaded policy", Duration::from_secs(5), || {
        let v = c.cli_json(&["policy", "check"]);
        (v.as_array()
            .unwrap()
            .iter()
            .filter(|f| f["code"] == "policy.dns")
            .count()
            == 3)
            .then_some(())
    });
    std::fs::write(&policy, "[dns\nbroken").unwrap();
    let out = c.cli(&["policy", "reload"]);
    assert!(!out.status.success(), "a broken policy was accepted");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("policy"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&policy, text).unwrap();
    c.cli_json(&["policy", "reload"]);
    assert_eq!(c.cli_json(&["policy", "check"]), Value::Array(vec![]));

    // Capture from a clean node, then check all three against it.
    let captured = c.cli_json(&["policy", "capture", "--from", "pve-01"]);
    let file = c.dir.path().join("captured.toml");
    std::fs::write(&file, captured["toml"].as_str().unwrap()).unwrap();
    let check = c.cli_json(&["policy", "check", "--file", file.to_str().unwrap()]);
    assert_eq!(
        check,
        Value::Array(vec![]),
        "captured policy not met by the seed nodes"
    );

    // Three deviations on three nodes.
    let sources_list = agents[2].path("/etc/apt/sources.list");
    std::fs::write(
        &sources_list,
        "deb http://deb.debian.org/debian trixie-backports main\n",
    )
    .unwrap();
    let resolv = agents[1].path("/etc/resolv.conf");
    let resolv_orig = std::fs::read_to_string(&resolv).unwrap();
    std::fs::write(&resolv, "search fritz.box\nnameserver 192.168.1.1\n").unwrap();
    let disabled = agents[0].path("/etc/apt/sources.list.d/ceph.sources.disabled");
    let disabled_orig = std::fs::read(&disabled).unwrap();
    std::fs::remove_file(&disabled).unwrap();
    let expected = set(&[
        ("drift.apt", "pve-03"),
        ("policy.apt-files", "pve-03"),
        ("policy.apt-repo", "pve-03"),
        ("drift.dns", "pve-02"),
        ("policy.dns", "pve-02"),
        ("policy.apt-files", "pve-01"),
    ]);
    let mut last = BTreeSet::new();
    let settled = (0..100).any(|_| {
        last = fleet_findings(&c);
        let ok = last == expected;
        if !ok {
            std::thread::sleep(Duration::from_millis(100));
        }
        ok
    });
    assert!(settled, "fleet findings {last:?}, expected {expected:?}");
    let drift = c.cli_json(&["drift"]);
    let dns = drift
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == "drift.dns")
        .unwrap();
    assert!(
        dns["message"].as_str().unwrap().contains("192.168.1.1"),
        "{dns}"
    );

    // History and diff tell what changed.
    let history = c.cli_json(&["node", "history", "pve-02"]);
    assert!(
        history
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["new"].as_str().is_some_and(|v| v.contains("192.168.1.1"))),
        "{history}"
    );
    let diff = c.cli_json(&["node", "diff", "pve-01", "pve-02"]);
    let rows = diff.as_array().unwrap();
    let first_equal = rows
        .iter()
        .position(|r| r["differs"] == false)
        .unwrap_or(rows.len());
    assert!(
        rows[..first_equal].iter().all(|r| r["differs"] == true),
        "differences come first"
    );
    assert!(
        rows[..first_equal]
            .iter()
            .any(|r| r["key"].as_str().unwrap().starts_with("dns.")),
        "{diff}"
    );

    // Metrics: valid exposition, as Prometheus' own tool sees it.
    let body = http_get(&metrics, "/metrics");
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains("fleetward_node_up"), "{body}");
    if let Some(promtool) = promtool() {
        let text = body.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let mut p = Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = p.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Fix everything: the findings clear after the next reports.
    std::fs::write(&sources_list, "").unwrap();
    std::fs::write(&resolv, resolv_orig).unwrap();
    std::fs::write(&disabled, disabled_orig).unwrap();
    wait_for("drift to clear", Duration::from_secs(10), || {
        fleet_findings(&c).is_empty().then_some(())
    });

    // The document from reality: stable, and true about pve-03 and ESP sync.
    let a = c.cli_text(&["report", "--format", "markdown"]);
    let b = c.cli_text(&["report", "--format", "markdown"]);
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert_eq!(a.stdout, b.stdout, "the report is not deterministic");
    let doc = String::from_utf8(a.stdout).unwrap();
    assert!(doc.contains("Setup Mode"), "{doc}");
    assert!(doc.contains("not configured"), "{doc}");
    drop(agents);
}
