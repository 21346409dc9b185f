//! Every node-changing command of the real executor runs as its own transient systemd
//! unit, named after the action's idempotency key, so that:
//!
//! - **it outlives the agent**: the unit lives in its own cgroup under `system.slice`, not in
//!   `fleetward-agent.service`'s. When the agent's own package is upgraded, its postinst
//!   restarts the agent (`KillMode=control-group`) — the `apt-get dist-upgrade` that does it
//!   keeps running, and dpkg is never killed mid-run;
//! - **it runs outside the agent's sandbox** (`PrivateTmp`, `ProtectHome`,
//!   `ProtectControlGroups`…): a `qm start` or a kernel postinst sees the node as an admin's
//!   shell would. The agent keeps its own hardening;
//! - **it is never signalled**: a timeout kills only the waiting `systemd-run` client; the
//!   unit goes on and the action is reported "still running" (the rollout halts). Nothing in
//!   the agent stops a unit;
//! - **its outcome is found again** after an agent restart: by its name,
//!   `fleetward-<escaped key>.service` (`systemctl show` while it is loaded, the journal once
//!   systemd has unloaded it), so the step neither runs twice nor loses its result.
//!
//! Command line (pinned by tests; nothing runs in tests):
//!
//! ```text
//! systemd-run --unit=fleetward-<key> --description=fleetward <action> <key> --service-type=exec
//!             --wait --quiet [--setenv=K=V ...] -- PROGRAM ARGS...
//! ```
//!
//! No `--pipe`: a unit writing into the agent's pipe would get `EPIPE` once the agent is
//! gone — exactly the dpkg interruption this avoids. Its output goes to the journal, and the
//! agent passes the unit's journal lines on when it ends. No `--collect` either: a unit that
//! failed stays loaded (`systemctl show` gives its `Result` and exit status) until an admin
//! runs `systemctl reset-failed`; a successful unit is unloaded by systemd at once, and its
//! "Deactivated successfully" line in the journal tells it apart from a unit that never ran.

use super::real::CommandLine;
use std::time::Duration;

/// Unit names start with this.
pub const UNIT_PREFIX: &str = "fleetward-";
/// How long a `systemctl show` / `journalctl` query may take.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// How many journal lines of a unit are passed on as its output.
pub const JOURNAL_LINES: u32 = 400;

/// The unit of idempotency key `key`: `fleetward-` + the key escaped as `systemd-escape`
/// does (`/` → `-`; ASCII letters, digits, `:`, `_` and a non-leading `.` kept; every other
/// byte `\xNN`), so distinct keys give distinct units. `Err` for an empty or too long key.
pub fn unit_name(key: &str) -> Result<String, String> {
    if key.is_empty() {
        return Err("an action without an idempotency key cannot run as a unit".into());
    }
    let mut name = String::from(UNIT_PREFIX);
    for (i, b) in key.bytes().enumerate() {
        match b {
            b'/' => name.push('-'),
            b'.' if i > 0 => name.push('.'),
            b if b.is_ascii_alphanumeric() || b == b':' || b == b'_' => name.push(b as char),
            b => name.push_str(&format!("\\x{b:02x}")),
        }
    }
    name.push_str(".service");
    // systemd's limit for a unit name (UNIT_NAME_MAX).
    if name.len() > 255 {
        return Err(format!("the unit name for key {key:?} is too long"));
    }
    Ok(name)
}

/// `cl` run as the transient unit `unit`, waiting for its end. The environment travels as
/// `--setenv` (the client's own environment does not reach the unit); the timeout is the
/// action's: at it, only the client is killed.
pub fn wrap(unit: &str, action: &str, key: &str, cl: &CommandLine) -> CommandLine {
    let mut args = vec![
        format!("--unit={unit}"),
        format!("--description=fleetward {action} {key}"),
        "--service-type=exec".to_owned(),
        "--wait".to_owned(),
        "--quiet".to_owned(),
    ];
    args.extend(cl.env.iter().map(|(k, v)| format!("--setenv={k}={v}")));
    args.push("--".to_owned());
    args.push(cl.program.clone());
    args.extend(cl.args.iter().cloned());
    CommandLine {
        program: "systemd-run".to_owned(),
        args,
        env: Vec::new(),
        timeout: cl.timeout,
    }
}

/// `systemctl show UNIT` with the properties [`parse_show`] reads.
pub fn show_command(unit: &str) -> CommandLine {
    CommandLine {
        program: "systemctl".to_owned(),
        args: vec![
            "show".to_owned(),
            unit.to_owned(),
            "--property=LoadState,ActiveState,SubState,Result,ExecMainCode,ExecMainStatus"
                .to_owned(),
        ],
        env: Vec::new(),
        timeout: QUERY_TIMEOUT,
    }
}

/// The unit's journal, its last [`JOURNAL_LINES`] lines, messages only.
pub fn journal_command(unit: &str) -> CommandLine {
    CommandLine {
        program: "journalctl".to_owned(),
        args: vec![
            format!("--unit={unit}"),
            "--output=cat".to_owned(),
            "--no-pager".to_owned(),
            "--quiet".to_owned(),
            format!("--lines={JOURNAL_LINES}"),
        ],
        env: vec![("LC_ALL".to_owned(), "C".to_owned())],
        timeout: QUERY_TIMEOUT,
    }
}

/// What `systemctl show` says about a unit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitState {
    pub load_state: String,
    pub active_state: String,
    pub result: String,
    /// `ExecMainCode`: 1 = exited (then `ExecMainStatus` is the exit status), 2 = killed,
    /// 3 = dumped (then it is the signal).
    pub exec_main_code: Option<i32>,
    pub exec_main_status: Option<i32>,
}

/// Parses `KEY=VALUE` lines of `systemctl show`. Unknown keys and bad lines are skipped.
pub fn parse_show(text: &str) -> UnitState {
    let mut s = UnitState::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim();
        match k.trim() {
            "LoadState" => s.load_state = v.to_owned(),
            "ActiveState" => s.active_state = v.to_owned(),
            "Result" => s.result = v.to_owned(),
            "ExecMainCode" => s.exec_main_code = v.parse().ok(),
            "ExecMainStatus" => s.exec_main_status = v.parse().ok(),
            _ => {}
        }
    }
    s
}

/// What became of an action's unit, found after the agent restarted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// It still runs (or starts, or stops).
    Running,
    /// It ended: ok, exit status when it exited, why in words.
    Finished {
        ok: bool,
        exit_code: Option<i32>,
        why: String,
    },
    /// Neither loaded nor in the journal: it never started (or its journal is gone).
    Unknown,
}

/// Decides from `systemctl show` and (for an unloaded unit) its journal. Pure.
pub fn judge(state: &UnitState, journal: &str) -> Found {
    match state.active_state.as_str() {
        "active" | "activating" | "deactivating" | "reloading" | "refreshing" => {
            return Found::Running
        }
        "failed" => {
            let exited = state.exec_main_code == Some(1);
            return Found::Finished {
                ok: false,
                exit_code: if exited { state.exec_main_status } else { None },
                why: format!(
                    "unit failed (result {}, {})",
                    if state.result.is_empty() {
                        "unknown"
                    } else {
                        &state.result
                    },
                    match (exited, state.exec_main_status) {
                        (true, Some(s)) => format!("exit status {s}"),
                        (false, Some(s)) if state.exec_main_code.is_some() => {
                            format!("signal {s}")
                        }
                        _ => "no exit status".to_owned(),
                    }
                ),
            };
        }
        _ => {}
    }
    // Unloaded (a successful transient unit is collected at once): the journal tells.
    // systemd's own lines, as `pid1` writes them (src/core/unit.c `unit_log_success`,
    // `unit_log_failure`; src/core/service.c `service_sigchld_event`).
    let mut found = Found::Unknown;
    for line in journal.lines() {
        let line = line.trim();
        if line.ends_with("Deactivated successfully.") || line.ends_with(": Succeeded.") {
            found = Found::Finished {
                ok: true,
                exit_code: Some(0),
                why: "unit finished successfully (journal)".into(),
            };
        } else if let Some(pos) = line.find("Main process exited, code=exited, status=") {
            let rest = &line[pos + "Main process exited, code=exited, status=".len()..];
            let code: Option<i32> = rest.split('/').next().and_then(|c| c.parse().ok());
            found = Found::Finished {
                ok: code == Some(0),
                exit_code: code,
                why: format!("unit's main process exited with status {rest} (journal)"),
            };
        } else if line.contains("Failed with result") {
            if let Found::Finished { ok: true, .. } | Found::Unknown = found {
                found = Found::Finished {
                    ok: false,
                    exit_code: None,
                    why: format!("unit failed (journal: {line})"),
                };
            }
        }
    }
    found
}

/// A unit's journal lines without systemd's own bookkeeping lines (what the command wrote).
pub fn command_lines(journal: &str) -> impl Iterator<Item = &str> {
    journal.lines().filter(|l| {
        !(l.contains("Deactivated successfully.")
            || l.contains("Main process exited, code=")
            || l.contains("Failed with result")
            || l.contains("Consumed ")
            || l.starts_with("Started ")
            || l.starts_with("Starting "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn unit_names_escape_keys_like_systemd_escape() {
        assert_eq!(
            unit_name("rollout-17/pve-01/upgrade/1").unwrap(),
            "fleetward-rollout\\x2d17-pve\\x2d01-upgrade-1.service"
        );
        assert_eq!(unit_name("a b.c").unwrap(), "fleetward-a\\x20b.c.service");
        assert_eq!(unit_name(".x").unwrap(), "fleetward-\\x2ex.service");
        assert!(unit_name("").is_err());
        assert!(unit_name(&"k".repeat(300)).is_err());
        assert_ne!(unit_name("a/b").unwrap(), unit_name("a-b").unwrap());
    }

    #[test]
    fn unit_state_is_judged_from_show_and_journal() {
        let running = parse_show("LoadState=loaded\nActiveState=active\nSubState=running\nResult=success\nExecMainCode=0\nExecMainStatus=0\n");
        assert_eq!(judge(&running, ""), Found::Running);
        let failed = parse_show("LoadState=loaded\nActiveState=failed\nResult=exit-code\nExecMainCode=1\nExecMainStatus=100\n");
        assert!(matches!(
            judge(&failed, ""),
            Found::Finished {
                ok: false,
                exit_code: Some(100),
                ..
            }
        ));
        let gone = parse_show("LoadState=not-found\nActiveState=inactive\nResult=success\n");
        assert_eq!(judge(&gone, ""), Found::Unknown);
        let journal = "Reading package lists...\nSetting up pve-manager (9.0.13) ...\n\
                       fleetward-x.service: Deactivated successfully.\n\
                       fleetward-x.service: Consumed 41.2s CPU time.\n";
        assert!(matches!(
            judge(&gone, journal),
            Found::Finished {
                ok: true,
                exit_code: Some(0),
                ..
            }
        ));
        assert_eq!(
            command_lines(journal).collect::<Vec<_>>(),
            [
                "Reading package lists...",
                "Setting up pve-manager (9.0.13) ..."
            ]
        );
        let bad = "fleetward-x.service: Main process exited, code=exited, status=100/n/a\n\
                   fleetward-x.service: Failed with result 'exit-code'.\n";
        assert!(matches!(
            judge(&gone, bad),
            Found::Finished {
                ok: false,
                exit_code: Some(100),
                ..
            }
        ));
    }

    proptest! {
        #[test]
        fn unit_parsers_never_panic(text in any::<String>(), key in any::<String>()) {
            let _ = judge(&parse_show(&text), &text);
            let _ = command_lines(&text).count();
            if let Ok(name) = unit_name(&key) {
                prop_assert!(name.is_ascii() && !name.contains('/') && !name.contains(' '));
            }
        }
    }
}
