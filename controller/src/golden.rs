//! Golden tests of the text output of the operator commands over a fixture cluster (rollout
//! running, halted, completed; shutdown planned, running, down; startup; the fleet's tables)
//! at 80 and 200 columns. Every output: no raw JSON, no CamelCase internal names, no
//! command ids, no line wider than the terminal. The expected texts live in
//! `controller/tests/golden/cli/`; `UPDATE_GOLDEN=1 cargo test -p fleetward-controller --lib
//! golden` rewrites them after a deliberate change (review the diff).

use crate::cli::live::Live;
use crate::cli::output::{self, View};
use crate::cli::{rollout, shutdown, Format};
use fleetward_proto::api;

/// 2026-12-07T10:00:00Z.
const T0: i64 = 1_796_637_600_000;

fn view(width: usize) -> View {
    View {
        verbose: false,
        now_ms: T0 + 95_000,
        width: Some(width),
    }
}

fn node(name: &str, phase: api::RolloutPhase) -> api::RolloutNode {
    api::RolloutNode {
        name: name.into(),
        phase: phase.into(),
        ..Default::default()
    }
}

fn event(
    secs: i64,
    kind: api::RolloutEventKind,
    node: &str,
    phase: api::RolloutPhase,
) -> api::RolloutEvent {
    api::RolloutEvent {
        time_unix_ms: T0 + secs * 1000,
        kind: kind.into(),
        node: node.into(),
        phase: phase.into(),
        ..Default::default()
    }
}

fn rollout(state: api::RolloutState) -> api::RolloutStatusResponse {
    use api::RolloutEventKind as K;
    use api::RolloutPhase as P;
    let id = "rollout-1796637600000";
    let mut upgrading = node("pve-02", P::Upgrade);
    upgrading.waiting_for = Some(format!("{id}/pve-02/apt-dist-upgrade/1"));
    upgrading.acknowledged = true;
    upgrading.deadline_unix_ms = Some(T0 + 1_900_000);
    upgrading.expected_kernel = Some("6.14.11-1-pve".into());
    let mut nodes = vec![
        node("pve-01", P::Done),
        upgrading,
        node("pve-03", P::Pending),
    ];
    let mut events = vec![
        event(0, K::Started, "", P::Unspecified),
        event(1, K::NodeStarted, "pve-01", P::Unspecified),
        event(1, K::Phase, "pve-01", P::MaintenanceOn),
        event(30, K::Phase, "pve-01", P::AptUpdate),
        event(50, K::NodeDone, "pve-01", P::Unspecified),
        event(51, K::Phase, "pve-02", P::MaintenanceOn),
        event(60, K::Phase, "pve-02", P::Upgrade),
    ];
    let mut halt = None;
    match state {
        api::RolloutState::Halted => {
            nodes[1].phase = P::BootCheck.into();
            nodes[1].waiting_for = None;
            let reason = "the ESP /dev/disk/by-uuid/4A1B-22CD (sda2) does not hold kernel \
                          6.14.11-1-pve after one proxmox-boot-tool refresh; a reboot would boot \
                          the old kernel or none";
            halt = Some(api::RolloutHalt {
                node: "pve-02".into(),
                gate: api::RolloutGate::EspHoldsKernel.into(),
                reason: reason.into(),
            });
            events.push(event(80, K::Phase, "pve-02", P::BootCheck));
            let mut e = event(90, K::Halted, "pve-02", P::Unspecified);
            e.gate = api::RolloutGate::EspHoldsKernel.into();
            e.reason = reason.into();
            events.push(e);
        }
        api::RolloutState::Completed => {
            for n in &mut nodes {
                n.phase = P::Done.into();
                n.waiting_for = None;
                n.deadline_unix_ms = None;
            }
            events.push(event(90, K::NodeDone, "pve-02", P::Unspecified));
            events.push(event(94, K::NodeDone, "pve-03", P::Unspecified));
            events.push(event(95, K::Completed, "", P::Unspecified));
        }
        _ => {}
    }
    api::RolloutStatusResponse {
        rollout: Some(api::Rollout {
            id: id.into(),
            state: state.into(),
            halt,
            max_unavailable: 1,
            reboot: api::RebootPolicy::IfNeeded.into(),
            controller_host: Some("pve-03".into()),
            window: None,
            window_paused: false,
            created_unix_ms: T0,
            actor: "admin".into(),
            nodes,
            updated_unix_ms: T0 + 90_000,
        }),
        events,
        output: vec![api::NodeOutput {
            node: "pve-02".into(),
            lines: vec!["Setting up pve-manager (9.0.12) ...".into()],
        }],
    }
}

fn stage(kind: api::ShutdownStageKind, index: u32) -> Option<api::ShutdownStage> {
    Some(api::ShutdownStage {
        kind: kind.into(),
        index,
    })
}

fn send(node: &str, step: &str, outcome: api::SendOutcome) -> api::ShutdownSend {
    api::ShutdownSend {
        command_id: format!("shutdown-1796637600000/{node}/{step}/1"),
        node: node.into(),
        step: step.into(),
        attempt: 1,
        outcome: outcome.into(),
        action_json: format!(r#"{{"action":"{step}"}}"#),
    }
}

fn shutdown_status(kind: api::ShutdownStageKind) -> api::ShutdownStatusResponse {
    use api::SendOutcome as O;
    use api::ShutdownEventKind as E;
    use api::ShutdownStageKind as K;
    let ev = |secs: i64, kind: E| api::ShutdownEvent {
        time_unix_ms: T0 + secs * 1000,
        kind: kind.into(),
        ..Default::default()
    };
    let mut s = api::Shutdown {
        id: "shutdown-1796637600000".into(),
        reason: Some("UPS on battery".into()),
        actor: "ups".into(),
        created_unix_ms: T0,
        deadline_unix_ms: Some(T0 + 600_000),
        stage: stage(kind, 0),
        updated_unix_ms: T0 + 90_000,
        ..Default::default()
    };
    let mut events = vec![ev(0, E::Started)];
    let stage_ev = |secs, kind, index| {
        let mut e = ev(secs, E::Stage);
        e.stage = stage(kind, index);
        e
    };
    match kind {
        K::Planned => {}
        K::StopGuests => {
            s.stage = stage(K::StopGuests, 1);
            s.stage_deadline_unix_ms = Some(T0 + 180_000);
            s.sent = vec![
                send("pve-01", "guest-stop-101", O::Ok),
                send("pve-02", "guest-stop-102", O::Pending),
                send("pve-03", "guest-stop-103", O::Pending),
            ];
            events.push(stage_ev(1, K::StopGuests, 0));
            events.push(stage_ev(40, K::StopGuests, 1));
            let mut failed = ev(60, E::ActionFailed);
            failed.node = "pve-03".into();
            failed.command_ids = vec!["shutdown-1796637600000/pve-03/guest-stop-103/1".into()];
            failed.output = "VM 103 qmp command 'system_powerdown' failed - unable to connect to \
                             VM 103 qmp socket - timeout after 31 retries"
                .into();
            failed.retrying = true;
            events.push(failed);
        }
        K::Down => {
            s.no_return = true;
            s.sent = vec![
                send("pve-01", "power-off", O::Ok),
                send("pve-02", "power-off", O::Ok),
                send("pve-03", "power-off", O::Abandoned),
            ];
            events.push(stage_ev(1, K::StopGuests, 0));
            events.push(stage_ev(30, K::DisarmHa, 0));
            events.push(stage_ev(35, K::SetNoout, 0));
            events.push(stage_ev(40, K::PowerOff, 0));
            events.push(ev(90, E::Down));
        }
        _ => {
            // Startup: the second guest group waits out a guest's `up=` delay.
            s.no_return = true;
            s.up_reason = api::UpReason::Startup.into();
            s.stage = stage(K::StartGuests, 1);
            s.stage_deadline_unix_ms = Some(T0 + 215_000);
            s.missing = vec!["pve-05".into()];
            s.sent = vec![
                send("pve-01", "ha-arm", O::Ok),
                send("pve-01", "guest-start-101", O::Ok),
                send("pve-02", "guest-start-102", O::Ok),
            ];
            events.push(ev(100, E::StartupBegun));
            events.push(stage_ev(101, K::AwaitNodes, 0));
            let mut nr = ev(160, E::NotReturned);
            nr.nodes = vec!["pve-05".into()];
            events.push(nr);
            events.push(stage_ev(161, K::StartGuests, 0));
            events.push(stage_ev(175, K::StartGuests, 1));
        }
    }
    let message = format!(
        "shutdown shutdown-1796637600000: {}",
        crate::cli::words::stage(s.stage.as_ref())
    );
    api::ShutdownStatusResponse {
        message,
        shutdown: Some(s),
        events,
    }
}

/// `power-event restored` during the guest stops: the shutdown stops and the guests it
/// stopped are started again.
fn power_restored(v: &View) -> String {
    use api::ShutdownEventKind as E;
    let mut st = shutdown_status(api::ShutdownStageKind::StopGuests);
    let ev = |secs: i64, kind: E| api::ShutdownEvent {
        time_unix_ms: T0 + secs * 1000,
        kind: kind.into(),
        up_reason: api::UpReason::PowerRestored.into(),
        ..Default::default()
    };
    st.events.push(ev(70, E::Cancelled));
    if let Some(s) = st.shutdown.as_mut() {
        s.stage = stage(api::ShutdownStageKind::StartGuests, 0);
        s.stage_deadline_unix_ms = None;
        s.up_reason = api::UpReason::PowerRestored.into();
        s.sent
            .push(send("pve-01", "guest-start-101", api::SendOutcome::Pending));
    }
    st.message = "power restored: shutdown shutdown-1796637600000 stopped, restoring what it \
                  stopped"
        .into();
    shutdown::render_status_at(&st, Format::Text, v)
}

fn finding(node: &str, sev: api::Severity, code: &str, msg: &str, path: &str) -> api::Finding {
    api::Finding {
        node: node.into(),
        code: code.into(),
        severity: sev.into(),
        message: msg.into(),
        path: Some(path.into()),
        line: Some(3),
    }
}

fn fleet_node(name: &str, online: bool, errors: u32, warnings: u32) -> api::Node {
    api::Node {
        name: name.into(),
        last_seen_unix_ms: Some(T0 + 90_000),
        session_state: if online {
            api::SessionState::Online
        } else {
            api::SessionState::Offline
        }
        .into(),
        finding_counts: Some(api::FindingCounts {
            info: 2,
            warning: warnings,
            error: errors,
        }),
        cert_serial: "5f3a9c0e1b7d2468".into(),
        cert_not_after_unix_ms: Some(T0 + 365 * 86_400_000),
        revoked: false,
        agent_version: "0.1.0".into(),
        observe_only: false,
    }
}

/// `nodes`: online, offline (last seen an hour earlier), observe-only, never connected.
fn fleet() -> Vec<api::Node> {
    let mut offline = fleet_node("pve-03", false, 0, 0);
    offline.last_seen_unix_ms = Some(T0 - 3_600_000);
    let mut observe = fleet_node("pve-04", true, 0, 1);
    observe.observe_only = true;
    let mut never = fleet_node("pve-05", false, 0, 0);
    never.last_seen_unix_ms = None;
    never.agent_version = String::new();
    never.finding_counts = None;
    vec![
        fleet_node("pve-01", true, 1, 0),
        fleet_node("pve-02", true, 0, 1),
        offline,
        observe,
        never,
    ]
}

/// `node show pve-01` with its latest report's findings.
fn node_show() -> api::GetNodeResponse {
    let report = fleetward_proto::Report {
        schema_version: fleetward_proto::SCHEMA_VERSION,
        facts: Default::default(),
        findings: vec![
            fleetward_proto::Finding {
                code: "boot.esp-kernel-missing".into(),
                severity: fleetward_proto::Severity::Error,
                message: "ESP /dev/disk/by-uuid/4A1B-22CD does not hold kernel 6.14.11-1-pve \
                          that proxmox-boot-tool is configured to sync; the next reboot may not \
                          find it"
                    .into(),
                path: Some("/etc/kernel/proxmox-boot-uuids".into()),
                line: None,
            },
            fleetward_proto::Finding {
                code: "dns.search-mismatch".into(),
                severity: fleetward_proto::Severity::Info,
                message: "search domain differs from the bridge's dns-search".into(),
                path: Some("/etc/resolv.conf".into()),
                line: Some(2),
            },
        ],
    };
    api::GetNodeResponse {
        node: Some(fleet_node("pve-01", true, 1, 0)),
        report_json: Some(fleetward_proto::report_json_bytes(&report)),
        report_received_unix_ms: Some(T0 + 60_000),
    }
}

/// `token list`: open, bound and open, used, revoked, expired.
fn token_list() -> Vec<api::TokenInfo> {
    let token = |id: &str, node: Option<&str>, expires: i64, used, revoked| api::TokenInfo {
        id: id.into(),
        node_name: node.map(Into::into),
        expires_at_unix_ms: T0 + expires,
        used,
        revoked,
    };
    vec![
        token("9c1e4f2a", None, 3_600_000, false, false),
        token("1b7d0e33", Some("pve-06"), 86_400_000, false, false),
        token("4e5f6a7b", Some("pve-05"), -3_600_000, true, false),
        token("77aa01c2", None, 3_600_000, false, true),
        token("d00d2bad", Some("pve-07"), -60_000, false, false),
    ]
}

fn audit_log() -> Vec<api::AuditEntry> {
    let entry =
        |secs: i64, actor: &str, action: &str, target: &str, detail: &str| api::AuditEntry {
            time_unix_ms: T0 + secs * 1000,
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            detail: detail.into(),
        };
    vec![
        entry(
            -600,
            "admin",
            "token.create",
            "9c1e4f2a",
            "node any ttl 3600s",
        ),
        entry(-500, "pve-05", "node.enroll", "pve-05", ""),
        entry(
            0,
            "admin",
            "rollout.start",
            "rollout-1796637600000",
            "nodes pve-01, pve-02, pve-03; max unavailable 1; reboot if needed; the controller's \
             own node pve-03 goes last",
        ),
        entry(
            60,
            "ups",
            "shutdown.start",
            "shutdown-1796637600000",
            "UPS on battery",
        ),
    ]
}

fn diff_rows() -> Vec<api::DiffRow> {
    let row = |key: &str, a: Option<&str>, b: Option<&str>| api::DiffRow {
        key: key.into(),
        a: a.map(Into::into),
        b: b.map(Into::into),
        differs: a != b,
    };
    vec![
        row("apt.suite", Some("trixie"), Some("bookworm")),
        row(
            "kernel.running",
            Some("6.14.11-1-pve"),
            Some("6.8.12-4-pve"),
        ),
        row("ceph.osds", Some("2"), None),
        row("boot.mode", Some("efi"), Some("efi")),
        row(
            "dns.search",
            Some("lab.example.net"),
            Some("lab.example.net"),
        ),
    ]
}

fn history_changes() -> Vec<api::FactChange> {
    let change = |secs: i64, key: &str, old: Option<&str>, new: Option<&str>| api::FactChange {
        time_unix_ms: T0 + secs * 1000,
        key: key.into(),
        old: old.map(Into::into),
        new: new.map(Into::into),
    };
    vec![
        change(-86_400, "ceph.osds", None, Some("2")),
        change(-3_600, "apt.suite", Some("bookworm"), Some("trixie")),
        change(
            80,
            "kernel.running",
            Some("6.8.12-4-pve"),
            Some("6.14.11-1-pve"),
        ),
    ]
}

/// `rollout list`: running, halted, completed.
fn rollout_list() -> Vec<api::Rollout> {
    [
        api::RolloutState::Completed,
        api::RolloutState::Halted,
        api::RolloutState::Running,
    ]
    .into_iter()
    .enumerate()
    .map(|(i, state)| {
        let mut r = rollout(state).rollout.unwrap();
        let back = 86_400_000 * (2 - i as i64);
        r.id = format!("rollout-{}", T0 - back);
        r.created_unix_ms = T0 - back;
        r
    })
    .collect()
}

/// `shutdown plan` from the controller's own planner: three nodes with guests in two
/// startup orders, Ceph on every node, pve-03 the controller's host, a deadline.
fn shutdown_plan() -> api::ShutdownPlanResponse {
    use crate::shutdown::{Config, GuestView, NodeView, Plan, ShutdownView};
    use fleetward_proto::action::GuestKind;
    let guest = |vmid: u32, kind, order| GuestView {
        vmid,
        kind,
        running: true,
        onboot: true,
        order,
        up: None,
        down: Some(60),
        ha: false,
        unknown: false,
    };
    let node = |guests| NodeView {
        online: true,
        boot_id: Some("boot-0".into()),
        quorate: Some(true),
        ceph_mon: true,
        ceph_osds: true,
        guests,
        observe_only: false,
        ..NodeView::default()
    };
    let mut view = ShutdownView {
        ha_disarm_supported: true,
        ..Default::default()
    };
    view.nodes.insert(
        "pve-01".into(),
        node(vec![
            guest(101, GuestKind::Qemu, Some(1)),
            guest(111, GuestKind::Lxc, None),
        ]),
    );
    view.nodes.insert(
        "pve-02".into(),
        node(vec![guest(102, GuestKind::Qemu, Some(2))]),
    );
    view.nodes.insert(
        "pve-03".into(),
        node(vec![guest(103, GuestKind::Lxc, Some(1))]),
    );
    let config = Config {
        controller_host: Some("pve-03".into()),
        deadline_ms: Some(u64::try_from(T0 + 1_800_000).unwrap()),
        reason: Some("UPS on battery".into()),
        ..Default::default()
    };
    let t0 = u64::try_from(T0).unwrap();
    let plan = Plan::new("shutdown-1796637600000", &view, &config, t0).unwrap();
    crate::wire::shutdown_plan_response(&plan)
}

/// `ca status` on a controller initialised at T0 with one `--san`.
fn ca_status() -> Vec<crate::certs::CertStatus> {
    let secs = T0 / 1000;
    vec![
        crate::certs::CertStatus {
            certificate: "ca",
            subject: "CN=fleetward CA lab".into(),
            sha256: "3b8e0f6c2d9a4e1b7f5c8a0d3e6b9c2f4a7d0e3b6c9f2a5d8e1b4c7f0a3d6e9b".into(),
            not_after_unix: secs + 3650 * 86_400,
            days_left: 3650,
            names: vec![],
        },
        crate::certs::CertStatus {
            certificate: "server",
            subject: "CN=controller".into(),
            sha256: "9f1c2e3d4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0".into(),
            not_after_unix: secs + 1825 * 86_400,
            days_left: 1825,
            names: vec![
                "localhost".into(),
                "pve-03.lab.example.net".into(),
                "127.0.0.1".into(),
                "::1".into(),
            ],
        },
    ]
}

/// Output that is not cut to the terminal: a pipe's, and the policy, a TOML document shown
/// as it is so that `fleetward policy show > policy.toml` keeps it whole.
fn verbatim(name: &str) -> bool {
    name.ends_with("-piped") || name == "policy-show"
}

/// Every fixture's text at `width`, by name. Every text renderer of a `ClientCommand` is
/// here: `policy reload` and `policy capture` print with the `policy show` renderer, `policy
/// check` with the findings one; `rollout start`, `pause`, `resume`, `abort` and `skip`
/// reply with the rollout status; `shutdown start` and `cancel`, and `power-event on-battery`
/// and `restored`, reply with the shutdown status (`shutdown start --yes` after the plan).
/// Without a renderer of their own, a fixed sentence or a document: `node refresh`, `node
/// revoke`, `token revoke` (one line each, in `cli/mod.rs`), `operator issue` (the key and
/// certificate PEM, or the paths it wrote) and `report` (the controller's Markdown).
/// An aborted rollout: preempted by a shutdown (pve-02 left in its upgrade's maintenance),
/// or brought back by `abort --restore`.
fn aborted(restored: bool) -> api::RolloutStatusResponse {
    use api::RolloutEventKind as K;
    use api::RolloutPhase as P;
    let mut resp = rollout(api::RolloutState::Running);
    let r = resp.rollout.as_mut().unwrap();
    r.state = api::RolloutState::Aborted.into();
    r.nodes[1].waiting_for = None;
    r.nodes[1].deadline_unix_ms = None;
    resp.output.clear();
    if restored {
        r.nodes[1].phase = P::Done.into();
        let mut e = event(70, K::Restoring, "", P::Unspecified);
        e.reason = "pve-02".into();
        resp.events.push(e);
        resp.events
            .push(event(80, K::Phase, "pve-02", P::MaintenanceOff));
        resp.events.push(event(85, K::Restored, "", P::Unspecified));
    } else {
        let mut e = event(70, K::Halted, "", P::Unspecified);
        e.gate = api::RolloutGate::Preempted.into();
        e.reason = "preempted by a shutdown started by admin: nothing new is sent; in-flight \
                    actions settle, then the rollout is aborted"
            .into();
        resp.events.push(e);
    }
    resp.events.push(event(90, K::Aborted, "", P::Unspecified));
    resp
}

/// `shutdown plan` when the controller cannot tell which node it runs on.
fn shutdown_plan_host_unknown() -> api::ShutdownPlanResponse {
    use crate::shutdown::{Config, NodeView, Plan, ShutdownView};
    let mut view = ShutdownView::default();
    for n in ["pve-01", "pve-02"] {
        view.nodes.insert(
            n.into(),
            NodeView {
                online: true,
                ..NodeView::default()
            },
        );
    }
    let t0 = u64::try_from(T0).unwrap();
    let plan = Plan::new("shutdown-1796637600000", &view, &Config::default(), t0).unwrap();
    let host = crate::host::HostNode::Unknown(
        "no node matches the controller's hostname or addresses, and pve-02 did not report \
         every address"
            .into(),
    );
    crate::api::shutdown::plan_response(&plan, &host)
}

fn outputs(width: usize) -> Vec<(&'static str, String)> {
    use api::RolloutState as S;
    use api::ShutdownStageKind as K;
    let v = view(width);
    let status = |s| rollout::status_render(&rollout(s), Format::Text, &v).unwrap();
    // What a terminal shows, and what a pipe gets (no width there: lines are not cut).
    let live = |s, tty: bool| {
        let resp = rollout(s);
        let r = resp.rollout.clone().unwrap();
        let (block, timeline) = rollout::live_frame(&resp, &r, &v);
        let mut live = Live::new(Vec::new(), tty.then_some(width));
        live.frame(&block, &timeline);
        String::from_utf8(live.into_inner()).unwrap()
    };
    let shut = |k| shutdown::render_status_at(&shutdown_status(k), Format::Text, &v);
    let findings = [
        finding(
            "pve-01",
            api::Severity::Error,
            "boot.esp-kernel-missing",
            "ESP /dev/disk/by-uuid/4A1B-22CD does not hold kernel 6.14.11-1-pve that \
             proxmox-boot-tool is configured to sync; the next reboot may not find it \
             (run proxmox-boot-tool refresh and check /etc/kernel/proxmox-boot-uuids)",
            "/etc/kernel/proxmox-boot-uuids",
        ),
        finding(
            "pve-02",
            api::Severity::Warning,
            "apt.suite-mismatch",
            "repository suite bullseye differs from the release bookworm",
            "/etc/apt/sources.list.d/pve.list",
        ),
    ];
    let plan = api::RolloutPlanResponse {
        id: "rollout-1796637600000".into(),
        max_unavailable: 1,
        reboot: api::RebootPolicy::IfNeeded.into(),
        controller_host: Some("pve-03".into()),
        nodes: vec![api::RolloutNodePlan {
            name: "pve-01".into(),
            position: 1,
            gate_ok: true,
            steps: vec![crate::rollout::NOTHING_TO_DO.into()],
            skipped: true,
            ..Default::default()
        }],
        blocked: vec![],
    };
    // Nothing to upgrade as of lists of unknown age: the node's cycle is still planned.
    let mut stale = plan.clone();
    stale.nodes[0].skipped = false;
    stale.nodes[0].steps = [
        "preflight gate",
        "maintenance on (HA guests migrate away)",
        "wait for HA guests to leave",
        "apt-get update",
        "apt-get dist-upgrade (0 packages)",
        "maintenance off (HA guests return)",
    ]
    .map(String::from)
    .to_vec();
    stale.nodes[0].downtime_secs = 300;
    // One node up to date (skipped), one with a kernel upgrade and an HA guest.
    let mut mixed = plan.clone();
    mixed.nodes.push(api::RolloutNodePlan {
        name: "pve-02".into(),
        position: 2,
        gate_ok: true,
        steps: [
            "preflight gate",
            "maintenance on (HA guests migrate away)",
            "wait for HA guests to leave",
            "apt-get update",
            "apt-get dist-upgrade (2 packages)",
            "reboot, wait for a new boot id",
            "maintenance off (HA guests return)",
        ]
        .map(String::from)
        .to_vec(),
        packages: vec![
            api::PackageUpgrade {
                package: "proxmox-kernel-6.14.11-1-pve-signed".into(),
                installed: "".into(),
                candidate: "6.14.11-1".into(),
            },
            api::PackageUpgrade {
                package: "proxmox-ve".into(),
                installed: "9.0.0".into(),
                candidate: "9.0.1".into(),
            },
        ],
        reboot: true,
        next_kernel: Some("6.14.11-1-pve".into()),
        guests: vec![api::RolloutGuestPlan {
            vmid: 101,
            name: Some("web".into()),
            what: "HA: migrates away with maintenance mode, returns after".into(),
        }],
        downtime_secs: 540,
        ..Default::default()
    });
    // `rollout pause` replies with the status of the paused rollout.
    let mut paused = rollout(S::Running);
    if let Some(r) = paused.rollout.as_mut() {
        r.state = S::Paused.into();
    }
    let token = api::CreateTokenResponse {
        id: "9c1e4f2a".into(),
        token: "c2f1d9a0e4b7c6d5a8f3e2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1".into(),
        expires_at_unix_ms: T0 + 3_600_000,
        ca_sha256: "3b8e0f6c2d9a4e1b7f5c8a0d3e6b9c2f4a7d0e3b6c9f2a5d8e1b4c7f0a3d6e9b".into(),
    };
    let policy = api::PolicyText {
        path: "/etc/fleetward/policy.toml".into(),
        toml: include_str!("../../packaging/policy/seed.toml").into(),
    };
    vec![
        ("rollout-running", status(S::Running)),
        ("rollout-halted", status(S::Halted)),
        ("rollout-completed", status(S::Completed)),
        ("rollout-watch-running", live(S::Running, true)),
        ("rollout-watch-halted", live(S::Halted, true)),
        ("rollout-watch-halted-piped", live(S::Halted, false)),
        ("rollout-plan-nothing-to-upgrade", rollout::plan_text(&plan)),
        ("rollout-plan-one-skipped", rollout::plan_text(&mixed)),
        ("rollout-plan-stale-lists", rollout::plan_text(&stale)),
        ("shutdown-planned", shut(K::Planned)),
        ("shutdown-running", shut(K::StopGuests)),
        ("shutdown-down", shut(K::Down)),
        ("startup", shut(K::StartGuests)),
        ("power-event-restored", power_restored(&v)),
        (
            "rollout-paused",
            rollout::status_render(&paused, Format::Text, &v).unwrap(),
        ),
        (
            "findings",
            output::findings_fit(&findings, Format::Text, Some(width)),
        ),
        (
            "drift-without-policy",
            output::drift(&findings[1..], false, Format::Text, Some(width)),
        ),
        ("nodes", output::nodes(&fleet(), &findings, Format::Text)),
        (
            "node-show",
            output::node_detail_fit(&node_show(), Format::Text, Some(width)).unwrap(),
        ),
        (
            "token-create",
            output::token_created(&token, "https://pve-03.lab.example.net:7443", Format::Text),
        ),
        (
            "token-list",
            output::tokens(&token_list(), v.now_ms, Format::Text),
        ),
        (
            "audit",
            output::audit_fit(&audit_log(), Format::Text, Some(width)),
        ),
        (
            "node-diff",
            output::diff("pve-01", "pve-02", &diff_rows(), Format::Text),
        ),
        (
            "node-history",
            output::history(&history_changes(), Format::Text),
        ),
        ("policy-show", output::policy(&policy, Format::Text)),
        (
            "rollout-list",
            rollout::list_out(&rollout_list(), Format::Text),
        ),
        ("shutdown-plan", shutdown::plan_text(&shutdown_plan(), &v)),
        (
            "ca-status",
            crate::certs::render_status(&ca_status(), Format::Text),
        ),
        (
            "rollout-preempted",
            rollout::status_render(&aborted(false), Format::Text, &v).unwrap(),
        ),
        (
            "rollout-restored",
            rollout::status_render(&aborted(true), Format::Text, &v).unwrap(),
        ),
        (
            "shutdown-plan-host-unknown",
            shutdown::plan_text(&shutdown_plan_host_unknown(), &v),
        ),
    ]
}

#[test]
fn text_output_reads_as_words_and_fits_the_terminal() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/cli");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut wrong = Vec::new();
    for width in [80, 200] {
        for (name, text) in outputs(width) {
            let camel = text
                .as_bytes()
                .windows(2)
                .any(|w| w[0].is_ascii_lowercase() && w[1].is_ascii_uppercase());
            let checks = [
                ("raw JSON", text.contains("{\"")),
                ("a CamelCase name", camel),
                ("a command id", text.contains("00/pve-0")),
                (
                    "a line wider than the terminal",
                    !verbatim(name) && text.lines().any(|l| l.chars().count() > width),
                ),
            ];
            for (what, bad) in checks {
                if bad {
                    wrong.push(format!("{name} at {width}: {what}:\n{text}"));
                }
            }
            let path = dir.join(format!("{name}-{width}.txt"));
            if update {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &text).unwrap();
            } else {
                let expected = std::fs::read_to_string(&path).unwrap_or_default();
                if expected != text {
                    wrong.push(format!(
                        "{name} at {width} differs from {} (UPDATE_GOLDEN=1 rewrites):\n{text}",
                        path.display()
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}
