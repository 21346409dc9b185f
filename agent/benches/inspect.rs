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

    // FLEETWARD_BENCH_COMPARE=/path/to/another/fleetward-agent: time that build too, the two
    // run alternately (before/after figures in one sitting on a shared machine).
    let other = std::env::var_os("FLEETWARD_BENCH_COMPARE").map(std::path::PathBuf::from);
    let exes: Vec<(String, std::path::PathBuf)> = std::iter::once((
        "this build".to_string(),
        std::path::PathBuf::from(env!("CARGO_BIN_EXE_fleetward-agent")),
    ))
    .chain(other.map(|p| (p.display().to_string(), p)))
    .collect();
    let runs = 500;
    let mut times: Vec<Vec<Duration>> = vec![Vec::with_capacity(runs); exes.len()];
    for _ in 0..runs {
        for ((_, exe), times) in exes.iter().zip(&mut times) {
            let t = Instant::now();
            let out = Command::new(exe)
                .args(["inspect", "--format", "json", "--root"])
                .arg(root_dir.path())
                .output()
                .expect("run fleetward-agent");
            times.push(t.elapsed());
            assert!(out.status.code().is_some_and(|c| c <= 1), "{out:?}");
        }
    }
    let peak_kib = getrusage(UsageWho::RUSAGE_CHILDREN)
        .expect("getrusage")
        .max_rss();
    for ((name, _), times) in exes.iter().zip(times) {
        let (median, p95) = summary(times);
        println!(
            "fleetward-agent inspect --root seed/pve-03 --format json, whole process ({name}): median {median:.3} ms, p95 {p95:.3} ms ({runs} runs)"
        );
    }
    println!(
        "peak RSS of those processes {:.1} MiB",
        peak_kib as f64 / 1024.0
    );
}
