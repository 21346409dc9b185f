//! `fleetward demo` end to end, as a newcomer runs it: one process that starts a controller
//! and three simulated seed nodes and rolls them to the new kernel.

use fleetward_tests::bin;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const NEW_KERNEL: &str = "6.14.11-1-pve";

/// Runs `fleetward demo ARGS` with its temporary directory under `tmp`; (status, stdout,
/// stderr), killed after `timeout`.
fn demo(args: &[&str], tmp: &std::path::Path, timeout: Duration) -> (i32, String, String) {
    let mut child = Command::new(bin("fleetward"))
        .arg("demo")
        .args(args)
        .env("TMPDIR", tmp)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fleetward demo");
    let mut stdout = child.stdout.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "fleetward demo still running after {timeout:?}; output so far:\n{}",
                out.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    (status.code().unwrap_or(-1), out.join().unwrap(), err)
}

#[test]
fn demo_rolls_three_simulated_nodes_to_the_new_kernel_and_cleans_up() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, out, err) = demo(&["--speed", "0.05"], tmp.path(), Duration::from_secs(60));
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    // The fleet, its drift, the plan, live progress, the result.
    for section in [
        "== The fleet (fleetward nodes)",
        "== Drift between the nodes (fleetward drift)",
        "== The plan (fleetward rollout plan --refresh-lists)",
        "the controller's own node pve-03 goes last",
        "AwaitReturn",
        "rebooting: waiting for a new boot id",
    ] {
        assert!(out.contains(section), "missing {section:?} in:\n{out}");
    }
    // The kernel table: every node before on the old kernel, now on the new one, rebooted.
    for node in ["pve-01", "pve-02", "pve-03"] {
        let row = out
            .lines()
            .find(|l| l.starts_with(node) && l.contains("6.14.8-2-pve"))
            .unwrap_or_else(|| panic!("no kernel row for {node} in:\n{out}"));
        assert!(
            row.contains(NEW_KERNEL) && row.contains("yes (new boot id)"),
            "{row}"
        );
    }
    assert!(
        out.contains(&format!(
            "completed: 3 of 3 nodes upgraded and rebooted one at a time into {NEW_KERNEL}"
        )),
        "{out}"
    );
    // Nodes went one at a time: a node's first live line after "Pending" comes after the
    // previous node's "Done" (fast phases may fall between two polls, so not every phase
    // has a line).
    let live: Vec<&str> = out.lines().filter(|l| l.starts_with('[')).collect();
    let line_of = |node: &str, f: &dyn Fn(&str) -> bool| {
        live.iter()
            .position(|l| l.contains(&format!("] {node} ")) && f(l))
            .unwrap_or_else(|| panic!("no such line for {node} in:\n{out}"))
    };
    for (prev, next) in [("pve-01", "pve-02"), ("pve-02", "pve-03")] {
        let done = line_of(prev, &|l| l.contains(" Done "));
        // Phase lines only: an output line (`> …`) printed in the same poll as the previous
        // node's `Done` may come first on the screen.
        let started = line_of(next, &|l| !l.contains(" Pending ") && !l.contains(" > "));
        assert!(
            done < started,
            "{next} started before {prev} was done:\n{out}"
        );
    }
    // Everything it made is gone (agents stopped, temporary directory removed).
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().flatten().collect();
    assert!(left.is_empty(), "left behind: {left:?}\n{out}");
}

#[test]
fn demo_without_fixtures_says_how_to_give_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, out, err) = demo(
        &["--fixtures", "/nonexistent/seed"],
        tmp.path(),
        Duration::from_secs(20),
    );
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains("/nonexistent/seed"), "{err}");
    assert!(std::fs::read_dir(tmp.path()).unwrap().next().is_none());
}
