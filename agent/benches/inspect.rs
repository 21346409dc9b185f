//! `cargo bench -p fleetward-agent --bench inspect`: a full `inspect --root` of the seed
//! node pve-03 (real FAT image included), in-process and as a whole process.
//!
//! Targets (issue 2): median wall time under 5 ms, peak RSS under 10 MiB.

#[path = "../tests/support/mod.rs"]
mod support;

use fleetward_agent::{inspect::inspect, root::Root};
use nix::sys::resource::{getrusage, UsageWho};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
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

    // The binary as installed: dpkg writes a package's files in one sequential pass, and
    // the page cache then holds them as such a pass leaves them. The linker's output, as it
    // sits in target/, starts measurably slower (0.15-0.3 ms here) with the same bytes, so
    // each build is timed from a copy written in one pass, and the linker's file beside it.
    // FLEETWARD_BENCH_COMPARE=/path/to/another/fleetward-agent: time that build too, all
    // run alternately (before/after figures in one sitting on a shared machine).
    let built = PathBuf::from(env!("CARGO_BIN_EXE_fleetward-agent"));
    let installed_dir = tempfile::tempdir().expect("tempdir");
    let install = |from: &Path, name: &str| {
        let to = installed_dir.path().join(name);
        std::fs::write(&to, std::fs::read(from).expect("read the agent binary"))
            .expect("write the installed copy");
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        to
    };
    let other = std::env::var_os("FLEETWARD_BENCH_COMPARE").map(PathBuf::from);
    let mut exes: Vec<(String, PathBuf)> = vec![
        ("this build, installed".to_string(), install(&built, "this")),
        ("this build, as the linker wrote it".to_string(), built),
    ];
    if let Some(p) = other {
        exes.push((format!("{}, installed", p.display()), install(&p, "other")));
    }
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
