//! The kernel's local addresses as `/proc/net` shows them.

use std::net::Ipv6Addr;

/// IPv4 addresses of the local routing table in `/proc/net/fib_trie`: a leaf line
/// `|-- 192.168.1.24` followed by `/32 host LOCAL`.
pub fn fib_trie_local(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut leaf: Option<&str> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(addr) = t.strip_prefix("|-- ") {
            leaf = Some(addr.trim());
        } else if t.starts_with("/32 host LOCAL") {
            if let Some(a) = leaf {
                if !out.iter().any(|o| o == a) {
                    out.push(a.to_string());
                }
            }
        } else if !t.starts_with('/') {
            leaf = None;
        }
    }
    out
}

/// IPv6 addresses in `/proc/net/if_inet6`: the first field is the address as 32 hex digits.
pub fn if_inet6(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let hex = l.split_whitespace().next()?;
            if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            let bits = u128::from_str_radix(hex, 16).ok()?;
            Some(Ipv6Addr::from(bits).to_string())
        })
        .collect()
}

/// An address in one canonical spelling (`FD00:0::1` → `fd00::1`), so addresses written
/// differently compare equal; anything that is not an address is returned as written.
pub fn canonical(addr: &str) -> String {
    addr.parse::<std::net::IpAddr>()
        .map_or_else(|_| addr.to_string(), |a| a.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_files() {
        let trie = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n     +-- 192.168.1.0/24 2 0 2\n        |-- 192.168.1.0\n           /24 link UNICAST\n        |-- 192.168.1.24\n           /32 host LOCAL\nLocal:\n  +-- 127.0.0.0/8 2 0 2\n     |-- 127.0.0.1\n        /32 host LOCAL\n     |-- 192.168.1.24\n        /32 host LOCAL\n";
        assert_eq!(fib_trie_local(trie), ["192.168.1.24", "127.0.0.1"]);
        let v6 = "00000000000000000000000000000001 01 80 10 80       lo\nfe800000000000000a0027fffe4e6b2a 02 40 20 80     eth0\n";
        assert_eq!(if_inet6(v6), ["::1", "fe80::a00:27ff:fe4e:6b2a"]);
        assert_eq!(canonical("FD00:0::1"), "fd00::1");
        assert_eq!(canonical("pve-01"), "pve-01");
    }

    proptest::proptest! {
        #[test]
        fn never_panic(s in "\\PC{0,300}") {
            let _ = (fib_trie_local(&s), if_inet6(&s), canonical(&s));
        }

        #[test]
        fn if_inet6_reads_every_address(a in proptest::num::u128::ANY) {
            let line = format!("{a:032x} 02 40 20 80 eth0\n");
            proptest::prop_assert_eq!(if_inet6(&line), vec![Ipv6Addr::from(a).to_string()]);
        }
    }
}
