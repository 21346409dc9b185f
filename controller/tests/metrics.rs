//! The metrics endpoint over real HTTP, its exposition checked by `promtool check metrics`
//! and the shipped alert rules by `promtool check rules` / `promtool test rules`.
//!
//! promtool comes from Debian's `prometheus` package (installed by `.ci/run`). Without it
//! the promtool checks fail when `CI` is set and are skipped (with a note) otherwise.

use fleetward_controller::metrics::{
    check_listen, serve, FleetSnapshot, IngestSnapshot, NodeSnapshot, OperatorSnapshot,
};
use fleetward_proto::Severity;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn fleet() -> FleetSnapshot {
    let f = |code: &str, sev| (code.to_string(), sev);
    FleetSnapshot {
        nodes: vec![
            NodeSnapshot {
                name: "pve1".into(),
                up: true,
                last_report_age_secs: Some(12.5),
                reboot_required: true,
                findings: vec![
                    f("boot.reboot-required", Severity::Warning),
                    f("apt.duplicate", Severity::Error),
                    f("apt.duplicate", Severity::Error),
                    f("boot.kernel-pinned", Severity::Info),
                ],
                drift_findings: 2,
            },
            NodeSnapshot {
                name: "pve2".into(),
                up: true,
                last_report_age_secs: Some(3.0),
                reboot_required: false,
                findings: vec![f("apt.legacy-format", Severity::Info)],
                drift_findings: 0,
            },
            NodeSnapshot {
                // A node name needing label escaping must not break the exposition.
                name: "pve3 \"old\"\\".into(),
                up: false,
                last_report_age_secs: None,
                reboot_required: false,
                findings: vec![f("cluster.not-quorate", Severity::Error)],
                drift_findings: 0,
            },
        ],
        certificates: vec![
            ("ca".into(), 2_096_000_000),
            ("server".into(), 1_950_000_000),
        ],
        operators: vec![OperatorSnapshot {
            name: "ups".into(),
            scope: "power".into(),
            not_after_secs: 1_800_000_000.0,
        }],
        ingest: IngestSnapshot {
            data_dir_free_bytes: Some(10 << 30),
            min_free_bytes: 512 << 20,
            refused: vec![("size", 1), ("rate", 280), ("disk", 0)],
            unchanged: 7,
        },
    }
}

/// One HTTP/1.1 request on a fresh connection; returns (status, headers, body).
async fn http(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("send request");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("response within 10 s")
        .expect("read response");
    let raw = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("header/body separator");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// `promtool` on PATH; `None` (after a note) when missing outside CI; panics in CI.
fn promtool() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("promtool"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let in_ci = std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"));
        if in_ci {
            panic!(
                "promtool is not on PATH but CI is set: install Debian's `prometheus` \
                 package (it provides /usr/bin/promtool) so the exposition and the alert \
                 rules are checked"
            );
        }
        eprintln!("note: promtool not found on PATH; skipping the promtool checks");
    }
    found
}

fn run(cmd: &mut Command, stdin: Option<&str>) -> (bool, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    {
        let mut pipe = child.stdin.take().expect("stdin");
        if let Some(input) = stdin {
            pipe.write_all(input.as_bytes()).expect("write to promtool");
        }
    }
    let out = child.wait_with_output().expect("promtool output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn alerts_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/prometheus/fleetward-alerts.yml")
}

#[tokio::test]
async fn metrics_endpoint_serves_valid_exposition() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, Arc::new(fleet), async move {
        let _ = stop_rx.await;
    }));

    let (status, head, body) = http(addr, "GET", "/metrics").await;
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(
        head.contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    for line in [
        "fleetward_nodes 3",
        "fleetward_node_up{node=\"pve1\"} 1",
        "fleetward_operator_cert_expiry_timestamp_seconds{operator=\"ups\",scope=\"power\"} 1800000000.0",
        "fleetward_node_up{node=\"pve3 \\\"old\\\"\\\\\"} 0",
        "fleetward_node_last_report_age_seconds{node=\"pve1\"} 12.5",
        "fleetward_node_reboot_required{node=\"pve1\"} 1",
        "fleetward_node_reboot_required{node=\"pve2\"} 0",
        "fleetward_findings{node=\"pve1\",code=\"apt.duplicate\",severity=\"error\"} 2",
        "fleetward_findings{node=\"pve1\",code=\"boot.kernel-pinned\",severity=\"info\"} 1",
        "fleetward_node_findings{node=\"pve1\",severity=\"error\"} 2",
        "fleetward_node_findings{node=\"pve1\",severity=\"warning\"} 1",
        "fleetward_node_findings{node=\"pve2\",severity=\"error\"} 0",
        "fleetward_node_drift_findings{node=\"pve1\"} 2",
        "fleetward_certificate_expiry_timestamp_seconds{certificate=\"ca\"} 2096000000",
        "fleetward_certificate_expiry_timestamp_seconds{certificate=\"server\"} 1950000000",
        "fleetward_data_dir_free_bytes 10737418240",
        "fleetward_data_dir_min_free_bytes 536870912",
        "fleetward_reports_refused{reason=\"rate\"} 280",
        "fleetward_reports_unchanged 7",
        "# EOF",
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "missing line {line:?} in:\n{body}"
        );
    }
    // A node that never reported has no age series rather than a made-up one.
    assert!(!body.contains("fleetward_node_last_report_age_seconds{node=\"pve3"));
    for name in [
        "process_cpu_seconds",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        assert!(
            body.lines().any(|l| l.starts_with(&format!("{name} "))),
            "missing {name} in:\n{body}"
        );
    }

    let (status, _, _) = http(addr, "GET", "/").await;
    assert_eq!(status, 404);
    let (status, _, _) = http(addr, "GET", "/metrics/x").await;
    assert_eq!(status, 404);
    let (status, head, _) = http(addr, "POST", "/metrics").await;
    assert_eq!(status, 405);
    assert!(head.contains("allow: get, head"), "{head}");
    let (status, head, empty) = http(addr, "HEAD", "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        empty.is_empty() && head.contains("content-length:"),
        "{head}"
    );

    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("serve stops after shutdown")
        .expect("serve task")
        .expect("serve result");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "listener closed after shutdown"
    );

    let Some(promtool) = promtool() else { return };
    let (ok, out) = run(
        Command::new(&promtool).args(["check", "metrics"]),
        Some(&body),
    );
    assert!(
        ok && out.trim().is_empty(),
        "promtool check metrics: success={ok}, output:\n{out}\nexposition:\n{body}"
    );
}

#[test]
fn shipped_alert_rules_pass_promtool() {
    let Some(promtool) = promtool() else { return };
    let rules = alerts_file();
    let (ok, out) = run(
        Command::new(&promtool)
            .arg("check")
            .arg("rules")
            .arg(&rules),
        None,
    );
    assert!(
        ok && out.contains("SUCCESS"),
        "promtool check rules:\n{out}"
    );

    // And the alerts fire as their names promise (promtool's rule unit tests).
    let dir = tempfile::tempdir().unwrap();
    let test = dir.path().join("alerts_test.yml");
    std::fs::write(
        &test,
        RULE_TESTS.replace("RULES", &rules.display().to_string()),
    )
    .unwrap();
    let (ok, out) = run(
        Command::new(&promtool).arg("test").arg("rules").arg(&test),
        None,
    );
    assert!(ok, "promtool test rules:\n{out}");
}

const RULE_TESTS: &str = r#"
rule_files: ["RULES"]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'up{job="fleetward",instance="c:9464"}'
        values: '1x20'
      - series: 'fleetward_node_up{job="fleetward",instance="c:9464",node="pve1"}'
        values: '1x20'
      - series: 'fleetward_node_up{job="fleetward",instance="c:9464",node="pve3"}'
        values: '0x20'
      - series: 'fleetward_node_last_report_age_seconds{job="fleetward",instance="c:9464",node="pve3"}'
        values: '900x20'
      - series: 'fleetward_findings{job="fleetward",instance="c:9464",node="pve1",code="apt.duplicate",severity="error"}'
        values: '2x20'
      - series: 'fleetward_findings{job="fleetward",instance="c:9464",node="pve1",code="boot.kernel-pinned",severity="info"}'
        values: '1x20'
      - series: 'fleetward_node_drift_findings{job="fleetward",instance="c:9464",node="pve1"}'
        values: '0x20'
      - series: 'fleetward_certificate_expiry_timestamp_seconds{job="fleetward",instance="c:9464",certificate="server"}'
        values: '864000x200'
      - series: 'fleetward_certificate_expiry_timestamp_seconds{job="fleetward",instance="c:9464",certificate="ca"}'
        values: '315360000x200'
    alert_rule_test:
      - eval_time: 30m
        alertname: FleetwardCertificateExpiresSoon
        exp_alerts: []
      - eval_time: 61m
        alertname: FleetwardCertificateExpiresSoon
        exp_alerts:
          - exp_labels: {severity: warning, job: fleetward, instance: "c:9464", certificate: server}
            exp_annotations:
              summary: "the controller's server certificate expires in 9d 22h 59m 0s"
              description: "The fleetward controller's server certificate expires in less than 30 days. For the server certificate run `fleetward server-cert renew` on the controller host and restart the controller; `fleetward ca status` shows both certificates."
      - eval_time: 10m
        alertname: FleetwardControllerDown
        exp_alerts: []
      - eval_time: 10m
        alertname: FleetwardNodeDown
        exp_alerts:
          - exp_labels: {severity: warning, job: fleetward, instance: "c:9464", node: pve3}
            exp_annotations:
              summary: "fleetward agent on pve3 is not connected"
              description: "Node pve3 has had no agent session with the controller for 5 minutes. The node, its network or the fleetward-agent service is down."
      - eval_time: 10m
        alertname: FleetwardDrift
        exp_alerts: []
      - eval_time: 10m
        alertname: FleetwardErrorFindings
        exp_alerts: []
      - eval_time: 16m
        alertname: FleetwardErrorFindings
        exp_alerts:
          - exp_labels: {severity: warning, node: pve1}
            exp_annotations:
              summary: "pve1 has 2 error finding(s)"
              description: "The latest report of node pve1 has had findings of severity \"error\" (broken now, or will break on the next update or reboot) for 15 minutes. See fleetward_findings{node=\"pve1\",severity=\"error\"} for the codes, or run `fleetward node show pve1`."
  - interval: 1m
    input_series:
      - series: 'up{job="fleetward",instance="c:9464"}'
        values: '1x20'
      - series: 'fleetward_data_dir_free_bytes{job="fleetward",instance="c:9464"}'
        values: '900000000x20'
      - series: 'fleetward_data_dir_min_free_bytes{job="fleetward",instance="c:9464"}'
        values: '536870912x20'
      - series: 'fleetward_reports_refused{job="fleetward",instance="c:9464",reason="rate"}'
        values: '0 0 0 5 10 10 10 10 10 10 10 10 10 10 10 10 10 10 10 10'
    alert_rule_test:
      - eval_time: 10m
        alertname: FleetwardDataDirLowSpace
        exp_alerts:
          - exp_labels: {severity: warning, job: fleetward, instance: "c:9464"}
            exp_annotations:
              summary: "fleetward's data directory has 858.3Mi free"
              description: "Below 512Mi free (min_free_bytes) the controller refuses reports (UNAVAILABLE). Free space on the file system of the controller's data directory, or raise the threshold's margin."
      - eval_time: 10m
        alertname: FleetwardDataDirFull
        exp_alerts: []
      - eval_time: 5m
        alertname: FleetwardReportsRefused
        exp_alerts:
          - exp_labels: {severity: warning, job: fleetward, instance: "c:9464", reason: rate}
            exp_annotations:
              summary: "fleetward refuses reports (rate)"
              description: "The controller refused 10 report(s) in the last 15 minutes for reason rate (size: over max_report_bytes, rate: a node over its report rate, disk: below min_free_bytes). The controller log names the nodes."
  - interval: 1m
    input_series: []
    alert_rule_test:
      - eval_time: 6m
        alertname: FleetwardControllerDown
        exp_alerts:
          - exp_labels: {severity: critical, job: fleetward}
            exp_annotations:
              summary: "fleetward controller metrics are unavailable"
              description: "Prometheus has not scraped the fleetward controller (job \"fleetward\") for 5 minutes. Either the controller is down or its metrics listener is not enabled/reachable; node alerts below cannot fire meanwhile."
"#;

#[test]
fn listen_address_must_be_loopback_unless_allowed() {
    assert_eq!(
        check_listen("127.0.0.1:9464", false).unwrap(),
        "127.0.0.1:9464".parse().unwrap()
    );
    assert_eq!(
        check_listen("[::1]:9464", false).unwrap(),
        "[::1]:9464".parse().unwrap()
    );
    assert!(check_listen("localhost:9464", false)
        .unwrap()
        .ip()
        .is_loopback());
    for remote in ["0.0.0.0:9464", "[::]:9464", "192.0.2.7:9464"] {
        let err = check_listen(remote, false).unwrap_err();
        assert!(err.contains("not a loopback address"), "{remote}: {err}");
        assert_eq!(
            check_listen(remote, true).unwrap(),
            remote.parse().unwrap(),
            "{remote} allowed explicitly"
        );
    }
    for bad in ["127.0.0.1", "not an address", ""] {
        assert!(check_listen(bad, false).is_err(), "{bad:?}");
    }
}
