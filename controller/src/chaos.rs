//! The one property-test harness of every orchestration machine: a simulated world
//! ([`Sim`]: the machine's state, its view, the events waiting to be delivered, agents that
//! execute each key at most once) and the perturbations every machine must survive
//! ([`Perturb`]: answers in any order, commands lost after the state was persisted, a
//! crash before persisting, duplicated events, a restart from the serialized state). The
//! harness steps the machine, checks the shared invariant of idempotency keys, hands each
//! step to the machine's own checker, and lets the agents act.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Debug;

use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::operation::Key;

/// A machine in its simulated world.
pub trait Sim {
    type State: Clone + PartialEq + Debug + Serialize + DeserializeOwned;
    type Event: Clone + PartialEq + Debug;
    type Command: Clone + Debug;
    /// `Recovered` may only re-send keys sent before, never a new one.
    const RECOVERED_ONLY_RESENDS: bool;

    /// The machine's step on this world's view.
    fn step(&self, s: &Self::State, e: &Self::Event) -> (Self::State, Vec<Self::Command>);
    fn state(&mut self) -> &mut Self::State;
    fn queue(&mut self) -> &mut VecDeque<Self::Event>;
    /// The agents act on a sent command; their answers join the queue.
    fn agent(&mut self, c: &Self::Command);
    /// Every command the machine emitted, sent or lost.
    fn emitted(&mut self, _cmds: &[Self::Command]) {}
    fn recovered() -> Self::Event;
    /// The key of a command covered by "a new key only after the previous one failed".
    fn guarded_key(c: &Self::Command) -> Option<&Key>;
    /// The key of a failed result.
    fn failed_key(e: &Self::Event) -> Option<&Key>;
}

/// The perturbations every machine must survive.
#[derive(Debug, Clone)]
pub enum Perturb {
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
}

pub fn perturb() -> impl Strategy<Value = Perturb> {
    prop_oneof![
        13 => any::<usize>().prop_map(Perturb::Deliver),
        2 => any::<usize>().prop_map(Perturb::DeliverLoseCommands),
        2 => any::<usize>().prop_map(Perturb::CrashBeforePersist),
        3 => any::<usize>().prop_map(Perturb::Duplicate),
        2 => Just(Perturb::Crash),
    ]
}

/// The machine's own invariants: `(world before the step, pre, event, post, commands)`.
pub type Check<'a, S> = dyn FnMut(
        &S,
        &<S as Sim>::State,
        &<S as Sim>::Event,
        &<S as Sim>::State,
        &[<S as Sim>::Command],
    ) -> Result<(), TestCaseError>
    + 'a;

/// Runs a machine through events and perturbations, checking after every step.
pub struct Harness<'a, S: Sim> {
    check: Box<Check<'a, S>>,
    history: Vec<S::Event>,
    /// Guarded keys ever emitted, per (node, step).
    keys: BTreeMap<(String, String), BTreeSet<Key>>,
    /// Keys the agents answered with a failure.
    failed: BTreeSet<Key>,
}

impl<'a, S: Sim> Harness<'a, S> {
    pub fn new(check: Box<Check<'a, S>>) -> Self {
        Harness {
            check,
            history: Vec::new(),
            keys: BTreeMap::new(),
            failed: BTreeSet::new(),
        }
    }

    /// Keys emitted so far (guarded ones), per (node, step).
    pub fn keys(&self) -> &BTreeMap<(String, String), BTreeSet<Key>> {
        &self.keys
    }

    /// One checked step; the agents act on its commands when `send`.
    pub fn step(&mut self, sim: &mut S, ev: &S::Event, send: bool) -> Result<(), TestCaseError> {
        let pre = sim.state().clone();
        let (post, cmds) = sim.step(&pre, ev);
        self.check_keys(ev, &cmds)?;
        (self.check)(sim, &pre, ev, &post, &cmds)?;
        *sim.state() = post;
        sim.emitted(&cmds);
        if send {
            for c in &cmds {
                sim.agent(c);
            }
        }
        for e in sim.queue().iter() {
            if let Some(k) = S::failed_key(e) {
                self.failed.insert(k.clone());
            }
        }
        Ok(())
    }

    /// A new key for a (node, step) only after every earlier one failed; `Recovered` only
    /// re-sends where the machine promises so.
    fn check_keys(&mut self, ev: &S::Event, cmds: &[S::Command]) -> Result<(), TestCaseError> {
        for key in cmds.iter().filter_map(S::guarded_key) {
            let known = self
                .keys
                .entry((key.node.clone(), key.step.clone()))
                .or_default();
            if known.contains(key) {
                continue;
            }
            if S::RECOVERED_ONLY_RESENDS {
                prop_assert!(*ev != S::recovered(), "Recovered emitted the new key {key}");
            }
            for k in known.iter() {
                prop_assert!(
                    self.failed.contains(k),
                    "{key} sent while {k} had not failed"
                );
            }
            known.insert(key.clone());
        }
        Ok(())
    }

    /// Delivers an event from outside the queue (an operator, the clock, a view change).
    pub fn deliver(&mut self, sim: &mut S, ev: S::Event) -> Result<(), TestCaseError> {
        self.step(sim, &ev, true)
    }

    pub fn perturb(&mut self, sim: &mut S, p: &Perturb) -> Result<(), TestCaseError> {
        match p {
            Perturb::Deliver(i)
            | Perturb::DeliverLoseCommands(i)
            | Perturb::CrashBeforePersist(i) => {
                let len = sim.queue().len();
                if len == 0 {
                    return Ok(());
                }
                let idx = i % len;
                if matches!(p, Perturb::CrashBeforePersist(_)) {
                    let ev = sim.queue()[idx].clone();
                    let state = sim.state().clone();
                    let _lost = sim.step(&state, &ev);
                    return self.step(sim, &S::recovered(), true);
                }
                let Some(ev) = sim.queue().remove(idx) else {
                    return Ok(());
                };
                let send = matches!(p, Perturb::Deliver(_));
                self.step(sim, &ev, send)?;
                self.history.push(ev);
                if !send {
                    self.step(sim, &S::recovered(), true)?;
                }
                Ok(())
            }
            Perturb::Duplicate(i) => {
                if self.history.is_empty() {
                    return Ok(());
                }
                let ev = self.history[i % self.history.len()].clone();
                self.step(sim, &ev, true)
            }
            Perturb::Crash => {
                let json = serde_json::to_string(sim.state())
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let back: S::State =
                    serde_json::from_str(&json).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(&back, sim.state());
                *sim.state() = back;
                self.step(sim, &S::recovered(), true)
            }
        }
    }
}
