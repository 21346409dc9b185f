//! `system.*`: what the node needs beside boot, apt, DNS and quorum.

use super::{packages_known, At, Findings};
use fleetward_proto::{Facts, Severity::*};

const DPKG_STATUS: &str = "/var/lib/dpkg/status";

/// pve8to9's `check_time_sync` looks for an active chrony, openntpd, ntpsec (or ntp, or
/// systemd-timesyncd, which it only advises against) unit and warns when none runs. Without
/// starting `systemctl` the agent checks what is installed: none of them installed is the
/// certain case. Only where dpkg's status was read and lists packages (a Debian host).
pub(super) fn check(f: &Facts, out: &mut Findings) {
    let s = &f.system;
    if packages_known(f) && s.installed_packages > 0 && s.time_sync_packages.is_empty() {
        out.push(
            "system.no-time-sync",
            Warning,
            "no time-sync daemon is installed (chrony, systemd-timesyncd, ntpsec, ntp or openntpd): corosync and Ceph need synchronised clocks; install chrony".into(),
        )
        .at(DPKG_STATUS, None);
    }
}
