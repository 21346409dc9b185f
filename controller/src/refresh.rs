//! Refreshing the package lists before a rollout is planned (`rollout plan
//! --refresh-lists`): `apt-get update` on every node through its executor, then a fresh
//! report from each, within one bound. A pure machine like [`crate::rollout`]: no I/O, no
//! clock (time comes as [`Wake::Tick`]); the driver journals each state before it sends.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::operation::{Key, Wake};

/// Where one node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodePhase {
    /// `apt-get update` sent, no answer yet.
    Updating,
    /// Updated; waiting for a report newer than `report_floor`.
    Reporting,
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRefresh {
    pub name: String,
    pub key: Key,
    pub phase: NodePhase,
    /// The report seq when `apt-get update` finished: a newer report has the new lists.
    pub report_floor: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum Status {
    Planned,
    Running,
    Done,
    /// A node failed, was not connected, or the bound passed: the plan must not use lists
    /// of unknown age.
    Failed {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshState {
    pub id: String,
    pub nodes: Vec<NodeRefresh>,
    pub status: Status,
    pub timeout_ms: u64,
    pub deadline_ms: Option<u64>,
    pub now_ms: u64,
    pub created_ms: u64,
    pub actor: String,
}

impl RefreshState {
    pub fn new(id: &str, nodes: &[String], timeout_ms: u64, created_ms: u64, actor: &str) -> Self {
        RefreshState {
            nodes: nodes
                .iter()
                .map(|n| NodeRefresh {
                    name: n.clone(),
                    key: Key::new(id, n, "apt-update", 1),
                    phase: NodePhase::Updating,
                    report_floor: 0,
                })
                .collect(),
            id: id.to_owned(),
            status: Status::Planned,
            timeout_ms,
            deadline_ms: None,
            now_ms: created_ms,
            created_ms,
            actor: actor.to_owned(),
        }
    }

    pub fn finished(&self) -> bool {
        matches!(self.status, Status::Done | Status::Failed { .. })
    }
}

/// What the machine sees of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodeView {
    pub online: bool,
    /// The seq of its latest stored report.
    pub report_seq: u64,
}

pub type View = BTreeMap<String, NodeView>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Start {
        now_ms: u64,
    },
    /// The wake-ups every orchestration shares; which node changed does not matter (the
    /// machine is level-triggered: the view says what).
    Wake(Wake),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    AptUpdate { key: Key, node: String },
    RequestRefresh { node: String },
    Notify(Notice),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Notice {
    Started { nodes: Vec<String> },
    Done,
    Failed { reason: String },
}

/// The transition function: pure, total, deterministic.
pub fn step(state: &RefreshState, event: &Event, view: &View) -> (RefreshState, Vec<Command>) {
    let mut s = state.clone();
    let mut out = Vec::new();
    if s.finished() {
        return (s, out);
    }
    let fail = |s: &mut RefreshState, out: &mut Vec<Command>, reason: String| {
        s.status = Status::Failed {
            reason: reason.clone(),
        };
        out.push(Command::Notify(Notice::Failed { reason }));
    };
    match event {
        Event::Start { now_ms } => {
            if s.status != Status::Planned {
                return (s, out);
            }
            s.now_ms = s.now_ms.max(*now_ms);
            let offline: Vec<&str> = s
                .nodes
                .iter()
                .filter(|n| !view.get(&n.name).is_some_and(|v| v.online))
                .map(|n| n.name.as_str())
                .collect();
            if !offline.is_empty() {
                let reason = format!("not connected: {}", offline.join(", "));
                fail(&mut s, &mut out, reason);
                return (s, out);
            }
            s.status = Status::Running;
            s.deadline_ms = Some(s.now_ms.saturating_add(s.timeout_ms));
            out.push(Command::Notify(Notice::Started {
                nodes: s.nodes.iter().map(|n| n.name.clone()).collect(),
            }));
            resend(&s, &mut out);
            return (s, out);
        }
        Event::Wake(Wake::Tick { now_ms }) => s.now_ms = s.now_ms.max(*now_ms),
        Event::Wake(Wake::CommandResult { key, ok, output }) => {
            let Some(n) = s
                .nodes
                .iter_mut()
                .find(|n| n.key == *key && n.phase == NodePhase::Updating)
            else {
                return (s, out);
            };
            if !ok {
                let reason = format!("apt-get update failed on {}: {output}", n.name);
                fail(&mut s, &mut out, reason);
                return (s, out);
            }
            n.phase = NodePhase::Reporting;
            n.report_floor = view.get(&n.name).map_or(0, |v| v.report_seq);
            out.push(Command::RequestRefresh {
                node: n.name.clone(),
            });
        }
        Event::Wake(Wake::NodeChanged { .. } | Wake::NodeOffline { .. }) => {}
        Event::Wake(Wake::Recovered) => resend(&s, &mut out),
    }
    for n in &mut s.nodes {
        let seq = view.get(&n.name).map_or(0, |v| v.report_seq);
        if n.phase == NodePhase::Reporting && seq > n.report_floor {
            n.phase = NodePhase::Done;
        }
    }
    if s.nodes.iter().all(|n| n.phase == NodePhase::Done) {
        s.status = Status::Done;
        out.push(Command::Notify(Notice::Done));
    } else if s.deadline_ms.is_some_and(|d| s.now_ms >= d) {
        let late: Vec<&str> = s
            .nodes
            .iter()
            .filter(|n| n.phase != NodePhase::Done)
            .map(|n| n.name.as_str())
            .collect();
        let reason = format!(
            "apt-get update and a fresh report did not arrive in time from {}",
            late.join(", ")
        );
        fail(&mut s, &mut out, reason);
    }
    (s, out)
}

/// Outstanding `apt-get update`s (same key) and report requests.
fn resend(s: &RefreshState, out: &mut Vec<Command>) {
    for n in &s.nodes {
        match n.phase {
            NodePhase::Updating => out.push(Command::AptUpdate {
                key: n.key.clone(),
                node: n.name.clone(),
            }),
            NodePhase::Reporting => out.push(Command::RequestRefresh {
                node: n.name.clone(),
            }),
            NodePhase::Done => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(seqs: &[(&str, bool, u64)]) -> View {
        seqs.iter()
            .map(|(n, online, seq)| {
                (
                    n.to_string(),
                    NodeView {
                        online: *online,
                        report_seq: *seq,
                    },
                )
            })
            .collect()
    }

    fn sent(cmds: &[Command]) -> Vec<String> {
        cmds.iter()
            .filter_map(|c| match c {
                Command::AptUpdate { key, .. } => Some(key.to_string()),
                Command::RequestRefresh { node } => Some(format!("refresh {node}")),
                Command::Notify(_) => None,
            })
            .collect()
    }

    #[test]
    fn updates_then_waits_for_a_newer_report_from_each_node() {
        let nodes = vec!["a".to_string(), "b".to_string()];
        let s = RefreshState::new("refresh-1", &nodes, 1000, 0, "op");
        let v = view(&[("a", true, 5), ("b", true, 7)]);
        let (s, c) = step(&s, &Event::Start { now_ms: 10 }, &v);
        assert_eq!(
            sent(&c),
            ["refresh-1/a/apt-update/1", "refresh-1/b/apt-update/1"]
        );
        // A duplicate start and a recovery re-send the same keys, never new ones.
        let (s, c) = step(&s, &Event::Wake(Wake::Recovered), &v);
        assert_eq!(
            sent(&c),
            ["refresh-1/a/apt-update/1", "refresh-1/b/apt-update/1"]
        );
        let ok = |n: &str| {
            Event::Wake(Wake::CommandResult {
                key: Key::new("refresh-1", n, "apt-update", 1),
                ok: true,
                output: String::new(),
            })
        };
        let (s, c) = step(&s, &ok("a"), &v);
        assert_eq!(sent(&c), ["refresh a"]);
        let (s, c) = step(&s, &ok("a"), &v);
        assert!(sent(&c).is_empty(), "a duplicate result changes nothing");
        let (s, _) = step(&s, &ok("b"), &v);
        let (s, _) = step(
            &s,
            &Event::Wake(Wake::NodeChanged { node: "b".into() }),
            &view(&[("a", true, 6), ("b", true, 7)]),
        );
        assert_eq!(s.status, Status::Running, "b's report is not newer yet");
        let (s, c) = step(
            &s,
            &Event::Wake(Wake::NodeChanged { node: "b".into() }),
            &view(&[("a", true, 6), ("b", true, 8)]),
        );
        assert_eq!(s.status, Status::Done);
        assert!(c.contains(&Command::Notify(Notice::Done)));
    }

    #[test]
    fn an_offline_node_a_failure_or_the_bound_fails_it() {
        let nodes = vec!["a".to_string()];
        let s = RefreshState::new("refresh-1", &nodes, 1000, 0, "op");
        let (f, c) = step(&s, &Event::Start { now_ms: 1 }, &view(&[("a", false, 0)]));
        assert!(matches!(f.status, Status::Failed { .. }));
        assert!(
            sent(&c).is_empty(),
            "nothing is sent to a partly offline cluster"
        );

        let v = view(&[("a", true, 0)]);
        let (s, _) = step(&s, &Event::Start { now_ms: 1 }, &v);
        let failed = Event::Wake(Wake::CommandResult {
            key: Key::new("refresh-1", "a", "apt-update", 1),
            ok: false,
            output: "E: boom".into(),
        });
        let (f, _) = step(&s, &failed, &v);
        assert_eq!(
            f.status,
            Status::Failed {
                reason: "apt-get update failed on a: E: boom".into()
            }
        );
        let (t, _) = step(&s, &Event::Wake(Wake::Tick { now_ms: 2000 }), &v);
        assert!(matches!(t.status, Status::Failed { .. }));
        let (again, c) = step(&t, &Event::Wake(Wake::Recovered), &v);
        assert_eq!((again, c.len()), (t, 0), "finished: nothing more happens");
    }
}
