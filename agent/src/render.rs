//! The text format: for people, grouped by area, severity coloured on a terminal.

use fleetward_proto::action::GuestKind;
use fleetward_proto::{Finding, Firmware, GuestState, Report, Severity};
use std::fmt::Write;

/// Render a report as text. `color` adds ANSI colours to severities.
pub fn text(report: &Report, color: bool) -> String {
    let f = &report.facts;
    let mut s = String::new();
    let n = &f.node;
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let _ = writeln!(s, "node {}", opt(&n.hostname));
    let _ = writeln!(s, "  os        {}", opt(&n.os.pretty_name));
    let _ = writeln!(
        s,
        "  pve       pve-manager {}, proxmox-ve {}",
        opt(&n.pve_manager_version),
        opt(&n.proxmox_ve_version)
    );
    let _ = writeln!(
        s,
        "  kernel    {} (boot id {})",
        opt(&n.running_kernel),
        opt(&n.boot_id)
    );

    section(&mut s, "boot");
    let b = &f.boot;
    let sb = b.secure_boot.as_ref().map_or("-".to_string(), |sb| {
        let mut t = format!("Secure Boot {}", sb.state);
        if sb.setup_mode == Some(true) {
            t.push_str(", Platform is in Setup Mode");
        }
        t
    });
    let firmware = match b.firmware {
        Firmware::Uefi => "UEFI",
        Firmware::Bios => "legacy BIOS",
    };
    let _ = writeln!(s, "  firmware  {firmware}, {sb}");
    let pk: Vec<String> = b
        .packages
        .iter()
        .map(|p| format!("{} {}", p.name, p.version))
        .collect();
    let _ = writeln!(
        s,
        "  packages  {}",
        if pk.is_empty() {
            "-".into()
        } else {
            pk.join(", ")
        }
    );
    let list_unreadable = f.unreadable.iter().any(|u| u.path == b.esp_list_path);
    let _ = writeln!(
        s,
        "  esp list  {} ({}{})",
        b.esp_list_path,
        match (b.esp_list_exists, list_unreadable) {
            (false, _) => "absent",
            (true, false) => "exists",
            (true, true) => "exists, partly unreadable",
        },
        if b.esp_list_unterminated.is_some() {
            ", last line unterminated"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "  kernels   next {}, installed {}",
        opt(&b.next_kernel),
        if b.installed_kernels.is_empty() {
            "-".into()
        } else {
            b.installed_kernels.join(", ")
        }
    );
    for e in &f.esps {
        let _ = writeln!(
            s,
            "  esp       {} {:?} {}: {}",
            e.uuid.as_deref().unwrap_or("?"),
            e.source,
            e.loader.map_or("-".into(), |l| format!("{l:?}")),
            if e.kernels.is_empty() {
                "no kernels".into()
            } else {
                e.kernels.join(", ")
            }
        );
    }

    section(&mut s, "apt");
    for e in &f.apt.entries {
        let _ = writeln!(
            s,
            "  {} {}:{} {} {} {} {}",
            if e.enabled { "+" } else { "-" },
            e.file,
            e.line,
            e.types.join(" "),
            e.uris.join(" "),
            e.suites.join(" "),
            e.components.join(" ")
        );
    }

    section(&mut s, "dns");
    let r = &f.dns.resolv_conf;
    let _ = writeln!(
        s,
        "  resolv    nameserver {} search {}",
        r.nameservers.join(" "),
        r.search.join(" ")
    );
    let i = &f.dns.interfaces;
    let _ = writeln!(
        s,
        "  ifupdown  nameserver {} search {}",
        i.nameservers.join(" "),
        i.search.join(" ")
    );

    section(&mut s, "cluster");
    let c = &f.cluster;
    if c.standalone {
        let _ = writeln!(s, "  standalone");
    } else {
        let members: Vec<String> = c
            .members
            .iter()
            .map(|m| format!("{}{}", m.name, if m.online { "" } else { " (offline)" }))
            .collect();
        let _ = writeln!(
            s,
            "  {} quorate {} members {} expected votes {}{}",
            opt(&c.name),
            c.quorate.map_or("-", |q| if q { "yes" } else { "no" }),
            members.join(", "),
            c.expected_votes.map_or("-".to_string(), |v| v.to_string()),
            c.qdevice_votes
                .map_or(String::new(), |v| format!(" (QDevice {v})"))
        );
    }

    section(&mut s, "system");
    let sys = &f.system;
    let gib = |b: Option<u64>| {
        b.map_or("-".to_string(), |b| {
            format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
        })
    };
    let _ = writeln!(
        s,
        "  time sync {}, free on / {}",
        if sys.packages_unknown {
            "unknown".to_string()
        } else if sys.time_sync_packages.is_empty() {
            "-".to_string()
        } else {
            sys.time_sync_packages.join(", ")
        },
        gib(sys.root_free_bytes)
    );

    if !f.guests.is_empty() {
        section(&mut s, "guests");
        for g in &f.guests {
            let kind = match g.kind {
                GuestKind::Qemu => "qemu",
                GuestKind::Lxc => "lxc",
            };
            let state = match g.state {
                GuestState::Running => "running",
                GuestState::Stopped => "stopped",
                GuestState::Migrated => "migrated",
                GuestState::Unknown => "unknown",
            };
            let mut extra = Vec::new();
            if g.onboot {
                extra.push("onboot".to_string());
            }
            if let Some(o) = g.order {
                extra.push(format!("order {o}"));
            }
            if g.ha {
                extra.push("ha".to_string());
            }
            if let Some(at) = &g.location {
                extra.push(format!("at {at}"));
            }
            let line = format!(
                "  {:<6} {kind:<4} {state:<8} {:<20} {}",
                g.vmid,
                opt(&g.name),
                extra.join(", ")
            );
            let _ = writeln!(s, "{}", line.trim_end());
        }
    }
    let yn = |b: Option<bool>| b.map_or("-", |b| if b { "yes" } else { "no" });
    if let Some(c) = &f.ceph {
        section(&mut s, "ceph");
        let osds: Vec<String> = c.osds_here.iter().map(|o| format!("osd.{o}")).collect();
        let map = c.osds.map_or("-".to_string(), |o| {
            format!("{}/{} up, {}/{} in", o.up, o.total, o.inside, o.total)
        });
        let _ = writeln!(
            s,
            "  monitor {} osds {} noout {} healthy {} osd map {}",
            yn(Some(c.monitor_here)),
            if osds.is_empty() {
                "-".to_string()
            } else {
                osds.join(" ")
            },
            yn(c.noout),
            yn(c.healthy),
            map
        );
    }
    let h = &f.ha;
    if h.resources > 0 || h.maintenance.is_some() || h.shutdown_policy.is_some() {
        section(&mut s, "ha");
        let _ = writeln!(
            s,
            "  resources {} maintenance {} disarmed {} shutdown_policy {}",
            h.resources,
            yn(h.maintenance),
            yn(h.disarmed),
            opt(&h.shutdown_policy)
        );
    }

    section(&mut s, "findings");
    if report.findings.is_empty() {
        let _ = writeln!(s, "  none");
    }
    for area in ["boot", "apt", "dns", "cluster", "agent"] {
        for f in report
            .findings
            .iter()
            .filter(|f| f.code.split('.').next() == Some(area))
        {
            finding(&mut s, f, color);
        }
    }
    s
}

fn section(s: &mut String, name: &str) {
    let _ = writeln!(s, "\n{name}");
}

fn finding(s: &mut String, f: &Finding, color: bool) {
    let sev = f.severity.as_str();
    let sev = if color {
        let code = match f.severity {
            Severity::Error => "31",
            Severity::Warning => "33",
            Severity::Info => "36",
        };
        format!("\x1b[{code}m{sev:<7}\x1b[0m")
    } else {
        format!("{sev:<7}")
    };
    let at = match (&f.path, f.line) {
        (Some(p), Some(l)) => format!(" ({p}:{l})"),
        (Some(p), None) => format!(" ({p})"),
        _ => String::new(),
    };
    let _ = writeln!(s, "  {sev} {:<28} {}{at}", f.code, f.message);
}
