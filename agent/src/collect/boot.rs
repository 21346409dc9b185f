//! Firmware, Secure Boot, boot-loader packages, kernels and the ESPs.

use super::{Input, Reader};
use crate::esp;
use crate::parse::boot_tool::{is_vfat_id, DEFAULT_ESP_LIST, HELPER_FUNCTIONS, KERNEL_HOOK};
use crate::parse::{control, control::Installed, efivar, kv, version};
use fleetward_proto::{
    BootFacts, DkmsModule, EspFacts, EspSource, Firmware, KernelHookFacts, PackageFacts,
    SecureBootFacts, BOOT_PACKAGES,
};
use std::os::unix::fs::FileTypeExt;

const EFIVARS: &str = "/sys/firmware/efi/efivars";
const GLOBAL_GUID: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
const SHIM_GUID: &str = "605dab50-e046-4300-abb6-3dd810dd8b23";
const DKMS: &str = "/var/lib/dkms";

pub(super) fn boot(
    r: &mut Reader,
    packages: &[Installed],
    running: Option<&str>,
) -> (BootFacts, Vec<EspFacts>) {
    let firmware = if r.root.is_dir("/sys/firmware/efi") {
        Firmware::Uefi
    } else {
        Firmware::Bios
    };
    let secure_boot = (firmware == Firmware::Uefi).then(|| secure_boot(r));
    let mut pkgs: Vec<PackageFacts> = packages
        .iter()
        .filter(|p| BOOT_PACKAGES.contains(&p.name.as_str()))
        .map(|p| PackageFacts {
            name: p.name.clone(),
            version: p.version.clone(),
        })
        .collect();
    pkgs.sort_by(|a, b| a.name.cmp(&b.name));

    let esp_list_path = r
        .text(HELPER_FUNCTIONS)
        .and_then(|t| kv::esp_list_path(&t))
        .unwrap_or_else(|| DEFAULT_ESP_LIST.to_string());
    // Read line by line: a line that is not text is an unreadable line, the others are
    // still judged. A file that cannot be read at all exists all the same: unknown, never
    // "not configured".
    let esp_list_input = r.lines(&esp_list_path);
    let esp_list_exists = !matches!(esp_list_input, Input::Missing);
    let mut esp_list: Vec<String> = Vec::new();
    let mut esp_list_unterminated = None;
    if let Input::Read(l) = esp_list_input {
        esp_list = l
            .lines
            .iter()
            .map(|line| line.as_deref().unwrap_or("").trim().to_string())
            .collect();
        // proxmox-boot-tool reads the list with `while read`, which skips a last line
        // without a newline.
        if l.unterminated {
            esp_list_unterminated = esp_list.pop().filter(|l| !l.is_empty());
        }
    }

    let first = |r: &mut Reader, p: &str| r.text(p).and_then(|t| kv::first_line(&t));
    let kernel_pin = first(r, "/etc/kernel/proxmox-boot-pin");
    let next_boot_pin = first(r, "/etc/kernel/next-boot-pin");
    // A pin file that exists but cannot be read leaves the next kernel unknown.
    let pin_unknown = r.was_unreadable("/etc/kernel/proxmox-boot-pin")
        || r.was_unreadable("/etc/kernel/next-boot-pin");
    let mut installed_kernels: Vec<String> = r
        .list_dir("/boot")
        .read()
        .unwrap_or_default()
        .iter()
        .filter_map(|n| n.strip_prefix("vmlinuz-"))
        .map(String::from)
        .collect();
    installed_kernels.sort_by(|a, b| version::compare(b, a));
    let next_kernel = next_boot_pin
        .clone()
        .or_else(|| kernel_pin.clone())
        .or_else(|| installed_kernels.first().cloned())
        .filter(|_| !pin_unknown);

    let mut reboot_required_reasons = Vec::new();
    if let (Some(running), Some(next)) = (running, next_kernel.as_deref()) {
        if running != next {
            reboot_required_reasons
                .push(format!("running kernel {running}, next boot kernel {next}"));
        }
    }
    if r.root.exists("/run/reboot-required") {
        reboot_required_reasons.push("/run/reboot-required exists".to_string());
    }

    let fstab = r
        .text("/etc/fstab")
        .map(|t| kv::fstab(&t))
        .unwrap_or_default();
    let mounts = r
        .text("/proc/self/mountinfo")
        .map(|t| kv::mountinfo(&t))
        .unwrap_or_default();
    let cmdline = first(r, "/etc/kernel/cmdline").or_else(|| first(r, "/proc/cmdline"));
    let root_fs = cmdline
        .as_deref()
        .and_then(kv::cmdline_root_fs)
        .map(String::from)
        .or_else(|| {
            let m = mounts.iter().rev().find(|m| m.target == "/");
            let m = m.or_else(|| fstab.iter().find(|m| m.target == "/"))?;
            Some(if m.fstype == "btrfs" || m.fstype == "zfs" {
                m.fstype.clone()
            } else {
                "other".to_string()
            })
        });
    let force_efi_extra_removable = r
        .text("/var/cache/debconf/config.dat")
        .and_then(|t| control::debconf_value(&t, "grub2/force_efi_extra_removable"))
        .map(|v| v == "true");

    let boot = BootFacts {
        firmware,
        secure_boot,
        packages: pkgs,
        kernel_hook: kernel_hook(r, packages),
        esp_list_exists,
        esp_list_path,
        esp_list: esp_list.clone(),
        esp_list_unterminated,
        boot_efi_in_fstab: fstab.iter().any(|m| m.target == "/boot/efi"),
        boot_efi_mounted: mounts.iter().any(|m| m.target == "/boot/efi"),
        kernel_pin,
        next_boot_pin,
        installed_kernels,
        next_kernel,
        root_fs,
        force_efi_extra_removable,
        reboot_required: !reboot_required_reasons.is_empty(),
        reboot_required_reasons,
        dkms: dkms(r),
    };
    let esps = esps(r, &esp_list, &fstab, &mounts);
    (boot, esps)
}

/// DKMS's tree: `/var/lib/dkms/<module>/<version>/<kernel>/` for each kernel built for
/// (beside `source` and `build`; dkms also keeps `kernel-<release>-<arch>` links one level
/// up, which are not versions).
fn dkms(r: &mut Reader) -> Vec<DkmsModule> {
    let mut out = Vec::new();
    let Input::Read(modules) = r.list_dir(DKMS) else {
        return out;
    };
    for module in modules {
        let mdir = format!("{DKMS}/{module}");
        if !r.root.is_dir(&mdir) {
            continue;
        }
        let Input::Read(versions) = r.list_dir(&mdir) else {
            continue;
        };
        for version in versions {
            let vdir = format!("{mdir}/{version}");
            if version.starts_with("kernel-") || !r.root.is_dir(&vdir) {
                continue;
            }
            let Input::Read(entries) = r.list_dir(&vdir) else {
                continue;
            };
            let mut kernels: Vec<String> = entries
                .into_iter()
                .filter(|k| !matches!(k.as_str(), "source" | "build" | "tarball"))
                .filter(|k| r.root.is_dir(&format!("{vdir}/{k}")))
                .collect();
            kernels.sort_by(|a, b| version::compare(b, a));
            out.push(DkmsModule {
                name: module.clone(),
                version,
                kernels,
            });
        }
    }
    out
}

fn secure_boot(r: &mut Reader) -> SecureBootFacts {
    let mut var = |name: &str, guid: &str| -> Option<u32> {
        let path = format!("{EFIVARS}/{name}-{guid}");
        let bytes = r.bytes(&path)?;
        match efivar::int_value(&bytes) {
            Ok(v) => Some(v),
            Err(e) => {
                r.unreadable(&path, e);
                None
            }
        }
    };
    let sb = var("SecureBoot", GLOBAL_GUID);
    let setup = var("SetupMode", GLOBAL_GUID);
    let shim_disabled = r
        .root
        .exists(&format!("{EFIVARS}/MokSBStateRT-{SHIM_GUID}"));
    // mokutil's decision table.
    let state = match (sb, setup) {
        (Some(1), Some(0)) => "enabled",
        (Some(0), _) | (_, Some(1)) => "disabled",
        _ => "unknown",
    };
    SecureBootFacts {
        secure_boot: sb.map(|v| v == 1),
        setup_mode: setup.map(|v| v == 1),
        shim_validation_disabled: shim_disabled,
        state: state.to_string(),
    }
}

fn kernel_hook(r: &mut Reader, packages: &[Installed]) -> KernelHookFacts {
    let exists = r.root.exists(KERNEL_HOOK);
    let lists_hook = |r: &mut Reader, pkg: &str| {
        r.text(&format!("/var/lib/dpkg/info/{pkg}.list"))
            .is_some_and(|t| t.lines().any(|l| l.trim_end() == KERNEL_HOOK))
    };
    // The expected owner first; scan every package's file list only when it is not.
    let owner = if lists_hook(r, "proxmox-kernel-helper") {
        Some("proxmox-kernel-helper".to_string())
    } else {
        packages
            .iter()
            .map(|p| p.name.as_str())
            .find(|name| lists_hook(r, name) || lists_hook(r, &format!("{name}:amd64")))
            .map(String::from)
    };
    KernelHookFacts {
        path: KERNEL_HOOK.to_string(),
        exists,
        owner,
    }
}

fn esps(
    r: &mut Reader,
    esp_list: &[String],
    fstab: &[kv::Mount],
    mounts: &[kv::Mount],
) -> Vec<EspFacts> {
    let boot_efi_mount = mounts.iter().rev().find(|m| m.target == "/boot/efi");
    let boot_efi_fstab = fstab.iter().find(|m| m.target == "/boot/efi");
    let mut out: Vec<EspFacts> = esp_list
        .iter()
        .filter(|id| !id.is_empty() && is_vfat_id(id))
        .map(|id| read_one(r, Some(id.clone()), EspSource::EspList, Some(by_uuid(id))))
        .collect();

    // The /boot/efi ESP: from fstab (`UUID=…`, a device path) or the mount's source.
    let source = boot_efi_fstab
        .map(|m| m.source.as_str())
        .or(boot_efi_mount.map(|m| m.source.as_str()));
    if let Some(source) = source {
        let (uuid, device) = match source.strip_prefix("UUID=") {
            Some(id) => (Some(id.to_string()), Some(by_uuid(id))),
            None => match source.strip_prefix("PARTUUID=") {
                Some(id) => (None, Some(format!("/dev/disk/by-partuuid/{id}"))),
                None => (None, source.starts_with('/').then(|| source.to_string())),
            },
        };
        let listed = out.iter_mut().find(|e| {
            uuid.is_some()
                && e.uuid.as_deref().map(str::to_uppercase)
                    == uuid.as_deref().map(str::to_uppercase)
        });
        match listed {
            Some(e) => e.mountpoint = boot_efi_mount.map(|_| "/boot/efi".to_string()),
            None => {
                let mut e = read_one(r, uuid, EspSource::BootEfi, device);
                e.mountpoint = boot_efi_mount.map(|_| "/boot/efi".to_string());
                out.push(e);
            }
        }
    }

    // Listed ESPs are compared with each other.
    let listed: Vec<(Vec<String>, Option<String>)> = out
        .iter()
        .filter(|e| e.source == EspSource::EspList && e.error.is_none() && e.present)
        .map(|e| (e.kernels.clone(), e.content_digest.clone()))
        .collect();
    for e in out.iter_mut() {
        if e.source == EspSource::EspList && e.present && e.error.is_none() && listed.len() > 1 {
            let mine = (e.kernels.clone(), e.content_digest.clone());
            e.matches_others = Some(listed.iter().all(|o| *o == mine));
        }
    }
    out
}

fn by_uuid(id: &str) -> String {
    format!("/dev/disk/by-uuid/{id}")
}

fn read_one(
    r: &mut Reader,
    uuid: Option<String>,
    source: EspSource,
    device: Option<String>,
) -> EspFacts {
    let mut e = EspFacts {
        uuid,
        source,
        device: device.clone(),
        mountpoint: None,
        present: false,
        loader: None,
        kernels: Vec::new(),
        total_bytes: None,
        free_bytes: None,
        largest_kernel_pair_bytes: None,
        content_digest: None,
        matches_others: None,
        removable_loader: false,
        error: None,
    };
    let Some(device) = device else { return e };
    r.note_input(&device);
    if !r.root.exists(&device) {
        return e;
    }
    e.present = true;
    let read = r.root.resolve(&device).and_then(|p| {
        // A regular file (fixture image) or a block device; never a FIFO that could block.
        let ft = std::fs::metadata(&p)
            .map_err(|e| e.to_string())?
            .file_type();
        if !(ft.is_file() || ft.is_block_device()) {
            return Err("not a regular file or block device".to_string());
        }
        esp::read_esp(&p).map_err(|e| e.to_string())
    });
    match read {
        Ok(c) => {
            let mut kernels = c.kernels;
            kernels.sort_by(|a, b| version::compare(b, a));
            e.loader = Some(c.loader);
            e.kernels = kernels;
            e.total_bytes = Some(c.total_bytes);
            e.free_bytes = Some(c.free_bytes);
            e.largest_kernel_pair_bytes = c.largest_kernel_pair_bytes;
            e.content_digest = Some(c.content_digest);
            e.removable_loader = c.has_removable_loader;
        }
        Err(err) => {
            r.unreadable(&device, format!("ESP file system: {err}"));
            e.error = Some(err);
        }
    }
    e
}
