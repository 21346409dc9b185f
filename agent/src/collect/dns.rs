//! The resolver: resolv.conf, ifupdown's `dns-*` options, and `/etc/hosts`.

use super::{Input, Reader};
use crate::parse::{interfaces, kv, net};
use fleetward_proto::{DnsFacts, DnsLine, HostsFacts, InterfacesDnsFacts, ResolvConfFacts};

const INTERFACES: &str = "/etc/network/interfaces";
const MAX_INCLUDES: usize = 64;

pub(super) fn dns(r: &mut Reader, hostname: Option<&str>) -> DnsFacts {
    let resolv_conf = resolv_conf(r);
    let (interfaces, iface_addresses) = interfaces_dns(r);
    let hosts = hosts(r, hostname, iface_addresses);
    DnsFacts {
        resolv_conf,
        interfaces,
        hosts,
    }
}

/// Addresses from the interfaces files, and whether they are all the node can carry.
struct IfaceAddresses {
    addresses: Vec<String>,
    complete: bool,
}

fn resolv_conf(r: &mut Reader) -> ResolvConfFacts {
    const PATH: &str = "/etc/resolv.conf";
    let symlink_target = r.root.read_link(PATH);
    // Line by line: a line that is not text is an unreadable line; the others still count.
    let text = match r.lines(PATH) {
        Input::Read(l) => l.text(),
        Input::Missing => {
            return ResolvConfFacts {
                symlink_target,
                ..ResolvConfFacts::default()
            }
        }
        Input::Unreadable => {
            return ResolvConfFacts {
                exists: true,
                symlink_target,
                ..ResolvConfFacts::default()
            }
        }
    };
    let parsed = kv::resolv_conf(&text);
    let stub = symlink_target
        .as_deref()
        .is_some_and(|t| t.contains("/run/systemd/resolve/stub-resolv.conf"))
        || parsed.nameservers == ["127.0.0.53"];
    ResolvConfFacts {
        exists: true,
        symlink_target,
        systemd_resolved_stub: stub,
        nameservers: parsed.nameservers,
        search: parsed.search,
        options: parsed.options,
    }
}

/// `/etc/network/interfaces` and its `source`/`source-directory` includes, depth first
/// in the order ifupdown reads them; each file once.
fn interfaces_dns(r: &mut Reader) -> (InterfacesDnsFacts, IfaceAddresses) {
    let mut facts = InterfacesDnsFacts::default();
    let mut addr = IfaceAddresses {
        addresses: Vec::new(),
        complete: true,
    };
    let mut todo = vec![INTERFACES.to_string()];
    while let Some(path) = todo.pop() {
        if facts.files.len() >= MAX_INCLUDES || facts.files.contains(&path) {
            continue;
        }
        let text = match r.lines(&path) {
            Input::Read(l) => {
                if l.bad_lines().next().is_some() {
                    addr.complete = false;
                }
                l.text()
            }
            Input::Missing => {
                if path == INTERFACES {
                    addr.complete = false;
                }
                continue;
            }
            Input::Unreadable => {
                addr.complete = false;
                continue;
            }
        };
        facts.files.push(path.clone());
        let parsed = interfaces::parse(&text);
        addr.complete &= !parsed.dynamic;
        addr.addresses
            .extend(parsed.addresses.iter().map(|a| net::canonical(a)));
        for opt in parsed.dns {
            let target = match opt.key.as_str() {
                "dns-nameservers" | "dns-nameserver" => &mut facts.nameservers,
                "dns-search" | "dns-domain" => &mut facts.search,
                _ => &mut Vec::new(),
            };
            for v in &opt.values {
                if !target.contains(v) {
                    target.push(v.clone());
                }
            }
            facts.lines.push(DnsLine {
                iface: opt.iface,
                key: opt.key,
                value: opt.values.join(" "),
                file: path.clone(),
                line: opt.line,
            });
        }
        let mut includes = Vec::new();
        for pattern in parsed.sources {
            includes.extend(expand(r, &absolute(&pattern), false));
        }
        for dir in parsed.source_dirs {
            includes.extend(expand(r, &format!("{}/*", absolute(&dir)), true));
        }
        // Reverse so the first include is read next.
        todo.extend(includes.into_iter().rev());
    }
    (facts, addr)
}

fn absolute(p: &str) -> String {
    if p.starts_with('/') {
        p.to_string()
    } else {
        format!("/etc/network/{p}")
    }
}

/// Expand a glob in the last path component; `run_parts` keeps only names run-parts
/// accepts (letters, digits, `_` and `-`).
fn expand(r: &Reader, pattern: &str, run_parts: bool) -> Vec<String> {
    let (dir, name) = pattern.rsplit_once('/').unwrap_or(("", pattern));
    let dir = if dir.is_empty() { "/" } else { dir };
    if !name.contains(['*', '?']) {
        return vec![pattern.to_string()];
    }
    r.root
        .list_dir(dir)
        .into_iter()
        .filter(|n| interfaces::glob_match(name, n))
        .filter(|n| {
            !run_parts
                || n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
        .map(|n| format!("{}/{n}", dir.trim_end_matches('/')))
        .filter(|p| !r.root.is_dir(p))
        .collect()
}

fn hosts(r: &mut Reader, hostname: Option<&str>, iface: IfaceAddresses) -> HostsFacts {
    let name = hostname.map(|h| h.split('.').next().unwrap_or(h).to_string());
    let text = match r.lines("/etc/hosts") {
        Input::Read(l) => Some(l.text()),
        _ => None,
    };
    let (addresses, address_lines) = match (&name, text) {
        (Some(n), Some(text)) => kv::hosts_lookup_lines(&text, n).into_iter().unzip(),
        _ => (Vec::new(), Vec::new()),
    };
    // The kernel's local addresses, on a live node (absent in a fixture tree).
    // One of them unreadable leaves the node's addresses unknown.
    let v4 = r.input("/proc/net/fib_trie");
    let v6 = r.input("/proc/net/if_inet6");
    let unknown = v4.is_unreadable() || v6.is_unreadable();
    let v4 = v4.read().map(|t| net::fib_trie_local(&t));
    let v6 = v6.read().map(|t| net::if_inet6(&t));
    let live = v4.is_some();
    let mut local_addresses = iface.addresses;
    local_addresses.extend(v4.unwrap_or_default());
    local_addresses.extend(v6.unwrap_or_default());
    local_addresses.sort();
    local_addresses.dedup();
    HostsFacts {
        name,
        addresses,
        address_lines,
        local_addresses,
        local_addresses_complete: !unknown && (live || iface.complete),
    }
}
