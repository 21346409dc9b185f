//! Fleet rules at scale: 200 nodes built from the seed report, some with drifted facts.
//! `cargo bench -p fleetward-controller --bench drift` prints the median of 50 runs of
//! `drift()` + `check()`; the target is well under 20 ms.

use fleetward_controller::fleet::{check, drift, NodeView, Policy};
use fleetward_proto::{report_from_json, Facts, PackageFacts};
use std::time::{Duration, Instant};

const SEED: &str = include_str!("../../agent/tests/fixtures/seed/pve-01/expected.json");
const POLICY: &str = include_str!("../../packaging/policy/seed.toml");
const NODES: usize = 200;
const RUNS: usize = 50;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let base = report_from_json(SEED)?.facts;
    let policy = Policy::parse(POLICY)?;
    let nodes: Vec<(String, Facts)> = (0..NODES)
        .map(|i| {
            let mut f = base.clone();
            f.node.hostname = Some(format!("pve-{i:03}"));
            f.node.boot_id = Some(format!("boot-{i}"));
            if i % 17 == 0 {
                f.dns.resolv_conf.nameservers = vec!["1.1.1.1".into()];
            }
            if i % 23 == 0 {
                f.node.running_kernel = Some("6.14.11-1-pve".into());
            }
            if i % 31 == 0 {
                f.apt.entries[0].suites.push("trixie-backports".into());
            }
            if i % 41 == 0 {
                f.boot.packages.push(PackageFacts {
                    name: "systemd-boot".into(),
                    version: "257".into(),
                });
            }
            (format!("pve-{i:03}"), f)
        })
        .collect();
    let views: Vec<NodeView> = nodes
        .iter()
        .map(|(name, facts)| NodeView { name, facts })
        .collect();

    let mut times: Vec<Duration> = Vec::with_capacity(RUNS);
    let mut findings = 0;
    for _ in 0..RUNS {
        let start = Instant::now();
        let d = drift(std::hint::black_box(&views));
        let c = check(&policy, std::hint::black_box(&views));
        times.push(start.elapsed());
        findings = d.len() + c.len();
    }
    times.sort();
    let median = times[RUNS / 2];
    println!(
        "drift+check, {NODES} nodes: median {:.2} ms over {RUNS} runs (min {:.2} ms, max {:.2} ms), {findings} findings",
        median.as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[RUNS - 1].as_secs_f64() * 1e3,
    );
    Ok(())
}
