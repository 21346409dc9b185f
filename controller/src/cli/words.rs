//! The operator API's enums in words for people, defined once and used by every text
//! renderer. JSON output keeps the stable machine names ([`super::output::enum_name`]).
//!
//! The words follow the README: gates by their names (`nodes-online`, `esp-holds-kernel`),
//! steps by what runs ("apt-get update", "maintenance on"), stages 1-based ("stop guests,
//! group 1").

use fleetward_proto::api;

use super::output::enum_name;

/// A rollout's state: "running", "halted", ….
pub(crate) fn rollout_state(s: api::RolloutState) -> String {
    match s {
        api::RolloutState::Unspecified => "unknown".into(),
        s => enum_name(s.as_str_name(), "ROLLOUT_STATE_"),
    }
}

/// Where a node is in a rollout, as what it is doing.
pub(crate) fn phase(p: api::RolloutPhase) -> &'static str {
    use api::RolloutPhase as P;
    match p {
        P::Unspecified => "unknown",
        P::Pending => "waiting its turn",
        P::MaintenanceOn => "maintenance on",
        P::WaitGuests => "HA guests leaving",
        P::AptUpdate => "apt-get update",
        P::Upgrade => "apt-get dist-upgrade",
        P::BootCheck => "boot check",
        P::BootRefresh => "proxmox-boot-tool refresh",
        P::CephNoout => "ceph osd set noout",
        P::AwaitReturn => "rebooting",
        P::PostRebootGate => "post-reboot gate",
        P::CephUnset => "ceph osd unset noout",
        P::MaintenanceOff => "maintenance off",
        P::Done => "done",
        P::Skipped => "skipped",
    }
}

/// A gate by the README's name: `quorum`, `nodes-online`, `esp-holds-kernel`, ….
pub(crate) fn gate(g: api::RolloutGate) -> String {
    match g {
        api::RolloutGate::Unspecified => "unknown".into(),
        g => enum_name(g.as_str_name(), "ROLLOUT_GATE_"),
    }
}

/// `--reboot` in words.
pub(crate) fn reboot(r: api::RebootPolicy) -> &'static str {
    match r {
        api::RebootPolicy::IfNeeded | api::RebootPolicy::Unspecified => "reboot if needed",
        api::RebootPolicy::Always => "always reboot",
        api::RebootPolicy::Never => "never reboot",
    }
}

/// A step or action name (`apt-update`, `guest-stop-101`, `power-off`) as what it does.
pub(crate) fn step(name: &str) -> String {
    let guest = |prefix: &str| name.strip_prefix(prefix).filter(|v| !v.is_empty());
    if let Some(vmid) = guest("guest-stop-") {
        return format!("stop guest {vmid}");
    }
    if let Some(vmid) = guest("guest-start-") {
        return format!("start guest {vmid}");
    }
    if let Some(vmid) = guest("guest-migrate-") {
        return format!("migrate guest {vmid}");
    }
    match name {
        "maintenance-on" => "maintenance on",
        "maintenance-off" => "maintenance off",
        "wait-guests-migrated" => "wait for HA guests to leave",
        "apt-update" => "apt-get update",
        "apt-dist-upgrade" => "apt-get dist-upgrade",
        "boot-refresh" => "proxmox-boot-tool refresh",
        "ceph-set-noout" => "ceph osd set noout",
        "ceph-unset-noout" => "ceph osd unset noout",
        "ha-disarm" => "disarm HA",
        "ha-arm" => "re-arm HA",
        "reboot" => "reboot",
        "power-off" => "power off",
        other => return other.replace('-', " "),
    }
    .to_owned()
}

/// A command id `operation/node/step/attempt` as "STEP (attempt N)"; anything else as is.
pub(crate) fn command(id: &str) -> String {
    let parts: Vec<&str> = id.split('/').collect();
    match parts.as_slice() {
        [_, _, s, attempt] if *attempt == "1" => step(s),
        [_, _, s, attempt] => format!("{} (attempt {attempt})", step(s)),
        _ => id.to_owned(),
    }
}

/// A shutdown or startup stage, 1-based: "stop guests, group 1", "power off, tier 2".
pub(crate) fn stage(s: Option<&api::ShutdownStage>) -> String {
    use api::ShutdownStageKind as K;
    let Some(s) = s else {
        return "unknown".into();
    };
    let n = u64::from(s.index) + 1;
    match s.kind() {
        K::Unspecified => "unknown".into(),
        K::Planned => "planned".into(),
        K::StopGuests => format!("stop guests, group {n}"),
        K::DisarmHa => "disarm HA".into(),
        K::SetNoout => "set Ceph noout".into(),
        K::AwaitWatchdogs => "wait for the HA watchdogs to be released".into(),
        K::PowerOff => format!("power off, tier {n}"),
        K::Down => "down".into(),
        K::AwaitNodes => "wait for the nodes and quorum".into(),
        K::UnsetNoout => "unset Ceph noout".into(),
        K::ArmHa => "re-arm HA".into(),
        K::StartGuests => format!("start guests, group {n}"),
        K::Finished => "finished".into(),
    }
}

/// What became of an action a shutdown sent.
pub(crate) fn outcome(o: api::SendOutcome) -> &'static str {
    match o {
        api::SendOutcome::Unspecified => "unknown",
        api::SendOutcome::Pending => "waiting",
        api::SendOutcome::Ok => "ok",
        api::SendOutcome::Failed => "FAILED",
        api::SendOutcome::Abandoned => "abandoned (its stage moved on)",
    }
}

/// Why a bring-up runs.
pub(crate) fn up_reason(r: api::UpReason) -> Option<&'static str> {
    match r {
        api::UpReason::Unspecified => None,
        api::UpReason::Cancel => Some("cancelled by an operator"),
        api::UpReason::PowerRestored => Some("power restored"),
        api::UpReason::Startup => Some("startup"),
    }
}

/// A rollout event as a sentence (without its time).
pub(crate) fn rollout_event(e: &api::RolloutEvent) -> String {
    use api::RolloutEventKind as K;
    let node = &e.node;
    let reason = |s: String| {
        if e.reason.is_empty() {
            s
        } else {
            format!("{s}: {}", e.reason)
        }
    };
    match e.kind() {
        K::Unspecified => reason("an event this version cannot read".into()),
        K::Started => "rollout started".into(),
        K::NodeStarted => format!("{node}: its turn began"),
        K::Phase => format!("{node}: {}", phase(e.phase())),
        K::NodeDone => format!("{node}: done"),
        K::Skipped => format!("{node}: skipped by an operator"),
        K::Halted if node.is_empty() => reason(format!("halted by gate {}", gate(e.gate()))),
        K::Halted => reason(format!("halted at {node} by gate {}", gate(e.gate()))),
        K::Paused => "paused".into(),
        K::Resumed => "resumed".into(),
        K::Aborted => "aborted".into(),
        K::Completed => "completed".into(),
        K::Refused => reason("refused a request".into()),
        K::Restoring => reason("aborting: bringing back the started nodes".into()),
        K::Restored => "every started node is back (maintenance off, noout unset)".into(),
    }
}

/// A shutdown event as a sentence (without its time); `verbose` adds the command ids.
pub(crate) fn shutdown_event(e: &api::ShutdownEvent, verbose: bool) -> String {
    use api::ShutdownEventKind as K;
    let node = &e.node;
    let nodes = e.nodes.join(", ");
    let mut s = match e.kind() {
        K::Unspecified => "an event this version cannot read".into(),
        K::Started if e.forced => {
            "shutdown started (guest stops forced: the deadline is near)".into()
        }
        K::Started => "shutdown started".into(),
        K::Stage => format!("stage: {}", stage(e.stage.as_ref())),
        K::MovedOn if !e.reason.is_empty() => format!(
            "{} ran out of time: moved on without {} answer(s); not observed: {}",
            stage(e.stage.as_ref()),
            e.command_ids.len(),
            e.reason
        ),
        K::MovedOn => format!(
            "{} ran out of time: moved on without {} answer(s)",
            stage(e.stage.as_ref()),
            e.command_ids.len()
        ),
        K::ActionFailed => {
            let what = e
                .command_ids
                .first()
                .map(|c| command(c))
                .unwrap_or_default();
            let then = if e.retrying { "retrying" } else { "given up" };
            let on = if node.is_empty() {
                String::new()
            } else {
                format!("{node}: ")
            };
            format!("{on}{what} failed ({then})")
        }
        K::NodeAlreadyDown => format!("{node} was already offline: nothing sent to it"),
        K::Cancelled => match up_reason(e.up_reason()) {
            Some(r) => format!("stopped ({r}): restoring what it stopped"),
            None => "stopped: restoring what it stopped".into(),
        },
        K::Refused => "refused a request".into(),
        K::Down => "every power-off sent: the cluster is down".into(),
        K::StartupBegun => "startup begun".into(),
        K::WaitingForQuorum => "waiting for quorum".into(),
        K::NotReturned => format!("did not return in time: {nodes}"),
        K::NooutLeftSet => format!("Ceph noout left set: OSD nodes missing: {nodes}"),
        K::GuestsNotStarted => {
            let vmids: Vec<String> = e.vmids.iter().map(u32::to_string).collect();
            format!("{node}: guests not started: {}", vmids.join(", "))
        }
        K::Finished => "finished".into(),
        K::Preempted => "preempted another operation".into(),
        K::WatchdogsUnobservable => {
            format!("HA watchdog not observable on {nodes}: not waited for")
        }
    };
    for t in [&e.reason, &e.output] {
        if !t.is_empty() {
            s = format!("{s}: {}", t.trim());
        }
    }
    if verbose && !e.command_ids.is_empty() {
        s = format!("{s} [{}]", e.command_ids.join(", "));
    }
    s
}

/// A span of milliseconds in words: "45 s", "3 min", "1 h 5 min".
pub(crate) fn duration(ms: i64) -> String {
    let secs = ms.max(0).div_euclid(1000);
    match secs {
        0..=89 => format!("{secs} s"),
        90..=5399 => format!("{} min", (secs + 30) / 60),
        _ => {
            let min = (secs + 30) / 60;
            match min % 60 {
                0 => format!("{} h", min / 60),
                m => format!("{} h {m} min", min / 60),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_and_commands_read_as_what_they_do() {
        assert_eq!(step("apt-update"), "apt-get update");
        assert_eq!(step("guest-stop-101"), "stop guest 101");
        assert_eq!(step("power-off"), "power off");
        assert_eq!(step("something-new"), "something new");
        assert_eq!(command("rollout-1/pve-01/apt-update/1"), "apt-get update");
        assert_eq!(command("rollout-1/pve-01/reboot/2"), "reboot (attempt 2)");
        assert_eq!(command("odd"), "odd");
    }

    #[test]
    fn every_phase_gate_and_stage_has_words() {
        for p in 0..=14 {
            let p = api::RolloutPhase::try_from(p).unwrap();
            let w = phase(p);
            assert!(!w.is_empty() && !w.contains('_'), "{p:?}");
        }
        assert_eq!(gate(api::RolloutGate::NodesOnline), "nodes-online");
        assert_eq!(reboot(api::RebootPolicy::IfNeeded), "reboot if needed");
        let s = api::ShutdownStage {
            kind: api::ShutdownStageKind::StartGuests.into(),
            index: 0,
        };
        assert_eq!(stage(Some(&s)), "start guests, group 1");
    }

    #[test]
    fn durations() {
        assert_eq!(duration(-5), "0 s");
        assert_eq!(duration(45_000), "45 s");
        assert_eq!(duration(120_000), "2 min");
        assert_eq!(duration(3_900_000), "65 min");
        assert_eq!(duration(7_500_000), "2 h 5 min");
        assert_eq!(duration(7_200_000), "2 h");
    }
}
