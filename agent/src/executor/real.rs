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
//! | ceph-set-noout / ceph-unset-noout | `ceph osd set noout` / `ceph osd unset noout` | | 60 s |
//! | guest-stop | `qm|pct shutdown VMID --timeout T [--forceStop 1]` | | T + 60 s |
//! | guest-start | `qm|pct start VMID` | | 300 s |
//! | guest-migrate | `qm migrate VMID TARGET --online` / `pct migrate VMID TARGET --restart` | | 3600 s |
//! | ha-disarm / ha-arm | `ha-manager crm-command disarm-ha freeze` / `ha-manager crm-command arm-ha` | | 60 s |
//! | reboot / power-off | `systemctl reboot` / `systemctl poweroff` | | 60 s |
//!
//! Programs are found through `PATH` (the agent's systemd unit has the standard one). No
//! shell is involved: every argument is one `argv` entry, and node names and VMIDs are
//! validated before they reach a command line ([`Action::validate`]).
//!
//! `wait-guests-migrated` parses `ha-manager status` lines of the form
//! `service vm:100 (pve-01, started)`: it waits until no service on this node is in a state
//! other than `stopped`, `ignored`, `disabled` or `error` (services in those states do not
//! run, and nothing would move them).

use super::{
    valid_node_name, Action, ActionOutcome, ActionRequest, Executor, GuestKind, OutputTail,
    OUTPUT_MAX,
};
use crate::runner::{CommandRunner, RunResult};
use std::thread;
use std::time::{Duration, Instant};

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

/// HA services in `ha-manager status` output that still run on `node`: the ids of lines
/// `service SID (NODE, STATE...)` whose state is not `stopped`, `ignored`, `disabled` or
/// `error`.
pub fn ha_services_on(status: &str, node: &str) -> Vec<String> {
    status
        .lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("service ")?;
            let (sid, rest) = rest.trim().split_once(' ')?;
            let inner = rest.trim().strip_prefix('(')?.strip_suffix(')')?;
            let mut parts = inner.split(',').map(str::trim);
            let on = parts.next()?;
            let state = parts.next().unwrap_or("");
            let idle = matches!(state, "stopped" | "ignored" | "disabled" | "error");
            (on == node && !idle).then(|| sid.to_owned())
        })
        .collect()
}

/// The real executor for node `node`.
pub struct RealExecutor<R: CommandRunner> {
    pub node: String,
    pub runner: R,
    /// Pause between two `ha-manager status` polls ([`HA_POLL_INTERVAL`] by default).
    pub poll_interval: Duration,
}

impl<R: CommandRunner> RealExecutor<R> {
    pub fn new(node: impl Into<String>, runner: R) -> Self {
        RealExecutor {
            node: node.into(),
            runner,
            poll_interval: HA_POLL_INTERVAL,
        }
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

    fn run(&self, cl: &CommandLine, out: &mut dyn FnMut(&str)) -> (RunResult, String) {
        let header = format!("+ {cl}");
        out(&header);
        let r = self
            .runner
            .run(&cl.program, &cl.args, &cl.env, cl.timeout, out);
        let mut text = format!("{header}\n{}", r.output);
        if let Some(e) = &r.spawn_error {
            out(e);
            text.push_str(e);
            text.push('\n');
        }
        (r, text)
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
        let (r, text) = self.run(&cl, out);
        let ok = r.success();
        ActionOutcome {
            reboot: ok && req.action == Action::Reboot,
            power_off: ok && req.action == Action::PowerOff,
            ..ActionOutcome::new(&req.id, ok, text, r.exit_code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::GuestKind::{Lxc, Qemu};
    use crate::runner::testing::{Call, RecordingRunner};

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
        for (action, expected) in table {
            let mut lines = Vec::new();
            let o = exec.execute(&req(action.clone()), &mut |l| lines.push(l.to_owned()));
            assert!(o.ok, "{action:?}: {o:?}");
            assert_eq!(o.exit_code, Some(0));
            assert_eq!(o.reboot, action == Action::Reboot);
            assert_eq!(o.power_off, action == Action::PowerOff);
            assert_eq!(action.default_timeout(), expected.timeout);
            assert_eq!(exec.runner.take_calls(), [expected], "{action:?}");
            // The first streamed line shows what runs.
            assert_eq!(
                lines[0],
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
        exec.runner
            .script([RunResult::exited(100, "E: Could not get lock")]);
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
        assert_eq!(exec.runner.calls().len(), 2);
    }

    const HA_BUSY: &str = "quorum OK\n\
        master pve-02 (active, Wed Nov 25 10:00:00 2026)\n\
        lrm pve-01 (maintenance mode, watchdog active, Wed Nov 25 10:00:01 2026)\n\
        lrm pve-02 (active, Wed Nov 25 10:00:01 2026)\n\
        service ct:200 (pve-01, stopped)\n\
        service vm:100 (pve-01, migrate)\n\
        service vm:101 (pve-02, started)\n\
        service vm:1010 (pve-010, started)\n";

    #[test]
    fn executor_real_ha_status_parse() {
        assert_eq!(ha_services_on(HA_BUSY, "pve-01"), ["vm:100"]);
        assert_eq!(ha_services_on(HA_BUSY, "pve-02"), ["vm:101"]);
        assert!(ha_services_on(HA_BUSY, "pve-03").is_empty());
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
}
