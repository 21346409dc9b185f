//! Facts as flat, comparable `area.key -> value` pairs.
//!
//! The keys (one per line; `[..]` keys repeat per item; list values are space-separated in
//! fact order; a key is absent when the fact is unknown or the list is empty):
//!
//! | key | value | drift |
//! |---|---|---|
//! | `apt.repo[<type> <uri> <suite> <component>]` | `enabled` | `drift.apt` |
//! | `apt.disabled[<type> <uri> <suite> <component>]` | `disabled` (entry `Enabled: no`, or in a file apt ignores) | – |
//! | `apt.file[<path>]` | `one-line`, `deb822`, `ignored` | – |
//! | `apt.errors` | number of lines apt refuses | – |
//! | `dns.nameservers`, `dns.search` | from `/etc/resolv.conf` | `drift.dns` |
//! | `dns.interfaces.nameservers`, `dns.interfaces.search` | `dns-*` of `/etc/network/interfaces` | `drift.dns` |
//! | `dns.resolv_conf` | `file`, `symlink to <target>`, `systemd-resolved stub`, `missing` | – |
//! | `dns.hosts` | addresses `/etc/hosts` gives the node's name | – |
//! | `boot.firmware` | `uefi`, `bios` | `drift.boot` |
//! | `boot.secure_boot` | `enabled`, `disabled`, `unknown` (UEFI only) | `drift.boot` |
//! | `boot.setup_mode` | `yes`, `no` | – |
//! | `boot.shim_validation` | `disabled` (MokSBStateRT) | – |
//! | `boot.package[<name>]` | version | `drift.boot` (installed or not) |
//! | `boot.kernel_hook` | `owned by <pkg>`, `exists, no owner`, `missing` | `drift.boot` |
//! | `boot.esp_sync` | `configured`, `not configured` | `drift.boot` |
//! | `boot.esp_list` | the ESP list's volume ids | – |
//! | `boot.boot_efi` | `mounted`, `in fstab, not mounted`, `mounted, not in fstab` | – |
//! | `boot.root_fs`, `boot.kernel_pin`, `boot.next_boot_pin` | as reported | – |
//! | `boot.force_efi_extra_removable`, `boot.reboot_required` | `yes`, `no` | – |
//! | `esp[<volume id or device>]` | `<source> <loader>, kernels <list>` | – |
//! | `kernel.running` | `/proc/sys/kernel/osrelease` | `drift.kernel` |
//! | `kernel.next`, `kernel.installed` | as reported | – |
//! | `packages.pve-manager`, `packages.proxmox-ve` | version | `drift.packages` |
//! | `os.release` | `<id> <version_id> <codename>` | – |
//! | `cluster.name`, `cluster.quorate`, `cluster.members`, `cluster.offline`, `cluster.expected_votes`, `cluster.qdevice` | as reported | – |
//! | `node.hostname`, `node.boot_id`, `node.cmdline` | identity | – |
//! | `guest[<vmid>]` | `<kind> <state>`, then `name <name>`, `onboot`, `order N`, `up S`, `down S`, `ha`, `at <node>` as present | – |
//! | `ceph.monitor` | `yes`, `no` | – |
//! | `ceph.osds` | the OSD ids on the node | – |
//! | `ceph.noout`, `ceph.healthy` | `yes`, `no` (absent when unknown) | – |
//! | `ha.maintenance`, `ha.disarmed` | `yes`, `no` (absent when unknown) | – |
//! | `ha.resources` | number of HA resources | – |
//! | `ha.shutdown_policy` | as set in `datacenter.cfg` | – |
//! | `unreadable[<path>]`, `unreadable[<path>:<line>]` | reason | – |
//!
//! Keys without a drift column still matter to `node diff` and to per-node history
//! ([`changes`]); drift skips them because they are identities, per-node by nature, or
//! covered by the agent's own checks. Guests, the Ceph role and HA maintenance are per-node
//! by nature (each node has its own guests, OSDs and monitor or not); the HA resource count
//! and shutdown policy come from the cluster file system, the same on every node that sees
//! it. So their history shows a guest stopping or coming back, a node entering maintenance.

use fleetward_proto::action::GuestKind;
use fleetward_proto::{AptEntry, AptFileFormat, EspSource, Facts, Firmware, GuestState, Loader};
use std::collections::BTreeMap;

/// `scheme://host/path` without a trailing slash, scheme and host lower-cased (user info
/// before `@` keeps its case). The same rule as the agent's `apt` rules.
pub fn normalize_uri(uri: &str) -> String {
    let uri = uri.trim().trim_end_matches('/');
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_string();
    };
    let (authority, path) = match rest.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (rest, None),
    };
    let authority = match authority.rsplit_once('@') {
        Some((user, host)) => format!("{user}@{}", host.to_ascii_lowercase()),
        None => authority.to_ascii_lowercase(),
    };
    let scheme = scheme.to_ascii_lowercase();
    match path {
        Some(p) => format!("{scheme}://{authority}/{p}"),
        None => format!("{scheme}://{authority}"),
    }
}

/// A repository in canonical form: `type uri suite [component]`.
pub fn repo_key(kind: &str, uri: &str, suite: &str, component: &str) -> String {
    let uri = normalize_uri(uri);
    if component.is_empty() {
        format!("{kind} {uri} {suite}")
    } else {
        format!("{kind} {uri} {suite} {component}")
    }
}

/// Normalise a repository written by an operator (`deb http://Host/path/ trixie main`):
/// `None` unless it has a type, a URI and a suite, and at most one component.
pub fn parse_repo(text: &str) -> Option<String> {
    let parts: Vec<&str> = text.split_whitespace().collect();
    match parts.as_slice() {
        [kind, uri, suite] => Some(repo_key(kind, uri, suite, "")),
        [kind, uri, suite, component] => Some(repo_key(kind, uri, suite, component)),
        _ => None,
    }
}

/// Every canonical repository an entry stands for (one per type x URI x suite x component).
pub fn entry_repos(e: &AptEntry) -> Vec<String> {
    let comps: Vec<&str> = if e.components.is_empty() {
        vec![""]
    } else {
        e.components.iter().map(String::as_str).collect()
    };
    let mut out = Vec::new();
    for t in &e.types {
        for u in &e.uris {
            for s in &e.suites {
                for c in &comps {
                    out.push(repo_key(t, u, s, c));
                }
            }
        }
    }
    out
}

/// The Secure Boot state of a UEFI node: mokutil's verdict, else the `SecureBoot` variable.
pub fn secure_boot_state(f: &Facts) -> Option<&'static str> {
    let sb = f.boot.secure_boot.as_ref()?;
    Some(match (sb.state.as_str(), sb.secure_boot) {
        ("enabled", _) | (_, Some(true)) => "enabled",
        ("disabled", _) | (_, Some(false)) => "disabled",
        _ => "unknown",
    })
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

/// Every comparable fact of a node as `area.key -> value` (see the module docs for the keys).
pub fn flatten(f: &Facts) -> BTreeMap<String, String> {
    let mut out = FlatBuilder::default();
    flatten_into(f, &mut out);
    out.into_map()
}

/// [`flatten`] straight into the packed form the controller keeps per node, without the map
/// (the ingestion path: one string and one index instead of a `String` pair and a tree node
/// per fact).
pub fn flatten_packed(f: &Facts) -> PackedFlat {
    let mut out = FlatBuilder::default();
    flatten_into(f, &mut out);
    out.into_packed()
}

/// Keys and values written into one string; sorted (and a repeated key's last value kept,
/// as a map insert would) when finished.
#[derive(Default)]
struct FlatBuilder {
    text: String,
    /// Per entry: start of its key, end of its key, end of its value in `text`.
    spans: Vec<(usize, usize, usize)>,
}

impl FlatBuilder {
    fn put(&mut self, k: &str, v: &str) {
        let start = self.text.len();
        self.text.push_str(k);
        let key_end = self.text.len();
        self.text.push_str(v);
        self.spans.push((start, key_end, self.text.len()));
    }

    /// The entries in key order, each key once (its last value).
    fn sorted(&self) -> Vec<(&str, &str)> {
        let t = &self.text;
        let mut kv: Vec<(&str, &str)> = self
            .spans
            .iter()
            .map(|&(s, k, e)| (&t[s..k], &t[k..e]))
            .collect();
        // Stable: equal keys keep their order, so the last one is the last written.
        kv.sort_by(|a, b| a.0.cmp(b.0));
        let mut out: Vec<(&str, &str)> = Vec::with_capacity(kv.len());
        for (k, v) in kv {
            match out.last_mut() {
                Some(last) if last.0 == k => last.1 = v,
                _ => out.push((k, v)),
            }
        }
        out
    }

    fn into_map(self) -> BTreeMap<String, String> {
        self.sorted()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn into_packed(self) -> PackedFlat {
        PackedFlat::from_sorted(self.sorted())
    }
}

fn flatten_into(f: &Facts, out: &mut FlatBuilder) {
    let mut put = |k: &str, v: &str| out.put(k, v);
    let list = |v: &[String]| v.join(" ");

    // node, os
    let n = &f.node;
    for (k, v) in [
        ("node.hostname", &n.hostname),
        ("node.boot_id", &n.boot_id),
        ("node.cmdline", &n.kernel_cmdline),
        ("kernel.running", &n.running_kernel),
        ("packages.pve-manager", &n.pve_manager_version),
        ("packages.proxmox-ve", &n.proxmox_ve_version),
        ("kernel.next", &f.boot.next_kernel),
        ("boot.root_fs", &f.boot.root_fs),
        ("boot.kernel_pin", &f.boot.kernel_pin),
        ("boot.next_boot_pin", &f.boot.next_boot_pin),
        ("cluster.name", &f.cluster.name),
    ] {
        if let Some(v) = v {
            put(k, v);
        }
    }
    let os: Vec<&str> = [&n.os.id, &n.os.version_id, &n.os.codename]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect();
    if !os.is_empty() {
        put("os.release", &os.join(" "));
    }

    // apt
    let apt = &f.apt;
    for file in &apt.files {
        let format = match file.format {
            AptFileFormat::OneLine => "one-line",
            AptFileFormat::Deb822 => "deb822",
            AptFileFormat::Ignored => "ignored",
        };
        put(&format!("apt.file[{}]", file.path), format);
    }
    for e in apt.entries.iter().chain(&apt.ignored_entries) {
        let (area, value) = if e.enabled {
            ("apt.repo", "enabled")
        } else {
            ("apt.disabled", "disabled")
        };
        for r in entry_repos(e) {
            put(&format!("{area}[{r}]"), value);
        }
    }
    if !apt.errors.is_empty() {
        put("apt.errors", &apt.errors.len().to_string());
    }

    // dns
    let dns = &f.dns;
    let rc = &dns.resolv_conf;
    for (k, v) in [
        ("dns.nameservers", &rc.nameservers),
        ("dns.search", &rc.search),
        ("dns.interfaces.nameservers", &dns.interfaces.nameservers),
        ("dns.interfaces.search", &dns.interfaces.search),
        ("dns.hosts", &dns.hosts.addresses),
        ("kernel.installed", &f.boot.installed_kernels),
    ] {
        if !v.is_empty() {
            put(k, &list(v));
        }
    }
    let resolv = match (&rc.symlink_target, rc.systemd_resolved_stub, rc.exists) {
        (_, true, _) => "systemd-resolved stub".to_string(),
        (Some(t), _, _) => format!("symlink to {t}"),
        (None, _, true) => "file".to_string(),
        (None, _, false) => "missing".to_string(),
    };
    put("dns.resolv_conf", &resolv);

    // boot
    let b = &f.boot;
    let firmware = match b.firmware {
        Firmware::Uefi => "uefi",
        Firmware::Bios => "bios",
    };
    put("boot.firmware", firmware);
    if let Some(state) = secure_boot_state(f) {
        put("boot.secure_boot", state);
    }
    if let Some(sb) = &b.secure_boot {
        if let Some(setup) = sb.setup_mode {
            put("boot.setup_mode", &yes_no(setup));
        }
        if sb.shim_validation_disabled {
            put("boot.shim_validation", "disabled");
        }
    }
    for p in &b.packages {
        put(&format!("boot.package[{}]", p.name), &p.version);
    }
    let hook = match (b.kernel_hook.exists, &b.kernel_hook.owner) {
        (true, Some(owner)) => format!("owned by {owner}"),
        (true, None) => "exists, no owner".into(),
        (false, _) => "missing".into(),
    };
    put("boot.kernel_hook", &hook);
    let sync = if b.esp_list_exists {
        "configured"
    } else {
        "not configured"
    };
    put("boot.esp_sync", sync);
    let ids: Vec<&str> = b
        .esp_list
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect();
    if !ids.is_empty() {
        put("boot.esp_list", &ids.join(" "));
    }
    let efi = match (b.boot_efi_in_fstab, b.boot_efi_mounted) {
        (true, true) => Some("mounted"),
        (true, false) => Some("in fstab, not mounted"),
        (false, true) => Some("mounted, not in fstab"),
        (false, false) => None,
    };
    if let Some(efi) = efi {
        put("boot.boot_efi", efi);
    }
    if let Some(r) = b.force_efi_extra_removable {
        put("boot.force_efi_extra_removable", &yes_no(r));
    }
    put("boot.reboot_required", &yes_no(b.reboot_required));
    for e in &f.esps {
        let id = e.uuid.as_deref().or(e.device.as_deref()).unwrap_or("?");
        let source = match e.source {
            EspSource::EspList => "esp-list",
            EspSource::BootEfi => "boot-efi",
        };
        let loader = match e.loader {
            Some(Loader::Grub) => "grub",
            Some(Loader::SystemdBoot) => "systemd-boot",
            Some(Loader::Both) => "grub+systemd-boot",
            Some(Loader::Unknown) | None => "unknown loader",
        };
        let mut v = format!("{source} {loader}");
        if !e.present {
            v.push_str(", device missing");
        }
        if !e.kernels.is_empty() {
            v.push_str(", kernels ");
            v.push_str(&list(&e.kernels));
        }
        put(&format!("esp[{id}]"), &v);
    }

    // cluster
    let c = &f.cluster;
    if let Some(q) = c.quorate {
        put("cluster.quorate", &yes_no(q));
    }
    if !c.members.is_empty() {
        let names: Vec<&str> = c.members.iter().map(|m| m.name.as_str()).collect();
        put("cluster.members", &names.join(" "));
        let offline: Vec<&str> = c
            .members
            .iter()
            .filter(|m| !m.online)
            .map(|m| m.name.as_str())
            .collect();
        if !offline.is_empty() {
            put("cluster.offline", &offline.join(" "));
        }
    }
    if let Some(v) = c.expected_votes {
        put("cluster.expected_votes", &v.to_string());
    }
    if c.members_file {
        put("cluster.qdevice", &yes_no(c.qdevice));
    }

    // guests, ceph, ha: per node (no drift rule)
    for g in &f.guests {
        put(&format!("guest[{}]", g.vmid), &guest_value(g));
    }
    if let Some(ceph) = &f.ceph {
        put("ceph.monitor", &yes_no(ceph.monitor_here));
        if !ceph.osds_here.is_empty() {
            let ids: Vec<String> = ceph.osds_here.iter().map(u32::to_string).collect();
            put("ceph.osds", &ids.join(" "));
        }
        if let Some(b) = ceph.noout {
            put("ceph.noout", &yes_no(b));
        }
        if let Some(b) = ceph.healthy {
            put("ceph.healthy", &yes_no(b));
        }
    }
    let ha = &f.ha;
    if let Some(b) = ha.maintenance {
        put("ha.maintenance", &yes_no(b));
    }
    if let Some(b) = ha.disarmed {
        put("ha.disarmed", &yes_no(b));
    }
    if ha.resources > 0 {
        put("ha.resources", &ha.resources.to_string());
    }
    if let Some(p) = &ha.shutdown_policy {
        put("ha.shutdown_policy", p);
    }

    for u in &f.unreadable {
        let key = match u.line {
            Some(line) => format!("unreadable[{}:{line}]", u.path),
            None => format!("unreadable[{}]", u.path),
        };
        put(&key, &u.reason);
    }
}

/// `guest[<vmid>]`'s value: `qemu running, name web-01, onboot, order 2, up 30, ha`.
fn guest_value(g: &fleetward_proto::GuestFacts) -> String {
    let kind = match g.kind {
        GuestKind::Qemu => "qemu",
        GuestKind::Lxc => "lxc",
    };
    let state = match g.state {
        GuestState::Running => "running",
        GuestState::Stopped => "stopped",
        GuestState::Migrated => "migrated",
        GuestState::Unknown => "state unknown",
    };
    let mut parts = vec![format!("{kind} {state}")];
    if let Some(n) = &g.name {
        parts.push(format!("name {n}"));
    }
    if g.onboot {
        parts.push("onboot".into());
    }
    for (k, v) in [("order", g.order), ("up", g.up), ("down", g.down)] {
        if let Some(v) = v {
            parts.push(format!("{k} {v}"));
        }
    }
    if g.ha {
        parts.push("ha".into());
    }
    if let Some(at) = &g.location {
        parts.push(format!("at {at}"));
    }
    parts.join(", ")
}

/// One row of `fleetward node diff A B`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffRow {
    pub key: String,
    pub a: Option<String>,
    pub b: Option<String>,
}

impl DiffRow {
    pub fn differs(&self) -> bool {
        self.a != self.b
    }
}

/// Key-by-key comparison of two nodes: the differing rows first, then the equal ones, each
/// part sorted by key.
pub fn diff(a: &Facts, b: &Facts) -> Vec<DiffRow> {
    let (fa, fb) = (flatten(a), flatten(b));
    let mut rows: Vec<DiffRow> = merge_sorted(pairs(&fa), pairs(&fb))
        .map(|(key, a, b)| DiffRow {
            key: key.to_string(),
            a: a.map(str::to_string),
            b: b.map(str::to_string),
        })
        .collect();
    // Stable sort keeps the key order inside each part.
    rows.sort_by_key(|r| !r.differs());
    rows
}

/// A fact that changed between two snapshots of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

/// What changed between two flattened snapshots of one node, sorted by key.
pub fn changes(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) -> Vec<Change> {
    changes_of(pairs(old), pairs(new))
}

/// Flattened facts packed into one string, for keeping each node's latest flat in memory:
/// a `BTreeMap<String, String>` of ~64 entries costs two allocations per entry plus the
/// tree's nodes (~11 KB per node measured); this costs one string of the keys and values
/// and one offset table. Entries keep the map's (key) order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackedFlat {
    text: Box<str>,
    /// Per entry: where its key ends and where its value ends in `text`.
    ends: Box<[(usize, usize)]>,
}

impl PackedFlat {
    pub fn pack(flat: &BTreeMap<String, String>) -> Self {
        Self::from_sorted(pairs(flat).collect())
    }

    /// From `(key, value)` pairs in key order, each key once.
    fn from_sorted(kv: Vec<(&str, &str)>) -> Self {
        let len = kv.iter().map(|(k, v)| k.len() + v.len()).sum();
        let mut text = String::with_capacity(len);
        let mut ends = Vec::with_capacity(kv.len());
        for (k, v) in kv {
            text.push_str(k);
            let key_end = text.len();
            text.push_str(v);
            ends.push((key_end, text.len()));
        }
        PackedFlat {
            text: text.into_boxed_str(),
            ends: ends.into_boxed_slice(),
        }
    }

    /// `(key, value)` in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&(key_end, end)| {
            let kv = (&self.text[start..key_end], &self.text[key_end..end]);
            start = end;
            kv
        })
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

/// [`changes`] from a packed previous snapshot: the same changes in the same order.
pub fn changes_since(old: &PackedFlat, new: &BTreeMap<String, String>) -> Vec<Change> {
    changes_of(old.iter(), pairs(new))
}

/// [`changes_since`] between two packed flats.
pub fn changes_between(old: &PackedFlat, new: &PackedFlat) -> Vec<Change> {
    changes_of(old.iter(), new.iter())
}

/// A map's entries as string slices, in key order.
fn pairs(m: &BTreeMap<String, String>) -> impl Iterator<Item = (&str, &str)> {
    m.iter().map(|(k, v)| (k.as_str(), v.as_str()))
}

fn changes_of<'a>(
    old: impl Iterator<Item = (&'a str, &'a str)>,
    new: impl Iterator<Item = (&'a str, &'a str)>,
) -> Vec<Change> {
    merge_sorted(old, new)
        .filter(|(_, o, n)| o != n)
        .map(|(key, o, n)| Change {
            key: key.to_string(),
            old: o.map(str::to_string),
            new: n.map(str::to_string),
        })
        .collect()
}

/// Two key-sorted sequences of `(key, value)` merged in one pass: every key once, in
/// order, with each side's value.
fn merge_sorted<'a>(
    a: impl Iterator<Item = (&'a str, &'a str)>,
    b: impl Iterator<Item = (&'a str, &'a str)>,
) -> impl Iterator<Item = (&'a str, Option<&'a str>, Option<&'a str>)> {
    use std::cmp::Ordering;
    let (mut a, mut b) = (a.peekable(), b.peekable());
    std::iter::from_fn(move || {
        let order = match (a.peek(), b.peek()) {
            (None, None) => return None,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((ka, _)), Some((kb, _))) => ka.cmp(kb),
        };
        Some(match order {
            Ordering::Less => a.next().map(|(k, v)| (k, Some(v), None))?,
            Ordering::Greater => b.next().map(|(k, v)| (k, None, Some(v)))?,
            Ordering::Equal => {
                let (k, va) = a.next()?;
                let (_, vb) = b.next()?;
                (k, Some(va), Some(vb))
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_changes_match_map_changes() {
        let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let cases = [
            (map(&[]), map(&[])),
            (map(&[]), map(&[("a", "1")])),
            (map(&[("a", "1")]), map(&[])),
            (
                map(&[("a", "1"), ("b", "2"), ("d", ""), ("e", "5")]),
                map(&[("b", "3"), ("c", "x"), ("d", ""), ("e", "5"), ("f", "")]),
            ),
            (map(&[("k", "")]), map(&[("k", "v")])),
        ];
        for (old, new) in &cases {
            let packed = PackedFlat::pack(old);
            assert_eq!(packed.len(), old.len());
            let pairs: Vec<(&str, &str)> = packed.iter().collect();
            let expect: Vec<(&str, &str)> =
                old.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            assert_eq!(pairs, expect);
            assert_eq!(changes_since(&packed, new), changes(old, new));
        }
    }

    #[test]
    fn uris_are_normalised() {
        assert_eq!(
            normalize_uri("HTTP://Deb.Debian.ORG/debian/"),
            "http://deb.debian.org/debian"
        );
        assert_eq!(
            normalize_uri("https://User:PW@Host.example/Path//"),
            "https://User:PW@host.example/Path"
        );
        assert_eq!(normalize_uri("file:/srv/repo/"), "file:/srv/repo");
        assert_eq!(
            parse_repo(" deb  http://Deb.debian.org/debian/ trixie main "),
            Some("deb http://deb.debian.org/debian trixie main".into())
        );
        assert_eq!(
            parse_repo("deb file:/srv/repo ./"),
            Some("deb file:/srv/repo ./".into())
        );
        assert_eq!(parse_repo("deb http://x"), None);
        assert_eq!(parse_repo("deb http://x trixie main contrib"), None);
    }

    #[test]
    fn entries_expand_per_component() {
        let e = AptEntry {
            types: vec!["deb".into(), "deb-src".into()],
            uris: vec!["http://deb.debian.org/debian/".into()],
            suites: vec!["trixie".into()],
            components: vec!["main".into(), "contrib".into()],
            enabled: true,
            ..AptEntry::default()
        };
        assert_eq!(
            entry_repos(&e),
            [
                "deb http://deb.debian.org/debian trixie main",
                "deb http://deb.debian.org/debian trixie contrib",
                "deb-src http://deb.debian.org/debian trixie main",
                "deb-src http://deb.debian.org/debian trixie contrib",
            ]
        );
    }

    #[test]
    fn changes_and_diff_order() {
        let old: BTreeMap<String, String> = [("a", "1"), ("b", "2"), ("c", "3")]
            .map(|(k, v)| (k.into(), v.into()))
            .into();
        let new: BTreeMap<String, String> = [("a", "1"), ("b", "9"), ("d", "4")]
            .map(|(k, v)| (k.into(), v.into()))
            .into();
        let ch = changes(&old, &new);
        let keys: Vec<&str> = ch.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["b", "c", "d"]);
        assert_eq!(ch[1].new, None);
        assert_eq!(ch[2].old, None);

        let mut a = Facts::default();
        a.node.hostname = Some("a".into());
        a.node.running_kernel = Some("6.14".into());
        let mut b = a.clone();
        b.node.hostname = Some("b".into());
        let rows = diff(&a, &b);
        assert_eq!(rows[0].key, "node.hostname");
        assert!(rows[0].differs());
        assert!(rows[1..].iter().all(|r| !r.differs()));
        assert!(rows.iter().any(|r| r.key == "kernel.running"));
    }
}
