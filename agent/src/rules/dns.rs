//! `dns.*`: resolver and node name.

use super::{is_pve, list_or, partly_unknown, unknown_under, At, Findings};
use crate::parse::net;
use fleetward_proto::{Facts, Severity::*};

const RESOLV: &str = "/etc/resolv.conf";
const HOSTS: &str = "/etc/hosts";

fn is_loopback(addr: &str) -> bool {
    addr.starts_with("127.") || addr == "::1"
}

pub(super) fn check(f: &Facts, out: &mut Findings) {
    let r = &f.dns.resolv_conf;
    // A line that could not be read may be the nameserver line.
    let resolv_unknown = partly_unknown(f, RESOLV);
    if r.nameservers.is_empty() && !resolv_unknown {
        let why = if r.exists {
            "names no nameserver"
        } else {
            "does not exist"
        };
        out.push(
            "dns.no-nameserver",
            Error,
            format!("{RESOLV} {why}: name resolution falls back to 127.0.0.1"),
        )
        .at(RESOLV, None);
    }
    if r.nameservers.len() > 3 {
        out.push(
            "dns.too-many-nameservers",
            Warning,
            format!(
                "{} nameservers configured; the C library uses only the first 3 ({})",
                r.nameservers.len(),
                r.nameservers[..3].join(", ")
            ),
        )
        .at(RESOLV, None);
    }

    let i = &f.dns.interfaces;
    let sources_unknown = resolv_unknown || unknown_under(f, "/etc/network/");
    if !r.systemd_resolved_stub
        && !sources_unknown
        && (!i.nameservers.is_empty() || !i.search.is_empty())
    {
        let mut diffs = Vec::new();
        if !i.nameservers.is_empty() && i.nameservers != r.nameservers {
            diffs.push(format!(
                "nameservers {} in the interfaces file, {} in resolv.conf",
                i.nameservers.join(" "),
                list_or(&r.nameservers, " ", "none")
            ));
        }
        if !i.search.is_empty() && i.search != r.search {
            diffs.push(format!(
                "search {} in the interfaces file, {} in resolv.conf",
                i.search.join(" "),
                list_or(&r.search, " ", "none")
            ));
        }
        if !diffs.is_empty() {
            let first = i.lines.first();
            out.push(
                "dns.not-persistent",
                Warning,
                format!("the next `ifreload -a` changes DNS: {}", diffs.join("; ")),
            )
            .at(
                first.map_or("/etc/network/interfaces", |l| l.file.as_str()),
                first.map(|l| l.line),
            );
        }
    }

    let h = &f.dns.hosts;
    // An unreadable line of /etc/hosts may hold the node's entry.
    if partly_unknown(f, HOSTS) {
        return;
    }
    // pve8to9's `check_misc` ("Checking if the local node's hostname is resolvable"), from
    // /etc/hosts only: no lookup is made.
    if let Some(name) = &h.name {
        if h.addresses.is_empty() {
            out.push(
                "dns.hostname-unresolvable",
                Warning,
                format!("the node name '{name}' has no /etc/hosts entry: cluster services then depend on DNS"),
            )
            .at("/etc/hosts", None);
        } else if is_pve(f) && h.addresses.iter().all(|a| is_loopback(a)) {
            out.push(
                "dns.hostname-loopback",
                Error,
                format!(
                    "the node name '{name}' resolves by /etc/hosts only to {} : pmxcfs refuses to start",
                    h.addresses.join(", ")
                ),
            )
            .at("/etc/hosts", None);
        }
        // pve8to9's `check_misc`: the first address the name resolves to that is not
        // loopback (`get_ip_from_hostname`) must be configured on the node; pve-cluster
        // binds to it.
        let first = h.addresses.iter().position(|a| !is_loopback(a));
        if let Some(i) = first.filter(|_| is_pve(f) && h.local_addresses_complete) {
            let addr = &h.addresses[i];
            let canon = net::canonical(addr);
            if !h.local_addresses.contains(&canon) {
                out.push(
                    "dns.hostname-not-local",
                    Error,
                    format!(
                        "the node name '{name}' resolves by /etc/hosts to {addr}, which no interface of the node carries ({}): pve-cluster binds to it",
                        list_or(&h.local_addresses, ", ", "no addresses")
                    ),
                )
                .at(HOSTS, h.address_lines.get(i).copied());
            }
        }
    }
}
