//! Unit tests of the gates and scenario tests driven by a simulated agent.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::*;

pub(super) const OLD_KERNEL: &str = "6.8.12-1-pve";
pub(super) const NEW_KERNEL: &str = "6.8.12-4-pve";

pub(super) fn names(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("pve{i}")).collect()
}

pub(super) fn healthy_node(name: &str, expected_votes: u32) -> NodeView {
    NodeView {
        online: true,
        last_seen_age_ms: Some(1_000),
        report_seq: 1,
        boot_id: Some(format!("{name}-boot-0")),
        running_kernel: Some(OLD_KERNEL.into()),
        next_kernel: Some(OLD_KERNEL.into()),
        needs_reboot: false,
        esp_holds_next_kernel: true,
        quorate: Some(true),
        votes: Some(1),
        expected_votes: Some(expected_votes),
        error_findings: BTreeSet::new(),
        ceph_healthy: None,
        ceph_osds: false,
        running_guests: BTreeSet::new(),
        onboot_local_guests: BTreeSet::new(),
        observe_only: false,
        ha_maintenance: None,
        noout: None,
        ha_errors: Vec::new(),
        ha_errors_unknown: false,
        osds_up_in: None,
    }
}

pub(super) fn healthy_view(nodes: &[String]) -> ClusterView {
    let ev = u32::try_from(nodes.len()).unwrap_or(u32::MAX);
    ClusterView {
        nodes: nodes
            .iter()
            .map(|n| (n.clone(), healthy_node(n, ev)))
            .collect(),
        qdevice_votes: 0,
    }
}

pub(super) fn plan(n: usize, max_unavailable: usize) -> Plan {
    Plan::new(
        "r1",
        names(n),
        max_unavailable,
        None,
        RebootPolicy::IfNeeded,
    )
    .expect("valid plan")
}

/// A simulated agent fleet: executes each key at most once (remembering the result, as the
/// real agent's `commands.json` does) and changes the view the way the action would.
pub(super) struct Sim {
    pub state: RolloutState,
    pub view: ClusterView,
    /// Answers and reports waiting to be delivered to the machine.
    pub queue: VecDeque<Event>,
    /// The agent's memory: key → result.
    pub executed: BTreeMap<Key, bool>,
    /// Every command the machine emitted, in order.
    pub emitted: Vec<Command>,
    pub now_ms: u64,
    /// ESPs hold the new kernel right after the upgrade / after a boot refresh.
    pub esp_ok_after_upgrade: bool,
    pub esp_ok_after_refresh: bool,
    /// Nodes that never come back after a reboot.
    pub lost_on_reboot: BTreeSet<String>,
    /// The next executed action fails.
    pub fail_next: bool,
    /// Nodes currently between MaintenanceOn and MaintenanceOff as the agents see it.
    pub in_maintenance: BTreeSet<String>,
    pub max_in_maintenance: usize,
    /// Nodes that set `noout` since the last unset, and how many unsets were sent.
    pub noout_holders: BTreeSet<String>,
    pub noout_unsets: usize,
    /// Calls of `step`.
    pub steps: usize,
    /// Nodes whose HA manager ignores maintenance requests (answered ok, never entered).
    pub maintenance_ignored: BTreeSet<String>,
    /// `ceph osd set/unset noout` answers ok but the OSD map's flag never changes.
    pub noout_ignored: bool,
    /// Nodes whose OSDs read down (still in) after their reboot, until a test brings them up.
    pub osds_late: BTreeSet<String>,
}

impl Sim {
    pub fn new(plan: Plan, view: ClusterView) -> Self {
        Sim {
            state: RolloutState::new(plan),
            view,
            queue: VecDeque::new(),
            executed: BTreeMap::new(),
            emitted: Vec::new(),
            now_ms: 1_000_000,
            esp_ok_after_upgrade: true,
            esp_ok_after_refresh: true,
            lost_on_reboot: BTreeSet::new(),
            fail_next: false,
            in_maintenance: BTreeSet::new(),
            max_in_maintenance: 0,
            noout_holders: BTreeSet::new(),
            noout_unsets: 0,
            steps: 0,
            maintenance_ignored: BTreeSet::new(),
            noout_ignored: false,
            osds_late: BTreeSet::new(),
        }
    }

    /// The cluster-wide `noout` flag changes: every node whose report tells it reports it.
    fn report_noout(&mut self, on: bool) {
        if self.noout_ignored {
            return;
        }
        let knowing: Vec<String> = self
            .view
            .nodes
            .iter()
            .filter(|(_, nv)| nv.noout.is_some())
            .map(|(n, _)| n.clone())
            .collect();
        for n in knowing {
            if let Some(nv) = self.bump(&n) {
                nv.noout = Some(on);
            }
            self.queue.push_back(Event::NodeChanged { node: n });
        }
    }

    /// The node's OSDs come up (its next report says so).
    pub fn osds_up(&mut self, node: &str) {
        if let Some(nv) = self.bump(node) {
            nv.osds_up_in = Some(true);
        }
        self.queue.push_back(Event::NodeChanged {
            node: node.to_owned(),
        });
    }

    fn bump(&mut self, node: &str) -> Option<&mut NodeView> {
        let nv = self.view.nodes.get_mut(node)?;
        nv.report_seq += 1;
        Some(nv)
    }

    /// The agent side of one command.
    pub fn agent(&mut self, cmd: &Command) {
        match cmd {
            Command::SendAction { key, node, action } => {
                if let Some(ok) = self.executed.get(key) {
                    self.queue.push_back(Event::CommandResult {
                        key: key.clone(),
                        ok: *ok,
                        output: "already done".into(),
                    });
                    return;
                }
                let ok = !std::mem::take(&mut self.fail_next);
                self.executed.insert(key.clone(), ok);
                if ok {
                    self.execute(node, *action);
                }
                self.queue.push_back(Event::CommandResult {
                    key: key.clone(),
                    ok,
                    output: if ok {
                        "ok".into()
                    } else {
                        "E: simulated failure".into()
                    },
                });
            }
            Command::RequestRefresh { node } => {
                if self.view.nodes.get(node).is_some_and(|nv| nv.online) {
                    self.bump(node);
                    self.queue
                        .push_back(Event::NodeChanged { node: node.clone() });
                }
            }
            Command::Notify(_) => {}
        }
    }

    /// A node whose report tells HA maintenance reports the new state.
    fn report_maintenance(&mut self, node: &str, on: bool) {
        let known = self
            .view
            .nodes
            .get(node)
            .is_some_and(|nv| nv.ha_maintenance.is_some());
        if known {
            if let Some(nv) = self.bump(node) {
                nv.ha_maintenance = Some(on);
            }
            self.queue.push_back(Event::NodeChanged {
                node: node.to_owned(),
            });
        }
    }

    fn execute(&mut self, node: &str, action: Action) {
        let (esp_up, esp_ref) = (self.esp_ok_after_upgrade, self.esp_ok_after_refresh);
        let lost = self.lost_on_reboot.contains(node);
        let osds_late = self.osds_late.contains(node);
        match action {
            Action::MaintenanceOn => {
                self.in_maintenance.insert(node.to_owned());
                self.max_in_maintenance = self.max_in_maintenance.max(self.in_maintenance.len());
                if !self.maintenance_ignored.contains(node) {
                    self.report_maintenance(node, true);
                }
            }
            Action::MaintenanceOff => {
                self.in_maintenance.remove(node);
                self.report_maintenance(node, false);
            }
            Action::AptDistUpgrade => {
                if let Some(nv) = self.bump(node) {
                    nv.next_kernel = Some(NEW_KERNEL.into());
                    nv.needs_reboot = true;
                    nv.esp_holds_next_kernel = esp_up;
                }
            }
            Action::BootRefresh => {
                if let Some(nv) = self.bump(node) {
                    nv.esp_holds_next_kernel = esp_ref;
                }
            }
            Action::CephSetNoout => {
                self.noout_holders.insert(node.to_owned());
                self.report_noout(true);
            }
            Action::CephUnsetNoout => {
                self.noout_unsets += 1;
                self.noout_holders.clear();
                self.report_noout(false);
            }
            Action::Reboot => {
                if let Some(nv) = self.bump(node) {
                    if lost {
                        nv.online = false;
                    } else {
                        let n = nv.report_seq;
                        nv.boot_id = Some(format!("{node}-boot-{n}"));
                        nv.running_kernel = nv.next_kernel.clone();
                        nv.needs_reboot = false;
                        if osds_late {
                            nv.osds_up_in = Some(false);
                        }
                    }
                }
                if !lost {
                    self.queue.push_back(Event::NodeChanged {
                        node: node.to_owned(),
                    });
                }
            }
            Action::WaitGuestsMigrated | Action::AptUpdate => {}
        }
    }

    /// One step of the machine; the agent sees the commands.
    pub fn deliver(&mut self, event: &Event) -> Vec<Command> {
        let (s, cmds) = step(&self.state, event, &self.view);
        self.steps += 1;
        self.state = s;
        for c in &cmds {
            self.agent(c);
        }
        self.emitted.extend(cmds.iter().cloned());
        cmds
    }

    /// Start, then deliver queued events (ticking when idle) until the rollout stops moving.
    pub fn run(&mut self, max_events: usize) {
        self.deliver(&Event::Start);
        for _ in 0..max_events {
            if !matches!(self.state.status, Status::Running | Status::Paused) {
                return;
            }
            let ev = match self.queue.pop_front() {
                Some(ev) => ev,
                None => {
                    self.now_ms += 60_000;
                    Event::Tick {
                        now_ms: self.now_ms,
                    }
                }
            };
            self.deliver(&ev);
            assert!(self.state.in_flight().count() <= self.state.plan.max_unavailable);
        }
    }

    pub fn actions_for(&self, node: &str, action: Action) -> Vec<Key> {
        self.emitted
            .iter()
            .filter_map(|c| match c {
                Command::SendAction {
                    key,
                    node: n,
                    action: a,
                } if n == node && *a == action => Some(key.clone()),
                _ => None,
            })
            .collect()
    }
}

fn halted(state: &RolloutState) -> Option<(&str, Gate)> {
    match &state.status {
        Status::Halted { node, gate, .. } => Some((node.as_str(), *gate)),
        _ => None,
    }
}

/// The reason of a halted rollout.
fn halt_reason(state: &RolloutState) -> &str {
    match &state.status {
        Status::Halted { reason, .. } => reason,
        s => panic!("not halted: {s:?}"),
    }
}

// ---- gates -----------------------------------------------------------------------------

#[test]
fn quorum_margin_counts_remaining_votes() {
    let view = healthy_view(&names(3));
    let none = BTreeSet::new();
    assert!(quorum_margin(&view, "pve1", &none).is_ok());
    // Two of three out: one vote left of two needed.
    let out: BTreeSet<String> = ["pve2".to_owned()].into();
    let err = quorum_margin(&view, "pve1", &out).unwrap_err();
    assert_eq!(err.gate, Gate::Quorum);
    // Two-node cluster without a QDevice has no spare vote; with one it has.
    let mut two = healthy_view(&names(2));
    assert!(quorum_margin(&two, "pve1", &none).is_err());
    two.qdevice_votes = 1;
    assert!(quorum_margin(&two, "pve1", &none).is_ok());
}

#[test]
fn quorum_margin_refuses_unknown_or_inquorate() {
    let mut view = healthy_view(&names(3));
    let none = BTreeSet::new();
    if let Some(nv) = view.nodes.get_mut("pve3") {
        nv.quorate = Some(false);
    }
    assert!(quorum_margin(&view, "pve1", &none).is_err());
    let mut view = healthy_view(&names(3));
    if let Some(nv) = view.nodes.get_mut("pve2") {
        nv.votes = None;
    }
    assert!(quorum_margin(&view, "pve1", &none).is_err());
    // An offline member's vote does not count: 5 nodes, 2 offline, taking a third leaves 2/3.
    let mut view = healthy_view(&names(5));
    for n in ["pve4", "pve5"] {
        if let Some(nv) = view.nodes.get_mut(n) {
            nv.online = false;
        }
    }
    assert!(quorum_margin(&view, "pve1", &none).is_err());
}

#[test]
fn others_online_and_reachable() {
    let mut view = healthy_view(&names(3));
    let none = BTreeSet::new();
    assert!(others_online(&view, "pve1", &none, 120_000).is_ok());
    if let Some(nv) = view.nodes.get_mut("pve3") {
        nv.last_seen_age_ms = Some(600_000);
    }
    assert_eq!(
        others_online(&view, "pve1", &none, 120_000)
            .unwrap_err()
            .gate,
        Gate::NodesOnline
    );
    // A node already out (rebooting in a wider rollout) is not required online.
    let out: BTreeSet<String> = ["pve3".to_owned()].into();
    assert!(others_online(&view, "pve1", &out, 120_000).is_ok());
    assert!(node_reachable(&view, "pve3", 120_000).is_err());
    assert!(node_reachable(&view, "nope", 120_000).is_err());
}

#[test]
fn unsafe_findings_block_and_others_do_not() {
    let mut view = healthy_view(&names(3));
    for (code, blocks) in [
        ("boot.esp-diverged", true),
        ("boot.esp-kernel-missing", true),
        ("boot.kernel-hook-missing", true),
        ("apt.parse-error", true),
        ("apt.duplicate", false),
        ("apt.suite-mismatch", true),
        ("dns.resolver-unreachable", false),
        ("boot.kernel-pinned", false),
    ] {
        if let Some(nv) = view.nodes.get_mut("pve1") {
            nv.error_findings = [code.to_owned()].into();
        }
        assert_eq!(no_unsafe_findings(&view, "pve1").is_err(), blocks, "{code}");
    }
}

#[test]
fn ceph_and_esp_gates() {
    let mut view = healthy_view(&names(3));
    assert!(ceph_healthy(&view).is_ok());
    if let Some(nv) = view.nodes.get_mut("pve2") {
        nv.ceph_healthy = Some(false);
    }
    assert_eq!(ceph_healthy(&view).unwrap_err().gate, Gate::Ceph);
    assert!(esp_holds_next_kernel(&view, "pve1").is_ok());
    if let Some(nv) = view.nodes.get_mut("pve1") {
        nv.esp_holds_next_kernel = false;
    }
    assert_eq!(
        esp_holds_next_kernel(&view, "pve1").unwrap_err().gate,
        Gate::EspHoldsKernel
    );
}

#[test]
fn post_reboot_gate() {
    let mut nv = healthy_node("pve1", 3);
    let base = BTreeSet::new();
    let none = BTreeSet::new();
    assert!(post_reboot(&nv, "pve1", Some(OLD_KERNEL), &base, &none).is_ok());
    let guests: BTreeSet<u32> = [101, 102].into();
    nv.running_guests = [101].into();
    assert_eq!(
        post_reboot(&nv, "pve1", Some(OLD_KERNEL), &base, &guests)
            .unwrap_err()
            .gate,
        Gate::GuestsReturned
    );
    nv.running_guests = [101, 102, 103].into();
    assert!(post_reboot(&nv, "pve1", Some(OLD_KERNEL), &base, &guests).is_ok());
    assert_eq!(
        post_reboot(&nv, "pve1", Some(NEW_KERNEL), &base, &none)
            .unwrap_err()
            .gate,
        Gate::RunningKernel
    );
    nv.error_findings.insert("cluster.not-quorate".into());
    assert_eq!(
        post_reboot(&nv, "pve1", Some(OLD_KERNEL), &base, &none)
            .unwrap_err()
            .gate,
        Gate::NewFindings
    );
    let base: BTreeSet<String> = ["cluster.not-quorate".to_owned()].into();
    assert!(post_reboot(&nv, "pve1", Some(OLD_KERNEL), &base, &none).is_ok());
    nv.quorate = None;
    assert_eq!(
        post_reboot(&nv, "pve1", Some(OLD_KERNEL), &base, &none)
            .unwrap_err()
            .gate,
        Gate::Quorum
    );
}

#[test]
fn plan_validation_and_controller_last() {
    let p = Plan::new(
        "r",
        names(3),
        1,
        Some("pve1".into()),
        RebootPolicy::IfNeeded,
    )
    .expect("valid");
    assert_eq!(p.nodes, vec!["pve2", "pve3", "pve1"]);
    assert_eq!(
        Plan::new("r", vec![], 1, None, RebootPolicy::IfNeeded),
        Err(PlanError::NoNodes)
    );
    assert_eq!(
        Plan::new("r", names(2), 0, None, RebootPolicy::IfNeeded),
        Err(PlanError::ZeroMaxUnavailable)
    );
    let dup = vec!["a".to_owned(), "a".to_owned()];
    assert_eq!(
        Plan::new("r", dup, 1, None, RebootPolicy::IfNeeded),
        Err(PlanError::Duplicate("a".into()))
    );
}

// ---- scenarios -------------------------------------------------------------------------

#[test]
fn happy_path_three_nodes() {
    let mut sim = Sim::new(plan(3, 1), healthy_view(&names(3)));
    sim.run(1_000);
    assert_eq!(
        sim.state.status,
        Status::Completed,
        "{:?}",
        sim.state.status
    );
    assert_eq!(sim.max_in_maintenance, 1);
    assert!(sim.in_maintenance.is_empty());
    for n in names(3) {
        let nv = &sim.view.nodes[&n];
        assert_eq!(nv.running_kernel.as_deref(), Some(NEW_KERNEL));
        assert_ne!(nv.boot_id, Some(format!("{n}-boot-0")));
        assert_eq!(sim.actions_for(&n, Action::AptDistUpgrade).len(), 1);
        assert_eq!(sim.actions_for(&n, Action::Reboot).len(), 1);
        assert_eq!(sim.state.node(&n).map(|s| s.phase), Some(Phase::Done));
    }
    // Strict order: every action of pve2 comes after pve1's maintenance-off.
    let order: Vec<&str> = sim
        .emitted
        .iter()
        .filter_map(|c| match c {
            Command::SendAction { node, .. } => Some(node.as_str()),
            _ => None,
        })
        .collect();
    let mut seen_done = Vec::new();
    for w in order.windows(2) {
        if w[0] != w[1] {
            assert!(!seen_done.contains(&w[1]), "went back to {}", w[1]);
            seen_done.push(w[0]);
        }
    }
}

#[test]
fn no_reboot_when_not_needed() {
    let mut p = plan(3, 1);
    p.reboot_policy = RebootPolicy::Never;
    let mut sim = Sim::new(p, healthy_view(&names(3)));
    sim.run(1_000);
    assert_eq!(sim.state.status, Status::Completed);
    for n in names(3) {
        assert!(sim.actions_for(&n, Action::Reboot).is_empty());
    }
}

#[test]
fn esp_missing_kernel_after_refresh_halts_without_reboot() {
    let mut sim = Sim::new(plan(3, 1), healthy_view(&names(3)));
    sim.esp_ok_after_upgrade = false;
    sim.esp_ok_after_refresh = false;
    sim.run(1_000);
    assert_eq!(halted(&sim.state), Some(("pve1", Gate::EspHoldsKernel)));
    assert_eq!(sim.actions_for("pve1", Action::BootRefresh).len(), 1);
    assert!(sim.actions_for("pve1", Action::Reboot).is_empty());
    assert!(sim.actions_for("pve2", Action::MaintenanceOn).is_empty());
}

#[test]
fn esp_fixed_by_one_refresh_continues() {
    let mut sim = Sim::new(plan(3, 1), healthy_view(&names(3)));
    sim.esp_ok_after_upgrade = false;
    sim.run(1_000);
    assert_eq!(sim.state.status, Status::Completed);
    assert_eq!(sim.actions_for("pve2", Action::BootRefresh).len(), 1);
}

#[test]
fn not_quorate_nothing_starts() {
    let mut view = healthy_view(&names(3));
    for nv in view.nodes.values_mut() {
        nv.quorate = Some(false);
    }
    let mut sim = Sim::new(plan(3, 1), view);
    sim.run(100);
    assert_eq!(halted(&sim.state), Some(("pve1", Gate::Quorum)));
    assert!(!sim
        .emitted
        .iter()
        .any(|c| matches!(c, Command::SendAction { .. })));
}

#[test]
fn a_node_offline_nothing_starts() {
    let mut view = healthy_view(&names(3));
    if let Some(nv) = view.nodes.get_mut("pve3") {
        nv.online = false;
    }
    let mut sim = Sim::new(plan(3, 1), view);
    sim.run(100);
    assert_eq!(halted(&sim.state), Some(("pve1", Gate::NodesOnline)));
    assert!(!sim
        .emitted
        .iter()
        .any(|c| matches!(c, Command::SendAction { .. })));
}

#[test]
fn agent_not_returning_halts_and_next_node_untouched() {
    let mut sim = Sim::new(plan(3, 1), healthy_view(&names(3)));
    sim.lost_on_reboot.insert("pve1".into());
    sim.run(1_000);
    assert_eq!(halted(&sim.state), Some(("pve1", Gate::RebootReturn)));
    assert!(!sim
        .emitted
        .iter()
        .any(|c| matches!(c, Command::SendAction { node, .. } if node != "pve1")));
}

#[test]
fn node_offline_during_turn_halts() {
    let mut sim = Sim::new(plan(3, 1), healthy_view(&names(3)));
    sim.deliver(&Event::Start);
    assert_eq!(
        sim.state.node("pve1").map(|n| n.phase),
        Some(Phase::MaintenanceOn)
    );
    if let Some(nv) = sim.view.nodes.get_mut("pve1") {
        nv.online = false;
    }
    sim.deliver(&Event::NodeOffline {
        node: "pve1".into(),
    });
    assert_eq!(halted(&sim.state), Some(("pve1", Gate::NodeReachable)));
    // Its answer still arrives; it is recorded, but nothing new is sent.
    let ev = sim.queue.pop_front().expect("maintenance-on answer");
    let cmds = sim.deliver(&ev);
    assert!(!cmds.iter().any(|c| matches!(c, Command::SendAction { .. })));
}

#[test]
fn duplicates_and_recovery_reuse_keys() {
    let mut sim = Sim::new(plan(3, 1), healthy_view(&names(3)));
    let cmds = sim.deliver(&Event::Start);
    let first = cmds
        .iter()
        .find_map(|c| match c {
            Command::SendAction { key, .. } => Some(key.clone()),
            _ => None,
        })
        .expect("maintenance-on sent");
    // Crash: the persisted state comes back, outstanding command re-sent with the same key.
    let json = serde_json::to_string(&sim.state).expect("serialize");
    sim.state = serde_json::from_str(&json).expect("deserialize");
    let again = sim.deliver(&Event::Recovered);
    assert!(again
        .iter()
        .any(|c| matches!(c, Command::SendAction { key, .. } if *key == first)));
    // The agent answers twice (once per delivery); the second answer changes nothing.
    let a = sim.queue.pop_front().expect("answer");
    sim.deliver(&a);
    let before = sim.state.clone();
    let b = sim.queue.pop_front().expect("duplicate answer");
    let cmds = sim.deliver(&b);
    assert_eq!(sim.state, before);
    assert!(cmds.is_empty());
    sim.queue.clear();
    sim.queue.push_back(Event::CommandResult {
        key: sim
            .state
            .node("pve1")
            .and_then(|n| n.pending.as_ref())
            .map(|p| p.key.clone())
            .expect("pending"),
        ok: true,
        output: String::new(),
    });
    sim.run(1_000);
    assert_eq!(sim.state.status, Status::Completed);
}

#[test]
fn failed_action_halts_and_resume_retries_with_new_attempt() {
    let mut sim = Sim::new(plan(3, 1), healthy_view(&names(3)));
    sim.deliver(&Event::Start);
    // maintenance-on ok, wait-guests ok; apt-update's answer makes it send the upgrade,
    // which fails.
    for _ in 0..2 {
        let ev = sim.queue.pop_front().expect("answer");
        sim.deliver(&ev);
    }
    sim.fail_next = true;
    let ev = sim.queue.pop_front().expect("apt-update answer");
    sim.deliver(&ev);
    let ev = sim.queue.pop_front().expect("failure");
    sim.deliver(&ev);
    assert_eq!(halted(&sim.state), Some(("pve1", Gate::CommandFailed)));
    assert_eq!(
        sim.state.node("pve1").map(|n| n.phase),
        Some(Phase::Upgrade)
    );
    sim.deliver(&Event::Resume);
    sim.run(1_000);
    assert_eq!(
        sim.state.status,
        Status::Completed,
        "{:?}",
        sim.state.status
    );
    let keys = sim.actions_for("pve1", Action::AptDistUpgrade);
    let attempts: BTreeSet<u32> = keys.iter().map(|k| k.attempt).collect();
    assert_eq!(attempts, [1, 2].into());
}

#[test]
fn skip_only_pending_nodes() {
    let mut sim = Sim::new(plan(3, 1), healthy_view(&names(3)));
    sim.deliver(&Event::Start);
    let cmds = sim.deliver(&Event::Skip {
        node: "pve1".into(),
    });
    assert!(cmds
        .iter()
        .any(|c| matches!(c, Command::Notify(Notice::Refused { .. }))));
    sim.deliver(&Event::Skip {
        node: "pve2".into(),
    });
    sim.run(1_000);
    assert_eq!(sim.state.status, Status::Completed);
    assert!(sim.actions_for("pve2", Action::MaintenanceOn).is_empty());
    assert_eq!(
        sim.state.node("pve2").map(|n| n.phase),
        Some(Phase::Skipped)
    );
}

#[test]
fn pause_lets_current_node_finish_and_starts_nothing() {
    let mut sim = Sim::new(plan(3, 1), healthy_view(&names(3)));
    sim.deliver(&Event::Start);
    sim.deliver(&Event::Pause);
    while let Some(ev) = sim.queue.pop_front() {
        sim.deliver(&ev);
    }
    assert_eq!(sim.state.status, Status::Paused);
    assert_eq!(sim.state.node("pve1").map(|n| n.phase), Some(Phase::Done));
    assert_eq!(
        sim.state.node("pve2").map(|n| n.phase),
        Some(Phase::Pending)
    );
    sim.deliver(&Event::Resume);
    sim.run(1_000);
    assert_eq!(sim.state.status, Status::Completed);
}

#[test]
fn controller_host_goes_last_and_alone() {
    let p = Plan::new(
        "r",
        names(5),
        2,
        Some("pve1".into()),
        RebootPolicy::IfNeeded,
    )
    .expect("valid");
    let mut sim = Sim::new(p, healthy_view(&names(5)));
    sim.run(5_000);
    assert_eq!(sim.state.status, Status::Completed);
    let first_pve1 = sim
        .emitted
        .iter()
        .position(|c| matches!(c, Command::SendAction { node, .. } if node == "pve1"))
        .expect("pve1 updated");
    let last_other = sim
        .emitted
        .iter()
        .rposition(|c| matches!(c, Command::SendAction { node, .. } if node != "pve1"))
        .expect("others updated");
    assert!(last_other < first_pve1);
}

/// 50 nodes, five at a time: never more than five out. Also prints the mean `step` time; the
/// real benchmark (controller overhead between nodes, < 200 ms) belongs to the driver.
#[test]
fn fifty_nodes_five_at_a_time() {
    let mut p = plan(50, 5);
    p.id = "r50".into();
    let mut sim = Sim::new(p, healthy_view(&names(50)));
    let started = std::time::Instant::now();
    sim.run(50_000);
    let elapsed = started.elapsed();
    assert_eq!(sim.state.status, Status::Completed);
    assert_eq!(sim.max_in_maintenance, 5);
    let steps = sim.steps.max(1);
    eprintln!(
        "rollout: 50 nodes, {steps} steps, {} commands, mean step {:?} (includes the simulator)",
        sim.emitted.len(),
        elapsed / u32::try_from(steps).unwrap_or(u32::MAX)
    );
}

#[test]
fn osd_nodes_reboot_inside_noout_and_the_last_one_back_unsets_it() {
    let nodes = names(5);
    let mut sim = Sim::new(plan(5, 2), healthy_view(&nodes));
    for n in &nodes[..4] {
        let nv = sim.view.nodes.get_mut(n).unwrap();
        nv.ceph_osds = true;
        nv.ceph_healthy = Some(true);
    }
    sim.run(5_000);
    assert_eq!(
        sim.state.status,
        Status::Completed,
        "{:?}",
        sim.state.status
    );
    let sent = |n: &str| -> Vec<Action> {
        sim.emitted
            .iter()
            .filter_map(|c| match c {
                Command::SendAction { node, action, .. } if node == n => Some(*action),
                _ => None,
            })
            .collect()
    };
    for n in &nodes[..4] {
        let mine = sent(n);
        let set = mine.iter().position(|a| *a == Action::CephSetNoout);
        let reboot = mine.iter().position(|a| *a == Action::Reboot);
        assert!(
            set.is_some() && set < reboot,
            "{n}: noout before the reboot: {mine:?}"
        );
    }
    assert!(
        !sent("pve5").contains(&Action::CephSetNoout),
        "no OSDs, no noout"
    );
    assert!(
        sim.noout_holders.is_empty(),
        "noout left set by {:?}",
        sim.noout_holders
    );
    assert!(sim.noout_unsets >= 1);
}

#[test]
fn phase_names_are_the_serialized_names() {
    for p in [
        Phase::Pending,
        Phase::MaintenanceOn,
        Phase::WaitGuests,
        Phase::AptUpdate,
        Phase::Upgrade,
        Phase::BootCheck,
        Phase::BootRefresh,
        Phase::CephNoout,
        Phase::AwaitReturn,
        Phase::PostRebootGate,
        Phase::CephUnset,
        Phase::MaintenanceOff,
        Phase::Done,
        Phase::Skipped,
    ] {
        assert_eq!(serde_json::to_value(p).unwrap(), p.name());
    }
}

/// The actions a step sent, as `node/action`.
fn sent_actions(cmds: &[Command]) -> Vec<String> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::SendAction { node, action, .. } => Some(format!("{node}/{}", action.as_str())),
            _ => None,
        })
        .collect()
}

fn ok_result(s: &RolloutState, node: &str) -> Event {
    let key = s.node(node).unwrap().pending.as_ref().unwrap().key.clone();
    Event::CommandResult {
        key,
        ok: true,
        output: String::new(),
    }
}

#[test]
fn a_preempted_rollout_sends_nothing_new_takes_results_in_and_cannot_resume() {
    let view = healthy_view(&names(3));
    let s = RolloutState::new(plan(3, 1));
    let (s, cmds) = step(&s, &Event::Start, &view);
    assert_eq!(sent_actions(&cmds), vec!["pve1/maintenance-on"]);
    let by = "a shutdown started by op".to_string();
    let (s, cmds) = step(&s, &Event::Preempt { by }, &view);
    assert!(sent_actions(&cmds).is_empty());
    assert!(matches!(
        &s.status,
        Status::Halted {
            gate: Gate::Preempted,
            ..
        }
    ));
    // The in-flight action answers: taken in, and nothing follows it.
    let (s, cmds) = step(&s, &ok_result(&s, "pve1"), &view);
    assert!(sent_actions(&cmds).is_empty(), "{cmds:?}");
    assert_eq!(s.node("pve1").unwrap().phase, Phase::WaitGuests);
    assert!(s.node("pve1").unwrap().pending.is_none());
    for ev in [
        Event::Tick {
            now_ms: u64::MAX / 2,
        },
        Event::Recovered,
    ] {
        let (_, cmds) = step(&s, &ev, &view);
        assert!(sent_actions(&cmds).is_empty(), "{ev:?}: {cmds:?}");
    }
    let (s, cmds) = step(&s, &Event::Resume, &view);
    assert!(cmds
        .iter()
        .any(|c| matches!(c, Command::Notify(Notice::Refused { .. }))));
    assert!(sent_actions(&cmds).is_empty());
    let (s, _) = step(&s, &Event::Abort, &view);
    assert_eq!(s.status, Status::Aborted);
    assert_eq!(s.left_changed(), vec!["pve1".to_string()]);
}

#[test]
fn abort_restore_waits_for_the_action_in_flight_then_brings_the_node_back() {
    let view = healthy_view(&names(3));
    let s = RolloutState::new(plan(3, 1));
    let (s, _) = step(&s, &Event::Start, &view);
    let (s, cmds) = step(&s, &ok_result(&s, "pve1"), &view);
    assert_eq!(sent_actions(&cmds), vec!["pve1/wait-guests-migrated"]);
    let (s, cmds) = step(&s, &Event::AbortRestore, &view);
    assert_eq!(
        sent_actions(&cmds),
        vec!["pve1/wait-guests-migrated"],
        "the action in flight is waited for (re-sent under its key, nothing new)"
    );
    assert!(cmds.iter().any(|c| matches!(
        c,
        Command::Notify(Notice::Restoring { nodes }) if nodes == &vec!["pve1".to_string()]
    )));
    let (s, cmds) = step(&s, &ok_result(&s, "pve1"), &view);
    assert_eq!(sent_actions(&cmds), vec!["pve1/maintenance-off"]);
    let (s, cmds) = step(&s, &ok_result(&s, "pve1"), &view);
    assert!(
        sent_actions(&cmds).is_empty(),
        "pve2 never starts: {cmds:?}"
    );
    assert_eq!(s.status, Status::Aborted);
    assert!(s.left_changed().is_empty());
    assert_eq!(s.node("pve2").unwrap().phase, Phase::Pending);
    assert!(cmds
        .iter()
        .any(|c| matches!(c, Command::Notify(Notice::Restored))));
}

#[test]
fn abort_restore_unsets_the_noout_a_node_set_before_maintenance_off() {
    let mut view = healthy_view(&names(3));
    view.nodes.get_mut("pve1").unwrap().ceph_osds = true;
    let s = RolloutState::new(plan(3, 1));
    let (mut s, _) = step(&s, &Event::Start, &view);
    // Between its `ceph osd set noout` and the reboot, halted there.
    s.nodes[0].phase = Phase::AwaitReturn;
    s.nodes[0].pending = None;
    s.status = Status::Halted {
        node: "pve1".into(),
        gate: Gate::Quorum,
        reason: "test".into(),
    };
    let (s, cmds) = step(&s, &Event::AbortRestore, &view);
    assert_eq!(sent_actions(&cmds), vec!["pve1/ceph-unset-noout"]);
    let (s, cmds) = step(&s, &ok_result(&s, "pve1"), &view);
    assert_eq!(sent_actions(&cmds), vec!["pve1/maintenance-off"]);
    let (s, _) = step(&s, &ok_result(&s, "pve1"), &view);
    assert_eq!(s.status, Status::Aborted);
}

/// `ha-manager crm-command node-maintenance enable` exits 0 and only queues the request: the
/// node is in maintenance when its report says so. Observed: the rollout goes on; never
/// observed: it halts at the phase's bound, naming node, step and reason.
#[test]
fn maintenance_is_done_when_the_report_shows_it() {
    let mut view = healthy_view(&names(3));
    for nv in view.nodes.values_mut() {
        nv.ha_maintenance = Some(false);
    }
    let mut sim = Sim::new(plan(3, 1), view.clone());
    sim.run(1_000);
    assert_eq!(
        sim.state.status,
        Status::Completed,
        "{:?}",
        sim.state.status
    );
    assert!(sim
        .view
        .nodes
        .values()
        .all(|n| n.ha_maintenance == Some(false)));

    let mut sim = Sim::new(plan(3, 1), view);
    sim.maintenance_ignored.insert("pve1".into());
    sim.run(1_000);
    assert_eq!(halted(&sim.state), Some(("pve1", Gate::CommandTimeout)));
    let reason = halt_reason(&sim.state);
    assert!(reason.contains("never observed"), "{reason}");
    assert!(sim
        .actions_for("pve1", Action::WaitGuestsMigrated)
        .is_empty());
    assert!(sim.actions_for("pve2", Action::MaintenanceOn).is_empty());
}

/// An HA resource in state `error` on the node halts the rollout at the wait for migration,
/// naming it: HA will not move it, so the reboot would stop it unannounced. The rest of the
/// cluster is not touched.
#[test]
fn an_ha_resource_in_error_halts_at_the_wait_naming_it() {
    let mut view = healthy_view(&names(3));
    view.nodes.get_mut("pve1").unwrap().ha_errors = vec!["vm:101".into()];
    let mut sim = Sim::new(plan(3, 1), view);
    sim.run(1_000);
    assert_eq!(halted(&sim.state), Some(("pve1", Gate::HaResourceError)));
    let reason = halt_reason(&sim.state);
    assert!(
        reason.contains("vm:101") && reason.contains("state error"),
        "{reason}"
    );
    assert_eq!(sim.state.node("pve1").unwrap().phase, Phase::WaitGuests);
    assert!(sim.actions_for("pve1", Action::AptUpdate).is_empty());
    assert!(sim.actions_for("pve2", Action::MaintenanceOn).is_empty());

    // The error appears while the wait runs: its answer does not move the node on either.
    let mut view = healthy_view(&names(3));
    let s = RolloutState::new(plan(3, 1));
    let (s, cmds) = step(&s, &Event::Start, &view);
    assert_eq!(sent_actions(&cmds), vec!["pve1/maintenance-on"]);
    let (s, cmds) = step(&s, &ok_result(&s, "pve1"), &view);
    assert_eq!(sent_actions(&cmds), vec!["pve1/wait-guests-migrated"]);
    view.nodes.get_mut("pve1").unwrap().ha_errors = vec!["ct:200".into(), "vm:101".into()];
    let (s, _) = step(&s, &ok_result(&s, "pve1"), &view);
    assert_eq!(halted(&s), Some(("pve1", Gate::HaResourceError)));
    assert_eq!(s.node("pve1").unwrap().phase, Phase::WaitGuests);

    // A report that cannot read manager_status cannot tell: unknown is not "no errors".
    let mut view = healthy_view(&names(3));
    view.nodes.get_mut("pve1").unwrap().ha_errors_unknown = true;
    let mut sim = Sim::new(plan(3, 1), view);
    sim.run(1_000);
    assert_eq!(halted(&sim.state), Some(("pve1", Gate::HaResourceError)));
    let reason = halt_reason(&sim.state);
    assert!(
        reason.contains("cannot read /etc/pve/ha/manager_status"),
        "{reason}"
    );
    assert_eq!(sim.state.node("pve1").unwrap().phase, Phase::WaitGuests);
    assert!(sim.actions_for("pve1", Action::AptUpdate).is_empty());
}

/// A Ceph view: `osd` nodes hold OSDs, every node's report reads `noout` (clear) and its
/// OSDs (all up and in).
fn ceph_view(n: usize, osd: &[&str]) -> ClusterView {
    let mut view = healthy_view(&names(n));
    for (name, nv) in view.nodes.iter_mut() {
        nv.ceph_healthy = Some(true);
        nv.noout = Some(false);
        nv.osds_up_in = Some(true);
        nv.ceph_osds = osd.contains(&name.as_str());
    }
    view
}

/// `ceph osd set noout` is done when the OSD map shows the flag, not on exit 0: the reboot
/// waits for it; `unset` likewise before maintenance off. Never observed: halt at the
/// phase's bound naming node, step and reason, and no reboot.
#[test]
fn noout_is_done_when_the_report_shows_the_flag() {
    let view = ceph_view(3, &["pve1", "pve2"]);
    let mut sim = Sim::new(plan(3, 1), view.clone());
    sim.run(2_000);
    assert_eq!(
        sim.state.status,
        Status::Completed,
        "{:?}",
        sim.state.status
    );
    assert!(sim.view.nodes.values().all(|n| n.noout == Some(false)));
    assert_eq!(sim.noout_unsets, 2);

    // Observed late: answered ok, the report shows it a tick later.
    let s = RolloutState::new(plan(3, 1));
    let mut view = view;
    let (mut s, _) = step(&s, &Event::Start, &view);
    s.nodes[0].phase = Phase::CephNoout;
    s.nodes[0].pending = None;
    s.nodes[0].boot_id_before = Some("pve1-boot-0".into());
    let (s, cmds) = step(&s, &Event::Tick { now_ms: 1 }, &view);
    assert_eq!(sent_actions(&cmds), vec!["pve1/ceph-set-noout"]);
    let (s, cmds) = step(&s, &ok_result(&s, "pve1"), &view);
    assert!(
        sent_actions(&cmds).is_empty(),
        "no reboot before noout shows"
    );
    assert_eq!(s.node("pve1").unwrap().phase, Phase::CephNoout);
    let (late, _) = step(&s, &Event::Tick { now_ms: 10 }, &view);
    for nv in view.nodes.values_mut() {
        nv.noout = Some(true);
        nv.report_seq += 1;
    }
    let ev = Event::NodeChanged {
        node: "pve1".into(),
    };
    let (s2, cmds) = step(&late, &ev, &view);
    assert_eq!(sent_actions(&cmds), vec!["pve1/reboot"]);
    assert_eq!(s2.node("pve1").unwrap().phase, Phase::AwaitReturn);

    // Never observed: halted at the bound, no reboot.
    let mut sim = Sim::new(plan(3, 1), ceph_view(3, &["pve1"]));
    sim.noout_ignored = true;
    sim.run(2_000);
    assert_eq!(halted(&sim.state), Some(("pve1", Gate::CommandTimeout)));
    let reason = halt_reason(&sim.state);
    assert!(
        reason.contains("ceph-set-noout") && reason.contains("never observed"),
        "{reason}"
    );
    assert!(sim.actions_for("pve1", Action::Reboot).is_empty());
}

/// After its reboot a node's OSDs come back some seconds later: `noout` stays set until
/// every OSD is up and in (Proxmox's Ceph procedure), then it is unset; OSDs that never come
/// back halt the rollout at the phase's bound, `noout` still set.
#[test]
fn noout_is_unset_only_when_every_osd_is_up_and_in() {
    let mut sim = Sim::new(plan(3, 1), ceph_view(3, &["pve1", "pve2"]));
    sim.osds_late.insert("pve1".into());
    sim.deliver(&Event::Start);
    let mut brought_up = false;
    for _ in 0..2_000 {
        if !matches!(sim.state.status, Status::Running) {
            break;
        }
        let waiting = sim.state.node("pve1").unwrap().phase == Phase::CephUnset;
        if waiting && !brought_up && sim.queue.is_empty() {
            assert!(
                sim.actions_for("pve1", Action::CephUnsetNoout).is_empty(),
                "unset sent while pve1's OSDs are down"
            );
            assert_eq!(sim.noout_holders.len(), 1);
            brought_up = true;
            sim.osds_up("pve1");
        }
        let ev = sim.queue.pop_front().unwrap_or_else(|| {
            sim.now_ms += 1_000;
            Event::Tick { now_ms: sim.now_ms }
        });
        sim.deliver(&ev);
    }
    assert!(
        brought_up,
        "pve1 never waited in ceph-unset: {:?}",
        sim.state.status
    );
    assert_eq!(
        sim.state.status,
        Status::Completed,
        "{:?}",
        sim.state.status
    );
    assert_eq!(sim.actions_for("pve1", Action::CephUnsetNoout).len(), 1);
    assert!(sim.noout_holders.is_empty());

    let mut sim = Sim::new(plan(3, 1), ceph_view(3, &["pve1", "pve2"]));
    sim.osds_late.insert("pve1".into());
    sim.run(2_000);
    assert_eq!(halted(&sim.state), Some(("pve1", Gate::Ceph)));
    let reason = halt_reason(&sim.state);
    assert!(
        reason.contains("OSDs not all up and in") && reason.contains("noout stays set"),
        "{reason}"
    );
    assert!(sim.actions_for("pve1", Action::CephUnsetNoout).is_empty());
    assert!(sim.actions_for("pve2", Action::MaintenanceOn).is_empty());
}

/// Five nodes, two at a time, started on `view`: pve1 about to unset `noout`, pve2
/// waiting for its guests, neither with an action pending.
fn unset_beside_wait(view: &ClusterView) -> RolloutState {
    let s = RolloutState::new(plan(5, 2));
    let (mut s, _) = step(&s, &Event::Start, view);
    assert_eq!(s.in_flight().count(), 2, "{:?}", s.status);
    for n in s.nodes.iter_mut().take(2) {
        n.pending = None;
    }
    s.nodes[0].phase = Phase::CephUnset;
    s.nodes[1].phase = Phase::WaitGuests;
    s
}

/// `noout` is one cluster-wide flag: with two OSD nodes out at once, a set waits for an
/// unset in flight (they would race and one would never be observed), and a node waiting
/// to unset (its OSDs still down) leaves it to the node that set it meanwhile.
#[test]
fn a_noout_set_and_an_unset_of_two_nodes_never_race() {
    let mut view = ceph_view(5, &["pve1", "pve2"]);
    let s = unset_beside_wait(&view);
    let (mut s, cmds) = step(&s, &Event::Tick { now_ms: 1 }, &view);
    assert!(sent_actions(&cmds).contains(&"pve1/ceph-unset-noout".to_string()));
    // pve2 reaches its set while pve1's unset is in flight: it waits.
    s.nodes[1].phase = Phase::CephNoout;
    s.nodes[1].pending = None;
    let (s, cmds) = step(&s, &Event::Tick { now_ms: 2 }, &view);
    assert!(sent_actions(&cmds).is_empty(), "{cmds:?}");
    // The unset settles (observed): now the set goes.
    for nv in view.nodes.values_mut() {
        nv.noout = Some(false);
    }
    let (s, cmds) = step(&s, &ok_result(&s, "pve1"), &view);
    assert_eq!(
        sent_actions(&cmds),
        vec!["pve1/maintenance-off", "pve2/ceph-set-noout"]
    );
    assert_eq!(s.node("pve1").unwrap().phase, Phase::MaintenanceOff);

    // pve1 waits to unset (its OSDs are down) when pve2 sets noout: pve1 leaves the unset
    // to pve2 and goes on; no unset is sent.
    let mut view = ceph_view(5, &["pve1", "pve2"]);
    view.nodes.get_mut("pve1").unwrap().osds_up_in = Some(false);
    let s = unset_beside_wait(&view);
    let (mut s, cmds) = step(&s, &Event::Tick { now_ms: 1 }, &view);
    assert!(!sent_actions(&cmds).contains(&"pve1/ceph-unset-noout".to_string()));
    assert_eq!(s.node("pve1").unwrap().phase, Phase::CephUnset);
    s.nodes[1].phase = Phase::CephNoout;
    s.nodes[1].pending = None;
    let (s, cmds) = step(&s, &Event::Tick { now_ms: 2 }, &view);
    assert_eq!(
        sent_actions(&cmds),
        vec!["pve1/maintenance-off", "pve2/ceph-set-noout"]
    );
    assert_eq!(s.node("pve1").unwrap().phase, Phase::MaintenanceOff);
}
