//! The node-changing actions: one schema shared by the controller (which asks) and the
//! agent's executor (which acts). The controller sends an [`ActionRequest`] as JSON inside
//! the API's `Command.action` message; nothing else defines a second copy.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A guest type: QEMU virtual machine (`qm`) or LXC container (`pct`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuestKind {
    Qemu,
    Lxc,
}

impl GuestKind {
    /// The Proxmox CLI tool for this kind.
    pub fn tool(self) -> &'static str {
        match self {
            GuestKind::Qemu => "qm",
            GuestKind::Lxc => "pct",
        }
    }
}

/// Every action that changes a node. The JSON form is tagged: `{"action": "guest-stop", ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// `ha-manager crm-command node-maintenance enable NODE`.
    MaintenanceOn,
    /// `ha-manager crm-command node-maintenance disable NODE`.
    MaintenanceOff,
    /// Poll `ha-manager status` until no HA service is active on this node.
    WaitGuestsMigrated { timeout_secs: u64 },
    /// `apt-get update`.
    AptUpdate,
    /// Non-interactive `apt-get dist-upgrade`, keeping local configuration files.
    AptDistUpgrade,
    /// `proxmox-boot-tool refresh` (only meaningful where ESP sync is configured).
    BootRefresh,
    /// `ceph osd set noout`.
    CephSetNoout,
    /// `ceph osd unset noout`.
    CephUnsetNoout,
    /// `qm|pct shutdown VMID --timeout T [--forceStop 1]`.
    GuestStop {
        vmid: u32,
        kind: GuestKind,
        timeout_secs: u64,
        force: bool,
    },
    /// `qm|pct start VMID`.
    GuestStart { vmid: u32, kind: GuestKind },
    /// `qm migrate VMID TARGET --online` / `pct migrate VMID TARGET --restart`.
    GuestMigrate {
        vmid: u32,
        kind: GuestKind,
        target: String,
    },
    /// `ha-manager crm-command disarm-ha freeze` (pve-ha-manager >= 5.1.3).
    HaDisarm,
    /// `ha-manager crm-command arm-ha`.
    HaArm,
    /// `systemctl reboot`.
    Reboot,
    /// `systemctl poweroff`.
    PowerOff,
}

/// Margin on top of a guest's own shutdown timeout before the `qm`/`pct` process is killed.
pub const GUEST_STOP_MARGIN: Duration = Duration::from_secs(60);

/// The longest `timeout_secs` an action may ask for: a week. Far beyond any guest shutdown
/// or HA migration, and small enough that every deadline computed from it stays in range.
pub const MAX_TIMEOUT_SECS: u64 = 7 * 24 * 3600;

impl Action {
    /// The kebab-case name, as in the JSON tag.
    pub fn name(&self) -> &'static str {
        match self {
            Action::MaintenanceOn => "maintenance-on",
            Action::MaintenanceOff => "maintenance-off",
            Action::WaitGuestsMigrated { .. } => "wait-guests-migrated",
            Action::AptUpdate => "apt-update",
            Action::AptDistUpgrade => "apt-dist-upgrade",
            Action::BootRefresh => "boot-refresh",
            Action::CephSetNoout => "ceph-set-noout",
            Action::CephUnsetNoout => "ceph-unset-noout",
            Action::GuestStop { .. } => "guest-stop",
            Action::GuestStart { .. } => "guest-start",
            Action::GuestMigrate { .. } => "guest-migrate",
            Action::HaDisarm => "ha-disarm",
            Action::HaArm => "ha-arm",
            Action::Reboot => "reboot",
            Action::PowerOff => "power-off",
        }
    }

    /// How long the whole action may take before its process is killed and it fails.
    pub fn default_timeout(&self) -> Duration {
        let s = Duration::from_secs;
        match self {
            Action::MaintenanceOn | Action::MaintenanceOff => s(60),
            Action::WaitGuestsMigrated { timeout_secs } => s(*timeout_secs),
            Action::AptUpdate => s(600),
            Action::AptDistUpgrade => s(3600),
            Action::BootRefresh => s(600),
            Action::CephSetNoout | Action::CephUnsetNoout => s(60),
            Action::GuestStop { timeout_secs, .. } => {
                s(*timeout_secs).saturating_add(GUEST_STOP_MARGIN)
            }
            Action::GuestStart { .. } => s(300),
            Action::GuestMigrate { .. } => s(3600),
            Action::HaDisarm | Action::HaArm => s(60),
            Action::Reboot | Action::PowerOff => s(60),
        }
    }

    /// Checks the arguments that end up on a command line or in a deadline: a VMID in
    /// Proxmox's range (100..=999999999), a node name that cannot be mistaken for an
    /// option, and a timeout of at most [`MAX_TIMEOUT_SECS`].
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Action::GuestStop {
                vmid, timeout_secs, ..
            } => {
                valid_vmid(*vmid)?;
                valid_timeout(*timeout_secs)
            }
            Action::WaitGuestsMigrated { timeout_secs } => valid_timeout(*timeout_secs),
            Action::GuestStart { vmid, .. } => valid_vmid(*vmid),
            Action::GuestMigrate { vmid, target, .. } => {
                valid_vmid(*vmid)?;
                valid_node_name(target)
            }
            _ => Ok(()),
        }
    }
}

fn valid_vmid(vmid: u32) -> Result<(), String> {
    if (100..=999_999_999).contains(&vmid) {
        Ok(())
    } else {
        Err(format!("invalid VMID {vmid} (expected 100..=999999999)"))
    }
}

fn valid_timeout(secs: u64) -> Result<(), String> {
    if secs <= MAX_TIMEOUT_SECS {
        Ok(())
    } else {
        Err(format!(
            "timeout_secs {secs} is too long (at most {MAX_TIMEOUT_SECS}, i.e. 7 days)"
        ))
    }
}

/// A node name: 1..=63 of `[A-Za-z0-9.-]`, starting with a letter or digit.
pub fn valid_node_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(format!("invalid node name {name:?}"))
    }
}

/// One action with its idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionRequest {
    /// Idempotency key: `operation/node/step/attempt`.
    pub id: String,
    pub action: Action,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_timeouts_are_refused_and_never_overflow() {
        let stop = |timeout_secs| Action::GuestStop {
            vmid: 100,
            kind: GuestKind::Qemu,
            timeout_secs,
            force: false,
        };
        let wait = |timeout_secs| Action::WaitGuestsMigrated { timeout_secs };
        for a in [stop(u64::MAX), stop(u64::MAX - 59), wait(u64::MAX)] {
            let e = a.validate().unwrap_err();
            assert!(e.contains("timeout_secs") && e.contains("7 days"), "{e}");
            // Even unvalidated, the timeout is a duration, not a panic.
            let _ = a.default_timeout();
        }
        for a in [stop(MAX_TIMEOUT_SECS), wait(MAX_TIMEOUT_SECS), stop(0)] {
            assert_eq!(a.validate(), Ok(()));
        }
        assert_eq!(
            stop(MAX_TIMEOUT_SECS).default_timeout(),
            Duration::from_secs(MAX_TIMEOUT_SECS) + GUEST_STOP_MARGIN
        );
    }
}
