//! Property tests: random interleavings of answers, duplicates, lost commands, offline
//! nodes, view changes, operator actions and crashes. After every step the safety
//! invariants of the module documentation must hold.

use std::collections::{BTreeSet, VecDeque};

use proptest::prelude::*;

use super::tests::{healthy_view, names, Sim};
use super::*;
use crate::chaos::{self, perturb, Harness, Perturb};

#[derive(Debug, Clone)]
enum Op {
    /// Deliveries, lost commands, crashes and duplicates ([`crate::chaos`]).
    Chaos(Perturb),
    Offline(usize),
    Online(usize),
    FlipEsp(usize),
    FlipQuorate(usize),
    AddFinding(usize),
    FailNext,
    Tick(u64),
    Pause,
    Resume,
    Abort,
    Skip(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        21 => perturb().prop_map(Op::Chaos),
        1 => any::<usize>().prop_map(Op::Offline),
        2 => any::<usize>().prop_map(Op::Online),
        1 => any::<usize>().prop_map(Op::FlipEsp),
        1 => any::<usize>().prop_map(Op::FlipQuorate),
        1 => any::<usize>().prop_map(Op::AddFinding),
        1 => Just(Op::FailNext),
        3 => (0u64..30 * 60_000).prop_map(Op::Tick),
        1 => Just(Op::Pause),
        3 => Just(Op::Resume),
        1 => prop_oneof![19 => Just(false), 1 => Just(true)].prop_map(|a| if a { Op::Abort } else { Op::Resume }),
        1 => any::<usize>().prop_map(Op::Skip),
    ]
}

impl chaos::Sim for Sim {
    type State = RolloutState;
    type Event = Event;
    type Command = Command;
    const RECOVERED_ONLY_RESENDS: bool = false;

    fn step(&self, s: &RolloutState, e: &Event) -> (RolloutState, Vec<Command>) {
        step(s, e, &self.view)
    }
    fn state(&mut self) -> &mut RolloutState {
        &mut self.state
    }
    fn queue(&mut self) -> &mut VecDeque<Event> {
        &mut self.queue
    }
    fn agent(&mut self, c: &Command) {
        Sim::agent(self, c)
    }
    fn emitted(&mut self, cmds: &[Command]) {
        self.emitted.extend(cmds.iter().cloned());
    }
    fn recovered() -> Event {
        Event::Recovered
    }
    /// (5) a new key for upgrade/reboot only after the previous ones failed.
    fn guarded_key(c: &Command) -> Option<&Key> {
        match c {
            Command::SendAction {
                key,
                action: Action::AptDistUpgrade | Action::Reboot,
                ..
            } => Some(key),
            _ => None,
        }
    }
    fn failed_key(e: &Event) -> Option<&Key> {
        match e {
            Event::CommandResult { key, ok: false, .. } => Some(key),
            _ => None,
        }
    }
}

/// The rollout's own invariants after every step (the harness checks (5)).
fn check(
    sim: &Sim,
    pre: &RolloutState,
    event: &Event,
    post: &RolloutState,
    cmds: &[Command],
) -> Result<(), TestCaseError> {
    let view = &sim.view;
    {
        let max = post.plan.max_unavailable;
        // (1) never more than max_unavailable nodes out.
        prop_assert!(post.in_flight().count() <= max, "in flight > {max}");
        let halted_or_aborted = |s: &Status| matches!(s, Status::Halted { .. } | Status::Aborted);
        let stopped = |s: &Status| halted_or_aborted(s) || matches!(s, Status::Paused);
        for c in cmds {
            let Command::SendAction { node, action, .. } = c else {
                continue;
            };
            // (2) reboot only when the view of this very step says every ESP holds the kernel.
            if *action == Action::Reboot {
                let nv = view.nodes.get(node);
                prop_assert!(
                    nv.is_some_and(|nv| nv.online && nv.esp_holds_next_kernel),
                    "reboot of {node} without the next kernel on every ESP"
                );
            }
            // (3) one node at a time: no action for a node while another is out.
            if max == 1 {
                prop_assert!(
                    post.in_flight().all(|n| n.name == *node),
                    "action for {node} while another node is out"
                );
            }
            // (4b) halted or aborted: nothing at all is sent (unless this step resumed).
            if halted_or_aborted(&pre.status) && *event != Event::Resume {
                prop_assert!(false, "{action:?} sent to {node} while {:?}", pre.status);
            }
        }
        // (4a) stopped: no new node starts.
        if stopped(&pre.status) && *event != Event::Resume {
            for (a, b) in pre.nodes.iter().zip(&post.nodes) {
                prop_assert!(
                    !(a.phase == Phase::Pending && b.phase.in_flight()),
                    "{} started while {:?}",
                    a.name,
                    pre.status
                );
            }
        }
        // (6) offline during its turn halts, and the node does not advance.
        if let Event::NodeOffline { node } = event {
            let before = pre.node(node).map(|n| n.phase);
            let after = post.node(node).map(|n| n.phase);
            let in_turn = before.is_some_and(|p| p.in_flight() && p != Phase::AwaitReturn);
            if in_turn && matches!(pre.status, Status::Running | Status::Paused) {
                prop_assert!(
                    matches!(post.status, Status::Halted { .. }),
                    "{node} went offline in its turn and the rollout is {:?}",
                    post.status
                );
                prop_assert_eq!(before, after);
            }
        }
        Ok(())
    }
}

fn run_ops(n: usize, max: usize, ops: &[Op]) -> Result<(), TestCaseError> {
    let nodes = names(n);
    let plan = Plan::new("p", nodes.clone(), max, None, RebootPolicy::IfNeeded)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut sim = Sim::new(plan, healthy_view(&nodes));
    let mut h = Harness::new(Box::new(check));
    h.deliver(&mut sim, Event::Start)?;
    for op in ops {
        let node = |i: usize| nodes[i % nodes.len()].clone();
        match op {
            Op::Chaos(p) => h.perturb(&mut sim, p)?,
            Op::Offline(i) => {
                let n = node(*i);
                if let Some(nv) = sim.view.nodes.get_mut(&n) {
                    nv.online = false;
                }
                h.deliver(&mut sim, Event::NodeOffline { node: n })?;
            }
            Op::Online(i) | Op::FlipEsp(i) | Op::FlipQuorate(i) | Op::AddFinding(i) => {
                let n = node(*i);
                if let Some(nv) = sim.view.nodes.get_mut(&n) {
                    nv.report_seq += 1;
                    match op {
                        Op::Online(_) => nv.online = true,
                        Op::FlipEsp(_) => nv.esp_holds_next_kernel = !nv.esp_holds_next_kernel,
                        Op::FlipQuorate(_) => {
                            nv.quorate = Some(nv.quorate != Some(true));
                        }
                        _ => {
                            nv.error_findings.insert("boot.esp-diverged".into());
                        }
                    }
                }
                h.deliver(&mut sim, Event::NodeChanged { node: n })?;
            }
            Op::FailNext => sim.fail_next = true,
            Op::Tick(d) => {
                sim.now_ms += d;
                let ev = Event::Tick { now_ms: sim.now_ms };
                h.deliver(&mut sim, ev)?;
            }
            Op::Pause => h.deliver(&mut sim, Event::Pause)?,
            Op::Resume => h.deliver(&mut sim, Event::Resume)?,
            Op::Abort => h.deliver(&mut sim, Event::Abort)?,
            Op::Skip(i) => h.deliver(&mut sim, Event::Skip { node: node(*i) })?,
        }
        // The agents' own view agrees: never more nodes in maintenance than allowed.
        prop_assert!(sim.in_maintenance.len() <= max);
    }
    if std::env::var_os("ROLLOUT_COVERAGE").is_some() {
        let r = h.keys().keys().filter(|(_, a)| a == "reboot").count();
        eprintln!(
            "COVERAGE status={:?} reboots={r} cmds={}",
            sim.state.status,
            sim.emitted.len()
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn invariants_one_at_a_time(ops in prop::collection::vec(op(), 1..300)) {
        run_ops(3, 1, &ops)?;
    }

    #[test]
    fn invariants_two_at_a_time(ops in prop::collection::vec(op(), 1..300)) {
        run_ops(6, 2, &ops)?;
    }
}

/// Mostly-benign sequences must also make progress: the invariants are not met by doing
/// nothing. With only deliveries, duplicates and crashes the rollout completes.
#[test]
fn benign_chaos_completes() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    for _ in 0..32 {
        let ops = prop::collection::vec(perturb(), 600)
            .new_tree(&mut runner)
            .map(|t| t.current())
            .unwrap_or_default();
        let nodes = names(3);
        let plan = Plan::new("b", nodes.clone(), 1, None, RebootPolicy::IfNeeded).ok();
        let Some(plan) = plan else { continue };
        let mut sim = Sim::new(plan, healthy_view(&nodes));
        let mut h = Harness::new(Box::new(check));
        h.deliver(&mut sim, Event::Start).unwrap();
        for p in &ops {
            h.perturb(&mut sim, p).unwrap();
        }
        // Drain whatever is left.
        sim.run(2_000);
        assert_eq!(sim.state.status, Status::Completed, "{:?}", sim.state);
        for n in &nodes {
            assert_eq!(
                sim.actions_for(n, Action::AptDistUpgrade)
                    .iter()
                    .collect::<BTreeSet<_>>()
                    .len(),
                1
            );
            assert_eq!(
                sim.actions_for(n, Action::Reboot)
                    .iter()
                    .collect::<BTreeSet<_>>()
                    .len(),
                1
            );
        }
    }
}
