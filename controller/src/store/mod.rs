//! The controller's durable store.
//!
//! **Invariant: this module is the ONE place that touches the database.** Everything else
//! in the controller goes through [`Store`]; nothing else opens sled or knows tree names,
//! key layouts or value encodings.
//!
//! Layout (one sled `Db` in the data dir):
//! - `nodes`: node name → [`NodeRecord`] JSON.
//! - `tokens`: token id → [`TokenRecord`] JSON (only the sha256 of a token, never plaintext).
//! - `revocations`: certificate serial → empty.
//! - `audit`: `generate_id()` (u64 BE, so iteration order is append order) → [`AuditEntry`] JSON.
//! - `operations`: operation id (`rollout-…`, `shutdown-…`) → the operation's state machine
//!   state as JSON (the write-ahead journal: written and flushed before any command it
//!   implies is sent).
//! - `operators`: operator name → `OperatorRecord` JSON (the registry of issued operator
//!   certificates: scope, serials, expiry, revoked; see `operators.rs`).
//! - `op_events`: operation id ‖ 0x00 ‖ `generate_id()` (u64 BE) → [`OpEvent`] JSON, the
//!   operation's event log in append order.
//!
//! Reports and fact changes are not in sled: they are records of the report journal
//! (`fleetward-journal/` in the database directory, see `journal.rs`), one write
//! and one `fdatasync` per batch, indexed in memory. The latest report's receive time is
//! the node's `last_seen_ms`, so a report does not rewrite the node record.
//!
//! All times are unix milliseconds passed in by the caller; the store reads no clock.
//! **Durability:** every acknowledged write of sled's trees goes through ONE path,
//! [`Store::durable`]: the write, sled's flush, then a real sync of the files sled wrote
//! (`durable.rs`: `fdatasync` of its log and of new blob files, `fsync` of the directories),
//! then the sync observer, then the return — so it survives a SIGKILL (tested: without the
//! flush, acked writes sit in sled's in-memory log buffer and are lost) and a power loss
//! (sled's own flush uses `sync_file_range` on Linux, which syncs neither metadata nor the
//! drive cache). The only sled write that does not take it is [`Store::record_hello`]
//! (agent version and boot id, said again at every session). The report journal uses
//! `fdatasync` and syncs its directory when it creates a segment.
//! Undecodable stored data yields [`StoreError::Corrupt`],
//! never a panic.

mod blobs;
mod durable;
mod journal;
mod operators;

pub use durable::{SyncObserver, WriteClass};

use fleetward_proto::{report_json_bytes, Report};
pub use journal::{FactChange, ReportWrite, FACT_CHANGES_PER_NODE, HISTORY_PER_NODE};
use journal::{JournalError, ReportLog};
pub use operators::{OperatorError, OperatorRecord};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sled::transaction::{abort, TransactionError, TransactionalTree};
use sled::{Transactional, Tree};
use std::path::Path;

/// The report journal's directory inside the database directory.
pub const REPORTS_DIR: &str = "fleetward-journal";

/// Where releases before the journal kept report bodies (see [`Store::open`]).
const OLD_REPORTS_DIR: &str = "fleetward-reports";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open database at {path}: {source}; is another fleetward running?")]
    Open { path: String, source: sled::Error },
    #[error("database error: {0}")]
    Db(#[from] sled::Error),
    #[error("corrupt data in tree '{tree}' at key '{key}': {reason}")]
    Corrupt {
        tree: &'static str,
        key: String,
        reason: String,
    },
    #[error("unknown node '{0}'")]
    UnknownNode(String),
    #[error("invalid node name '{0}': must be non-empty and contain no NUL byte")]
    InvalidNodeName(String),
    #[error("unknown token id '{0}'")]
    UnknownToken(String),
    #[error("a token with id '{0}' already exists")]
    DuplicateToken(String),
    #[error("report bodies: {0}")]
    Blob(String),
    #[error("database sync: {0}")]
    Sync(#[from] std::io::Error),
}

impl From<JournalError> for StoreError {
    fn from(e: JournalError) -> Self {
        match e {
            JournalError::Blob(reason) => StoreError::Blob(reason),
            JournalError::Damaged { node, reason } => StoreError::Corrupt {
                tree: "journal",
                key: node,
                reason,
            },
            JournalError::InvalidNodeName(name) => StoreError::InvalidNodeName(name),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("unknown token")]
    Unknown,
    #[error("token has expired")]
    Expired,
    #[error("token has already been used")]
    AlreadyUsed,
    #[error("token has been revoked")]
    Revoked,
    #[error("token is bound to a different node")]
    WrongNode,
    #[error(
        "node '{0}' is already enrolled; replacing it needs a token created for it (token create --node {0})"
    )]
    NodeEnrolled(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    pub cert_serial: String,
    pub cert_not_after_ms: u64,
    pub enrolled_ms: u64,
    pub last_seen_ms: Option<u64>,
    pub revoked: bool,
    pub agent_version: Option<String>,
    pub boot_id: Option<String>,
    /// Every certificate serial issued to this node, the current one last. Records written
    /// before this field existed have it empty; [`NodeRecord::all_serials`] adds
    /// `cert_serial` and `previous_serial` either way.
    #[serde(default)]
    pub serials: Vec<String>,
    /// The serial the last renewal replaced: still accepted until the current one is first
    /// used or until `previous_until_ms`, whichever comes first (an agent that renewed
    /// mid-session, or crashed before saving its new certificate, is not cut off).
    #[serde(default)]
    pub previous_serial: Option<String>,
    #[serde(default)]
    pub previous_until_ms: u64,
}

/// How a certificate serial stands to the node it names (see [`NodeRecord::serial_use`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SerialUse {
    /// The node's current certificate.
    Current,
    /// The certificate the last renewal replaced, within its overlap.
    Previous,
}

impl NodeRecord {
    /// A record for a node's first (or replacing) certificate.
    pub fn new(name: &str, serial: &str, not_after_ms: u64, enrolled_ms: u64) -> Self {
        NodeRecord {
            name: name.to_string(),
            cert_serial: serial.to_string(),
            cert_not_after_ms: not_after_ms,
            enrolled_ms,
            last_seen_ms: None,
            revoked: false,
            agent_version: None,
            boot_id: None,
            serials: vec![serial.to_string()],
            previous_serial: None,
            previous_until_ms: 0,
        }
    }

    /// Whether a certificate with `serial` may speak for this node at `now_ms`: only the
    /// current one, or the one it replaced during the overlap. A revoked node accepts none.
    pub fn serial_use(&self, serial: &str, now_ms: u64) -> Option<SerialUse> {
        if self.revoked {
            None
        } else if serial == self.cert_serial {
            Some(SerialUse::Current)
        } else if self.previous_serial.as_deref() == Some(serial) && now_ms < self.previous_until_ms
        {
            Some(SerialUse::Previous)
        } else {
            None
        }
    }

    /// Every serial ever issued to the node (as far as the record knows), each once.
    pub fn all_serials(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::with_capacity(self.serials.len() + 2);
        let known = self
            .serials
            .iter()
            .chain(std::iter::once(&self.cert_serial))
            .chain(self.previous_serial.iter());
        for s in known {
            if !out.contains(s) {
                out.push(s.clone());
            }
        }
        out
    }
}

/// Why a node's certificate change was refused.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    #[error("node '{0}' is not enrolled")]
    NotEnrolled(String),
    #[error("node '{0}' is revoked")]
    Revoked(String),
    #[error("certificate {serial} is not a current certificate of node '{node}'")]
    NotCurrent { node: String, serial: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a renewal changed: the serial now in its overlap, and serials revoked by it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewal {
    /// The serial the new certificate replaces (accepted for the overlap).
    pub replaced: String,
    /// Serials revoked at once: an older previous one, or a renewed certificate that was
    /// never used (when the renewal came from the previous one).
    pub revoked: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// First 12 hex chars of `sha256`.
    pub id: String,
    /// Hex sha256 of the token plaintext.
    pub sha256: String,
    /// If set, only this node may consume the token.
    pub node: Option<String>,
    pub expires_ms: u64,
    pub created_ms: u64,
    pub used_ms: Option<u64>,
    pub revoked: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub time_ms: u64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: String,
}

/// One entry of an operation's event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpEvent {
    pub time_ms: u64,
    /// The machine's notice, as JSON.
    pub event: serde_json::Value,
}

pub struct Store {
    db: sled::Db,
    /// sled's files, synced for real after its flush (see [`Store::durable`]).
    files: durable::SledFiles,
    /// Durable writes made at the same time share their sync.
    group: durable::GroupCommit,
    /// Reports and fact changes (see `journal.rs`).
    journal: ReportLog,
    operations: Tree,
    op_events: Tree,
    nodes: Tree,
    tokens: Tree,
    revocations: Tree,
    audit: Tree,
    /// The operator registry (see `operators.rs`).
    operators: Tree,
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

fn corrupt(tree: &'static str, key: &[u8], reason: impl ToString) -> StoreError {
    StoreError::Corrupt {
        tree,
        key: String::from_utf8_lossy(key).into_owned(),
        reason: reason.to_string(),
    }
}

fn decode<T: DeserializeOwned>(tree: &'static str, key: &[u8], value: &[u8]) -> Result<T> {
    serde_json::from_slice(value).map_err(|e| corrupt(tree, key, e))
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Plain data structs with string keys always serialise.
    serde_json::to_vec(value).expect("serialising a plain record cannot fail")
}

/// Decodes every JSON value of a tree scan.
fn decode_all<T: DeserializeOwned>(
    tree: &'static str,
    iter: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
) -> Result<Vec<T>> {
    iter.map(|kv| {
        kv.map_err(StoreError::Db)
            .and_then(|(k, v)| decode(tree, &k, &v))
    })
    .collect()
}

/// `id ‖ 0x00`: the key prefix of an operation's events.
fn events_prefix(id: &str) -> Vec<u8> {
    let mut p = id.as_bytes().to_vec();
    p.push(0);
    p
}

/// [`NodeRecord::serial_use`], with the reason when the serial does not speak for the node.
fn serial_use(rec: &NodeRecord, serial: &str, now_ms: u64) -> Result<SerialUse, SerialError> {
    rec.serial_use(serial, now_ms).ok_or_else(|| {
        if rec.revoked {
            SerialError::Revoked(rec.name.clone())
        } else {
            SerialError::NotCurrent {
                node: rec.name.clone(),
                serial: serial.to_string(),
            }
        }
    })
}

fn check_node_name(node: &str) -> Result<()> {
    if node.is_empty() || node.contains('\0') {
        return Err(StoreError::InvalidNodeName(node.to_string()));
    }
    Ok(())
}

fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `rec` (the record stored under the token's id) is the token with hash `sha256`
/// and may enroll `node_name` at `now_ms`: known, not revoked, not expired, not used, and
/// bound to no node or to this one.
fn check_token(
    rec: Option<TokenRecord>,
    sha256: &str,
    node_name: &str,
    now_ms: u64,
) -> Result<TokenRecord, TokenError> {
    let rec = rec
        .filter(|r| r.sha256 == sha256)
        .ok_or(TokenError::Unknown)?;
    if rec.revoked {
        Err(TokenError::Revoked)
    } else if now_ms >= rec.expires_ms {
        Err(TokenError::Expired)
    } else if rec.used_ms.is_some() {
        Err(TokenError::AlreadyUsed)
    } else if rec.node.as_deref().is_some_and(|n| n != node_name) {
        Err(TokenError::WrongNode)
    } else {
        Ok(rec)
    }
}

/// Adds `serials` to the revocation list inside a transaction.
fn revoke_in(
    revocations: &TransactionalTree,
    serials: &[String],
) -> Result<(), sled::transaction::UnabortableTransactionError> {
    for serial in serials {
        revocations.insert(serial.as_bytes(), Vec::new())?;
    }
    Ok(())
}

fn tx_err<E: From<StoreError>>(e: TransactionError<E>) -> E {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Db(e).into(),
    }
}

impl Store {
    /// Opens (creating if needed) the database in the data dir `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Store> {
        Self::open_with(path, blobs::SEGMENT_MAX)
    }

    /// Like [`Store::open`], with report-body segments sealed at `segment_max` bytes.
    pub fn open_with(path: impl AsRef<Path>, segment_max: u64) -> Result<Store> {
        let path = path.as_ref();
        let db = sled::Config::new()
            .path(path)
            // sled's default page cache is 1 GiB; the controller's working set (latest
            // reports, tokens, nodes) is far smaller, and its RSS is a budget.
            .cache_capacity(64 * 1024 * 1024)
            .open()
            .map_err(|source| StoreError::Open {
                path: path.display().to_string(),
                source,
            })?;
        let t = |name: &str| db.open_tree(name);
        if path.join(OLD_REPORTS_DIR).exists() {
            tracing::warn!(
                "{} holds report history in the format before the report journal; it is not read (nodes send a full report when they reconnect) and can be deleted",
                path.join(OLD_REPORTS_DIR).display()
            );
        }
        let files = durable::SledFiles::open(path)?;
        let journal = ReportLog::open(path.join(REPORTS_DIR), segment_max)?;
        Ok(Store {
            files,
            group: durable::GroupCommit::default(),
            journal,
            nodes: t("nodes")?,
            tokens: t("tokens")?,
            revocations: t("revocations")?,
            audit: t("audit")?,
            operations: t("operations")?,
            op_events: t("op_events")?,
            operators: t("operators")?,
            db,
        })
    }

    /// Compacts the report journal (see [`ReportLog::compact`]); called from a background
    /// thread.
    pub fn compact(&self) -> Result<()> {
        Ok(self.journal.compact()?)
    }

    /// Bytes the report journal appended since the store was opened (compaction is also
    /// triggered by this, not only by time).
    pub fn journal_written(&self) -> u64 {
        self.journal.written()
    }

    /// Free bytes on the file system of the report journal (the data directory's).
    pub fn free_bytes(&self) -> Result<u64> {
        Ok(self.journal.free_bytes()?)
    }

    /// Writes sled's log buffers out and makes them durable: sled's flush, then
    /// `durable.rs`'s sync of its files (see the module doc on durability).
    /// Concurrent callers share one sync ([`durable::GroupCommit`]).
    pub fn flush(&self) -> Result<()> {
        self.group.sync(|| -> Result<()> {
            self.db.flush()?;
            self.files.sync()?;
            Ok(())
        })
    }

    /// **The one durable write path**: runs `write` (changes to sled's trees), then makes
    /// them durable ([`Store::flush`]), then tells the sync observer `class`, and only then
    /// returns `write`'s result — so a caller that replies after this call replies after
    /// the sync. A failed `write` changed nothing and is returned as is; a failed sync is
    /// an error (the write must not be acknowledged). Every acknowledged write of security
    /// state or orchestration goes through here, a new write class (a new tree) too.
    pub fn durable<T, E: From<StoreError>>(
        &self,
        class: WriteClass,
        write: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        let out = write()?;
        self.flush()?;
        self.files.synced(class);
        Ok(out)
    }

    /// Sets (or with `None` removes) the function told of each durable write's class after
    /// its sync and before it returns (see [`Store::durable`]); tests record with it that
    /// every write is synced before it is acknowledged.
    pub fn observe_syncs(&self, observer: Option<SyncObserver>) {
        self.files.observe(observer);
    }

    // ---- nodes ----

    pub fn upsert_node(&self, node: &NodeRecord) -> Result<()> {
        check_node_name(&node.name)?;
        self.durable(WriteClass::Node, || {
            self.nodes.insert(node.name.as_bytes(), encode(node))?;
            Ok(())
        })
    }

    pub fn get_node(&self, name: &str) -> Result<Option<NodeRecord>> {
        self.nodes
            .get(name.as_bytes())?
            .map(|v| self.with_last_report(decode("nodes", name.as_bytes(), &v)?))
            .transpose()
    }

    /// All nodes, sorted by name (sled iterates in key order).
    pub fn list_nodes(&self) -> Result<Vec<NodeRecord>> {
        decode_all("nodes", self.nodes.iter())?
            .into_iter()
            .map(|rec| self.with_last_report(rec))
            .collect()
    }

    /// A report counts as "seen": `last_seen_ms` is the later of the stored value and the
    /// latest report's receive time, which lives in the `reports` pointer (so ingesting a
    /// report does not rewrite the node record).
    fn with_last_report(&self, mut rec: NodeRecord) -> Result<NodeRecord> {
        if let Some((_, received)) = self.journal.latest(&rec.name) {
            rec.last_seen_ms = Some(rec.last_seen_ms.unwrap_or(0).max(received));
        }
        Ok(rec)
    }

    // ---- reports ----

    /// Stores `report` as `node`'s latest, appends it to its history and bumps the node's
    /// `last_seen_ms`; returns the report's history seq. The node must exist. Durable (written and synced) when it returns.
    pub fn put_report(&self, node: &str, received_ms: u64, report: &Report) -> Result<u64> {
        let json = report_json_bytes(report);
        let seq = self.put_reports(&[ReportWrite {
            node,
            received_ms,
            json: &json,
            changes: &[],
        }])?;
        Ok(seq[0])
    }

    /// Stores a batch of reports (each already in canonical JSON, validated by the caller)
    /// with their fact changes in the report journal: one write and one sync for the whole
    /// batch; returns each report's seq. This is the ingestion path: one writer calls it
    /// for everything that arrived meanwhile, so the cost of a sync is shared. Everything
    /// is durable when it returns, so a report is acknowledged after this.
    pub fn put_reports(&self, batch: &[ReportWrite<'_>]) -> Result<Vec<u64>> {
        for w in batch {
            check_node_name(w.node)?;
            if !self.nodes.contains_key(w.node.as_bytes())? {
                return Err(StoreError::UnknownNode(w.node.to_string()));
            }
        }
        Ok(self.journal.append(batch)?)
    }

    /// The node's latest report and when it was received.
    pub fn latest_report(&self, node: &str) -> Result<Option<(u64, Report)>> {
        Ok(self
            .journal
            .latest_report(node)?
            .map(|(_, received, r)| (received, r)))
    }

    /// The node's kept history as `(seq, received_ms, report)`, oldest first.
    pub fn report_history(&self, node: &str) -> Result<Vec<(u64, u64, Report)>> {
        Ok(self.journal.history(node)?)
    }

    // ---- enrollment tokens ----

    /// Records a new token; only its sha256 is stored, never `token_plaintext`.
    pub fn create_token(
        &self,
        token_plaintext: &str,
        node: Option<&str>,
        expires_ms: u64,
        now_ms: u64,
    ) -> Result<TokenRecord> {
        let sha256 = sha256_hex(token_plaintext);
        let rec = TokenRecord {
            id: sha256[..12].to_string(),
            sha256,
            node: node.map(str::to_string),
            expires_ms,
            created_ms: now_ms,
            used_ms: None,
            revoked: false,
        };
        self.durable(WriteClass::Token, || {
            if self
                .tokens
                .compare_and_swap(rec.id.as_bytes(), None::<&[u8]>, Some(encode(&rec)))?
                .is_err()
            {
                return Err(StoreError::DuplicateToken(rec.id.clone()));
            }
            Ok(())
        })?;
        Ok(rec)
    }

    /// Atomically checks the token (exists, not revoked, not expired, not used, bound node
    /// matches) and marks it used. At most one caller can ever succeed per token.
    pub fn consume_token(
        &self,
        token_plaintext: &str,
        node_name: &str,
        now_ms: u64,
    ) -> Result<TokenRecord, TokenError> {
        let sha256 = sha256_hex(token_plaintext);
        self.update_token(&sha256[..12], |rec| {
            let mut rec = check_token(rec, &sha256, node_name, now_ms)?;
            rec.used_ms = Some(now_ms);
            Ok(rec)
        })
    }

    /// Marks a token revoked.
    pub fn revoke_token(&self, id: &str) -> Result<TokenRecord> {
        self.update_token(id, |rec| {
            let mut rec = rec.ok_or_else(|| StoreError::UnknownToken(id.to_string()))?;
            rec.revoked = true;
            Ok(rec)
        })
    }

    /// In ONE transaction: reads token `id`, lets `f` check and change it, writes it back.
    /// Durable when it returns, so e.g. a consumed token stays consumed across a crash.
    fn update_token<E: From<StoreError>>(
        &self,
        id: &str,
        f: impl Fn(Option<TokenRecord>) -> Result<TokenRecord, E>,
    ) -> Result<TokenRecord, E> {
        self.durable(WriteClass::Token, || {
            self.tokens
                .transaction(|tokens| {
                    let old = tokens
                        .get(id.as_bytes())?
                        .map(|raw| decode("tokens", id.as_bytes(), &raw));
                    let old = old.transpose().map_err(E::from).or_else(abort)?;
                    let rec = f(old).or_else(abort)?;
                    tokens.insert(id.as_bytes(), encode(&rec))?;
                    Ok(rec)
                })
                .map_err(tx_err)
        })
    }

    // ---- node certificates ----

    /// Enrolls a node with a join token, in ONE transaction: checks the token as
    /// [`Store::consume_token`] does; refuses a token bound to no node when `rec.name` is
    /// already enrolled (revoked or not), so that only a token created for a node can
    /// replace it (nothing changes then: the token stays unused); revokes every serial of
    /// a replaced record; writes `rec` with the replaced record's serials kept in its
    /// history; marks the token used. Returns the token and the record it replaced.
    pub fn enroll_node(
        &self,
        token_plaintext: &str,
        rec: &NodeRecord,
        now_ms: u64,
    ) -> Result<(TokenRecord, Option<NodeRecord>), TokenError> {
        check_node_name(&rec.name)?;
        let sha256 = sha256_hex(token_plaintext);
        let id = &sha256.as_bytes()[..12];
        let key = rec.name.as_bytes();
        self.durable(WriteClass::Enrollment, || {
            (&self.tokens, &self.nodes, &self.revocations)
                .transaction(|(tokens, nodes, revocations)| {
                    let token = tokens
                        .get(id)?
                        .map(|raw| decode::<TokenRecord>("tokens", id, &raw))
                        .transpose()
                        .map_err(TokenError::from)
                        .or_else(abort)?;
                    let mut token =
                        check_token(token, &sha256, &rec.name, now_ms).or_else(abort)?;
                    let previous = nodes
                        .get(key)?
                        .map(|raw| decode::<NodeRecord>("nodes", key, &raw))
                        .transpose()
                        .map_err(TokenError::from)
                        .or_else(abort)?;
                    let mut new = rec.clone();
                    if let Some(prev) = &previous {
                        if token.node.is_none() {
                            return abort(TokenError::NodeEnrolled(rec.name.clone()));
                        }
                        let old = prev.all_serials();
                        revoke_in(revocations, &old)?;
                        let mut serials = old;
                        serials.extend(rec.all_serials());
                        new.serials = serials;
                        new.last_seen_ms = prev.last_seen_ms;
                    }
                    token.used_ms = Some(now_ms);
                    tokens.insert(id, encode(&token))?;
                    nodes.insert(key, encode(&new))?;
                    Ok((token, previous))
                })
                .map_err(tx_err)
        })
    }

    /// Records a renewal of node `name`'s certificate, in ONE transaction with the check
    /// that `serial` (the caller's) still speaks for the node at `now_ms`
    /// ([`NodeRecord::serial_use`]). From the current certificate: it becomes the previous
    /// one until `overlap_until_ms` (an older previous one is revoked). From the previous
    /// certificate (an agent that lost its renewed one): the renewed certificate that was
    /// never used is revoked, the previous one keeps its deadline. `new_serial` becomes
    /// current and joins the node's serials.
    pub fn renew_node(
        &self,
        name: &str,
        serial: &str,
        new_serial: &str,
        not_after_ms: u64,
        now_ms: u64,
        overlap_until_ms: u64,
    ) -> Result<Renewal, SerialError> {
        self.change_node(name, Some(WriteClass::NodeCertificate), |old| {
            let mut rec = old.ok_or_else(|| SerialError::NotEnrolled(name.to_string()))?;
            let mut revoked = Vec::new();
            match serial_use(&rec, serial, now_ms)? {
                SerialUse::Current => {
                    revoked.extend(rec.previous_serial.take());
                    rec.previous_serial = Some(serial.to_string());
                    rec.previous_until_ms = overlap_until_ms;
                }
                SerialUse::Previous => revoked.push(rec.cert_serial.clone()),
            }
            let mut serials = rec.all_serials();
            serials.push(new_serial.to_string());
            rec.serials = serials;
            rec.cert_serial = new_serial.to_string();
            rec.cert_not_after_ms = not_after_ms;
            let renewal = Renewal {
                replaced: serial.to_string(),
                revoked: revoked.clone(),
            };
            Ok((Some(rec), revoked, renewal))
        })
    }

    /// Node `name`'s current certificate `serial` is in use: the one it replaced is
    /// revoked and forgotten. Returns the retired serial (`None`: nothing to retire, or
    /// `serial` is not current).
    pub fn retire_previous(&self, name: &str, serial: &str) -> Result<Option<String>, SerialError> {
        self.change_node(name, Some(WriteClass::NodeCertificate), |old| {
            let Some(mut rec) = old.filter(|r| r.cert_serial == serial && !r.revoked) else {
                return Ok((None, Vec::new(), None));
            };
            let Some(previous) = rec.previous_serial.take() else {
                return Ok((None, Vec::new(), None));
            };
            rec.previous_until_ms = 0;
            Ok((Some(rec), vec![previous.clone()], Some(previous)))
        })
    }

    /// Revokes node `name` and every serial ever issued to it, in one transaction.
    /// Returns the revoked record.
    pub fn revoke_node(&self, name: &str) -> Result<NodeRecord, SerialError> {
        self.change_node(name, Some(WriteClass::NodeCertificate), |old| {
            let mut rec = old.ok_or_else(|| SerialError::NotEnrolled(name.to_string()))?;
            let serials = rec.all_serials();
            rec.serials = serials.clone();
            rec.previous_serial = None;
            rec.previous_until_ms = 0;
            rec.revoked = true;
            Ok((Some(rec.clone()), serials, rec))
        })
    }

    /// Records what an enrolled, unrevoked node's agent said in its hello, changing nothing
    /// else of the record (a renewal or revocation at the same time is kept). Flushed
    /// (survives a crash of the process) but not synced: the agent says it again at every
    /// session, and a sync per connecting agent would cost the 10,000-agent reconnect.
    pub fn record_hello(
        &self,
        name: &str,
        agent_version: &str,
        boot_id: &str,
    ) -> Result<NodeRecord, SerialError> {
        self.change_node(name, None, |old| {
            let mut rec = old.ok_or_else(|| SerialError::NotEnrolled(name.to_string()))?;
            if rec.revoked {
                return Err(SerialError::Revoked(name.to_string()));
            }
            rec.agent_version = Some(agent_version.to_string());
            rec.boot_id = Some(boot_id.to_string());
            Ok((Some(rec.clone()), Vec::new(), rec))
        })
    }

    /// In ONE transaction over nodes and revocations: reads node `name`, lets `f` decide
    /// the new record (`None`: unchanged), the serials to revoke and the result; writes
    /// them. Then durable as `class` ([`Store::durable`]), or with `None` only flushed to
    /// the OS (see [`Store::record_hello`]).
    fn change_node<T, E: From<StoreError>>(
        &self,
        name: &str,
        class: Option<WriteClass>,
        f: impl Fn(Option<NodeRecord>) -> Result<(Option<NodeRecord>, Vec<String>, T), E>,
    ) -> Result<T, E> {
        check_node_name(name)?;
        let key = name.as_bytes();
        let write = || {
            (&self.nodes, &self.revocations)
                .transaction(|(nodes, revocations)| {
                    let old = nodes
                        .get(key)?
                        .map(|raw| decode::<NodeRecord>("nodes", key, &raw))
                        .transpose()
                        .map_err(E::from)
                        .or_else(abort)?;
                    let (new, revoke, out) = f(old).or_else(abort)?;
                    revoke_in(revocations, &revoke)?;
                    if let Some(new) = new {
                        nodes.insert(key, encode(&new))?;
                    }
                    Ok(out)
                })
                .map_err(tx_err)
        };
        match class {
            Some(class) => self.durable(class, write),
            None => {
                let out = write()?;
                self.db.flush().map_err(StoreError::Db)?;
                Ok(out)
            }
        }
    }

    pub fn list_tokens(&self) -> Result<Vec<TokenRecord>> {
        decode_all("tokens", self.tokens.iter())
    }

    // ---- certificate revocations ----

    pub fn revoke_serial(&self, serial: &str) -> Result<()> {
        self.durable(WriteClass::Revocation, || {
            self.revocations.insert(serial.as_bytes(), &[])?;
            Ok(())
        })
    }

    pub fn is_revoked(&self, serial: &str) -> Result<bool> {
        Ok(self.revocations.contains_key(serial.as_bytes())?)
    }

    pub fn revoked_serials(&self) -> Result<Vec<String>> {
        self.revocations
            .iter()
            .keys()
            .map(|k| {
                let k = k?;
                String::from_utf8(k.to_vec()).map_err(|e| corrupt("revocations", &k, e))
            })
            .collect()
    }

    // ---- fact history ----

    /// A node's recorded fact changes, oldest first.
    pub fn fact_changes(&self, node: &str) -> Result<Vec<FactChange>> {
        Ok(self.journal.fact_changes(node)?)
    }

    // ---- audit log ----

    /// Appends an entry to the append-only audit log, durably.
    pub fn append_audit(&self, entry: &AuditEntry) -> Result<()> {
        self.durable(WriteClass::Audit, || {
            let id = self.db.generate_id()?;
            self.audit.insert(id.to_be_bytes(), encode(entry))?;
            Ok(())
        })
    }

    /// Up to `limit` audit entries, newest first.
    pub fn list_audit(&self, limit: usize) -> Result<Vec<AuditEntry>> {
        decode_all("audit", self.audit.iter().rev().take(limit))
    }

    // ---- operations (rollouts, shutdowns) ----

    /// Writes an operation's state and its new events, durably, in one flush. The driver
    /// calls this BEFORE sending the commands the new state implies (write-ahead).
    pub fn put_operation<T: Serialize>(
        &self,
        id: &str,
        state: &T,
        events: &[OpEvent],
    ) -> Result<()> {
        check_node_name(id)?;
        self.durable(WriteClass::Operation, || {
            for e in events {
                let mut key = events_prefix(id);
                key.extend_from_slice(&self.db.generate_id()?.to_be_bytes());
                self.op_events.insert(key, encode(e))?;
            }
            self.operations.insert(id.as_bytes(), encode(state))?;
            Ok(())
        })
    }

    pub fn get_operation<T: DeserializeOwned>(&self, id: &str) -> Result<Option<T>> {
        self.operations
            .get(id.as_bytes())?
            .map(|v| decode("operations", id.as_bytes(), &v))
            .transpose()
    }

    /// Every stored operation whose id starts with `prefix`, in id order.
    pub fn list_operations<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<T>> {
        decode_all("operations", self.operations.scan_prefix(prefix.as_bytes()))
    }

    /// An operation's event log, oldest first.
    pub fn op_events(&self, id: &str) -> Result<Vec<OpEvent>> {
        decode_all("op_events", self.op_events.scan_prefix(events_prefix(id)))
    }

    /// The latest report's history seq per node (a counter that only grows, across
    /// restarts): what "a fresh report" is measured against.
    pub fn latest_report_seq(&self, node: &str) -> Result<Option<u64>> {
        Ok(self.journal.latest(node).map(|(seq, _)| seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    fn fresh() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        (dir, s)
    }

    /// Opens the database again after the test dropped its `Store`. sled finishes writes on
    /// its own background threads, and its lock is released when the last of them lets go
    /// of the file, which may be a moment after the drop (CI saw the reopen refused on the
    /// lock once). Waits for that, at most 10 s.
    pub(super) fn reopen(path: &Path, segment_max: u64) -> Store {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Store::open_with(path, segment_max) {
                Ok(s) => return s,
                Err(e)
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => panic!("reopening {}: {e}", path.display()),
            }
        }
    }

    fn report(tag: &str) -> Report {
        let mut r = Report {
            schema_version: 1,
            facts: Default::default(),
            findings: vec![],
        };
        r.facts.node.hostname = Some(tag.to_string());
        r
    }

    fn node(name: &str) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            cert_serial: format!("serial-{name}"),
            cert_not_after_ms: 2_000,
            enrolled_ms: 1_000,
            last_seen_ms: None,
            revoked: false,
            agent_version: Some("0.1.0".into()),
            boot_id: None,
            serials: vec![],
            previous_serial: None,
            previous_until_ms: 0,
        }
    }

    fn audit(i: u64) -> AuditEntry {
        AuditEntry {
            time_ms: i,
            actor: "admin".into(),
            action: "test".into(),
            target: format!("t{i}"),
            detail: String::new(),
        }
    }

    #[test]
    fn nodes_roundtrip_sorted() {
        let (_dir, s) = fresh();
        assert_eq!(s.get_node("pve-01").unwrap(), None);
        for n in ["pve-02", "pve-01", "pve-10"] {
            s.upsert_node(&node(n)).unwrap();
        }
        let mut changed = node("pve-01");
        changed.revoked = true;
        s.upsert_node(&changed).unwrap();
        assert_eq!(s.get_node("pve-01").unwrap(), Some(changed));
        let names: Vec<_> = s
            .list_nodes()
            .unwrap()
            .into_iter()
            .map(|n| n.name)
            .collect();
        assert_eq!(names, ["pve-01", "pve-02", "pve-10"]);
        assert!(matches!(
            s.upsert_node(&node("")),
            Err(StoreError::InvalidNodeName(_))
        ));
    }

    #[test]
    fn node_records_from_before_the_serial_history_still_load() {
        let (_dir, s) = fresh();
        let old = br#"{"name":"pve-01","cert_serial":"S0","cert_not_after_ms":5,"enrolled_ms":1,"last_seen_ms":null,"revoked":false,"agent_version":"0.1.0","boot_id":null}"#;
        s.nodes.insert("pve-01", &old[..]).unwrap();
        let rec = s.get_node("pve-01").unwrap().unwrap();
        assert_eq!(rec.all_serials(), ["S0"]);
        assert_eq!(rec.serial_use("S0", 0), Some(SerialUse::Current));
        assert_eq!(rec.serial_use("S1", 0), None);
        s.revoke_node("pve-01").unwrap();
        assert!(s.is_revoked("S0").unwrap());
    }

    #[test]
    fn serials_are_bound_renewed_retired_and_revoked_together() {
        use SerialUse::{Current, Previous};
        let (_dir, s) = fresh();
        let get = |n: &str| s.get_node(n).unwrap().unwrap();
        s.create_token("t1", None, 10_000, 0).unwrap();
        let (_, prev) = s
            .enroll_node("t1", &NodeRecord::new("n", "S1", 9, 1), 1)
            .unwrap();
        assert!(prev.is_none());

        // From the current certificate: S2 current, S1 accepted until the deadline.
        let r = s.renew_node("n", "S1", "S2", 9, 10, 100).unwrap();
        assert_eq!((r.replaced.as_str(), r.revoked.len()), ("S1", 0));
        let rec = get("n");
        assert_eq!(rec.serial_use("S2", 50), Some(Current));
        assert_eq!(rec.serial_use("S1", 99), Some(Previous));
        assert_eq!(rec.serial_use("S1", 100), None);

        // From the previous one again (S2 never used): S2 is revoked, the deadline stays.
        let r = s.renew_node("n", "S1", "S3", 9, 20, 200).unwrap();
        assert_eq!(r.revoked, ["S2"]);
        assert!(s.is_revoked("S2").unwrap());
        let rec = get("n");
        assert_eq!(
            (rec.cert_serial.as_str(), rec.previous_until_ms),
            ("S3", 100)
        );
        assert!(matches!(
            s.renew_node("n", "S2", "S4", 9, 30, 300),
            Err(SerialError::NotCurrent { .. })
        ));
        assert!(matches!(
            s.renew_node("n", "S1", "S4", 9, 100, 300),
            Err(SerialError::NotCurrent { .. })
        ));
        assert_eq!(
            get("n").cert_serial,
            "S3",
            "a refused renewal changes nothing"
        );

        // The first use of S3 retires S1; a second use has nothing left to retire.
        assert_eq!(s.retire_previous("n", "S1").unwrap(), None);
        assert_eq!(s.retire_previous("n", "S3").unwrap(), Some("S1".into()));
        assert!(s.is_revoked("S1").unwrap());
        assert_eq!(s.retire_previous("n", "S3").unwrap(), None);
        assert_eq!(get("n").serial_use("S1", 50), None);

        // Revocation takes every serial the node ever had.
        s.record_hello("n", "1.0", "boot").unwrap();
        let revoked = s.revoke_node("n").unwrap();
        assert_eq!(revoked.all_serials(), ["S1", "S2", "S3"]);
        assert!(s.is_revoked("S3").unwrap());
        assert!(matches!(
            s.renew_node("n", "S3", "S4", 9, 40, 400),
            Err(SerialError::Revoked(_))
        ));
        assert!(matches!(
            s.record_hello("n", "1.0", "boot2"),
            Err(SerialError::Revoked(_))
        ));
        assert!(matches!(
            s.revoke_node("ghost"),
            Err(SerialError::NotEnrolled(_))
        ));

        // A token bound to no node cannot replace an enrolled node, revoked or not: the
        // token stays unused, the record unchanged.
        let before = get("n");
        let t2 = s.create_token("t2", None, 10_000, 0).unwrap();
        assert!(matches!(
            s.enroll_node("t2", &NodeRecord::new("n", "S5", 9, 50), 50),
            Err(TokenError::NodeEnrolled(_))
        ));
        assert_eq!(get("n"), before);
        assert!(s.list_tokens().unwrap().contains(&t2));
        assert!(!s.is_revoked("S5").unwrap());

        // A token bound to the node replaces it; the history keeps every serial.
        s.create_token("t3", Some("n"), 10_000, 0).unwrap();
        let (tok, prev) = s
            .enroll_node("t3", &NodeRecord::new("n", "S5", 9, 60), 60)
            .unwrap();
        assert_eq!(tok.used_ms, Some(60));
        assert_eq!(prev.unwrap().cert_serial, "S3");
        let rec = get("n");
        assert!(!rec.revoked);
        assert_eq!(rec.all_serials(), ["S1", "S2", "S3", "S5"]);
        assert_eq!(rec.serial_use("S5", 60), Some(Current));
        assert_eq!(rec.agent_version, None);
        // The unbound token still enrolls a name not yet enrolled.
        assert!(s
            .enroll_node("t2", &NodeRecord::new("m", "S6", 9, 70), 70)
            .is_ok());
    }

    #[test]
    fn an_enrolled_node_is_replaced_with_its_previous_serials_revoked() {
        let (_dir, s) = fresh();
        s.create_token("a", Some("n"), 10_000, 0).unwrap();
        s.create_token("b", Some("n"), 10_000, 0).unwrap();
        s.enroll_node("a", &NodeRecord::new("n", "S1", 9, 1), 1)
            .unwrap();
        s.renew_node("n", "S1", "S2", 9, 2, 100).unwrap();
        s.enroll_node("b", &NodeRecord::new("n", "S3", 9, 3), 3)
            .unwrap();
        assert!(s.is_revoked("S1").unwrap() && s.is_revoked("S2").unwrap());
        assert!(!s.is_revoked("S3").unwrap());
        let rec = s.get_node("n").unwrap().unwrap();
        assert_eq!(rec.previous_serial, None);
        assert_eq!(rec.serial_use("S1", 4), None);
    }

    #[test]
    fn reports_latest_history_and_last_seen() {
        let (_dir, s) = fresh();
        assert!(matches!(
            s.put_report("ghost", 1, &report("x")),
            Err(StoreError::UnknownNode(_))
        ));
        s.upsert_node(&node("pve-1")).unwrap();
        s.upsert_node(&node("pve-10")).unwrap(); // "pve-1" is a prefix of "pve-10"
        let a = s.put_report("pve-1", 100, &report("a")).unwrap();
        let b = s.put_report("pve-1", 200, &report("b")).unwrap();
        s.put_report("pve-10", 300, &report("c")).unwrap();
        assert!(b > a);
        assert_eq!(s.latest_report("pve-1").unwrap(), Some((200, report("b"))));
        assert_eq!(s.latest_report("nobody").unwrap(), None);
        assert_eq!(
            s.report_history("pve-1").unwrap(),
            vec![(a, 100, report("a")), (b, 200, report("b"))]
        );
        assert_eq!(s.report_history("pve-10").unwrap().len(), 1);
        assert_eq!(
            s.get_node("pve-1").unwrap().unwrap().last_seen_ms,
            Some(200)
        );
    }

    #[test]
    fn history_is_bounded() {
        let (_dir, s) = fresh();
        s.upsert_node(&node("n")).unwrap();
        let seqs: Vec<u64> = (0..HISTORY_PER_NODE as u64 + 20)
            .map(|i| s.put_report("n", i, &report(&i.to_string())).unwrap())
            .collect();
        let hist = s.report_history("n").unwrap();
        assert_eq!(hist.len(), HISTORY_PER_NODE);
        let kept: Vec<u64> = hist.iter().map(|h| h.0).collect();
        assert_eq!(kept, seqs[20..]);
        assert_eq!(hist.last().unwrap().1, HISTORY_PER_NODE as u64 + 19);
    }

    #[test]
    fn token_lifecycle_and_no_plaintext_on_disk() {
        let (dir, s) = fresh();
        let secret = "fwtok-SECRET-plaintext-4f1c9a";
        let t = s.create_token(secret, None, 10_000, 1_000).unwrap();
        assert_eq!(t.sha256, sha256_hex(secret));
        assert_eq!(t.id, &t.sha256[..12]);
        assert!(matches!(
            s.create_token(secret, None, 10_000, 1_000),
            Err(StoreError::DuplicateToken(_))
        ));
        assert!(matches!(
            s.consume_token("nope", "n1", 2_000),
            Err(TokenError::Unknown)
        ));
        let used = s.consume_token(secret, "n1", 2_000).unwrap();
        assert_eq!(used.used_ms, Some(2_000));
        assert!(matches!(
            s.consume_token(secret, "n1", 2_001),
            Err(TokenError::AlreadyUsed)
        ));

        s.create_token("expiring", None, 5_000, 1_000).unwrap();
        assert!(matches!(
            s.consume_token("expiring", "n1", 5_000),
            Err(TokenError::Expired)
        ));

        s.create_token("bound", Some("n2"), 10_000, 1_000).unwrap();
        assert!(matches!(
            s.consume_token("bound", "n1", 2_000),
            Err(TokenError::WrongNode)
        ));
        assert!(s.consume_token("bound", "n2", 2_000).is_ok());

        let r = s.create_token("revoked", None, 10_000, 1_000).unwrap();
        assert!(s.revoke_token(&r.id).unwrap().revoked);
        assert!(matches!(
            s.revoke_token("000000000000"),
            Err(StoreError::UnknownToken(_))
        ));
        assert!(matches!(
            s.consume_token("revoked", "n1", 2_000),
            Err(TokenError::Revoked)
        ));

        let list = s.list_tokens().unwrap();
        assert_eq!(list.len(), 4);
        assert!(list.iter().any(|t| t.id == r.id && t.revoked));

        s.flush().unwrap();
        drop(s);
        // The scan must see the stored records (sled does not compress by default): the
        // hash is on disk, the plaintext is not.
        let (mut has_hash, mut stack) = (false, vec![dir.path().to_path_buf()]);
        let contains =
            |hay: &[u8], needle: &str| hay.windows(needle.len()).any(|w| w == needle.as_bytes());
        while let Some(p) = stack.pop() {
            for e in std::fs::read_dir(&p).unwrap() {
                let path = e.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    let bytes = std::fs::read(&path).unwrap();
                    assert!(!contains(&bytes, secret), "plaintext in {path:?}");
                    has_hash |= contains(&bytes, &t.sha256);
                }
            }
        }
        assert!(
            has_hash,
            "token hash not found on disk: the scan saw nothing"
        );
    }

    #[test]
    fn revocations_and_audit() {
        let (_dir, s) = fresh();
        assert!(!s.is_revoked("AB").unwrap());
        s.revoke_serial("CD").unwrap();
        s.revoke_serial("AB").unwrap();
        s.revoke_serial("AB").unwrap();
        assert!(s.is_revoked("AB").unwrap());
        assert_eq!(s.revoked_serials().unwrap(), ["AB", "CD"]);
        for i in 0..5 {
            s.append_audit(&audit(i)).unwrap();
        }
        let newest: Vec<u64> = s.list_audit(3).unwrap().iter().map(|e| e.time_ms).collect();
        assert_eq!(newest, [4, 3, 2]);
        assert_eq!(s.list_audit(100).unwrap().len(), 5);
    }

    #[test]
    fn reopen_keeps_everything_and_lock_error_is_clear() {
        let (dir, s) = fresh();
        s.upsert_node(&node("n")).unwrap();
        let seq = s.put_report("n", 7, &report("r")).unwrap();
        let tok = s.create_token("tok", Some("n"), 100, 1).unwrap();
        s.revoke_serial("S1").unwrap();
        s.append_audit(&audit(9)).unwrap();
        let err = Store::open(dir.path())
            .err()
            .expect("second open must fail on the lock");
        assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
        assert!(
            err.to_string().contains("is another fleetward running?"),
            "{err}"
        );
        drop(s);
        let s = reopen(dir.path(), blobs::SEGMENT_MAX);
        assert_eq!(s.get_node("n").unwrap().unwrap().last_seen_ms, Some(7));
        assert_eq!(s.latest_report("n").unwrap(), Some((7, report("r"))));
        assert_eq!(s.report_history("n").unwrap(), vec![(seq, 7, report("r"))]);
        assert_eq!(s.list_tokens().unwrap(), vec![tok]);
        assert!(s.is_revoked("S1").unwrap());
        assert_eq!(s.list_audit(10).unwrap(), vec![audit(9)]);
        // New ids keep increasing across a reopen.
        assert!(s.put_report("n", 8, &report("r2")).unwrap() > seq);
    }

    #[test]
    fn report_bodies_live_in_segments_that_are_freed_and_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let seg_dir = dir.path().join(REPORTS_DIR);
        let segs = || std::fs::read_dir(&seg_dir).unwrap().count();
        // Tiny segments: every batch seals one.
        let s = Store::open_with(dir.path(), 1).unwrap();
        for n in ["busy", "idle"] {
            s.upsert_node(&node(n)).unwrap();
        }
        let json = |t: &str| report_json_bytes(&report(t));
        let (i, b0, b1, b2) = (json("idle-1"), json("b0"), json("b1"), json("b2"));
        let w = |node, json| ReportWrite {
            node,
            received_ms: 1,
            json,
            changes: &[],
        };
        // The first segment: idle's only report and three of busy's.
        let first = s
            .put_reports(&[
                w("idle", &i),
                w("busy", &b0),
                w("busy", &b1),
                w("busy", &b2),
            ])
            .unwrap();
        for k in 0..HISTORY_PER_NODE as u64 + 5 {
            s.put_report("busy", 10 + k, &report(&format!("n{k}")))
                .unwrap();
        }
        // busy's pruned bodies freed whole segments, which wait for the sweep; live are
        // busy's 50 (the newest is the current segment) and the first, only a quarter live
        // (idle's body). A compaction moves that body and deletes every unused segment.
        assert_eq!(segs(), HISTORY_PER_NODE + 6);
        let oldest = || {
            let mut v: Vec<_> = std::fs::read_dir(&seg_dir)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            v.sort();
            v[0].clone()
        };
        let first_segment = oldest();
        s.compact().unwrap();
        // (The moved body went to a new segment: with 1-byte segments every write rolls.)
        assert_eq!(segs(), HISTORY_PER_NODE + 1);
        assert_ne!(oldest(), first_segment, "the first segment is gone");
        assert_eq!(s.report_history("busy").unwrap().len(), HISTORY_PER_NODE);
        assert_eq!(
            s.latest_report("idle").unwrap().unwrap().1,
            report("idle-1")
        );
        assert_eq!(s.latest_report_seq("idle").unwrap(), Some(first[0]));
        drop(s);
        // Reopen: everything still reads, and nothing unused is left on disk.
        let s = reopen(dir.path(), 1);
        assert_eq!(
            s.latest_report("idle").unwrap().unwrap().1,
            report("idle-1")
        );
        assert_eq!(s.report_history("busy").unwrap().len(), HISTORY_PER_NODE);
        assert_eq!(segs(), HISTORY_PER_NODE + 1);
    }

    #[test]
    fn operations_and_their_events_roundtrip() {
        let (dir, s) = fresh();
        let ev = |t: u64| OpEvent {
            time_ms: t,
            event: serde_json::json!({ "event": "x", "t": t }),
        };
        s.put_operation("rollout-1", &vec![1u32], &[ev(1), ev(2)])
            .unwrap();
        s.put_operation("rollout-1", &vec![1u32, 2], &[ev(3)])
            .unwrap();
        s.put_operation("shutdown-1", &vec![9u32], &[]).unwrap();
        drop(s);
        let s = reopen(dir.path(), blobs::SEGMENT_MAX);
        assert_eq!(
            s.get_operation::<Vec<u32>>("rollout-1").unwrap(),
            Some(vec![1, 2])
        );
        assert_eq!(
            s.list_operations::<Vec<u32>>("rollout-").unwrap(),
            vec![vec![1, 2]]
        );
        let times: Vec<u64> = s
            .op_events("rollout-1")
            .unwrap()
            .iter()
            .map(|e| e.time_ms)
            .collect();
        assert_eq!(times, [1, 2, 3]);
        assert!(s.op_events("rollout-").unwrap().is_empty());
    }

    #[test]
    fn corrupt_values_are_errors_not_panics() {
        let (_dir, s) = fresh();
        s.upsert_node(&node("n")).unwrap();
        s.nodes.insert("bad", &b"{not json"[..]).unwrap();
        s.tokens.insert(&sha256_hex("t")[..12], &b"[]"[..]).unwrap();
        s.audit
            .insert(u64::MAX.to_be_bytes(), &b"\xff"[..])
            .unwrap();
        let is_corrupt =
            |e: StoreError, t: &str| matches!(e, StoreError::Corrupt { tree, .. } if tree == t);
        assert!(is_corrupt(s.get_node("bad").unwrap_err(), "nodes"));
        assert!(is_corrupt(s.list_nodes().unwrap_err(), "nodes"));
        assert!(is_corrupt(s.list_tokens().unwrap_err(), "tokens"));
        assert!(is_corrupt(s.list_audit(1).unwrap_err(), "audit"));
        assert!(matches!(
            s.consume_token("t", "n", 0),
            Err(TokenError::Store(StoreError::Corrupt { .. }))
        ));
        let msg = s.get_node("bad").unwrap_err().to_string();
        assert!(
            msg.contains("tree 'nodes'") && msg.contains("key 'bad'"),
            "{msg}"
        );
    }

    const CHILD_ENV: &str = "FW_STORE_CHILD";

    /// Not a test on its own: the writer half of `acked_writes_survive_sigkill`. Writes
    /// until killed, printing a line after each acknowledged write.
    #[test]
    fn crash_child_writer() {
        let Some(dir) = std::env::var_os(CHILD_ENV) else {
            return;
        };
        let round: u64 = std::env::var("FW_STORE_ROUND").unwrap().parse().unwrap();
        let s = Store::open(dir).unwrap();
        for i in round * 1_000_000..(round + 1) * 1_000_000 {
            let name = format!("r{round}n{}", i % 40);
            if i % 1_000_000 < 40 {
                s.upsert_node(&node(&name)).unwrap();
            }
            let seq = s.put_report(&name, i, &report(&i.to_string())).unwrap();
            println!("acked {name} {seq} {i}");
            s.append_audit(&audit(i)).unwrap();
            println!("audit {i}");
        }
    }

    /// Runs the writer child in `dir`, SIGKILLs it after `kill_after` acked reports,
    /// then checks every acknowledged write is there. Returns the highest acked seq.
    fn crash_round(dir: &Path, round: u64, kill_after: usize) -> u64 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "store::tests::crash_child_writer", "--nocapture"])
            .env(CHILD_ENV, dir)
            .env("FW_STORE_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (mut acked, mut audited) = (Vec::new(), Vec::new());
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            match line.split(' ').collect::<Vec<_>>()[..] {
                ["acked", name, seq, i] => {
                    acked.push((name.to_string(), seq.parse().unwrap(), i.parse().unwrap()))
                }
                ["audit", i] => audited.push(i.parse::<u64>().unwrap()),
                _ => {}
            }
            if acked.len() >= kill_after {
                child.kill().unwrap(); // SIGKILL on Unix
                break;
            }
        }
        child.wait().unwrap();
        assert_eq!(acked.len(), kill_after, "child died early");

        let s = Store::open(dir).unwrap();
        for (name, seq, i) in &acked {
            let hist = s.report_history(name).unwrap();
            assert!(
                hist.contains(&(*seq, *i, report(&i.to_string()))),
                "acked report {name} seq {seq} lost"
            );
            assert!(s.latest_report(name).unwrap().unwrap().0 >= *i);
            assert!(s.get_node(name).unwrap().unwrap().last_seen_ms >= Some(*i));
        }
        let stored: HashSet<u64> = s
            .list_audit(usize::MAX)
            .unwrap()
            .iter()
            .map(|e| e.time_ms)
            .collect();
        assert!(
            audited.iter().all(|i| stored.contains(i)),
            "acked audit entry lost"
        );
        acked.iter().map(|a| a.1).max().unwrap()
    }

    #[test]
    fn acked_writes_survive_sigkill() {
        let dir = tempfile::tempdir().unwrap();
        // Two kill points: where sled happens to write its buffers out is timing-dependent,
        // so one point alone can pass even without the flush (observed at 300).
        let max_seq = crash_round(dir.path(), 0, 300);
        let max_seq_2 = crash_round(dir.path(), 1, 37);
        // Ids from generate_id() never repeat after a crash (sled skips ahead on recovery).
        assert!(max_seq_2 > max_seq);
        let s = Store::open(dir.path()).unwrap();
        s.upsert_node(&node("after")).unwrap();
        assert!(s.put_report("after", 0, &report("after")).unwrap() > max_seq_2);
    }
}
