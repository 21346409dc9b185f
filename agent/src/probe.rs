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
