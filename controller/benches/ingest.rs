//! The CPU cost of one report on the controller's ingestion path, step by step, for the
//! seed report: `cargo bench -p fleetward-controller --bench ingest`. Prints the mean per
//! report of each step (parse, flatten, diff against the previous, drop, store a batch).

use fleetward_controller::fleet::{changes, flatten};
use fleetward_controller::store::{FactChange, NodeRecord, ReportWrite, Store};
use fleetward_proto::{report_from_bytes, report_from_json, report_json_bytes};
use std::time::Instant;

// The controller's allocator, so the figures are the server's.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const SEED: &str = include_str!("../../agent/tests/fixtures/seed/pve-01/expected.json");
const N: usize = 20_000;
const BATCH: usize = 20;

fn per(label: &str, start: Instant, n: usize) {
    let us = start.elapsed().as_secs_f64() * 1e6 / n as f64;
    println!("{label:<28} {us:>8.1} µs/report");
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut seed = report_from_json(SEED)?;
    let jsons: Vec<Vec<u8>> = (0..N)
        .map(|i| {
            seed.facts.node.boot_id = Some(format!("00000000-0000-4000-8000-{i:012x}"));
            report_json_bytes(&seed)
        })
        .collect();
    println!("report JSON: {} bytes", jsons[0].len());

    let t = Instant::now();
    let reports: Vec<_> = jsons
        .iter()
        .map(|j| report_from_bytes(j).unwrap())
        .collect();
    per("parse", t, N);
    let t = Instant::now();
    let flats: Vec<_> = reports.iter().map(|r| flatten(&r.facts)).collect();
    per("flatten", t, N);
    println!("flat entries: {}", flats[0].len());
    let t = Instant::now();
    let mut n = 0;
    for w in flats.windows(2) {
        n += changes(&w[0], &w[1]).len();
    }
    per("changes", t, N - 1);
    assert_eq!(n, N - 1);
    let t = Instant::now();
    drop(flats);
    per("drop flat", t, N);
    let t = Instant::now();
    drop(reports);
    per("drop report", t, N);

    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path().join("db"))?;
    let nodes: Vec<String> = (0..1000).map(|i| format!("sim-{i:05}")).collect();
    for name in &nodes {
        store.upsert_node(&NodeRecord::new(name, "01", 0, 0))?;
    }
    let change = vec![FactChange {
        time_ms: 1,
        key: "node.boot_id".into(),
        old: Some("a".into()),
        new: Some("b".into()),
    }];
    let io0 = written();
    let t = Instant::now();
    for (b, chunk) in jsons.chunks(BATCH).enumerate() {
        let writes: Vec<ReportWrite> = chunk
            .iter()
            .enumerate()
            .map(|(i, json)| ReportWrite {
                node: &nodes[(b * BATCH + i) % nodes.len()],
                received_ms: 1,
                json,
                changes: &change,
            })
            .collect();
        store.put_reports(&writes)?;
    }
    per(&format!("store (batches of {BATCH})"), t, N);
    println!(
        "store wrote {:.1} KiB/report to disk",
        (written() - io0) as f64 / 1024.0 / N as f64
    );
    let t = Instant::now();
    for name in nodes.iter().cycle().take(N) {
        store.get_node(name)?;
    }
    per("get_node", t, N);
    drop(store);
    let t = Instant::now();
    let store = Store::open(dir.path().join("db"))?;
    println!(
        "reopen: {:.0} ms to replay {N} reports' journal records",
        t.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(store.report_history(&nodes[0])?.len(), N / nodes.len());
    Ok(())
}

/// Bytes this process has caused to be written to storage (`/proc/self/io`).
fn written() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| {
                    l.strip_prefix("write_bytes: ")
                        .map(|v| v.trim().parse().ok())
                })
                .flatten()
        })
        .unwrap_or(0)
}
