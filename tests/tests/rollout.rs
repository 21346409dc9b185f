//! Rolling updates end to end: the real controller, real agents with the simulated executor
//! on the seed nodes' fixture roots (`--simulate`), the operator CLI.
//!
//! What the assertions read: the controller's rollout state and event log (`rollout status
//! --output json`), each agent's own action log (`sim-actions.jsonl`, written by the
//! simulated executor: one line per action actually executed), and the fixture roots.

use fleetward_agent::executor::simulated::{read_log, LogEntry};
use fleetward_proto::action::Action;
use fleetward_tests::{support, wait_for, Agent, AgentRun, Controller};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const NEW_KERNEL: &str = "6.14.11-1-pve";
const OLD_KERNEL: &str = "6.14.8-2-pve";
const NODES: [&str; 3] = ["pve-01", "pve-02", "pve-03"];

/// Short timeouts and a fast tick, so a halted gate shows within seconds.
const ROLLOUT_CONFIG: &str = "host_node = \"pve-03\"\n\n[rollout]\n\
    action_ms = 30000\nrefresh_ms = 20000\nreboot_ms = 6000\n\
    post_reboot_ms = 20000\nmax_silence_ms = 10000\ntick_ms = 100\n";

/// For crash runs: agents may need several backoff rounds to find the restarted
/// controller, so silence and reboot waits are longer (a halt would be correct, but is not
/// what these runs test).
const CRASH_CONFIG: &str = "host_node = \"pve-03\"\n\n[rollout]\n\
    action_ms = 60000\nrefresh_ms = 60000\nreboot_ms = 60000\n\
    post_reboot_ms = 60000\nmax_silence_ms = 45000\ntick_ms = 100\n";

/// A controller with the rollout settings above.
fn controller() -> Controller {
    controller_with(ROLLOUT_CONFIG)
}

fn controller_with(config: &str) -> Controller {
    let mut c = Controller::start();
    let path = c.dir.path().join("controller.toml");
    let text = std::fs::read_to_string(&path).unwrap() + config;
    std::fs::write(&path, text).unwrap();
    c.restart();
    c
}

/// The pending upgrade every node's simulated apt offers: a new kernel and proxmox-ve.
fn pending() -> String {
    format!(
        r#"{{"packages": [{{"package": "proxmox-ve", "version": "9.0.1"}},
             {{"package": "pve-manager", "version": "9.0.12"}}], "kernel": "{NEW_KERNEL}"}}"#
    )
}

/// Enroll a seed node, give it the pending upgrade, run it simulated.
fn node(c: &Controller, name: &str, reboot_secs: f64) -> Agent {
    let dir = support::fixtures_dir().join("seed").join(name);
    node_from(c, name, &dir, reboot_secs)
}

fn node_from(c: &Controller, name: &str, fixture: &Path, reboot_secs: f64) -> Agent {
    let (root, state) = Agent::enroll_fixture(c, name, fixture);
    let sim = root.path().join("var/lib/fleetward-sim");
    std::fs::create_dir_all(&sim).unwrap();
    // A fixture may bring its own pending upgrade.
    if !sim.join("pending.json").exists() {
        std::fs::write(sim.join("pending.json"), pending()).unwrap();
    }
    Agent::run_with(
        name,
        root,
        state,
        AgentRun::default().sim_reboot_secs(reboot_secs),
    )
}

fn cluster(c: &Controller) -> Vec<Agent> {
    let agents: Vec<Agent> = NODES.iter().map(|n| node(c, n, 0.3)).collect();
    wait_online(c, &NODES);
    agents
}

fn wait_online(c: &Controller, names: &[&str]) {
    // `nodes` says who is online; `node show` whether its report is in (asked once per node).
    let mut reported = std::collections::BTreeSet::new();
    wait_for("nodes online with reports", Duration::from_secs(60), || {
        let nodes = c.cli_json(&["nodes"]);
        let online = |n: &str| {
            let list = nodes.as_array().unwrap();
            list.iter()
                .any(|x| x["name"] == n && x["state"] == "online")
        };
        for n in names {
            if online(n)
                && !reported.contains(n)
                && !c.cli_json(&["node", "show", n])["report"].is_null()
            {
                reported.insert(*n);
            }
        }
        names
            .iter()
            .all(|n| online(n) && reported.contains(n))
            .then_some(())
    });
}

/// `cli_json` for commands that exit 1 on a halted or aborted rollout.
fn cli_any(c: &Controller, args: &[&str]) -> Value {
    let out = c.cli(args);
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "fleetward {args:?}: {out:?}"
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

fn status(c: &Controller) -> Value {
    cli_any(c, &["rollout", "status"])
}

fn state_word(s: &Value) -> String {
    s["rollout"]["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Waits until the newest rollout is no longer running; returns its status.
fn wait_settled(c: &Controller, timeout: Duration) -> Value {
    wait_for("the rollout to settle", timeout, || {
        let s = status(c);
        (!matches!(state_word(&s).as_str(), "running" | "planned")).then_some(s)
    })
}

fn start(c: &Controller, extra: &[&str]) -> Value {
    let mut args = vec!["rollout", "start", "--yes"];
    args.extend_from_slice(extra);
    cli_any(c, &args)
}

fn log(a: &Agent) -> Vec<LogEntry> {
    read_log(&a.sim_log()).expect("action log")
}

fn count(a: &Agent, f: impl Fn(&Action) -> bool) -> usize {
    log(a).iter().filter(|e| e.ok && f(&e.action)).count()
}

fn read(a: &Agent, p: &str) -> String {
    std::fs::read_to_string(a.path(p))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// From the agents' own logs: the spans between maintenance-on and maintenance-off (or the
/// end of the log) never overlap across nodes, so at most `max` nodes were ever out at once.
fn assert_max_out(agents: &[Agent], max: usize) {
    let mut spans: Vec<(u64, u64, String)> = Vec::new();
    for a in agents {
        let mut open = None;
        for e in log(a) {
            match e.action {
                Action::MaintenanceOn if e.ok => open = open.or(Some(e.started_ms)),
                Action::MaintenanceOff if e.ok => {
                    if let Some(s) = open.take() {
                        spans.push((s, e.finished_ms, a.name.clone()));
                    }
                }
                Action::Reboot | Action::AptDistUpgrade if open.is_none() => {
                    panic!("{}: {:?} outside maintenance", a.name, e.action)
                }
                _ => {}
            }
        }
        if let Some(s) = open {
            spans.push((s, u64::MAX, a.name.clone()));
        }
    }
    for (s, _, n) in &spans {
        let out: Vec<&String> = spans
            .iter()
            .filter(|(s2, e2, _)| s2 <= s && s < e2)
            .map(|(_, _, n)| n)
            .collect();
        assert!(out.len() <= max, "at {s} ({n}) out at once: {out:?}");
    }
}

/// From the controller's event log: nodes started and done never exceed `max` in flight.
fn assert_events_max_out(s: &Value, max: usize) {
    let mut out = std::collections::BTreeSet::new();
    for ev in s["events"].as_array().unwrap() {
        let node = ev["node"].as_str().unwrap_or_default().to_string();
        match ev["event"].as_str() {
            Some("node-started") => {
                out.insert(node);
            }
            Some("node-done") | Some("skipped") => {
                out.remove(&node);
            }
            _ => {}
        }
        assert!(out.len() <= max, "event log: {out:?} in flight at once");
    }
}

fn halted(s: &Value) -> (String, String) {
    assert_eq!(s["rollout"]["status"], "halted", "not halted: {s:#}");
    let st = &s["rollout"]["halt"];
    (
        st["node"].as_str().unwrap().to_string(),
        st["gate"].as_str().unwrap().to_string(),
    )
}

/// A webhook receiver on loopback: answers 200 to every POST and keeps the bodies.
fn webhook() -> (String, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut r = BufReader::new(stream);
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            if r.read_exact(&mut body).is_ok() {
                if let Ok(v) = serde_json::from_slice(&body) {
                    keep.lock().unwrap().push(v);
                }
            }
            let _ = r
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (url, got)
}

#[test]
fn three_simulated_nodes_roll_to_the_new_kernel_one_at_a_time() {
    let (hook, posted) = webhook();
    let c = controller_with(&format!("webhook = \"{hook}\"\n{ROLLOUT_CONFIG}"));
    let agents = cluster(&c);
    let boots: Vec<String> = agents
        .iter()
        .map(|a| read(a, "/proc/sys/kernel/random/boot_id"))
        .collect();

    // The dry run, after apt-get update through the executors: packages and reboots.
    let plan = c.cli_json(&["rollout", "plan", "--refresh-lists"]);
    let order: Vec<&str> = plan["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(order, NODES, "the controller's host (pve-03) goes last");
    for n in plan["nodes"].as_array().unwrap() {
        assert_eq!(n["gate_ok"], true, "{n:#}");
        assert_eq!(n["reboot"], true, "{n:#}");
        let pkgs: Vec<&str> = n["packages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["package"].as_str().unwrap())
            .collect();
        assert!(pkgs.contains(&"proxmox-ve"), "{pkgs:?}");
    }
    let text = c.cli(&["rollout", "plan"]);
    assert!(text.status.success());

    start(&c, &[]);
    let s = wait_settled(&c, Duration::from_secs(90));
    assert_eq!(state_word(&s), "completed", "{s:#}");

    for (a, boot) in agents.iter().zip(&boots) {
        assert_eq!(
            read(a, "/proc/sys/kernel/osrelease"),
            NEW_KERNEL,
            "{}",
            a.name
        );
        assert_ne!(
            &read(a, "/proc/sys/kernel/random/boot_id"),
            boot,
            "{}",
            a.name
        );
        assert!(!a.path("/var/lib/fleetward-sim/maintenance").exists());
        assert_eq!(count(a, |x| *x == Action::AptDistUpgrade), 1, "{}", a.name);
        assert_eq!(count(a, |x| *x == Action::Reboot), 1, "{}", a.name);
    }
    assert_max_out(&agents, 1);
    assert_events_max_out(&s, 1);
    // The controller's view agrees: every node reports the new kernel.
    for n in NODES {
        let shown = c.cli_json(&["node", "show", n]);
        let k = &shown["report"]["facts"]["node"]["running_kernel"];
        assert_eq!(k, NEW_KERNEL, "{n}: {shown:#}");
    }
    // The audit log has the start and the completion.
    let audit = c.cli_json(&["audit"]).to_string();
    assert!(audit.contains("rollout.start") && audit.contains("rollout.completed"));
    // And the webhook got the events as JSON, for this rollout.
    let id = s["rollout"]["id"].clone();
    let events = wait_for(
        "the webhook's completed event",
        Duration::from_secs(10),
        || {
            let got = posted.lock().unwrap().clone();
            got.iter()
                .any(|v| v["event"]["event"] == "completed")
                .then_some(got)
        },
    );
    let names: Vec<&str> = events
        .iter()
        .filter(|v| v["operation"] == id)
        .filter_map(|v| v["event"]["event"].as_str())
        .collect();
    for want in ["started", "node-started", "node-done", "completed"] {
        assert!(names.contains(&want), "webhook got {names:?}");
    }
}

/// HA is asynchronous (issue 13): `maintenance-on`/`-off` only queue the command for the
/// cluster manager and exit 0; the node's HA state changes half a second later. The driver
/// waits for the effect before it moves a node on; on pve-02 the CRM ignores the command,
/// and the rollout halts at the bound (`action_ms`) naming node, step and reason.
#[test]
fn async_node_maintenance_is_waited_for_and_an_ignoring_crm_halts_at_the_bound() {
    let delay_ms: u32 = 500;
    let c = controller_with(
        "host_node = \"pve-03\"\n\n[rollout]\naction_ms = 2500\nrefresh_ms = 20000\n\
         reboot_ms = 6000\npost_reboot_ms = 20000\nmax_silence_ms = 10000\ntick_ms = 100\n",
    );
    let agents: Vec<Agent> = NODES
        .iter()
        .map(|n| {
            let fixture = support::fixtures_dir().join("seed").join(n);
            let (root, state) = Agent::enroll_fixture(&c, n, &fixture);
            let sim = root.path().join("var/lib/fleetward-sim");
            std::fs::write(sim.join("pending.json"), pending()).unwrap();
            if *n == "pve-02" {
                std::fs::write(sim.join("ha-crm-ignores"), "").unwrap();
            }
            let run = AgentRun::default()
                .sim_reboot_secs(0.3)
                .sim_ha_delay_secs(f64::from(delay_ms) / 1000.0);
            Agent::run_with(n, root, state, run)
        })
        .collect();
    wait_online(&c, &NODES);
    start(&c, &[]);
    let s = wait_settled(&c, Duration::from_secs(60));
    assert_eq!(halted(&s), ("pve-02".into(), "command-timeout".into()));
    let reason = s["rollout"]["halt"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("maintenance-on on pve-02 answered ok but its effect was never observed"),
        "{reason}"
    );

    // pve-01: each maintenance command answered at once, and the node moved on only once
    // its effect showed, the CRM's delay later.
    let l1 = log(&agents[0]);
    let names: Vec<&str> = l1.iter().map(|e| e.action.name()).collect();
    let at = |name: &str| l1.iter().position(|e| e.action.name() == name).unwrap();
    let (on, wait) = (&l1[at("maintenance-on")], &l1[at("wait-guests-migrated")]);
    assert!(
        on.ok && on.finished_ms + 100 < on.started_ms + u64::from(delay_ms),
        "{on:?}"
    );
    assert!(
        wait.started_ms >= on.finished_ms + u64::from(delay_ms) - 50,
        "the next step began before maintenance showed: {names:?}"
    );
    assert_eq!(*names.last().unwrap(), "maintenance-off", "{names:?}");
    assert!(!agents[0]
        .path("/var/lib/fleetward-sim/maintenance")
        .exists());
    let off = l1.last().unwrap();
    // pve-02 started only once pve-01's maintenance-off showed.
    let l2 = log(&agents[1]);
    let names2: Vec<&str> = l2.iter().map(|e| e.action.name()).collect();
    assert_eq!(
        names2,
        ["maintenance-on"],
        "nothing after the unobserved step"
    );
    assert!(l2[0].ok && l2[0].started_ms >= off.finished_ms + u64::from(delay_ms) - 50);
    // Its command is still queued, and the node never entered maintenance.
    assert!(!agents[1]
        .path("/var/lib/fleetward-sim/maintenance")
        .exists());
    let queued = read(&agents[1], "/var/lib/fleetward-sim/ha-requests.json");
    assert!(queued.contains("\"maintenance\": true"), "{queued}");
    assert!(log(&agents[2]).is_empty(), "pve-03 never started");
}

#[test]
fn esp_without_the_new_kernel_halts_before_the_reboot() {
    let c = controller();
    // pve-02 boots from ESPs that proxmox-boot-tool keeps in sync; the simulation never
    // writes ESP images, so after the upgrade they lack the new kernel even after the
    // one boot-refresh attempt.
    let esp_sync = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/esp-sync-pve-02");
    let agents = [
        node(&c, "pve-01", 0.3),
        node_from(&c, "pve-02", &esp_sync, 0.3),
        node(&c, "pve-03", 0.3),
    ];
    wait_online(&c, &NODES);
    let r = c.cli_json(&["node", "show", "pve-02"]);
    assert_eq!(r["report"]["facts"]["boot"]["esp_list_exists"], true);
    start(&c, &["--nodes", "pve-02,pve-01"]);
    let s = wait_settled(&c, Duration::from_secs(60));
    assert_eq!(
        halted(&s),
        ("pve-02".into(), "esp-holds-kernel".into()),
        "{s:#}"
    );
    let a = &agents[1];
    assert_eq!(count(a, |x| *x == Action::AptDistUpgrade), 1);
    assert_eq!(
        count(a, |x| *x == Action::BootRefresh),
        1,
        "one refresh attempt"
    );
    assert_eq!(count(a, |x| *x == Action::Reboot), 0, "no reboot");
    assert_eq!(read(a, "/proc/sys/kernel/osrelease"), OLD_KERNEL);
    assert!(log(&agents[0]).is_empty(), "the next node is untouched");
}

/// apt's transaction would remove proxmox-ve on pve-01 (a repository mistake): the plan
/// shows the removal and the failing gate, and the rollout halts at pve-01's preflight with
/// `upgrade.removes-protected` before touching anything.
#[test]
fn an_upgrade_that_would_remove_proxmox_ve_halts_at_preflight() {
    let c = controller();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/removes-proxmox-ve-pve-01");
    let agents = [
        node_from(&c, "pve-01", &fixture, 0.3),
        node(&c, "pve-02", 0.3),
        node(&c, "pve-03", 0.3),
    ];
    wait_online(&c, &NODES);
    wait_for("pve-01's transaction", Duration::from_secs(20), || {
        let r = c.cli_json(&["node", "show", "pve-01"]);
        let removed = &r["report"]["facts"]["apt"]["transaction"]["removed"];
        (removed[0]["package"] == "proxmox-ve").then_some(())
    });
    let plan = cli_any(&c, &["rollout", "plan"]);
    let p1 = plan["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "pve-01")
        .unwrap()
        .clone();
    assert_eq!(p1["gate_ok"], false, "{p1:#}");
    assert!(
        p1["gate_failure"]
            .as_str()
            .unwrap()
            .contains("upgrade.removes-protected"),
        "{p1:#}"
    );
    assert_eq!(p1["removed"][0], "proxmox-ve 9.0.0", "{p1:#}");
    start(&c, &["--nodes", "pve-01,pve-02"]);
    let s = wait_settled(&c, Duration::from_secs(30));
    assert_eq!(
        halted(&s),
        ("pve-01".into(), "unsafe-findings".into()),
        "{s:#}"
    );
    for a in &agents {
        assert!(log(a).is_empty(), "{} was touched", a.name);
    }
}

#[test]
fn a_cluster_without_quorum_starts_nothing() {
    let c = controller();
    let agents = cluster(&c);
    for a in &agents {
        let p = a.path("/etc/pve/.members");
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, text.replace("\"quorate\": 1", "\"quorate\": 0")).unwrap();
    }
    wait_for("reports without quorum", Duration::from_secs(20), || {
        let r = c.cli_json(&["node", "show", "pve-01"]);
        (r["report"]["facts"]["cluster"]["quorate"] == false).then_some(())
    });
    start(&c, &[]);
    let s = wait_settled(&c, Duration::from_secs(30));
    assert_eq!(halted(&s).1, "quorum");
    for a in &agents {
        assert!(log(a).is_empty(), "{} was touched", a.name);
    }
}

#[test]
fn an_offline_node_starts_nothing() {
    let c = controller();
    let mut agents = cluster(&c);
    drop(agents.remove(2)); // pve-03's agent stops
    wait_for("pve-03 offline", Duration::from_secs(20), || {
        let nodes = c.cli_json(&["nodes"]);
        let n = nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == "pve-03")?;
        (n["state"] == "offline").then_some(())
    });
    start(&c, &[]);
    let s = wait_settled(&c, Duration::from_secs(30));
    assert_eq!(halted(&s).1, "nodes-online");
    for a in &agents {
        assert!(log(a).is_empty(), "{} was touched", a.name);
    }
}

#[test]
fn a_node_that_does_not_return_after_its_reboot_halts_the_rollout() {
    let c = controller();
    // pve-01's simulated reboot takes an hour: it never comes back within the timeout.
    let mut agents = vec![node(&c, "pve-01", 3600.0)];
    agents.extend(["pve-02", "pve-03"].iter().map(|n| node(&c, n, 0.3)));
    wait_online(&c, &NODES);
    start(&c, &[]);
    let s = wait_settled(&c, Duration::from_secs(60));
    assert_eq!(
        halted(&s),
        ("pve-01".into(), "reboot-return".into()),
        "{s:#}"
    );
    assert_eq!(count(&agents[0], |x| *x == Action::Reboot), 1);
    for a in &agents[1..] {
        assert!(log(a).is_empty(), "{} was touched", a.name);
    }
}

/// The (node, event) pairs of the rollout's event log, in order.
fn boundaries(s: &Value) -> Vec<(String, String)> {
    s["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ev| {
            let what = match ev["phase"].as_str() {
                Some(p) => format!("phase {p}"),
                None => ev["event"].as_str().unwrap_or_default().to_string(),
            };
            (ev["node"].as_str().unwrap_or_default().to_string(), what)
        })
        .collect()
}

/// One crash run: a fresh cluster whose actions take a while, a rollout, SIGKILL of the
/// controller as soon as its event log holds `at` (None: no crash), restart, completion.
/// Returns the event log of the finished rollout.
fn crash_run(at: Option<&(String, String)>) -> Vec<(String, String)> {
    let mut c = controller_with(CRASH_CONFIG);
    let agents: Vec<Agent> = NODES
        .iter()
        .map(|n| {
            let dir = support::fixtures_dir().join("seed").join(n);
            let (root, state) = Agent::enroll_fixture(&c, n, &dir);
            let sim = root.path().join("var/lib/fleetward-sim");
            std::fs::write(sim.join("pending.json"), pending()).unwrap();
            let run = AgentRun::default()
                .sim_reboot_secs(0.3)
                .sim_action_secs(0.2);
            Agent::run_with(n, root, state, run)
        })
        .collect();
    wait_online(&c, &NODES);
    start(&c, &[]);
    if let Some(at) = at {
        let t0 = std::time::Instant::now();
        while !boundaries(&status(&c)).contains(at) {
            if t0.elapsed() > Duration::from_secs(60) {
                panic!(
                    "crash point {at:?} not reached in 60 s; events: {:#}",
                    status(&c)["events"]
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        c.kill(); // SIGKILL
        c.restart();
    }
    let s = wait_settled(&c, Duration::from_secs(180));
    assert_eq!(state_word(&s), "completed", "crash at {at:?}: {s:#}");
    for a in &agents {
        let what = format!("{} (crash at {at:?})", a.name);
        assert_eq!(count(a, |x| *x == Action::AptDistUpgrade), 1, "{what}");
        assert_eq!(count(a, |x| *x == Action::Reboot), 1, "{what}");
        assert_eq!(read(a, "/proc/sys/kernel/osrelease"), NEW_KERNEL, "{what}");
    }
    assert_max_out(&agents, 1);
    assert_events_max_out(&s, 1);
    boundaries(&s)
}

#[test]
fn sigkill_at_every_phase_boundary_neither_repeats_nor_skips_a_step() {
    let all = crash_run(None);
    let points: Vec<(String, String)> = all
        .into_iter()
        .filter(|(node, _)| !node.is_empty()) // per-node boundaries
        .collect();
    assert!(points.len() >= 3 * 8, "too few boundaries: {points:?}");
    // Four runs at a time: each is a controller and three mostly idle agents.
    let next = std::sync::Mutex::new(points.iter());
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| loop {
                let Some(at) = next.lock().unwrap().next() else {
                    return;
                };
                crash_run(Some(at));
            });
        }
    });
}

#[test]
fn fifty_nodes_with_max_unavailable_five_never_exceed_five() {
    use fleetward_tests::fakefleet::{self, FleetOptions, NEW_KERNEL as NEW};
    use std::sync::atomic::Ordering;
    let c = controller();
    let names: Vec<String> = (1..=50).map(|i| format!("node-{i:02}")).collect();
    let opts = FleetOptions {
        reboot: Duration::from_millis(300),
        action: Duration::from_millis(20),
    };
    let (_rt, fleet) = fakefleet::start(&c, &names, 8, opts);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    wait_online(&c, &refs);
    start(&c, &["--max-unavailable", "5"]);
    let s = wait_settled(&c, Duration::from_secs(180));
    assert_eq!(state_word(&s), "completed", "{s:#}");
    let max = fleet.max_out.load(Ordering::SeqCst);
    assert_eq!(
        max, 5,
        "at most 5 nodes out at once, and 5 were (parallelism happened)"
    );
    assert_eq!(fleet.out_now.load(Ordering::SeqCst), 0);
    assert_events_max_out(&s, 5);
    for n in &names {
        assert_eq!(fleet.count(n, "apt-dist-upgrade"), 1, "{n}");
        assert_eq!(fleet.count(n, "reboot"), 1, "{n}");
    }
    let shown = c.cli_json(&["node", "show", "node-37"]);
    assert_eq!(shown["report"]["facts"]["node"]["running_kernel"], NEW);
}

/// `rollout start --refresh-lists`: every node's lists are refreshed first; a node with
/// nothing to upgrade then (pve-01, no pending upgrade) is left out — no maintenance, so no
/// migration — while the others are upgraded; with nothing to do anywhere, nothing starts.
#[test]
fn start_with_fresh_lists_leaves_out_nodes_with_nothing_to_do() {
    let c = controller();
    let dir = support::fixtures_dir().join("seed").join("pve-01");
    let (root, state) = Agent::enroll_fixture(&c, "pve-01", &dir);
    let idle = Agent::run_with(
        "pve-01",
        root,
        state,
        AgentRun::default().sim_reboot_secs(0.3),
    );
    let busy: Vec<Agent> = ["pve-02", "pve-03"]
        .iter()
        .map(|n| node(&c, n, 0.3))
        .collect();
    wait_online(&c, &NODES);
    let plan = c.cli_json(&["rollout", "plan", "--refresh-lists"]);
    let skipped: Vec<bool> = plan["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["skipped"].as_bool().unwrap())
        .collect();
    assert_eq!(skipped, [true, false, false], "{plan:#}");
    start(&c, &["--refresh-lists"]);
    let s = wait_settled(&c, Duration::from_secs(90));
    assert_eq!(state_word(&s), "completed", "{s:#}");
    let maintenance = |a: &Agent| count(a, |x| matches!(x, Action::MaintenanceOn));
    assert_eq!(maintenance(&idle), 0, "pve-01 had nothing to do");
    // Once for `plan`, once for `start` (whose own plan step refreshes; its request then
    // does not refresh a second time).
    assert_eq!(count(&idle, |x| matches!(x, Action::AptUpdate)), 2);
    for a in &busy {
        assert_eq!(maintenance(a), 1);
    }
    // Now every node is up to date: `start --refresh-lists` starts nothing and says so.
    let out = c.cli_text(&["rollout", "start", "--yes", "--refresh-lists"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(text.contains("no rollout started"), "{text}");
    assert_eq!(
        c.cli_json(&["rollout", "list"]).as_array().unwrap().len(),
        1
    );
}

/// pve-01's HA manager holds vm:101 in state `error` and vm:100 is `state ignored`
/// (issue 13): the plan lists vm:100 as a non-HA guest HA will not move, and the rollout
/// halts at pve-01's wait for migration naming vm:101 (HA would never move it; the reboot
/// would stop it unannounced). Nothing is upgraded.
#[test]
fn an_ha_resource_in_error_halts_at_the_wait_and_an_ignored_one_is_planned_as_non_ha() {
    let c = controller();
    let dir = support::fixtures_dir().join("seed/pve-01");
    let (root, state) = Agent::enroll_fixture(&c, "pve-01", &dir);
    let p = |rel: &str| root.path().join(rel);
    let sim = p("var/lib/fleetward-sim");
    std::fs::write(sim.join("pending.json"), pending()).unwrap();
    let resources = std::fs::read_to_string(p("etc/pve/ha/resources.cfg"))
        .unwrap()
        .replacen("vm: 100\n\tstate started", "vm: 100\n\tstate ignored", 1);
    assert!(resources.contains("state ignored"));
    std::fs::write(p("etc/pve/ha/resources.cfg"), resources).unwrap();
    std::fs::write(
        p("etc/pve/ha/manager_status"),
        r#"{"master_node":"pve-02","node_status":{"pve-01":"online","pve-02":"online",
            "pve-03":"online"},"service_status":{"vm:101":{"node":"pve-01","state":"error",
            "uid":"x"}},"timestamp":1764100000}"#,
    )
    .unwrap();
    let one = Agent::run_with(
        "pve-01",
        root,
        state,
        AgentRun::default().sim_reboot_secs(0.3),
    );
    let _others = [node(&c, "pve-02", 0.3), node(&c, "pve-03", 0.3)];
    wait_online(&c, &NODES);
    let plan = c.cli_json(&["rollout", "plan", "--nodes", "pve-01"]);
    let text = plan.to_string();

    assert!(
        text.contains("non-HA (HA resource in state ignored: HA will not move it)"),
        "{plan:#}"
    );
    start(&c, &["--nodes", "pve-01"]);
    let s = wait_settled(&c, Duration::from_secs(30));
    assert_eq!(
        halted(&s),
        ("pve-01".into(), "ha-resource-error".into()),
        "{s:#}"
    );
    let reason = s["rollout"]["halt"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("vm:101") && reason.contains("state error"),
        "{reason}"
    );
    assert_eq!(
        count(&one, |x| *x == Action::AptUpdate),
        0,
        "nothing upgraded"
    );
    assert_eq!(count(&one, |x| *x == Action::MaintenanceOn), 1);
}

/// #13: after its reboot pve-01's OSDs come back 2 s after the node (as the ceph-osd units
/// start after boot). `ceph osd unset noout` would exit 0 at once, but the rollout sends it
/// only when pve-01's report shows every OSD up and in; until then `noout` stays set. Each
/// flag is done when the node's report shows it (the marker the simulated OSD map keeps).
#[test]
fn noout_stays_set_until_the_osds_are_back_after_the_reboot() {
    let c = controller();
    let (root, state) =
        Agent::enroll_fixture(&c, "pve-01", &support::fixtures_dir().join("seed/pve-01"));
    let sim = root.path().join("var/lib/fleetward-sim");
    std::fs::write(sim.join("pending.json"), pending()).unwrap();
    let run = AgentRun::default()
        .sim_reboot_secs(0.3)
        .sim_osd_delay_secs(2.0);
    let mut agents = vec![Agent::run_with("pve-01", root, state, run)];
    agents.extend(["pve-02", "pve-03"].iter().map(|n| node(&c, n, 0.3)));
    wait_online(&c, &NODES);
    start(&c, &["--nodes", "pve-01"]);
    let s = wait_settled(&c, Duration::from_secs(30));
    assert_eq!(state_word(&s), "completed", "{s:#}");
    let a = &agents[0];
    let entries = log(a);
    let at = |what: Action| {
        entries
            .iter()
            .find(|e| e.ok && e.action == what)
            .unwrap_or_else(|| panic!("{what:?} in {entries:?}"))
            .clone()
    };
    let (set, reboot, unset) = (
        at(Action::CephSetNoout),
        at(Action::Reboot),
        at(Action::CephUnsetNoout),
    );
    assert!(set.finished_ms <= reboot.started_ms);
    // The boot wrote when the OSDs come up: the unset was sent only after that.
    let up_at: u64 = read(a, "/var/lib/fleetward-sim/osds-down").parse().unwrap();
    assert!(up_at >= reboot.started_ms + 2_000, "{up_at} {reboot:?}");
    assert!(
        unset.started_ms >= up_at,
        "noout unset {} ms before the OSDs were up",
        up_at - unset.started_ms
    );
    assert!(!a.path("/var/lib/fleetward-sim/ceph-noout").exists());
    let shown = c.cli_json(&["node", "show", "pve-01"]);
    let ceph = &shown["report"]["facts"]["ceph"];
    assert_eq!(ceph["noout"], false, "{ceph:#}");
    assert_eq!(ceph["osds"]["up"], ceph["osds"]["total"], "{ceph:#}");
    for a in &agents[1..] {
        assert!(log(a).is_empty(), "{} was touched", a.name);
    }
}
