//! The executor boundary: every action that changes the node goes through here.
//!
//! An [`Action`] (maintenance mode, APT, boot refresh, Ceph flags, HA arm/disarm, guest
//! stop/start/migrate, reboot, power-off) travels in an [`ActionRequest`] whose `id` is the
//! controller's idempotency key (`operation/node/step/attempt`). One trait, [`Executor`], has
//! two implementations that see exactly the same requests:
//!
//! - [`real::RealExecutor`] maps each action to one exact command line and runs it through a
//!   [`crate::runner::CommandRunner`] ([`crate::runner::SystemRunner`] in production:
//!   timeout, streamed output, process group killed on timeout). Tests pin every command line
//!   with [`crate::runner::testing::RecordingRunner`] and never run one for real.
//! - [`simulated::SimulatedExecutor`] changes a fixture root the way the real action would
//!   change the node, and appends every action to a JSON-lines action log.
//!
//! [`Once`] wraps either one and executes each id at most once, remembering outcomes in a
//! JSON file (`actions.json` in the agent's state directory).
//!
//! **Invariant:** nothing else in the agent starts a process that changes the node.

pub mod real;
pub mod simulated;
pub mod unit;

pub use crate::runner::{tail, OutputTail, OUTPUT_MAX};

pub use crate::parse::apt_sim::Simulation;
pub use fleetward_proto::action::{
    valid_node_name, Action, ActionRequest, GuestKind, GUEST_STOP_MARGIN,
};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// How much output [`Once`] keeps per remembered outcome.
pub const STORED_OUTPUT_MAX: usize = 4 * 1024;
/// How many outcomes [`Once`] remembers (oldest dropped first).
pub const OUTCOMES_MAX: usize = 1000;
/// File name of [`Once`]'s store in the agent's state directory.
pub const OUTCOMES_FILE: &str = "actions.json";

/// Errors of the executor's own bookkeeping (the actions themselves report failure in
/// [`ActionOutcome`], never as an error).
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
}

/// What an action did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionOutcome {
    pub id: String,
    pub ok: bool,
    /// The tail of the merged stdout/stderr (at most [`OUTPUT_MAX`] bytes).
    pub output: String,
    /// `None`: no exit status (refused, not started, killed on timeout or by a signal).
    /// The simulated executor gives `Some(0)` or `Some(1)`.
    pub exit_code: Option<i32>,
    /// The node is rebooting: the session should drop its connection and reconnect later.
    #[serde(default)]
    pub reboot: bool,
    /// The node is powering off: the session should say goodbye and stop.
    #[serde(default)]
    pub power_off: bool,
    /// Returned by [`Once`] from its record; the action was not executed again.
    #[serde(default)]
    pub replayed: bool,
    /// The action passed its timeout and still runs (in its own unit, left alone, never
    /// signalled): not an outcome [`Once`] records, so a re-sent request looks again.
    #[serde(default)]
    pub still_running: bool,
    /// After `ceph osd set/unset noout`: the OSD map as a read-only probe read it afterwards
    /// (the flag and the OSDs up/in); `None` for other actions, or when the probe could not
    /// tell.
    #[serde(default)]
    pub ceph: Option<crate::parse::ceph::OsdMap>,
}

impl ActionOutcome {
    pub fn new(id: &str, ok: bool, output: impl Into<String>, exit_code: Option<i32>) -> Self {
        ActionOutcome {
            id: id.to_owned(),
            ok,
            output: tail(output.into(), OUTPUT_MAX),
            exit_code,
            reboot: false,
            power_off: false,
            replayed: false,
            still_running: false,
            ceph: None,
        }
    }

    /// A failure before anything ran.
    pub fn refused(id: &str, reason: impl Into<String>) -> Self {
        Self::new(id, false, reason, None)
    }
}

/// The one trait every node-changing action goes through. Synchronous: the session calls
/// it on a blocking thread. Output lines are passed to `out` as they appear (to be streamed
/// to the controller); the outcome carries the tail. Never panics on any request.
pub trait Executor: Send + Sync {
    fn execute(&self, req: &ActionRequest, out: &mut dyn FnMut(&str)) -> ActionOutcome;

    /// What the next `apt-dist-upgrade` would do, asked read-only (the real executor runs
    /// `apt-get -s dist-upgrade`; the simulated one answers from its fixture world). `None`:
    /// this executor does not ask (observe-only: it starts no process). `Err`: apt failed.
    fn simulate_upgrade(&self) -> Option<Result<Simulation, String>> {
        None
    }

    /// Finds the outcome of `req`, started before the agent restarted and never recorded
    /// (the real executor asks systemd about the action's unit, waiting while it still
    /// runs, bounded by the action's timeout). `None`: this executor cannot tell.
    fn recover(&self, _req: &ActionRequest, _out: &mut dyn FnMut(&str)) -> Option<ActionOutcome> {
        None
    }
}

impl<E: Executor + ?Sized> Executor for Box<E> {
    fn execute(&self, req: &ActionRequest, out: &mut dyn FnMut(&str)) -> ActionOutcome {
        (**self).execute(req, out)
    }
    fn simulate_upgrade(&self) -> Option<Result<Simulation, String>> {
        (**self).simulate_upgrade()
    }
    fn recover(&self, req: &ActionRequest, out: &mut dyn FnMut(&str)) -> Option<ActionOutcome> {
        (**self).recover(req, out)
    }
}

impl<E: Executor + ?Sized> Executor for Arc<E> {
    fn execute(&self, req: &ActionRequest, out: &mut dyn FnMut(&str)) -> ActionOutcome {
        (**self).execute(req, out)
    }
    fn simulate_upgrade(&self) -> Option<Result<Simulation, String>> {
        (**self).simulate_upgrade()
    }
    fn recover(&self, req: &ActionRequest, out: &mut dyn FnMut(&str)) -> Option<ActionOutcome> {
        (**self).recover(req, out)
    }
}

/// The executor of an observe-only agent: it refuses every action with `reason` and starts
/// nothing. An agent runs it whenever what it inspects is not the machine it runs on (`--root
/// DIR` without `--simulate`), or when asked to only observe (`--observe-only`).
#[derive(Debug, Clone)]
pub struct ObserveOnly {
    reason: String,
}

impl ObserveOnly {
    pub fn new(reason: impl Into<String>) -> Self {
        ObserveOnly {
            reason: reason.into(),
        }
    }

    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl Executor for ObserveOnly {
    fn execute(&self, req: &ActionRequest, _out: &mut dyn FnMut(&str)) -> ActionOutcome {
        ActionOutcome::refused(
            &req.id,
            format!("refusing {}: {}", req.action.name(), self.reason),
        )
    }
}

/// One remembered request: the action, and its outcome once it finished. An entry without
/// an outcome was started and never finished (the agent died or the node rebooted).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    id: String,
    action: Action,
    outcome: Option<ActionOutcome>,
}

/// At-most-once execution: wraps an [`Executor`] and remembers each request id with its
/// outcome in a JSON file (the last [`OUTCOMES_MAX`], written atomically). A request whose
/// id was seen before is not executed again; its recorded outcome comes back with
/// `replayed: true`.
///
/// The id is written **before** the action runs. If the agent dies during the action, the
/// id is remembered without an outcome, and a re-sent request gets a failed outcome saying
/// the result is unknown (the controller decides from fresh facts) — except `reboot` and
/// `power-off`, whose interruption is the expected result. If the id cannot be written
/// first, the action is refused.
///
/// This is a separate store from the session's `commands.json` (`session::state::
/// SeenCommands`): that one remembers ids only, while a re-sent step of a rollout needs the
/// step's real result (ok, exit code, output), and needs to tell "finished" from "started,
/// outcome unknown".
pub struct Once<E> {
    inner: E,
    store: Mutex<Store>,
}

struct Store {
    path: PathBuf,
    max: usize,
    entries: VecDeque<Entry>,
}

impl Store {
    fn load(path: PathBuf, max: usize) -> Result<Self, ExecutorError> {
        let entries: VecDeque<Entry> = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ExecutorError::Format {
                path: path.clone(),
                message: e.to_string(),
            })?,
            Err(e) if e.kind() == ErrorKind::NotFound => VecDeque::new(),
            Err(source) => return Err(ExecutorError::Io { path, source }),
        };
        let mut store = Store { path, max, entries };
        store.trim();
        Ok(store)
    }

    fn trim(&mut self) {
        while self.entries.len() > self.max {
            self.entries.pop_front();
        }
    }

    fn get(&self, id: &str) -> Option<&Entry> {
        self.entries.iter().rev().find(|e| e.id == id)
    }

    fn save(&self) -> Result<(), ExecutorError> {
        let json = serde_json::to_string(&self.entries).map_err(|e| ExecutorError::Format {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        fleetward_pki::write_public(&self.path, &json).map_err(|source| ExecutorError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

impl<E: Executor> Once<E> {
    /// Opens (or starts) the store at `path`. A corrupt file is an error, not a reset.
    pub fn open(path: impl Into<PathBuf>, inner: E) -> Result<Self, ExecutorError> {
        Self::open_bounded(path, OUTCOMES_MAX, inner)
    }

    /// Like [`Once::open`], remembering at most `max` requests.
    pub fn open_bounded(
        path: impl Into<PathBuf>,
        max: usize,
        inner: E,
    ) -> Result<Self, ExecutorError> {
        Ok(Once {
            inner,
            store: Mutex::new(Store::load(path.into(), max.max(1))?),
        })
    }

    pub fn inner(&self) -> &E {
        &self.inner
    }

    pub fn path(&self) -> PathBuf {
        self.lock().path.clone()
    }

    /// The recorded outcome of `id`, if it finished.
    pub fn recorded(&self, id: &str) -> Option<ActionOutcome> {
        self.lock().get(id).and_then(|e| e.outcome.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        // A panic while holding the lock cannot leave the store half-updated in a way that
        // matters (the file is replaced atomically), so a poisoned lock is still usable.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn replay(entry: &Entry, req: &ActionRequest) -> ActionOutcome {
    if entry.action != req.action {
        return ActionOutcome {
            replayed: true,
            ..ActionOutcome::refused(
                &req.id,
                format!(
                    "id {:?} was used before for {}; refusing to run {} under it",
                    req.id,
                    entry.action.name(),
                    req.action.name()
                ),
            )
        };
    }
    match &entry.outcome {
        Some(o) => ActionOutcome {
            replayed: true,
            ..o.clone()
        },
        None if matches!(entry.action, Action::Reboot | Action::PowerOff) => ActionOutcome {
            reboot: entry.action == Action::Reboot,
            power_off: entry.action == Action::PowerOff,
            replayed: true,
            ..ActionOutcome::new(
                &req.id,
                true,
                format!(
                    "{} was started before the agent restarted; not executed again",
                    entry.action.name()
                ),
                None,
            )
        },
        None => ActionOutcome {
            replayed: true,
            ..ActionOutcome::refused(
                &req.id,
                format!(
                    "{} was started but the agent stopped before it finished; outcome unknown, not executed again",
                    entry.action.name()
                ),
            )
        },
    }
}

impl<E: Executor> Executor for Once<E> {
    /// Read-only: not recorded, and not behind the lock that serialises actions (apt's
    /// simulation takes no lock, so it may run beside a running action).
    fn simulate_upgrade(&self) -> Option<Result<Simulation, String>> {
        self.inner.simulate_upgrade()
    }

    fn execute(&self, req: &ActionRequest, out: &mut dyn FnMut(&str)) -> ActionOutcome {
        if req.id.trim().is_empty() {
            return ActionOutcome::refused(&req.id, "refusing an action without an id");
        }
        // The lock is held for the whole action: one node-changing action at a time, and a
        // duplicate arriving meanwhile waits and then gets the recorded outcome.
        let mut store = self.lock();
        if let Some(entry) = store.get(&req.id) {
            let interrupted = entry.outcome.is_none()
                && entry.action == req.action
                && !matches!(entry.action, Action::Reboot | Action::PowerOff);
            if interrupted {
                // Started before the agent restarted: its real outcome, if the executor can
                // still find it (the action may have gone on without us).
                if let Some(found) = self.inner.recover(req, out) {
                    if !found.still_running {
                        if let Some(e) = store.entries.iter_mut().rev().find(|e| e.id == req.id) {
                            e.outcome = Some(ActionOutcome {
                                output: tail(found.output.clone(), STORED_OUTPUT_MAX),
                                ..found.clone()
                            });
                        }
                        if let Err(e) = store.save() {
                            tracing::warn!(id = %req.id, error = %e, "cannot record the action's outcome");
                        }
                    }
                    return ActionOutcome {
                        replayed: true,
                        ..found
                    };
                }
            }
            return replay(entry, req);
        }
        store.entries.push_back(Entry {
            id: req.id.clone(),
            action: req.action.clone(),
            outcome: None,
        });
        store.trim();
        if let Err(e) = store.save() {
            store.entries.retain(|e| e.id != req.id);
            return ActionOutcome::refused(
                &req.id,
                format!("cannot record the action before running it: {e}"),
            );
        }
        let outcome = self.inner.execute(req, out);
        if outcome.still_running {
            // Not an outcome: the entry stays "started", and a re-send looks again.
            return outcome;
        }
        if let Some(entry) = store.entries.iter_mut().rev().find(|e| e.id == req.id) {
            entry.outcome = Some(ActionOutcome {
                output: tail(outcome.output.clone(), STORED_OUTPUT_MAX),
                ..outcome.clone()
            });
        }
        if let Err(e) = store.save() {
            tracing::warn!(id = %req.id, error = %e, "cannot record the action's outcome");
        }
        outcome
    }
}

/// `path` relative to `root` (for node paths such as `/boot`).
pub(crate) fn under(root: &Path, node_path: &str) -> PathBuf {
    root.join(node_path.trim_start_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting(AtomicUsize);
    impl Executor for Counting {
        fn execute(&self, req: &ActionRequest, out: &mut dyn FnMut(&str)) -> ActionOutcome {
            let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
            out("ran");
            ActionOutcome::new(&req.id, true, format!("run {n}"), Some(0))
        }
    }

    fn req(id: &str, action: Action) -> ActionRequest {
        ActionRequest {
            id: id.into(),
            action,
        }
    }

    #[test]
    fn executor_actions_serialize_tagged_kebab_case() {
        let a = Action::GuestStop {
            vmid: 100,
            kind: GuestKind::Lxc,
            timeout_secs: 180,
            force: true,
        };
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(
            json,
            r#"{"action":"guest-stop","vmid":100,"kind":"lxc","timeout_secs":180,"force":true}"#
        );
        assert_eq!(serde_json::from_str::<Action>(&json).unwrap(), a);
        assert_eq!(
            serde_json::to_string(&Action::MaintenanceOn).unwrap(),
            r#"{"action":"maintenance-on"}"#
        );
        for a in [
            Action::AptDistUpgrade,
            Action::PowerOff,
            Action::WaitGuestsMigrated { timeout_secs: 5 },
        ] {
            let v: serde_json::Value = serde_json::to_value(&a).unwrap();
            assert_eq!(v["action"], a.name());
        }
        assert!(serde_json::from_str::<Action>(r#"{"action":"rm-rf"}"#).is_err());
    }

    #[test]
    fn executor_validates_vmids_and_node_names() {
        let mig = |target: &str| Action::GuestMigrate {
            vmid: 100,
            kind: GuestKind::Qemu,
            target: target.into(),
        };
        assert!(mig("pve-02").validate().is_ok());
        assert!(mig("--force").validate().is_err());
        assert!(mig("").validate().is_err());
        assert!(mig("a b").validate().is_err());
        let start = |vmid| Action::GuestStart {
            vmid,
            kind: GuestKind::Qemu,
        };
        assert!(start(99).validate().is_err());
        assert!(start(100).validate().is_ok());
    }

    #[test]
    fn executor_once_replays_recorded_outcomes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(OUTCOMES_FILE);
        let once = Once::open(&path, Counting(AtomicUsize::new(0))).unwrap();
        let mut lines = Vec::new();
        let r = req("roll-1/pve-01/upgrade/1", Action::AptDistUpgrade);
        let first = once.execute(&r, &mut |l| lines.push(l.to_owned()));
        assert!(first.ok && !first.replayed);
        assert_eq!(first.output, "run 1");
        let again = once.execute(&r, &mut |l| lines.push(l.to_owned()));
        assert!(again.ok && again.replayed);
        assert_eq!(again.output, "run 1");
        assert_eq!(lines, ["ran"]);
        assert_eq!(once.inner().0.load(Ordering::SeqCst), 1);

        // Same id, other action: refused, nothing runs.
        let other = once.execute(&req("roll-1/pve-01/upgrade/1", Action::Reboot), &mut |_| {});
        assert!(!other.ok);
        assert_eq!(once.inner().0.load(Ordering::SeqCst), 1);
        // Empty id: refused.
        assert!(!once.execute(&req(" ", Action::AptUpdate), &mut |_| {}).ok);

        // Survives a restart.
        drop(once);
        let once = Once::open(&path, Counting(AtomicUsize::new(0))).unwrap();
        let replayed = once.execute(&r, &mut |_| {});
        assert!(replayed.replayed && replayed.ok);
        assert_eq!(once.inner().0.load(Ordering::SeqCst), 0);
        assert_eq!(once.recorded(&r.id).unwrap().output, "run 1");
    }

    #[test]
    fn executor_once_interrupted_and_bounded_and_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(OUTCOMES_FILE);
        // An entry without outcome: the agent died mid-action.
        let started = |id: &str, action: Action| Entry {
            id: id.into(),
            action,
            outcome: None,
        };
        let entries = vec![
            started("a", Action::AptDistUpgrade),
            started("b", Action::Reboot),
        ];
        fs::write(&path, serde_json::to_string(&entries).unwrap()).unwrap();
        let once = Once::open_bounded(&path, 3, Counting(AtomicUsize::new(0))).unwrap();
        let a = once.execute(&req("a", Action::AptDistUpgrade), &mut |_| {});
        assert!(!a.ok && a.replayed && a.output.contains("outcome unknown"));
        let b = once.execute(&req("b", Action::Reboot), &mut |_| {});
        assert!(b.ok && b.reboot && b.replayed);
        assert_eq!(once.inner().0.load(Ordering::SeqCst), 0);

        // Bounded: the oldest ids are forgotten, on disk too.
        for i in 0..5 {
            once.execute(&req(&format!("x{i}"), Action::AptUpdate), &mut |_| {});
        }
        let stored: Vec<Entry> = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        let ids: Vec<_> = stored.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["x2", "x3", "x4"]);

        // Corrupt file: an error, not a silent reset.
        fs::write(&path, "{").unwrap();
        assert!(matches!(
            Once::open(&path, Counting(AtomicUsize::new(0))),
            Err(ExecutorError::Format { .. })
        ));
    }

    #[test]
    fn executor_once_refuses_when_it_cannot_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir/actions.json");
        let once = Once::open(&path, Counting(AtomicUsize::new(0))).unwrap();
        let o = once.execute(&req("a", Action::Reboot), &mut |_| {});
        assert!(!o.ok && o.output.contains("cannot record"));
        assert_eq!(once.inner().0.load(Ordering::SeqCst), 0);
    }
}
