//! What happens on agent sessions, for the orchestration drivers (rollouts, shutdowns).
//!
//! The session code publishes; drivers subscribe ([`crate::server::Controller::subscribe`]).
//! A lagging subscriber loses events (a bounded broadcast), which the drivers tolerate: their
//! machines are level-triggered and re-read the whole view on every event and on a timer.

/// One thing that happened on a node's session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentEvent {
    pub node: String,
    pub kind: AgentEventKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEventKind {
    /// A session opened (its Hello arrived) with this boot id.
    Connected {
        boot_id: String,
    },
    Disconnected,
    /// A report was stored and is the node's latest.
    Report,
    CommandAck {
        id: String,
    },
    CommandOutput {
        id: String,
        line: String,
    },
    CommandResult {
        id: String,
        ok: bool,
        message: String,
        exit_code: Option<i32>,
        replayed: bool,
    },
}

/// How many events a slow subscriber may fall behind before it loses some.
pub const CAPACITY: usize = 4096;
