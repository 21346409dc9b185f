//! Which cluster node the controller runs on (`host_node`): configured, or found by
//! comparing the controller's own hostname and addresses ([`HostIdentity`]) with what each
//! node reports (`facts.node.hostname`, `facts.dns.hosts.local_addresses`). The decision
//! is the pure [`find`] (`Controller::host_node` feeds it the configuration and the latest
//! reports); the real lookup ([`lookup`]) is the binary's edge, and tests set the identity
//! on the controller instead (`Controller::set_host_identity`, or `FLEETWARD_TEST_HOSTNAME`
//! for the end-to-end harness). A leaf: it imports nothing of the crate.
//!
//! The controller's host is powered off last and alone, and rolled last: a wrong guess
//! would power the controller off before the nodes it still has to shut down. So the
//! answer is [`HostNode::Unknown`] whenever the reports do not settle it, and the shutdown
//! plan says so.

use std::net::IpAddr;

/// The controller's own host as the operating system names it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostIdentity {
    /// First label, lower case.
    pub hostname: Option<String>,
    /// Non-loopback addresses.
    pub addresses: Vec<IpAddr>,
}

impl HostIdentity {
    pub fn new(hostname: Option<&str>, addresses: Vec<IpAddr>) -> Self {
        HostIdentity {
            hostname: hostname.and_then(short_name),
            addresses: addresses.into_iter().filter(|a| !a.is_loopback()).collect(),
        }
    }
}

/// One node as its latest report names it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeIdentity {
    pub name: String,
    pub hostname: Option<String>,
    pub addresses: Vec<String>,
    /// The node reported every address it can carry.
    pub addresses_complete: bool,
}

/// Where the controller runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostNode {
    /// `host_node` in the configuration.
    Configured(String),
    /// Exactly one node matches the controller's hostname or one of its addresses.
    Found { node: String, by: String },
    /// No node matches, and every node reported its hostname and all its addresses (or
    /// the configuration says `host_outside_cluster = true`).
    Outside,
    /// The reports do not settle it; why.
    Unknown(String),
}

impl HostNode {
    /// The node powered off last and alone, if known and a member.
    pub fn node(&self) -> Option<&str> {
        match self {
            HostNode::Configured(n) | HostNode::Found { node: n, .. } => Some(n),
            HostNode::Outside | HostNode::Unknown(_) => None,
        }
    }

    /// One line for the plan; the unknown case in capitals.
    pub fn describe(&self) -> String {
        match self {
            HostNode::Configured(n) => format!("Controller host: {n} (host_node)"),
            HostNode::Found { node, by } => format!("Controller host: {node} (found: {by})"),
            HostNode::Outside => "Controller host: not a cluster node".to_string(),
            HostNode::Unknown(why) => format!(
                "CONTROLLER HOST UNKNOWN: {why}. IT MAY BE POWERED OFF BEFORE THE OTHER NODES: \
                 set host_node (or host_outside_cluster = true) in controller.toml, or pass \
                 --yes-host-unknown to start anyway"
            ),
        }
    }
}

fn short_name(h: &str) -> Option<String> {
    let first = h.trim().split('.').next()?.trim().to_ascii_lowercase();
    (!first.is_empty() && first != "localhost").then_some(first)
}

/// The decision: configured, else the one node whose hostname or an address matches.
pub fn find(
    configured: Option<&str>,
    outside: bool,
    me: &HostIdentity,
    nodes: &[NodeIdentity],
) -> HostNode {
    if let Some(n) = configured {
        return HostNode::Configured(n.to_string());
    }
    if outside {
        return HostNode::Outside;
    }
    if me.hostname.is_none() && me.addresses.is_empty() {
        return HostNode::Unknown(
            "the controller cannot tell its own hostname or addresses".into(),
        );
    }
    let mut matches: Vec<(String, String)> = Vec::new();
    for n in nodes {
        let by_name = me.hostname.as_deref().filter(|h| {
            n.hostname.as_deref().and_then(short_name).as_deref() == Some(*h)
                || short_name(&n.name).as_deref() == Some(*h)
        });
        let by_addr = me.addresses.iter().find(|a| {
            n.addresses
                .iter()
                .any(|s| s.parse::<IpAddr>().is_ok_and(|b| b == **a))
        });
        let by = match (by_name, by_addr) {
            (Some(h), _) => format!("hostname {h}"),
            (None, Some(a)) => format!("address {a}"),
            (None, None) => continue,
        };
        matches.push((n.name.clone(), by));
    }
    match matches.len() {
        1 => {
            let (node, by) = matches.remove(0);
            HostNode::Found { node, by }
        }
        0 => {
            let vague: Vec<&str> = nodes
                .iter()
                .filter(|n| n.hostname.is_none() || !n.addresses_complete)
                .map(|n| n.name.as_str())
                .collect();
            if vague.is_empty() && !nodes.is_empty() {
                HostNode::Outside
            } else {
                HostNode::Unknown(format!(
                    "no node matches the controller's hostname or addresses, and {} did not \
                     report every address",
                    if vague.is_empty() {
                        "no node".to_string()
                    } else {
                        vague.join(", ")
                    }
                ))
            }
        }
        _ => HostNode::Unknown(format!(
            "several nodes match the controller: {}",
            matches
                .iter()
                .map(|(n, by)| format!("{n} ({by})"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// The environment variable the end-to-end tests use to make the controller believe it
/// runs on a node (its hostname); never set in production.
pub const TEST_HOSTNAME_ENV: &str = "FLEETWARD_TEST_HOSTNAME";

/// The real identity, at the binary's edge: `/proc/sys/kernel/hostname` and the addresses
/// that name resolves to (plus the listen address when it is a specific one).
/// `FLEETWARD_TEST_HOSTNAME` replaces it (hostname only) for the test harness.
pub fn lookup(listen: Option<IpAddr>) -> HostIdentity {
    if let Ok(h) = std::env::var(TEST_HOSTNAME_ENV) {
        return HostIdentity::new(Some(&h), Vec::new());
    }
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
    let mut addresses: Vec<IpAddr> = Vec::new();
    if let Some(h) = hostname.as_deref().map(str::trim).filter(|h| !h.is_empty()) {
        use std::net::ToSocketAddrs;
        if let Ok(it) = (h, 0u16).to_socket_addrs() {
            addresses.extend(it.map(|s| s.ip()));
        }
    }
    if let Some(ip) = listen.filter(|ip| !ip.is_unspecified()) {
        addresses.push(ip);
    }
    addresses.sort();
    addresses.dedup();
    HostIdentity::new(hostname.as_deref(), addresses)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, host: Option<&str>, addrs: &[&str], complete: bool) -> NodeIdentity {
        NodeIdentity {
            name: name.into(),
            hostname: host.map(str::to_owned),
            addresses: addrs.iter().map(|a| a.to_string()).collect(),
            addresses_complete: complete,
        }
    }

    #[test]
    fn the_host_is_configured_found_outside_or_unknown() {
        let nodes = vec![
            node("pve-01", Some("pve-01"), &["10.0.0.1"], true),
            node("pve-02", Some("pve-02.lab.example"), &["10.0.0.2"], true),
        ];
        let me = HostIdentity::new(Some("PVE-02.lab.example"), vec![]);
        assert_eq!(
            find(None, false, &me, &nodes),
            HostNode::Found {
                node: "pve-02".into(),
                by: "hostname pve-02".into()
            }
        );
        let me = HostIdentity::new(Some("ctl"), vec!["10.0.0.1".parse().unwrap()]);
        assert_eq!(find(None, false, &me, &nodes).node(), Some("pve-01"));
        assert_eq!(
            find(Some("pve-02"), false, &me, &nodes),
            HostNode::Configured("pve-02".into())
        );
        let me = HostIdentity::new(Some("ctl"), vec!["127.0.0.1".parse().unwrap()]);
        assert_eq!(find(None, false, &me, &nodes), HostNode::Outside);
        let mut vague = nodes.clone();
        vague[1].addresses_complete = false;
        let HostNode::Unknown(why) = find(None, false, &me, &vague) else {
            panic!("a node that did not report every address leaves it open");
        };
        assert!(why.contains("pve-02"), "{why}");
        assert_eq!(find(None, true, &me, &vague), HostNode::Outside);
        let me = HostIdentity::new(Some("pve-01"), vec!["10.0.0.2".parse().unwrap()]);
        assert!(
            matches!(find(None, false, &me, &nodes), HostNode::Unknown(w) if w.contains("several"))
        );
        let me = HostIdentity::new(Some("localhost"), vec![]);
        assert!(matches!(
            find(None, false, &me, &nodes),
            HostNode::Unknown(_)
        ));
        assert!(HostNode::Unknown("x".into())
            .describe()
            .starts_with("CONTROLLER HOST UNKNOWN"));
    }
}
