//! `boot.*`: firmware, boot loader, kernels, ESPs.

use super::{has_package, is_pve, list_or, At, Findings};
use crate::parse::boot_tool::{is_vfat_id, KERNEL_HOOK};
use fleetward_proto::{EspSource, Facts, Firmware, Loader, Severity::*};

pub(super) fn check(f: &Facts, out: &mut Findings) {
    let b = &f.boot;
    let uefi = b.firmware == Firmware::Uefi;
    let helper = has_package(f, "proxmox-kernel-helper");

    if b.secure_boot.as_ref().and_then(|s| s.setup_mode) == Some(true) {
        out.push(
            "boot.secure-boot-setup-mode",
            Warning,
            "Platform is in Setup Mode: Secure Boot is disabled and anyone with root can enroll keys".into(),
        );
    }

    let esp_root = matches!(b.root_fs.as_deref(), Some("zfs") | Some("btrfs"));
    if !b.esp_list_exists && (helper || is_pve(f)) {
        if esp_root {
            out.push(
                "boot.esp-list-missing",
                Error,
                format!(
                    "{} does not exist, but the root file system is {}: kernel updates will not reach any ESP",
                    b.esp_list_path,
                    b.root_fs.as_deref().unwrap_or("?")
                ),
            )
            .at(&b.esp_list_path, None);
        } else if helper {
            out.push(
                "boot.esp-sync-disabled",
                Info,
                format!(
                    "ESP sync is not configured ({} does not exist; the kernel hook logs \"No {} found, skipping ESP sync.\"); the node boots GRUB from /boot, so this is a disabled feature, not a fault",
                    b.esp_list_path, b.esp_list_path
                ),
            )
            .at(&b.esp_list_path, None);
        }
    }

    for (i, line) in b.esp_list.iter().enumerate() {
        if !line.is_empty() && !is_vfat_id(line) {
            out.push(
                "boot.esp-uuid-invalid",
                Warning,
                format!("'{line}' does not look like a VFAT volume id (XXXX-XXXX); proxmox-boot-tool skips it"),
            )
            .at(&b.esp_list_path, Some(i as u32 + 1));
        }
    }

    let listed = f.esps.iter().filter(|e| e.source == EspSource::EspList);
    for e in listed.clone() {
        let id = e.uuid.as_deref().unwrap_or("?");
        let line = b
            .esp_list
            .iter()
            .position(|l| Some(l.as_str()) == e.uuid.as_deref());
        if !e.present {
            out.push(
                "boot.esp-uuid-missing",
                Error,
                format!("ESP {id} is listed but /dev/disk/by-uuid/{id} does not exist: it receives no kernels"),
            )
            .at(&b.esp_list_path, line.map(|l| l as u32 + 1));
            continue;
        }
        let Some(next) = &b.next_kernel else { continue };
        if let Some(err) = &e.error {
            out.push(
                "boot.esp-kernel-missing",
                Error,
                format!("ESP {id} could not be read ({err}), so it is not known to hold kernel {next}, which boots next"),
            );
        } else if !e.kernels.contains(next) {
            out.push(
                "boot.esp-kernel-missing",
                Error,
                format!(
                    "ESP {id} does not hold kernel {next}, which boots next (it holds: {})",
                    list_or_none(&e.kernels)
                ),
            );
        }
    }
    let diverged: Vec<&str> = listed
        .clone()
        .filter(|e| e.matches_others == Some(false))
        .filter_map(|e| e.uuid.as_deref())
        .collect();
    if !diverged.is_empty() {
        let detail: Vec<String> = listed
            .clone()
            .filter(|e| e.present && e.error.is_none())
            .map(|e| {
                format!(
                    "{}: {}",
                    e.uuid.as_deref().unwrap_or("?"),
                    list_or_none(&e.kernels)
                )
            })
            .collect();
        out.push(
            "boot.esp-diverged",
            Warning,
            format!(
                "the listed ESPs hold different kernels or file contents ({})",
                detail.join("; ")
            ),
        )
        .at(&b.esp_list_path, None);
    }

    for e in &f.esps {
        if let (Some(free), Some(pair)) = (e.free_bytes, e.largest_kernel_pair_bytes) {
            if free < pair.saturating_mul(2) {
                out.push(
                    "boot.esp-low-space",
                    Warning,
                    format!(
                        "ESP {} has {} free, less than two more kernel+initrd pairs need ({} each)",
                        e.uuid.as_deref().unwrap_or("?"),
                        human(free),
                        human(pair)
                    ),
                );
            }
        }
    }

    let grub_listed = f.esps.iter().any(|e| {
        e.source == EspSource::EspList
            && matches!(e.loader, Some(Loader::Grub) | Some(Loader::Both))
    });
    let grub_boot = (!b.esp_list_exists && helper) || grub_listed;
    if uefi && grub_boot && !has_package(f, "grub-efi-amd64") {
        out.push(
            "boot.grub-efi-missing",
            Warning,
            "System booted in EFI-mode but 'grub-efi-amd64' meta-package not installed: new GRUB versions will not be installed to the ESP".into(),
        );
    }

    let removable = f.esps.iter().any(|e| {
        e.removable_loader
            && (e.source == EspSource::BootEfi || e.mountpoint.as_deref() == Some("/boot/efi"))
    });
    if uefi && removable && b.force_efi_extra_removable != Some(true) {
        out.push(
            "boot.removable-not-updated",
            Warning,
            "Removable bootloader found at '/boot/efi/EFI/BOOT/BOOTX64.efi', but GRUB packages not set up to update it (debconf grub2/force_efi_extra_removable is not true)".into(),
        )
        .at("/var/cache/debconf/config.dat", None);
    }

    if has_package(f, "systemd-boot") {
        if uefi {
            out.push(
                "boot.systemd-boot-meta",
                Error,
                "systemd-boot meta-package installed on a UEFI node: this breaks upgrades of other boot-related packages; remove 'systemd-boot' (keep systemd-boot-efi/-tools if needed)".into(),
            );
        } else {
            out.push(
                "boot.systemd-boot-on-bios",
                Warning,
                "systemd-boot installed on a legacy-BIOS node, where it is not needed".into(),
            );
        }
    }

    if helper {
        let k = &b.kernel_hook;
        let problem = match (&k.exists, k.owner.as_deref()) {
            (false, _) => Some("is missing".to_string()),
            (true, Some("proxmox-kernel-helper")) => None,
            (true, Some(other)) => Some(format!("is owned by {other}, not proxmox-kernel-helper")),
            (true, None) => Some("is not owned by any package".to_string()),
        };
        if let Some(problem) = problem {
            out.push(
                "boot.kernel-hook-missing",
                Error,
                format!("proxmox-kernel-helper is installed but {KERNEL_HOOK} {problem}: new kernels will not be synced"),
            )
            .at(KERNEL_HOOK, None);
        }
    }

    if b.reboot_required {
        out.push(
            "boot.reboot-required",
            Warning,
            format!("reboot required: {}", b.reboot_required_reasons.join("; ")),
        );
    }

    for (path, pin) in [
        ("/etc/kernel/next-boot-pin", &b.next_boot_pin),
        ("/etc/kernel/proxmox-boot-pin", &b.kernel_pin),
    ] {
        if let Some(pin) = pin {
            out.push(
                "boot.kernel-pinned",
                Info,
                format!("kernel {pin} is pinned"),
            )
            .at(path, Some(1));
        }
    }

    if b.boot_efi_in_fstab && !b.boot_efi_mounted {
        out.push(
            "boot.efi-not-mounted",
            Error,
            "/etc/fstab has a /boot/efi entry, but /boot/efi is not mounted: boot-loader updates would not reach the ESP".into(),
        )
        .at("/etc/fstab", None);
    }
}

fn list_or_none(v: &[String]) -> String {
    list_or(v, ", ", "no kernels")
}

fn human(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    } else {
        format!("{} KiB", bytes / 1024)
    }
}
