//! The real executor: each [`Action`] becomes one exact command line, run through a
//! [`CommandRunner`] with a timeout and its output streamed line by line.
//!
//! | action | command line | env | timeout |
//! |---|---|---|---|
//! | maintenance-on | `ha-manager crm-command node-maintenance enable NODE` | | 60 s |
//! | maintenance-off | `ha-manager crm-command node-maintenance disable NODE` | | 60 s |
//! | wait-guests-migrated | `ha-manager status`, polled | | 30 s per poll, `timeout_secs` in all |
//! | apt-update | `apt-get update` | `DEBIAN_FRONTEND=noninteractive` | 600 s |
//! | apt-dist-upgrade | `apt-get -y -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold dist-upgrade` | `DEBIAN_FRONTEND=noninteractive`, `APT_LISTCHANGES_FRONTEND=none` | 3600 s |
//! | boot-refresh | `proxmox-boot-tool refresh` | | 600 s |
//! | ceph-set-noout / ceph-unset-noout | `ceph osd set noout` / `ceph osd unset noout`, then `ceph osd dump --format json` (read-only, directly), polled | | 60 s; 10 s per poll |
//! | guest-stop | `qm|pct shutdown VMID --timeout T [--forceStop 1]` | | T + 60 s |
//! | guest-start | `qm|pct start VMID` | | 300 s |
//! | guest-migrate | `qm migrate VMID TARGET --online` / `pct migrate VMID TARGET --restart` | | 3600 s |
//! | ha-disarm / ha-arm | `ha-manager crm-command disarm-ha freeze` / `ha-manager crm-command arm-ha` | | 60 s |
//! | reboot / power-off | `systemctl reboot` / `systemctl poweroff` | | 60 s |
//!
//! Every command above runs as its own transient systemd unit
//! (`systemd-run --unit=fleetward-<key> … --wait`, see [`super::unit`]): it outlives the agent
//! and its sandbox, is never signalled at its timeout (reported "still running" instead), and
//! is found again by its key after an agent restart ([`Executor::recover`]). Read-only
//! queries (`ha-manager status`, apt's simulation) run directly.
//!
//! apt is the oracle for upgrades: [`RealExecutor::simulate_command`] (`LC_ALL=C apt-get -s
//! -o Debug::NoLocking=1 dist-upgrade`, 120 s) gives the transaction for reports (cached
//! while dpkg's status, the lists and apt's configuration are unchanged), and runs again right
//! before `apt-dist-upgrade`, which is refused when apt would remove a protected package.
//!
//! Programs are found through `PATH` (the agent's systemd unit has the standard one). No
//! shell is involved: every argument is one `argv` entry, and node names and VMIDs are
//! validated before they reach a command line ([`Action::validate`]).
//!
//! After `ceph osd set/unset noout` exits 0, the OSD map is read (`ceph osd dump --format
//! json`, [`crate::parse::ceph`]) until its `noout` flag reads as requested, at most
//! [`NOOUT_POLLS`] times [`RealExecutor::ceph_poll_interval`] apart; the outcome carries
//! the last map read (`ActionOutcome::ceph`), so the controller observes the flag even when
//! the node's report cannot tell. A probe that fails or prints no OSD map ends the polling
//! (the outcome then carries nothing).
//!
//! `wait-guests-migrated` parses `ha-manager status` lines of the form
//! `service vm:100 (pve-01, started)`: it waits until no service on this node is in a state
//! other than `stopped`, `ignored`, `disabled` or `error` (services in those states do not
//! run, and nothing would move them).

use super::unit::{self, Found};
use super::{
    valid_node_name, Action, ActionOutcome, ActionRequest, Executor, GuestKind, OutputTail,
    Simulation, OUTPUT_MAX,
};
use crate::parse::apt_sim;
use crate::parse::ceph::OsdMap;
use crate::runner::CommandRunner;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

/// How long apt's read-only simulation may take.
pub const SIMULATE_TIMEOUT: Duration = Duration::from_secs(120);
/// Most output of apt's simulation kept for parsing (a major-release upgrade prints a few
/// hundred KB).
const SIMULATE_OUTPUT_MAX: usize = 16 << 20;
/// What apt's answer depends on: while none of these changed, the last simulation holds.
const APT_STATE: &[&str] = &[
    "/var/lib/dpkg/status",
    "/var/lib/apt/lists",
    "/etc/apt/sources.list",
    "/etc/apt/sources.list.d",
    "/etc/apt/preferences",
    "/etc/apt/preferences.d",
    "/etc/apt/apt.conf.d",
];

/// How long one `ceph osd dump` may take.
pub const OSD_DUMP_TIMEOUT: Duration = Duration::from_secs(10);
/// How many times the OSD map is read after `ceph osd set/unset noout`, at most.
pub const NOOUT_POLLS: u32 = 5;
/// The default pause between two reads of the OSD map.
pub const CEPH_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// How long one `ha-manager status` poll may take.
pub const HA_STATUS_TIMEOUT: Duration = Duration::from_secs(30);
/// The default pause between two `ha-manager status` polls.
pub const HA_POLL_INTERVAL: Duration = Duration::from_secs(5);

/// One command line as the real executor runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub timeout: Duration,
}

impl CommandLine {
    fn new(program: &str, args: &[&str], timeout: Duration) -> Self {
        CommandLine {
            program: program.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env: Vec::new(),
            timeout,
        }
    }

    fn env(mut self, vars: &[(&str, &str)]) -> Self {
        self.env = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self
    }
}

impl std::fmt::Display for CommandLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (k, v) in &self.env {
            write!(f, "{k}={v} ")?;
        }
        f.write_str(&self.program)?;
        for a in &self.args {
            write!(f, " {a}")?;
        }
        Ok(())
    }
}

/// The `service SID (NODE, STATE...)` lines of `ha-manager status` output, as
/// `(sid, node, state)`.
fn ha_service_lines(status: &str) -> impl Iterator<Item = (&str, &str, &str)> {
    status.lines().filter_map(|line| {
        let rest = line.trim().strip_prefix("service ")?;
        let (sid, rest) = rest.trim().split_once(' ')?;
        let inner = rest.trim().strip_prefix('(')?.strip_suffix(')')?;
        let mut parts = inner.split(',').map(str::trim);
        let on = parts.next()?;
        Some((sid, on, parts.next().unwrap_or("")))
    })
}

/// HA services in `ha-manager status` output that still run on `node`: the ids of lines
/// `service SID (NODE, STATE...)` whose state is not `stopped`, `ignored`, `disabled` or
/// `error`.
pub fn ha_services_on(status: &str, node: &str) -> Vec<String> {
    ha_service_lines(status)
        .filter(|(_, on, state)| {
            *on == node && !matches!(*state, "stopped" | "ignored" | "disabled" | "error")
        })
        .map(|(sid, _, _)| sid.to_owned())
        .collect()
}

/// HA services in `ha-manager status` output in state `error` on `node`: HA neither moves
/// nor stops a failed resource (pve-ha-manager `src/PVE/HA/Manager.pm`, the `error` state
/// is left only by an operator), so waiting for it to leave is pointless.
pub fn ha_services_in_error(status: &str, node: &str) -> Vec<String> {
    ha_service_lines(status)
        .filter(|(_, on, state)| *on == node && *state == "error")
        .map(|(sid, _, _)| sid.to_owned())
        .collect()
}

/// The real executor for node `node`.
pub struct RealExecutor<R: CommandRunner> {
    pub node: String,
    pub runner: R,
    /// Pause between two `ha-manager status` polls ([`HA_POLL_INTERVAL`] by default), and
    /// between two looks at a still running unit after a restart.
    pub poll_interval: Duration,
    /// Pause between two reads of the OSD map after a noout action ([`CEPH_POLL_INTERVAL`]).
    pub ceph_poll_interval: Duration,
    /// The last simulation with the modification times of [`APT_STATE`] it was made at.
    simulated: Mutex<Option<Cached>>,
}

/// apt's last answer and the modification times of [`APT_STATE`] it was given at.
type Cached = (Vec<Option<SystemTime>>, Result<Simulation, String>);

fn apt_state() -> Vec<Option<SystemTime>> {
    APT_STATE
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

impl<R: CommandRunner> RealExecutor<R> {
    pub fn new(node: impl Into<String>, runner: R) -> Self {
        RealExecutor {
            node: node.into(),
            runner,
            poll_interval: HA_POLL_INTERVAL,
            ceph_poll_interval: CEPH_POLL_INTERVAL,
            simulated: Mutex::new(None),
        }
    }

    /// apt's read-only simulation: `LC_ALL=C apt-get -s -o Debug::NoLocking=1 dist-upgrade`
    /// (no lock, so it may run beside anything; not in a unit: it changes nothing).
    pub fn simulate_command() -> CommandLine {
        CommandLine::new("apt-get", apt_sim::SIMULATE_ARGS, SIMULATE_TIMEOUT)
            .env(&[("LC_ALL", "C")])
    }

    /// The read-only probe of the OSD map: `ceph osd dump --format json`.
    pub fn osd_dump_command() -> CommandLine {
        CommandLine::new("ceph", crate::parse::ceph::OSD_DUMP_ARGS, OSD_DUMP_TIMEOUT)
    }

    /// After `ceph osd set/unset noout` (`want`: the flag requested): reads the OSD map
    /// until the flag reads as requested, at most [`NOOUT_POLLS`] times; the last map read,
    /// or `None` when the probe fails or prints no OSD map.
    fn observe_noout(&self, want: bool, out: &mut dyn FnMut(&str)) -> Option<OsdMap> {
        let cl = Self::osd_dump_command();
        let mut last = None;
        for i in 0..NOOUT_POLLS {
            if i > 0 {
                thread::sleep(self.ceph_poll_interval);
            }
            let r = self
                .runner
                .run(&cl.program, &cl.args, &cl.env, cl.timeout, &mut |_| {});
            let map = if r.success() {
                crate::parse::ceph::parse_osd_dump(&r.output)
            } else {
                Err(r
                    .spawn_error
                    .clone()
                    .unwrap_or_else(|| format!("exit {:?}", r.exit_code)))
            };
            match map {
                Err(e) => {
                    out(&format!("`{cl}` cannot tell the OSD map's flags: {e}"));
                    return None;
                }
                Ok(m) => {
                    last = Some(m);
                    if m.noout == want {
                        break;
                    }
                }
            }
        }
        if let Some(m) = &last {
            out(&format!(
                "OSD map: noout {}, {} of {} OSDs up, {} in",
                if m.noout { "set" } else { "not set" },
                m.osds.up,
                m.osds.total,
                m.osds.inside
            ));
        }
        last
    }

    /// Runs apt's simulation now and parses it.
    pub fn simulate_now(&self) -> Result<Simulation, String> {
        let cl = Self::simulate_command();
        let mut text = String::new();
        let r = self
            .runner
            .run(&cl.program, &cl.args, &cl.env, cl.timeout, &mut |l| {
                if text.len() < SIMULATE_OUTPUT_MAX {
                    text.push_str(l);
                    text.push('\n');
                }
            });
        if !r.success() {
            let why = r.spawn_error.clone().unwrap_or_else(|| {
                format!(
                    "exit {:?}{}",
                    r.exit_code,
                    if r.timed_out { ", timed out" } else { "" }
                )
            });
            let last: Vec<&str> = r.output.lines().rev().take(5).collect();
            let last: Vec<&str> = last.into_iter().rev().collect();
            return Err(format!("`{cl}` failed ({why}): {}", last.join(" / ")));
        }
        Ok(apt_sim::parse(&text))
    }

    /// The real `apt-dist-upgrade`: apt is asked once more right before it, and a
    /// transaction that would remove a protected package (`upgrade.removes-protected`) or
    /// that apt cannot compute is refused: nothing runs.
    fn checked_dist_upgrade(
        &self,
        req: &ActionRequest,
        out: &mut dyn FnMut(&str),
    ) -> Option<ActionOutcome> {
        match self.simulate_now() {
            Err(e) => Some(ActionOutcome::refused(
                &req.id,
                format!("refusing apt-dist-upgrade: apt's simulation failed: {e}"),
            )),
            Ok(sim) => {
                let running = std::fs::read_to_string("/proc/sys/kernel/osrelease")
                    .ok()
                    .map(|s| s.trim().to_owned());
                let bad = apt_sim::protected_removals(&sim.removed, running.as_deref());
                if !bad.is_empty() {
                    return Some(ActionOutcome::refused(
                        &req.id,
                        format!(
                            "refusing apt-dist-upgrade (upgrade.removes-protected): apt would remove {}",
                            bad.join(", ")
                        ),
                    ));
                }
                out(&format!(
                    "apt's simulation: {} upgraded, {} newly installed, {} to remove, {} kept back",
                    sim.upgrades.len(),
                    sim.new.len(),
                    sim.removed.len(),
                    sim.kept_back.len()
                ));
                None
            }
        }
    }

    /// `cl` as the transient unit of `req` (see [`unit`]): the outcome, with the unit's
    /// journal as output; at the timeout, "still running" and the unit left alone.
    fn run_in_unit(
        &self,
        req: &ActionRequest,
        cl: &CommandLine,
        out: &mut dyn FnMut(&str),
    ) -> ActionOutcome {
        let unit_name = match unit::unit_name(&req.id) {
            Ok(u) => u,
            Err(e) => return ActionOutcome::refused(&req.id, e),
        };
        let wrapped = unit::wrap(&unit_name, req.action.name(), &req.id, cl);
        let header = format!("+ {cl}");
        out(&header);
        out(&format!("  (as transient unit {unit_name})"));
        let r = self.runner.run(
            &wrapped.program,
            &wrapped.args,
            &wrapped.env,
            wrapped.timeout,
            out,
        );
        let mut text = format!("{header}\n{}", r.output);
        if let Some(e) = &r.spawn_error {
            out(e);
            text.push_str(e);
            text.push('\n');
            return ActionOutcome::new(&req.id, false, text, None);
        }
        if r.timed_out {
            let msg = format!(
                "{} still running after {}s in unit {unit_name}: left alone (never signalled); \
                 see `systemctl status {unit_name}`",
                req.action.name(),
                cl.timeout.as_secs()
            );
            out(&msg);
            text.push_str(&msg);
            return ActionOutcome {
                still_running: true,
                ..ActionOutcome::new(&req.id, false, text, None)
            };
        }
        text.push_str(&self.journal(&unit_name, out));
        let ok = r.success();
        ActionOutcome {
            reboot: ok && req.action == Action::Reboot,
            power_off: ok && req.action == Action::PowerOff,
            ..ActionOutcome::new(&req.id, ok, text, r.exit_code)
        }
    }

    /// The unit's own output lines from the journal, passed to `out`; as text.
    fn journal(&self, unit_name: &str, out: &mut dyn FnMut(&str)) -> String {
        let j = unit::journal_command(unit_name);
        let r = self
            .runner
            .run(&j.program, &j.args, &j.env, j.timeout, &mut |_| {});
        let mut text = String::new();
        for line in unit::command_lines(&r.output) {
            out(line);
            text.push_str(line);
            text.push('\n');
        }
        text
    }

    /// The command line of an action; `None` for `wait-guests-migrated`, which polls
    /// [`RealExecutor::ha_status_command`] instead.
    pub fn command_line(&self, action: &Action) -> Option<CommandLine> {
        let t = action.default_timeout();
        let node = self.node.as_str();
        let noninteractive = ("DEBIAN_FRONTEND", "noninteractive");
        Some(match action {
            Action::MaintenanceOn => CommandLine::new(
                "ha-manager",
                &["crm-command", "node-maintenance", "enable", node],
                t,
            ),
            Action::MaintenanceOff => CommandLine::new(
                "ha-manager",
                &["crm-command", "node-maintenance", "disable", node],
                t,
            ),
            Action::WaitGuestsMigrated { .. } => return None,
            Action::AptUpdate => CommandLine::new("apt-get", &["update"], t).env(&[noninteractive]),
            Action::AptDistUpgrade => CommandLine::new(
                "apt-get",
                &[
                    "-y",
                    "-o",
                    "Dpkg::Options::=--force-confdef",
                    "-o",
                    "Dpkg::Options::=--force-confold",
                    "dist-upgrade",
                ],
                t,
            )
            .env(&[noninteractive, ("APT_LISTCHANGES_FRONTEND", "none")]),
            Action::BootRefresh => CommandLine::new("proxmox-boot-tool", &["refresh"], t),
            Action::CephSetNoout => CommandLine::new("ceph", &["osd", "set", "noout"], t),
            Action::CephUnsetNoout => CommandLine::new("ceph", &["osd", "unset", "noout"], t),
            Action::GuestStop {
                vmid,
                kind,
                timeout_secs,
                force,
            } => {
                let (vmid, secs) = (vmid.to_string(), timeout_secs.to_string());
                let mut args = vec!["shutdown", &vmid, "--timeout", &secs];
                if *force {
                    args.extend(["--forceStop", "1"]);
                }
                CommandLine::new(kind.tool(), &args, t)
            }
            Action::GuestStart { vmid, kind } => {
                CommandLine::new(kind.tool(), &["start", &vmid.to_string()], t)
            }
            Action::GuestMigrate { vmid, kind, target } => {
                let mode = match kind {
                    GuestKind::Qemu => "--online",
                    GuestKind::Lxc => "--restart",
                };
                CommandLine::new(
                    kind.tool(),
                    &["migrate", &vmid.to_string(), target, mode],
                    t,
                )
            }
            Action::HaDisarm => {
                CommandLine::new("ha-manager", &["crm-command", "disarm-ha", "freeze"], t)
            }
            Action::HaArm => CommandLine::new("ha-manager", &["crm-command", "arm-ha"], t),
            Action::Reboot => CommandLine::new("systemctl", &["reboot"], t),
            Action::PowerOff => CommandLine::new("systemctl", &["poweroff"], t),
        })
    }

    /// One poll of `wait-guests-migrated`.
    pub fn ha_status_command(&self) -> CommandLine {
        CommandLine::new("ha-manager", &["status"], HA_STATUS_TIMEOUT)
    }

    fn wait_guests_migrated(
        &self,
        req: &ActionRequest,
        timeout_secs: u64,
        out: &mut dyn FnMut(&str),
    ) -> ActionOutcome {
        let start = Instant::now();
        let deadline = start.checked_add(Duration::from_secs(timeout_secs));
        let mut log = OutputTail::new(OUTPUT_MAX - 256);
        let mut say = |line: String, out: &mut dyn FnMut(&str)| {
            out(&line);
            log.push_line(&line);
        };
        let mut poll = self.ha_status_command();
        loop {
            if let Some(d) = deadline {
                let left = d.saturating_duration_since(Instant::now());
                poll.timeout = HA_STATUS_TIMEOUT.min(left.max(Duration::from_secs(1)));
            }
            let r = self.runner.run(
                &poll.program,
                &poll.args,
                &poll.env,
                poll.timeout,
                &mut |_| {},
            );
            let waiting = if r.success() {
                let failed = ha_services_in_error(&r.output, &self.node);
                if !failed.is_empty() {
                    say(
                        format!(
                            "HA resource(s) in state error on {}: {} (HA will not move them)",
                            self.node,
                            failed.join(", ")
                        ),
                        out,
                    );
                    return ActionOutcome::new(&req.id, false, log.finish(), None);
                }
                let left = ha_services_on(&r.output, &self.node);
                if left.is_empty() {
                    say(format!("no HA service left on {}", self.node), out);
                    return ActionOutcome::new(&req.id, true, log.finish(), Some(0));
                }
                format!(
                    "waiting for {} HA service(s) to leave {}: {}",
                    left.len(),
                    self.node,
                    left.join(", ")
                )
            } else {
                let why = r.spawn_error.clone().unwrap_or_else(|| {
                    format!(
                        "exit {:?}{}",
                        r.exit_code,
                        if r.timed_out { ", timed out" } else { "" }
                    )
                });
                format!("`{poll}` failed ({why}); retrying")
            };
            say(waiting, out);
            let now = Instant::now();
            if deadline.is_none_or(|d| now + self.poll_interval >= d) {
                say(
                    format!(
                        "timed out after {}s waiting for HA services to leave {}",
                        start.elapsed().as_secs(),
                        self.node
                    ),
                    out,
                );
                return ActionOutcome::new(&req.id, false, log.finish(), None);
            }
            thread::sleep(self.poll_interval);
        }
    }
}

impl<R: CommandRunner> Executor for RealExecutor<R> {
    fn execute(&self, req: &ActionRequest, out: &mut dyn FnMut(&str)) -> ActionOutcome {
        if let Err(e) = valid_node_name(&self.node) {
            return ActionOutcome::refused(&req.id, format!("this node: {e}"));
        }
        if let Err(e) = req.action.validate() {
            return ActionOutcome::refused(&req.id, e);
        }
        let Some(cl) = self.command_line(&req.action) else {
            let secs = match req.action {
                Action::WaitGuestsMigrated { timeout_secs } => timeout_secs,
                _ => 0,
            };
            return self.wait_guests_migrated(req, secs, out);
        };
        if req.action == Action::AptDistUpgrade {
            if let Some(refused) = self.checked_dist_upgrade(req, out) {
                return refused;
            }
        }
        let mut outcome = self.run_in_unit(req, &cl, out);
        let want = match req.action {
            Action::CephSetNoout => Some(true),
            Action::CephUnsetNoout => Some(false),
            _ => None,
        };
        if let (Some(want), true) = (want, outcome.ok) {
            outcome.ceph = self.observe_noout(want, out);
        }
        outcome
    }

    fn simulate_upgrade(&self) -> Option<Result<Simulation, String>> {
        let key = apt_state();
        let mut cache = self.simulated.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((k, r)) = cache.as_ref() {
            if *k == key && key.iter().any(Option::is_some) {
                return Some(r.clone());
            }
        }
        let r = self.simulate_now();
        *cache = Some((key, r.clone()));
        Some(r)
    }

    /// After a restart: the action's unit, by its name. While it runs, wait (bounded by
    /// the action's timeout, then "still running"); once it ended, its result and journal.
    fn recover(&self, req: &ActionRequest, out: &mut dyn FnMut(&str)) -> Option<ActionOutcome> {
        self.command_line(&req.action)?;
        let unit_name = unit::unit_name(&req.id).ok()?;
        let start = Instant::now();
        let bound = req.action.default_timeout();
        let mut said = false;
        loop {
            let show = unit::show_command(&unit_name);
            let r = self.runner.run(
                &show.program,
                &show.args,
                &show.env,
                show.timeout,
                &mut |_| {},
            );
            if !r.success() {
                return None;
            }
            let state = unit::parse_show(&r.output);
            let running = matches!(unit::judge(&state, ""), Found::Running);
            let journal = if running {
                String::new()
            } else {
                let j = unit::journal_command(&unit_name);
                self.runner
                    .run(&j.program, &j.args, &j.env, j.timeout, &mut |_| {})
                    .output
            };
            match unit::judge(&state, &journal) {
                Found::Unknown => return None,
                Found::Running => {
                    if !said {
                        out(&format!(
                            "{} was started before the agent restarted and still runs in unit {unit_name}: waiting for it",
                            req.action.name()
                        ));
                        said = true;
                    }
                    if start.elapsed() + self.poll_interval >= bound {
                        let msg = format!(
                            "{} still running in unit {unit_name} after the agent restarted: left alone (never signalled)",
                            req.action.name()
                        );
                        out(&msg);
                        return Some(ActionOutcome {
                            still_running: true,
                            ..ActionOutcome::new(&req.id, false, msg, None)
                        });
                    }
                    thread::sleep(self.poll_interval);
                }
                Found::Finished { ok, exit_code, why } => {
                    let mut text = format!(
                        "{} was started before the agent restarted; found its unit {unit_name}: {why}\n",
                        req.action.name()
                    );
                    out(text.trim_end());
                    for line in unit::command_lines(&journal) {
                        out(line);
                        text.push_str(line);
                        text.push('\n');
                    }
                    return Some(ActionOutcome {
                        reboot: ok && req.action == Action::Reboot,
                        power_off: ok && req.action == Action::PowerOff,
                        ..ActionOutcome::new(&req.id, ok, text, exit_code)
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::GuestKind::{Lxc, Qemu};
    use crate::runner::testing::{Call, RecordingRunner};
    use crate::runner::RunResult;

    fn req(action: Action) -> ActionRequest {
        ActionRequest {
            id: "op/pve-01/step/1".into(),
            action,
        }
    }

    fn call(program: &str, args: &str, env: &[(&str, &str)], secs: u64) -> Call {
        Call {
            program: program.into(),
            args: args.split_whitespace().map(String::from).collect(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            timeout: Duration::from_secs(secs),
        }
    }

    fn simulate_call() -> Call {
        call(
            "apt-get",
            "-s -o Debug::NoLocking=1 dist-upgrade",
            &[("LC_ALL", "C")],
            120,
        )
    }

    fn journal_call(unit: &str) -> Call {
        Call {
            program: "journalctl".into(),
            args: vec![
                format!("--unit={unit}"),
                "--output=cat".into(),
                "--no-pager".into(),
                "--quiet".into(),
                "--lines=400".into(),
            ],
            env: vec![("LC_ALL".into(), "C".into())],
            timeout: Duration::from_secs(30),
        }
    }

    /// The acceptance table: every action's exact program, arguments, environment and
    /// timeout. Nothing is run.
    #[test]
    fn executor_real_command_lines_are_pinned() {
        let ni = ("DEBIAN_FRONTEND", "noninteractive");
        let table: Vec<(Action, Call)> = vec![
            (
                Action::MaintenanceOn,
                call("ha-manager", "crm-command node-maintenance enable pve-01", &[], 60),
            ),
            (
                Action::MaintenanceOff,
                call("ha-manager", "crm-command node-maintenance disable pve-01", &[], 60),
            ),
            (Action::AptUpdate, call("apt-get", "update", &[ni], 600)),
            (
                Action::AptDistUpgrade,
                call(
                    "apt-get",
                    "-y -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold dist-upgrade",
                    &[ni, ("APT_LISTCHANGES_FRONTEND", "none")],
                    3600,
                ),
            ),
            (Action::BootRefresh, call("proxmox-boot-tool", "refresh", &[], 600)),
            (Action::CephSetNoout, call("ceph", "osd set noout", &[], 60)),
            (Action::CephUnsetNoout, call("ceph", "osd unset noout", &[], 60)),
            (
                Action::GuestStop { vmid: 100, kind: Qemu, timeout_secs: 180, force: false },
                call("qm", "shutdown 100 --timeout 180", &[], 240),
            ),
            (
                Action::GuestStop { vmid: 100, kind: Qemu, timeout_secs: 30, force: true },
                call("qm", "shutdown 100 --timeout 30 --forceStop 1", &[], 90),
            ),
            (
                Action::GuestStop { vmid: 200, kind: Lxc, timeout_secs: 120, force: false },
                call("pct", "shutdown 200 --timeout 120", &[], 180),
            ),
            (
                Action::GuestStop { vmid: 200, kind: Lxc, timeout_secs: 0, force: true },
                call("pct", "shutdown 200 --timeout 0 --forceStop 1", &[], 60),
            ),
            (
                Action::GuestStart { vmid: 100, kind: Qemu },
                call("qm", "start 100", &[], 300),
            ),
            (
                Action::GuestStart { vmid: 200, kind: Lxc },
                call("pct", "start 200", &[], 300),
            ),
            (
                Action::GuestMigrate { vmid: 100, kind: Qemu, target: "pve-02".into() },
                call("qm", "migrate 100 pve-02 --online", &[], 3600),
            ),
            (
                Action::GuestMigrate { vmid: 200, kind: Lxc, target: "pve-03".into() },
                call("pct", "migrate 200 pve-03 --restart", &[], 3600),
            ),
            (
                Action::HaDisarm,
                call("ha-manager", "crm-command disarm-ha freeze", &[], 60),
            ),
            (Action::HaArm, call("ha-manager", "crm-command arm-ha", &[], 60)),
            (Action::Reboot, call("systemctl", "reboot", &[], 60)),
            (Action::PowerOff, call("systemctl", "poweroff", &[], 60)),
        ];
        let exec = RealExecutor::new("pve-01", RecordingRunner::new());
        let unit = "fleetward-op-pve\\x2d01-step-1.service";
        for (action, expected) in table {
            let mut lines = Vec::new();
            let o = exec.execute(&req(action.clone()), &mut |l| lines.push(l.to_owned()));
            assert!(o.ok, "{action:?}: {o:?}");
            assert_eq!(o.exit_code, Some(0));
            assert_eq!(o.reboot, action == Action::Reboot);
            assert_eq!(o.power_off, action == Action::PowerOff);
            assert_eq!(action.default_timeout(), expected.timeout);
            // Each runs as its own transient unit, its environment passed with --setenv;
            // then the unit's journal gives its output. apt-dist-upgrade asks apt first.
            let mut want = Vec::new();
            if action == Action::AptDistUpgrade {
                want.push(simulate_call());
            }
            let mut args = vec![
                format!("--unit={unit}"),
                format!("--description=fleetward {} op/pve-01/step/1", action.name()),
                "--service-type=exec".into(),
                "--wait".into(),
                "--quiet".into(),
            ];
            args.extend(
                expected
                    .env
                    .iter()
                    .map(|(k, v)| format!("--setenv={k}={v}")),
            );
            args.push("--".into());
            args.push(expected.program.clone());
            args.extend(expected.args.iter().cloned());
            want.push(Call {
                program: "systemd-run".into(),
                args,
                env: vec![],
                timeout: expected.timeout,
            });
            want.push(journal_call(unit));
            // The noout actions read the OSD map afterwards (read-only, not in a unit).
            if matches!(action, Action::CephSetNoout | Action::CephUnsetNoout) {
                want.push(call("ceph", "osd dump --format json", &[], 10));
            }
            assert_eq!(exec.runner.take_calls(), want, "{action:?}");
            // The first streamed line (after apt's answer) shows what runs.
            let first = usize::from(action == Action::AptDistUpgrade);
            assert_eq!(
                lines[first],
                format!("+ {}", exec.command_line(&action).unwrap())
            );
        }
        assert_eq!(
            exec.command_line(&Action::AptDistUpgrade)
                .unwrap()
                .to_string(),
            "DEBIAN_FRONTEND=noninteractive APT_LISTCHANGES_FRONTEND=none apt-get -y -o \
             Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold dist-upgrade"
        );
    }

    #[test]
    fn executor_real_failures_and_bad_arguments() {
        let exec = RealExecutor::new("pve-01", RecordingRunner::new());
        exec.runner.script([
            RunResult::exited(0, ""),
            RunResult::exited(100, "E: Could not get lock"),
        ]);
        let mut lines = Vec::new();
        let o = exec.execute(&req(Action::AptDistUpgrade), &mut |l| {
            lines.push(l.to_owned())
        });
        assert!(!o.ok);
        assert_eq!(o.exit_code, Some(100));
        assert!(o.output.contains("E: Could not get lock"));
        assert_eq!(lines.last().unwrap(), "E: Could not get lock");
        exec.runner.script([RunResult {
            timed_out: true,
            ..Default::default()
        }]);
        let o = exec.execute(&req(Action::Reboot), &mut |_| {});
        assert!(!o.ok && !o.reboot);

        // Arguments that could become options never reach a command line.
        let bad = Action::GuestMigrate {
            vmid: 100,
            kind: Qemu,
            target: "--with-local-disks".into(),
        };
        assert!(!exec.execute(&req(bad), &mut |_| {}).ok);
        let bad = Action::GuestStart { vmid: 7, kind: Lxc };
        assert!(!exec.execute(&req(bad), &mut |_| {}).ok);
        // A timeout near u64::MAX is refused, not turned into an overflowing deadline.
        let bad = Action::GuestStop {
            vmid: 100,
            kind: Qemu,
            timeout_secs: u64::MAX,
            force: false,
        };
        let o = exec.execute(&req(bad), &mut |_| {});
        assert!(!o.ok && o.output.contains("timeout_secs"), "{}", o.output);
        let bad = Action::WaitGuestsMigrated {
            timeout_secs: u64::MAX,
        };
        assert!(!exec.execute(&req(bad), &mut |_| {}).ok);
        let weird = RealExecutor::new("-rf", RecordingRunner::new());
        assert!(!weird.execute(&req(Action::MaintenanceOn), &mut |_| {}).ok);
        assert!(weird.runner.calls().is_empty());
        // simulate + unit + journal, then the reboot's unit (timed out: no journal).
        assert_eq!(exec.runner.calls().len(), 4);
    }

    const HA_BUSY: &str = "quorum OK\n\
        master pve-02 (active, Wed Nov 25 10:00:00 2026)\n\
        lrm pve-01 (maintenance mode, watchdog active, Wed Nov 25 10:00:01 2026)\n\
        lrm pve-02 (active, Wed Nov 25 10:00:01 2026)\n\
        service ct:200 (pve-01, stopped)\n\
        service vm:100 (pve-01, migrate)\n\
        service vm:101 (pve-02, started)\n\
        service vm:1010 (pve-010, started)\n\
        service vm:102 (pve-02, error)\n";

    #[test]
    fn executor_real_ha_status_parse() {
        assert_eq!(ha_services_on(HA_BUSY, "pve-01"), ["vm:100"]);
        assert_eq!(ha_services_on(HA_BUSY, "pve-02"), ["vm:101"]);
        assert!(ha_services_on(HA_BUSY, "pve-03").is_empty());
        assert_eq!(ha_services_in_error(HA_BUSY, "pve-02"), ["vm:102"]);
        assert!(ha_services_in_error(HA_BUSY, "pve-01").is_empty());
        assert!(ha_services_on("service (\nservice x\n(((", "pve-01").is_empty());
    }

    #[test]
    fn executor_real_waits_for_ha_guests_to_leave() {
        let mut exec = RealExecutor::new("pve-01", RecordingRunner::new());
        exec.poll_interval = Duration::ZERO;
        exec.runner.script([
            RunResult::exited(0, HA_BUSY),
            RunResult::exited(2, "ipcc_send_rec failed"),
            RunResult::exited(0, "service vm:100 (pve-02, started)\n"),
        ]);
        let mut lines = Vec::new();
        let o = exec.execute(
            &req(Action::WaitGuestsMigrated { timeout_secs: 600 }),
            &mut |l| lines.push(l.to_owned()),
        );
        assert!(o.ok, "{o:?}");
        let calls = exec.runner.take_calls();
        assert_eq!(calls.len(), 3);
        assert!(calls
            .iter()
            .all(|c| *c == call("ha-manager", "status", &[], 30)));
        assert!(lines[0].contains("vm:100"), "{lines:?}");
        assert!(lines[1].contains("retrying"), "{lines:?}");

        // Still there when the time is up: fails, after one poll for a zero timeout.
        exec.runner.script([RunResult::exited(0, HA_BUSY)]);
        let o = exec.execute(
            &req(Action::WaitGuestsMigrated { timeout_secs: 0 }),
            &mut |_| {},
        );
        assert!(!o.ok && o.output.contains("timed out"), "{o:?}");
        assert_eq!(exec.runner.take_calls().len(), 1);
    }

    /// A resource in HA state `error` on the node fails the wait at once, naming it.
    #[test]
    fn executor_real_wait_fails_on_an_ha_resource_in_error() {
        let mut exec = RealExecutor::new("pve-02", RecordingRunner::new());
        exec.poll_interval = Duration::ZERO;
        exec.runner.script([RunResult::exited(0, HA_BUSY)]);
        let o = exec.execute(
            &req(Action::WaitGuestsMigrated { timeout_secs: 600 }),
            &mut |_| {},
        );
        assert!(!o.ok && o.output.contains("vm:102"), "{o:?}");
        assert!(o.output.contains("state error"), "{o:?}");
        assert_eq!(exec.runner.take_calls().len(), 1);
    }

    /// apt is asked right before the upgrade; a transaction that would remove proxmox-ve
    /// is refused and nothing is started.
    #[test]
    fn executor_real_dist_upgrade_refuses_protected_removals() {
        let exec = RealExecutor::new("pve-01", RecordingRunner::new());
        exec.runner.script([RunResult::exited(
            0,
            "The following packages will be REMOVED:\n  proxmox-ve\nRemv proxmox-ve [9.0.0]\n",
        )]);
        let o = exec.execute(&req(Action::AptDistUpgrade), &mut |_| {});
        assert!(!o.ok && o.exit_code.is_none(), "{o:?}");
        assert!(o.output.contains("upgrade.removes-protected") && o.output.contains("proxmox-ve"));
        assert_eq!(exec.runner.take_calls(), [simulate_call()]);
        // apt failing is no answer: refused too.
        exec.runner
            .script([RunResult::exited(100, "E: Unable to correct problems")]);
        let o = exec.execute(&req(Action::AptDistUpgrade), &mut |_| {});
        assert!(!o.ok && o.output.contains("Unable to correct"), "{o:?}");
        assert_eq!(exec.runner.take_calls().len(), 1);
        // The read-only simulation for reports: parsed, and cached while apt's state is
        // unchanged.
        exec.runner.script([RunResult::exited(
            0,
            "Inst pve-manager [9.0.11] (9.0.13 Proxmox:9.0/stable [amd64])\n",
        )]);
        let sim = exec.simulate_upgrade().unwrap().unwrap();
        assert_eq!(sim.upgrades.len(), 1);
        assert_eq!(exec.runner.take_calls(), [simulate_call()]);
    }

    /// A dist-upgrade past its timeout: the unit is left alone (no stop, no kill: the only
    /// calls are systemd-run itself), the outcome says "still running" and is not recorded;
    /// after a restart the re-sent key finds the unit, waits for it, and reports its result
    /// without running it again.
    #[test]
    fn executor_real_timed_out_unit_is_left_alone_and_found_again() {
        use crate::executor::Once;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("actions.json");
        let mut real = RealExecutor::new("pve-01", RecordingRunner::new());
        real.poll_interval = Duration::ZERO;
        real.runner.script([
            RunResult::exited(0, ""),
            RunResult {
                timed_out: true,
                output: "Setting up pve-manager (9.0.13) ...\n".into(),
                ..Default::default()
            },
        ]);
        let once = Once::open(&path, real).unwrap();
        let o = once.execute(&req(Action::AptDistUpgrade), &mut |_| {});
        assert!(!o.ok && o.still_running, "{o:?}");
        assert!(o.output.contains("still running") && o.output.contains("never signalled"));
        let calls = once.inner().runner.take_calls();
        assert_eq!(calls.len(), 2, "{calls:?}");
        assert_eq!(calls[1].program, "systemd-run");
        assert!(once.recorded("op/pve-01/step/1").is_none());

        // The agent restarts; the controller re-sends the same key.
        drop(once);
        let mut real = RealExecutor::new("pve-01", RecordingRunner::new());
        real.poll_interval = Duration::ZERO;
        real.runner.script([
            RunResult::exited(0, "LoadState=loaded\nActiveState=active\nSubState=running\n"),
            RunResult::exited(0, "LoadState=not-found\nActiveState=inactive\nResult=success\n"),
            RunResult::exited(
                0,
                "Setting up pve-manager (9.0.13) ...\nfleetward-x.service: Deactivated successfully.\n",
            ),
        ]);
        let once = Once::open(&path, real).unwrap();
        let mut lines = Vec::new();
        let o = once.execute(&req(Action::AptDistUpgrade), &mut |l| {
            lines.push(l.to_owned())
        });
        assert!(o.ok && o.replayed && o.exit_code == Some(0), "{o:?}");
        assert!(o.output.contains("Setting up pve-manager"));
        let calls = once.inner().runner.take_calls();
        let programs: Vec<&str> = calls.iter().map(|c| c.program.as_str()).collect();
        assert_eq!(programs, ["systemctl", "systemctl", "journalctl"]);
        assert_eq!(
            calls[0].args,
            [
                "show",
                "fleetward-op-pve\\x2d01-step-1.service",
                "--property=LoadState,ActiveState,SubState,Result,ExecMainCode,ExecMainStatus"
            ]
        );
        // Recorded now: a third send replays it without asking systemd.
        let again = once.execute(&req(Action::AptDistUpgrade), &mut |_| {});
        assert!(again.ok && again.replayed);
        assert!(once.inner().runner.take_calls().is_empty());
    }

    /// A unit that failed while the agent was away: its exit status comes back.
    #[test]
    fn executor_real_failed_unit_is_reported_after_restart() {
        use crate::executor::Once;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("actions.json");
        std::fs::write(
            &path,
            r#"[{"id":"op/pve-01/step/1","action":{"action":"apt-update"},"outcome":null}]"#,
        )
        .unwrap();
        let real = RealExecutor::new("pve-01", RecordingRunner::new());
        real.runner.script([
            RunResult::exited(
                0,
                "LoadState=loaded\nActiveState=failed\nResult=exit-code\nExecMainCode=1\nExecMainStatus=100\n",
            ),
            RunResult::exited(0, "E: Failed to fetch\n"),
        ]);
        let once = Once::open(&path, real).unwrap();
        let o = once.execute(&req(Action::AptUpdate), &mut |_| {});
        assert!(
            !o.ok && o.exit_code == Some(100) && o.output.contains("Failed to fetch"),
            "{o:?}"
        );
        // Nothing known about the unit (journal gone): outcome unknown, not run again.
        std::fs::write(
            &path,
            r#"[{"id":"op/pve-01/step/1","action":{"action":"apt-update"},"outcome":null}]"#,
        )
        .unwrap();
        let real = RealExecutor::new("pve-01", RecordingRunner::new());
        real.runner.script([
            RunResult::exited(0, "LoadState=not-found\nActiveState=inactive\n"),
            RunResult::exited(0, ""),
        ]);
        let once = Once::open(&path, real).unwrap();
        let o = once.execute(&req(Action::AptUpdate), &mut |_| {});
        assert!(!o.ok && o.output.contains("outcome unknown"), "{o:?}");
        let programs: Vec<String> = once
            .inner()
            .runner
            .calls()
            .into_iter()
            .map(|c| c.program)
            .collect();
        assert_eq!(programs, ["systemctl", "journalctl"]);
    }

    /// `ceph osd set noout` exits 0; the OSD map shows the flag only on the second read:
    /// the outcome carries the map as last read (flag set, OSDs up/in). A probe that cannot
    /// tell leaves the outcome without a map (the controller then relies on the report).
    #[test]
    fn executor_real_noout_reads_the_osd_map_until_the_flag_shows() {
        let fixture = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/ceph/osd-dump-noout.json"),
        )
        .unwrap();
        let before = r#"{"flags":"sortbitwise","osds":[{"osd":0,"up":1,"in":1}]}"#;
        let mut exec = RealExecutor::new("pve-01", RecordingRunner::new());
        exec.ceph_poll_interval = Duration::ZERO;
        exec.runner.script([
            RunResult::exited(0, ""),       // systemd-run … ceph osd set noout
            RunResult::exited(0, ""),       // journalctl
            RunResult::exited(0, before),   // ceph osd dump: not yet
            RunResult::exited(0, &fixture), // ceph osd dump: noout set
        ]);
        let mut lines = Vec::new();
        let o = exec.execute(&req(Action::CephSetNoout), &mut |l| {
            lines.push(l.to_owned())
        });
        assert!(o.ok, "{o:?}");
        let map = o.ceph.expect("the OSD map");
        assert!(map.noout);
        assert_eq!((map.osds.total, map.osds.up, map.osds.inside), (6, 5, 6));
        let probe = call("ceph", "osd dump --format json", &[], 10);
        let calls = exec.runner.take_calls();
        assert_eq!(calls.len(), 4, "{calls:?}");
        assert_eq!(calls[2..], [probe.clone(), probe.clone()]);
        assert!(
            lines
                .iter()
                .any(|l| l == "OSD map: noout set, 5 of 6 OSDs up, 6 in"),
            "{lines:?}"
        );

        // Never shows: bounded, the last map read says so.
        exec.runner
            .script([RunResult::exited(0, ""), RunResult::exited(0, "")]);
        exec.runner
            .script((0..NOOUT_POLLS).map(|_| RunResult::exited(0, before)));
        let o = exec.execute(&req(Action::CephSetNoout), &mut |_| {});
        assert!(o.ok && o.ceph.is_some_and(|m| !m.noout), "{o:?}");
        assert_eq!(exec.runner.take_calls().len(), 2 + NOOUT_POLLS as usize);

        // Cannot tell (ceph fails): one read, nothing carried.
        exec.runner.script([
            RunResult::exited(0, ""),
            RunResult::exited(0, ""),
            RunResult::exited(1, "Error initializing cluster client"),
        ]);
        let o = exec.execute(&req(Action::CephUnsetNoout), &mut |_| {});
        assert!(o.ok && o.ceph.is_none(), "{o:?}");
        assert_eq!(exec.runner.take_calls().len(), 3);

        // A failed unset is not probed.
        exec.runner
            .script([RunResult::exited(1, ""), RunResult::exited(0, "")]);
        let o = exec.execute(&req(Action::CephUnsetNoout), &mut |_| {});
        assert!(!o.ok && o.ceph.is_none());
        assert_eq!(exec.runner.take_calls().len(), 2);
    }
}
