//! Report ingestion: check a report, find what changed since the node's previous one, store
//! both durably, then make it the node's latest ([`Ingest::store_report`]).
//!
//! Reports are acknowledged after a batch commit: ONE writer thread stores everything that
//! arrived meanwhile with one write and one sync ([`Store::put_reports`]) and then answers
//! each session. So no report is acknowledged before it is durable, and the sync cost is
//! shared.

use crate::clock::now_ms;
use crate::events::AgentEventKind;
use crate::fleet;
use crate::state::{internal, Controller, Flat, NodeSlot};
use crate::store::{FactChange, ReportWrite, Store};
use fleetward_proto::api::agent_message;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::Status;

/// The ingestion path of one controller: its state and the report writer thread.
pub struct Ingest {
    ctl: Arc<Controller>,
    writer: ReportWriter,
}

impl Ingest {
    /// Starts the writer thread; it ends when the `Ingest` is dropped.
    pub fn start(ctl: Arc<Controller>) -> Self {
        Ingest {
            writer: ReportWriter::start(ctl.store_handle()),
            ctl,
        }
    }

    /// Checks, diffs and stores one report of `node` (whose slot is `slot`), then makes
    /// it the node's latest. An agent speaks only for its own node
    /// ([`Controller::speaks_for`]).
    pub(crate) async fn store_report(
        &self,
        slot: &NodeSlot,
        node: &str,
        r: agent_message::Report,
    ) -> Result<(), Status> {
        let ctl = &self.ctl;
        let report = r
            .parse()
            .map_err(|e| Status::invalid_argument(format!("report is not valid: {e}")))?;
        ctl.speaks_for(node, &report)?;
        ctl.node_enrolled(node)?;
        let now = now_ms();
        let flat = fleet::flatten(&report.facts);
        let previous = ctl.previous_flat(slot);
        let changes: Vec<FactChange> = match &previous {
            Some(p) => fleet::changes_since(p, &flat)
                .into_iter()
                .map(|c| FactChange {
                    time_ms: now,
                    key: c.key,
                    old: c.old,
                    new: c.new,
                })
                .collect(),
            None => Vec::new(),
        };
        drop(previous);
        // Packed now (the map is freed before the write is awaited).
        let flat = Arc::new(Flat::pack(&{ flat }));
        // Kept as a clone: the parser grew every Vec by doubling, a clone has exact
        // capacities (~17 → ~13 KB per seed report, for ~9 µs per report).
        let report = Arc::new({ report }.clone());
        let seq = self.writer.write(node, now, r.report_json, changes).await?;
        ctl.commit_report(slot, seq, report, flat);
        ctl.publish(node, AgentEventKind::Report);
        Ok(())
    }
}

/// The one writer of reports: sessions hand it their reports; it stores everything that
/// arrived meanwhile with ONE write and sync ([`Store::put_reports`]) and then answers each.
struct ReportWriter {
    tx: std::sync::mpsc::Sender<WriteJob>,
}

struct WriteJob {
    node: String,
    received_ms: u64,
    json: Vec<u8>,
    changes: Vec<FactChange>,
    done: tokio::sync::oneshot::Sender<Result<u64, String>>,
}

impl ReportWriter {
    /// Most reports stored per sync.
    const BATCH: usize = 512;
    /// How long the writer waits for more reports before a sync.
    const GATHER: Duration = Duration::from_millis(4);

    fn start(store: Arc<Store>) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<WriteJob>();
        std::thread::spawn(move || {
            while let Ok(first) = rx.recv() {
                // Group commit: collect what arrives within GATHER of the first report, so
                // one sync serves many reports when they come fast (and costs one GATHER of
                // latency when they do not).
                let mut jobs = vec![first];
                let until = Instant::now() + Self::GATHER;
                while jobs.len() < Self::BATCH {
                    let left = until.saturating_duration_since(Instant::now());
                    match rx.recv_timeout(left) {
                        Ok(j) => jobs.push(j),
                        Err(_) => break,
                    }
                }
                let write = |jobs: &[WriteJob]| {
                    let writes: Vec<ReportWrite> = jobs
                        .iter()
                        .map(|j| ReportWrite {
                            node: &j.node,
                            received_ms: j.received_ms,
                            json: &j.json,
                            changes: &j.changes,
                        })
                        .collect();
                    store.put_reports(&writes)
                };
                match write(&jobs) {
                    Ok(seqs) => {
                        for (j, seq) in jobs.into_iter().zip(seqs) {
                            let _ = j.done.send(Ok(seq));
                        }
                    }
                    // One bad report must not fail the others: retry them one by one.
                    Err(_) => {
                        for j in jobs {
                            let r = write(std::slice::from_ref(&j))
                                .map(|s| s[0])
                                .map_err(|e| e.to_string());
                            let _ = j.done.send(r);
                        }
                    }
                }
            }
        });
        ReportWriter { tx }
    }

    async fn write(
        &self,
        node: &str,
        received_ms: u64,
        json: Vec<u8>,
        changes: Vec<FactChange>,
    ) -> Result<u64, Status> {
        let (done, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(WriteJob {
                node: node.to_string(),
                received_ms,
                json,
                changes,
                done,
            })
            .map_err(|_| internal("the report writer stopped"))?;
        match rx.await {
            Ok(Ok(seq)) => Ok(seq),
            Ok(Err(e)) => Err(internal(e)),
            Err(_) => Err(internal("the report writer dropped a report")),
        }
    }
}
