//! Live probes (only with `inspect --probe`, never with `--root`): name resolution of the
//! hosts a node needs for updates.

use fleetward_proto::{Finding, Severity};
use std::net::{IpAddr, ToSocketAddrs};

/// Names every Proxmox VE node must resolve to get updates.
pub const DEFAULT_NAMES: &[&str] = &[
    "deb.debian.org",
    "security.debian.org",
    "download.proxmox.com",
];

/// A name resolver; the real one asks the C library, tests use a table.
pub trait Resolve {
    fn resolve(&self, name: &str) -> Result<Vec<IpAddr>, String>;
}

/// getaddrinfo(3), as every other program on the node resolves names.
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, name: &str) -> Result<Vec<IpAddr>, String> {
        (name, 0)
            .to_socket_addrs()
            .map(|it| it.map(|a| a.ip()).collect())
            .map_err(|e| e.to_string())
    }
}

/// `dns.lookup-failed` for every name that does not resolve to at least one address.
pub fn lookups(resolver: &dyn Resolve, names: &[String]) -> Vec<Finding> {
    names
        .iter()
        .filter_map(|name| {
            let why = match resolver.resolve(name) {
                Ok(addrs) if !addrs.is_empty() => return None,
                Ok(_) => "no address".to_string(),
                Err(e) => e,
            };
            Some(Finding {
                code: "dns.lookup-failed".into(),
                severity: Severity::Error,
                message: format!("{name} does not resolve: {why}"),
                path: None,
                line: None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Table(HashMap<&'static str, Result<Vec<IpAddr>, String>>);
    impl Resolve for Table {
        fn resolve(&self, name: &str) -> Result<Vec<IpAddr>, String> {
            self.0
                .get(name)
                .cloned()
                .unwrap_or_else(|| Err("Name or service not known".into()))
        }
    }

    #[test]
    fn failed_and_empty_lookups_are_findings() {
        let ok: IpAddr = "151.101.2.132".parse().unwrap();
        let t = Table(HashMap::from([
            ("deb.debian.org", Ok(vec![ok])),
            ("security.debian.org", Ok(vec![])),
        ]));
        let names: Vec<String> = DEFAULT_NAMES.iter().map(|s| s.to_string()).collect();
        let f = lookups(&t, &names);
        assert_eq!(f.len(), 2);
        assert!(f
            .iter()
            .all(|f| f.code == "dns.lookup-failed" && f.severity == Severity::Error));
        assert!(f[0]
            .message
            .starts_with("security.debian.org does not resolve: no address"));
        assert!(f[1].message.contains("download.proxmox.com"));
    }
}

/// Ceph's health as `ceph health --format json` reports it: `(healthy apart from noout,
/// noout set)`. Healthy means `HEALTH_OK`, or `HEALTH_WARN` whose only check is the OSD
/// map flags and whose flags are only `noout` (the state a rollout or shutdown creates on
/// purpose). Pure: the caller runs the command.
pub fn parse_ceph_health(json: &str) -> Result<(bool, bool), String> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("ceph health output is not JSON: {e}"))?;
    let status = v["status"]
        .as_str()
        .ok_or("ceph health output has no status")?;
    let checks = v["checks"].as_object().cloned().unwrap_or_default();
    let flags = checks
        .get("OSDMAP_FLAGS")
        .and_then(|c| c["summary"]["message"].as_str())
        .unwrap_or("");
    let noout = flags.contains("noout");
    // "noout flag(s) set" / "noout,noscrub flag(s) set": the flags before " flag".
    let only_noout = flags
        .split_whitespace()
        .next()
        .is_some_and(|f| f.split(',').all(|x| x == "noout"));
    let healthy = match status {
        "HEALTH_OK" => true,
        "HEALTH_WARN" => checks.len() == 1 && only_noout,
        _ => false,
    };
    Ok((healthy, noout))
}

/// Runs `ceph health --format json` (read-only, 10 s timeout) and fills the report's Ceph
/// health and `noout` flag; on failure they stay unknown (`None`) and the reason is logged.
pub fn ceph_health(
    report: &mut fleetward_proto::Report,
    runner: &dyn crate::runner::CommandRunner,
) {
    let Some(ceph) = report.facts.ceph.as_mut() else {
        return;
    };
    let Some(output) = run_ceph(runner, &["health", "--format", "json"], "Ceph health") else {
        return;
    };
    match parse_ceph_health(&output) {
        Ok((healthy, noout)) => {
            ceph.healthy = Some(healthy);
            ceph.noout = Some(noout);
        }
        Err(e) => tracing::warn!(error = %e, "Ceph health unknown"),
    }
}

/// Runs `ceph osd dump --format json` (read-only, 10 s timeout) and fills the report's
/// `noout` flag (the OSD map's own, which wins over the health check's) and the OSDs up/in;
/// on failure they stay as they were (unknown unless `ceph health` told the flag) and the
/// reason is logged.
pub fn ceph_osd_map(
    report: &mut fleetward_proto::Report,
    runner: &dyn crate::runner::CommandRunner,
) {
    let Some(ceph) = report.facts.ceph.as_mut() else {
        return;
    };
    let Some(output) = run_ceph(runner, crate::parse::ceph::OSD_DUMP_ARGS, "OSDs") else {
        return;
    };
    match crate::parse::ceph::parse_osd_dump(&output) {
        Ok(m) => {
            ceph.noout = Some(m.noout);
            ceph.osds = Some(m.osds);
        }
        Err(e) => tracing::warn!(error = %e, "OSDs unknown"),
    }
}

/// Runs a read-only `ceph` command (10 s timeout); its output when it exits 0, else `None`
/// with the reason logged (`what` then stays unknown).
fn run_ceph(
    runner: &dyn crate::runner::CommandRunner,
    args: &[&str],
    what: &str,
) -> Option<String> {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let r = runner.run(
        "ceph",
        &args,
        &[],
        std::time::Duration::from_secs(10),
        &mut |_| {},
    );
    if r.exit_code != Some(0) {
        tracing::warn!(command = %args.join(" "), exit = ?r.exit_code, error = ?r.spawn_error, "ceph failed; {what} unknown");
        return None;
    }
    Some(r.output)
}

#[cfg(test)]
mod ceph_tests {
    use super::{ceph_osd_map, parse_ceph_health};
    use crate::runner::testing::RecordingRunner;
    use crate::runner::RunResult;

    /// `run` on a live node: the OSD map gives `noout` and the OSDs; a failing `ceph`
    /// leaves them unknown.
    #[test]
    fn ceph_osd_map_fills_noout_and_the_osds() {
        let mut report = fleetward_proto::Report {
            schema_version: fleetward_proto::SCHEMA_VERSION,
            facts: Default::default(),
            findings: vec![],
        };
        report.facts.ceph = Some(fleetward_proto::CephFacts::default());
        let runner = RecordingRunner::new();
        runner.script([RunResult::exited(
            0,
            r#"{"flags":"noout,sortbitwise","osds":[{"osd":0,"up":0,"in":1},{"osd":1,"up":1,"in":1}]}"#,
        )]);
        ceph_osd_map(&mut report, &runner);
        let calls = runner.take_calls();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].program, "ceph");
        assert_eq!(calls[0].args, ["osd", "dump", "--format", "json"]);
        let ceph = report.facts.ceph.clone().unwrap();
        assert_eq!(ceph.noout, Some(true));
        let o = ceph.osds.unwrap();
        assert_eq!((o.total, o.up, o.inside), (2, 1, 2));

        let mut report2 = report.clone();
        report2.facts.ceph = Some(fleetward_proto::CephFacts::default());
        runner.script([RunResult::exited(1, "error")]);
        ceph_osd_map(&mut report2, &runner);
        let ceph = report2.facts.ceph.unwrap();
        assert_eq!((ceph.noout, ceph.osds), (None, None));
    }

    #[test]
    fn ceph_health_ok_noout_only_and_real_warnings() {
        assert_eq!(
            parse_ceph_health(r#"{"status":"HEALTH_OK","checks":{}}"#),
            Ok((true, false))
        );
        let noout = r#"{"status":"HEALTH_WARN","checks":{"OSDMAP_FLAGS":{"severity":"HEALTH_WARN","summary":{"message":"noout flag(s) set","count":1},"muted":false}}}"#;
        assert_eq!(parse_ceph_health(noout), Ok((true, true)));
        let more = r#"{"status":"HEALTH_WARN","checks":{"OSDMAP_FLAGS":{"summary":{"message":"noout,noscrub flag(s) set"}}}}"#;
        assert_eq!(parse_ceph_health(more), Ok((false, true)));
        let degraded = r#"{"status":"HEALTH_WARN","checks":{"OSDMAP_FLAGS":{"summary":{"message":"noout flag(s) set"}},"PG_DEGRADED":{"summary":{"message":"Degraded data redundancy"}}}}"#;
        assert_eq!(parse_ceph_health(degraded), Ok((false, true)));
        assert_eq!(
            parse_ceph_health(r#"{"status":"HEALTH_ERR"}"#),
            Ok((false, false))
        );
        assert!(parse_ceph_health("garbage").is_err());
        assert!(parse_ceph_health("{}").is_err());
    }
}
