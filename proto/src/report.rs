//! The inspection report: node facts plus findings.
//!
//! This is the one schema of what an agent knows about its node. `fleetward-agent inspect
//! --format json` prints it, and the controller receives and stores exactly these bytes
//! (see `ARCHITECTURE.md`, "One schema"). Field names are part of the interface: add fields
//! with `#[serde(default)]`, never rename them.

use crate::action::GuestKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Bumped when a field changes meaning; adding an optional field does not bump it.
pub const SCHEMA_VERSION: u32 = 1;

/// The packages `BootFacts::packages` reports when installed: they describe the boot stack.
pub const BOOT_PACKAGES: &[&str] = &[
    "grub-efi-amd64",
    "grub-efi-amd64-signed",
    "grub-pc",
    "proxmox-kernel-helper",
    "shim-signed",
    "systemd-boot",
    "systemd-boot-efi",
    "systemd-boot-tools",
];

/// Everything one inspection of one node produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub schema_version: u32,
    pub facts: Facts,
    pub findings: Vec<Finding>,
}

impl Report {
    /// The worst severity among the findings, if any.
    pub fn worst_severity(&self) -> Option<Severity> {
        self.findings.iter().map(|f| f.severity).max()
    }
}

/// How bad a finding is. Ordered: `Info < Warning < Error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "info" => Ok(Severity::Info),
            "warning" => Ok(Severity::Warning),
            "error" => Ok(Severity::Error),
            other => Err(format!(
                "unknown severity '{other}' (expected info, warning or error)"
            )),
        }
    }
}

/// One check result, with a stable code from `CHECKS.md`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Finding {
    pub code: String,
    pub severity: Severity,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
}

/// Everything collected from the node, before any judgement.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    pub node: NodeFacts,
    pub boot: BootFacts,
    pub esps: Vec<EspFacts>,
    pub apt: AptFacts,
    pub dns: DnsFacts,
    pub cluster: ClusterFacts,
    /// This node's guests (VMs and containers), sorted by VMID.
    #[serde(default)]
    pub guests: Vec<GuestFacts>,
    /// Ceph on this node; `None` when `/etc/pve/ceph.conf` does not exist.
    #[serde(default)]
    pub ceph: Option<CephFacts>,
    /// The HA stack as this node sees it.
    #[serde(default)]
    pub ha: HaFacts,
    /// Inputs that exist but could not be read or decoded (binary garbage, permissions),
    /// or lines of them that could not be parsed. Each is a documented "unreadable" fact
    /// rather than a tool failure.
    #[serde(default)]
    pub unreadable: Vec<Unreadable>,
    /// Time sync, free space and what the package database says.
    #[serde(default)]
    pub system: SystemFacts,
    /// How the reporting agent runs (set by `fleetward-agent run`, not by `inspect`).
    #[serde(default, skip_serializing_if = "AgentFacts::is_default")]
    pub agent: AgentFacts,
}

/// How the agent that sent the report runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentFacts {
    /// The agent refuses every action: it inspects a tree other than `/` without
    /// `--simulate`, or was started with `--observe-only`. The controller plans no action
    /// for such a node.
    #[serde(default)]
    pub observe_only: bool,
}

impl AgentFacts {
    pub fn is_default(&self) -> bool {
        *self == AgentFacts::default()
    }
}

/// Node-wide facts that belong to no single subsystem above.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemFacts {
    /// `/var/lib/dpkg/status` exists but could not be read: which packages are installed is
    /// unknown, so no rule may conclude that a package is missing.
    #[serde(default)]
    pub packages_unknown: bool,
    /// Number of installed packages dpkg's status lists (0 when it is missing or unreadable).
    #[serde(default)]
    pub installed_packages: u32,
    /// Installed time-sync daemons among `chrony`, `systemd-timesyncd`, `ntpsec`, `ntp` and
    /// `openntpd`, sorted.
    #[serde(default)]
    pub time_sync_packages: Vec<String>,
    /// Free space in bytes (for unprivileged users, as `df` shows) on the file system of `/`,
    /// rounded down to whole GiB on a live host; `None` when not known.
    #[serde(default)]
    pub root_free_bytes: Option<u64>,
    /// Free space on the file system of `/var/cache/apt/archives` when it is not the one of
    /// `/`; `None` when it is the same file system or not known.
    #[serde(default)]
    pub apt_archives_free_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Unreadable {
    pub path: String,
    /// The line that could not be parsed, when the rest of the file could be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    pub reason: String,
}

/// One guest (QEMU VM or LXC container) whose configuration is on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestFacts {
    pub vmid: u32,
    pub kind: GuestKind,
    /// `name:` (QEMU) or `hostname:` (LXC).
    #[serde(default)]
    pub name: Option<String>,
    /// `onboot: 1`: started when the node boots (and by `pvenode startall`).
    #[serde(default)]
    pub onboot: bool,
    /// `startup: order=N`: start order (ascending); shutdown runs in reverse.
    #[serde(default)]
    pub order: Option<u32>,
    /// `startup: up=S`: seconds to wait after starting this guest before the next.
    #[serde(default)]
    pub up: Option<u32>,
    /// `startup: down=S`: shutdown timeout in seconds.
    #[serde(default)]
    pub down: Option<u32>,
    /// Managed by HA: listed in `/etc/pve/ha/resources.cfg` (`vm: VMID` / `ct: VMID`) with
    /// a requested state other than `ignored` (an ignored resource behaves as if HA did not
    /// manage it: see `ha_ignored`).
    #[serde(default)]
    pub ha: bool,
    #[serde(default)]
    pub state: GuestState,
    /// Where the guest went when it is no longer on this node (a migration target), if
    /// known; `None` while it is here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// The configuration file read (`/etc/pve/nodes/<node>/qemu-server/<vmid>.conf`, ...);
    /// `None` when the guest is known only from the simulation's `guests.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// An HA resource whose requested state is `ignored` (`state ignored`): HA will not
    /// move, stop or start it (pve-ha-manager `src/PVE/HA/Config.pm`
    /// `service_check_ha_state`), so it counts as a non-HA guest (`ha` is false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ha_ignored: bool,
}

/// Whether a guest runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuestState {
    Running,
    Stopped,
    /// No longer on this node (the simulation keeps migrated guests in its list).
    Migrated,
    /// The agent cannot tell (no live `/proc` or cgroup file system under the root).
    #[default]
    Unknown,
}

/// Ceph as seen from this node (`/etc/pve/ceph.conf` exists).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CephFacts {
    /// A monitor runs here: a `[mon.<hostname>]` section, or one of this node's addresses
    /// (from `/etc/hosts` and the cluster members) listed in `mon_host`.
    pub monitor_here: bool,
    /// OSD ids with a `/var/lib/ceph/osd/ceph-<id>` directory, ascending.
    pub osds_here: Vec<u32>,
    /// The cluster's `noout` flag; `None` when not known without running `ceph`.
    pub noout: Option<bool>,
    /// Ceph health apart from `noout`; `None` when not known without running `ceph`.
    pub healthy: Option<bool>,
    /// The OSDs' up/in state: on a live node the cluster's OSD map (`ceph osd dump`, read
    /// by `run`), in simulation this node's own OSDs; `None` when not known.
    #[serde(default)]
    pub osds: Option<OsdCounts>,
}

/// How many OSDs exist, run (`up`) and hold data (`in`), as the OSD map counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsdCounts {
    pub total: u32,
    pub up: u32,
    #[serde(rename = "in")]
    pub inside: u32,
}

impl OsdCounts {
    /// Every OSD is up and in: what Proxmox's Ceph procedure waits for before `noout` is
    /// unset.
    pub fn all_up_in(&self) -> bool {
        self.up >= self.total && self.inside >= self.total
    }
}

/// The HA stack as this node sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaFacts {
    /// This node is in HA maintenance mode; `None` when not known.
    #[serde(default)]
    pub maintenance: Option<bool>,
    /// HA is disarmed cluster-wide (`disarm-ha`); `None` when not known.
    #[serde(default)]
    pub disarmed: Option<bool>,
    /// Number of resources in `/etc/pve/ha/resources.cfg` (cluster-wide).
    #[serde(default)]
    pub resources: u32,
    /// `ha: shutdown_policy=...` of `/etc/pve/datacenter.cfg`; `None` when not set (Proxmox
    /// then uses `conditional`).
    #[serde(default)]
    pub shutdown_policy: Option<String>,
    /// This node's local resource manager (LRM) still holds its watchdog, from
    /// `/etc/pve/nodes/<node>/lrm_status` (and `manager_status` for the node's active
    /// services in maintenance); `None` when not known (no or no current status).
    #[serde(default)]
    pub lrm_watchdog: Option<bool>,
    /// HA resources in state `error` on this node (`manager_status`'s
    /// `service_status.<sid>.state`), e.g. `vm:101`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub error_resources: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFacts {
    pub hostname: Option<String>,
    pub os: OsRelease,
    pub pve_manager_version: Option<String>,
    pub proxmox_ve_version: Option<String>,
    /// `/proc/sys/kernel/osrelease`, e.g. `6.14.8-2-pve`.
    pub running_kernel: Option<String>,
    pub boot_id: Option<String>,
    /// `/proc/cmdline`.
    pub kernel_cmdline: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsRelease {
    pub id: Option<String>,
    pub version_id: Option<String>,
    pub codename: Option<String>,
    pub pretty_name: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    Uefi,
    #[default]
    Bios,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecureBootFacts {
    /// `SecureBoot` efivar data, `None` when absent or unreadable.
    pub secure_boot: Option<bool>,
    /// `SetupMode` efivar data.
    pub setup_mode: Option<bool>,
    /// `MokSBStateRT` exists: shim does not validate.
    pub shim_validation_disabled: bool,
    /// mokutil's verdict: `enabled`, `disabled` or `unknown`.
    pub state: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageFacts {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelHookFacts {
    pub path: String,
    pub exists: bool,
    /// The package whose `.list` file names the hook.
    pub owner: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootFacts {
    pub firmware: Firmware,
    /// Present only on UEFI.
    pub secure_boot: Option<SecureBootFacts>,
    /// Installed boot-loader related packages (name, version), sorted by name.
    pub packages: Vec<PackageFacts>,
    pub kernel_hook: KernelHookFacts,
    /// The ESP list path, from the helper's `functions` file or the documented default.
    pub esp_list_path: String,
    pub esp_list_exists: bool,
    /// Lines of the ESP list that proxmox-boot-tool reads, trimmed (blank lines kept, so
    /// index + 1 is the line number). A line that is not UTF-8 text is kept as an empty
    /// line (it is an unreadable fact); a last line without a newline is not here (see
    /// `esp_list_unterminated`).
    pub esp_list: Vec<String>,
    /// The ESP list's last line, when it has no newline: proxmox-boot-tool's `while read`
    /// loop skips it, so that ESP is never synced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub esp_list_unterminated: Option<String>,
    /// `/etc/fstab` has a `/boot/efi` entry.
    pub boot_efi_in_fstab: bool,
    /// `/boot/efi` is mounted (`/proc/self/mountinfo`).
    pub boot_efi_mounted: bool,
    /// `/etc/kernel/proxmox-boot-pin`, first line.
    pub kernel_pin: Option<String>,
    /// `/etc/kernel/next-boot-pin`, first line.
    pub next_boot_pin: Option<String>,
    /// Kernel versions with a `/boot/vmlinuz-<version>`, newest first.
    pub installed_kernels: Vec<String>,
    /// The kernel that boots next: next-boot pin, else pin, else newest installed.
    pub next_kernel: Option<String>,
    /// Root file system kind from the kernel command line: `zfs`, `btrfs` or `other`.
    pub root_fs: Option<String>,
    /// `grub2/force_efi_extra_removable` from debconf's config database.
    pub force_efi_extra_removable: Option<bool>,
    pub reboot_required: bool,
    /// Why a reboot is required (empty when it is not).
    pub reboot_required_reasons: Vec<String>,
    /// DKMS modules (`/var/lib/dkms/<module>/<version>/`) with the kernels each is built for.
    #[serde(default)]
    pub dkms: Vec<DkmsModule>,
}

/// One version of one DKMS module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DkmsModule {
    pub name: String,
    pub version: String,
    /// Kernel versions it has a build for (`/var/lib/dkms/<module>/<version>/<kernel>/`), sorted.
    pub kernels: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EspSource {
    /// Listed in the ESP list (`proxmox-boot-uuids`).
    EspList,
    /// Mounted at (or listed in fstab for) `/boot/efi`.
    BootEfi,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Loader {
    SystemdBoot,
    Grub,
    /// Both `loader/loader.conf` and a GRUB layout.
    Both,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EspFacts {
    /// VFAT volume id as written in the list or fstab (`XXXX-XXXX`), if known.
    pub uuid: Option<String>,
    pub source: EspSource,
    /// The device path read, relative to the inspected root (`/dev/disk/by-uuid/...`).
    pub device: Option<String>,
    /// The mount point, when mounted.
    pub mountpoint: Option<String>,
    /// The device exists.
    pub present: bool,
    pub loader: Option<Loader>,
    /// Kernel versions held (directory names under `EFI/proxmox/` or `vmlinuz-*` in the root).
    pub kernels: Vec<String>,
    pub total_bytes: Option<u64>,
    pub free_bytes: Option<u64>,
    /// Largest kernel+initrd pair seen on this ESP, in bytes.
    pub largest_kernel_pair_bytes: Option<u64>,
    /// Digest of the kernel files held (names, sizes and contents); equal digests mean equal content.
    pub content_digest: Option<String>,
    /// Whether this ESP matches the other listed ESPs (kernel set and contents); `None` when
    /// there is nothing to compare with.
    pub matches_others: Option<bool>,
    /// `EFI/BOOT/BOOTX64.EFI` (the removable-media loader) exists on it.
    #[serde(default)]
    pub removable_loader: bool,
    /// Why the file system could not be read, if it could not.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AptFacts {
    /// Every file under `sources.list` and `sources.list.d`, sorted by path.
    pub files: Vec<AptFile>,
    /// Every entry apt would read (enabled or not), in file order.
    pub entries: Vec<AptEntry>,
    /// Entries in files apt ignores but that hold sources (`*.sources.disabled`,
    /// `*.list.bak`, ...): how disabled references are kept. Always `enabled: false`.
    #[serde(default)]
    pub ignored_entries: Vec<AptEntry>,
    /// Lines apt would refuse, with file and line.
    #[serde(default)]
    pub errors: Vec<LocatedError>,
    /// Package lists (`/var/lib/apt/lists/*_Packages*`) that exist but could not be read or
    /// decoded: `upgradable` is then incomplete, never a proof that nothing is pending.
    #[serde(default)]
    pub unreadable_lists: Vec<String>,
    /// Installed packages for which apt's downloaded package lists
    /// (`/var/lib/apt/lists/*_Packages`) offer a higher version, sorted by package name.
    #[serde(default)]
    pub upgradable: Vec<Upgrade>,
    /// Some package of `upgradable` needs a reboot to take effect (see
    /// [`upgrade_needs_reboot`]).
    #[serde(default)]
    pub upgrade_needs_reboot: bool,
    /// What apt itself says the next `dist-upgrade` does (`apt-get -s dist-upgrade`, asked
    /// read-only by `fleetward-agent run`; see [`AptTransaction`]). `None` when apt was not
    /// asked: `inspect` starts no process, and fixture roots and observe-only agents are
    /// never simulated against the build machine's apt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction: Option<AptTransaction>,
    /// apt was asked and failed (exit status and the tail of its output): what the upgrade
    /// would do is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_error: Option<String>,
}

/// The exact transaction of the next `apt-get dist-upgrade`, as apt's simulation prints it
/// (pins, holds and dependencies included): unlike `upgradable`, it names packages the
/// upgrade installs new (a new kernel ABI) and removes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AptTransaction {
    /// Installed packages that change version (`Inst PKG [OLD] (NEW ...)`), in apt's order.
    #[serde(default)]
    pub upgrades: Vec<Upgrade>,
    /// Packages installed new (`Inst PKG (NEW ...)`): `installed` is empty.
    #[serde(default)]
    pub new: Vec<Upgrade>,
    /// Packages removed (`Remv PKG [OLD]`, `Purg ...`).
    #[serde(default)]
    pub removed: Vec<Removal>,
    /// Packages apt keeps back (held, or not upgradable without other changes).
    #[serde(default)]
    pub kept_back: Vec<String>,
    /// The kernel release that boots after this transaction: the pinned kernel while it
    /// stays installed, else the newest kernel installed after it.
    #[serde(default)]
    pub kernel_after: Option<String>,
}

/// A package the transaction removes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removal {
    pub package: String,
    /// The installed version, when apt names it.
    #[serde(default)]
    pub version: Option<String>,
    /// apt warns that it is an essential package.
    #[serde(default)]
    pub essential: bool,
}

/// An installed package and the higher version apt's package lists offer for it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Upgrade {
    pub package: String,
    /// The version in `/var/lib/dpkg/status`.
    pub installed: String,
    /// The highest version (Debian ordering) the package lists offer.
    pub candidate: String,
}

/// Packages whose upgrade only takes effect after a reboot, matched exactly.
///
/// Kept short on purpose; kernels are matched by [`upgrade_needs_reboot`]'s prefixes.
/// - `proxmox-default-kernel`, `linux-image-amd64`: kernel meta packages (pull a new ABI).
/// - `proxmox-ve`: the Proxmox VE meta package; its new versions move the default kernel
///   series, so an upgrade of it is treated as a kernel upgrade.
/// - `systemd`, `libc6`, `dbus`: PID 1 and what every long-running process links or talks
///   to; restarting services does not pick them up everywhere.
/// - `pve-firmware`: device firmware is loaded at boot.
pub const REBOOT_PACKAGES: &[&str] = &[
    "dbus",
    "libc6",
    "linux-image-amd64",
    "proxmox-default-kernel",
    "proxmox-ve",
    "pve-firmware",
    "systemd",
];

/// Whether upgrading `package` needs a reboot: one of [`REBOOT_PACKAGES`] or a kernel image
/// (`proxmox-kernel-<version>…`, `pve-kernel-<version>…`, `linux-image-<version>…`; a digit
/// must follow the prefix, so `proxmox-kernel-helper` is not a kernel).
pub fn upgrade_needs_reboot(package: &str) -> bool {
    REBOOT_PACKAGES.contains(&package)
        || ["proxmox-kernel-", "pve-kernel-", "linux-image-"]
            .iter()
            .any(|p| {
                package
                    .strip_prefix(p)
                    .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
            })
}

/// A problem at a place in a file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LocatedError {
    pub path: String,
    pub line: u32,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AptFileFormat {
    /// One-line format (`sources.list`, `*.list`).
    OneLine,
    /// deb822 (`*.sources`).
    Deb822,
    /// apt does not read this file.
    Ignored,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AptFile {
    pub path: String,
    pub format: AptFileFormat,
    /// Why apt does not read it (only for `Ignored`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignored_reason: Option<String>,
    /// Size in bytes.
    pub size: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AptEntry {
    pub file: String,
    /// First line of the entry (one-line: its line; deb822: the stanza's first line).
    pub line: u32,
    pub enabled: bool,
    pub types: Vec<String>,
    pub uris: Vec<String>,
    pub suites: Vec<String>,
    pub components: Vec<String>,
    /// Other keys (`Signed-By`, `Architectures`, ...), key lower-cased.
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsFacts {
    pub resolv_conf: ResolvConfFacts,
    pub interfaces: InterfacesDnsFacts,
    pub hosts: HostsFacts,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvConfFacts {
    pub exists: bool,
    /// Where `/etc/resolv.conf` points, if it is a symlink.
    pub symlink_target: Option<String>,
    /// It is systemd-resolved's stub (127.0.0.53 or a link into `/run/systemd/resolve`).
    pub systemd_resolved_stub: bool,
    pub nameservers: Vec<String>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfacesDnsFacts {
    /// Files read, `/etc/network/interfaces` first, then its `source` includes.
    pub files: Vec<String>,
    pub nameservers: Vec<String>,
    pub search: Vec<String>,
    /// Where each `dns-*` line is: (interface, file, line).
    pub lines: Vec<DnsLine>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsLine {
    pub iface: Option<String>,
    pub key: String,
    pub value: String,
    pub file: String,
    pub line: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostsFacts {
    /// The name looked up (the node's hostname, first label).
    pub name: Option<String>,
    /// Addresses `/etc/hosts` gives for it, in file order.
    pub addresses: Vec<String>,
    /// The `/etc/hosts` line of each of `addresses` (same order).
    #[serde(default)]
    pub address_lines: Vec<u32>,
    /// Addresses the node carries: `address` lines of `/etc/network/interfaces` (with its
    /// includes) and, on a live node, the kernel's local addresses (`/proc/net/fib_trie`,
    /// `/proc/net/if_inet6`). Prefix lengths removed, sorted, each once.
    #[serde(default)]
    pub local_addresses: Vec<String>,
    /// `local_addresses` is every address the node can carry: the kernel's list was read, or
    /// every interfaces file was read and no stanza gets its address at run time (`dhcp`,
    /// `auto`, ...). Only then may a rule say an address is not local.
    #[serde(default)]
    pub local_addresses_complete: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterFacts {
    /// `/etc/pve/.members` exists.
    pub members_file: bool,
    /// No cluster: the members file has no `cluster` section (or does not exist).
    pub standalone: bool,
    pub name: Option<String>,
    pub quorate: Option<bool>,
    pub members: Vec<ClusterMember>,
    /// Expected votes as votequorum computes them from `corosync.conf`: `quorum.expected_votes`
    /// when set, else the nodes' `quorum_votes` (default 1) plus the QDevice's votes. `None`
    /// when `corosync.conf` could not be read: then the votes are unknown.
    pub expected_votes: Option<u32>,
    /// A corosync QDevice is configured.
    pub qdevice: bool,
    /// The QDevice's configured votes (`quorum.device.votes`, default 1); `None` without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qdevice_votes: Option<u32>,
    /// The corosync configuration read (`/etc/pve/corosync.conf`, else
    /// `/etc/corosync/corosync.conf`); `None` when neither exists or it could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corosync_conf: Option<String>,
    /// corosync.conf's `nodelist`: each node's name, votes and line, in file order.
    #[serde(default)]
    pub corosync_nodes: Vec<CorosyncNode>,
    /// `quorum.expected_votes`, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum_expected_votes: Option<u32>,
    /// `quorum.two_node: 1`: two nodes, each quorate alone.
    #[serde(default)]
    pub two_node: bool,
    /// Line of `expected_votes` / `two_node` in the quorum section, for the finding's location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum_line: Option<u32>,
}

/// One `node { }` entry of corosync.conf's `nodelist`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorosyncNode {
    /// `name`, else `ring0_addr` (how Proxmox names an entry without a name).
    pub name: String,
    /// `quorum_votes`, default 1.
    pub votes: u32,
    /// Line of the `node {` that opens the entry.
    pub line: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMember {
    pub name: String,
    pub id: Option<u32>,
    pub online: bool,
    pub ip: Option<String>,
    pub votes: u32,
}
