//! The report journal: every stored report and every batch of fact changes is one record
//! in the blob log ([`super::blobs`]); the index of what each node has (its newest
//! [`HISTORY_PER_NODE`] reports and about [`FACT_CHANGES_PER_NODE`] fact changes) lives in
//! memory and is rebuilt from the records at open. Private to [`crate::store`], which
//! turns a [`JournalError`] into its own `StoreError`; the journal imports nothing from it.
//!
//! Why not sled: a report touched five keys in three trees and sled wrote ~8 KiB of pages
//! per report; it was most of the ingestion CPU. Here a batch of reports is one `write(2)`
//! and one `fdatasync`, and nothing else.
//!
//! Record payload: `kind (u8: 1 report, 2 fact changes, 3 unchanged) ‖ seq (u64 BE) ‖ received_ms
//! (u64 BE) ‖ node length (u16 BE) ‖ node ‖ body`, where a report's body is its canonical
//! JSON as a size-prepended LZ4 block and a change batch's body is a JSON array of
//! [`FactChange`]. An unchanged report (the same canonical bytes as the node's latest) is
//! a record without a body: it gives the latest report a new seq and receive time (what
//! the machines' "a report newer than" and `last_seen` need) without storing it again;
//! only the newest such record of a node is kept. A record is self-describing, so the
//! index is a cache of the journal.
//!
//! Invariants: a seq is handed out once and grows with every report, across restarts (the
//! next seq is one past the largest in the journal; a node's latest record is always kept,
//! so the largest ever handed out is always there). A record is indexed only once it is
//! synced, so a reader never sees a report that a crash could take back. Segment files are
//! deleted only by [`ReportLog::compact`], under the exclusive side of `gc`, while readers
//! hold its shared side from looking an entry up until they have read it.

use super::blobs::{BlobError, BlobLog, BlobRef};
use fleetward_proto::{report_from_bytes, Report};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

/// How many reports are kept per node; older ones are pruned.
pub const HISTORY_PER_NODE: usize = 50;

/// How many fact changes are kept per node; older ones are pruned.
pub const FACT_CHANGES_PER_NODE: usize = 1000;

/// One report to store with `Store::put_reports`.
#[derive(Debug, Clone, Copy)]
pub struct ReportWrite<'a> {
    pub node: &'a str,
    pub received_ms: u64,
    /// The report's canonical JSON; empty for a report identical to the node's latest
    /// ([`ReportWrite::unchanged`]).
    pub json: &'a [u8],
    pub changes: &'a [FactChange],
}

impl<'a> ReportWrite<'a> {
    /// A report with the same canonical bytes as the node's latest: journaled as a
    /// record without a body.
    pub fn unchanged(node: &'a str, received_ms: u64) -> Self {
        ReportWrite {
            node,
            received_ms,
            json: &[],
            changes: &[],
        }
    }
}

/// One change of one fact of a node (`key` as in `fleet::flatten`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FactChange {
    pub time_ms: u64,
    pub key: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

const KIND_REPORT: u8 = 1;
const KIND_CHANGES: u8 = 2;
const KIND_SAME: u8 = 3;
const HEADER: usize = 1 + 8 + 8 + 2;

/// What can go wrong in the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Writing, syncing or listing the segment files failed.
    #[error("report bodies: {0}")]
    Blob(String),
    /// A record of `node` cannot be read back or decoded.
    #[error("corrupt data in the journal at node '{node}': {reason}")]
    Damaged { node: String, reason: String },
    /// A node name that does not fit a record header.
    #[error("invalid node name '{0}'")]
    InvalidNodeName(String),
}

type Result<T> = std::result::Result<T, JournalError>;

fn blob_err(e: BlobError) -> JournalError {
    JournalError::Blob(e.to_string())
}

fn damaged(node: &str, reason: impl ToString) -> JournalError {
    JournalError::Damaged {
        node: node.to_string(),
        reason: reason.to_string(),
    }
}

/// A record's header fields.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Header<'a> {
    kind: u8,
    seq: u64,
    received_ms: u64,
    node: &'a str,
}

fn encode_record(h: &Header<'_>, body: &[u8]) -> Result<Vec<u8>> {
    let len =
        u16::try_from(h.node.len()).map_err(|_| JournalError::InvalidNodeName(h.node.into()))?;
    let mut out = Vec::with_capacity(HEADER + h.node.len() + body.len());
    out.push(h.kind);
    out.extend_from_slice(&h.seq.to_be_bytes());
    out.extend_from_slice(&h.received_ms.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(h.node.as_bytes());
    out.extend_from_slice(body);
    Ok(out)
}

fn decode_record(payload: &[u8]) -> Option<(Header<'_>, &[u8])> {
    let head = payload.get(..HEADER)?;
    let u64_at = |i: usize| u64::from_be_bytes(head[i..i + 8].try_into().unwrap_or_default());
    let len = usize::from(u16::from_be_bytes([head[17], head[18]]));
    let node = std::str::from_utf8(payload.get(HEADER..HEADER + len)?).ok()?;
    let h = Header {
        kind: head[0],
        seq: u64_at(1),
        received_ms: u64_at(9),
        node,
    };
    Some((h, &payload[HEADER + len..]))
}

/// Where one record of a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    seq: u64,
    received_ms: u64,
    at: BlobRef,
}

/// What the journal holds for one node, oldest first.
#[derive(Debug, Default)]
struct NodeIndex {
    reports: VecDeque<Entry>,
    /// Change batches with their number of changes.
    changes: VecDeque<(Entry, usize)>,
    change_total: usize,
    /// The newest unchanged-report record after the latest report, if any.
    same: Option<Entry>,
}

impl NodeIndex {
    /// Adds a record; returns the records that fell out of the bounds.
    fn push(&mut self, kind: u8, e: Entry, count: usize, dropped: &mut Vec<BlobRef>) {
        if kind == KIND_SAME {
            match self.reports.back() {
                Some(latest) if latest.seq < e.seq => {
                    dropped.extend(self.same.replace(e).map(|old| old.at));
                }
                _ => dropped.push(e.at),
            }
        } else if kind == KIND_REPORT {
            dropped.extend(self.same.take().map(|old| old.at));
            self.reports.push_back(e);
            while self.reports.len() > HISTORY_PER_NODE {
                dropped.extend(self.reports.pop_front().map(|e| e.at));
            }
        } else {
            self.changes.push_back((e, count));
            self.change_total += count;
            while let Some(&(old, n)) = self.changes.front() {
                if self.change_total - n < FACT_CHANGES_PER_NODE {
                    break;
                }
                self.changes.pop_front();
                self.change_total -= n;
                dropped.push(old.at);
            }
        }
    }

    fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.reports
            .iter()
            .chain(self.changes.iter().map(|(e, _)| e))
            .chain(self.same.iter())
    }

    fn entries_mut(&mut self) -> impl Iterator<Item = &mut Entry> {
        self.reports
            .iter_mut()
            .chain(self.changes.iter_mut().map(|(e, _)| e))
            .chain(self.same.iter_mut())
    }

    /// Seq and receive time of the latest report, counting unchanged ones.
    fn latest(&self) -> Option<(u64, u64)> {
        self.same
            .or_else(|| self.reports.back().copied())
            .map(|e| (e.seq, e.received_ms))
    }
}

pub struct ReportLog {
    blobs: BlobLog,
    index: Mutex<HashMap<String, NodeIndex>>,
    next_seq: AtomicU64,
    /// Bytes appended since open (compaction is also triggered by this).
    written: AtomicU64,
    /// Shared: reading records. Exclusive: deleting segment files (see the module doc).
    gc: RwLock<()>,
}

/// A record found by replay.
struct Found {
    kind: u8,
    node: String,
    entry: Entry,
    count: usize,
}

impl ReportLog {
    /// Opens the journal in `dir`, rebuilds the index from its records, deletes segments
    /// nothing uses and compacts sparse ones. Damage is logged (file and offset) and the
    /// rest still loads.
    pub fn open(dir: impl Into<PathBuf>, segment_max: u64) -> Result<ReportLog> {
        let blobs = BlobLog::open_with(dir, segment_max).map_err(blob_err)?;
        let mut found: Vec<Found> = Vec::new();
        blobs
            .replay(
                |at, payload| {
                    let Some((h, body)) = decode_record(payload) else {
                        tracing::error!(
                            segment = at.segment,
                            offset = at.offset,
                            "journal record with a bad header; skipped"
                        );
                        return;
                    };
                    let count = match h.kind {
                        KIND_REPORT | KIND_SAME => 0,
                        KIND_CHANGES => {
                            serde_json::from_slice::<Vec<FactChange>>(body).map_or(0, |c| c.len())
                        }
                        _ => {
                            tracing::error!(
                                segment = at.segment,
                                offset = at.offset,
                                kind = h.kind,
                                "journal record of an unknown kind; skipped"
                            );
                            return;
                        }
                    };
                    found.push(Found {
                        kind: h.kind,
                        node: h.node.to_string(),
                        entry: Entry {
                            seq: h.seq,
                            received_ms: h.received_ms,
                            at,
                        },
                        count,
                    });
                },
                |problem| tracing::error!("{problem}"),
            )
            .map_err(blob_err)?;
        // Compaction copies records, so one may be there twice: the later copy wins.
        found.sort_by_key(|f| (f.entry.seq, f.kind, f.entry.at.segment, f.entry.at.offset));
        let mut index: HashMap<String, NodeIndex> = HashMap::new();
        let mut max_seq = 0;
        let mut dropped = Vec::new();
        for (i, f) in found.iter().enumerate() {
            let next = found.get(i + 1);
            if next
                .is_some_and(|n| (n.entry.seq, n.kind, &n.node) == (f.entry.seq, f.kind, &f.node))
            {
                continue;
            }
            max_seq = max_seq.max(f.entry.seq);
            index
                .entry(f.node.clone())
                .or_default()
                .push(f.kind, f.entry, f.count, &mut dropped);
        }
        for e in index.values().flat_map(NodeIndex::entries) {
            blobs.retain(e.at);
        }
        let log = ReportLog {
            blobs,
            index: Mutex::new(index),
            next_seq: AtomicU64::new(max_seq + 1),
            written: AtomicU64::new(0),
            gc: RwLock::new(()),
        };
        log.compact()?;
        Ok(log)
    }

    fn lock_index(&self) -> std::sync::MutexGuard<'_, HashMap<String, NodeIndex>> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Journals a batch (one write, one sync), then indexes it; returns each report's seq.
    /// The caller has checked the node names.
    pub fn append(&self, batch: &[ReportWrite<'_>]) -> Result<Vec<u64>> {
        let mut payloads = Vec::with_capacity(batch.len() * 2);
        let mut meta = Vec::with_capacity(batch.len() * 2);
        let mut seqs = Vec::with_capacity(batch.len());
        for w in batch {
            let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
            let mut h = Header {
                kind: KIND_REPORT,
                seq,
                received_ms: w.received_ms,
                node: w.node,
            };
            if w.json.is_empty() {
                h.kind = KIND_SAME;
                payloads.push(encode_record(&h, &[])?);
                meta.push((w.node, KIND_SAME, seq, w.received_ms, 0));
                seqs.push(seq);
                continue;
            }
            payloads.push(encode_record(&h, &lz4_flex::compress_prepend_size(w.json))?);
            meta.push((w.node, KIND_REPORT, seq, w.received_ms, 0));
            if !w.changes.is_empty() {
                h.kind = KIND_CHANGES;
                let body = serde_json::to_vec(w.changes).map_err(|e| damaged(w.node, e))?;
                payloads.push(encode_record(&h, &body)?);
                meta.push((w.node, KIND_CHANGES, seq, w.received_ms, w.changes.len()));
            }
            seqs.push(seq);
        }
        let slices: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        let bytes: usize = slices.iter().map(|s| s.len() + 8).sum();
        self.written
            .fetch_add(u64::try_from(bytes).unwrap_or(u64::MAX), Ordering::Relaxed);
        let refs = self.blobs.append(&slices).map_err(blob_err)?;
        if let Err(e) = self.blobs.sync() {
            for at in refs {
                self.blobs.release(at);
            }
            return Err(blob_err(e));
        }
        let mut dropped = Vec::new();
        {
            let mut index = self.lock_index();
            for ((node, kind, seq, received_ms, count), at) in meta.into_iter().zip(refs) {
                let entry = Entry {
                    seq,
                    received_ms,
                    at,
                };
                match index.get_mut(node) {
                    Some(n) => n.push(kind, entry, count, &mut dropped),
                    None => index.entry(node.to_string()).or_default().push(
                        kind,
                        entry,
                        count,
                        &mut dropped,
                    ),
                }
            }
        }
        for at in dropped {
            self.blobs.release(at);
        }
        Ok(seqs)
    }

    /// The seq and receive time of the node's latest report (an unchanged one counts).
    pub fn latest(&self, node: &str) -> Option<(u64, u64)> {
        self.lock_index().get(node)?.latest()
    }

    /// Bytes appended since the journal was opened.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Free bytes (for an unprivileged writer) on the journal's file system.
    pub fn free_bytes(&self) -> Result<u64> {
        self.blobs.free_bytes().map_err(blob_err)
    }

    /// Reads the records `pick` selects from the node's index (oldest first).
    fn read<T>(
        &self,
        node: &str,
        pick: impl FnOnce(&NodeIndex) -> Vec<Entry>,
        mut decode: impl FnMut(&Entry, &[u8]) -> Result<T>,
    ) -> Result<Vec<T>> {
        let _reading = self.gc.read().unwrap_or_else(|e| e.into_inner());
        let entries = match self.lock_index().get(node) {
            Some(n) => pick(n),
            None => return Ok(Vec::new()),
        };
        entries
            .iter()
            .map(|e| {
                let payload = self.blobs.read(e.at).map_err(|err| damaged(node, err))?;
                let (h, body) = decode_record(&payload)
                    .filter(|(h, _)| h.node == node && h.seq == e.seq)
                    .ok_or_else(|| damaged(node, format!("record {} is not this node's", e.seq)))?;
                debug_assert!(h.kind == KIND_REPORT || h.kind == KIND_CHANGES);
                decode(e, body)
            })
            .collect()
    }

    fn report(node: &str, e: &Entry, body: &[u8]) -> Result<(u64, u64, Report)> {
        let json = lz4_flex::decompress_size_prepended(body)
            .map_err(|err| damaged(node, format!("report {}: bad LZ4 body: {err}", e.seq)))?;
        let report = report_from_bytes(&json)
            .map_err(|err| damaged(node, format!("report {}: {err}", e.seq)))?;
        Ok((e.seq, e.received_ms, report))
    }

    /// The node's latest report as `(seq, received_ms, report)`; after unchanged reports,
    /// the body of the last stored one with the seq and time of the newest unchanged one.
    pub fn latest_report(&self, node: &str) -> Result<Option<(u64, u64, Report)>> {
        let pick = |n: &NodeIndex| n.reports.back().copied().into_iter().collect();
        let latest = self.latest(node);
        Ok(self
            .read(node, pick, |e, b| Self::report(node, e, b))?
            .pop()
            .map(|(seq, received, r)| match latest {
                Some((s, t)) if s > seq => (s, t, r),
                _ => (seq, received, r),
            }))
    }

    /// The node's kept reports as `(seq, received_ms, report)`, oldest first.
    pub fn history(&self, node: &str) -> Result<Vec<(u64, u64, Report)>> {
        let pick = |n: &NodeIndex| n.reports.iter().copied().collect();
        self.read(node, pick, |e, b| Self::report(node, e, b))
    }

    /// The node's newest [`FACT_CHANGES_PER_NODE`] fact changes, oldest first.
    pub fn fact_changes(&self, node: &str) -> Result<Vec<FactChange>> {
        let pick = |n: &NodeIndex| n.changes.iter().map(|(e, _)| *e).collect();
        let batches = self.read(node, pick, |e, body| {
            serde_json::from_slice::<Vec<FactChange>>(body)
                .map_err(|err| damaged(node, format!("changes {}: {err}", e.seq)))
        })?;
        let mut all: Vec<FactChange> = batches.into_iter().flatten().collect();
        let excess = all.len().saturating_sub(FACT_CHANGES_PER_NODE);
        all.drain(..excess);
        Ok(all)
    }

    /// Moves the live records of sparse sealed segments (less than half live) to the
    /// current one and deletes segments nothing uses, so a node that stopped reporting
    /// cannot pin old segments (and their disk) forever. Safe beside the writer: an entry
    /// pruned while its copy was made keeps no copy.
    pub fn compact(&self) -> Result<()> {
        let sparse: BTreeSet<u64> = self.blobs.sparse().map_err(blob_err)?.into_iter().collect();
        let mut moved = Vec::new();
        if !sparse.is_empty() {
            let targets: Vec<(String, Entry)> = self
                .lock_index()
                .iter()
                .flat_map(|(node, n)| {
                    n.entries()
                        .filter(|e| sparse.contains(&e.at.segment))
                        .map(|e| (node.clone(), *e))
                })
                .collect();
            let mut copies = Vec::with_capacity(targets.len());
            let copied = targets.into_iter().try_for_each(|(node, e)| {
                let payload = self.blobs.read(e.at).map_err(|err| damaged(&node, err))?;
                let at = self.blobs.append(&[&payload]).map_err(blob_err)?[0];
                copies.push((node, e, at));
                Ok::<_, JournalError>(())
            });
            if let Err(e) = copied.and_then(|()| self.blobs.sync().map_err(blob_err)) {
                for (_, _, at) in copies {
                    self.blobs.release(at);
                }
                return Err(e);
            }
            let mut index = self.lock_index();
            for (node, old, at) in copies {
                let slot = index
                    .get_mut(&node)
                    .and_then(|n| n.entries_mut().find(|e| **e == old));
                match slot {
                    Some(slot) => {
                        slot.at = at;
                        moved.push(old.at);
                    }
                    None => moved.push(at), // pruned meanwhile: the copy is not kept
                }
            }
        }
        let _deleting = self.gc.write().unwrap_or_else(|e| e.into_inner());
        for at in moved {
            self.blobs.release(at);
        }
        self.blobs.sweep().map_err(blob_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_header_roundtrip_and_short_input() {
        let h = Header {
            kind: KIND_CHANGES,
            seq: 42,
            received_ms: 7,
            node: "pve-01",
        };
        let rec = encode_record(&h, b"body").unwrap();
        assert_eq!(decode_record(&rec), Some((h, &b"body"[..])));
        for cut in 0..HEADER + 6 {
            assert_eq!(decode_record(&rec[..cut]), None, "cut at {cut}");
        }
    }

    #[test]
    fn change_batches_keep_about_the_bound() {
        let mut n = NodeIndex::default();
        let mut dropped = Vec::new();
        for seq in 0..300u64 {
            let at = BlobRef {
                segment: 1,
                offset: seq,
                len: 1,
            };
            let e = Entry {
                seq,
                received_ms: seq,
                at,
            };
            n.push(KIND_CHANGES, e, 7, &mut dropped);
            n.push(KIND_REPORT, e, 0, &mut dropped);
        }
        assert_eq!(n.reports.len(), HISTORY_PER_NODE);
        assert!(n.change_total >= FACT_CHANGES_PER_NODE);
        assert!(n.change_total < FACT_CHANGES_PER_NODE + 7);
        assert_eq!(
            dropped.len(),
            300 - HISTORY_PER_NODE + 300 - n.changes.len()
        );
    }

    fn write<'a>(node: &'a str, json: &'a [u8], changes: &'a [FactChange]) -> ReportWrite<'a> {
        ReportWrite {
            node,
            received_ms: 5,
            json,
            changes,
        }
    }

    fn seed_json(tag: &str) -> Vec<u8> {
        let mut r = fleetward_proto::report_from_json(include_str!(
            "../../../agent/tests/fixtures/seed/pve-01/expected.json"
        ))
        .unwrap();
        r.facts.node.boot_id = Some(tag.into());
        fleetward_proto::report_json_bytes(&r)
    }

    #[test]
    fn an_unchanged_report_moves_the_seq_without_a_body_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let a = seed_json("a");
        let log = ReportLog::open(dir.path(), super::super::blobs::SEGMENT_MAX).unwrap();
        let first = log.append(&[write("n", &a, &[])]).unwrap()[0];
        let before = log.written();
        let same = log
            .append(&[
                ReportWrite::unchanged("n", 9),
                ReportWrite::unchanged("n", 10),
            ])
            .unwrap();
        assert!(same[0] > first && same[1] > same[0]);
        // A header and the blob framing, no body.
        assert!(
            log.written() - before < 2 * 64,
            "{}",
            log.written() - before
        );
        assert_eq!(log.latest("n"), Some((same[1], 10)));
        let (seq, received, r) = log.latest_report("n").unwrap().unwrap();
        assert_eq!((seq, received), (same[1], 10));
        assert_eq!(fleetward_proto::report_json_bytes(&r), a);
        assert_eq!(log.history("n").unwrap().len(), 1, "not stored again");
        // A node without a report: nothing to repeat, the record is not indexed.
        log.append(&[ReportWrite::unchanged("m", 1)]).unwrap();
        assert_eq!(log.latest("m"), None);
        drop(log);
        let log = ReportLog::open(dir.path(), super::super::blobs::SEGMENT_MAX).unwrap();
        assert_eq!(log.latest("n"), Some((same[1], 10)));
        assert_eq!(log.latest("m"), None);
        // A new report replaces it; seqs keep growing.
        let next = log.append(&[write("n", &a, &[])]).unwrap()[0];
        assert!(next > same[1]);
        assert_eq!(log.latest("n"), Some((next, 5)));
        assert_eq!(log.history("n").unwrap().len(), 2);
    }

    #[test]
    fn damage_is_an_error_on_read_and_skipped_at_replay_with_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let change = FactChange {
            time_ms: 5,
            key: "node.boot_id".into(),
            old: Some("a".into()),
            new: Some("b".into()),
        };
        let (a, b) = (seed_json("a"), seed_json("b"));
        let log = ReportLog::open(dir.path(), super::super::blobs::SEGMENT_MAX).unwrap();
        let first = log.append(&[write("n", &a, &[])]).unwrap();
        let second = log
            .append(&[write("n", &b, std::slice::from_ref(&change))])
            .unwrap();
        assert!(second[0] > first[0]);
        assert_eq!(log.history("n").unwrap().len(), 2);
        assert_eq!(log.fact_changes("n").unwrap(), vec![change.clone()]);
        // Flip a byte inside the first record's body.
        let seg = std::fs::read_dir(dir.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[60] ^= 0xff;
        std::fs::write(&seg, &bytes).unwrap();
        let err = log.history("n").unwrap_err();
        assert!(matches!(err, JournalError::Damaged { .. }), "{err}");
        assert_eq!(log.latest_report("n").unwrap().unwrap().0, second[0]);
        drop(log);
        // Reopen: the damaged record is skipped, the rest loads, seqs keep growing.
        let log = ReportLog::open(dir.path(), super::super::blobs::SEGMENT_MAX).unwrap();
        let h = log.history("n").unwrap();
        assert_eq!(h.iter().map(|r| r.0).collect::<Vec<_>>(), second);
        assert_eq!(log.fact_changes("n").unwrap(), vec![change]);
        let third = log.append(&[write("n", &a, &[])]).unwrap();
        assert!(third[0] > second[0]);
        // A torn tail (a write cut short) is cut off at open; what came before stays.
        drop(log);
        let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
        std::io::Write::write_all(&mut f, &[200, 0, 0, 0, 1, 2, 3]).unwrap();
        drop(f);
        let log = ReportLog::open(dir.path(), super::super::blobs::SEGMENT_MAX).unwrap();
        assert_eq!(log.latest("n").unwrap().0, third[0]);
        let after = log.append(&[write("n", &b, &[])]).unwrap();
        drop(log);
        let log = ReportLog::open(dir.path(), super::super::blobs::SEGMENT_MAX).unwrap();
        assert_eq!(log.latest("n").unwrap().0, after[0]);
        assert_eq!(log.history("n").unwrap().len(), 3);
    }
}
