//! ifupdown's `/etc/network/interfaces`: the `dns-*` options, the addresses and `source`
//! includes.

/// A `dns-*` option in an interface stanza.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsOption {
    pub iface: Option<String>,
    pub key: String,
    pub values: Vec<String>,
    pub line: u32,
}

/// One file's relevant content.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Interfaces {
    pub dns: Vec<DnsOption>,
    /// `source` patterns (may contain globs), and `source-directory` dirs, in order.
    pub sources: Vec<String>,
    pub source_dirs: Vec<String>,
    /// `address` values of interface stanzas, prefix length removed, in file order.
    pub addresses: Vec<String>,
    /// A stanza whose address is assigned at run time (`inet dhcp`, `inet6 auto`, ...).
    pub dynamic: bool,
}

/// Address methods whose address is not in the file.
const DYNAMIC_METHODS: &[&str] = &["dhcp", "auto", "bootp", "ppp", "ipv4ll", "wvdial"];

pub fn parse(text: &str) -> Interfaces {
    let mut out = Interfaces::default();
    let mut iface: Option<String> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        match first {
            "iface" => {
                iface = words.next().map(String::from);
                let method = words.nth(1);
                if method.is_some_and(|m| DYNAMIC_METHODS.contains(&m)) {
                    out.dynamic = true;
                }
            }
            "address" if iface.is_some() => out.addresses.extend(
                words
                    .next()
                    .map(|a| a.split('/').next().unwrap_or(a).to_string())
                    .filter(|a| !a.is_empty()),
            ),
            "mapping" => iface = None,
            "source" => out.sources.extend(words.next().map(String::from)),
            "source-directory" | "source-dir" => {
                out.source_dirs.extend(words.next().map(String::from))
            }
            key if key.starts_with("dns-") && iface.is_some() => out.dns.push(DnsOption {
                iface: iface.clone(),
                key: key.to_string(),
                values: words.map(String::from).collect(),
                line: i as u32 + 1,
            }),
            _ => {}
        }
    }
    out
}

/// Whether a file name matches a shell glob with `*`, `?` (no classes).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    // Linear-time wildcard matching: remember the last `*` and backtrack only to it.
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(&c) if c == b'?' || c == n[ni] => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p[pi.min(p.len())..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_vmbr0() {
        let t = "auto lo\niface lo inet loopback\n\niface eno1 inet manual\n\nauto vmbr0\niface vmbr0 inet static\n\taddress 192.168.1.24/24\n\tgateway 192.168.1.1\n\tbridge-ports eno1\n\tdns-nameservers 192.168.1.110\n\tdns-search fritz.box\n\nsource /etc/network/interfaces.d/*\n";
        let p = parse(t);
        assert_eq!(p.dns.len(), 2);
        assert_eq!(p.dns[0].iface.as_deref(), Some("vmbr0"));
        assert_eq!(p.dns[0].values, ["192.168.1.110"]);
        assert_eq!(p.dns[1].line, 12);
        assert_eq!(p.sources, ["/etc/network/interfaces.d/*"]);
        assert_eq!(p.addresses, ["192.168.1.24"]);
        assert!(!p.dynamic);
        let d = parse("iface eth0 inet dhcp\niface eth0 inet6 static\n  address fd00::1/64\n");
        assert!(d.dynamic);
        assert_eq!(d.addresses, ["fd00::1"]);
        assert!(glob_match("*", "vlan10"));
        assert!(glob_match("*.cfg", "a.cfg"));
        assert!(!glob_match("*.cfg", "a.cfgx"));
    }

    proptest::proptest! {
        #[test]
        fn never_panic(s in "\\PC{0,300}", p in "[*?a-c]{0,8}", n in "[a-c]{0,8}") {
            let _ = parse(&s);
            let _ = glob_match(&p, &n);
        }

        #[test]
        fn every_static_address_is_found(addrs in proptest::collection::vec((0u8..=255, 0u8..=255, 1u8..=32), 0..5)) {
            let mut t = String::new();
            let mut want = Vec::new();
            for (i, (a, b, len)) in addrs.iter().enumerate() {
                t.push_str(&format!("iface e{i} inet static\n\taddress 10.{a}.{b}.1/{len}\n"));
                want.push(format!("10.{a}.{b}.1"));
            }
            let p = parse(&t);
            proptest::prop_assert_eq!(p.addresses, want);
            proptest::prop_assert!(!p.dynamic);
        }
    }
}
