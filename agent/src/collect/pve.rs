//! Proxmox VE's own view of the node: its guests, Ceph and HA.
//!
//! Sources (all under the root):
//! - Guests: this node's configurations in `/etc/pve/nodes/<hostname>/qemu-server/<vmid>.conf`
//!   and `.../lxc/<vmid>.conf` (current section only), HA membership from
//!   `/etc/pve/ha/resources.cfg`.
//! - Whether a guest runs, on a real node, as Proxmox VE decides it (no process is started;
//!   `parse::running` names the upstream functions):
//!   - QEMU: `/run/qemu-server/<vmid>.pid` (Debian's `/var/run` is a link to `/run`) names a
//!     pid whose `/proc/<pid>/cmdline` is a QEMU binary started with that pid file, and
//!     whose `/proc/<pid>/stat` is not a zombie. A reused pid reads as stopped.
//!   - LXC: the container's abstract command socket `@/var/lib/lxc/<vmid>/command` is
//!     listed in `/proc/net/unix`. Cgroup directories are not read: stale ones are often
//!     left behind after a stop.
//!   - `unknown` when the root has no live `/proc` (no `/proc/1`, or for containers no
//!     `/proc/net/unix`), as in a fixture tree.
//! - A simulated node (`/var/lib/fleetward-sim/` exists; see `simformat`): its
//!   `guests.json` lists the node's guests; a guest `migrated` there (with its `location`)
//!   has left the node. Whether the others run is read from the runtime files the
//!   simulated executor keeps (`/proc/net/unix`, QEMU pid files and processes, stale LXC
//!   cgroups included) exactly as on a real node; only a simulated root without a live
//!   `/proc` (a fixture the executor has not touched) takes the state from `guests.json`.
//!   Guests listed there without a configuration file are reported from `guests.json`
//!   alone. Marker files give Ceph's
//!   `noout` (`ceph-noout`) and health (`ceph-unhealthy`), the node's OSDs up/in
//!   (`osds-down`: down until the time it holds), HA maintenance (`maintenance`) and
//!   disarm (`ha-disarmed`); on a real node these stay unknown unless a file says so.
//! - Ceph: `/etc/pve/ceph.conf` (`[mon.<hostname>]`, `mon_host`), OSD directories
//!   `/var/lib/ceph/osd/ceph-<id>` (only their existence is read).
//! - HA: `/etc/pve/ha/resources.cfg` (`state ignored` resources count as not HA-managed),
//!   `/etc/pve/datacenter.cfg` (`ha: shutdown_policy=`), `/etc/pve/ha/manager_status`
//!   (`node_status.<node> == "maintenance"`, `disarm.state == "disarmed"`, services in
//!   state `error` on this node), `/etc/pve/nodes/<node>/lrm_status` (whether this node's
//!   LRM holds its watchdog; `parse::ha` names the upstream functions). On a simulated
//!   node the marker `lrm-watchdog` (`active`/`released`) gives the LRM's watchdog when it
//!   exists.
//!
//! A line that cannot be parsed is an unreadable fact with its file and line; the rest of
//! the file still counts.

use super::{Input, Reader};
use crate::parse::{ha, pve, running};
use crate::simformat::{
    osds_down, sim_path, GuestState as SimState, CEPH_NOOUT, CEPH_UNHEALTHY, GUESTS, HA_DISARMED,
    LRM_WATCHDOG, MAINTENANCE, OSDS_DOWN, SIM_DIR,
};
use fleetward_proto::action::GuestKind;
use fleetward_proto::{
    CephFacts, ClusterFacts, DnsFacts, GuestFacts, GuestState, HaFacts, NodeFacts, OsdCounts,
};
use std::collections::{BTreeMap, BTreeSet};

const RESOURCES: &str = "/etc/pve/ha/resources.cfg";
const DATACENTER: &str = "/etc/pve/datacenter.cfg";
const MANAGER_STATUS: &str = "/etc/pve/ha/manager_status";
const CEPH_CONF: &str = "/etc/pve/ceph.conf";
const OSD_DIR: &str = "/var/lib/ceph/osd";
const PROC_NET_UNIX: &str = "/proc/net/unix";

/// Guests, Ceph and HA facts of the node under the reader's root.
pub(super) fn pve(
    r: &mut Reader,
    node: &NodeFacts,
    dns: &DnsFacts,
    cluster: &ClusterFacts,
) -> (Vec<GuestFacts>, Option<CephFacts>, HaFacts) {
    let host = node
        .hostname
        .as_deref()
        .map(|h| h.split('.').next().unwrap_or(h).to_string())
        .filter(|h| !h.is_empty());
    let sim = r.root.is_dir(SIM_DIR);
    let resources = match r.text(RESOURCES) {
        Some(text) => {
            let res = pve::ha_resources(&text);
            for e in &res.errors {
                r.unreadable_line(RESOURCES, e.line, &e.message);
            }
            res
        }
        None => pve::HaResources::default(),
    };
    let guests = guests(r, host.as_deref(), sim, &resources);
    let mut addresses: Vec<&str> = dns.hosts.addresses.iter().map(String::as_str).collect();
    if let Some(h) = &host {
        addresses.extend(
            cluster
                .members
                .iter()
                .filter(|m| &m.name == h)
                .filter_map(|m| m.ip.as_deref()),
        );
    }
    let ceph = ceph(r, host.as_deref(), &addresses, sim);
    let ha = ha(r, host.as_deref(), sim, &resources);
    (guests, ceph, ha)
}

/// The wall clock in Unix ms (only the simulation's `osds-down` time is compared with it).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn marker(r: &Reader, name: &str) -> bool {
    r.root.exists(&sim_path(name))
}

fn guests(
    r: &mut Reader,
    host: Option<&str>,
    sim: bool,
    resources: &pve::HaResources,
) -> Vec<GuestFacts> {
    let mut out: BTreeMap<u32, GuestFacts> = BTreeMap::new();
    let mut lxc_active = None;
    if let Some(host) = host {
        for (kind, sub) in [(GuestKind::Qemu, "qemu-server"), (GuestKind::Lxc, "lxc")] {
            let dir = format!("/etc/pve/nodes/{host}/{sub}");
            for name in r.root.list_dir(&dir) {
                let Some(vmid) = pve::conf_vmid(&name) else {
                    continue;
                };
                let path = format!("{dir}/{name}");
                if out.contains_key(&vmid) || r.root.is_dir(&path) {
                    continue;
                }
                let Some(text) = r.text(&path) else { continue };
                let conf = pve::guest_conf(&text);
                for e in &conf.errors {
                    r.unreadable_line(&path, e.line, &e.message);
                }
                let state = runtime_state(r, kind, vmid, &mut lxc_active);
                out.insert(
                    vmid,
                    GuestFacts {
                        vmid,
                        kind,
                        name: conf.name,
                        onboot: conf.onboot,
                        order: conf.startup.order,
                        up: conf.startup.up,
                        down: conf.startup.down,
                        ha: resources.manages(vmid),
                        state,
                        location: None,
                        config: Some(path),
                        ha_ignored: resources.is_ignored(vmid),
                    },
                );
            }
        }
    }
    if sim {
        simulated_guests(r, resources, &mut out, &mut lxc_active);
    }
    out.into_values().collect()
}

/// The simulation's `guests.json` is the simulated node's runtime.
fn simulated_guests(
    r: &mut Reader,
    resources: &pve::HaResources,
    out: &mut BTreeMap<u32, GuestFacts>,
    lxc_active: &mut Option<Option<BTreeSet<u32>>>,
) {
    let live = r.root.is_dir("/proc/1");
    let path = sim_path(GUESTS);
    let Some(text) = r.text(&path) else { return };
    let sim = match pve::sim_guests(&text) {
        Ok(g) => g,
        Err(e) => {
            r.unreadable(&path, e);
            return;
        }
    };
    for g in sim {
        let state = match g.state {
            SimState::Migrated => GuestState::Migrated,
            _ if live => match out.get(&g.vmid) {
                Some(f) if f.kind == g.kind => f.state,
                _ => runtime_state(r, g.kind, g.vmid, lxc_active),
            },
            SimState::Running => GuestState::Running,
            SimState::Stopped => GuestState::Stopped,
        };
        let facts = out.entry(g.vmid).or_insert_with(|| GuestFacts {
            vmid: g.vmid,
            kind: g.kind,
            name: None,
            onboot: g.onboot,
            order: g.order,
            up: None,
            down: None,
            ha: (g.ha || resources.contains(g.vmid)) && !resources.is_ignored(g.vmid),
            state,
            location: None,
            config: None,
            ha_ignored: resources.is_ignored(g.vmid),
        });
        facts.state = state;
        facts.location = g.location;
    }
}

/// Whether a guest runs on a real node, decided as Proxmox VE decides it (see
/// `parse::running` for the upstream functions followed).
fn runtime_state(
    r: &mut Reader,
    kind: GuestKind,
    vmid: u32,
    lxc_active: &mut Option<Option<BTreeSet<u32>>>,
) -> GuestState {
    let running = |yes: bool| {
        if yes {
            GuestState::Running
        } else {
            GuestState::Stopped
        }
    };
    if !r.root.is_dir("/proc/1") {
        return GuestState::Unknown;
    }
    match kind {
        GuestKind::Qemu => {
            let pidfile = format!("/run/qemu-server/{vmid}.pid");
            if !r.root.exists(&pidfile) {
                return GuestState::Stopped;
            }
            let text = match r.input(&pidfile) {
                Input::Missing => return GuestState::Stopped,
                Input::Unreadable => return GuestState::Unknown,
                Input::Read(t) => t,
            };
            let Some(pid) = running::qemu_pidfile(&text) else {
                r.unreadable_line(&pidfile, 1, "not a process id");
                return GuestState::Unknown;
            };
            let cmdline_path = format!("/proc/{pid}/cmdline");
            if !r.root.exists(&cmdline_path) {
                // No such process: a pid file left behind.
                return GuestState::Stopped;
            }
            let cmdline = match r.bytes_input(&cmdline_path) {
                // No such process: a pid file left behind.
                Input::Missing => return GuestState::Stopped,
                Input::Unreadable => return GuestState::Unknown,
                Input::Read(b) => b,
            };
            if !running::qemu_cmdline_is_vm(&cmdline, vmid) {
                // The pid was reused by another process.
                return GuestState::Stopped;
            }
            let stat_path = format!("/proc/{pid}/stat");
            match r.input(&stat_path) {
                Input::Missing => GuestState::Stopped,
                Input::Unreadable => GuestState::Unknown,
                Input::Read(stat) => match running::proc_stat_running(&stat) {
                    Some(yes) => running(yes),
                    None => {
                        r.unreadable_line(&stat_path, 1, "not a process status line");
                        GuestState::Unknown
                    }
                },
            }
        }
        GuestKind::Lxc => {
            let active = lxc_active.get_or_insert_with(|| match r.input(PROC_NET_UNIX) {
                Input::Read(text) => Some(running::lxc_active(&text)),
                Input::Missing | Input::Unreadable => None,
            });
            match active {
                Some(set) => running(set.contains(&vmid)),
                None => GuestState::Unknown,
            }
        }
    }
}

fn ceph(r: &mut Reader, host: Option<&str>, addresses: &[&str], sim: bool) -> Option<CephFacts> {
    if !r.root.exists(CEPH_CONF) {
        return None;
    }
    let conf = r
        .text(CEPH_CONF)
        .map(|t| pve::ceph_conf(&t))
        .unwrap_or_default();
    for e in &conf.errors {
        r.unreadable_line(CEPH_CONF, e.line, &e.message);
    }
    let monitor_here = host.is_some_and(|h| {
        conf.mon_sections.iter().any(|m| m == h)
            || conf
                .mon_host
                .iter()
                .any(|a| a == h || addresses.contains(&a.as_str()))
    });
    let mut osds_here: Vec<u32> = r
        .root
        .list_dir(OSD_DIR)
        .iter()
        .filter_map(|name| {
            let id = name.strip_prefix("ceph-")?;
            if !id.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let id: u32 = id.parse().ok()?;
            r.root.is_dir(&format!("{OSD_DIR}/{name}")).then_some(id)
        })
        .collect();
    osds_here.sort_unstable();
    // Simulated: the node's own OSDs, down (still in, as under `noout`) while the
    // `osds-down` marker holds a time not yet passed. A real node's OSD map is not a file:
    // `run` asks Ceph (`probe::ceph_state`), `inspect` leaves it unknown.
    let osds = sim.then(|| {
        let total = u32::try_from(osds_here.len()).unwrap_or(u32::MAX);
        let down = r
            .root
            .exists(&sim_path(OSDS_DOWN))
            .then(|| r.text(&sim_path(OSDS_DOWN)).unwrap_or_default())
            .is_some_and(|t| osds_down(&t, now_ms()));
        OsdCounts {
            total,
            up: if down { 0 } else { total },
            inside: total,
        }
    });
    Some(CephFacts {
        monitor_here,
        osds_here,
        noout: sim.then(|| marker(r, CEPH_NOOUT)),
        healthy: sim.then(|| !marker(r, CEPH_UNHEALTHY)),
        osds,
    })
}

fn ha(r: &mut Reader, host: Option<&str>, sim: bool, resources: &pve::HaResources) -> HaFacts {
    let shutdown_policy = r.text(DATACENTER).and_then(|t| pve::shutdown_policy(&t));
    let status_text = r.text(MANAGER_STATUS);
    let manager = status_text
        .as_deref()
        .and_then(|text| match ha::manager_status(text) {
            Ok(m) => Some(m),
            Err(e) => {
                r.unreadable(MANAGER_STATUS, e);
                None
            }
        });
    let maintenance = if sim {
        Some(marker(r, MAINTENANCE))
    } else {
        match (host, manager.as_ref()) {
            (Some(h), Some(m)) => m.node_status.get(h).map(|s| s == "maintenance"),
            _ => None,
        }
    };
    let disarmed = if sim {
        Some(marker(r, HA_DISARMED))
    } else {
        manager.as_ref().and_then(ha::ManagerStatus::disarmed)
    };
    let error_resources = match (host, manager.as_ref()) {
        (Some(h), Some(m)) => m.error_services(h),
        _ => Vec::new(),
    };
    let lrm_watchdog = match (sim, simulated_lrm_watchdog(r)) {
        (true, Some(held)) => Some(held),
        _ => host.and_then(|h| lrm_watchdog(r, h, manager.as_ref())),
    };
    HaFacts {
        maintenance,
        disarmed,
        resources: u32::try_from(resources.sids.len()).unwrap_or(u32::MAX),
        shutdown_policy,
        lrm_watchdog,
        error_resources,
    }
}

/// The simulated LRM's watchdog ([`LRM_WATCHDOG`]: `active` holds it, `released` does not);
/// `None` without the file.
fn simulated_lrm_watchdog(r: &mut Reader) -> Option<bool> {
    let path = sim_path(LRM_WATCHDOG);
    if !r.root.exists(&path) {
        return None;
    }
    match r.text(&path)?.trim() {
        "active" => Some(true),
        "released" => Some(false),
        other => {
            r.unreadable(
                &path,
                format!("`{other}` is neither `active` nor `released`"),
            );
            None
        }
    }
}

/// Whether this node's LRM holds its watchdog, from its `lrm_status` (`parse::ha`). On the
/// live system the status must be current (`parse::ha::STALE_SECS`); a fixture tree is a
/// snapshot and is taken as it is.
fn lrm_watchdog(r: &mut Reader, host: &str, manager: Option<&ha::ManagerStatus>) -> Option<bool> {
    let path = format!("/etc/pve/nodes/{host}/lrm_status");
    let text = r.text(&path)?;
    let lrm = match ha::lrm_status(&text) {
        Ok(l) => l,
        Err(e) => {
            r.unreadable(&path, e);
            return None;
        }
    };
    let now = r.root.is_host().then(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    });
    ha::lrm_holds_watchdog(&lrm, manager, host, now)
}
