//! Small line-oriented formats: os-release, resolv.conf, /etc/hosts, fstab, mountinfo,
//! the kernel command line, and the helper's `functions` file.

/// `/etc/os-release`: `KEY=value` with optional quotes.
pub fn os_release(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.starts_with('#') {
                return None;
            }
            let (k, v) = l.split_once('=')?;
            Some((k.trim().to_string(), unquote(v.trim())))
        })
        .collect()
}

fn unquote(v: &str) -> String {
    let stripped = v
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .or_else(|| v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')));
    stripped.unwrap_or(v).replace("\\\"", "\"")
}

/// What `/etc/resolv.conf` says.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Resolv {
    pub nameservers: Vec<String>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

/// Parse `resolv.conf` as glibc does: the last `search`/`domain` line wins, `nameserver`
/// lines accumulate, `#` and `;` start comments.
pub fn resolv_conf(text: &str) -> Resolv {
    let mut r = Resolv::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => r.nameservers.extend(words.next().map(String::from)),
            Some("search") | Some("domain") => r.search = words.map(String::from).collect(),
            Some("options") => r.options.extend(words.map(String::from)),
            _ => {}
        }
    }
    r
}

/// Addresses `/etc/hosts` gives for `name` (case-insensitive), in file order.
pub fn hosts_lookup(text: &str, name: &str) -> Vec<String> {
    hosts_lookup_lines(text, name)
        .into_iter()
        .map(|(a, _)| a)
        .collect()
}

/// [`hosts_lookup`] with the line (1-based) each address is first given on.
pub fn hosts_lookup_lines(text: &str, name: &str) -> Vec<(String, u32)> {
    let mut out: Vec<(String, u32)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let Some(addr) = words.next() else { continue };
        if words.any(|w| w.eq_ignore_ascii_case(name)) && !out.iter().any(|(a, _)| a == addr) {
            out.push((addr.to_string(), u32::try_from(i + 1).unwrap_or(u32::MAX)));
        }
    }
    out
}

/// One mount from fstab or mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub source: String,
    pub target: String,
    pub fstype: String,
    pub line: u32,
}

/// `/etc/fstab`: `spec file vfstype options dump pass`.
pub fn fstab(text: &str) -> Vec<Mount> {
    text.lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let l = l.trim();
            if l.starts_with('#') {
                return None;
            }
            let mut w = l.split_whitespace();
            Some(Mount {
                source: w.next()?.to_string(),
                target: unescape_octal(w.next()?),
                fstype: w.next()?.to_string(),
                line: i as u32 + 1,
            })
        })
        .collect()
}

/// `/proc/self/mountinfo`: mount point is field 5, file system type follows ` - `.
pub fn mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let (left, right) = l.split_once(" - ")?;
            let target = unescape_octal(left.split_whitespace().nth(4)?);
            let mut r = right.split_whitespace();
            let fstype = r.next()?.to_string();
            let source = r.next().unwrap_or("").to_string();
            Some(Mount {
                source,
                target,
                fstype,
                line: i as u32 + 1,
            })
        })
        .collect()
}

/// fstab and mountinfo escape blanks as `\040` and so on.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let digits = &b[i + 1..i + 4];
            if digits.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = digits
                    .iter()
                    .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                out.push((v & 0xff) as u8);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The root file system kind the kernel command line names: `zfs` for `root=ZFS=…`,
/// `btrfs` for `rootfstype=btrfs`, else `None` (decided from mounts instead).
pub fn cmdline_root_fs(cmdline: &str) -> Option<&'static str> {
    for word in cmdline.split_whitespace() {
        if word.starts_with("root=ZFS=") || word == "boot=zfs" {
            return Some("zfs");
        }
        if word == "rootfstype=btrfs" {
            return Some("btrfs");
        }
    }
    None
}

/// `ESP_LIST="…"` from proxmox-kernel-helper's `functions` shell file.
pub fn esp_list_path(functions: &str) -> Option<String> {
    functions.lines().find_map(|l| {
        let v = l.trim().strip_prefix("ESP_LIST=")?;
        let v = unquote(v.split_whitespace().next()?);
        (!v.is_empty()).then_some(v)
    })
}

/// `<path> <bytes>` lines (a fixture's stand-in for `statvfs`); other lines are ignored.
pub fn free_space(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let path = w.next()?;
            let bytes = w.next()?.parse().ok()?;
            (path.starts_with('/') && w.next().is_none()).then(|| (path.to_string(), bytes))
        })
        .collect()
}

/// First line of a file, trimmed; `None` when empty.
pub fn first_line(text: &str) -> Option<String> {
    let l = text.lines().next()?.trim();
    (!l.is_empty()).then(|| l.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_last_search_wins() {
        let r = resolv_conf("search a.example\nnameserver 192.168.1.110 # lan\nsearch fritz.box\noptions edns0\n; x\n");
        assert_eq!(r.nameservers, ["192.168.1.110"]);
        assert_eq!(r.search, ["fritz.box"]);
        assert_eq!(r.options, ["edns0"]);
    }

    #[test]
    fn hosts() {
        let t =
            "127.0.0.1 localhost\n192.168.1.24 pve-03.fritz.box pve-03\n127.0.1.1 pve-03 # bad\n";
        assert_eq!(hosts_lookup(t, "PVE-03"), ["192.168.1.24", "127.0.1.1"]);
        assert!(hosts_lookup(t, "pve-01").is_empty());
        assert_eq!(
            hosts_lookup_lines(t, "pve-03"),
            [
                ("192.168.1.24".to_string(), 2),
                ("127.0.1.1".to_string(), 3)
            ]
        );
    }

    #[test]
    fn mounts() {
        let m = mountinfo("36 25 0:32 / /boot/efi rw,relatime shared:1 - vfat /dev/sda2 rw\n22 1 253:1 / / rw - ext4 /dev/mapper/pve-root rw\n");
        assert_eq!(m[0].target, "/boot/efi");
        assert_eq!(m[0].fstype, "vfat");
        assert_eq!(m[1].source, "/dev/mapper/pve-root");
        let f = fstab("# c\nUUID=6D31-87F4 /boot/efi vfat defaults 0 1\n/dev/pve/root / ext4 errors=remount-ro 0 1\n");
        assert_eq!(f[0].source, "UUID=6D31-87F4");
        assert_eq!(f[1].line, 3);
        assert_eq!(unescape_octal("/mnt/a\\040b"), "/mnt/a b");
    }

    #[test]
    fn helper_functions_file() {
        let t = "#!/bin/sh\nESP_LIST=\"/etc/kernel/proxmox-boot-uuids\"\nESPTYPE='c12a'\n";
        assert_eq!(
            esp_list_path(t).as_deref(),
            Some("/etc/kernel/proxmox-boot-uuids")
        );
        assert_eq!(
            cmdline_root_fs("root=ZFS=rpool/ROOT/pve-1 boot=zfs"),
            Some("zfs")
        );
        assert_eq!(
            cmdline_root_fs("BOOT_IMAGE=/vmlinuz root=/dev/mapper/pve-root ro quiet"),
            None
        );
    }

    proptest::proptest! {
        #[test]
        fn never_panic(s in "\\PC{0,200}") {
            let _ = (os_release(&s), resolv_conf(&s), hosts_lookup(&s, "x"), fstab(&s), mountinfo(&s));
            let _ = (cmdline_root_fs(&s), esp_list_path(&s), first_line(&s), unescape_octal(&s));
            let _ = free_space(&s);
        }

        #[test]
        fn free_space_reads_every_entry(sizes in proptest::collection::vec(proptest::num::u64::ANY, 0..4)) {
            let text: String = sizes.iter().enumerate().map(|(i, b)| format!("/fs{i} {b}\n# note\n")).collect();
            let got = free_space(&text);
            let want: Vec<(String, u64)> = sizes.iter().enumerate().map(|(i, b)| (format!("/fs{i}"), *b)).collect();
            proptest::prop_assert_eq!(got, want);
        }
    }
}
