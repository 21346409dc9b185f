//! Whether a guest runs, decided the way Proxmox VE decides it (pure; the files are read by
//! `collect::pve` under the root).
//!
//! - **LXC** — pve-container `src/PVE/LXC.pm`, `list_active_containers` / `check_running`:
//!   a container runs when its monitor's abstract command socket
//!   `@/var/lib/lxc/<vmid>/command` is listed in `/proc/net/unix`. The container's cgroup
//!   directory does **not** count: pve-container notes that cgroups are often left behind
//!   after a stop (`src/lxc-pve-prestart-hook`), so a stale `/sys/fs/cgroup/lxc/<vmid>` would
//!   make a stopped container look running.
//! - **QEMU** — qemu-server `PVE/QemuServer/Helpers.pm`, `vm_running_locally` and
//!   `parse_cmdline`: the pid file `/var/run/qemu-server/<vmid>.pid` holds only a number; the
//!   process with that pid must be a QEMU binary (`argv[0]` ending in `kvm`, or a
//!   `qemu-system-*` file name) whose `-pidfile` argument is that same pid file, and it must
//!   still be running (pve-common `ProcFSTools::check_process_running`: a zombie is not).
//!   A pid reused by another process after a crash therefore reads as stopped.

use std::collections::BTreeSet;

/// The VMIDs whose LXC command socket is listed in `/proc/net/unix`.
///
/// Each line after the header is `Num: RefCount Protocol Flags Type St Inode [Path]`; only
/// lines with a path can name a container.
pub fn lxc_active(proc_net_unix: &str) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    for line in proc_net_unix.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // Num (ends with ':') + six columns + the path.
        if fields.len() != 8 || !fields[0].ends_with(':') {
            continue;
        }
        if !fields[6].bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Some(vmid) = lxc_command_socket_vmid(fields[7]) {
            out.insert(vmid);
        }
    }
    out
}

fn lxc_command_socket_vmid(path: &str) -> Option<u32> {
    let id = path
        .strip_prefix("@/var/lib/lxc/")?
        .strip_suffix("/command")?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    id.parse().ok()
}

/// The pid in a qemu-server pid file: digits only, with at most a final newline.
pub fn qemu_pidfile(text: &str) -> Option<u32> {
    let line = text.strip_suffix('\n').unwrap_or(text);
    if line.is_empty() || !line.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    line.parse().ok().filter(|&pid| pid > 0)
}

/// The pid file paths qemu-server gives a VM (`/var/run` is a link to `/run` on Debian, so
/// both spellings name the same file).
pub fn qemu_pidfile_paths(vmid: u32) -> [String; 2] {
    [
        format!("/var/run/qemu-server/{vmid}.pid"),
        format!("/run/qemu-server/{vmid}.pid"),
    ]
}

/// Whether `/proc/<pid>/cmdline` (NUL-separated) is VM `vmid`'s QEMU process: a QEMU binary
/// started with `-pidfile` naming that VM's pid file.
pub fn qemu_cmdline_is_vm(cmdline: &[u8], vmid: u32) -> bool {
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let Some(cmd) = args.first().and_then(|a| std::str::from_utf8(a).ok()) else {
        return false;
    };
    let base = cmd.rsplit('/').next().unwrap_or(cmd);
    let is_qemu = cmd.ends_with("kvm") || (base.starts_with("qemu-system-") && base.len() > 12);
    if !is_qemu {
        return false;
    }
    let wanted = qemu_pidfile_paths(vmid);
    let mut pidfile: Option<&[u8]> = None;
    let mut pending: Option<&[u8]> = None;
    for arg in args.iter().copied().filter(|a| !a.is_empty()) {
        let option = arg.strip_prefix(b"--").or_else(|| arg.strip_prefix(b"-"));
        if let Some(name) = option {
            pending = Some(name);
        } else if let Some(name) = pending.take() {
            if name == b"pidfile" {
                pidfile = Some(arg);
            }
        }
    }
    pidfile.is_some_and(|p| wanted.iter().any(|w| w.as_bytes() == p))
}

/// Whether `/proc/<pid>/stat` describes a live process (not a zombie). `None` when the text
/// is not a stat line.
pub fn proc_stat_running(stat: &str) -> Option<bool> {
    // `pid (comm) S ...`: comm may contain spaces and parentheses; the state follows the
    // last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    let state = after.split_whitespace().next()?;
    Some(state != "Z" && state != "X" && state != "x")
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNIX: &str = "Num       RefCount Protocol Flags    Type St Inode Path\n\
        0000000000000000: 00000002 00000000 00010000 0001 01 23456 @/var/lib/lxc/200/command\n\
        0000000000000000: 00000002 00000000 00010000 0001 01 23457 /run/systemd/notify\n\
        0000000000000000: 00000003 00000000 00000000 0001 03 23458\n\
        0000000000000000: 00000002 00000000 00010000 0001 01 23459 @/var/lib/lxc/201/monitor-sock\n\
        0000000000000000: 00000002 00000000 00010000 0001 01 23460 @/var/lib/lxc/x1/command\n\
        0000000000000000: 00000002 00000000 00010000 0001 01 23461 /var/lib/lxc/202/command\n";

    #[test]
    fn lxc_by_abstract_command_socket_only() {
        assert_eq!(lxc_active(UNIX).into_iter().collect::<Vec<_>>(), [200]);
        assert!(lxc_active("").is_empty());
    }

    #[test]
    fn qemu_pid_file() {
        assert_eq!(qemu_pidfile("4242\n"), Some(4242));
        assert_eq!(qemu_pidfile("4242"), Some(4242));
        assert_eq!(qemu_pidfile(" 4242\n"), None);
        assert_eq!(qemu_pidfile("4242\n\n"), None);
        assert_eq!(qemu_pidfile(""), None);
        assert_eq!(qemu_pidfile("0\n"), None);
    }

    #[test]
    fn qemu_cmdline_must_name_the_vm_pidfile() {
        let ok = b"/usr/bin/kvm\0-id\x00100\0-name\0web-01\0-pidfile\0/var/run/qemu-server/100.pid\0-daemonize\0";
        assert!(qemu_cmdline_is_vm(ok, 100));
        assert!(!qemu_cmdline_is_vm(ok, 101), "another VM's pid file");
        let sys = b"/usr/bin/qemu-system-x86_64\0-pidfile\0/run/qemu-server/7.pid\0";
        assert!(qemu_cmdline_is_vm(sys, 7));
        let reused = b"/usr/sbin/sshd\0-D\0-pidfile\0/var/run/qemu-server/100.pid\0";
        assert!(!qemu_cmdline_is_vm(reused, 100), "not a QEMU binary");
        let no_pidfile = b"/usr/bin/kvm\0-id\x00100\0";
        assert!(!qemu_cmdline_is_vm(no_pidfile, 100));
        assert!(!qemu_cmdline_is_vm(b"", 100));
    }

    #[test]
    fn zombie_is_not_running() {
        assert_eq!(proc_stat_running("4242 (kvm) S 1 4242"), Some(true));
        assert_eq!(proc_stat_running("4242 (a) b) Z 1"), Some(false));
        assert_eq!(proc_stat_running("garbage"), None);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(text in "\\PC*", bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200), vmid in 0u32..1000) {
            let _ = lxc_active(&text);
            let _ = qemu_pidfile(&text);
            let _ = proc_stat_running(&text);
            let _ = qemu_cmdline_is_vm(&bytes, vmid);
        }
    }
}
