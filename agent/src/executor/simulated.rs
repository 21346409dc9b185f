//! The simulated executor: acts on a fixture root (the layout of
//! `agent/tests/fixtures/seed/*/root`) the way the real action would change the node, so
//! that `inspect` on the same root sees the result. Every action, successful or not, is
//! appended to a JSON-lines action log ([`LogEntry`]); end-to-end tests read these logs to
//! prove ordering ("never two nodes in maintenance or rebooting at once") and counts ("each
//! node upgraded once, rebooted once").
//!
//! The simulation's own state lives under `<root>/var/lib/fleetward-sim/`; its files are
//! described in [`crate::simformat`].
//!
//! What each action does:
//! - **maintenance-on/off**: the marker; HA guests (`ha: true`) that run leave the node
//!   (`state: "migrated"`, no `location`) and come back running on maintenance-off.
//! - **wait-guests-migrated**: succeeds when no HA guest runs here (the simulation moves
//!   them instantly, so there is nothing to wait for; fails otherwise).
//! - **apt-update**: writes what `apt-get update` would download: the apt list
//!   [`SIM_LISTS_FILE`] (`/var/lib/apt/lists/fleetward-sim_..._Packages`) offers every
//!   package of `pending.json` at its version and, for a pending kernel `K` (e.g.
//!   `6.14.11-1-pve`, package version `6.14.11-1`), `proxmox-kernel-K-signed` and the meta
//!   packages that pull it in on a real node (`proxmox-kernel-6.14`, `proxmox-default-kernel`).
//!   So `inspect`'s `apt.upgradable` lists the pending packages that are installed (apt
//!   only upgrades installed packages), and `apt.upgrade_needs_reboot` is true when one of
//!   them needs a reboot — a pending kernel shows when the node has its series meta
//!   package or `proxmox-default-kernel` installed (as every real node has), or when
//!   `pending.json` lists a reboot package such as `proxmox-ve`. Without `pending.json` the
//!   list is empty (nothing new). Other `*_Packages` files are left alone.
//! - **apt's simulation** (`Executor::simulate_upgrade`, what `apt-get -s dist-upgrade`
//!   prints on a real node): the transaction `planned` computes from `pending.json` (the
//!   mirror, as after the rollout's `apt-update`) and dpkg's status — installed packages that
//!   change version, NEW packages (the pending kernel's image package), `remove` entries
//!   that are installed, `held` packages kept back. The dist-upgrade below applies the same
//!   `planned` transaction, so the plan and the upgrade agree. Modelled on apt's
//!   `pkgSimulate` (`apt-pkg/algorithms.cc`) output.
//! - **units**: every action runs as a simulated transient unit
//!   (`units/<unit>.json`, [`crate::simformat::SimUnit`]): written at its start, completed
//!   with its result. An agent killed meanwhile finds it through `Executor::recover` and lets
//!   it go on to its end (applied once), as the real unit would without the agent.
//! - **apt-dist-upgrade**: asks the simulation first and refuses a protected removal
//!   (`upgrade.removes-protected`); then applies `pending.json` (without held packages,
//!   removing the `remove` packages that are installed): the kernel's `/boot/vmlinuz-K`,
//!   `initrd.img-K` and `config-K`, its package `proxmox-kernel-K-signed`, and every listed
//!   package are added to or updated in `/var/lib/dpkg/status` (the kernel's meta packages
//!   too, where installed); then `pending.json` is removed (a second upgrade installs
//!   nothing).
//! - **boot-refresh**: without `/etc/kernel/proxmox-boot-uuids` nothing to sync (as the real
//!   tool); with it, records the kernels in `/boot` in `esp-synced`.
//! - **reboot**: the next kernel (`/etc/kernel/next-boot-pin`, consumed; else
//!   `/etc/kernel/proxmox-boot-pin`; else the newest `/boot/vmlinuz-*`) becomes
//!   `/proc/sys/kernel/osrelease`, `/proc/sys/kernel/random/boot_id` gets a new random id,
//!   `/run/reboot-required` goes away, the runtime files of the last boot (pid files,
//!   processes, LXC cgroups) are gone, HA guests that ran are restarted by HA, and
//!   `pve-guests.service` starts the `onboot` guests: pve-manager `PVE/API2/Nodes.pm`
//!   `startall`/`get_start_stop_list` (`services/pve-guests.service` runs it at boot) —
//!   `onboot` and `startup: order=,up=` read from the guest's configuration as startall
//!   does (`guests.json` when there is none), HA-managed guests left out, ascending order
//!   then VMID, already running ones skipped, `up=` delays named but not waited. So a later
//!   `qm start` of such a guest finds it running. The outcome has `reboot: true`: the
//!   session layer drops the connection, waits, and reconnects — the file changes are
//!   already done.
//! - **power-off**: `powered-off` marker, every local guest stopped (LXC cgroups stay
//!   behind until the next boot), outcome `power_off: true`; the log entry names the
//!   guests that still ran when it began ([`LogEntry::running_guests`]).
//! - **runtime files**: every change of `guests.json` rewrites what a real node's
//!   inspector reads to tell whether a guest runs (see [`crate::simformat`]): the command
//!   sockets in `/proc/net/unix`, QEMU pid files and processes, and LXC cgroups — which
//!   **stay behind after a container stops** (pve-container `src/PVE/LXC.pm`, the comment
//!   in `check_running` and `src/lxc-pve-prestart-hook`: cgroups are often left over, so
//!   `check_running` asks the command socket). `collect` then decides from those files
//!   (`parse::running`), not from `guests.json`.
//! - **ceph-set/unset-noout**, **ha-disarm/arm**: the marker files. The noout actions
//!   answer with the flag as the marker then reads (`ActionOutcome::ceph`), as the real
//!   executor's read-only `ceph osd dump` probe does. Where a fixture models
//!   the node's HA resource manager ([`LRM_WATCHDOG`] exists), `ha-disarm` has it release
//!   its watchdog one HA delay later (at once without a delay), if HA is still disarmed
//!   then, and `ha-arm` has it take the watchdog again (pve-ha-manager
//!   `src/PVE/HA/LRM.pm` `work`: the LRM gives up its watchdog asynchronously, on its own
//!   round after it sees the disarm). The simulated cluster has no shared `/etc/pve`: only
//!   the node that received `ha-disarm` sees it, so only its LRM releases.
//! - **OSDs come back some seconds after the node** when the executor has an OSD delay
//!   ([`SimulatedExecutor::with_osd_delay`], `run --simulate --sim-osd-delay-secs S`): a
//!   boot writes [`OSDS_DOWN`] with the time the node's OSDs start, and until then `inspect`
//!   reads them down (and still in: `noout` keeps them in). On a real node the
//!   `ceph-osd@<id>` systemd units (ceph `systemd/ceph-osd@.service`) start after boot, and
//!   the OSD map marks each OSD up only once it has booted and reported to the monitors
//!   (ceph `src/osd/OSD.cc`, `OSD::start_boot`). Proxmox's own procedure (pve-docs
//!   `pveceph.adoc`, section "Shutdown {pve} + Ceph HCI Cluster", `[[pveceph_shutdown]]`)
//!   confirms that all Ceph services are up and running before `ceph osd unset noout`.
//! - **guest-stop/start/migrate**: `guests.json` (`migrated` with `location: TARGET`). As
//!   Proxmox, starting a running non-HA guest fails ("VM N already running", qemu-server
//!   `src/PVE/QemuServer.pm` `vm_start_nolock`; "CT N already running", pve-container
//!   `src/PVE/API2/LXC/Status.pm` `vm_start`), and so does shutting down a stopped
//!   container ("CT N not running", `vm_shutdown` there), so a double start shows in the
//!   action log as a failure.
//!
//! **HA is asynchronous** when the executor has an HA delay ([`SimulatedExecutor::with_ha_delay`],
//! `run --simulate --sim-ha-delay-secs S`; without one, HA guests change at once as above):
//! - `qm shutdown`/`pct shutdown` and `qm start`/`pct start` of an **HA-managed** guest only
//!   queue a request and exit 0 (qemu-server `src/PVE/API2/Qemu.pm` `vm_shutdown` /
//!   `vm_start`, pve-container `src/PVE/API2/LXC/Status.pm` `vm_shutdown` / `vm_start`:
//!   for an HA resource they run `ha-manager crm-command stop` or set the requested state
//!   and return; `--forceStop` is ignored). The request is written to
//!   [`HA_REQUESTS`] and takes effect on the cluster manager's round `S` seconds later
//!   (pve-ha-manager `src/PVE/HA/Manager.pm` `update_crm_commands`, then `manage`).
//! - `ha-disarm` (`disarm-ha freeze`) **drops** every pending request (pve-ha-manager
//!   `src/PVE/HA/Manager.pm`, the disarm handling of `update_crm_commands`/`manage`
//!   discards queued commands while it freezes services): a stop queued just before is
//!   lost, and the guest keeps running.
//! - With the marker [`HA_CRM_IGNORES`] the CRM ignores every request (as `Manager.pm` does
//!   for a node that is not `online` or when HA is already disarmed): requests stay
//!   queued and never take effect.
//! - `ha-manager crm-command node-maintenance enable|disable` (**maintenance-on/off**) only
//!   queues the command and exits 0 (pve-ha-manager `src/PVE/CLI/ha_manager.pm`
//!   `node-maintenance-set`); `S` seconds later the CRM sets or clears the node's
//!   maintenance request and the HA guests leave or come back (`src/PVE/HA/Manager.pm`
//!   `update_crm_commands`, `next_state_started`). Enabling is ignored (consumed, no
//!   effect) while HA is disarmed, as `update_crm_commands` does.
//! - A powered-off node applies nothing.
//!
//! **ESPs are never modified.** The simulation cannot sensibly rewrite the FAT images the
//! ESP facts come from, so the fixture decides what the ESPs hold: a scenario where the ESP
//! gate passes provides images that already hold the pending kernel; a scenario where it
//! must fail provides images without it (or `refresh-fails`). `esp-synced` is a record for
//! tests and demos, not an input to `inspect`.

use super::{
    under, valid_node_name, Action, ActionOutcome, ActionRequest, Executor, ExecutorError,
    GuestKind, OutputTail, OUTPUT_MAX,
};
use super::{unit, Simulation};
use crate::parse::ceph::OsdMap;
use crate::parse::{apt_sim, boot_tool::DEFAULT_ESP_LIST as ESP_LIST, control, pve, version};
use crate::simformat::{
    qemu_cmdline, qemu_pid, GuestState, HaRequest, Pending, SimGuest, SimUnit, CEPH_NOOUT,
    ESP_SYNCED, GUESTS, HA_CRM_IGNORES, HA_DISARMED, HA_REQUESTS, LRM_WATCHDOG, LXC_CGROUP_DIR,
    MAINTENANCE, OSDS_DOWN, PENDING, POWERED_OFF, PROC_NET_UNIX, PROC_NET_UNIX_HEADER,
    QEMU_PID_DIR, REFRESH_FAILS, SIM_DIR, SIM_LISTS_FILE, UNITS,
};
use fleetward_proto::{Removal, Upgrade};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Serializes changes of a simulated node's files between the action being executed and the
/// simulated HA cluster manager applying a queued request (both read-modify-write
/// `guests.json`).
static SIM_FILES: Mutex<()> = Mutex::new(());
use std::time::{SystemTime, UNIX_EPOCH};

/// The package version of kernel release `k` (`6.14.11-1-pve` -> `6.14.11-1`).
fn kernel_version(k: &str) -> String {
    k.trim_end_matches("-pve").to_owned()
}

/// The packages a pending kernel `k` brings, with their versions: the kernel image package
/// and the meta packages that depend on it on a real node (series meta such as
/// `proxmox-kernel-6.14`, and `proxmox-default-kernel`).
fn kernel_packages(k: &str) -> Vec<(String, String)> {
    let v = kernel_version(k);
    let mut out = vec![(format!("proxmox-kernel-{k}-signed"), v.clone())];
    let series: Vec<&str> = k.split('.').take(2).collect();
    if series.len() == 2 {
        let minor: String = series[1].chars().take_while(char::is_ascii_digit).collect();
        if !minor.is_empty() {
            out.push((format!("proxmox-kernel-{}.{minor}", series[0]), v.clone()));
        }
    }
    out.push(("proxmox-default-kernel".to_owned(), v));
    out
}

/// A planned transaction: packages installed or upgraded (name, version), packages removed.
type Planned = (Vec<(String, String)>, Vec<String>);

/// One line of the action log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Milliseconds since the Unix epoch when the action started and finished.
    pub started_ms: u64,
    pub finished_ms: u64,
    pub node: String,
    pub id: String,
    pub action: Action,
    pub ok: bool,
    /// For `power-off`: the guests (`vm:100`, `ct:200`) the simulation still ran when the
    /// power-off began (the power-off then stopped them). Tests judge a shutdown by it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub running_guests: Vec<String>,
}

/// Reads an action log (missing file: empty). Lines that do not parse are an error.
pub fn read_log(path: &Path) -> Result<Vec<LogEntry>, ExecutorError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ExecutorError::Io {
                path: path.to_owned(),
                source,
            })
        }
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).map_err(|e| ExecutorError::Format {
                path: path.to_owned(),
                message: e.to_string(),
            })
        })
        .collect()
}

/// The simulated executor of node `node`, acting on the fixture root `root` and appending
/// to the action log `log`.
#[derive(Debug, Clone)]
pub struct SimulatedExecutor {
    pub node: String,
    pub root: PathBuf,
    pub log: PathBuf,
    /// How long each action takes (a real upgrade or migration takes minutes; demos and
    /// crash tests need actions that last long enough to be watched or interrupted).
    pub duration: std::time::Duration,
    /// `Some`: HA is asynchronous — HA guests' stop/start requests take effect this long
    /// after the command returned (see the module docs).
    pub ha_delay: Option<std::time::Duration>,
    /// `Some`: after a boot the node's OSDs read down this long (see the module docs).
    pub osd_delay: Option<std::time::Duration>,
}

type Say<'a> = &'a mut dyn FnMut(String);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A fresh random boot id in the kernel's format (a UUID v4).
fn new_boot_id(old: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = Sha256::new();
    h.update(old.as_bytes());
    h.update(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
            .to_le_bytes(),
    );
    h.update(std::process::id().to_le_bytes());
    h.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let mut b: [u8; 16] = [0; 16];
    b.copy_from_slice(&h.finalize()[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Serializes dpkg status stanzas (continuation lines indented by one space).
fn write_stanzas(stanzas: &[control::Stanza]) -> String {
    let mut out = String::new();
    for s in stanzas {
        for (k, v) in s {
            let mut lines = v.split('\n');
            match lines.next() {
                Some(first) if !first.is_empty() => out.push_str(&format!("{k}: {first}\n")),
                _ => out.push_str(&format!("{k}:\n")),
            }
            for l in lines {
                out.push_str(&format!(" {l}\n"));
            }
        }
        out.push('\n');
    }
    out
}

fn set_field(stanza: &mut control::Stanza, key: &str, value: &str) {
    match stanza.iter_mut().find(|(k, _)| k.eq_ignore_ascii_case(key)) {
        Some((_, v)) => *v = value.to_owned(),
        None => stanza.push((key.to_owned(), value.to_owned())),
    }
}

/// `status` without the packages `names`.
pub fn dpkg_remove(status: &str, names: &[String]) -> String {
    let stanzas: Vec<control::Stanza> = control::stanzas(status)
        .into_iter()
        .filter(|s| !control::field(s, "Package").is_some_and(|p| names.iter().any(|n| n == p)))
        .collect();
    if names.is_empty() {
        return status.to_owned();
    }
    write_stanzas(&stanzas)
}

/// `status` with `packages` (name, version) installed or upgraded.
pub fn dpkg_install(status: &str, packages: &[(String, String)]) -> String {
    let mut stanzas = control::stanzas(status);
    for (name, ver) in packages {
        match stanzas
            .iter_mut()
            .find(|s| control::field(s, "Package") == Some(name.as_str()))
        {
            Some(s) => {
                set_field(s, "Status", "install ok installed");
                set_field(s, "Version", ver);
            }
            None => stanzas.push(
                [
                    ("Package", name.as_str()),
                    ("Status", "install ok installed"),
                    ("Priority", "optional"),
                    ("Section", "admin"),
                    ("Architecture", "amd64"),
                    ("Version", ver.as_str()),
                    ("Description", &format!("{name}\nsimulated package")),
                ]
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ),
        }
    }
    write_stanzas(&stanzas)
}

fn io<T>(path: &Path, r: std::io::Result<T>) -> Result<T, String> {
    r.map_err(|e| format!("{}: {e}", path.display()))
}

impl SimulatedExecutor {
    pub fn new(node: impl Into<String>, root: impl Into<PathBuf>, log: impl Into<PathBuf>) -> Self {
        SimulatedExecutor {
            node: node.into(),
            root: root.into(),
            log: log.into(),
            duration: std::time::Duration::ZERO,
            ha_delay: None,
            osd_delay: None,
        }
    }

    /// After a boot the node's OSDs read down for `d` (the `osds-down` marker).
    pub fn with_osd_delay(mut self, d: std::time::Duration) -> Self {
        self.osd_delay = Some(d);
        self
    }

    /// HA requests take effect `d` after the command that queued them returned.
    pub fn with_ha_delay(mut self, d: std::time::Duration) -> Self {
        self.ha_delay = Some(d);
        self
    }

    /// The queued HA requests (none if the file is missing).
    pub fn ha_requests(&self) -> Result<Vec<HaRequest>, String> {
        let path = self.sim(HA_REQUESTS);
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    fn save_ha_requests(&self, reqs: &[HaRequest]) -> Result<(), String> {
        if reqs.is_empty() {
            self.remove(&self.sim(HA_REQUESTS))?;
            return Ok(());
        }
        let json = serde_json::to_string_pretty(reqs).map_err(|e| e.to_string())?;
        self.write(&self.sim(HA_REQUESTS), &json)
    }

    /// Queues an HA request for `sid` (`started`/`stopped`) and has the simulated cluster
    /// manager apply it after `delay`, unless it was dropped (disarm) or is ignored.
    fn queue_ha_request(
        &self,
        g: &SimGuest,
        state: GuestState,
        delay: std::time::Duration,
        say: Say,
    ) -> Result<(), String> {
        self.queue(
            HaRequest {
                id: String::new(),
                vmid: g.vmid,
                kind: g.kind,
                state,
                maintenance: None,
            },
            delay,
        )?;
        let word = if state == GuestState::Running {
            "started"
        } else {
            "stopped"
        };
        say(format!(
            "{} is HA-managed: requested state '{word}' queued for the HA manager",
            g.sid()
        ));
        Ok(())
    }

    /// Adds `req` (its id given here) to the queued HA requests and has the simulated
    /// cluster manager apply it `delay` later.
    fn queue(&self, mut req: HaRequest, delay: std::time::Duration) -> Result<(), String> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        req.id = format!(
            "{}-{}-{}",
            now_ms(),
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let id = req.id.clone();
        let mut reqs = self.ha_requests()?;
        reqs.push(req);
        self.save_ha_requests(&reqs)?;
        self.apply_later(id, delay);
        Ok(())
    }

    /// Queues `ha-manager crm-command node-maintenance enable|disable` for this node: the
    /// command exits 0 at once and the cluster manager acts on its next round, `delay` later
    /// (pve-ha-manager `src/PVE/CLI/ha_manager.pm` `node-maintenance-set` only queues the
    /// CRM command; `src/PVE/HA/Manager.pm` `update_crm_commands` applies it).
    fn queue_maintenance(
        &self,
        on: bool,
        delay: std::time::Duration,
        say: Say,
    ) -> Result<(), String> {
        self.queue(
            HaRequest {
                id: String::new(),
                vmid: 0,
                kind: GuestKind::Qemu,
                state: GuestState::Stopped,
                maintenance: Some(on),
            },
            delay,
        )?;
        say(format!(
            "crm-command {}-node-maintenance {} queued for the HA manager",
            if on { "enable" } else { "disable" },
            self.node
        ));
        Ok(())
    }

    /// The simulated cluster manager's round for request `id`, `delay` from now.
    fn apply_later(&self, id: String, delay: std::time::Duration) {
        let me = self.clone();
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            let _guard = SIM_FILES.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = me.apply_ha_request(&id) {
                tracing::warn!(error = %e, "simulated HA manager could not apply a request");
            }
        });
    }

    /// The simulated CRM's round for request `id` (called with [`SIM_FILES`] held).
    fn apply_ha_request(&self, id: &str) -> Result<(), String> {
        if self.sim(HA_CRM_IGNORES).exists() || self.powered_off() {
            return Ok(()); // ignored: stays queued (or the node is off)
        }
        let mut reqs = self.ha_requests()?;
        let Some(pos) = reqs.iter().position(|r| r.id == id) else {
            return Ok(()); // dropped (disarm) meanwhile
        };
        let req = reqs.remove(pos);
        if let Some(on) = req.maintenance {
            // `update_crm_commands`: enabling maintenance is ignored while HA is disarmed
            // (consumed, logged, no effect); otherwise the node's request is set or cleared
            // and the services move (`next_state_started` migrates them off a node in
            // maintenance, back to it when it leaves).
            self.save_ha_requests(&reqs)?;
            if on && self.sim(HA_DISARMED).exists() {
                tracing::info!(node = %self.node, "simulated HA manager: ignoring maintenance command, HA is disarmed");
                return Ok(());
            }
            return self.maintenance(on, &mut |_| {});
        }
        // The request leaves the queue first, then takes effect (an observer that sees the
        // effect never sees the request still pending).
        self.save_ha_requests(&reqs)?;
        let mut guests = self.guests()?;
        if let Some(g) = guests
            .iter_mut()
            .find(|g| g.vmid == req.vmid && g.kind == req.kind && g.state != GuestState::Migrated)
        {
            g.state = req.state;
            g.ha_stopped = req.state == GuestState::Stopped;
            self.save_guests(&guests)?;
        }
        Ok(())
    }

    /// Each action takes `d` before it acts.
    pub fn with_duration(mut self, d: std::time::Duration) -> Self {
        self.duration = d;
        self
    }

    /// A node path (`/boot/...`) under the root.
    pub fn path(&self, node_path: &str) -> PathBuf {
        under(&self.root, node_path)
    }

    fn sim(&self, name: &str) -> PathBuf {
        self.path(SIM_DIR).join(name)
    }

    /// Writes `text` to `path` atomically (a temporary file renamed over it), so `collect`
    /// reading the node meanwhile sees the old or the new file, never a half-written one.
    fn write(&self, path: &Path, text: &str) -> Result<(), String> {
        static TMP: AtomicU64 = AtomicU64::new(0);
        if let Some(dir) = path.parent() {
            io(dir, fs::create_dir_all(dir))?;
        }
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(
            ".tmp-{}-{}",
            std::process::id(),
            TMP.fetch_add(1, Ordering::Relaxed)
        ));
        let tmp = PathBuf::from(tmp);
        io(&tmp, fs::write(&tmp, text))?;
        io(path, fs::rename(&tmp, path))
    }

    fn remove(&self, path: &Path) -> Result<bool, String> {
        match fs::remove_file(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    fn first_line(&self, node_path: &str) -> Option<String> {
        fs::read_to_string(self.path(node_path))
            .ok()?
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(String::from)
    }

    /// The guests of `guests.json` (none if the file is missing).
    pub fn guests(&self) -> Result<Vec<SimGuest>, String> {
        let path = self.sim(GUESTS);
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    fn save_guests(&self, guests: &[SimGuest]) -> Result<(), String> {
        let json = serde_json::to_string_pretty(guests).map_err(|e| e.to_string())?;
        self.write(&self.sim(GUESTS), &json)?;
        self.write_runtime(guests)
    }

    /// Writes the runtime files of `guests.json` (see the module docs) when the node has
    /// simulated guests; a root without `guests.json` is left alone. Called when a
    /// simulated agent starts, so a fixture's runtime follows its `guests.json`.
    pub fn sync_runtime(&self) -> Result<(), ExecutorError> {
        if !self.sim(GUESTS).exists() {
            return Ok(());
        }
        self.guests()
            .and_then(|g| self.write_runtime(&g))
            .map_err(|message| ExecutorError::Format {
                path: self.root.clone(),
                message,
            })
    }

    /// The node's runtime files from `guests`: what `collect` reads on a real node to tell
    /// whether a guest runs (`parse::running`). A running container has its abstract
    /// command socket in `/proc/net/unix` and a cgroup; a stopped one has no socket, and
    /// its cgroup directory, once created, **stays behind** (empty) until the next boot —
    /// pve-container `src/PVE/LXC.pm` decides by the socket in `check_running` because
    /// cgroups are often left behind after a stop (the comment there and
    /// `src/lxc-pve-prestart-hook`). A running VM has qemu-server's pid file naming a
    /// process whose command line is that VM's QEMU (`PVE/QemuServer/Helpers.pm`
    /// `vm_running_locally`); a stopped VM has neither.
    fn write_runtime(&self, guests: &[SimGuest]) -> Result<(), String> {
        self.write(
            &self.path("/proc/1/stat"),
            "1 (systemd) S 0 1 1 0 -1 4194560\n",
        )?;
        let mut unix = format!("{PROC_NET_UNIX_HEADER}\n");
        for g in guests {
            let running = g.state == GuestState::Running;
            match g.kind {
                GuestKind::Lxc => {
                    let cgroup = self.path(&format!("{LXC_CGROUP_DIR}/{}", g.vmid));
                    let procs = cgroup.join("cgroup.procs");
                    if running {
                        unix.push_str(&format!(
                            "0000000000000000: 00000002 00000000 00010000 0001 01 {} @/var/lib/lxc/{}/command\n",
                            200_000 + u64::from(g.vmid),
                            g.vmid
                        ));
                        self.write(&procs, &format!("{}\n", qemu_pid(g.vmid)))?;
                    } else if cgroup.is_dir() {
                        self.write(&procs, "")?; // left behind, empty
                    }
                }
                GuestKind::Qemu => {
                    let pid = qemu_pid(g.vmid);
                    let pidfile = self.path(&format!("{QEMU_PID_DIR}/{}.pid", g.vmid));
                    let proc_dir = self.path(&format!("/proc/{pid}"));
                    if running {
                        self.write(&pidfile, &format!("{pid}\n"))?;
                        io(&proc_dir, fs::create_dir_all(&proc_dir))?;
                        let cmdline = proc_dir.join("cmdline");
                        io(&cmdline, fs::write(&cmdline, qemu_cmdline(g.vmid)))?;
                        self.write(&proc_dir.join("stat"), &format!("{pid} (kvm) S 1 {pid}\n"))?;
                    } else {
                        self.remove(&pidfile)?;
                        match fs::remove_dir_all(&proc_dir) {
                            Ok(()) => {}
                            Err(e) if e.kind() == ErrorKind::NotFound => {}
                            Err(e) => return Err(format!("{}: {e}", proc_dir.display())),
                        }
                    }
                }
            }
        }
        self.write(&self.path(PROC_NET_UNIX), &unix)
    }

    /// What pve-guests' `startall` reads of guest `g`: `onboot` and `startup` from its
    /// configuration on this node (`/etc/pve/nodes/<node>/{qemu-server,lxc}/<vmid>.conf`),
    /// else from `guests.json` (`order`, no `up`).
    fn boot_settings(&self, g: &SimGuest) -> (bool, Option<u32>, Option<u32>) {
        let sub = match g.kind {
            GuestKind::Qemu => "qemu-server",
            GuestKind::Lxc => "lxc",
        };
        let path = self.path(&format!(
            "/etc/pve/nodes/{}/{sub}/{}.conf",
            self.node, g.vmid
        ));
        match fs::read_to_string(path) {
            Ok(text) => {
                let c = pve::guest_conf(&text);
                (c.onboot, c.startup.order, c.startup.up)
            }
            Err(_) => (g.onboot, g.order, None),
        }
    }

    fn installed_kernels(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.path("/boot"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix("vmlinuz-"))
                    .map(String::from)
            })
            .collect();
        v.sort_by(|a, b| version::compare(b, a));
        v
    }

    fn marker(&self, name: &str, on: bool, say: Say) -> Result<(), String> {
        let path = self.sim(name);
        if on {
            self.write(&path, &format!("{}\n", self.node))?;
            say(format!("{name}: set"));
        } else {
            let was = self.remove(&path)?;
            say(format!(
                "{name}: {}",
                if was { "cleared" } else { "was not set" }
            ));
        }
        Ok(())
    }

    /// The simulated LRM's watchdog ([`LRM_WATCHDOG`], only where a fixture models it):
    /// after `ha-disarm` the LRM releases it on its next round, one HA delay later (at once
    /// without a delay) and only if HA is still disarmed then; after `ha-arm` it takes it
    /// again. pve-ha-manager `src/PVE/HA/LRM.pm` `work`: an `active` LRM whose mode became
    /// `disarm` releases its agent lock and closes its watchdog once no worker runs.
    fn lrm_watchdog(&self, hold: bool, say: Say) -> Result<(), String> {
        let path = self.sim(LRM_WATCHDOG);
        if !path.exists() {
            return Ok(());
        }
        if hold {
            say("LRM: watchdog active".into());
            return self.write(&path, "active\n");
        }
        let release = |me: &SimulatedExecutor| -> Result<(), String> {
            if me.sim(HA_DISARMED).exists() && !me.powered_off() {
                me.write(&me.sim(LRM_WATCHDOG), "released\n")?;
            }
            Ok(())
        };
        match self.ha_delay {
            None => {
                say("LRM: watchdog released".into());
                release(self)
            }
            Some(delay) => {
                say("LRM: releases its watchdog on its next round".into());
                let me = self.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(delay);
                    let _guard = SIM_FILES.lock().unwrap_or_else(|p| p.into_inner());
                    if let Err(e) = release(&me) {
                        tracing::warn!(error = %e, "simulated LRM could not release its watchdog");
                    }
                });
                Ok(())
            }
        }
    }

    fn maintenance(&self, on: bool, say: Say) -> Result<(), String> {
        self.marker(MAINTENANCE, on, say)?;
        let mut guests = self.guests()?;
        let mut moved = Vec::new();
        for g in guests.iter_mut().filter(|g| g.ha) {
            if on && g.state == GuestState::Running {
                g.state = GuestState::Migrated;
                g.location = None;
                moved.push(g.sid());
            } else if !on && g.state == GuestState::Migrated && g.location.is_none() {
                g.state = GuestState::Running;
                moved.push(g.sid());
            }
        }
        if !moved.is_empty() {
            let dir = if on { "leave" } else { "return to" };
            say(format!(
                "HA services {dir} {}: {}",
                self.node,
                moved.join(", ")
            ));
            self.save_guests(&guests)?;
        }
        Ok(())
    }

    /// The transaction the next dist-upgrade performs, as the real apt would compute it
    /// after the rollout's `apt-update` (`pending.json` is the mirror): the packages it
    /// installs or upgrades, with versions (held packages kept back; the pending kernel's
    /// image package, NEW, and its meta packages where installed), and the installed
    /// packages it removes. The one source of both [`Executor::simulate_upgrade`]'s answer
    /// and `dist_upgrade`, so the plan and the upgrade agree.
    fn planned(
        &self,
        pending: &Pending,
        installed: &[control::Installed],
    ) -> Result<Planned, String> {
        let mut packages: Vec<(String, String)> = pending
            .packages
            .iter()
            .filter(|p| !pending.held.contains(&p.package))
            .map(|p| (p.package.clone(), p.version.clone()))
            .collect();
        if let Some(k) = &pending.kernel {
            if k.is_empty() || k.contains(['/', '\0', '\n']) || k.starts_with('.') {
                return Err(format!("pending.json: invalid kernel release {k:?}"));
            }
            for (i, (name, v)) in kernel_packages(k).into_iter().enumerate() {
                // The image package is new; meta packages move where installed.
                let wanted = i == 0 || installed.iter().any(|p| p.name == name);
                if wanted && !packages.iter().any(|(n, _)| *n == name) {
                    packages.push((name, v));
                }
            }
        }
        let removed = pending
            .remove
            .iter()
            .filter(|r| installed.iter().any(|p| p.name == **r))
            .cloned()
            .collect();
        Ok((packages, removed))
    }

    fn dpkg_status(&self) -> Result<String, String> {
        let status_path = self.path("/var/lib/dpkg/status");
        match fs::read_to_string(&status_path) {
            Ok(t) => Ok(t),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(format!("{}: {e}", status_path.display())),
        }
    }

    /// What apt's simulation would print for this node now (see [`Self::planned`]).
    pub fn simulation(&self) -> Result<Simulation, String> {
        let Some(pending) = self.pending()? else {
            return Ok(Simulation::default());
        };
        let installed = control::dpkg_installed(&self.dpkg_status()?);
        let (packages, removed) = self.planned(&pending, &installed)?;
        let mut sim = Simulation::default();
        for (name, v) in packages {
            match installed.iter().find(|p| p.name == name) {
                Some(p) if p.version == v => {}
                Some(p) => sim.upgrades.push(Upgrade {
                    package: name,
                    installed: p.version.clone(),
                    candidate: v,
                }),
                None => sim.new.push(Upgrade {
                    package: name,
                    installed: String::new(),
                    candidate: v,
                }),
            }
        }
        for name in removed {
            let version = installed
                .iter()
                .find(|p| p.name == name)
                .map(|p| p.version.clone());
            sim.removed.push(Removal {
                package: name,
                version,
                essential: false,
            });
        }
        sim.kept_back = pending
            .held
            .iter()
            .filter(|h| installed.iter().any(|p| p.name == **h))
            .cloned()
            .collect();
        Ok(sim)
    }

    fn dist_upgrade(&self, say: Say) -> Result<(), String> {
        let Some(pending) = self.pending()? else {
            say("0 upgraded, 0 newly installed".into());
            return Ok(());
        };
        // As the real executor: apt is asked right before, and protected removals refused.
        let sim = self.simulation()?;
        let running = self.first_line("/proc/sys/kernel/osrelease");
        let bad = apt_sim::protected_removals(&sim.removed, running.as_deref());
        if !bad.is_empty() {
            return Err(format!(
                "refusing apt-dist-upgrade (upgrade.removes-protected): apt would remove {}",
                bad.join(", ")
            ));
        }
        let status = self.dpkg_status()?;
        let installed = control::dpkg_installed(&status);
        let (packages, removed) = self.planned(&pending, &installed)?;
        if let Some(k) = &pending.kernel {
            for (prefix, what) in [
                ("vmlinuz", "kernel image"),
                ("initrd.img", "initramfs"),
                ("config", "config"),
            ] {
                let path = self.path(&format!("/boot/{prefix}-{k}"));
                self.write(&path, &format!("simulated {what} {k}\n"))?;
            }
            say(format!("installed kernel {k} into /boot"));
            if self.path(ESP_LIST).exists() {
                say(format!(
                    "ESP sync is configured: the kernel hook would copy {k} to the ESPs \
                     (the simulation leaves ESP images unchanged)"
                ));
            }
        }
        let status = dpkg_remove(&dpkg_install(&status, &packages), &removed);
        self.write(&self.path("/var/lib/dpkg/status"), &status)?;
        for n in &removed {
            say(format!("Removing {n} ..."));
        }
        for (n, v) in &packages {
            say(format!("Setting up {n} ({v}) ..."));
        }
        for h in &sim.kept_back {
            say(format!("{h} kept back (held)"));
        }
        say(format!(
            "{} upgraded or newly installed, {} removed",
            packages.len(),
            removed.len()
        ));
        self.remove(&self.sim(PENDING))?;
        Ok(())
    }

    /// What `pending.json` says, or `None` when nothing is pending.
    fn pending(&self) -> Result<Option<Pending>, String> {
        let path = self.sim(PENDING);
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Writes [`SIM_LISTS_FILE`]: what the mirror offers (see the module docs).
    fn apt_update(&self, say: Say) -> Result<(), String> {
        let pending = self.pending()?.unwrap_or_default();
        let mut offered: Vec<(String, String)> = pending
            .packages
            .iter()
            .map(|p| (p.package.clone(), p.version.clone()))
            .collect();
        if let Some(k) = &pending.kernel {
            if k.is_empty() || k.contains(['/', '\0', '\n']) || k.starts_with('.') {
                return Err(format!("pending.json: invalid kernel release {k:?}"));
            }
            for (name, v) in kernel_packages(k) {
                if !offered.iter().any(|(n, _)| *n == name) {
                    offered.push((name, v));
                }
            }
        }
        let mut text = String::new();
        for (name, v) in &offered {
            if name.contains(['\n', ':']) || v.contains('\n') {
                return Err(format!("pending.json: invalid package {name:?} {v:?}"));
            }
            text.push_str(&format!(
                "Package: {name}\nVersion: {v}\nArchitecture: amd64\n\n"
            ));
        }
        self.write(&self.path(SIM_LISTS_FILE), &text)?;
        say("Hit:1 http://download.proxmox.com/debian/pve stable InRelease (simulated)".into());
        say(format!(
            "Reading package lists... Done ({} packages offered by the simulation)",
            offered.len()
        ));
        Ok(())
    }

    fn boot_refresh(&self, say: Say) -> Result<(), String> {
        if self.sim(REFRESH_FAILS).exists() {
            return Err("simulated failure: proxmox-boot-tool refresh failed".into());
        }
        if !self.path(ESP_LIST).exists() {
            say(format!("No {ESP_LIST} found, skipping ESP sync."));
            return Ok(());
        }
        let kernels = self.installed_kernels();
        let json = serde_json::to_string(&kernels).map_err(|e| e.to_string())?;
        self.write(&self.sim(ESP_SYNCED), &json)?;
        say(format!(
            "Copying and configuring kernels on the ESPs (simulated, recorded in esp-synced): {}",
            kernels.join(", ")
        ));
        Ok(())
    }

    /// Boots the node: next kernel, new boot id, guests per `onboot`.
    fn boot(&self, say: Say) -> Result<(), String> {
        let pin = self.first_line("/etc/kernel/next-boot-pin");
        let next = pin
            .clone()
            .or_else(|| self.first_line("/etc/kernel/proxmox-boot-pin"))
            .or_else(|| self.installed_kernels().into_iter().next())
            .ok_or("no kernel in /boot: the node would not boot")?;
        if !self.path(&format!("/boot/vmlinuz-{next}")).exists() {
            return Err(format!("pinned kernel {next} is not in /boot"));
        }
        if pin.is_some() {
            self.remove(&self.path("/etc/kernel/next-boot-pin"))?;
        }
        let boot_id = new_boot_id(
            &self
                .first_line("/proc/sys/kernel/random/boot_id")
                .unwrap_or_default(),
        );
        self.write(
            &self.path("/proc/sys/kernel/osrelease"),
            &format!("{next}\n"),
        )?;
        self.write(
            &self.path("/proc/sys/kernel/random/boot_id"),
            &format!("{boot_id}\n"),
        )?;
        self.remove(&self.path("/run/reboot-required"))?;
        self.remove(&self.sim(POWERED_OFF))?;
        say(format!("booted kernel {next}, boot id {boot_id}"));
        // A fresh boot: no process, no pid file and no cgroup of the last boot is left.
        for dir in [LXC_CGROUP_DIR, QEMU_PID_DIR] {
            let dir = self.path(dir);
            match fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(format!("{}: {e}", dir.display())),
            }
        }
        match self.osd_delay.filter(|d| !d.is_zero()) {
            // The ceph-osd units start after the node is up: down (still in) until then.
            Some(d) if self.path("/var/lib/ceph/osd").is_dir() => {
                let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
                let until = now_ms().saturating_add(ms);
                self.write(&self.sim(OSDS_DOWN), &format!("{until}\n"))?;
                say(format!("Ceph OSDs start in {:.1} s", d.as_secs_f64()));
            }
            _ => {
                self.remove(&self.sim(OSDS_DOWN))?;
            }
        }
        let mut guests = self.guests()?;
        if guests.is_empty() {
            return Ok(());
        }
        let mut ha_started = Vec::new();
        for g in guests
            .iter_mut()
            .filter(|g| g.state != GuestState::Migrated)
        {
            // HA starts its guests itself, by their requested state (`started` unless
            // stopped through HA), not pve-guests.
            let ha_restart = g.ha && !g.ha_stopped;
            g.state = GuestState::Stopped;
            if ha_restart {
                g.state = GuestState::Running;
                ha_started.push(g.sid());
            }
        }
        if !ha_started.is_empty() {
            say(format!("started by HA: {}", ha_started.join(", ")));
        }
        self.startall(&mut guests, say);
        self.save_guests(&guests)
    }

    /// `pve-guests.service` at boot: pve-manager `PVE/API2/Nodes.pm` `startall` (through
    /// `get_start_stop_list`): guests with `onboot` set, **HA-managed guests left out** (HA
    /// starts those), ascending `startup: order=` (unordered last), then by VMID; a guest
    /// already running is skipped (`check_running`), and after each start startall waits
    /// its `up=` delay. The simulated boot is instantaneous: the order is kept, the delays
    /// are named in the output but not waited, and every start is done before the agent's
    /// first report of the new boot — as on a real node, where `fleetward-agent.service` is
    /// ordered after the oneshot `pve-guests.service` (packaging/systemd), so its first
    /// report comes after startall has worked through its `up=` delays.
    fn startall(&self, guests: &mut [SimGuest], say: Say) {
        let mut list: Vec<(u32, u32, Option<u32>, usize)> = guests
            .iter()
            .enumerate()
            .filter(|(_, g)| !g.ha && g.state != GuestState::Migrated)
            .filter_map(|(i, g)| {
                let (onboot, order, up) = self.boot_settings(g);
                onboot.then_some((order.unwrap_or(u32::MAX), g.vmid, up, i))
            })
            .collect();
        list.sort_unstable();
        let mut started = Vec::new();
        for (_, _, up, i) in list {
            let g = &mut guests[i];
            if g.state == GuestState::Running {
                continue;
            }
            g.state = GuestState::Running;
            started.push(match up {
                Some(s) if s > 0 => format!("{} (up={s}, not waited)", g.sid()),
                _ => g.sid(),
            });
        }
        if !started.is_empty() {
            say(format!(
                "pve-guests startall: started {}",
                started.join(", ")
            ));
        }
    }

    /// The node was powered off (`power-off` ran and no boot since).
    pub fn powered_off(&self) -> bool {
        self.sim(POWERED_OFF).exists()
    }

    /// Powers a node on after `power-off` (for the startup side of tests and demos).
    pub fn power_on(&self) -> Result<(), ExecutorError> {
        self.boot(&mut |_| {})
            .map_err(|message| ExecutorError::Format {
                path: self.root.clone(),
                message,
            })
    }

    /// The guests this node runs now (`vm:100`, `ct:200`).
    pub fn running_guests(&self) -> Vec<String> {
        self.guests()
            .unwrap_or_default()
            .iter()
            .filter(|g| g.state == GuestState::Running)
            .map(SimGuest::sid)
            .collect()
    }

    fn power_off(&self, say: Say) -> Result<(), String> {
        let mut guests = self.guests()?;
        for g in guests.iter_mut().filter(|g| g.state == GuestState::Running) {
            g.state = GuestState::Stopped;
            say(format!("{} stopped", g.sid()));
        }
        if !guests.is_empty() {
            self.save_guests(&guests)?;
        }
        self.marker(POWERED_OFF, true, say)
    }

    fn guest(
        &self,
        vmid: u32,
        kind: GuestKind,
        say: Say,
        change: GuestChange,
    ) -> Result<(), String> {
        let mut guests = self.guests()?;
        let g = guests
            .iter_mut()
            .find(|g| g.vmid == vmid && g.kind == kind)
            .ok_or_else(|| format!("no {kind:?} guest {vmid} on {}", self.node))?;
        if g.state == GuestState::Migrated {
            return Err(format!("{} is not on {}", g.sid(), self.node));
        }
        let sid = g.sid();
        if let (true, Some(delay)) = (g.ha, self.ha_delay) {
            let want = match change {
                GuestChange::Stop { .. } => Some(GuestState::Stopped),
                GuestChange::Start => Some(GuestState::Running),
                GuestChange::Migrate(_) => None,
            };
            if let Some(want) = want {
                let g = g.clone();
                return self.queue_ha_request(&g, want, delay, say);
            }
        }
        // Proxmox refuses to start a running guest and to shut down a stopped container
        // (qemu-server `src/PVE/QemuServer.pm` `vm_start_nolock`: "VM N already running";
        // pve-container `src/PVE/API2/LXC/Status.pm` `vm_start` / `vm_shutdown`: "CT N
        // already running" / "CT N not running"). HA-managed guests only get a requested
        // state, which is no error.
        if !g.ha {
            match (&change, g.kind, g.state) {
                (GuestChange::Start, GuestKind::Qemu, GuestState::Running) => {
                    return Err(format!("VM {vmid} already running"));
                }
                (GuestChange::Start, GuestKind::Lxc, GuestState::Running) => {
                    return Err(format!("CT {vmid} already running"));
                }
                (GuestChange::Stop { .. }, GuestKind::Lxc, GuestState::Stopped) => {
                    return Err(format!("CT {vmid} not running"));
                }
                _ => {}
            }
        }
        match change {
            GuestChange::Stop { force } => {
                say(match (g.state, force) {
                    (GuestState::Stopped, _) => format!("{sid} is already stopped"),
                    (_, true) => format!("{sid} shut down (force-stop allowed)"),
                    _ => format!("{sid} shut down"),
                });
                g.state = GuestState::Stopped;
                g.ha_stopped = g.ha;
            }
            GuestChange::Start => {
                say(match g.state {
                    GuestState::Running => format!("{sid} is already running"),
                    _ => format!("{sid} started"),
                });
                g.state = GuestState::Running;
                g.ha_stopped = false;
            }
            GuestChange::Migrate(target) => {
                if target == self.node {
                    return Err(format!("{sid}: target {target} is this node"));
                }
                say(format!("{sid} migrated to {target}"));
                g.state = GuestState::Migrated;
                g.location = Some(target);
            }
        }
        self.save_guests(&guests)
    }

    fn apply(&self, action: &Action, say: Say) -> Result<(), String> {
        valid_node_name(&self.node)?;
        action.validate()?;
        match action {
            Action::MaintenanceOn | Action::MaintenanceOff => {
                let on = *action == Action::MaintenanceOn;
                match self.ha_delay {
                    Some(delay) => self.queue_maintenance(on, delay, say),
                    None => self.maintenance(on, say),
                }
            }
            Action::WaitGuestsMigrated { .. } => {
                let left: Vec<String> = self
                    .guests()?
                    .iter()
                    .filter(|g| g.ha && g.state == GuestState::Running)
                    .map(SimGuest::sid)
                    .collect();
                if left.is_empty() {
                    say(format!("no HA service left on {}", self.node));
                    Ok(())
                } else {
                    Err(format!(
                        "HA services still on {}: {}",
                        self.node,
                        left.join(", ")
                    ))
                }
            }
            Action::AptUpdate => self.apt_update(say),
            Action::AptDistUpgrade => self.dist_upgrade(say),
            Action::BootRefresh => self.boot_refresh(say),
            Action::CephSetNoout => self.marker(CEPH_NOOUT, true, say),
            Action::CephUnsetNoout => self.marker(CEPH_NOOUT, false, say),
            Action::HaDisarm => {
                let dropped = self.ha_requests()?;
                if !dropped.is_empty() {
                    say(format!(
                        "disarm-ha freeze: {} pending HA request(s) discarded",
                        dropped.len()
                    ));
                    self.save_ha_requests(&[])?;
                }
                self.marker(HA_DISARMED, true, say)?;
                self.lrm_watchdog(false, say)
            }
            Action::HaArm => {
                self.marker(HA_DISARMED, false, say)?;
                self.lrm_watchdog(true, say)
            }
            Action::GuestStop {
                vmid, kind, force, ..
            } => self.guest(*vmid, *kind, say, GuestChange::Stop { force: *force }),
            Action::GuestStart { vmid, kind } => self.guest(*vmid, *kind, say, GuestChange::Start),
            Action::GuestMigrate { vmid, kind, target } => {
                self.guest(*vmid, *kind, say, GuestChange::Migrate(target.clone()))
            }
            Action::Reboot => self.boot(say),
            Action::PowerOff => self.power_off(say),
        }
    }

    fn append_log(&self, entry: &LogEntry) -> Result<(), String> {
        let mut line = serde_json::to_string(entry).map_err(|e| e.to_string())?;
        line.push('\n');
        if let Some(dir) = self.log.parent().filter(|d| !d.as_os_str().is_empty()) {
            io(dir, fs::create_dir_all(dir))?;
        }
        let mut f = io(
            &self.log,
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log),
        )?;
        // One write per line, so concurrent writers never interleave within a line.
        io(&self.log, f.write_all(line.as_bytes()))
    }
}

enum GuestChange {
    Stop { force: bool },
    Start,
    Migrate(String),
}

impl SimulatedExecutor {
    fn unit_path(&self, id: &str) -> Result<PathBuf, String> {
        Ok(self
            .sim(UNITS)
            .join(format!("{}.json", unit::unit_name(id)?)))
    }

    fn save_unit(&self, u: &SimUnit) -> Result<(), String> {
        let json = serde_json::to_string(u).map_err(|e| e.to_string())?;
        self.write(&self.unit_path(&u.id)?, &json)
    }

    /// Runs `req` as its simulated unit (see [`crate::simformat::SimUnit`]): the unit is
    /// recorded when it starts, the action takes its duration (counted from `started_ms`,
    /// so a unit resumed after an agent restart only waits for what is left) and is applied
    /// once, then the unit records its result.
    fn run_unit(
        &self,
        req: &ActionRequest,
        started_ms: u64,
        out: &mut dyn FnMut(&str),
    ) -> ActionOutcome {
        let mut tail = OutputTail::new(OUTPUT_MAX - 256);
        let mut unit = SimUnit {
            id: req.id.clone(),
            action: req.action.clone(),
            started_ms,
            ok: None,
            output: String::new(),
        };
        let unit_saved = self.save_unit(&unit);
        let ok = {
            let mut say = |line: String| {
                out(&line);
                tail.push_line(&line);
            };
            if let Err(e) = &unit_saved {
                say(format!("warning: cannot record the simulated unit: {e}"));
            }
            say(format!("simulated {} on {}", req.action.name(), self.node));
            let elapsed = std::time::Duration::from_millis(now_ms().saturating_sub(started_ms));
            std::thread::sleep(self.duration.saturating_sub(elapsed));
            let mut running_guests = Vec::new();
            let result = {
                let _guard = SIM_FILES.lock().unwrap_or_else(|p| p.into_inner());
                if req.action == Action::PowerOff {
                    running_guests = self.running_guests();
                }
                self.apply(&req.action, &mut say)
            };
            if let Err(e) = &result {
                say(format!("error: {e}"));
            }
            let ok = result.is_ok();
            let entry = LogEntry {
                started_ms,
                finished_ms: now_ms(),
                node: self.node.clone(),
                id: req.id.clone(),
                action: req.action.clone(),
                ok,
                running_guests,
            };
            if let Err(e) = self.append_log(&entry) {
                say(format!("warning: cannot append to the action log: {e}"));
            }
            ok
        };
        unit.ok = Some(ok);
        unit.output = tail.clone().finish();
        // A reboot or power-off ends the world the unit lived in; nothing to keep.
        if !matches!(req.action, Action::Reboot | Action::PowerOff) {
            if let Err(e) = self.save_unit(&unit) {
                out(&format!("warning: cannot record the simulated unit: {e}"));
            }
        }
        let noout_action = matches!(req.action, Action::CephSetNoout | Action::CephUnsetNoout);
        ActionOutcome {
            reboot: ok && req.action == Action::Reboot,
            power_off: ok && req.action == Action::PowerOff,
            ceph: (ok && noout_action).then(|| self.osd_map()),
            ..ActionOutcome::new(&req.id, ok, tail.finish(), Some(if ok { 0 } else { 1 }))
        }
    }

    /// The simulated OSD map as the real executor's `ceph osd dump` probe would read it:
    /// `noout` from its marker, this node's OSDs (`/var/lib/ceph/osd/ceph-<id>`) up unless
    /// the `osds-down` marker's time has not passed, and in.
    pub fn osd_map(&self) -> OsdMap {
        let total = fs::read_dir(self.path("/var/lib/ceph/osd"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| {
                        e.file_name()
                            .to_str()
                            .and_then(|n| n.strip_prefix("ceph-"))
                            .is_some_and(|id| {
                                !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())
                            })
                    })
                    .count()
            })
            .unwrap_or(0);
        let total = u32::try_from(total).unwrap_or(u32::MAX);
        let down = fs::read_to_string(self.sim(OSDS_DOWN))
            .ok()
            .is_some_and(|t| crate::simformat::osds_down(&t, now_ms()));
        OsdMap {
            noout: self.sim(CEPH_NOOUT).exists(),
            osds: fleetward_proto::OsdCounts {
                total,
                up: if down { 0 } else { total },
                inside: total,
            },
        }
    }
}

impl Executor for SimulatedExecutor {
    fn execute(&self, req: &ActionRequest, out: &mut dyn FnMut(&str)) -> ActionOutcome {
        self.run_unit(req, now_ms(), out)
    }

    fn simulate_upgrade(&self) -> Option<Result<Simulation, String>> {
        Some(self.simulation())
    }

    /// The simulated unit of `req`: finished → its recorded result; still "running" (the
    /// agent was killed during it) → it goes on to its end now, applied once; none → the
    /// action never started here (`None`: outcome unknown).
    fn recover(&self, req: &ActionRequest, out: &mut dyn FnMut(&str)) -> Option<ActionOutcome> {
        let path = self.unit_path(&req.id).ok()?;
        let unit: SimUnit = serde_json::from_slice(&fs::read(&path).ok()?).ok()?;
        if unit.action != req.action {
            return None;
        }
        match unit.ok {
            Some(ok) => {
                out(&format!(
                    "{} was started before the agent restarted; its unit finished: {}",
                    req.action.name(),
                    if ok { "ok" } else { "failed" }
                ));
                Some(ActionOutcome::new(
                    &req.id,
                    ok,
                    unit.output,
                    Some(if ok { 0 } else { 1 }),
                ))
            }
            None => {
                out(&format!(
                    "{} was started before the agent restarted and its unit still runs: waiting for it",
                    req.action.name()
                ));
                Some(self.run_unit(req, unit.started_ms, out))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::Once;

    const STATUS: &str = "Package: proxmox-kernel-6.14.8-2-pve-signed\n\
        Status: install ok installed\n\
        Version: 6.14.8-2\n\
        Description: kernel\n fixture package\n\n\
        Package: pve-manager\n\
        Status: install ok installed\n\
        Version: 9.0.11\n\n";

    /// A tiny node: one kernel, dpkg status, a boot id, two guests.
    fn tiny_node() -> (tempfile::TempDir, SimulatedExecutor) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let files = [
            ("boot/vmlinuz-6.14.8-2-pve", "k\n"),
            ("boot/initrd.img-6.14.8-2-pve", "i\n"),
            ("boot/config-6.14.8-2-pve", "c\n"),
            ("proc/sys/kernel/osrelease", "6.14.8-2-pve\n"),
            (
                "proc/sys/kernel/random/boot_id",
                "4a0c8f3e-1b52-4c0e-9f0d-2d6a1c7e0b11\n",
            ),
            ("var/lib/dpkg/status", STATUS),
            ("run/reboot-required", ""),
            (
                "var/lib/fleetward-sim/pending.json",
                r#"{"kernel": "6.14.11-1-pve",
                    "packages": [{"package": "pve-manager", "version": "9.0.15"},
                                 {"package": "libnew1", "version": "1.0-1"}]}"#,
            ),
            (
                "var/lib/fleetward-sim/guests.json",
                r#"[{"vmid": 100, "kind": "qemu", "state": "running", "onboot": true, "order": 2, "ha": true},
                    {"vmid": 200, "kind": "lxc", "state": "running", "onboot": false, "order": 1}]"#,
            ),
        ];
        for (p, text) in files {
            let p = root.join(p);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        }
        let exec = SimulatedExecutor::new("pve-01", root, tmp.path().join("actions.log"));
        (tmp, exec)
    }

    fn run(exec: &dyn Executor, id: &str, action: Action) -> ActionOutcome {
        exec.execute(
            &ActionRequest {
                id: id.into(),
                action,
            },
            &mut |_| {},
        )
    }

    /// A guest stop with a 60 s timeout.
    fn guest_stop(vmid: u32, kind: GuestKind, force: bool) -> Action {
        Action::GuestStop {
            vmid,
            kind,
            timeout_secs: 60,
            force,
        }
    }

    fn read(exec: &SimulatedExecutor, p: &str) -> String {
        fs::read_to_string(exec.path(p)).unwrap()
    }

    #[test]
    fn executor_sim_upgrade_installs_pending_kernel_and_packages() {
        let (_tmp, exec) = tiny_node();
        let o = run(&exec, "r/pve-01/upgrade/1", Action::AptDistUpgrade);
        assert!(o.ok, "{o:?}");
        assert!(o.output.contains("installed kernel 6.14.11-1-pve"));
        for f in ["vmlinuz", "initrd.img", "config"] {
            assert!(
                exec.path(&format!("/boot/{f}-6.14.11-1-pve")).is_file(),
                "{f}"
            );
        }
        let status = read(&exec, "/var/lib/dpkg/status");
        let installed = control::dpkg_installed(&status);
        let version_of = |n: &str| {
            installed
                .iter()
                .find(|p| p.name == n)
                .map(|p| p.version.clone())
        };
        assert_eq!(version_of("pve-manager").as_deref(), Some("9.0.15"));
        assert_eq!(version_of("libnew1").as_deref(), Some("1.0-1"));
        assert_eq!(
            version_of("proxmox-kernel-6.14.11-1-pve-signed").as_deref(),
            Some("6.14.11-1")
        );
        assert_eq!(
            version_of("proxmox-kernel-6.14.8-2-pve-signed").as_deref(),
            Some("6.14.8-2")
        );
        // The multi-line description survived the rewrite.
        assert!(status.contains("Description: kernel\n fixture package\n"));
        // Nothing pending any more: the second upgrade installs nothing.
        assert!(!exec.sim("pending.json").exists());
        let o = run(&exec, "r/pve-01/upgrade/2", Action::AptDistUpgrade);
        assert!(o.ok && o.output.contains("0 upgraded"));
        assert_eq!(read(&exec, "/var/lib/dpkg/status"), status);
        // Not rebooted yet.
        assert_eq!(read(&exec, "/proc/sys/kernel/osrelease"), "6.14.8-2-pve\n");
    }

    #[test]
    fn executor_sim_apt_update_makes_pending_upgrades_visible_to_inspect() {
        use crate::root::Root;
        let (_tmp, exec) = tiny_node();
        // A real node has its kernel series' meta package installed.
        let status = read(&exec, "/var/lib/dpkg/status")
            + "Package: proxmox-kernel-6.14\nStatus: install ok installed\n\
               Architecture: all\nVersion: 6.14.8-2\n\n";
        fs::write(exec.path("/var/lib/dpkg/status"), status).unwrap();
        let upgradable = |exec: &SimulatedExecutor| {
            let apt = crate::inspect::inspect(&Root::new(&exec.root)).facts.apt;
            let list: Vec<(String, String, String)> = apt
                .upgradable
                .into_iter()
                .map(|u| (u.package, u.installed, u.candidate))
                .collect();
            (list, apt.upgrade_needs_reboot)
        };
        assert_eq!(upgradable(&exec), (vec![], false));

        let o = run(&exec, "u", Action::AptUpdate);
        assert!(o.ok, "{o:?}");
        let s = |a: &str| a.to_string();
        let (list, reboot) = upgradable(&exec);
        assert_eq!(
            list,
            [
                (s("proxmox-kernel-6.14"), s("6.14.8-2"), s("6.14.11-1")),
                (s("pve-manager"), s("9.0.11"), s("9.0.15")),
            ]
        );
        assert!(reboot, "a pending kernel needs a reboot");

        // After the upgrade nothing is upgradable any more, and a new update keeps it so.
        assert!(run(&exec, "d", Action::AptDistUpgrade).ok);
        assert_eq!(upgradable(&exec), (vec![], false));
        assert!(run(&exec, "u2", Action::AptUpdate).ok);
        assert_eq!(upgradable(&exec), (vec![], false));
        assert_eq!(read(&exec, SIM_LISTS_FILE), "");

        // Without a kernel, only the listed packages; no reboot needed for pve-manager.
        fs::write(
            exec.sim("pending.json"),
            r#"{"packages": [{"package": "pve-manager", "version": "9.1.0"}]}"#,
        )
        .unwrap();
        assert!(run(&exec, "u3", Action::AptUpdate).ok);
        let (list, reboot) = upgradable(&exec);
        assert_eq!(list, [(s("pve-manager"), s("9.0.15"), s("9.1.0"))]);
        assert!(!reboot);

        // Bad input fails without writing a broken list.
        fs::write(
            exec.sim("pending.json"),
            r#"{"packages": [{"package": "x\nPackage: y", "version": "1"}]}"#,
        )
        .unwrap();
        assert!(!run(&exec, "u4", Action::AptUpdate).ok);
    }

    /// Waits (bounded) until `f` holds.
    fn eventually(what: &str, f: impl Fn() -> bool) {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !f() {
            assert!(std::time::Instant::now() < end, "never: {what}");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[test]
    fn executor_sim_ha_requests_take_effect_later_and_disarm_drops_them() {
        let (_tmp, exec) = tiny_node();
        let exec = exec.with_ha_delay(std::time::Duration::from_millis(300));
        let state = |exec: &SimulatedExecutor, vmid: u32| {
            exec.guests()
                .unwrap()
                .into_iter()
                .find(|g| g.vmid == vmid)
                .unwrap()
                .state
        };
        let stop = |vmid, kind| guest_stop(vmid, kind, true);
        // HA guest: exit 0 first, the guest stops later.
        let o = run(&exec, "s", stop(100, GuestKind::Qemu));
        assert!(o.ok, "{o:?}");
        assert!(o.output.contains("queued"), "{}", o.output);
        assert_eq!(state(&exec, 100), GuestState::Running);
        assert_eq!(exec.ha_requests().unwrap().len(), 1);
        eventually("HA stopped vm:100", || {
            state(&exec, 100) == GuestState::Stopped
        });
        assert!(exec.ha_requests().unwrap().is_empty());
        // A non-HA guest stops synchronously, as before.
        assert!(run(&exec, "c", stop(200, GuestKind::Lxc)).ok);
        assert_eq!(state(&exec, 200), GuestState::Stopped);

        // disarm-ha freeze drops a request queued just before: the guest never starts.
        assert!(
            run(
                &exec,
                "st",
                Action::GuestStart {
                    vmid: 100,
                    kind: GuestKind::Qemu
                }
            )
            .ok
        );
        let o = run(&exec, "d", Action::HaDisarm);
        assert!(o.output.contains("discarded"), "{}", o.output);
        std::thread::sleep(std::time::Duration::from_millis(600));
        assert_eq!(state(&exec, 100), GuestState::Stopped);

        // A CRM that ignores requests: queued, never applied.
        fs::write(exec.sim(HA_CRM_IGNORES), "").unwrap();
        assert!(
            run(
                &exec,
                "st2",
                Action::GuestStart {
                    vmid: 100,
                    kind: GuestKind::Qemu
                }
            )
            .ok
        );
        std::thread::sleep(std::time::Duration::from_millis(600));
        assert_eq!(state(&exec, 100), GuestState::Stopped);
        assert_eq!(exec.ha_requests().unwrap().len(), 1);
    }

    /// Whether `inspect` on the node's root reads guest `vmid` as running.
    fn inspected(exec: &SimulatedExecutor, vmid: u32) -> fleetward_proto::GuestState {
        crate::inspect::inspect(&crate::root::Root::new(&exec.root))
            .facts
            .guests
            .into_iter()
            .find(|g| g.vmid == vmid)
            .unwrap()
            .state
    }

    #[test]
    fn executor_sim_runtime_files_decide_running_and_lxc_cgroups_stay_behind() {
        use fleetward_proto::GuestState as Seen;
        let (_tmp, exec) = tiny_node();
        // A fixture the executor never touched: guests.json decides.
        assert!(!exec.path("/proc/1").exists());
        assert_eq!(inspected(&exec, 200), Seen::Running);
        exec.sync_runtime().unwrap();
        let unix = read(&exec, "/proc/net/unix");
        assert!(unix.contains("@/var/lib/lxc/200/command"), "{unix}");
        assert_eq!(read(&exec, "/run/qemu-server/100.pid"), "100100\n");
        assert_eq!(inspected(&exec, 100), Seen::Running);
        assert_eq!(inspected(&exec, 200), Seen::Running);

        let stop = guest_stop(200, GuestKind::Lxc, false);
        assert!(run(&exec, "s", stop).ok);
        // The socket is gone; the cgroup stays behind (empty), and does not count.
        assert!(!read(&exec, "/proc/net/unix").contains("/200/command"));
        assert!(exec.path("/sys/fs/cgroup/lxc/200").is_dir());
        assert_eq!(read(&exec, "/sys/fs/cgroup/lxc/200/cgroup.procs"), "");
        assert_eq!(inspected(&exec, 200), Seen::Stopped);
        // Even guests.json claiming otherwise (a stale model) does not make it run: the
        // inspector reads the runtime files.
        let text = read(&exec, "/var/lib/fleetward-sim/guests.json");
        fs::write(exec.sim(GUESTS), text.replace("\"stopped\"", "\"running\"")).unwrap();
        assert_eq!(inspected(&exec, 200), Seen::Stopped);
        fs::write(exec.sim(GUESTS), text).unwrap();

        // A stopped VM: no pid file, no process.
        let stop_vm = guest_stop(100, GuestKind::Qemu, false);
        assert!(run(&exec, "s2", stop_vm).ok);
        assert!(!exec.path("/run/qemu-server/100.pid").exists());
        assert!(!exec.path("/proc/100100").exists());
        assert_eq!(inspected(&exec, 100), Seen::Stopped);

        // A new boot has no cgroup of the last one; the non-onboot container stays stopped,
        // and the HA guest stopped through HA stays stopped.
        assert!(run(&exec, "r", Action::Reboot).ok);
        assert!(!exec.path("/sys/fs/cgroup/lxc/200").exists());
        assert_eq!(inspected(&exec, 200), Seen::Stopped);
        assert_eq!(inspected(&exec, 100), Seen::Stopped);
        let start = Action::GuestStart {
            vmid: 200,
            kind: GuestKind::Lxc,
        };
        assert!(run(&exec, "st", start.clone()).ok);
        assert!(exec.path("/sys/fs/cgroup/lxc/200").is_dir());
        assert_eq!(inspected(&exec, 200), Seen::Running);
        // As Proxmox: a second start fails, and so does shutting down a stopped container.
        let again = run(&exec, "st2", start);
        assert!(
            !again.ok && again.output.contains("CT 200 already running"),
            "{again:?}"
        );
        let stop = guest_stop(200, GuestKind::Lxc, false);
        assert!(run(&exec, "s3", stop.clone()).ok);
        let again = run(&exec, "s4", stop);
        assert!(
            !again.ok && again.output.contains("CT 200 not running"),
            "{again:?}"
        );
    }

    #[test]
    fn executor_sim_power_off_names_the_guests_it_found_running() {
        let (_tmp, exec) = tiny_node();
        assert!(run(&exec, "p", Action::PowerOff).ok);
        let log = read_log(&exec.log).unwrap();
        assert_eq!(log[0].running_guests, ["vm:100", "ct:200"]);
        exec.power_on().unwrap();
        // HA restarts its guest (requested state started); 200 is not onboot.
        assert_eq!(exec.running_guests(), ["vm:100"]);
    }

    #[test]
    fn executor_sim_pve_guests_starts_onboot_guests_by_order_without_ha_ones() {
        let (_tmp, exec) = tiny_node();
        fs::write(
            exec.sim(GUESTS),
            r#"[{"vmid": 100, "kind": "qemu", "state": "running", "onboot": true, "order": 1, "ha": true, "ha_stopped": true},
                {"vmid": 101, "kind": "qemu", "state": "running", "onboot": false},
                {"vmid": 102, "kind": "qemu", "state": "stopped", "onboot": true, "order": 5},
                {"vmid": 200, "kind": "lxc", "state": "running", "onboot": false},
                {"vmid": 201, "kind": "lxc", "state": "stopped", "onboot": false}]"#,
        )
        .unwrap();
        // 101's configuration says onboot with order 2 and an up delay: it wins over
        // guests.json, as startall reads the configuration.
        let conf = exec.path("/etc/pve/nodes/pve-01/qemu-server/101.conf");
        fs::create_dir_all(conf.parent().unwrap()).unwrap();
        fs::write(&conf, "onboot: 1\nstartup: up=30,order=2\n").unwrap();
        let ct = exec.path("/etc/pve/nodes/pve-01/lxc/201.conf");
        fs::create_dir_all(ct.parent().unwrap()).unwrap();
        fs::write(&ct, "onboot: 1\nstartup: 1\n").unwrap();
        let o = run(&exec, "r", Action::Reboot);
        assert!(o.ok, "{o:?}");
        assert!(
            o.output.contains(
                "pve-guests startall: started ct:201, vm:101 (up=30, not waited), vm:102"
            ),
            "{}",
            o.output
        );
        let running = exec.running_guests();
        assert_eq!(
            running,
            ["vm:101", "vm:102", "ct:201"],
            "HA's 100 stays stopped"
        );
    }

    #[test]
    fn executor_sim_node_maintenance_takes_effect_later_or_never() {
        let (_tmp, exec) = tiny_node();
        let exec = exec.with_ha_delay(std::time::Duration::from_millis(200));
        let o = run(&exec, "m", Action::MaintenanceOn);
        assert!(o.ok && o.output.contains("queued"), "{o:?}");
        assert!(!exec.sim(MAINTENANCE).exists(), "exit 0 before the effect");
        eventually("maintenance applied", || exec.sim(MAINTENANCE).exists());
        eventually("vm:100 left", || {
            exec.guests().unwrap()[0].state == GuestState::Migrated
        });
        assert!(run(&exec, "m2", Action::MaintenanceOff).ok);
        eventually("maintenance cleared", || !exec.sim(MAINTENANCE).exists());
        eventually("vm:100 back", || {
            exec.guests().unwrap()[0].state == GuestState::Running
        });
        // Disarmed HA ignores enabling maintenance: consumed, no effect.
        assert!(run(&exec, "d", Action::HaDisarm).ok);
        assert!(run(&exec, "m3", Action::MaintenanceOn).ok);
        eventually("command consumed", || {
            exec.ha_requests().unwrap().is_empty()
        });
        assert!(!exec.sim(MAINTENANCE).exists());
        assert!(run(&exec, "a", Action::HaArm).ok);
        // A CRM that ignores requests: queued for ever.
        fs::write(exec.sim(HA_CRM_IGNORES), "").unwrap();
        assert!(run(&exec, "m4", Action::MaintenanceOn).ok);
        std::thread::sleep(std::time::Duration::from_millis(500));
        assert!(!exec.sim(MAINTENANCE).exists());
        assert_eq!(exec.ha_requests().unwrap()[0].maintenance, Some(true));
    }

    #[test]
    fn executor_sim_lrm_releases_its_watchdog_after_disarm() {
        let (tmp, exec) = tiny_node();
        let watchdog = || {
            crate::inspect::inspect(&crate::root::Root::new(tmp.path().join("root")))
                .facts
                .ha
                .lrm_watchdog
        };
        // Not modelled: unknown, and disarm leaves it so.
        assert_eq!(watchdog(), None);
        assert!(run(&exec, "d0", Action::HaDisarm).ok);
        assert!(!exec.sim(LRM_WATCHDOG).exists());
        assert!(run(&exec, "a0", Action::HaArm).ok);

        fs::write(exec.sim(LRM_WATCHDOG), "active\n").unwrap();
        assert_eq!(watchdog(), Some(true));
        // Without an HA delay the release is immediate.
        assert!(run(&exec, "d1", Action::HaDisarm).ok);
        assert_eq!(watchdog(), Some(false));
        assert!(run(&exec, "a1", Action::HaArm).ok);
        assert_eq!(watchdog(), Some(true));

        // With one: exit 0 first, the watchdog is released a round later.
        let exec = exec.with_ha_delay(std::time::Duration::from_millis(200));
        let o = run(&exec, "d2", Action::HaDisarm);
        assert!(o.ok && o.output.contains("next round"), "{}", o.output);
        assert_eq!(watchdog(), Some(true));
        eventually("the LRM released its watchdog", || {
            watchdog() == Some(false)
        });
        // Re-armed before the round: the watchdog stays held.
        assert!(run(&exec, "a2", Action::HaArm).ok);
        assert!(run(&exec, "d3", Action::HaDisarm).ok);
        assert!(run(&exec, "a3", Action::HaArm).ok);
        std::thread::sleep(std::time::Duration::from_millis(400));
        assert_eq!(watchdog(), Some(true));

        fs::write(exec.sim(LRM_WATCHDOG), "sideways\n").unwrap();
        assert_eq!(watchdog(), None, "a bad marker is unknown");
    }

    #[test]
    fn executor_sim_reboot_switches_kernel_and_boot_id() {
        let (_tmp, exec) = tiny_node();
        assert!(run(&exec, "m", Action::MaintenanceOn).ok);
        assert!(run(&exec, "w", Action::WaitGuestsMigrated { timeout_secs: 1 }).ok);
        assert!(run(&exec, "u", Action::AptDistUpgrade).ok);
        let old_id = read(&exec, "/proc/sys/kernel/random/boot_id");
        let o = run(&exec, "r", Action::Reboot);
        assert!(o.ok && o.reboot && !o.power_off, "{o:?}");
        assert_eq!(read(&exec, "/proc/sys/kernel/osrelease"), "6.14.11-1-pve\n");
        let new_id = read(&exec, "/proc/sys/kernel/random/boot_id");
        assert_ne!(new_id, old_id);
        assert_eq!(new_id.trim().len(), 36);
        assert_eq!(&new_id[14..15], "4");
        assert!(!exec.path("/run/reboot-required").exists());
        // The HA guest is away (maintenance); the non-onboot container stays stopped.
        let guests = exec.guests().unwrap();
        assert_eq!(guests[0].state, GuestState::Migrated);
        assert_eq!(guests[1].state, GuestState::Stopped);
        assert!(run(&exec, "off", Action::MaintenanceOff).ok);
        assert_eq!(exec.guests().unwrap()[0].state, GuestState::Running);
        assert!(!exec.sim("maintenance").exists());

        // A one-shot pin wins over the newest kernel, and is consumed.
        fs::create_dir_all(exec.path("/etc/kernel")).unwrap();
        fs::write(exec.path("/etc/kernel/next-boot-pin"), "6.14.8-2-pve\n").unwrap();
        assert!(run(&exec, "r2", Action::Reboot).ok);
        assert_eq!(read(&exec, "/proc/sys/kernel/osrelease"), "6.14.8-2-pve\n");
        assert!(!exec.path("/etc/kernel/next-boot-pin").exists());

        // The action log has one line per action, in order.
        let log = read_log(&exec.log).unwrap();
        let names: Vec<_> = log.iter().map(|e| e.action.name()).collect();
        assert_eq!(
            names,
            [
                "maintenance-on",
                "wait-guests-migrated",
                "apt-dist-upgrade",
                "reboot",
                "maintenance-off",
                "reboot"
            ]
        );
        assert!(log
            .iter()
            .all(|e| e.ok && e.node == "pve-01" && e.started_ms <= e.finished_ms));
    }

    #[test]
    fn executor_sim_once_does_not_repeat_an_id() {
        let (tmp, exec) = tiny_node();
        let log = exec.log.clone();
        let once = Once::open(tmp.path().join("actions.json"), exec).unwrap();
        let first = run(&once, "roll-1/pve-01/reboot/1", Action::Reboot);
        let id_after_first = read(once.inner(), "/proc/sys/kernel/random/boot_id");
        let second = run(&once, "roll-1/pve-01/reboot/1", Action::Reboot);
        assert!(first.ok && first.reboot && !first.replayed);
        assert!(second.ok && second.reboot && second.replayed);
        assert_eq!(
            read(once.inner(), "/proc/sys/kernel/random/boot_id"),
            id_after_first
        );
        assert_eq!(fs::read_to_string(&log).unwrap().lines().count(), 1);
        // A new attempt is a new id, and runs.
        assert!(run(&once, "roll-1/pve-01/reboot/2", Action::Reboot).ok);
        assert_eq!(read_log(&log).unwrap().len(), 2);
    }

    #[test]
    fn executor_sim_guests_flags_esp_and_power() {
        let (_tmp, exec) = tiny_node();
        // Without an ESP list there is nothing to sync.
        let o = run(&exec, "b1", Action::BootRefresh);
        assert!(o.ok && o.output.contains("skipping ESP sync"));
        assert!(!exec.sim("esp-synced").exists());
        fs::create_dir_all(exec.path("/etc/kernel")).unwrap();
        fs::write(exec.path(ESP_LIST), "3F2A-91C4\n").unwrap();
        assert!(run(&exec, "u", Action::AptDistUpgrade).ok);
        assert!(run(&exec, "b2", Action::BootRefresh).ok);
        let synced: Vec<String> =
            serde_json::from_str(&read(&exec, "/var/lib/fleetward-sim/esp-synced")).unwrap();
        assert_eq!(synced, ["6.14.11-1-pve", "6.14.8-2-pve"]);
        fs::write(exec.sim("refresh-fails"), "").unwrap();
        assert!(!run(&exec, "b3", Action::BootRefresh).ok);

        let set = run(&exec, "n", Action::CephSetNoout);
        assert!(set.ok && set.ceph.is_some_and(|m| m.noout), "{set:?}");
        assert!(exec.sim("ceph-noout").exists());
        let unset = run(&exec, "n2", Action::CephUnsetNoout);
        assert!(
            unset.ok && unset.ceph.is_some_and(|m| !m.noout),
            "{unset:?}"
        );
        assert!(!exec.sim("ceph-noout").exists());
        assert!(run(&exec, "h", Action::HaDisarm).ok);
        assert!(exec.sim("ha-disarmed").exists());
        assert!(run(&exec, "h2", Action::HaArm).ok);
        assert!(!exec.sim("ha-disarmed").exists());

        let stop = guest_stop(200, GuestKind::Lxc, true);
        assert!(run(&exec, "s", stop).ok);
        assert_eq!(exec.guests().unwrap()[1].state, GuestState::Stopped);
        // Wrong kind or unknown guest: fails, changes nothing.
        let wrong = Action::GuestStart {
            vmid: 200,
            kind: GuestKind::Qemu,
        };
        assert!(!run(&exec, "x", wrong).ok);
        let start = Action::GuestStart {
            vmid: 200,
            kind: GuestKind::Lxc,
        };
        assert!(run(&exec, "s2", start).ok);
        let mig = |target: &str| Action::GuestMigrate {
            vmid: 200,
            kind: GuestKind::Lxc,
            target: target.into(),
        };
        assert!(!run(&exec, "m0", mig("pve-01")).ok);
        assert!(run(&exec, "m1", mig("pve-02")).ok);
        let g = &exec.guests().unwrap()[1];
        assert_eq!(
            (g.state, g.location.as_deref()),
            (GuestState::Migrated, Some("pve-02"))
        );

        // Not in maintenance: the HA guest still runs here.
        assert!(!run(&exec, "w", Action::WaitGuestsMigrated { timeout_secs: 1 }).ok);

        let o = run(&exec, "p", Action::PowerOff);
        assert!(o.ok && o.power_off && !o.reboot);
        assert!(exec.sim("powered-off").exists());
        assert_eq!(exec.guests().unwrap()[0].state, GuestState::Stopped);
        exec.power_on().unwrap();
        assert!(!exec.sim("powered-off").exists());
        assert_eq!(exec.guests().unwrap()[0].state, GuestState::Running);

        // Failures are logged too.
        let log = read_log(&exec.log).unwrap();
        assert_eq!(log.iter().filter(|e| !e.ok).count(), 4);
    }

    #[test]
    fn executor_sim_bad_input_fails_without_panicking() {
        let (_tmp, exec) = tiny_node();
        fs::write(exec.sim("guests.json"), "not json").unwrap();
        let start = Action::GuestStart {
            vmid: 100,
            kind: GuestKind::Qemu,
        };
        assert!(!run(&exec, "g", start).ok);
        fs::write(exec.sim("pending.json"), r#"{"kernel": "../../etc"}"#).unwrap();
        assert!(!run(&exec, "u", Action::AptDistUpgrade).ok);
        fs::write(exec.sim("pending.json"), "[").unwrap();
        assert!(!run(&exec, "u2", Action::AptDistUpgrade).ok);
        // No kernel at all: the reboot fails and nothing changes.
        for k in ["vmlinuz", "initrd.img", "config"] {
            fs::remove_file(exec.path(&format!("/boot/{k}-6.14.8-2-pve"))).unwrap();
        }
        let before = read(&exec, "/proc/sys/kernel/random/boot_id");
        assert!(!run(&exec, "r", Action::Reboot).ok);
        assert_eq!(read(&exec, "/proc/sys/kernel/random/boot_id"), before);
        assert_eq!(
            dpkg_install("\u{0}garbage\n:\n  \n", &[("a".into(), "1".into())])
                .matches("Package: a")
                .count(),
            1
        );
    }

    /// apt's simulated answer names exactly what the upgrade then installs: upgrades with
    /// their old versions, the NEW kernel package, and nothing else.
    #[test]
    fn executor_sim_simulation_matches_the_upgrade() {
        let (_tmp, exec) = tiny_node();
        let sim = exec.simulate_upgrade().unwrap().unwrap();
        let ups: Vec<(&str, &str, &str)> = sim
            .upgrades
            .iter()
            .map(|u| {
                (
                    u.package.as_str(),
                    u.installed.as_str(),
                    u.candidate.as_str(),
                )
            })
            .collect();
        assert_eq!(ups, [("pve-manager", "9.0.11", "9.0.15")]);
        let new: Vec<&str> = sim.new.iter().map(|u| u.package.as_str()).collect();
        assert_eq!(new, ["libnew1", "proxmox-kernel-6.14.11-1-pve-signed"]);
        assert!(sim.removed.is_empty() && sim.kept_back.is_empty());
        let boot = fleetward_proto::BootFacts {
            installed_kernels: vec!["6.14.8-2-pve".into()],
            ..Default::default()
        };
        assert_eq!(
            apt_sim::kernel_after(&boot, &sim).as_deref(),
            Some("6.14.11-1-pve")
        );
        assert!(run(&exec, "u", Action::AptDistUpgrade).ok);
        let installed = control::dpkg_installed(&read(&exec, "/var/lib/dpkg/status"));
        for u in sim.upgrades.iter().chain(&sim.new) {
            assert!(
                installed
                    .iter()
                    .any(|p| p.name == u.package && p.version == u.candidate),
                "{u:?} not installed"
            );
        }
        // Nothing pending any more: apt would do nothing.
        assert_eq!(exec.simulation().unwrap(), Simulation::default());
    }

    /// A repository mistake: the upgrade would remove proxmox-ve. apt's answer says so, and
    /// the upgrade itself refuses (nothing changes); held packages are kept back.
    #[test]
    fn executor_sim_protected_removal_and_held_packages() {
        let (_tmp, exec) = tiny_node();
        fs::write(
            exec.sim("pending.json"),
            r#"{"packages": [{"package": "pve-manager", "version": "9.0.15"}],
                "remove": ["pve-manager", "not-installed"], "held": ["pve-manager"]}"#,
        )
        .unwrap();
        let sim = exec.simulation().unwrap();
        assert_eq!(sim.removed.len(), 1);
        assert_eq!(sim.removed[0].package, "pve-manager");
        assert_eq!(sim.kept_back, ["pve-manager"]);
        assert!(sim.upgrades.is_empty());
        let before = read(&exec, "/var/lib/dpkg/status");
        let o = run(&exec, "u", Action::AptDistUpgrade);
        assert!(
            !o.ok && o.output.contains("upgrade.removes-protected"),
            "{o:?}"
        );
        assert_eq!(read(&exec, "/var/lib/dpkg/status"), before);
        // Without the protected package, the removal happens.
        fs::write(
            exec.sim("pending.json"),
            r#"{"remove": ["proxmox-kernel-6.14.8-2-pve-signed"]}"#,
        )
        .unwrap();
        fs::write(exec.path("/proc/sys/kernel/osrelease"), "6.8.12-4-pve\n").unwrap();
        assert!(run(&exec, "v", Action::AptDistUpgrade).ok);
        assert!(!read(&exec, "/var/lib/dpkg/status").contains("proxmox-kernel-6.14.8-2-pve-signed"));
    }

    /// The agent killed during a simulated action: its unit is found on restart and goes on
    /// to its end, applied once; a finished unit gives its recorded result.
    #[test]
    fn executor_sim_unit_outlives_the_agent() {
        let (_tmp, exec) = tiny_node();
        let req = ActionRequest {
            id: "roll/pve-01/upgrade/1".into(),
            action: Action::AptDistUpgrade,
        };
        // What an agent killed mid-action leaves: the unit started, no result.
        let unit = SimUnit {
            id: req.id.clone(),
            action: req.action.clone(),
            started_ms: now_ms(),
            ok: None,
            output: String::new(),
        };
        exec.save_unit(&unit).unwrap();
        let o = exec.recover(&req, &mut |_| {}).unwrap();
        assert!(o.ok, "{o:?}");
        let log = read_log(&exec.log).unwrap();
        assert_eq!(log.len(), 1);
        assert!(read(&exec, "/var/lib/dpkg/status").contains("6.14.11-1"));
        // Asked again: the recorded result, nothing applied again.
        let again = exec.recover(&req, &mut |_| {}).unwrap();
        assert!(again.ok);
        assert_eq!(read_log(&exec.log).unwrap().len(), 1);
        // Another key never started here: unknown.
        let other = ActionRequest {
            id: "roll/pve-01/upgrade/2".into(),
            action: Action::AptDistUpgrade,
        };
        assert!(exec.recover(&other, &mut |_| {}).is_none());
    }

    /// OSDs come back some seconds after the node: a boot with an OSD delay marks this
    /// node's OSDs down (still in) until then, and `inspect` reads them so; without a delay
    /// they are up at once.
    #[test]
    fn executor_sim_osds_come_back_after_the_boot() {
        let (_tmp, exec) = tiny_node();
        for id in ["ceph-0", "ceph-1"] {
            fs::create_dir_all(exec.path("/var/lib/ceph/osd").join(id)).unwrap();
        }
        assert_eq!(exec.osd_map().osds.up, 2);
        let exec = exec.with_osd_delay(std::time::Duration::from_secs(3600));
        assert!(run(&exec, "r1", Action::Reboot).ok);
        let m = exec.osd_map();
        assert_eq!((m.osds.total, m.osds.up, m.osds.inside), (2, 0, 2));
        let until: u64 = fs::read_to_string(exec.sim(OSDS_DOWN))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(until > now_ms() + 3_000_000);
        // Its time passed: up.
        fs::write(exec.sim(OSDS_DOWN), format!("{}\n", now_ms() - 1)).unwrap();
        assert!(exec.osd_map().osds.all_up_in());
        // A boot without a delay: up at once.
        let mut exec = exec;
        exec.osd_delay = None;
        assert!(run(&exec, "r2", Action::Reboot).ok);
        assert!(!exec.sim(OSDS_DOWN).exists());
        assert!(exec.osd_map().osds.all_up_in());
    }
}
