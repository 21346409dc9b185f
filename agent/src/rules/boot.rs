//! `boot.*`: firmware, boot loader, kernels, ESPs.

use super::{has_package, is_pve, list_or, packages_known, partly_unknown, unknown, At, Findings};
use crate::parse::boot_tool::{is_vfat_id, HELPER_FUNCTIONS, KERNEL_HOOK};
use crate::parse::version;
use fleetward_proto::{EspSource, Facts, Firmware, Loader, Severity::*};

const MOUNTINFO: &str = "/proc/self/mountinfo";
const DEBCONF: &str = "/var/cache/debconf/config.dat";

/// The Proxmox VE major release installed: from `proxmox-ve`, else `pve-manager`.
fn pve_major(f: &Facts) -> Option<u32> {
    let v = f
        .node
        .proxmox_ve_version
        .as_deref()
        .or(f.node.pve_manager_version.as_deref())?;
    v.split(['.', '-', '~']).next()?.parse().ok()
}

/// The oldest kernel series a Proxmox VE release supports (pve8to9's
/// `check_pve_packages`: before the upgrade 6.2 up to 6.14, after it 6.14 and newer).
fn oldest_kernel_series(pve_major: u32) -> Option<(u32, u32)> {
    match pve_major {
        0..=7 => None,
        8 => Some((6, 2)),
        _ => Some((6, 14)),
    }
}

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
    // When the helper's `functions` file cannot be read, the list's path is a guess: its
    // absence there says nothing.
    let list_path_known = !unknown(f, HELPER_FUNCTIONS);
    if !b.esp_list_exists && list_path_known && (helper || is_pve(f)) {
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

    if let Some(last) = &b.esp_list_unterminated {
        out.push(
            "boot.esp-list-unterminated",
            Warning,
            format!("the last line '{last}' has no newline: proxmox-boot-tool's `while read` loop skips it, so that ESP is never synced; end the file with a newline"),
        )
        .at(&b.esp_list_path, Some(b.esp_list.len() as u32 + 1));
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

    // pve8to9's `check_bootloader` warns on UEFI without an ESP list (GRUB from /boot/efi)
    // when grub-efi-amd64 is missing; the agent also checks ESPs proxmox-boot-tool keeps
    // with GRUB, which are installed from the same package.
    let grub_listed = f.esps.iter().any(|e| {
        e.source == EspSource::EspList
            && matches!(e.loader, Some(Loader::Grub) | Some(Loader::Both))
    });
    let grub_boot = (!b.esp_list_exists && helper) || grub_listed;
    if uefi && grub_boot && packages_known(f) && !has_package(f, "grub-efi-amd64") {
        out.push(
            "boot.grub-efi-missing",
            Warning,
            "System booted in EFI-mode but 'grub-efi-amd64' meta-package not installed: new GRUB versions will not be installed to the ESP".into(),
        );
    }

    // pve8to9's `check_bootloader`: without an ESP list, `/boot/efi/EFI/BOOT/BOOTX64.efi`
    // present and debconf's `grub2/force_efi_extra_removable` not true.
    let removable = !b.esp_list_exists
        && f.esps.iter().any(|e| {
            e.removable_loader
                && (e.source == EspSource::BootEfi || e.mountpoint.as_deref() == Some("/boot/efi"))
        });
    if uefi && removable && b.force_efi_extra_removable != Some(true) && !unknown(f, DEBCONF) {
        out.push(
            "boot.removable-not-updated",
            Warning,
            "Removable bootloader found at '/boot/efi/EFI/BOOT/BOOTX64.efi', but GRUB packages not set up to update it (debconf grub2/force_efi_extra_removable is not true)".into(),
        )
        .at("/var/cache/debconf/config.dat", None);
    }

    // pve8to9's `check_bootloader`: the meta-package is a failure on UEFI, except before the
    // upgrade (Proxmox VE 8) on a node whose ESPs proxmox-boot-tool keeps with systemd-boot
    // ("configured with: uefi"), which still needs it for `bootctl`.
    let sd_boot_listed = b.esp_list_exists
        && f.esps.iter().any(|e| {
            e.source == EspSource::EspList
                && matches!(e.loader, Some(Loader::SystemdBoot) | Some(Loader::Both))
        });
    let still_needed = sd_boot_listed && pve_major(f).is_some_and(|m| m <= 8);
    if has_package(f, "systemd-boot") {
        if !uefi {
            out.push(
                "boot.systemd-boot-on-bios",
                Warning,
                "systemd-boot installed on a legacy-BIOS node, where it is not needed".into(),
            );
        } else if !still_needed {
            out.push(
                "boot.systemd-boot-meta",
                Error,
                "systemd-boot meta-package installed on a UEFI node: this breaks upgrades of other boot-related packages; remove 'systemd-boot' (keep systemd-boot-efi/-tools if needed)".into(),
            );
        }
    }

    // The hook's owner is unknown when a package's file list could not be read.
    if helper
        && !f
            .unreadable
            .iter()
            .any(|u| u.path.starts_with("/var/lib/dpkg/info/"))
    {
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

    kernels(f, out);

    if b.boot_efi_in_fstab && !b.boot_efi_mounted && !partly_unknown(f, MOUNTINFO) {
        out.push(
            "boot.efi-not-mounted",
            Error,
            "/etc/fstab has a /boot/efi entry, but /boot/efi is not mounted: boot-loader updates would not reach the ESP".into(),
        )
        .at("/etc/fstab", None);
    }
}

/// `boot.kernel-unsuitable` (pve8to9's `check_pve_packages`, "Checking running kernel
/// version") and `boot.dkms-not-built` (pve8to9's `check_dkms_modules` only warns that DKMS
/// modules exist; the agent names those without a build for the kernel that boots next).
fn kernels(f: &Facts, out: &mut Findings) {
    let b = &f.boot;
    let running = f.node.running_kernel.as_deref();
    let floor = pve_major(f).and_then(oldest_kernel_series);
    if let (Some(running), Some(floor)) = (running, floor) {
        if version::kernel_series(running).is_some_and(|s| s < floor) {
            let suitable = b
                .installed_kernels
                .iter()
                .find(|k| version::kernel_series(k).is_some_and(|s| s >= floor));
            let why = match suitable {
                Some(k) => {
                    format!("a suitable kernel ({k}) is installed but not booted: reboot into it")
                }
                None => "no suitable kernel is installed".to_string(),
            };
            out.push(
                "boot.kernel-unsuitable",
                Warning,
                format!(
                    "running kernel {running} is older than {}.{}, the oldest series Proxmox VE {} supports; {why}",
                    floor.0,
                    floor.1,
                    pve_major(f).unwrap_or(0)
                ),
            )
            .at("/proc/sys/kernel/osrelease", None);
        }
    }

    if let Some(next) = &b.next_kernel {
        let mut names: Vec<&str> = b.dkms.iter().map(|m| m.name.as_str()).collect();
        names.dedup();
        for name in names {
            let versions: Vec<_> = b.dkms.iter().filter(|m| m.name == name).collect();
            if versions.iter().any(|m| m.kernels.contains(next)) {
                continue;
            }
            let built: Vec<String> = versions
                .iter()
                .map(|m| {
                    format!(
                        "{} for {}",
                        m.version,
                        list_or(&m.kernels, ", ", "no kernel")
                    )
                })
                .collect();
            out.push(
                "boot.dkms-not-built",
                Warning,
                format!(
                    "DKMS module {name} has no build for kernel {next}, which boots next ({}): it will be missing after the reboot",
                    built.join("; ")
                ),
            )
            .at(&format!("/var/lib/dkms/{name}"), None);
        }
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
