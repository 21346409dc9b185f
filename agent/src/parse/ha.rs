//! The HA stack's own status files, as pve-ha-manager writes them into the cluster file
//! system (pure: text in, data or an error out).
//!
//! - `/etc/pve/ha/manager_status` (JSON, written by the CRM master each round;
//!   pve-ha-manager `src/PVE/HA/Config.pm` `read_manager_status`/`write_manager_status`):
//!   `node_status` (node → `online`, `maintenance`, `unknown`, `fence`, `gone`),
//!   `service_status` (sid → `{state, node, ...}`, `ignored` resources are not listed:
//!   `src/PVE/HA/Manager.pm` `manage` removes them), `disarm` (`{mode, state}` while
//!   `disarm-ha` is in effect: `state` is `disarming` until every online LRM reports mode
//!   `disarm`, then `disarmed`; removed by `arm-ha` — `Manager.pm` `update_crm_commands`
//!   and `handle_disarm`), `timestamp`.
//! - `/etc/pve/nodes/<node>/lrm_status` (JSON, written by the node's LRM each round while
//!   the node is quorate; `src/PVE/HA/LRM.pm` `update_lrm_status`): `state`
//!   (`wait_for_agent_lock`, `active`, `lost_agent_lock`, `maintenance`), `mode` (`active`,
//!   `reboot`, `shutdown`, `restart`, `maintenance`, `disarm`), `results`, `timestamp`.
//!
//! Whether the LRM holds its watchdog follows `src/PVE/HA/LRM.pm` `work`: the watchdog is
//! opened or updated whenever the LRM (re)takes its agent lock
//! (`get_protected_ha_agent_lock`) and closed (`give_up_watchdog_protection`) on every
//! change to `wait_for_agent_lock` — HA disarmed, idle for a while, or shut down with no
//! service. In `active` it is held; in `lost_agent_lock` it stays open and expires ("the
//! watchdog is active and will trigger soon"); in `maintenance` it is given up once no
//! active service is left on the node (`count_active_services`, `src/PVE/HA/Tools.pm`).
//! A status older than 30 s (or more than 2 s in the future) is not the LRM's present state:
//! `src/PVE/API2/HA/Status.pm` shows it as "old timestamp - dead?" (`timestamp_to_status`).

use std::collections::BTreeMap;

use serde_json::Value;

/// A status file older than this (seconds) is not current (`Status.pm`).
pub const STALE_SECS: u64 = 30;
/// A status file this far in the future (seconds) shows a clock drift (`Status.pm`).
pub const DRIFT_SECS: u64 = 2;

/// One service of `manager_status`'s `service_status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceStatus {
    pub state: Option<String>,
    pub node: Option<String>,
    /// A migration or relocation target.
    pub target: Option<String>,
}

/// `/etc/pve/ha/manager_status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ManagerStatus {
    pub node_status: BTreeMap<String, String>,
    pub service_status: BTreeMap<String, ServiceStatus>,
    /// `disarm.mode`, `disarm.state` while HA is disarming or disarmed.
    pub disarm: Option<(String, String)>,
    pub timestamp: Option<u64>,
}

fn str_field(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// A timestamp: JSON number (integer or not), as Perl writes it.
fn timestamp(v: &Value) -> Option<u64> {
    let t = v.get("timestamp")?;
    t.as_u64().or_else(|| {
        t.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(|f| f as u64)
    })
}

/// Parses `manager_status`. `Err` when it is not a JSON object or a known key has the
/// wrong shape; unknown keys are ignored.
pub fn manager_status(text: &str) -> Result<ManagerStatus, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if !v.is_object() {
        return Err("manager_status is not a JSON object".into());
    }
    let mut ms = ManagerStatus {
        timestamp: timestamp(&v),
        ..ManagerStatus::default()
    };
    if let Some(ns) = v.get("node_status") {
        let ns = ns.as_object().ok_or("node_status is not an object")?;
        for (node, state) in ns {
            if let Some(s) = state.as_str() {
                ms.node_status.insert(node.clone(), s.to_owned());
            }
        }
    }
    if let Some(ss) = v.get("service_status") {
        let ss = ss.as_object().ok_or("service_status is not an object")?;
        for (sid, sd) in ss {
            ms.service_status.insert(
                sid.clone(),
                ServiceStatus {
                    state: str_field(sd, "state"),
                    node: str_field(sd, "node"),
                    target: str_field(sd, "target"),
                },
            );
        }
    }
    match v.get("disarm") {
        None | Some(Value::Null) => {}
        Some(d) if d.is_object() => {
            ms.disarm = Some((
                str_field(d, "mode").unwrap_or_default(),
                str_field(d, "state").unwrap_or_default(),
            ));
        }
        Some(_) => return Err("disarm is not an object".into()),
    }
    Ok(ms)
}

impl ManagerStatus {
    /// HA is disarmed: `disarm.state` is `disarmed` (every online LRM took the disarm, and
    /// with `freeze` every service is frozen: `Manager.pm` `handle_disarm`). `disarming`
    /// and no `disarm` read as not (yet) disarmed; an unknown state is unknown.
    pub fn disarmed(&self) -> Option<bool> {
        match self.disarm.as_ref().map(|(_, state)| state.as_str()) {
            None | Some("disarming") => Some(false),
            Some("disarmed") => Some(true),
            Some(_) => None,
        }
    }

    /// The services in state `error` on `node`, sorted (`Manager.pm`: a failed resource
    /// the manager no longer acts on until an operator clears it).
    pub fn error_services(&self, node: &str) -> Vec<String> {
        self.service_status
            .iter()
            .filter(|(_, s)| s.node.as_deref() == Some(node) && s.state.as_deref() == Some("error"))
            .map(|(sid, _)| sid.clone())
            .collect()
    }

    /// The services counted active on `node`, as `src/PVE/HA/Tools.pm`
    /// `count_active_services` counts them: on the node or migrating to it, in any state but
    /// `stopped`, `freeze`, `error` and `request_start`.
    pub fn active_services(&self, node: &str) -> usize {
        self.service_status
            .values()
            .filter(|s| s.node.as_deref() == Some(node) || s.target.as_deref() == Some(node))
            .filter(|s| {
                s.state.as_deref().is_some_and(|st| {
                    !matches!(st, "stopped" | "freeze" | "error" | "request_start")
                })
            })
            .count()
    }
}

/// `/etc/pve/nodes/<node>/lrm_status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LrmStatus {
    pub state: Option<String>,
    pub mode: Option<String>,
    pub timestamp: Option<u64>,
}

/// Parses `lrm_status`. `Err` when it is not a JSON object.
pub fn lrm_status(text: &str) -> Result<LrmStatus, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if !v.is_object() {
        return Err("lrm_status is not a JSON object".into());
    }
    Ok(LrmStatus {
        state: str_field(&v, "state"),
        mode: str_field(&v, "mode"),
        timestamp: timestamp(&v),
    })
}

/// Whether the LRM of `node` holds its watchdog (see the module docs for the upstream
/// rules). `now` (seconds since the epoch) checks that the status is current; `None` (a
/// fixture tree, a snapshot) takes the file as it is. `None` when it cannot be told: an
/// unknown state, a status that is not current, or `maintenance` without the manager's
/// service status to count the node's active services.
pub fn lrm_holds_watchdog(
    lrm: &LrmStatus,
    manager: Option<&ManagerStatus>,
    node: &str,
    now: Option<u64>,
) -> Option<bool> {
    if let Some(now) = now {
        let t = lrm.timestamp?;
        if now.saturating_sub(t) > STALE_SECS || t.saturating_sub(now) > DRIFT_SECS {
            return None;
        }
    }
    match lrm.state.as_deref()? {
        "wait_for_agent_lock" => Some(false),
        "active" | "lost_agent_lock" => Some(true),
        "maintenance" => manager.map(|m| m.active_services(node) > 0),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape `write_manager_status` gives a disarming cluster (keys as upstream).
    const MS_DISARMING: &str = r#"{
        "master_node": "pve-01",
        "timestamp": 1765160000,
        "node_status": {"pve-01": "online", "pve-02": "online", "pve-03": "maintenance"},
        "service_status": {
            "vm:100": {"state": "freeze", "node": "pve-01", "uid": "a"},
            "vm:101": {"state": "error", "node": "pve-02", "uid": "b"},
            "ct:200": {"state": "started", "node": "pve-03", "uid": "c"},
            "vm:102": {"state": "migrate", "node": "pve-01", "target": "pve-03", "uid": "d"}
        },
        "disarm": {"mode": "freeze", "state": "disarming"},
        "node_request": {}
    }"#;

    #[test]
    fn manager_status_disarm_states() {
        let ms = manager_status(MS_DISARMING).unwrap();
        assert_eq!(ms.disarm, Some(("freeze".into(), "disarming".into())));
        assert_eq!(ms.disarmed(), Some(false));
        assert_eq!(ms.timestamp, Some(1_765_160_000));
        let done = MS_DISARMING.replace("\"disarming\"", "\"disarmed\"");
        assert_eq!(manager_status(&done).unwrap().disarmed(), Some(true));
        let armed = r#"{"master_node":"pve-01","node_status":{"pve-01":"online"}}"#;
        assert_eq!(manager_status(armed).unwrap().disarmed(), Some(false));
        let odd = MS_DISARMING.replace("\"disarming\"", "\"sideways\"");
        assert_eq!(manager_status(&odd).unwrap().disarmed(), None);
        assert!(manager_status("[]").is_err());
        assert!(manager_status(r#"{"disarm": 1}"#).is_err());
        assert!(manager_status(r#"{"service_status": []}"#).is_err());
        assert_eq!(manager_status("{}").unwrap(), ManagerStatus::default());
    }

    #[test]
    fn error_and_active_services() {
        let ms = manager_status(MS_DISARMING).unwrap();
        assert_eq!(ms.error_services("pve-02"), ["vm:101"]);
        assert!(ms.error_services("pve-01").is_empty());
        // pve-01: vm:100 frozen (not active), vm:102 migrating away (active on both ends).
        assert_eq!(ms.active_services("pve-01"), 1);
        assert_eq!(ms.active_services("pve-02"), 0, "error is not active");
        assert_eq!(
            ms.active_services("pve-03"),
            2,
            "started here, and a migration target"
        );
    }

    fn lrm(state: &str, t: u64) -> LrmStatus {
        lrm_status(&format!(
            r#"{{"state":"{state}","mode":"disarm","results":{{}},"timestamp":{t}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn watchdog_by_lrm_state() {
        let ms = manager_status(MS_DISARMING).unwrap();
        let t = 1_765_160_000;
        assert_eq!(
            lrm_holds_watchdog(&lrm("wait_for_agent_lock", t), None, "pve-01", None),
            Some(false)
        );
        assert_eq!(
            lrm_holds_watchdog(&lrm("active", t), None, "pve-01", None),
            Some(true)
        );
        assert_eq!(
            lrm_holds_watchdog(&lrm("lost_agent_lock", t), None, "pve-01", None),
            Some(true),
            "the watchdog stays open and expires"
        );
        let m = lrm("maintenance", t);
        assert_eq!(
            lrm_holds_watchdog(&m, Some(&ms), "pve-03", None),
            Some(true)
        );
        assert_eq!(
            lrm_holds_watchdog(&m, Some(&ms), "pve-02", None),
            Some(false)
        );
        assert_eq!(lrm_holds_watchdog(&m, None, "pve-02", None), None);
        assert_eq!(
            lrm_holds_watchdog(&lrm("startup", t), None, "pve-01", None),
            None
        );
        assert_eq!(
            lrm_holds_watchdog(&LrmStatus::default(), None, "pve-01", None),
            None
        );
    }

    #[test]
    fn watchdog_needs_a_current_status() {
        let t = 1_765_160_000;
        let idle = lrm("wait_for_agent_lock", t);
        assert_eq!(
            lrm_holds_watchdog(&idle, None, "n", Some(t + 30)),
            Some(false)
        );
        assert_eq!(lrm_holds_watchdog(&idle, None, "n", Some(t + 31)), None);
        assert_eq!(lrm_holds_watchdog(&idle, None, "n", Some(t - 3)), None);
        assert_eq!(
            lrm_holds_watchdog(&lrm("active", t), None, "n", Some(t + 5)),
            Some(true)
        );
        let no_time = lrm_status(r#"{"state":"active","mode":"active"}"#).unwrap();
        assert_eq!(lrm_holds_watchdog(&no_time, None, "n", Some(t)), None);
        assert_eq!(lrm_holds_watchdog(&no_time, None, "n", None), Some(true));
        let float = lrm_status(r#"{"state":"active","timestamp":1765160000.5}"#).unwrap();
        assert_eq!(float.timestamp, Some(t));
        assert!(lrm_status("\"active\"").is_err());
    }

    proptest::proptest! {
        #[test]
        fn no_input_panics(s in "\\PC*") {
            if let Ok(ms) = manager_status(&s) {
                let _ = ms.disarmed();
                let _ = ms.error_services("pve-01");
                let _ = ms.active_services("pve-01");
            }
            if let Ok(l) = lrm_status(&s) {
                let _ = lrm_holds_watchdog(&l, None, "pve-01", Some(0));
                let _ = lrm_holds_watchdog(&l, None, "pve-01", Some(u64::MAX));
            }
        }
    }
}
