//! `fleetward demo` end to end, as a newcomer runs it: one process that starts a controller
//! and three simulated seed nodes and rolls them to the new kernel.

use fleetward_tests::bin;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const NEW_KERNEL: &str = "6.14.11-1-pve";

/// Runs `fleetward demo ARGS` (the executable `fleetward`) with its temporary directory
/// under `tmp`, in `tmp`; (status, stdout, stderr), killed after `timeout`.
fn demo(fleetward: &Path, args: &[&str], tmp: &Path, timeout: Duration) -> (i32, String, String) {
    let mut child = Command::new(fleetward)
        .arg("demo")
        .args(args)
        .current_dir(tmp)
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

/// `fleetward` and `fleetward-agent` linked (or copied) into `dir`, as a package installs
/// them side by side, away from the build tree.
fn installed(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for name in ["fleetward", "fleetward-agent"] {
        let (from, to) = (bin(name), dir.join(name));
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).unwrap();
        }
    }
    dir.join("fleetward")
}

#[test]
fn demo_rolls_three_simulated_nodes_to_the_new_kernel_and_cleans_up() {
    // The binaries away from the build tree, run in an unrelated directory: the seed
    // fixtures come from the binary itself.
    let bin_dir = tempfile::tempdir().unwrap();
    let fleetward = installed(bin_dir.path());
    let tmp = tempfile::tempdir().unwrap();
    let (code, out, err) = demo(
        &fleetward,
        &["--speed", "0.05"],
        tmp.path(),
        Duration::from_secs(60),
    );
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains("/fixtures/pve-01 (fleetward-agent sim-root)"),
        "the built-in seed fixtures were not used:\n{out}"
    );
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
    // The plan is apt's transaction: each node's "kernel after" is the kernel it then
    // boots, and the NEW kernel package it installs is listed.
    let plan_start = out.find("== The plan").unwrap();
    let plan = &out[plan_start..];
    let plan = &plan[..plan[3..].find("\n== ").map_or(plan.len(), |i| i + 3)];
    for node in ["pve-01", "pve-02", "pve-03"] {
        let header = plan
            .lines()
            .find(|l| l.contains(&format!(". {node}  gate:")))
            .unwrap_or_else(|| panic!("no plan line for {node} in:\n{plan}"));
        assert!(
            header.contains(&format!("kernel after: {NEW_KERNEL}")),
            "{header}\n{plan}"
        );
    }
    assert!(
        plan.contains(&format!("proxmox-kernel-{NEW_KERNEL}-signed NEW ")),
        "the NEW kernel package is not in the plan:\n{plan}"
    );
    assert!(plan.contains("apt's transaction"), "{plan}");
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
fn demo_with_a_missing_fixtures_dir_names_it_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, out, err) = demo(
        &bin("fleetward"),
        &["--fixtures", "/nonexistent/seed"],
        tmp.path(),
        Duration::from_secs(20),
    );
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains("/nonexistent/seed"), "{err}");
    assert!(std::fs::read_dir(tmp.path()).unwrap().next().is_none());
}

#[test]
fn demo_fixtures_dir_overrides_the_built_in_seed() {
    // One node fixture whose base is missing: the demo must use it (and fail on it) rather
    // than the built-in seed, and still leave nothing behind.
    let fixtures = tempfile::tempdir().unwrap();
    let node = fixtures.path().join("pve-09");
    std::fs::create_dir_all(&node).unwrap();
    std::fs::write(node.join("base"), "nowhere/pve-00\n").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (code, out, err) = demo(
        &bin("fleetward"),
        &["--fixtures", fixtures.path().to_str().unwrap()],
        tmp.path(),
        Duration::from_secs(30),
    );
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        err.contains("pve-09: fleetward-agent sim-root failed") && err.contains("pve-00"),
        "{err}"
    );
    assert!(std::fs::read_dir(tmp.path()).unwrap().next().is_none());
}
