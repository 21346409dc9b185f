//! `cargo bench -p fleetward-agent --bench inspect`: a full `inspect --root` of the seed
//! node pve-03 (real FAT image included), in-process and as a whole process.
//!
//! Targets (issue 2): median wall time under 5 ms, peak RSS under 10 MiB.

#[path = "../tests/support/mod.rs"]
mod support;

use fleetward_agent::{inspect::inspect, root::Root};
use nix::sys::resource::{getrusage, UsageWho};
use std::process::Command;
use std::time::{Duration, Instant};

fn summary(mut d: Vec<Duration>) -> (f64, f64) {
    d.sort();
    let ms = |x: Duration| x.as_secs_f64() * 1000.0;
    (ms(d[d.len() / 2]), ms(d[d.len() * 95 / 100]))
}

fn main() {
    let root_dir = support::build(&support::fixtures_dir().join("seed/pve-03"));
    let root = Root::new(root_dir.path());
    for _ in 0..20 {
        std::hint::black_box(inspect(&root));
    }
    let runs = 500;
    let times: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(inspect(&root));
            t.elapsed()
        })
        .collect();
    let (median, p95) = summary(times);
    println!("inspect --root seed/pve-03, in-process: median {median:.3} ms, p95 {p95:.3} ms ({runs} runs)");

    let exe = env!("CARGO_BIN_EXE_fleetward-agent");
    let runs = 100;
    let times: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            let out = Command::new(exe)
                .args(["inspect", "--format", "json", "--root"])
                .arg(root_dir.path())
                .output()
                .expect("run fleetward-agent");
            let elapsed = t.elapsed();
            assert!(out.status.code().is_some_and(|c| c <= 1), "{out:?}");
            elapsed
        })
        .collect();
    let (median, p95) = summary(times);
    let peak_kib = getrusage(UsageWho::RUSAGE_CHILDREN)
        .expect("getrusage")
        .max_rss();
    println!(
        "fleetward-agent inspect --root seed/pve-03 --format json, whole process: median {median:.3} ms, p95 {p95:.3} ms ({runs} runs), peak RSS {:.1} MiB",
        peak_kib as f64 / 1024.0
    );
}
