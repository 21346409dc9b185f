//! Property tests: random interleavings of answers, duplicates, lost commands, offline
//! nodes, view changes, operator actions and crashes. After every step the safety
//! invariants of the module documentation must hold.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::tests::{healthy_view, names, Sim};
use super::*;

#[derive(Debug, Clone)]
enum Op {
    /// Deliver the i-th queued event (answers may arrive in any order).
    Deliver(usize),
    /// Deliver the i-th queued event but the driver crashes after persisting the new state
    /// and before sending: the commands are lost; then it recovers.
    DeliverLoseCommands(usize),
    /// The driver crashes before persisting: the step's result is thrown away and the event
    /// stays queued (the agent re-sends it on reconnect).
    CrashBeforePersist(usize),
    /// Deliver again an event delivered before.
    Duplicate(usize),
    /// Restart from the serialized state.
    Crash,
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
        12 => any::<usize>().prop_map(Op::Deliver),
        2 => any::<usize>().prop_map(Op::DeliverLoseCommands),
        2 => any::<usize>().prop_map(Op::CrashBeforePersist),
        3 => any::<usize>().prop_map(Op::Duplicate),
        2 => Just(Op::Crash),
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

/// Watches every step and checks the invariants.
struct Checker {
    /// Keys emitted per (node, action), for upgrade and reboot.
    keys: BTreeMap<(String, Action), BTreeSet<Key>>,
    /// Keys the agent answered with a failure.
    failed: BTreeSet<Key>,
}

impl Checker {
    fn check(
        &mut self,
        pre: &RolloutState,
        event: &Event,
        view: &ClusterView,
        post: &RolloutState,
        cmds: &[Command],
    ) -> Result<(), TestCaseError> {
        let max = post.plan.max_unavailable;
        // (1) never more than max_unavailable nodes out.
        prop_assert!(post.in_flight().count() <= max, "in flight > {max}");
        let halted_or_aborted = |s: &Status| matches!(s, Status::Halted { .. } | Status::Aborted);
        let stopped = |s: &Status| halted_or_aborted(s) || matches!(s, Status::Paused);
        for c in cmds {
            let Command::SendAction { key, node, action } = c else {
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
            // (5) a new key for upgrade/reboot only after the previous ones failed.
            if matches!(action, Action::AptDistUpgrade | Action::Reboot) {
                let known = self.keys.entry((node.clone(), *action)).or_default();
                if !known.contains(key) {
                    for k in known.iter() {
                        prop_assert!(
                            self.failed.contains(k),
                            "{key} sent while {k} had not failed"
                        );
                    }
                    known.insert(key.clone());
                }
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
    let mut checker = Checker {
        keys: BTreeMap::new(),
        failed: BTreeSet::new(),
    };
    let mut history: Vec<Event> = Vec::new();
    let step_checked = |sim: &mut Sim,
                        checker: &mut Checker,
                        ev: &Event,
                        send: bool|
     -> Result<(), TestCaseError> {
        let pre = sim.state.clone();
        let (post, cmds) = step(&pre, ev, &sim.view);
        checker.check(&pre, ev, &sim.view, &post, &cmds)?;
        sim.state = post;
        if send {
            for c in &cmds {
                sim.agent(c);
            }
        }
        // Record failures the agent produced, so (5) knows which keys failed.
        for e in sim.queue.iter() {
            if let Event::CommandResult { key, ok: false, .. } = e {
                checker.failed.insert(key.clone());
            }
        }
        Ok(())
    };
    step_checked(&mut sim, &mut checker, &Event::Start, true)?;
    for op in ops {
        let node = |i: usize| nodes[i % nodes.len()].clone();
        match op {
            Op::Deliver(i) | Op::DeliverLoseCommands(i) | Op::CrashBeforePersist(i) => {
                if sim.queue.is_empty() {
                    continue;
                }
                let idx = i % sim.queue.len();
                if matches!(op, Op::CrashBeforePersist(_)) {
                    let ev = sim.queue[idx].clone();
                    let _lost = step(&sim.state, &ev, &sim.view);
                    step_checked(&mut sim, &mut checker, &Event::Recovered, true)?;
                    continue;
                }
                let Some(ev) = sim.queue.remove(idx) else {
                    continue;
                };
                let send = matches!(op, Op::Deliver(_));
                step_checked(&mut sim, &mut checker, &ev, send)?;
                history.push(ev);
                if !send {
                    step_checked(&mut sim, &mut checker, &Event::Recovered, true)?;
                }
            }
            Op::Duplicate(i) => {
                if history.is_empty() {
                    continue;
                }
                let ev = history[i % history.len()].clone();
                step_checked(&mut sim, &mut checker, &ev, true)?;
            }
            Op::Crash => {
                let json = serde_json::to_string(&sim.state)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let back: RolloutState =
                    serde_json::from_str(&json).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(&back, &sim.state);
                sim.state = back;
                step_checked(&mut sim, &mut checker, &Event::Recovered, true)?;
            }
            Op::Offline(i) => {
                let n = node(*i);
                if let Some(nv) = sim.view.nodes.get_mut(&n) {
                    nv.online = false;
                }
                step_checked(
                    &mut sim,
                    &mut checker,
                    &Event::NodeOffline { node: n },
                    true,
                )?;
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
                step_checked(
                    &mut sim,
                    &mut checker,
                    &Event::NodeChanged { node: n },
                    true,
                )?;
            }
            Op::FailNext => sim.fail_next = true,
            Op::Tick(d) => {
                sim.now_ms += d;
                let ev = Event::Tick { now_ms: sim.now_ms };
                step_checked(&mut sim, &mut checker, &ev, true)?;
            }
            Op::Pause => step_checked(&mut sim, &mut checker, &Event::Pause, true)?,
            Op::Resume => step_checked(&mut sim, &mut checker, &Event::Resume, true)?,
            Op::Abort => step_checked(&mut sim, &mut checker, &Event::Abort, true)?,
            Op::Skip(i) => {
                let ev = Event::Skip { node: node(*i) };
                step_checked(&mut sim, &mut checker, &ev, true)?;
            }
        }
        // The agents' own view agrees: never more nodes in maintenance than allowed.
        prop_assert!(sim.in_maintenance.len() <= max);
    }
    if std::env::var_os("ROLLOUT_COVERAGE").is_some() {
        let reboots = sim.emitted.len();
        let r = checker
            .keys
            .iter()
            .filter(|((_, a), _)| *a == Action::Reboot)
            .count();
        eprintln!(
            "COVERAGE status={:?} reboots={r} cmds={reboots}",
            sim.state.status
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
    let benign = prop_oneof![
        10 => any::<usize>().prop_map(Op::Deliver),
        2 => any::<usize>().prop_map(Op::DeliverLoseCommands),
        2 => any::<usize>().prop_map(Op::CrashBeforePersist),
        3 => any::<usize>().prop_map(Op::Duplicate),
        1 => Just(Op::Crash),
    ];
    let mut runner = TestRunner::deterministic();
    for _ in 0..32 {
        let ops = prop::collection::vec(benign.clone(), 600)
            .new_tree(&mut runner)
            .map(|t| t.current())
            .unwrap_or_default();
        let nodes = names(3);
        let plan = Plan::new("b", nodes.clone(), 1, None, RebootPolicy::IfNeeded).ok();
        let Some(plan) = plan else { continue };
        let mut sim = Sim::new(plan, healthy_view(&nodes));
        sim.deliver(&Event::Start);
        let mut history = Vec::new();
        for op in &ops {
            match op {
                Op::Deliver(i) | Op::DeliverLoseCommands(i) if !sim.queue.is_empty() => {
                    let idx = i % sim.queue.len();
                    if let Some(ev) = sim.queue.remove(idx) {
                        if matches!(op, Op::Deliver(_)) {
                            sim.deliver(&ev);
                        } else {
                            sim.state = step(&sim.state, &ev, &sim.view).0;
                            sim.deliver(&Event::Recovered);
                        }
                        history.push(ev);
                    }
                }
                Op::Duplicate(i) if !history.is_empty() => {
                    let ev = history[i % history.len()].clone();
                    sim.deliver(&ev);
                }
                Op::Crash | Op::CrashBeforePersist(_) => {
                    sim.deliver(&Event::Recovered);
                }
                _ => {}
            }
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
