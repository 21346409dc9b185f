//! What the controller hears from its agents, as a broadcast of [`AgentEvent`]s
//! ([`crate::state::Controller::subscribe`]). Orchestration drivers (rolling updates,
//! shutdowns) send commands with [`crate::state::Controller::send_command`] and follow
//! their progress here: the command's ack, output lines, and result, and the node's
//! disconnect and reconnect (with its boot id) across a reboot.
//!
//! The broadcast is bounded ([`EVENTS_CAPACITY`]): a subscriber that falls that far behind
//! gets `RecvError::Lagged(n)` and must re-read what it needs from the store (latest
//! reports, node records) rather than rely on having seen every event. Events are not
//! persisted; a driver that restarts resumes from its journal and re-sends its current
//! step (the agent replays a remembered outcome for a known command id).

/// How many events the broadcast buffers for a slow subscriber.
pub const EVENTS_CAPACITY: usize = 4096;

/// Something a node's agent did or that happened to its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentEvent {
    /// The node name (from the agent's certificate).
    pub node: String,
    pub kind: AgentEventKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEventKind {
    /// The agent said Hello on a new session. A boot id different from the previous one
    /// means the node rebooted.
    Connected { boot_id: String },
    /// The node's session ended and no newer session of the node is open.
    Disconnected,
    /// A report of the node was stored (it is the node's latest report now).
    Report,
    /// The agent received command `id` and will act on it.
    CommandAck { id: String },
    /// One output line of the action `id` while it runs (best effort: lines may be lost).
    CommandOutput { id: String, line: String },
    /// Command `id` finished. `replayed`: the agent remembered the outcome of an earlier
    /// execution of this id and did not run it again.
    CommandResult {
        id: String,
        ok: bool,
        message: String,
        exit_code: Option<i32>,
        replayed: bool,
    },
}
