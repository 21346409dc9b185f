//! Real durability for sled's part of the store.
//!
//! sled 0.34's `flush` writes its log with `sync_file_range` (Linux), which neither
//! flushes the drive's write cache nor syncs file metadata (a grown file's size), and it
//! writes values larger than a quarter of a segment as separate files under `blobs/`
//! without syncing them at all. [`SledFiles::sync`] completes it after sled's flush:
//! `fdatasync` of the log file (`db`), `fdatasync` of every blob file not synced before and
//! of the `blobs/` directory, then `fsync` of the database directory (new files, renamed
//! snapshots). [`Store::durable`](super::Store::durable) is the one path every acknowledged
//! write goes through: write, flush, sync, tell the observer, return.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, RwLock};

/// What an acknowledged write holds: the classes of security state and orchestration that
/// must be on disk before the reply. Each [`Store::durable`](super::Store::durable) call names
/// one; the sync observer receives it after the sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WriteClass {
    /// An enrollment (token use, node record, revocation of a replaced node's serials).
    Enrollment,
    /// A join token created or revoked, or used on its own.
    Token,
    /// A node's certificates: renewal, retirement of the replaced serial, node revocation.
    NodeCertificate,
    /// A node record written whole (tests, tools).
    Node,
    /// A certificate serial revoked.
    Revocation,
    /// An operator identity issued, renewed or revoked (the operator registry).
    Operator,
    /// An audit log entry.
    Audit,
    /// An orchestration's state and events (the write-ahead journal of rollouts and
    /// shutdowns).
    Operation,
}

/// Called after each durable write's sync, before the write returns (tests record the
/// order of syncs and replies with it).
pub type SyncObserver = Arc<dyn Fn(WriteClass) + Send + Sync>;

/// The files sled writes in the database directory, synced for real.
pub(super) struct SledFiles {
    dir: PathBuf,
    log: File,
    /// Blob files already synced (pruned to the files present at each sync).
    blobs_synced: Mutex<HashSet<OsString>>,
    observer: RwLock<Option<SyncObserver>>,
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("syncing {}: {e}", path.display()))
}

fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(at(path))
}

impl SledFiles {
    /// After sled opened `dir`: syncs what opening may have created (the directory itself
    /// in its parent, `conf`, the log) once, and keeps the log open for later syncs.
    pub(super) fn open(dir: &Path) -> io::Result<SledFiles> {
        let log_path = dir.join("db");
        let log = File::open(&log_path).map_err(at(&log_path))?;
        log.sync_all().map_err(at(&log_path))?;
        let conf = dir.join("conf");
        if conf.exists() {
            File::open(&conf)
                .and_then(|f| f.sync_all())
                .map_err(at(&conf))?;
        }
        sync_dir(dir)?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        let files = SledFiles {
            dir: dir.to_path_buf(),
            log,
            blobs_synced: Mutex::new(HashSet::new()),
            observer: RwLock::new(None),
        };
        files.sync_blobs()?;
        Ok(files)
    }

    /// Makes what sled has flushed durable (see the module doc).
    pub(super) fn sync(&self) -> io::Result<()> {
        self.log.sync_data().map_err(at(&self.dir.join("db")))?;
        self.sync_blobs()?;
        sync_dir(&self.dir)
    }

    fn sync_blobs(&self) -> io::Result<()> {
        let blobs = self.dir.join("blobs");
        let entries = match std::fs::read_dir(&blobs) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(at(&blobs)(e)),
        };
        let mut synced = self
            .blobs_synced
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut present = HashSet::new();
        let mut new = false;
        for entry in entries {
            let name = entry.map_err(at(&blobs))?.file_name();
            if !synced.contains(&name) {
                let path = blobs.join(&name);
                match File::open(&path) {
                    Ok(f) => f.sync_data().map_err(at(&path))?,
                    // Collected by sled meanwhile: nothing to keep.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(at(&path)(e)),
                }
                new = true;
            }
            present.insert(name);
        }
        if new {
            sync_dir(&blobs)?;
        }
        *synced = present;
        Ok(())
    }

    pub(super) fn observe(&self, observer: Option<SyncObserver>) {
        *self
            .observer
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = observer;
    }

    pub(super) fn synced(&self, class: WriteClass) {
        let observer = self
            .observer
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        if let Some(observer) = observer {
            observer(class);
        }
    }
}

/// Group commit: a sync serves every write made before it started. Each caller takes a
/// ticket after its write; a caller whose ticket a finished sync already covers returns at
/// once, one caller at a time runs the sync for every ticket taken so far, and the others
/// wait for it (and run the next one if it failed). So N concurrent durable writes cost
/// about two syncs, not N, and none returns before a sync that started after its write.
#[derive(Default)]
pub(super) struct GroupCommit {
    state: Mutex<Tickets>,
    done: Condvar,
}

#[derive(Default)]
struct Tickets {
    /// The last ticket handed out.
    taken: u64,
    /// Every ticket up to this one is durable.
    synced: u64,
    /// A sync is running.
    syncing: bool,
}

impl GroupCommit {
    /// Returns once a sync that started after this call (so after the caller's write) has
    /// succeeded; `sync` is the sync itself, run by at most one caller at a time.
    pub(super) fn sync<E>(&self, sync: impl Fn() -> Result<(), E>) -> Result<(), E> {
        let lock = || self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut t = lock();
        t.taken += 1;
        let ticket = t.taken;
        loop {
            if t.synced >= ticket {
                return Ok(());
            }
            if !t.syncing {
                t.syncing = true;
                let upto = t.taken;
                drop(t);
                let result = sync();
                let mut t = lock();
                t.syncing = false;
                if result.is_ok() {
                    t.synced = t.synced.max(upto);
                }
                self.done.notify_all();
                return result;
            }
            t = self.done.wait(t).unwrap_or_else(|p| p.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{AuditEntry, NodeRecord, OpEvent, Store, TokenError};
    use super::WriteClass::{self, *};
    use std::sync::{Arc, Mutex};

    /// Each store write, called between two marks in one log with the observer's syncs:
    /// the syncs between the marks are the write's classes, so each was synced before the
    /// call returned (the caller's acknowledgement comes after the return).
    #[test]
    fn every_write_class_is_synced_before_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let log: Arc<Mutex<Vec<Option<WriteClass>>>> = Arc::default();
        let rec = log.clone();
        s.observe_syncs(Some(Arc::new(move |c| rec.lock().unwrap().push(Some(c)))));
        let call = |want: &[WriteClass], f: &dyn Fn()| {
            log.lock().unwrap().clear();
            f();
            let got: Vec<WriteClass> = log.lock().unwrap().drain(..).flatten().collect();
            assert_eq!(got, want);
        };
        let audit = AuditEntry {
            time_ms: 1,
            actor: "admin".into(),
            action: "x".into(),
            target: "y".into(),
            detail: String::new(),
        };
        call(&[Token], &|| {
            s.create_token("t1", Some("n"), 100, 0).unwrap();
        });
        call(&[Token], &|| {
            s.create_token("t2", None, 100, 0).unwrap();
        });
        call(&[Enrollment], &|| {
            s.enroll_node("t1", &NodeRecord::new("n", "S1", 9, 1), 1)
                .unwrap();
        });
        // Refused: nothing changed, nothing synced.
        call(&[], &|| {
            assert!(matches!(
                s.enroll_node("t1", &NodeRecord::new("n", "S9", 9, 1), 1),
                Err(TokenError::AlreadyUsed)
            ));
        });
        call(&[Token], &|| {
            s.consume_token("t2", "m", 2).unwrap();
        });
        call(&[Token], &|| {
            s.revoke_token(&super::super::sha256_hex("t2")[..12])
                .unwrap();
        });
        call(&[NodeCertificate], &|| {
            s.renew_node("n", "S1", "S2", 9, 2, 100).unwrap();
        });
        call(&[NodeCertificate], &|| {
            s.retire_previous("n", "S2").unwrap();
        });
        call(&[NodeCertificate], &|| {
            s.revoke_node("n").unwrap();
        });
        call(&[Revocation], &|| s.revoke_serial("S7").unwrap());
        call(&[Audit], &|| s.append_audit(&audit).unwrap());
        call(&[Operation], &|| {
            s.put_operation("rollout-1", &1u32, &[]).unwrap();
        });
        call(&[Node], &|| {
            s.upsert_node(&NodeRecord::new("m", "S3", 9, 1)).unwrap();
        });
        // The hello is flushed, not synced (see `Store::record_hello`).
        call(&[], &|| {
            s.record_hello("m", "1.0", "boot").unwrap();
        });
    }

    /// A value above sled's blob threshold is a file of its own, which sled never syncs:
    /// the durable path syncs it (and remembers it) before returning.
    #[test]
    fn blob_files_are_synced() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let big = OpEvent {
            time_ms: 1,
            event: serde_json::Value::String("x".repeat(600 * 1024)),
        };
        s.put_operation("rollout-big", &1u32, &[big]).unwrap();
        let blobs: Vec<_> = std::fs::read_dir(dir.path().join("blobs"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(!blobs.is_empty(), "no blob file: the value was inlined");
        let synced = s.files.blobs_synced.lock().unwrap();
        assert!(blobs.iter().all(|b| synced.contains(b)), "{blobs:?}");
    }
}

#[cfg(test)]
mod concurrent_tests {
    use super::super::{AuditEntry, Store};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    /// Concurrent durable writers: each is synced (the observer sees every write once)
    /// and everything is there after a reopen.
    #[test]
    fn concurrent_writers_are_each_synced() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(Store::open(dir.path()).unwrap());
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        s.observe_syncs(Some(Arc::new(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
        })));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        s.append_audit(&AuditEntry {
                            time_ms: t * 100 + i,
                            actor: "a".into(),
                            action: "x".into(),
                            target: String::new(),
                            detail: String::new(),
                        })
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(seen.load(Ordering::SeqCst), 200);
        drop(s);
        let s = crate::store::tests::reopen(dir.path(), crate::store::blobs::SEGMENT_MAX);
        assert_eq!(s.list_audit(1000).unwrap().len(), 200);
    }

    /// Writers on many threads, each a write (a number appended to `written`) then a
    /// group sync: every writer returns only after a sync whose start saw its write, and
    /// a failed sync is retried by a waiter, never counted as done.
    #[test]
    fn group_commit_covers_every_write_and_shares_syncs() {
        use super::super::durable::GroupCommit;
        let group = Arc::new(GroupCommit::default());
        let written = Arc::new(Mutex::new(Vec::<usize>::new()));
        let synced = Arc::new(Mutex::new(Vec::<usize>::new()));
        let syncs = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..32)
            .map(|i| {
                let (group, written, synced, syncs) = (
                    group.clone(),
                    written.clone(),
                    synced.clone(),
                    syncs.clone(),
                );
                std::thread::spawn(move || {
                    written.lock().unwrap().push(i);
                    let r = group.sync(|| {
                        let n = syncs.fetch_add(1, Ordering::SeqCst);
                        let seen = written.lock().unwrap().clone();
                        std::thread::sleep(std::time::Duration::from_millis(5));
                        if n == 1 {
                            return Err("disk said no");
                        }
                        synced.lock().unwrap().extend(seen);
                        Ok(())
                    });
                    // The failed sync's own caller gets its error; nobody else does.
                    if r.is_err() {
                        return false;
                    }
                    assert!(
                        synced.lock().unwrap().contains(&i),
                        "writer {i} returned unsynced"
                    );
                    true
                })
            })
            .collect();
        let ok = threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .filter(|ok| *ok)
            .count();
        assert_eq!(ok, 31, "exactly the failed sync's caller sees the failure");
        let n = syncs.load(Ordering::SeqCst);
        assert!(n < 32, "32 concurrent writers ran {n} syncs");
    }
}
