//! Rollout overhead benchmark: how long the controller takes between one node passing its
//! post-reboot gate and the next node's first step.
//!
//! ```text
//! cargo build --release --workspace --bins
//! cargo run --release -p fleetward-tests --example rollout_overhead -- --nodes 50
//! ```
//!
//! The real `fleetward serve` (release) drives a rollout with `--max-unavailable 1` over
//! `--nodes` simulated nodes in this process (`fleetward_tests::fakefleet`: real enrollment,
//! mutual TLS, the real protocol; actions take no time, a reboot `--reboot-ms`). For every
//! node but the last, measured on the nodes' side with one clock:
//!
//! - **gate → maintenance-off**: from the node's reconnect after its reboot (its new boot
//!   id and report go out) to the arrival of its `maintenance-off` command: reconnect,
//!   report ingestion, the post-reboot gate, the write-ahead flush, the send;
//! - **done → next**: from the node's `maintenance-off` result leaving to the next node's
//!   first action (`maintenance-on`) arriving: result handling, the next node's preflight
//!   gate, the flush, the send.
//!
//! Their sum is the controller's overhead per hand-over (target: under 200 ms).

use clap::Parser;
use fleetward_tests::fakefleet::{self, FleetOptions};
use fleetward_tests::{wait_for, Controller};
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 50)]
    nodes: usize,
    #[arg(long, default_value_t = 100)]
    reboot_ms: u64,
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn main() {
    let args = Args::parse();
    let mut c = Controller::start();
    let path = c.dir.path().join("controller.toml");
    let text = std::fs::read_to_string(&path).unwrap()
        + "\n[rollout]\nreboot_ms = 60000\nmax_silence_ms = 30000\ntick_ms = 1000\n";
    std::fs::write(&path, text).unwrap();
    c.restart();
    let names: Vec<String> = (1..=args.nodes).map(|i| format!("node-{i:03}")).collect();
    let opts = FleetOptions {
        reboot: Duration::from_millis(args.reboot_ms),
        action: Duration::ZERO,
    };
    let (_rt, fleet) = fakefleet::start(&c, &names, 8, opts);
    wait_for("all nodes online", Duration::from_secs(60), || {
        let nodes = c.cli_json(&["nodes"]);
        let online = nodes
            .as_array()?
            .iter()
            .filter(|n| n["state"] == "online")
            .count();
        (online == names.len()).then_some(())
    });
    let t0 = Instant::now();
    c.cli_json(&["rollout", "start", "--yes"]);
    wait_for("the rollout to complete", Duration::from_secs(600), || {
        let s = c.cli_json(&["rollout", "status"]);
        let st = s["rollout"]["status"].as_str()?.to_string();
        assert!(
            matches!(st.as_str(), "running" | "completed"),
            "rollout {st}: {s:#}"
        );
        (st == "completed").then_some(())
    });
    let total = t0.elapsed();
    let arrivals = fleet.arrivals.lock().unwrap().clone();
    let sent = fleet.sent.lock().unwrap().clone();
    let first = |node: &str, action: &str| {
        arrivals
            .iter()
            .find(|(n, a, _)| n == node && a == action)
            .map(|(_, _, t)| *t)
    };
    let when = |node: &str, what: &str| {
        sent.iter()
            .find(|(n, w, _)| n == node && *w == what)
            .map(|(_, _, t)| *t)
    };
    let (mut gate, mut next, mut sum) = (Vec::new(), Vec::new(), Vec::new());
    for pair in names.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let g = first(a, "maintenance-off").unwrap() - when(a, "back").unwrap();
        let n = first(b, "maintenance-on").unwrap() - when(a, "maintenance-off").unwrap();
        gate.push(g.as_secs_f64() * 1000.0);
        next.push(n.as_secs_f64() * 1000.0);
        sum.push((g + n).as_secs_f64() * 1000.0);
    }
    println!(
        "rollout of {} simulated nodes, max-unavailable 1, reboot {} ms: {:.1} s",
        names.len(),
        args.reboot_ms,
        total.as_secs_f64()
    );
    println!("| hand-over step | p50 (ms) | p99 (ms) | max (ms) |");
    println!("|---|---|---|---|");
    for (what, v) in [
        (
            "reconnect after reboot → maintenance-off arrives",
            &mut gate,
        ),
        (
            "maintenance-off result → next node's maintenance-on arrives",
            &mut next,
        ),
        ("total controller overhead per hand-over", &mut sum),
    ] {
        let (p50, p99) = (pct(v, 0.5), pct(v, 0.99));
        let max = v.iter().copied().fold(0.0, f64::max);
        println!("| {what} | {p50:.1} | {p99:.1} | {max:.1} |");
    }
    let worst = sum.iter().copied().fold(0.0, f64::max);
    println!(
        "target: overhead < 200 ms per hand-over: {}",
        if worst < 200.0 {
            "met (max)"
        } else {
            "NOT met"
        }
    );
}
