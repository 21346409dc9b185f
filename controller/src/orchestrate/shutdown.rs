//! Coordinated shutdowns and startups on the one driver ([`super`]): the shutdown machine
//! ([`crate::shutdown`]) with its journal record and its view of the cluster. A shutdown in
//! `Down` waits for `fleetward startup`; that persisted state carries everything the startup
//! needs, so a controller that was powered off with its host (the last node) resumes from it.
//!
//! # HA disarm support
//!
//! The report does not carry the pve-ha-manager version (the agent lists only boot
//! packages), so `[shutdown] ha_mode` decides: `disarm` (the operator knows every node runs
//! pve-ha-manager >= 5.1.3: one cluster-wide `disarm-ha freeze`), `maintenance` (per-node
//! maintenance mode, works on every version), or `auto` (the default): disarm when every
//! online node's report knows the disarm state (`facts.ha.disarmed` is set). Real agents
//! leave that unknown today, so on real nodes `auto` means maintenance mode; simulated
//! nodes report it and get the disarm path.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Effect, Handle, Machine};
use crate::clock::now_ms;
use crate::config::{Config as ControllerConfig, HaMode};
use crate::operation::{Key, Wake};
use crate::shutdown::{
    self, Command, Event, GuestView, NodeView, Notice, Plan, ShutdownState, ShutdownView, Stage,
    UpReason,
};
use crate::state::Controller;
use fleetward_proto::{GuestState, Report};

/// Id prefix of shutdowns in the store's `operations` tree.
pub const SHUTDOWN_PREFIX: &str = "shutdown-";

/// A shutdown as stored: the machine's state plus what only the driver knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shutdown {
    pub state: ShutdownState,
    pub created_ms: u64,
    /// Who started it (operator name, or `ups` for a power event).
    pub actor: String,
    /// The operation this shutdown preempted, and how its in-flight actions ended: the
    /// start writes it into the shutdown's event log (`preempted`).
    #[serde(default)]
    pub preempted: Option<String>,
}

impl Shutdown {
    pub fn new(plan: Plan, actor: String) -> Self {
        Shutdown {
            state: ShutdownState::new(plan),
            created_ms: now_ms(),
            actor,
            preempted: None,
        }
    }

    pub fn id(&self) -> &str {
        &self.state.plan.id
    }

    /// Cancelled and restored, or started up again. `Down` is not finished: it waits for
    /// `fleetward startup`.
    pub fn finished(&self) -> bool {
        self.state.stage == Stage::Finished
    }
}

/// The handle the shutdown API holds.
pub type Shutdowns = Handle<ShutdownMachine>;

/// One node as the shutdown machine sees it, from its latest report and its session.
pub fn node_view(
    report: Option<&Report>,
    online: bool,
    session_boot_id: Option<String>,
) -> NodeView {
    let Some(r) = report else {
        return NodeView {
            online,
            boot_id: session_boot_id,
            ..NodeView::default()
        };
    };
    let f = &r.facts;
    let guests = f
        .guests
        .iter()
        .filter(|g| g.state != GuestState::Migrated)
        .map(|g| GuestView {
            vmid: g.vmid,
            kind: g.kind,
            running: g.state == GuestState::Running,
            unknown: g.state == GuestState::Unknown,
            onboot: g.onboot,
            order: g.order,
            up: g.up.map(u64::from),
            down: g.down.map(u64::from),
            ha: g.ha,
        })
        .collect();
    let stale = matches!((&session_boot_id, &f.node.boot_id), (Some(s), Some(r)) if s != r);
    NodeView {
        online,
        stale,
        // The session's Hello is newer than any report after a reboot.
        boot_id: session_boot_id.or_else(|| f.node.boot_id.clone()),
        quorate: f.cluster.quorate,
        ceph_mon: f.ceph.as_ref().is_some_and(|c| c.monitor_here),
        ceph_osds: f.ceph.as_ref().is_some_and(|c| !c.osds_here.is_empty()),
        guests,
        observe_only: f.agent.observe_only,
        reported: true,
        ha_maintenance: f.ha.maintenance,
        ha_disarmed: f.ha.disarmed,
        noout: f.ceph.as_ref().and_then(|c| c.noout),
        lrm_watchdog: f.ha.lrm_watchdog,
        osds_up_in: f.ceph.as_ref().and_then(|c| c.osds).map(|o| o.all_up_in()),
    }
}

/// Whether the cluster-wide HA disarm is used (see the module docs).
pub fn ha_disarm_supported(mode: HaMode, online_reports: &[Option<&Report>]) -> bool {
    match mode {
        HaMode::Disarm => true,
        HaMode::Maintenance => false,
        HaMode::Auto => {
            !online_reports.is_empty()
                && online_reports
                    .iter()
                    .all(|r| r.is_some_and(|r| r.facts.ha.disarmed.is_some()))
        }
    }
}

/// The cluster as the controller sees it now: every enrolled, not revoked node.
pub fn view(ctl: &Controller) -> ShutdownView {
    let mut view = ShutdownView {
        now_ms: now_ms(),
        ..ShutdownView::default()
    };
    let nodes = match ctl.store().list_nodes() {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(error = %e, "cannot list nodes for the shutdown view");
            return view;
        }
    };
    let mut latest = Vec::new();
    for rec in nodes.into_iter().filter(|r| !r.revoked) {
        let online = ctl.is_online(&rec.name);
        let report = ctl.latest(&rec.name).map(|(r, _)| r);
        let boot = online.then(|| rec.boot_id.clone()).flatten();
        let mut nv = node_view(report.as_deref(), online, boot);
        // Where the report cannot tell `noout`, the OSD map the agent read after its noout
        // action (its OSD counts are not used: read before a reboot, they would be stale).
        if let Some(p) = ctl.ceph_probe(&rec.name) {
            nv.noout = nv.noout.or(Some(p.noout));
        }
        view.nodes.insert(rec.name.clone(), nv);
        if online {
            latest.push(report);
        }
    }
    let refs: Vec<Option<&Report>> = latest.iter().map(|r| r.as_deref()).collect();
    view.ha_disarm_supported = ha_disarm_supported(ctl.config().shutdown.ha_mode, &refs);
    view
}

/// The machine's configuration for a new plan.
pub fn plan_config(
    cfg: &ControllerConfig,
    reason: Option<String>,
    deadline_ms: Option<u64>,
) -> shutdown::Config {
    shutdown::Config {
        tiers: (!cfg.shutdown.tiers.is_empty()).then(|| cfg.shutdown.tiers.clone()),
        controller_host: cfg.host_node.clone(),
        deadline_ms,
        reason,
        timing: cfg.shutdown.timing.clone(),
    }
}

/// The nodes a restarted controller waits for before it steps the operation again: those
/// that should be up in the operation's current stage.
pub fn expected_nodes(s: &ShutdownState) -> Vec<String> {
    let plan = &s.plan;
    let members = plan
        .tiers
        .iter()
        .flatten()
        .filter(|n| !plan.offline.contains(n));
    match s.stage {
        Stage::Planned | Stage::Down | Stage::AwaitNodes | Stage::Finished => Vec::new(),
        Stage::StopGuests { .. }
        | Stage::DisarmHa
        | Stage::SetNoout
        | Stage::AwaitWatchdogs
        | Stage::PowerOff { .. } => members
            .filter(|n| s.last_sent(n, "power-off").is_none())
            .cloned()
            .collect(),
        Stage::UnsetNoout | Stage::ArmHa | Stage::StartGuests { .. } => members
            .filter(|n| !s.missing.contains(*n))
            .filter(|n| {
                s.up_reason == Some(UpReason::Startup) || s.last_sent(n, "power-off").is_none()
            })
            .cloned()
            .collect(),
    }
}

/// Starts the shutdown driver; it resumes an unfinished shutdown from the store first.
pub fn spawn(ctl: std::sync::Arc<Controller>) -> Shutdowns {
    let cfg = &ctl.config().shutdown;
    let machine = ShutdownMachine::new(cfg.recover_grace_ms);
    let tick = Duration::from_millis(cfg.tick_ms);
    super::spawn(ctl, machine, tick)
}

/// The shutdown machine on the driver.
pub struct ShutdownMachine {
    recover_grace_ms: u64,
}

impl ShutdownMachine {
    pub fn new(recover_grace_ms: u64) -> Self {
        ShutdownMachine { recover_grace_ms }
    }
}

impl Machine for ShutdownMachine {
    const KIND: &'static str = "shutdown";
    type Record = Shutdown;
    type Event = Event;
    type View = ShutdownView;
    type Notice = Notice;

    fn id(s: &Shutdown) -> &str {
        s.id()
    }
    fn created_ms(s: &Shutdown) -> u64 {
        s.created_ms
    }
    fn finished(s: &Shutdown) -> bool {
        s.finished()
    }
    fn busy(s: &Shutdown) -> String {
        let why = if s.state.stage == Stage::Down {
            "it powered the cluster off; run `fleetward startup` first"
        } else {
            "cancel it first, or wait for it"
        };
        format!(
            "shutdown {} is not finished (stage {}): {why}",
            s.id(),
            stage_word(s.state.stage)
        )
    }
    fn clock(s: &mut Shutdown) -> &mut u64 {
        &mut s.state.now_ms
    }
    fn start(now_ms: u64) -> Event {
        Event::Start { now_ms }
    }

    fn wake(&self, _s: &Shutdown, w: Wake) -> Option<Event> {
        Some(match w {
            Wake::Tick { now_ms } => Event::Tick { now_ms },
            Wake::NodeChanged { node } | Wake::NodeOffline { node } => Event::NodeChanged { node },
            Wake::CommandResult { key, ok, output } => Event::CommandResult { key, ok, output },
            Wake::Recovered => Event::Recovered,
        })
    }

    fn outstanding(s: &Shutdown) -> Vec<Key> {
        s.state.outstanding().map(|s| s.key.clone()).collect()
    }

    fn expected_online(&self, s: &Shutdown, _ctl: &Controller) -> Vec<String> {
        expected_nodes(&s.state)
    }

    fn recover_grace_ms(&self, _s: &Shutdown) -> u64 {
        self.recover_grace_ms
    }

    fn view(&self, _s: &Shutdown, ctl: &Controller, _: &BTreeSet<String>) -> ShutdownView {
        view(ctl)
    }

    fn step(
        &self,
        s: &Shutdown,
        ev: &Event,
        view: &ShutdownView,
    ) -> (Shutdown, Vec<Effect<Notice>>) {
        let (state, commands) = shutdown::step(&s.state, ev, view);
        let preempted = match (ev, &s.preempted) {
            (Event::Start { .. }, Some(detail)) => Some(Command::Notify(Notice::Preempted {
                detail: detail.clone(),
            })),
            _ => None,
        };
        let effects = preempted
            .into_iter()
            .chain(commands)
            .map(|c| match c {
                Command::SendAction { key, node, action } => Effect::Send { key, node, action },
                Command::Notify(n) => Effect::Notify(n),
            })
            .collect();
        let mut next = s.clone();
        next.state = state;
        (next, effects)
    }

    /// Stage changes are in the shutdown's own event log; the audit log gets the rest.
    fn audited(n: &Notice) -> bool {
        !matches!(n, Notice::Stage { .. })
    }

    fn refusal(n: &Notice) -> Option<&str> {
        match n {
            Notice::Refused { reason } => Some(reason),
            _ => None,
        }
    }
}

/// A stage in words, for messages: `stop-guests 2`, `power-off 1`, `down`.
pub fn stage_word(s: Stage) -> String {
    match s {
        Stage::Planned => "planned".into(),
        Stage::StopGuests { group } => format!("stop-guests {}", group + 1),
        Stage::DisarmHa => "disarm-ha".into(),
        Stage::SetNoout => "set-noout".into(),
        Stage::AwaitWatchdogs => "await-watchdogs".into(),
        Stage::PowerOff { tier } => format!("power-off tier {}", tier + 1),
        Stage::Down => "down".into(),
        Stage::AwaitNodes => "await-nodes".into(),
        Stage::UnsetNoout => "unset-noout".into(),
        Stage::ArmHa => "arm-ha".into(),
        Stage::StartGuests { group } => format!("start-guests {}", group + 1),
        Stage::Finished => "finished".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetward_proto::action::GuestKind;
    use fleetward_proto::{CephFacts, GuestFacts, HaFacts};

    fn report(disarmed: Option<bool>) -> Report {
        let mut r = Report {
            schema_version: fleetward_proto::SCHEMA_VERSION,
            facts: Default::default(),
            findings: vec![],
        };
        r.facts.node.boot_id = Some("boot-report".into());
        r.facts.cluster.quorate = Some(true);
        r.facts.ceph = Some(CephFacts {
            monitor_here: true,
            osds_here: vec![3],
            noout: None,
            healthy: None,
            osds: None,
        });
        r.facts.ha = HaFacts {
            disarmed,
            ..HaFacts::default()
        };
        let guest = |vmid, state| GuestFacts {
            vmid,
            kind: GuestKind::Qemu,
            name: None,
            onboot: true,
            order: Some(2),
            up: Some(30),
            down: Some(60),
            ha: false,
            state,
            location: None,
            config: None,
            ha_ignored: false,
        };
        r.facts.guests = vec![
            guest(100, GuestState::Running),
            guest(101, GuestState::Stopped),
            guest(102, GuestState::Migrated),
        ];
        r
    }

    #[test]
    fn node_view_maps_report_facts() {
        let r = report(Some(false));
        let v = node_view(Some(&r), true, Some("boot-hello".into()));
        assert!(v.online && v.ceph_mon && v.ceph_osds);
        assert_eq!(v.quorate, Some(true));
        assert_eq!(
            v.boot_id.as_deref(),
            Some("boot-hello"),
            "the session's boot id wins"
        );
        assert!(v.stale, "a report of the boot before the session's");
        let ids: Vec<(u32, bool)> = v.guests.iter().map(|g| (g.vmid, g.running)).collect();
        assert_eq!(
            ids,
            vec![(100, true), (101, false)],
            "migrated guests are not here"
        );
        assert_eq!((v.guests[0].up, v.guests[0].down), (Some(30), Some(60)));
        let v = node_view(Some(&r), false, None);
        assert_eq!(v.boot_id.as_deref(), Some("boot-report"));
        assert!(!v.stale);
        assert!(!node_view(Some(&r), true, Some("boot-report".into())).stale);
        let v = node_view(None, false, None);
        assert!(!v.online && v.guests.is_empty() && !v.ceph_osds);
    }

    #[test]
    fn ha_disarm_support_follows_the_mode_and_the_reports() {
        let known = report(Some(false));
        let unknown = report(None);
        assert!(ha_disarm_supported(
            HaMode::Auto,
            &[Some(&known), Some(&known)]
        ));
        assert!(!ha_disarm_supported(
            HaMode::Auto,
            &[Some(&known), Some(&unknown)]
        ));
        assert!(!ha_disarm_supported(HaMode::Auto, &[Some(&known), None]));
        assert!(!ha_disarm_supported(HaMode::Auto, &[]));
        assert!(ha_disarm_supported(HaMode::Disarm, &[Some(&unknown)]));
        assert!(!ha_disarm_supported(HaMode::Maintenance, &[Some(&known)]));
    }

    #[test]
    fn a_restarted_driver_waits_for_the_nodes_that_should_be_up() {
        let mut view = ShutdownView {
            ha_disarm_supported: true,
            ..Default::default()
        };
        for (n, mon) in [("a", false), ("b", true), ("c", false)] {
            let mut nv = node_view(Some(&report(Some(false))), n != "c", None);
            nv.ceph_mon = mon;
            view.nodes.insert(n.into(), nv);
        }
        let plan = Plan::new("shutdown-1", &view, &shutdown::Config::default(), 0).unwrap();
        let st = ShutdownState::new(plan);
        assert!(
            expected_nodes(&st).is_empty(),
            "planned: nothing to wait for"
        );
        let (st, _) = shutdown::step(&st, &Event::Start { now_ms: 1 }, &view);
        assert_eq!(expected_nodes(&st), vec!["a".to_string(), "b".to_string()]);
        let mut down = st.clone();
        down.stage = Stage::Down;
        assert!(expected_nodes(&down).is_empty());
    }

    /// The OSD map an agent read after its noout action is the view's `noout` where the
    /// node's report cannot tell; a report that tells wins.
    #[tokio::test]
    async fn the_probe_after_a_noout_action_tells_what_the_report_cannot() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path().join("db")).unwrap();
        let ca = fleetward_pki::Ca::generate("test").unwrap();
        let ctl = Controller::new(store, ca, ControllerConfig::new("test", None), None).unwrap();
        let rec = crate::store::NodeRecord::new("pve1", "01", u64::MAX, 0);
        ctl.store().upsert_node(&rec).unwrap();
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let _session = ctl.register("pve1", tx);
        assert_eq!(view(&ctl).nodes["pve1"].noout, None);
        let probe = |noout| crate::state::CephProbe {
            noout,
            osds: fleetward_proto::OsdCounts::default(),
        };
        ctl.record_ceph_probe("pve1", probe(true));
        assert_eq!(view(&ctl).nodes["pve1"].noout, Some(true));
        assert_eq!(
            super::super::rollout::cluster_view(&ctl, &BTreeSet::new()).nodes["pve1"].noout,
            Some(true)
        );
        ctl.record_ceph_probe("pve1", probe(false));
        assert_eq!(view(&ctl).nodes["pve1"].noout, Some(false));
    }
}
