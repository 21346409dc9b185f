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
