//! The vocabulary every orchestration shares (rolling updates, shutdowns, list refreshes):
//! the idempotency key of a command, and the wake-ups a driver feeds a machine. A leaf:
//! the pure machines and the driver import it, it imports nothing of the crate.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The key an agent remembers to execute a command at most once:
/// `operation/node/step/attempt`, e.g. `rollout-1700000000000/pve-01/reboot/1`,
/// `shutdown-1700000000000/pve-02/guest-stop-101/1`. It is the command id on the wire.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Key {
    /// The operation's id (`rollout-<ms>`, `shutdown-<ms>`, `refresh-<ms>`).
    pub operation: String,
    pub node: String,
    /// The action's name, with the VMID for guest actions: `apt-update`, `guest-stop-101`.
    pub step: String,
    /// 1 for the first send; a new attempt only after an explicit failure.
    pub attempt: u32,
}

impl Key {
    pub fn new(operation: &str, node: &str, step: impl Into<String>, attempt: u32) -> Self {
        Key {
            operation: operation.to_owned(),
            node: node.to_owned(),
            step: step.into(),
            attempt,
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}",
            self.operation, self.node, self.step, self.attempt
        )
    }
}

/// What wakes a machine up besides an operator: the driver turns session events and its
/// timer into these, and each machine maps them onto its own events. Facts about nodes are
/// never carried here: the machine reads them from its view, so an event and a view can
/// never disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wake {
    /// The driver's clock (unix ms).
    Tick { now_ms: u64 },
    /// A new report of this node is in the view, or its session changed.
    NodeChanged { node: String },
    /// The node's session ended and it did not come back within the driver's grace.
    NodeOffline { node: String },
    /// The answer to a command this operation sent (matched by key).
    CommandResult { key: Key, ok: bool, output: String },
    /// The driver restarted from the journal, missed events, or an agent reconnected:
    /// re-send what is outstanding, under the same keys.
    Recovered,
}

/// The one decision of which operation may run: at most one operation (rollout, shutdown
/// or list refresh) is active at a time, whatever its kind. Each driver holds its active,
/// unfinished operation here and releases it when it finishes; a start claims it first, and
/// is refused while any other operation holds it, with that operation's own words on what
/// runs and how to stop it.
#[derive(Debug, Default)]
pub struct Operations {
    held: std::sync::Mutex<Option<Held>>,
}

/// The operation that holds the controller, and how an operator stops it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub kind: &'static str,
    pub id: String,
    /// What it is doing and how to stop it, e.g. `rollout rollout-1 is not finished
    /// (running): abort it first (`fleetward rollout abort`)`.
    pub busy: String,
}

impl Operations {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Held>> {
        // A poisoned lock still holds a consistent `Option`.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims the controller for a new `kind` operation `id`; refused while another
    /// operation (of any kind) holds it.
    pub fn claim(&self, kind: &'static str, id: &str, busy: String) -> Result<(), String> {
        let mut held = self.lock();
        if let Some(h) = held.as_ref().filter(|h| h.id != id) {
            return Err(format!(
                "cannot start a {kind}: one operation at a time, and {}",
                h.busy
            ));
        }
        *held = Some(Held {
            kind,
            id: id.to_string(),
            busy,
        });
        Ok(())
    }

    /// Records that `id` (resumed after a restart, or stepped) still holds the controller,
    /// with its current words. A second unfinished operation found at a restart (journals
    /// of an older release) does not replace the first.
    pub fn hold(&self, kind: &'static str, id: &str, busy: String) {
        let mut held = self.lock();
        if held.as_ref().is_some_and(|h| h.id != id) {
            tracing::warn!(kind, id, "another operation already holds the controller");
            return;
        }
        *held = Some(Held {
            kind,
            id: id.to_string(),
            busy,
        });
    }

    /// `id` finished (or its start failed): the controller is free.
    pub fn release(&self, id: &str) {
        let mut held = self.lock();
        if held.as_ref().is_some_and(|h| h.id == id) {
            *held = None;
        }
    }

    /// The operation holding the controller, if any.
    pub fn held(&self) -> Option<Held> {
        self.lock().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_operation_at_a_time_whatever_its_kind() {
        let ops = Operations::default();
        ops.claim("rollout", "rollout-1", "rollout rollout-1 runs".into())
            .unwrap();
        let e = ops
            .claim("shutdown", "shutdown-2", String::new())
            .unwrap_err();
        assert!(e.contains("cannot start a shutdown") && e.contains("rollout rollout-1 runs"));
        let e = ops
            .claim("rollout", "rollout-3", String::new())
            .unwrap_err();
        assert!(e.contains("rollout rollout-1 runs"), "{e}");
        ops.hold("rollout", "rollout-1", "halted".into());
        assert_eq!(ops.held().unwrap().busy, "halted");
        ops.hold("refresh", "refresh-9", String::new());
        assert_eq!(ops.held().unwrap().id, "rollout-1", "not replaced");
        ops.release("refresh-9");
        assert!(ops.held().is_some(), "only the holder releases");
        ops.release("rollout-1");
        assert!(ops.held().is_none());
        ops.claim("shutdown", "shutdown-2", String::new()).unwrap();
    }
}
