//! Proxmox VE cluster files: guest configurations (`qemu-server/<vmid>.conf`,
//! `lxc/<vmid>.conf`), HA resources (`ha/resources.cfg`), `datacenter.cfg`, the HA manager's
//! `manager_status`, and `ceph.conf`. Pure: text in, data and located errors out.

use crate::simformat::SimGuest;
use fleetward_proto::action::GuestKind;

/// A line that could not be parsed: 1-based line number and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub line: u32,
    pub message: String,
}

fn err(line: usize, message: impl Into<String>) -> LineError {
    LineError {
        line: u32::try_from(line + 1).unwrap_or(u32::MAX),
        message: message.into(),
    }
}

/// `startup: [order=]N[,up=S][,down=S]` (pve's `pve-startup-order` format).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Startup {
    pub order: Option<u32>,
    pub up: Option<u32>,
    pub down: Option<u32>,
}

/// What the agent needs from a guest configuration's current section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestConf {
    pub onboot: bool,
    pub startup: Startup,
    /// `name:` (QEMU) or `hostname:` (LXC).
    pub name: Option<String>,
    pub errors: Vec<LineError>,
}

/// Proxmox's boolean spellings (`1|on|yes|true`, `0|off|no|false`).
fn boolean(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "on" | "yes" | "true" => Some(true),
        "0" | "off" | "no" | "false" => Some(false),
        _ => None,
    }
}

/// Parse `startup:`'s value.
pub fn startup(value: &str) -> Result<Startup, String> {
    let mut s = Startup::default();
    for (i, part) in value.split(',').map(str::trim).enumerate() {
        if part.is_empty() {
            continue;
        }
        let (key, v) = match part.split_once('=') {
            Some((k, v)) => (k.trim(), v.trim()),
            // A bare number first is the order.
            None if i == 0 => ("order", part),
            None => return Err(format!("`{part}` is not key=value")),
        };
        let n: u32 = v
            .parse()
            .map_err(|_| format!("`{key}={v}`: not a non-negative number"))?;
        match key {
            "order" => s.order = Some(n),
            "up" => s.up = Some(n),
            "down" => s.down = Some(n),
            other => return Err(format!("unknown startup key `{other}`")),
        }
    }
    Ok(s)
}

/// A guest configuration (`qm.conf(5)`/`pct.conf(5)`): the current section only, i.e. the
/// lines before the first `[snapshot]` (or `[pending]`) section. Lines are `key: value`;
/// `#` lines are the description. Keys the agent does not need are skipped unread.
pub fn guest_conf(text: &str) -> GuestConf {
    let mut c = GuestConf::default();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('[') {
            break;
        }
        let Some((key, value)) = line.split_once(':') else {
            c.errors
                .push(err(i, format!("`{line}` is not `key: value`")));
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        let key_ok = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !key_ok {
            c.errors
                .push(err(i, format!("`{key}` is not a configuration key")));
            continue;
        }
        match key {
            "onboot" => match boolean(value) {
                Some(b) => c.onboot = b,
                None => c
                    .errors
                    .push(err(i, format!("onboot: `{value}` is not a boolean"))),
            },
            "startup" => match startup(value) {
                Ok(s) => c.startup = s,
                Err(e) => c.errors.push(err(i, format!("startup: {e}"))),
            },
            "name" | "hostname" if !value.is_empty() => c.name = Some(value.to_string()),
            _ => {}
        }
    }
    c
}

/// `/etc/pve/ha/resources.cfg`: section headers `vm: VMID` / `ct: VMID` at the start of a
/// line, their properties indented below.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HaResources {
    /// Every resource id (`vm:100`, `ct:201`), in file order.
    pub sids: Vec<String>,
    /// The guests among them.
    pub guests: Vec<(GuestKind, u32)>,
    pub errors: Vec<LineError>,
    /// Guests whose requested state is `ignored` (`state ignored` below the section): HA
    /// treats them as unmanaged (pve-ha-manager `src/PVE/HA/Config.pm`,
    /// `service_check_ha_state`: "ignored service behave as if they were not managed by
    /// HA"), and its manager drops them from its service status (`src/PVE/HA/Manager.pm`,
    /// `manage`).
    pub ignored: Vec<u32>,
}

impl HaResources {
    /// Whether a guest is an HA resource. HA ids are per VMID (`vm:` and `ct:` share the
    /// VMID space), so the kind written is not compared.
    pub fn contains(&self, vmid: u32) -> bool {
        self.guests.iter().any(|(_, v)| *v == vmid)
    }

    /// Whether a guest is an HA resource with requested state `ignored`.
    pub fn is_ignored(&self, vmid: u32) -> bool {
        self.ignored.contains(&vmid)
    }

    /// Whether HA manages a guest: listed and not `ignored`.
    pub fn manages(&self, vmid: u32) -> bool {
        self.contains(vmid) && !self.is_ignored(vmid)
    }
}

pub fn ha_resources(text: &str) -> HaResources {
    let mut r = HaResources::default();
    // The guest whose section the property lines below belong to.
    let mut current: Option<u32> = None;
    for (i, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() || raw.trim_start().starts_with('#') {
            continue;
        }
        if raw.starts_with([' ', '\t']) {
            // A property of the current section: `state ignored` is the one read.
            let mut kv = raw.split_whitespace();
            if let (Some(vmid), Some("state"), Some("ignored")) = (current, kv.next(), kv.next()) {
                if !r.ignored.contains(&vmid) {
                    r.ignored.push(vmid);
                }
            }
            continue;
        }
        current = None;
        let Some((kind, id)) = raw.split_once(':') else {
            r.errors
                .push(err(i, format!("`{}` is not `type: id`", raw.trim())));
            continue;
        };
        let (kind, id) = (kind.trim(), id.trim());
        let guest = match kind {
            "vm" => Some(GuestKind::Qemu),
            "ct" => Some(GuestKind::Lxc),
            _ => None,
        };
        match (guest, id.parse::<u32>()) {
            (Some(g), Ok(vmid)) => {
                r.guests.push((g, vmid));
                current = Some(vmid);
            }
            (Some(_), Err(_)) => {
                r.errors.push(err(i, format!("`{kind}: {id}`: not a VMID")));
                continue;
            }
            (None, _) if id.is_empty() => {
                r.errors.push(err(i, format!("`{kind}:` has no id")));
                continue;
            }
            (None, _) => {}
        }
        r.sids.push(format!("{kind}:{id}"));
    }
    r
}

/// `ha: shutdown_policy=<policy>` in `/etc/pve/datacenter.cfg` (the last `ha:` line wins).
pub fn shutdown_policy(datacenter_cfg: &str) -> Option<String> {
    let mut policy = None;
    for line in datacenter_cfg.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        if key.trim() != "ha" {
            continue;
        }
        policy = value.split(',').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k.trim() == "shutdown_policy").then(|| v.trim().to_string())
        });
    }
    policy
}

/// Whether `node` is in maintenance according to the HA manager's `manager_status` (JSON
/// written by the CRM master; `node_status` maps a node to `online`, `maintenance`,
/// `unknown`, `fence`, `gone`). `Err` when the file is not that JSON; `Ok(None)` when the
/// node is not listed.
pub fn manager_status_maintenance(text: &str, node: &str) -> Result<Option<bool>, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let Some(status) = v.get("node_status") else {
        return Ok(None);
    };
    if !status.is_object() {
        return Err("node_status is not an object".into());
    }
    Ok(status
        .get(node)
        .and_then(|s| s.as_str())
        .map(|s| s == "maintenance"))
}

/// `ceph.conf`: INI sections; keys with spaces, dashes and underscores are the same key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CephConf {
    /// Names of `[mon.<name>]` sections.
    pub mon_sections: Vec<String>,
    /// Addresses in `[global] mon_host` (ports, `v1:`/`v2:` prefixes and nonces removed).
    pub mon_host: Vec<String>,
    pub errors: Vec<LineError>,
}

pub fn ceph_conf(text: &str) -> CephConf {
    let mut c = CephConf::default();
    let mut section = String::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let Some(name) = rest.strip_suffix(']') else {
                c.errors.push(err(i, format!("`{line}`: unclosed section")));
                continue;
            };
            section = name.trim().to_string();
            if let Some(mon) = section.strip_prefix("mon.") {
                c.mon_sections.push(mon.to_string());
            }
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            c.errors
                .push(err(i, format!("`{line}` is not `key = value`")));
            continue;
        };
        let key = key.trim().to_ascii_lowercase().replace([' ', '-'], "_");
        if key == "mon_host" && section == "global" {
            c.mon_host = mon_addresses(value);
        }
    }
    c
}

/// The host addresses of a `mon_host` value: `192.168.1.26 192.168.1.25`,
/// `[v2:192.168.1.26:3300/0,v1:192.168.1.26:6789/0]`, `[fd00::1]:6789`, host names.
pub fn mon_addresses(value: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for token in value.split([' ', '\t', ',', ';']).filter(|t| !t.is_empty()) {
        // `[v2:...,v1:...]` lists: the list's brackets, the protocol and the nonce go.
        let mut t = token;
        if t.starts_with("[v1:") || t.starts_with("[v2:") {
            t = &t[1..];
        }
        for p in ["v1:", "v2:"] {
            t = t.strip_prefix(p).unwrap_or(t);
        }
        let t = t.split('/').next().unwrap_or(t);
        let t = if t.starts_with('[') {
            t
        } else {
            t.trim_end_matches(']')
        };
        let addr = if let Some(v6) = t.strip_prefix('[') {
            v6.split(']').next().unwrap_or(v6)
        } else if t.matches(':').count() == 1 {
            t.split(':').next().unwrap_or(t)
        } else {
            t
        };
        if !addr.is_empty() && !out.iter().any(|a| a == addr) {
            out.push(addr.to_string());
        }
    }
    out
}

/// The simulation's `guests.json` (format: [`SimGuest`]).
pub fn sim_guests(text: &str) -> Result<Vec<SimGuest>, String> {
    serde_json::from_str(text).map_err(|e| e.to_string())
}

/// A guest configuration file name: `<vmid>.conf`.
pub fn conf_vmid(file_name: &str) -> Option<u32> {
    let id = file_name.strip_suffix(".conf")?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    id.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_conf_current_section_only() {
        let c = guest_conf(
            "#web server\nboot: order=scsi0\nname: web\nonboot: 1\nstartup: order=2,up=30,down=120\n\
             scsi0: local-lvm:vm-100-disk-0,size=32G\n\n[before-upgrade]\nonboot: 0\nname: old\n",
        );
        assert_eq!(c.name.as_deref(), Some("web"));
        assert!(c.onboot);
        assert_eq!(
            c.startup,
            Startup {
                order: Some(2),
                up: Some(30),
                down: Some(120)
            }
        );
        assert!(c.errors.is_empty());
    }

    #[test]
    fn guest_conf_errors_are_located() {
        let c = guest_conf("hostname: ct1\nthis is garbage\nonboot: maybe\nstartup: order=x\n");
        assert_eq!(c.name.as_deref(), Some("ct1"));
        let lines: Vec<u32> = c.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [2, 3, 4]);
        assert!(!c.onboot);
        assert_eq!(c.startup, Startup::default());
    }

    #[test]
    fn startup_forms() {
        assert_eq!(startup("3").unwrap().order, Some(3));
        assert_eq!(startup("up=5").unwrap().up, Some(5));
        assert!(startup("order=1,sideways=2").is_err());
        assert!(startup("order=-1").is_err());
    }

    #[test]
    fn ha_resources_sections() {
        let r = ha_resources(
            "vm: 100\n\tstate started\n\tmax_restart 1\n\nct: 201\n\tstate started\n\nvm: abc\n",
        );
        assert_eq!(r.sids, ["vm:100", "ct:201"]);
        assert!(r.contains(100) && r.contains(201) && !r.contains(101));
        assert_eq!(r.errors.len(), 1);
        assert_eq!(r.errors[0].line, 8);
        assert!(r.ignored.is_empty() && r.manages(100));
    }

    #[test]
    fn ha_resources_ignored() {
        let r = ha_resources("vm: 100\n\tstate ignored\nct: 201\n\tstate started\nvm: 102\n");
        assert_eq!(r.ignored, [100]);
        assert!(r.contains(100) && r.is_ignored(100) && !r.manages(100));
        assert!(r.manages(201) && r.manages(102));
    }

    #[test]
    fn datacenter_policy() {
        assert_eq!(
            shutdown_policy("keyboard: de\nha: shutdown_policy=migrate\n").as_deref(),
            Some("migrate")
        );
        assert_eq!(shutdown_policy("keyboard: de\n"), None);
    }

    #[test]
    fn manager_status() {
        let s =
            r#"{"master_node":"pve-01","node_status":{"pve-01":"online","pve-02":"maintenance"}}"#;
        assert_eq!(manager_status_maintenance(s, "pve-02"), Ok(Some(true)));
        assert_eq!(manager_status_maintenance(s, "pve-01"), Ok(Some(false)));
        assert_eq!(manager_status_maintenance(s, "pve-09"), Ok(None));
        assert!(manager_status_maintenance("{", "pve-01").is_err());
    }

    #[test]
    fn ceph_conf_monitors() {
        let c = ceph_conf(
            "[global]\n\tfsid = x\n\tmon host = [v2:192.168.1.26:3300/0,v1:192.168.1.26:6789/0] 192.168.1.25:6789, 192.168.1.24\n\n[mon.pve-01]\n\tpublic_addr = 192.168.1.26\n",
        );
        assert_eq!(c.mon_sections, ["pve-01"]);
        assert_eq!(c.mon_host, ["192.168.1.26", "192.168.1.25", "192.168.1.24"]);
        assert!(c.errors.is_empty());
        assert_eq!(
            mon_addresses("[fd00::1]:6789 fd00::2"),
            ["fd00::1", "fd00::2"]
        );
        let bad = ceph_conf("[global\nnonsense\n");
        assert_eq!(bad.errors.len(), 2);
    }

    #[test]
    fn conf_names() {
        assert_eq!(conf_vmid("100.conf"), Some(100));
        assert_eq!(conf_vmid("100.conf.tmp"), None);
        assert_eq!(conf_vmid(".conf"), None);
        assert_eq!(conf_vmid("99999999999.conf"), None);
    }

    proptest::proptest! {
        #[test]
        fn no_input_panics(s in "\\PC*") {
            let _ = guest_conf(&s);
            let _ = ha_resources(&s);
            let _ = shutdown_policy(&s);
            let _ = manager_status_maintenance(&s, "pve-01");
            let _ = ceph_conf(&s);
            let _ = sim_guests(&s);
            let _ = conf_vmid(&s);
        }
    }
}
