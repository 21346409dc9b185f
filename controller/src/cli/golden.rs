//! Golden tests of the text output of the operator commands over a fixture cluster (rollout
//! running, halted, completed; shutdown planned, running, down; startup; the fleet's tables)
//! at 80 and 200 columns. Every output: no raw JSON, no CamelCase internal names, no
//! command ids, no line wider than the terminal. The expected texts live in
//! `controller/tests/golden/cli/`; `UPDATE_GOLDEN=1 cargo test -p fleetward-controller --lib
//! golden` rewrites them after a deliberate change (review the diff).

use super::live::Live;
use super::output::{self, View};
use super::{rollout, shutdown, Format};
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
        super::words::stage(s.stage.as_ref())
    );
    api::ShutdownStatusResponse {
        message,
        shutdown: Some(s),
        events,
    }
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

/// Every fixture's text at `width`, by name.
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
            steps: vec!["preflight gate".into(), "maintenance on".into()],
            ..Default::default()
        }],
        blocked: vec![],
    };
    vec![
        ("rollout-running", status(S::Running)),
        ("rollout-halted", status(S::Halted)),
        ("rollout-completed", status(S::Completed)),
        ("rollout-watch-running", live(S::Running, true)),
        ("rollout-watch-halted", live(S::Halted, true)),
        ("rollout-watch-halted-piped", live(S::Halted, false)),
        ("rollout-plan-nothing-to-upgrade", rollout::plan_text(&plan)),
        ("shutdown-planned", shut(K::Planned)),
        ("shutdown-running", shut(K::StopGuests)),
        ("shutdown-down", shut(K::Down)),
        ("startup", shut(K::StartGuests)),
        (
            "findings",
            output::findings_fit(&findings, Format::Text, Some(width)),
        ),
        (
            "drift-without-policy",
            output::drift(&findings[1..], false, Format::Text, Some(width)),
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
                    !name.ends_with("-piped") && text.lines().any(|l| l.chars().count() > width),
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
