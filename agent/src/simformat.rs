//! The simulated node's on-disk format: the files under `<root>/var/lib/fleetward-sim/` that
//! the simulated executor writes ([`crate::executor::simulated`]), `collect` reads as the
//! node's runtime, and fixtures and the demo prepare. A leaf: it imports nothing from the
//! crate, so every layer that needs the vocabulary can take it from here.
//!
//! | file | meaning |
//! |---|---|
//! | [`MAINTENANCE`] | HA node maintenance is enabled (written by maintenance-on, removed by -off) |
//! | [`CEPH_NOOUT`] | the cluster's `noout` flag is set (this node set it) |
//! | [`CEPH_UNHEALTHY`] | Ceph reports a problem besides `noout` (fixtures set it; no action does) |
//! | [`HA_DISARMED`] | HA is disarmed (freeze) |
//! | [`POWERED_OFF`] | the node powered off; the simulated executor's `power_on` boots it again |
//! | [`GUESTS`] | the node's guests: `[{vmid, kind, state, onboot, order, ha, location, ha_stopped}]` ([`SimGuest`]) |
//! | [`PENDING`] | what the next dist-upgrade installs: `{"packages": [{"package", "version"}], "kernel": "6.14.11-1-pve", "remove": [...], "held": [...]}` ([`Pending`]) |
//! | [`UNITS`] | the simulated transient units of actions (`units/<unit>.json`, [`SimUnit`]): what outlives an agent killed mid-action |
//! | [`REFRESH_FAILS`] | if present, boot-refresh fails (to test the ESP gate) |
//! | [`ESP_SYNCED`] | JSON list of the kernels the last successful boot-refresh put on the ESPs |
//! | [`HA_REQUESTS`] | HA requests queued for the cluster manager and not yet applied ([`HaRequest`] list) |
//! | [`HA_CRM_IGNORES`] | if present, the simulated HA manager ignores every request |
//! | [`LRM_WATCHDOG`] | this node's HA resource manager (LRM) and its watchdog: `active` (held) or `released`; absent: not modelled (unknown) |
//! | [`OSDS_DOWN`] | this node's OSDs read down (still in) until the Unix time in ms it holds; written at a simulated boot with an OSD delay; without a time, until removed |
//!
//! Besides these, the simulated executor keeps the node's **runtime files** where a real
//! node has them, so `collect` decides whether a guest runs from the same sources as on a
//! real node (`parse::running`): `/proc/1/stat` (a live `/proc`), `/proc/net/unix` (the
//! abstract command socket `@/var/lib/lxc/<vmid>/command` of each running container),
//! `/sys/fs/cgroup/lxc/<vmid>/` (created when a container starts and **left behind when it
//! stops**, as pve-container's `src/PVE/LXC.pm` notes above `check_running`), and for each
//! running VM `/run/qemu-server/<vmid>.pid` naming a pid whose `/proc/<pid>/cmdline` is that
//! VM's QEMU ([`qemu_pid`], [`qemu_cmdline`]). `guests.json` stays the simulation's model;
//! the runtime files are written from it on every change.
//!
//! Marker files (maintenance, Ceph, HA, power) mean "set" by existing; their content (the
//! node name) is informational.

use fleetward_proto::action::GuestKind;
use serde::{Deserialize, Serialize};

/// The simulation's state directory, as a node path under the root. Its existence makes a
/// root a simulated node.
pub const SIM_DIR: &str = "/var/lib/fleetward-sim";
/// The apt list the simulated `apt-update` writes (a node path).
pub const SIM_LISTS_FILE: &str =
    "/var/lib/apt/lists/fleetward-sim_dists_stable_main_binary-amd64_Packages";

/// Marker: HA node maintenance is enabled.
pub const MAINTENANCE: &str = "maintenance";
/// Marker: the cluster's Ceph `noout` flag is set.
pub const CEPH_NOOUT: &str = "ceph-noout";
/// Marker: Ceph is unhealthy.
pub const CEPH_UNHEALTHY: &str = "ceph-unhealthy";
/// Marker: HA is disarmed.
pub const HA_DISARMED: &str = "ha-disarmed";
/// Marker: the node is powered off.
pub const POWERED_OFF: &str = "powered-off";
/// Marker: boot-refresh fails.
pub const REFRESH_FAILS: &str = "refresh-fails";
/// The guests ([`SimGuest`] list, JSON).
pub const GUESTS: &str = "guests.json";
/// What the next dist-upgrade installs ([`Pending`], JSON).
pub const PENDING: &str = "pending.json";
/// Directory of the simulated transient units ([`SimUnit`] per file).
pub const UNITS: &str = "units";
/// The kernels the last boot-refresh synced (JSON list of releases).
pub const ESP_SYNCED: &str = "esp-synced";
/// HA requests not yet applied ([`HaRequest`] list, JSON).
pub const HA_REQUESTS: &str = "ha-requests.json";
/// Marker: the simulated HA manager ignores requests.
pub const HA_CRM_IGNORES: &str = "ha-crm-ignores";
/// This node's simulated LRM watchdog: `active` (held) or `released`. Fixtures write
/// `active` where an LRM holds its watchdog; `ha-disarm` and `maintenance-on` release it one
/// HA round later, `ha-arm` and `maintenance-off` take it again (pve-ha-manager
/// `src/PVE/HA/LRM.pm` `work`).
pub const LRM_WATCHDOG: &str = "lrm-watchdog";
/// Marker: this node's OSDs are down (not yet started after a boot) until the Unix time in
/// milliseconds the file holds (see [`osds_down`]).
pub const OSDS_DOWN: &str = "osds-down";
/// Free space of the file systems a fixture claims (`<path> <bytes>` per line): a fixture
/// root has no file system of its own to ask.
pub const FREE_SPACE: &str = "free-space";

/// The runtime file listing unix sockets (the simulation owns it on a simulated node).
pub const PROC_NET_UNIX: &str = "/proc/net/unix";
/// The header line of [`PROC_NET_UNIX`].
pub const PROC_NET_UNIX_HEADER: &str = "Num       RefCount Protocol Flags    Type St Inode Path";
/// Where LXC's cgroups live (`<dir>/<vmid>`, cgroup v2 as on Proxmox VE 7 and later).
pub const LXC_CGROUP_DIR: &str = "/sys/fs/cgroup/lxc";
/// qemu-server's pid file directory (`<dir>/<vmid>.pid`).
pub const QEMU_PID_DIR: &str = "/run/qemu-server";

/// The pid the simulation gives VM `vmid`'s QEMU process (stable, above the kernel's
/// reserved low pids).
pub fn qemu_pid(vmid: u32) -> u64 {
    100_000 + u64::from(vmid)
}

/// `/proc/<pid>/cmdline` of VM `vmid`'s QEMU process as qemu-server starts it (NUL-separated;
/// `-pidfile` names the VM's pid file, which is what `parse::running` checks).
pub fn qemu_cmdline(vmid: u32) -> Vec<u8> {
    let args = [
        "/usr/bin/kvm".to_owned(),
        "-id".to_owned(),
        vmid.to_string(),
        "-name".to_owned(),
        format!("vm{vmid},debug-threads=on"),
        "-pidfile".to_owned(),
        format!("/var/run/qemu-server/{vmid}.pid"),
        "-daemonize".to_owned(),
    ];
    let mut out = Vec::new();
    for a in args {
        out.extend_from_slice(a.as_bytes());
        out.push(0);
    }
    out
}

/// The node path of the simulation file `name` (`/var/lib/fleetward-sim/<name>`).
pub fn sim_path(name: &str) -> String {
    format!("{SIM_DIR}/{name}")
}

/// A guest of the simulated node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimGuest {
    pub vmid: u32,
    pub kind: GuestKind,
    pub state: GuestState,
    #[serde(default)]
    pub onboot: bool,
    /// Proxmox startup order (`startup: order=N`).
    #[serde(default)]
    pub order: Option<u32>,
    /// Managed by HA.
    #[serde(default)]
    pub ha: bool,
    /// Where a migrated guest went (`None` for HA guests moved by maintenance mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// An HA guest whose requested state is `stopped` (it was stopped through HA); HA
    /// starts the others again when the node boots. Unused for non-HA guests.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ha_stopped: bool,
}

/// Whether a simulated guest runs, is stopped, or left the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuestState {
    Running,
    Stopped,
    /// No longer on this node.
    Migrated,
}

impl SimGuest {
    /// The guest's HA service id (`vm:100`, `ct:200`).
    pub fn sid(&self) -> String {
        let prefix = match self.kind {
            GuestKind::Qemu => "vm",
            GuestKind::Lxc => "ct",
        };
        format!("{prefix}:{}", self.vmid)
    }
}

/// A requested state queued for the simulated HA cluster manager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaRequest {
    pub id: String,
    pub vmid: u32,
    pub kind: GuestKind,
    /// `running` (requested `started`) or `stopped`.
    pub state: GuestState,
    /// `Some`: not a guest's request but `ha-manager crm-command node-maintenance
    /// enable` (`true`) or `disable` (`false`) for this node; `vmid`, `kind` and `state`
    /// are then unused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<bool>,
}

/// `pending.json`: what the next dist-upgrade installs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    #[serde(default)]
    pub packages: Vec<PendingPackage>,
    /// A new kernel's release, e.g. `6.14.11-1-pve`.
    #[serde(default)]
    pub kernel: Option<String>,
    /// Packages the upgrade removes, where installed (a repository mistake that makes
    /// apt remove `proxmox-ve`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
    /// Packages of `packages` that are held (`apt-mark hold`): apt keeps them back and the
    /// upgrade leaves them alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<String>,
}

/// One package of [`Pending`] at the version the upgrade installs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingPackage {
    pub package: String,
    pub version: String,
}

/// A simulated action's transient unit: written when the action starts, completed when it
/// ends. An agent killed meanwhile finds it on restart and completes it (the real unit would
/// have gone on without the agent), so the action is applied once and its result is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimUnit {
    pub id: String,
    pub action: fleetward_proto::action::Action,
    pub started_ms: u64,
    /// `None` while it runs.
    #[serde(default)]
    pub ok: Option<bool>,
    #[serde(default)]
    pub output: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sim_paths_and_guest_json() {
        assert_eq!(sim_path(GUESTS), "/var/lib/fleetward-sim/guests.json");
        let g: SimGuest =
            serde_json::from_str(r#"{"vmid":100,"kind":"qemu","state":"migrated","ha":true}"#)
                .unwrap();
        assert_eq!(g.state, GuestState::Migrated);
        assert_eq!(g.sid(), "vm:100");
        assert!(!g.onboot && g.location.is_none());
    }
}

/// Whether the OSDs of a node whose [`OSDS_DOWN`] marker holds `text` read down at
/// `now_ms`: until the time it holds; a marker without a time (empty or not a number)
/// means down until it is removed.
pub fn osds_down(text: &str, now_ms: u64) -> bool {
    match text.trim().parse::<u64>() {
        Ok(until) => now_ms < until,
        Err(_) => true,
    }
}

#[cfg(test)]
mod osd_tests {
    use super::osds_down;

    #[test]
    fn osds_read_down_until_their_time_or_forever_without_one() {
        assert!(osds_down("2000\n", 1999));
        assert!(!osds_down("2000", 2000));
        assert!(osds_down("", 5));
        assert!(osds_down("soon", 5));
    }
}
