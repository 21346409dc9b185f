//! Package list refreshes on the one driver ([`super`]): the [`crate::refresh`] machine
//! with its view (each node's session and latest report seq).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use super::{Effect, Handle, Machine};
use crate::operation::{Key, Wake};
use crate::refresh::{self, Command, Event, Notice, RefreshState, View};
use crate::state::Controller;
use fleetward_proto::action::Action as AgentAction;

/// The handle the operator API holds.
pub type Refreshes = Handle<RefreshMachine>;

/// Starts the refresh driver.
pub fn spawn(ctl: Arc<Controller>) -> Refreshes {
    let tick = Duration::from_millis(ctl.config().rollout.tick_ms);
    super::spawn(ctl, RefreshMachine, tick)
}

/// The refresh machine on the driver.
pub struct RefreshMachine;

impl Machine for RefreshMachine {
    const KIND: &'static str = "refresh";
    type Record = RefreshState;
    type Event = Event;
    type View = View;
    type Notice = Notice;

    fn id(r: &RefreshState) -> &str {
        &r.id
    }
    fn created_ms(r: &RefreshState) -> u64 {
        r.created_ms
    }
    fn finished(r: &RefreshState) -> bool {
        r.finished()
    }
    fn busy(r: &RefreshState) -> String {
        format!(
            "the package list refresh {} is running; it ends by itself (each node's `apt-get \
             update` is bounded): try again when it has",
            r.id
        )
    }
    fn clock(r: &mut RefreshState) -> &mut u64 {
        &mut r.now_ms
    }
    fn start(now_ms: u64) -> Event {
        Event::Start { now_ms }
    }
    fn wake(&self, _r: &RefreshState, w: Wake) -> Option<Event> {
        Some(Event::Wake(w))
    }
    fn outstanding(r: &RefreshState) -> Vec<Key> {
        r.nodes
            .iter()
            .filter(|n| n.phase == refresh::NodePhase::Updating)
            .map(|n| n.key.clone())
            .collect()
    }
    fn expected_online(&self, r: &RefreshState, _ctl: &Controller) -> Vec<String> {
        r.nodes.iter().map(|n| n.name.clone()).collect()
    }
    fn recover_grace_ms(&self, r: &RefreshState) -> u64 {
        r.timeout_ms
    }
    fn view(&self, _r: &RefreshState, ctl: &Controller, _: &BTreeSet<String>) -> View {
        ctl.store()
            .list_nodes()
            .unwrap_or_default()
            .into_iter()
            .map(|rec| {
                let v = refresh::NodeView {
                    online: ctl.is_online(&rec.name),
                    report_seq: ctl.latest(&rec.name).map_or(0, |(_, seq)| seq),
                };
                (rec.name, v)
            })
            .collect()
    }
    fn step(
        &self,
        r: &RefreshState,
        ev: &Event,
        view: &View,
    ) -> (RefreshState, Vec<Effect<Notice>>) {
        let (next, commands) = refresh::step(r, ev, view);
        let effects = commands
            .into_iter()
            .map(|c| match c {
                Command::AptUpdate { key, node } => Effect::Send {
                    key,
                    node,
                    action: AgentAction::AptUpdate,
                },
                Command::RequestRefresh { node } => Effect::Refresh { node },
                Command::Notify(n) => Effect::Notify(n),
            })
            .collect();
        (next, effects)
    }
    fn audited(n: &Notice) -> bool {
        !matches!(n, Notice::Started { .. })
    }
    fn refusal(_n: &Notice) -> Option<&str> {
        None
    }
}
