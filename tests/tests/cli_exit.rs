//! Exit codes a script can trust, for every operator command in each situation: 0 done or
//! healthy, 1 the thing asked about is not OK (halted rollout, refused request, unknown
//! node, nothing there), 2 usage or configuration error, 3 controller unreachable. Errors
//! are one line on stderr, without gRPC code names or debug formatting.

use fleetward_tests::{bin, support, wait_for, Agent, AgentRun, Controller};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

/// The real CLI against the controller in `dir`, text output, no inherited configuration.
fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(bin("fleetward"))
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .env_remove("FLEETWARD_CONTROLLER")
        .env_remove("FLEETWARD_CONFIG")
        .env("COLUMNS", "100")
        .output()
        .expect("fleetward cli")
}

/// Runs every case, then fails once listing each case whose code or stderr was wrong.
fn check(dir: &Path, cases: &[(&[&str], i32)]) {
    let mut wrong = Vec::new();
    for (args, code) in cases {
        let out = run(dir, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let got = out.status.code();
        if got != Some(*code) {
            wrong.push(format!(
                "fleetward {}: exit {got:?}, expected {code}; stderr: {stderr}",
                args.join(" ")
            ));
        }
        // clap's usage errors (2) show the usage; every other error is one line.
        if matches!(code, 1 | 3) {
            let lines = stderr.lines().count();
            let bad = [
                "Os {",
                "Status {",
                "code:",
                "FailedPrecondition",
                "failed precondition",
            ];
            if lines > 1 || bad.iter().any(|b| stderr.contains(b)) {
                wrong.push(format!("fleetward {}: stderr {stderr:?}", args.join(" ")));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn every_command_exits_by_the_same_rules() {
    let c = Controller::start();
    let dir = c.dir.path();
    let cases: &[(&[&str], i32)] = &[
        // Done or healthy.
        (&["nodes"], 0),
        (&["findings"], 0),
        (&["drift"], 0),
        (&["token", "list"], 0),
        (&["token", "create", "--ttl", "1h"], 0),
        (&["audit"], 0),
        (&["policy", "show"], 0),
        (&["report"], 0),
        (&["rollout", "list"], 0),
        // The thing asked about is not there or not OK.
        (&["findings", "--node", "pve-99"], 1),
        (&["node", "show", "pve-99"], 1),
        (&["node", "history", "pve-99"], 1),
        (&["node", "refresh", "pve-99"], 1),
        (&["rollout", "status"], 1),
        (&["rollout", "skip", "pve-99"], 1),
        (&["rollout", "resume"], 1),
        (&["rollout", "abort", "--yes"], 1),
        (&["rollout", "abort", "--yes", "--restore"], 1),
        (&["rollout", "plan", "--nodes", "pve-99"], 1),
        (&["shutdown", "status"], 1),
        (&["shutdown", "plan"], 1),
        (&["shutdown", "cancel"], 1),
        (&["startup"], 1),
        (&["token", "revoke", "no-such-token"], 1),
        // Usage or configuration.
        (&["token", "create", "--ttl", "soon"], 2),
        (&["token", "create", "--ttl", "99999d"], 2),
        (&["report", "--output", "json"], 2),
        (&["report", "--format", "html"], 2),
        (&["rollout", "status", "--bogus"], 2),
        // Abort asks; without a terminal and without --yes nobody can answer.
        (&["rollout", "abort"], 2),
        (
            &["policy", "check", "--file", "/nonexistent/policy.toml"],
            2,
        ),
    ];
    check(dir, cases);

    // A data dir that does not exist: configuration (2), for every command.
    let none = Path::new("/nonexistent/fleetward");
    for args in [
        &["nodes"][..],
        &["rollout", "status"],
        &["shutdown", "status"],
    ] {
        let out = run(none, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    }

    // A controller that is not there: unreachable (3), for every command.
    let unreachable: &[&[&str]] = &[
        &["nodes"],
        &["findings"],
        &["rollout", "status"],
        &["rollout", "status", "--watch"],
        &["shutdown", "status"],
        &["startup"],
        &["report"],
    ];
    for args in unreachable {
        let mut args = args.to_vec();
        args.extend(["--controller", "https://127.0.0.1:1"]);
        let out = run(dir, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains("cannot reach the controller"), "{stderr}");
    }
}

#[test]
fn a_second_serve_on_a_data_dir_names_the_first() {
    let c = Controller::start();
    let out = Command::new(bin("fleetward"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(c.dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let pid = c.pid().expect("serve's pid");
    assert_eq!(
        last,
        format!(
            "fleetward serve: another fleetward serve (pid {pid}) holds {}: stop it first, or \
             give this one another --data-dir",
            c.dir.path().display()
        )
    );
}

#[test]
fn a_halted_rollout_and_a_refused_request_exit_1() {
    let mut c = Controller::start();
    let config = c.dir.path().join("controller.toml");
    let text = std::fs::read_to_string(&config).unwrap()
        + "\n[rollout]\nmax_silence_ms = 3000\ntick_ms = 100\n";
    std::fs::write(&config, text).unwrap();
    c.restart();
    let dir = c.dir.path();
    let fixture = support::fixtures_dir().join("seed").join("pve-01");
    let (root, state) = Agent::enroll_fixture(&c, "pve-01", &fixture);
    // A simulated agent: an observe-only one would have the rollout refused, not halted.
    let agent = Agent::run_with("pve-01", root, state, AgentRun::default().simulate());
    wait_for("pve-01's report", Duration::from_secs(30), || {
        let v = c.cli_json(&["node", "show", "pve-01"]);
        (!v["report"].is_null()).then_some(())
    });
    drop(agent);
    wait_for("pve-01 offline", Duration::from_secs(30), || {
        (c.cli_json(&["nodes"])[0]["state"] == "offline").then_some(())
    });
    let out = run(dir, &["rollout", "start", "--yes", "--output", "json"]);
    assert!(matches!(out.status.code(), Some(0 | 1)), "{out:?}");
    wait_for("the rollout to halt", Duration::from_secs(30), || {
        let out = run(dir, &["rollout", "status", "--output", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["rollout"]["status"] == "halted").then_some(())
    });
    check(
        dir,
        &[
            (&["rollout", "status"], 1),
            (&["rollout", "status", "--output", "json"], 1),
            (&["rollout", "status", "--watch"], 1),
            (&["rollout", "list"], 0),
            (&["rollout", "skip", "pve-99"], 1),
            (&["rollout", "plan"], 0),
            (&["nodes"], 0),
            // One operation at a time: the halted rollout refuses another start.
            (&["rollout", "start", "--yes"], 1),
            (&["shutdown", "start", "--yes"], 1),
            (&["rollout", "abort"], 2),
        ],
    );
    let out = run(dir, &["rollout", "start", "--yes"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("one operation at a time") && stderr.contains("fleetward rollout abort"),
        "the refusal names what runs and how to stop it: {stderr}"
    );
    let out = run(dir, &["rollout", "skip", "pve-99"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.stdout.is_empty() && stderr.starts_with("fleetward: "),
        "a refusal prints its reason, not a status: {out:?}"
    );
    // Aborting is a request that was done: 0; the rollout it leaves is not OK: 1.
    check(
        dir,
        &[
            (&["rollout", "abort", "--yes"], 0),
            (&["rollout", "status"], 1),
            (&["rollout", "resume"], 1),
        ],
    );
}
