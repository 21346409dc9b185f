//! End-to-end tests of the `fleetward-agent` binary: exit status, the JSON schema (the same
//! [`Report`] the library builds), usage errors, the plain text format, and the live host.

mod support;

use fleetward_agent::{inspect::inspect, root::Root};
use fleetward_proto::{Report, Severity};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fleetward-agent"))
        .args(args)
        .env_remove("NO_COLOR")
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run fleetward-agent")
}

fn inspect_root(root: &Path, format: &str) -> Output {
    let root = root.to_str().expect("UTF-8 temp path");
    agent(&["inspect", "--root", root, "--format", format])
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn fixture(name: &str) -> tempfile::TempDir {
    support::build(&support::fixtures_dir().join(name))
}

#[test]
fn seed_pve_03_json_is_the_library_report() {
    let root = fixture("seed/pve-03");
    let out = inspect_root(root.path(), "json");
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));

    let v: Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    let findings = v["findings"].as_array().expect("findings array");
    let severity_of = |code: &str| {
        findings
            .iter()
            .find(|f| f["code"] == code)
            .map(|f| f["severity"].clone())
    };
    assert_eq!(
        severity_of("boot.secure-boot-setup-mode"),
        Some(Value::from("warning"))
    );
    assert_eq!(
        severity_of("boot.esp-sync-disabled"),
        Some(Value::from("info"))
    );
    for f in findings {
        let code = f["code"].as_str().expect("code is a string");
        if code.starts_with("apt.") || code.starts_with("dns.") {
            assert!(
                f["severity"] != "warning" && f["severity"] != "error",
                "pve-03 has no APT or DNS problem, but: {f}"
            );
        }
    }

    // One schema: the printed JSON is exactly the report the library builds.
    let printed: Report = serde_json::from_slice(&out.stdout).expect("stdout is a Report");
    assert_eq!(printed, inspect(&Root::new(root.path())));
    assert!(printed.worst_severity() < Some(Severity::Error));
}

#[test]
fn an_error_finding_exits_1() {
    let root = fixture("scenarios/apt.parse-error");
    let out = inspect_root(root.path(), "json");
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    let report: Report = serde_json::from_slice(&out.stdout).expect("stdout is a Report");
    assert!(report
        .findings
        .iter()
        .any(|f| f.code == "apt.parse-error" && f.severity == Severity::Error));
    // The text format exits the same way.
    assert_eq!(inspect_root(root.path(), "text").status.code(), Some(1));
}

/// A usage error or tool failure: exit 2, a message on stderr, no report on stdout.
fn assert_tool_failure(args: &[&str]) -> String {
    let out = agent(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{args:?}: stderr: {err}");
    assert!(!err.trim().is_empty(), "{args:?}: nothing on stderr");
    assert!(out.stdout.is_empty(), "{args:?}: printed a report");
    err
}

#[test]
fn a_missing_root_is_a_tool_failure() {
    let err = assert_tool_failure(&["inspect", "--root", "/nonexistent", "--format", "json"]);
    assert!(err.contains("/nonexistent"), "{err}");
}

#[test]
fn usage_errors_exit_2() {
    assert_tool_failure(&["inspect", "--no-such-flag"]);
    assert_tool_failure(&["inspect", "--format", "yaml"]);
    assert_tool_failure(&["no-such-command"]);
    // --probe runs live lookups and is refused for an inspected tree, even a valid one.
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().to_str().expect("UTF-8 temp path");
    let err = assert_tool_failure(&["inspect", "--probe", "--root", dir]);
    assert!(err.contains("--probe") && err.contains("--root"), "{err}");
}

#[test]
fn text_to_a_pipe_has_no_colour_and_every_section() {
    let root = fixture("seed/pve-03");
    // `output()` makes stdout a pipe; NO_COLOR is removed by `agent`.
    let out = inspect_root(root.path(), "text");
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert!(
        !out.stdout.contains(&0x1b),
        "ESC byte in text written to a pipe"
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8 text");
    for heading in ["boot", "apt", "dns", "cluster", "findings"] {
        assert!(
            text.lines().any(|l| l == heading),
            "no section heading {heading:?} in:\n{text}"
        );
    }
    // pve-03's warning is listed under findings.
    assert!(text.contains("boot.secure-boot-setup-mode"), "{text}");
}

/// `nameserver` lines of a resolv.conf: the address is the word after the keyword, up to a
/// comment character.
fn nameserver_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver")).then_some(())?;
            let addr = words.next()?.split(['#', ';']).next()?;
            (!addr.is_empty()).then(|| addr.to_string())
        })
        .collect()
}

/// `ID` from /etc/os-release.
fn os_id() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    text.lines().find_map(|l| {
        let v = l.trim().strip_prefix("ID=")?;
        Some(v.trim_matches(['"', '\'']).to_string())
    })
}

#[test]
fn the_live_host() {
    let out = agent(&["inspect", "--format", "json"]);
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "status {:?}, stderr: {}",
        out.status,
        stderr(&out)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    let firmware = v["facts"]["boot"]["firmware"]
        .as_str()
        .expect("facts.boot.firmware");
    let uefi = Path::new("/sys/firmware/efi").is_dir();
    assert_eq!(firmware, if uefi { "uefi" } else { "bios" });

    // A plain Debian host (not a Proxmox VE node) with the deb822 Debian sources.
    const DEBIAN_SOURCES: &str = "/etc/apt/sources.list.d/debian.sources";
    let sources = std::fs::read_to_string(DEBIAN_SOURCES);
    let plain_debian = os_id().as_deref() == Some("debian") && !Path::new("/etc/pve").exists();
    let Ok(sources) = sources else { return };
    if !plain_debian {
        return;
    }
    let entries: Vec<&Value> = v["facts"]["apt"]["entries"]
        .as_array()
        .expect("facts.apt.entries")
        .iter()
        .filter(|e| e["file"] == DEBIAN_SOURCES)
        .collect();
    assert!(!entries.is_empty(), "no APT entry from {DEBIAN_SOURCES}");
    for e in &entries {
        for uri in e["uris"].as_array().expect("uris") {
            let uri = uri.as_str().expect("uri string");
            assert!(sources.contains(uri), "{uri} is not in {DEBIAN_SOURCES}");
        }
    }

    let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let want: Vec<Value> = nameserver_lines(&resolv)
        .into_iter()
        .map(Value::from)
        .collect();
    assert_eq!(
        v["facts"]["dns"]["resolv_conf"]["nameservers"],
        Value::from(want)
    );
}

#[test]
fn nameserver_lines_parse() {
    let text = "# c\nnameserver 192.0.2.1\n  nameserver 2001:db8::1 # x\nnameserver 192.0.2.3;y\nsearch a\nnameserver\n";
    assert_eq!(
        nameserver_lines(text),
        ["192.0.2.1", "2001:db8::1", "192.0.2.3"]
    );
}
