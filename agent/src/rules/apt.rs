//! `apt.*`: package sources.

use super::{is_pve, unknown_under, At, Findings};
use fleetward_proto::{AptEntry, AptFileFormat, Facts, Severity::*};
use std::collections::BTreeMap;

/// Free space below which a dist-upgrade is risky.
const LOW_SPACE_BYTES: u64 = 5 << 30;

/// `scheme://host/path` without a trailing slash, lower-cased scheme and host.
pub fn normalize_uri(uri: &str) -> String {
    let uri = uri.trim_end_matches('/');
    match uri.split_once("://") {
        Some((scheme, rest)) => {
            let (host, path) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
            let host = host.to_ascii_lowercase();
            if path.is_empty() {
                format!("{}://{host}", scheme.to_ascii_lowercase())
            } else {
                format!("{}://{host}/{path}", scheme.to_ascii_lowercase())
            }
        }
        None => uri.to_string(),
    }
}

fn host(uri: &str) -> &str {
    let rest = uri.split_once("://").map_or(uri, |(_, r)| r);
    let host = rest.split('/').next().unwrap_or("");
    host.rsplit_once('@').map_or(host, |(_, h)| h)
}

/// The release a suite belongs to: `trixie-security` → `trixie`.
pub fn base_suite(suite: &str) -> &str {
    let s = suite.trim_end_matches('/');
    for suffix in [
        "-proposed-updates",
        "-updates",
        "-security",
        "-backports",
        "-debug",
    ] {
        if let Some(base) = s.strip_suffix(suffix) {
            return base;
        }
    }
    s.split('/').next().unwrap_or(s)
}

fn is_vendor(uri: &str) -> bool {
    let h = host(uri).to_ascii_lowercase();
    h.ends_with("debian.org") || h.ends_with("proxmox.com")
}

/// Every enabled (type, URI, suite, component) an entry stands for.
pub fn targets(e: &AptEntry) -> Vec<(String, String, String, String)> {
    let mut out = Vec::new();
    let comps: Vec<&str> = if e.components.is_empty() {
        vec![""]
    } else {
        e.components.iter().map(String::as_str).collect()
    };
    for t in &e.types {
        for u in &e.uris {
            for s in &e.suites {
                for c in &comps {
                    out.push((t.clone(), normalize_uri(u), s.clone(), c.to_string()));
                }
            }
        }
    }
    out
}

pub(super) fn check(f: &Facts, out: &mut Findings) {
    let apt = &f.apt;
    transaction(f, out);
    for e in &apt.errors {
        out.push("apt.parse-error", Error, e.message.clone())
            .at(&e.path, Some(e.line));
    }
    let enabled: Vec<&AptEntry> = apt.entries.iter().filter(|e| e.enabled).collect();

    let mut seen: BTreeMap<(String, String, String, String), (&str, u32)> = BTreeMap::new();
    for e in &enabled {
        for t in targets(e) {
            match seen.get(&t) {
                Some((file, line)) if !(*file == e.file && *line == e.line) => {
                    // apt warns "configured multiple times" and goes on: hygiene, not a fault.
                    out.push(
                        "apt.duplicate",
                        Warning,
                        format!(
                            "{} {} {} {} is configured multiple times: in {file}:{line} and here",
                            t.0, t.1, t.2, t.3
                        ),
                    )
                    .at(&e.file, Some(e.line));
                }
                Some(_) => {}
                None => {
                    seen.insert(t, (e.file.as_str(), e.line));
                }
            }
        }
    }

    for e in &enabled {
        let uris: Vec<String> = e.uris.iter().map(|u| normalize_uri(u)).collect();
        if uris.iter().any(|u| host(u) == "enterprise.proxmox.com") {
            out.push(
                "apt.enterprise-enabled",
                Warning,
                format!("enterprise repository {} is enabled: without a subscription apt-get update fails with 401", uris.join(" ")),
            )
            .at(&e.file, Some(e.line));
        }
        // pve8to9's `check_apt_repos` flags `pvetest`/`pve-test`; the agent flags any enabled
        // Proxmox test repository, Ceph's `test` component included.
        let proxmox = uris.iter().any(|u| host(u).ends_with("proxmox.com"));
        let ceph = uris.iter().any(|u| u.contains("/ceph"));
        let test: Vec<&String> = e
            .components
            .iter()
            .filter(|c| {
                proxmox
                    && (c.as_str() == "pve-test"
                        || c.as_str() == "pvetest"
                        || (ceph && c.as_str() == "test"))
            })
            .collect();
        if let Some(c) = test.first() {
            out.push(
                "apt.test-repo",
                Warning,
                format!("test repository '{c}' is enabled: it may pull in unstable updates"),
            )
            .at(&e.file, Some(e.line));
        }
    }

    // pve8to9's `check_apt_repos` finds mixed old/new suites among Debian and Proxmox
    // entries; the agent compares them with the OS's codename (or the majority).
    let codename = f.node.os.codename.as_deref();
    let vendor: Vec<&&AptEntry> = enabled
        .iter()
        .filter(|e| e.uris.iter().any(|u| is_vendor(u)))
        .collect();
    let mut releases: BTreeMap<&str, usize> = BTreeMap::new();
    for e in &vendor {
        for s in e.suites.iter().filter(|s| !s.ends_with('/')) {
            *releases.entry(base_suite(s)).or_default() += 1;
        }
    }
    let expected = codename.or_else(|| releases.iter().max_by_key(|(_, n)| **n).map(|(s, _)| *s));
    if let Some(expected) = expected {
        for e in &vendor {
            let wrong: Vec<&String> = e
                .suites
                .iter()
                .filter(|s| !s.ends_with('/') && base_suite(s) != expected)
                .collect();
            if !wrong.is_empty() {
                let what = if codename.is_some() {
                    "the OS release"
                } else {
                    "the other entries' release"
                };
                out.push(
                    "apt.suite-mismatch",
                    Error,
                    format!(
                        "suite {} does not match {what} '{expected}'",
                        wrong
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(" ")
                    ),
                )
                .at(&e.file, Some(e.line));
            }
        }
    }

    if let Some(codename) = codename {
        let want = format!("{codename}-security");
        for e in &enabled {
            let security = e.uris.iter().any(|u| {
                host(u) == "security.debian.org" || normalize_uri(u).ends_with("/debian-security")
            });
            if security {
                if let Some(bad) = e.suites.iter().find(|s| **s != want) {
                    out.push(
                        "apt.security-suite",
                        Error,
                        format!("the security repository's suite is '{bad}', expected '{want}'"),
                    )
                    .at(&e.file, Some(e.line));
                }
            }
        }
    }

    // A sources file (or the directory) that could not be read may hold the repository.
    if is_pve(f) && !unknown_under(f, "/etc/apt/sources.list") {
        let pve_repo = enabled.iter().any(|e| {
            e.uris.iter().any(|u| {
                let u = normalize_uri(u);
                host(&u).ends_with("proxmox.com")
                    && (u.ends_with("/debian/pve") || u.ends_with("/debian"))
            }) && e.components.iter().any(|c| {
                matches!(
                    c.as_str(),
                    "pve-enterprise" | "pve-no-subscription" | "pve-test" | "pvetest"
                )
            })
        });
        if !pve_repo {
            out.push(
                "apt.no-proxmox-repo",
                Error,
                "pve-manager is installed but no Proxmox VE repository is enabled: the node gets no updates".into(),
            );
        }
    }

    for path in &apt.unreadable_lists {
        out.push(
            "apt.lists-unreadable",
            Warning,
            "apt's package list exists but could not be read or decoded: pending upgrades are unknown (run apt-get update)".into(),
        )
        .at(path, None);
    }

    // pve8to9's `check_misc` warns below 5 GB free on the root file system ("upgrade may
    // fail"); apt downloads into /var/cache/apt/archives, which may be elsewhere.
    for (mount, free) in [
        ("/", f.system.root_free_bytes),
        ("/var/cache/apt/archives", f.system.apt_archives_free_bytes),
    ] {
        if let Some(free) = free.filter(|b| *b < LOW_SPACE_BYTES) {
            out.push(
                "apt.low-space",
                Warning,
                format!(
                    "only {:.1} GiB free on the file system of {mount} (less than 5 GiB): a dist-upgrade can fail half way",
                    free as f64 / (1u64 << 30) as f64
                ),
            )
            .at(mount, None);
        }
    }

    let trixie_or_later = f
        .node
        .os
        .version_id
        .as_deref()
        .and_then(|v| v.split('.').next()?.parse::<u32>().ok())
        .is_some_and(|v| v >= 13);
    for file in &apt.files {
        match file.format {
            AptFileFormat::OneLine
                if trixie_or_later && apt.entries.iter().any(|e| e.file == file.path) =>
            {
                out.push(
                        "apt.legacy-format",
                        Info,
                        "one-line sources format in use; apt on Debian 13 prefers deb822 .sources (apt modernize-sources)".into(),
                    )
                    .at(&file.path, None);
            }
            AptFileFormat::Ignored => {
                out.push(
                    "apt.ignored-file",
                    Info,
                    format!(
                        "apt ignores this file: {}",
                        file.ignored_reason
                            .as_deref()
                            .unwrap_or("not a .list or .sources file")
                    ),
                )
                .at(&file.path, None);
            }
            _ => {}
        }
    }
}

/// `upgrade.removes-protected` and `upgrade.held-back`, from apt's own simulation of the
/// next dist-upgrade (present only when the agent asked apt; see `AptFacts::transaction`).
fn transaction(f: &Facts, out: &mut Findings) {
    let Some(t) = &f.apt.transaction else {
        return;
    };
    let protected =
        crate::parse::apt_sim::protected_removals(&t.removed, f.node.running_kernel.as_deref());
    if !protected.is_empty() {
        out.push(
            "upgrade.removes-protected",
            Error,
            format!(
                "apt-get dist-upgrade would remove {}: a rollout refuses this node (check the package sources)",
                protected.join(", ")
            ),
        );
    }
    if !t.kept_back.is_empty() {
        out.push(
            "upgrade.held-back",
            Info,
            format!(
                "apt keeps {} package(s) back (held, or not upgradable without other changes); the node will not be fully upgraded: {}",
                t.kept_back.len(),
                t.kept_back.join(", ")
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_and_suites() {
        assert_eq!(
            normalize_uri("HTTP://Deb.Debian.org/debian/"),
            "http://deb.debian.org/debian"
        );
        assert_eq!(
            host("http://user@download.proxmox.com/debian/pve"),
            "download.proxmox.com"
        );
        assert_eq!(base_suite("trixie-security"), "trixie");
        assert_eq!(base_suite("bookworm-proposed-updates"), "bookworm");
        assert_eq!(base_suite("trixie/updates"), "trixie");
    }
}
