//! Live views: `rollout start --watch` piped prints one line per change (timed event
//! sentences and the headline when it changes, no escape sequences) and exits with the
//! final state's status; `rollout status --watch` on a pseudo-terminal (util-linux
//! `script`) redraws one block in place.

use fleetward_tests::{bin, support, wait_for, Agent, AgentRun, Controller};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A seed node with a pending upgrade, its simulated actions slow enough to watch.
fn node(c: &Controller, name: &str) -> Agent {
    let fixture = support::fixtures_dir().join("seed").join(name);
    let (root, state) = Agent::enroll_fixture(c, name, &fixture);
    let sim = root.path().join("var/lib/fleetward-sim");
    std::fs::create_dir_all(&sim).unwrap();
    let pending = r#"{"packages": [{"package": "proxmox-ve", "version": "9.0.1"}], "kernel": "6.14.11-1-pve"}"#;
    std::fs::write(sim.join("pending.json"), pending).unwrap();
    let run = AgentRun::default()
        .sim_reboot_secs(0.5)
        .sim_action_secs(0.3);
    Agent::run_with(name, root, state, run)
}

/// The three seed nodes (the quorum gate needs the others), each reported once.
fn cluster(c: &Controller) -> Vec<Agent> {
    let agents: Vec<Agent> = ["pve-01", "pve-02", "pve-03"]
        .iter()
        .map(|n| node(c, n))
        .collect();
    for a in &agents {
        wait_for("the reports", Duration::from_secs(30), || {
            let v = c.cli_json(&["node", "show", &a.name]);
            (!v["report"].is_null()).then_some(())
        });
    }
    agents
}

#[test]
fn piped_watch_prints_one_line_per_change_and_a_terminal_redraws_in_place() {
    let c = Controller::start_with_toml(&[], "[rollout]\ntick_ms = 100\n");
    let _agents = cluster(&c);
    let dir = c.dir.path().to_str().unwrap().to_owned();

    // A terminal: `start --watch` on a pseudo-terminal follows to the end.
    let cmd = format!(
        "{} rollout start --nodes pve-01 --yes --watch --data-dir {dir}",
        bin("fleetward").display()
    );
    let pty = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("COLUMNS", "100")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the rollout", Duration::from_secs(20), || {
        let list = c.cli_json(&["rollout", "list"]);
        (!list.as_array()?.is_empty()).then_some(())
    });

    // Piped: `status --watch` follows the same rollout to the end.
    let out = Command::new(bin("fleetward"))
        .args(["rollout", "status", "--watch", "--data-dir", &dir])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}\n{out:?}");
    assert!(!text.contains('\x1b'), "{text:?}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines
            .last()
            .unwrap()
            .ends_with(": completed (1/1 nodes done)"),
        "{text}"
    );
    for pair in lines.windows(2) {
        assert_ne!(pair[0], pair[1], "a line repeated: {text}");
    }
    assert!(text.contains("pve-01: apt-get update"), "{text}");
    assert!(text.contains("pve-01: maintenance on"), "{text}");
    for bad in ["{\"", "MaintenanceOn", "AptUpdate", "/pve-01/"] {
        assert!(!text.contains(bad), "{bad} in {text}");
    }
    // Far fewer lines than a reprint of the whole status per change.
    assert!(lines.len() < 40, "{} lines: {text}", lines.len());

    let out = pty.wait_with_output().unwrap();
    let tty = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{tty}");
    assert!(tty.contains("\x1b[J"), "no redraw in place: {tty:?}");
    assert!(tty.contains("NODE"), "{tty:?}");
    assert!(tty.contains(": completed (1/1 nodes done)"), "{tty:?}");
    for line in tty.lines() {
        // Each drawn line fits the terminal (escape sequences aside).
        let visible = line.rsplit("\x1b[J").next().unwrap_or(line);
        assert!(
            visible.chars().count() <= 101,
            "longer than the terminal: {line:?}"
        );
    }
}
