//! Property tests: random clusters and random interleavings of answers, duplicates, lost
//! commands, crashes, failures, nodes going away and coming back, time, cancels and power
//! events. The invariants of the module documentation are checked after every step.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use fleetward_proto::action::{Action, GuestKind};
use proptest::prelude::*;

use super::tests::{Sim, T0};
use super::*;
use crate::chaos::{self, perturb, Harness, Perturb};

/// A guest: (order, down secs, onboot).
type GuestSpec = (Option<u32>, u64, bool);

/// A random cluster: per node (monitor, OSDs, guests).
#[derive(Debug, Clone)]
struct Cluster {
    nodes: Vec<(bool, bool, Vec<GuestSpec>)>,
    controller: Option<usize>,
    disarm: bool,
    /// Per node (by index, cycled): its LRM's watchdog as reported, and whether it never
    /// releases it.
    watchdogs: Vec<(Option<bool>, bool)>,
    /// How long an LRM takes to release its watchdog after the disarm reached it.
    release_ms: u64,
}

fn cluster() -> impl Strategy<Value = Cluster> {
    let guest = (prop::option::of(1u32..4), 5u64..300, any::<bool>());
    let node = (
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec(guest, 0..4),
    );
    (
        prop::collection::vec(node, 2..6),
        prop::option::of(0usize..6),
        any::<bool>(),
        prop::collection::vec(
            (prop::option::of(any::<bool>()), prop::bool::weighted(0.1)),
            1..6,
        ),
        0u64..200_000,
    )
        .prop_map(|(nodes, controller, disarm, watchdogs, release_ms)| {
            let controller = controller.filter(|c| *c < nodes.len());
            Cluster {
                nodes,
                controller,
                disarm,
                watchdogs,
                release_ms,
            }
        })
}

fn build(c: &Cluster, deadline_ms: Option<u64>) -> Result<(Plan, ShutdownView), TestCaseError> {
    let mut view = ShutdownView {
        nodes: BTreeMap::new(),
        ha_disarm_supported: c.disarm,
        now_ms: 0,
    };
    let mut vmid = 100;
    for (i, (mon, osds, guests)) in c.nodes.iter().enumerate() {
        let guests = guests
            .iter()
            .map(|(order, down, onboot)| {
                vmid += 1;
                GuestView {
                    vmid,
                    kind: GuestKind::Qemu,
                    running: true,
                    onboot: *onboot,
                    order: *order,
                    up: Some(u64::from(vmid % 3)),
                    down: Some(*down),
                    ha: false,
                    unknown: false,
                }
            })
            .collect();
        view.nodes.insert(
            format!("pve{i}"),
            NodeView {
                online: true,
                boot_id: Some("b0".into()),
                quorate: Some(true),
                ceph_mon: *mon,
                ceph_osds: *osds,
                guests,
                observe_only: false,
                lrm_watchdog: c.watchdogs[i % c.watchdogs.len()].0,
                ..NodeView::default()
            },
        );
    }
    let config = Config {
        controller_host: c.controller.map(|i| format!("pve{i}")),
        deadline_ms,
        ..Config::default()
    };
    let plan =
        Plan::new("p", &view, &config, T0).map_err(|e| TestCaseError::fail(e.to_string()))?;
    Ok((plan, view))
}

#[derive(Debug, Clone)]
enum Op {
    /// Deliveries, lost commands, crashes and duplicates ([`crate::chaos`]).
    Chaos(Perturb),
    Offline(usize),
    Online(usize),
    FailNext,
    Tick(u64),
    Cancel,
    PowerRestored,
    /// A node that answered its power-off disconnects.
    FinishPowerOff(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        23 => perturb().prop_map(Op::Chaos),
        1 => any::<usize>().prop_map(Op::Offline),
        2 => any::<usize>().prop_map(Op::Online),
        1 => Just(Op::FailNext),
        4 => (0u64..400_000).prop_map(Op::Tick),
        1 => Just(Op::Cancel),
        1 => Just(Op::PowerRestored),
        4 => any::<usize>().prop_map(Op::FinishPowerOff),
    ]
}

impl chaos::Sim for Sim {
    type State = ShutdownState;
    type Event = Event;
    type Command = Command;
    /// (5) `Recovered` only re-sends.
    const RECOVERED_ONLY_RESENDS: bool = true;

    fn step(&self, s: &ShutdownState, e: &Event) -> (ShutdownState, Vec<Command>) {
        step(s, e, &self.view)
    }
    fn state(&mut self) -> &mut ShutdownState {
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
    /// (5) a new key only after every earlier one for that step failed.
    fn guarded_key(c: &Command) -> Option<&Key> {
        match c {
            Command::SendAction { key, .. } => Some(key),
            Command::Notify(_) => None,
        }
    }
    fn failed_key(e: &Event) -> Option<&Key> {
        match e {
            Event::CommandResult { key, ok: false, .. } => Some(key),
            _ => None,
        }
    }
}

/// The shutdown's own invariants (the harness checks (5)).
#[derive(Default)]
struct Checker {
    /// The bound of each power-off tier as last seen.
    tier_deadline: BTreeMap<usize, u64>,
    /// A first power-off to the controller's host was emitted.
    host_off: bool,
    /// Keys of sends seen.
    power_offs: BTreeSet<Key>,
    /// The bound of the wait for the HA watchdogs as last seen.
    watchdog_deadline: Option<u64>,
    /// The wait for the HA watchdogs moved on at its bound.
    watchdog_moved_on: bool,
    /// A power-off was emitted.
    any_off: bool,
}

impl Checker {
    fn check(
        &mut self,
        sim: &Sim,
        pre: &ShutdownState,
        event: &Event,
        post: &ShutdownState,
        cmds: &[Command],
    ) -> Result<(), TestCaseError> {
        let view = &sim.view;
        let plan = &post.plan;
        let tier_of = |n: &str| plan.tiers.iter().position(|t| t.iter().any(|x| x == n));
        if cmds.iter().any(|c| {
            matches!(
                c,
                Command::Notify(Notice::MovedOn {
                    stage: Stage::AwaitWatchdogs,
                    ..
                })
            )
        }) {
            self.watchdog_moved_on = true;
        }
        for c in cmds {
            let Command::SendAction { key, node, action } = c else {
                continue;
            };
            let new = self.power_offs.insert(key.clone());
            if *action != Action::PowerOff || !new || key.attempt != 1 {
                continue;
            }
            // (6) The first power-off only once no node to be powered off (online) reports
            // its HA resource manager holding its watchdog, or the wait's bound passed.
            if !std::mem::replace(&mut self.any_off, true) {
                let held: Vec<&String> = plan
                    .tiers
                    .iter()
                    .flatten()
                    .filter(|n| {
                        view.nodes
                            .get(*n)
                            .is_some_and(|v| v.online && v.lrm_watchdog == Some(true))
                    })
                    .collect();
                let timed_out = self.watchdog_moved_on
                    || self.watchdog_deadline.is_some_and(|d| post.now_ms >= d);
                prop_assert!(
                    held.is_empty() || timed_out,
                    "first power-off ({node}) while {held:?} hold their HA watchdogs"
                );
            }
            let host = plan.controller_host.as_deref();
            // (2) the controller's host last: nothing new after it.
            prop_assert!(
                !self.host_off,
                "power-off of {node} after the controller's host"
            );
            if host == Some(node.as_str()) {
                self.host_off = true;
                prop_assert_eq!(tier_of(node), Some(plan.tiers.len() - 1));
                prop_assert_eq!(plan.tiers.last().map(Vec::len), Some(1));
            }
            // (1) tier k+1 only after tier k confirmed and went offline, or its bound passed.
            let Some(t) = tier_of(node) else {
                prop_assert!(false, "{node} is in no tier");
                continue;
            };
            if t == 0 {
                continue;
            }
            let prev = &plan.tiers[t - 1];
            let confirmed = prev.iter().all(|n| match post.last_sent(n, "power-off") {
                None => !view.online(n),
                Some(s) => {
                    (s.outcome == Outcome::Ok && !view.online(n))
                        || (s.outcome == Outcome::Failed && s.key.attempt >= MAX_ATTEMPTS)
                }
            });
            let timed_out = self
                .tier_deadline
                .get(&(t - 1))
                .is_some_and(|d| post.now_ms >= *d);
            prop_assert!(
                confirmed || timed_out,
                "power-off of {node} (tier {t}) before tier {} was down",
                t - 1
            );
        }
        // Cancel after the point of no return changes nothing.
        if matches!(event, Event::Cancel | Event::PowerRestored) && pre.no_return {
            prop_assert_eq!(pre.stage, post.stage);
        }
        if let Stage::PowerOff { tier } = post.stage {
            if let Some(d) = post.stage_deadline_ms {
                self.tier_deadline.insert(tier, d);
            }
        }
        if post.stage == Stage::AwaitWatchdogs {
            self.watchdog_deadline = post.stage_deadline_ms;
        }
        Ok(())
    }
}

/// The cluster's LRMs: release delay and the nodes that never release.
fn with_lrms(sim: &mut Sim, c: &Cluster, names: &[String]) {
    sim.lrm_release_ms = c.release_ms;
    for (i, n) in names.iter().enumerate() {
        if c.watchdogs[i % c.watchdogs.len()].1 {
            sim.lrm_keeps.insert(n.clone());
        }
    }
}

fn run(c: &Cluster, ops: &[Op]) -> Result<Sim, TestCaseError> {
    let (plan, view) = build(c, None)?;
    let names: Vec<String> = view.nodes.keys().cloned().collect();
    let mut sim = Sim::new(plan, view);
    sim.slow_power_off = true;
    with_lrms(&mut sim, c, &names);
    let mut checker = Checker::default();
    let mut h = Harness::new(Box::new(
        move |sim: &Sim,
              pre: &ShutdownState,
              ev: &Event,
              post: &ShutdownState,
              cmds: &[Command]| { checker.check(sim, pre, ev, post, cmds) },
    ));
    h.deliver(&mut sim, Event::Start { now_ms: T0 })?;
    for op in ops {
        let node = |i: usize| names[i % names.len()].clone();
        match op {
            Op::Chaos(p) => h.perturb(&mut sim, p)?,
            Op::Offline(i) | Op::Online(i) => {
                let n = node(*i);
                // A node never comes back by itself after its power-off.
                let off = sim.state.last_sent(&n, "power-off").is_some();
                if let Some(nv) = sim.view.nodes.get_mut(&n) {
                    nv.online = matches!(op, Op::Online(_)) && !off;
                }
                h.deliver(&mut sim, Event::NodeChanged { node: n })?;
            }
            Op::FailNext => sim.fail_next = true,
            Op::Tick(d) => {
                sim.now_ms += d;
                for ev in sim.apply_releases() {
                    h.deliver(&mut sim, ev)?;
                }
                let ev = Event::Tick { now_ms: sim.now_ms };
                h.deliver(&mut sim, ev)?;
            }
            Op::FinishPowerOff(i) => {
                if let Some(ev) = sim.finish_power_off(*i) {
                    h.deliver(&mut sim, ev)?;
                }
            }
            Op::Cancel => h.deliver(&mut sim, Event::Cancel)?,
            Op::PowerRestored => h.deliver(&mut sim, Event::PowerRestored)?,
        }
    }
    // (3) After a cancel before the point of no return, the restore completes: every guest
    // whose stop was sent gets a start (or is reported, or is observed running: a guest that
    // runs is never started twice), and noout is unset if it was set.
    let cancelled = matches!(
        sim.state.up_reason,
        Some(UpReason::Cancel | UpReason::PowerRestored)
    );
    if cancelled && sim.state.stage != Stage::Finished {
        for nv in sim.view.nodes.values_mut() {
            nv.online = true;
        }
        sim.fail_next = false;
        for _ in 0..5_000 {
            if sim.state.stage == Stage::Finished {
                break;
            }
            let ev = match sim.queue.pop_front() {
                Some(ev) => ev,
                None => {
                    sim.now_ms += 10_000;
                    Event::Tick { now_ms: sim.now_ms }
                }
            };
            h.deliver(&mut sim, ev)?;
        }
        prop_assert_eq!(sim.state.stage, Stage::Finished);
    }
    if cancelled {
        prop_assert!(!sim.state.no_return);
        let reported: BTreeSet<u32> = sim
            .notices()
            .iter()
            .filter_map(|n| match n {
                Notice::GuestsNotStarted { vmids, .. } => Some(vmids.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        let sends = sim.sends();
        for (node, a) in &sends {
            if let Action::GuestStop { vmid, .. } = a {
                let started = sends.iter().any(|(n, b)| {
                    n == node && matches!(b, Action::GuestStart { vmid: v, .. } if v == vmid)
                });
                let running = sim
                    .view
                    .nodes
                    .get(node)
                    .and_then(|n| n.guests.iter().find(|g| g.vmid == *vmid))
                    .is_some_and(|g| g.running);
                prop_assert!(
                    started || reported.contains(vmid) || running,
                    "guest {vmid} stopped and never restarted"
                );
            }
        }
        let set = sends.iter().any(|(_, a)| *a == Action::CephSetNoout);
        let unset = sends.iter().any(|(_, a)| *a == Action::CephUnsetNoout);
        prop_assert!(!set || unset, "noout left set after a cancel");
    }
    Ok(sim)
}

/// A timeline where agents answer within a second (guest stops may hang): every
/// `PowerOff` is emitted at a time no later than the deadline.
fn run_deadline(c: &Cluster, slack_ms: u64, hang: &[bool]) -> Result<(), TestCaseError> {
    let probe = build(c, None)?.0;
    let t = &probe.timing;
    let waits = probe.tiers.len().saturating_sub(1) as u64;
    let flags = 1 + u64::from(probe.noout.is_some());
    let min = t.safety_ms + waits * t.min_tier_wait_ms + flags * t.min_action_ms;
    let deadline = T0 + min + slack_ms;
    let (plan, view) = build(c, Some(deadline))?;
    let names: Vec<String> = view.nodes.keys().cloned().collect();
    let mut sim = Sim::new(plan.clone(), view);
    with_lrms(&mut sim, c, &names);
    for (g, h) in plan.guests.iter().zip(hang.iter().cycle()) {
        if *h {
            sim.hang.insert(format!("guest-stop-{}", g.vmid));
        }
    }
    sim.deliver(&Event::Start { now_ms: T0 });
    sim.run(3 * 3_600_000, |s| s.stage == Stage::Down);
    prop_assert_eq!(sim.state.stage, Stage::Down);
    let offs: Vec<u64> = sim
        .log
        .iter()
        .filter(|(_, _, a)| *a == Action::PowerOff)
        .map(|(t, _, _)| *t)
        .collect();
    prop_assert_eq!(offs.len(), plan.tiers.iter().flatten().count());
    for t in offs {
        prop_assert!(
            t <= deadline,
            "power-off at {} > deadline {}",
            t - T0,
            deadline - T0
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn shutdown_invariants(c in cluster(), ops in prop::collection::vec(op(), 1..200)) {
        run(&c, &ops)?;
    }

    #[test]
    fn power_offs_before_the_deadline(
        c in cluster(),
        slack in 0u64..2 * 3_600_000,
        hang in prop::collection::vec(any::<bool>(), 1..5),
    ) {
        run_deadline(&c, slack, &hang)?;
    }
}

/// Benign chaos (deliveries, duplicates, lost commands, crashes) still reaches `Down`, and
/// then the startup finishes: the invariants are not met by doing nothing.
#[test]
fn benign_chaos_reaches_down_then_starts_up() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let benign = prop_oneof![
        18 => perturb().prop_map(Op::Chaos),
        1 => (0u64..60_000).prop_map(Op::Tick),
        2 => any::<usize>().prop_map(Op::FinishPowerOff),
    ];
    let mut runner = TestRunner::deterministic();
    for _ in 0..32 {
        let Ok(c) = cluster().new_tree(&mut runner).map(|t| t.current()) else {
            continue;
        };
        let ops = prop::collection::vec(benign.clone(), 400)
            .new_tree(&mut runner)
            .map(|t| t.current())
            .unwrap_or_default();
        let outcome = run(&c, &ops);
        let mut sim = match outcome {
            Ok(sim) => sim,
            Err(e) => panic!("{e}"),
        };
        // Whatever the chaos left outstanding, a recovery and time finish the shutdown.
        sim.slow_power_off = false;
        while let Some(ev) = sim.finish_power_off(0) {
            sim.deliver(&ev);
        }
        sim.deliver(&Event::Recovered);
        sim.run(6 * 3_600_000, |s| s.stage == Stage::Down);
        assert_eq!(sim.state.stage, Stage::Down, "{c:?}");
        for nv in sim.view.nodes.values_mut() {
            nv.online = true;
            nv.quorate = Some(true);
            nv.boot_id = Some("b1".into());
        }
        sim.deliver(&Event::Recovered);
        sim.deliver(&Event::StartUp { now_ms: sim.now_ms });
        sim.run(6 * 3_600_000, |s| s.stage == Stage::Finished);
        assert_eq!(sim.state.stage, Stage::Finished);
        let down: usize = sim
            .state
            .plan
            .guests
            .iter()
            .filter(|g| g.running || g.onboot)
            .count();
        let starts = sim
            .sends()
            .iter()
            .filter(|(_, a)| matches!(a, Action::GuestStart { .. }))
            .count();
        assert_eq!(starts, down);
    }
}
