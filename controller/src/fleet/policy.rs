//! `policy.*`: every node compared with the operator's desired state.
//!
//! The policy is a TOML file the operator keeps in git (`packaging/policy/seed.toml` is the
//! seed cluster's). Every section and every field is optional: what a policy leaves out is
//! not checked. Unknown fields are errors, so a typo never silently disables a check.
//!
//! Semantics, per field:
//! - `apt.sources_list_empty = true`: `/etc/apt/sources.list` exists and holds no entry
//!   (`false` requires nothing).
//! - `apt.files`: the exact set of file names in `/etc/apt/sources.list.d`, ignored ones
//!   (`*.disabled`) included.
//! - `apt.repos`: the exact set of *enabled* repositories, one `type uri suite [component]`
//!   each (a deb822 stanza with three components is three repos). URIs are normalised.
//! - `apt.disabled`: URIs that must exist as disabled references (an entry in a file apt
//!   ignores, or `Enabled: no`) and never enabled. Enabled is `policy.apt-repo`; a missing
//!   reference is `policy.apt-files`.
//! - `dns.nameservers`, `dns.search`: resolv.conf's lists, in order (resolver order matters).
//! - `dns.interfaces_match = true`: `/etc/network/interfaces` sets the same `dns-nameservers`
//!   and `dns-search` as resolv.conf, so `ifreload -a` keeps DNS as it is.
//! - `boot.*`: firmware mode, Secure Boot *state* (Setup Mode is not policy: the agent reports
//!   it as `boot.secure-boot-setup-mode`), boot-loader packages installed/absent (among those
//!   the agent reports: GRUB, shim, systemd-boot, proxmox-kernel-helper), whether ESP sync is
//!   configured, and the kernel hook's owning package.
//!
//! `sources_list_empty` violations are `policy.apt-files` (sources.list's content, not a
//! repository); an extra repository there is *also* `policy.apt-repo`, unless it duplicates
//! one the policy wants.

use super::normalize::{entry_repos, normalize_uri, parse_repo, secure_boot_state};
use super::{sort_findings, FleetFinding, NodeView};
use fleetward_proto::{AptEntry, Facts, Finding, Firmware, Severity};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

const SOURCES_LIST: &str = "/etc/apt/sources.list";
const SOURCES_DIR: &str = "/etc/apt/sources.list.d/";
const INTERFACES: &str = "/etc/network/interfaces";

/// The desired state of every node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apt: Option<AptPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<BootPolicy>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AptPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sources_list_empty: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repos: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nameservers: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interfaces_match: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<Firmware>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_boot: Option<SecureBoot>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packages_installed: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packages_absent: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub esp_sync: Option<EspSync>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_hook_owner: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecureBoot {
    Enabled,
    Disabled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EspSync {
    Configured,
    NotConfigured,
}

impl SecureBoot {
    fn as_str(self) -> &'static str {
        match self {
            SecureBoot::Enabled => "enabled",
            SecureBoot::Disabled => "disabled",
        }
    }
}

impl EspSync {
    fn as_str(self) -> &'static str {
        match self {
            EspSync::Configured => "configured",
            EspSync::NotConfigured => "not-configured",
        }
    }
}

fn firmware_str(f: Firmware) -> &'static str {
    match f {
        Firmware::Uefi => "uefi",
        Firmware::Bios => "bios",
    }
}

/// Why a policy file was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("policy line {line}, column {column}: {message}")]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("policy {field}: {value:?}: {reason}")]
    Invalid {
        field: &'static str,
        value: String,
        reason: String,
    },
}

impl Policy {
    /// Parse and validate a policy file; repository entries and URIs come out normalised.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        let mut p: Policy = toml::from_str(text).map_err(|e| {
            let start = e.span().map_or(0, |s| s.start).min(text.len());
            let before = text.get(..start).unwrap_or("");
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            PolicyError::Syntax {
                line,
                column,
                message: e.message().trim().to_string(),
            }
        })?;
        if let Some(apt) = &mut p.apt {
            if let Some(files) = &apt.files {
                if let Some(bad) = files.iter().find(|f| f.is_empty() || f.contains('/')) {
                    return Err(invalid(
                        "apt.files",
                        bad,
                        "a file name, without a directory",
                    ));
                }
            }
            let disabled: Vec<String> = apt
                .disabled
                .iter()
                .flatten()
                .map(|u| normalize_uri(u))
                .collect();
            if let Some(repos) = &mut apt.repos {
                for r in repos.iter_mut() {
                    let Some(norm) = parse_repo(r) else {
                        return Err(invalid(
                            "apt.repos",
                            r,
                            "expected \"type uri suite [component]\" (one component per entry)",
                        ));
                    };
                    let uri = norm.split(' ').nth(1).unwrap_or("");
                    if disabled.iter().any(|d| d == uri) {
                        return Err(invalid(
                            "apt.repos",
                            r,
                            "its URI is listed in apt.disabled, which must never be enabled",
                        ));
                    }
                    *r = norm;
                }
            }
            if apt.disabled.is_some() {
                apt.disabled = Some(disabled);
            }
        }
        Ok(p)
    }

    /// The policy as a commented TOML file that [`Policy::parse`] reads back unchanged.
    pub fn to_toml(&self) -> String {
        let mut t = String::from("# fleetward policy: the cluster's target state\n");
        if let Some(a) = &self.apt {
            t.push_str("\n[apt]\n");
            field(
                &mut t,
                "/etc/apt/sources.list exists and holds no entry (false: not checked)",
                "sources_list_empty",
                a.sources_list_empty.map(toml::Value::Boolean),
            );
            field(
                &mut t,
                "the exact set of file names in /etc/apt/sources.list.d",
                "files",
                a.files.as_deref().map(array),
            );
            field(
                &mut t,
                "the exact set of enabled repositories: type uri suite component",
                "repos",
                a.repos.as_deref().map(array),
            );
            field(
                &mut t,
                "URIs that exist only as disabled references, never enabled",
                "disabled",
                a.disabled.as_deref().map(array),
            );
        }
        if let Some(d) = &self.dns {
            t.push_str("\n[dns]\n");
            field(
                &mut t,
                "/etc/resolv.conf nameservers, in order",
                "nameservers",
                d.nameservers.as_deref().map(array),
            );
            field(
                &mut t,
                "/etc/resolv.conf search domains, in order",
                "search",
                d.search.as_deref().map(array),
            );
            field(
                &mut t,
                "/etc/network/interfaces dns-* agree with resolv.conf (false: not checked)",
                "interfaces_match",
                d.interfaces_match.map(toml::Value::Boolean),
            );
        }
        if let Some(b) = &self.boot {
            t.push_str("\n[boot]\n");
            field(
                &mut t,
                "\"uefi\" or \"bios\"",
                "firmware",
                b.firmware.map(|f| string(firmware_str(f))),
            );
            field(
                &mut t,
                "\"enabled\" or \"disabled\" (Setup Mode is not policy)",
                "secure_boot",
                b.secure_boot.map(|s| string(s.as_str())),
            );
            field(
                &mut t,
                "boot-loader packages that must be installed",
                "packages_installed",
                b.packages_installed.as_deref().map(array),
            );
            field(
                &mut t,
                "boot-loader packages that must not be installed",
                "packages_absent",
                b.packages_absent.as_deref().map(array),
            );
            field(
                &mut t,
                "\"configured\" (an ESP list exists) or \"not-configured\"",
                "esp_sync",
                b.esp_sync.map(|s| string(s.as_str())),
            );
            field(
                &mut t,
                "package owning /etc/kernel/postinst.d/zz-proxmox-boot",
                "kernel_hook_owner",
                b.kernel_hook_owner.as_deref().map(string),
            );
        }
        t
    }
}

fn invalid(field: &'static str, value: &str, reason: &str) -> PolicyError {
    PolicyError::Invalid {
        field,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

fn string(s: &str) -> toml::Value {
    toml::Value::String(s.to_string())
}

fn array(items: &[String]) -> toml::Value {
    toml::Value::Array(items.iter().map(|s| string(s)).collect())
}

/// `# comment` then `key = value`; arrays one item per line.
fn field(t: &mut String, comment: &str, key: &str, value: Option<toml::Value>) {
    let Some(value) = value else { return };
    let _ = writeln!(t, "# {comment}");
    match &value {
        toml::Value::Array(items) if !items.is_empty() => {
            let _ = writeln!(t, "{key} = [");
            for item in items {
                let _ = writeln!(t, "    {item},");
            }
            t.push_str("]\n");
        }
        _ => {
            let _ = writeln!(t, "{key} = {value}");
        }
    }
}

/// Differences found for one code on one node, each with the path it concerns.
#[derive(Default)]
struct Diffs(Vec<(String, Option<String>)>);

impl Diffs {
    fn push(&mut self, text: String, path: Option<&str>) {
        self.0.push((text, path.map(str::to_string)));
    }

    fn finding(self, code: &str) -> Option<Finding> {
        if self.0.is_empty() {
            return None;
        }
        let paths: BTreeSet<&String> = self.0.iter().filter_map(|(_, p)| p.as_ref()).collect();
        let path = match paths.into_iter().collect::<Vec<_>>().as_slice() {
            [one] => Some((*one).clone()),
            _ => None,
        };
        let texts: Vec<&str> = self.0.iter().map(|(t, _)| t.as_str()).collect();
        Some(Finding {
            code: code.to_string(),
            severity: Severity::Warning,
            message: texts.join("; "),
            path,
            line: None,
        })
    }
}

/// Every node compared with the policy: at most one finding per node and code, listing
/// every difference. Sorted by node, then code.
pub fn check(policy: &Policy, nodes: &[NodeView]) -> Vec<FleetFinding> {
    let mut out = Vec::new();
    for n in nodes {
        let mut by_code: [(&str, Diffs); 4] = [
            ("policy.apt-files", Diffs::default()),
            ("policy.apt-repo", Diffs::default()),
            ("policy.boot", Diffs::default()),
            ("policy.dns", Diffs::default()),
        ];
        let [files, repos, boot, dns] = &mut by_code;
        if let Some(p) = &policy.apt {
            check_apt(p, n.facts, &mut files.1, &mut repos.1);
        }
        if let Some(p) = &policy.boot {
            check_boot(p, n.facts, &mut boot.1);
        }
        if let Some(p) = &policy.dns {
            check_dns(p, n.facts, &mut dns.1);
        }
        for (code, diffs) in by_code {
            if let Some(finding) = diffs.finding(code) {
                out.push(FleetFinding {
                    node: n.name.to_string(),
                    finding,
                });
            }
        }
    }
    sort_findings(&mut out);
    out
}

/// Enabled repositories of a node, each with the first file enabling it.
fn enabled_repos(f: &Facts) -> BTreeMap<String, &str> {
    let mut m = BTreeMap::new();
    for e in f.apt.entries.iter().filter(|e| e.enabled) {
        for r in entry_repos(e) {
            m.entry(r).or_insert(e.file.as_str());
        }
    }
    m
}

/// Entries that are disabled references: in an ignored file, or `Enabled: no`.
fn disabled_refs(f: &Facts) -> impl Iterator<Item = &AptEntry> {
    f.apt
        .entries
        .iter()
        .chain(&f.apt.ignored_entries)
        .filter(|e| !e.enabled)
}

fn list_dir_names(f: &Facts) -> BTreeSet<&str> {
    f.apt
        .files
        .iter()
        .filter_map(|file| file.path.strip_prefix(SOURCES_DIR))
        .filter(|name| !name.is_empty() && !name.contains('/'))
        .collect()
}

fn check_apt(p: &AptPolicy, f: &Facts, files: &mut Diffs, repos: &mut Diffs) {
    if p.sources_list_empty == Some(true) {
        if !f.apt.files.iter().any(|file| file.path == SOURCES_LIST) {
            files.push(format!("{SOURCES_LIST} is missing"), Some(SOURCES_LIST));
        } else {
            let mut lines: Vec<u32> = f
                .apt
                .entries
                .iter()
                .filter(|e| e.file == SOURCES_LIST)
                .map(|e| e.line)
                .chain(
                    f.apt
                        .errors
                        .iter()
                        .filter(|e| e.path == SOURCES_LIST)
                        .map(|e| e.line),
                )
                .collect();
            lines.sort_unstable();
            lines.dedup();
            if !lines.is_empty() {
                let lines: Vec<String> = lines.iter().map(u32::to_string).collect();
                files.push(
                    format!(
                        "{SOURCES_LIST} is not empty (entries at line {})",
                        lines.join(", ")
                    ),
                    Some(SOURCES_LIST),
                );
            }
        }
    }
    if let Some(want) = &p.files {
        let want: BTreeSet<&str> = want.iter().map(String::as_str).collect();
        let have = list_dir_names(f);
        for name in want.difference(&have) {
            files.push(
                format!("missing {name}"),
                Some(SOURCES_DIR.trim_end_matches('/')),
            );
        }
        for name in have.difference(&want) {
            files.push(
                format!("extra {name}"),
                Some(SOURCES_DIR.trim_end_matches('/')),
            );
        }
    }
    let enabled = enabled_repos(f);
    if let Some(want) = &p.repos {
        let want: BTreeSet<&str> = want.iter().map(String::as_str).collect();
        for r in &want {
            if !enabled.contains_key(*r) {
                repos.push(format!("missing repo {r}"), None);
            }
        }
        for (r, file) in &enabled {
            if !want.contains(r.as_str()) {
                repos.push(format!("extra repo {r} ({file})"), Some(file));
            }
        }
    }
    for uri in p.disabled.iter().flatten() {
        let uri = normalize_uri(uri);
        let enabled_in: BTreeSet<&str> = f
            .apt
            .entries
            .iter()
            .filter(|e| e.enabled && e.uris.iter().any(|u| normalize_uri(u) == uri))
            .map(|e| e.file.as_str())
            .collect();
        for file in enabled_in {
            repos.push(
                format!("{uri} is enabled in {file}, policy keeps it only as a disabled reference"),
                Some(file),
            );
        }
        if !disabled_refs(f).any(|e| e.uris.iter().any(|u| normalize_uri(u) == uri)) {
            files.push(format!("no disabled reference to {uri}"), None);
        }
    }
}

fn shown(v: &[String]) -> String {
    if v.is_empty() {
        "none".to_string()
    } else {
        v.join(" ")
    }
}

fn check_dns(p: &DnsPolicy, f: &Facts, dns: &mut Diffs) {
    let rc = &f.dns.resolv_conf;
    let ifs = &f.dns.interfaces;
    for (what, have, want) in [
        ("nameservers", &rc.nameservers, &p.nameservers),
        ("search", &rc.search, &p.search),
    ] {
        if let Some(want) = want {
            if have != want {
                dns.push(
                    format!("{what} {}, policy wants {}", shown(have), shown(want)),
                    Some("/etc/resolv.conf"),
                );
            }
        }
    }
    if p.interfaces_match == Some(true) {
        for (what, have, resolv) in [
            ("dns-nameservers", &ifs.nameservers, &rc.nameservers),
            ("dns-search", &ifs.search, &rc.search),
        ] {
            if have != resolv {
                dns.push(
                    format!(
                        "{INTERFACES} {what} {}, resolv.conf {} (ifreload -a changes DNS)",
                        shown(have),
                        shown(resolv)
                    ),
                    Some(INTERFACES),
                );
            }
        }
    }
}

fn check_boot(p: &BootPolicy, f: &Facts, boot: &mut Diffs) {
    let b = &f.boot;
    if let Some(want) = p.firmware {
        if b.firmware != want {
            let (have, want) = (firmware_str(b.firmware), firmware_str(want));
            boot.push(format!("firmware {have}, policy wants {want}"), None);
        }
    }
    if let Some(want) = p.secure_boot {
        let have = secure_boot_state(f);
        if have != Some(want.as_str()) {
            let have = have.unwrap_or("not available (BIOS)");
            boot.push(
                format!("Secure Boot {have}, policy wants {}", want.as_str()),
                None,
            );
        }
    }
    let installed: BTreeMap<&str, &str> = b
        .packages
        .iter()
        .map(|p| (p.name.as_str(), p.version.as_str()))
        .collect();
    for name in p.packages_installed.iter().flatten() {
        if !installed.contains_key(name.as_str()) {
            boot.push(format!("package {name} not installed"), None);
        }
    }
    for name in p.packages_absent.iter().flatten() {
        if let Some(version) = installed.get(name.as_str()) {
            boot.push(
                format!("package {name} {version} installed, policy wants it absent"),
                None,
            );
        }
    }
    if let Some(want) = p.esp_sync {
        let have = if b.esp_list_exists {
            EspSync::Configured
        } else {
            EspSync::NotConfigured
        };
        if have != want {
            boot.push(
                format!(
                    "ESP sync {} ({} {}), policy wants {}",
                    have.as_str(),
                    b.esp_list_path,
                    if b.esp_list_exists {
                        "exists"
                    } else {
                        "does not exist"
                    },
                    want.as_str()
                ),
                Some(&b.esp_list_path),
            );
        }
    }
    if let Some(want) = &p.kernel_hook_owner {
        let hook = &b.kernel_hook;
        let problem = match (&hook.owner, hook.exists) {
            (_, false) => Some("is missing".to_string()),
            (Some(owner), true) if owner == want => None,
            (Some(owner), true) => Some(format!("is owned by {owner}")),
            (None, true) => Some("belongs to no package".to_string()),
        };
        if let Some(problem) = problem {
            boot.push(
                format!("kernel hook {problem}, policy wants it owned by {want}"),
                Some(&hook.path),
            );
        }
    }
}

/// The policy a node satisfies now: checking the node against it finds nothing. Setup
/// Mode, identities and versions are not captured.
pub fn capture(f: &Facts) -> Policy {
    let apt = &f.apt;
    let enabled = enabled_repos(f);
    let enabled_uris: BTreeSet<String> = apt
        .entries
        .iter()
        .filter(|e| e.enabled)
        .flat_map(|e| e.uris.iter().map(|u| normalize_uri(u)))
        .collect();
    let disabled: BTreeSet<String> = disabled_refs(f)
        .flat_map(|e| e.uris.iter().map(|u| normalize_uri(u)))
        .filter(|u| !enabled_uris.contains(u))
        .collect();
    let sources_list_empty = apt.files.iter().any(|file| file.path == SOURCES_LIST)
        && !apt.entries.iter().any(|e| e.file == SOURCES_LIST)
        && !apt.errors.iter().any(|e| e.path == SOURCES_LIST);

    let rc = &f.dns.resolv_conf;
    let ifs = &f.dns.interfaces;
    let interfaces_match = ifs.nameservers == rc.nameservers && ifs.search == rc.search;

    let b = &f.boot;
    let installed: Vec<String> = b.packages.iter().map(|p| p.name.clone()).collect();
    let absent: Vec<String> = fleetward_proto::BOOT_PACKAGES
        .iter()
        .filter(|t| !installed.iter().any(|i| i == *t))
        .map(|t| t.to_string())
        .collect();
    let secure_boot = match secure_boot_state(f) {
        Some("enabled") => Some(SecureBoot::Enabled),
        Some("disabled") => Some(SecureBoot::Disabled),
        _ => None,
    };
    let hook_owner = b.kernel_hook.owner.clone().filter(|_| b.kernel_hook.exists);

    Policy {
        apt: Some(AptPolicy {
            sources_list_empty: sources_list_empty.then_some(true),
            files: Some(list_dir_names(f).into_iter().map(str::to_string).collect()),
            repos: Some(enabled.into_keys().collect()),
            disabled: Some(disabled.into_iter().collect()),
        }),
        dns: Some(DnsPolicy {
            nameservers: Some(rc.nameservers.clone()),
            search: Some(rc.search.clone()),
            interfaces_match: interfaces_match.then_some(true),
        }),
        boot: Some(BootPolicy {
            firmware: Some(b.firmware),
            secure_boot,
            packages_installed: Some(installed),
            packages_absent: Some(absent),
            esp_sync: Some(if b.esp_list_exists {
                EspSync::Configured
            } else {
                EspSync::NotConfigured
            }),
            kernel_hook_owner: hook_owner,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_policies_parse() {
        assert_eq!(Policy::parse("").unwrap_or_default(), Policy::default());
        let p = Policy::parse("[dns]\nnameservers = [\"192.168.1.110\"]\n");
        let dns = p.ok().and_then(|p| p.dns);
        assert_eq!(
            dns.and_then(|d| d.nameservers),
            Some(vec!["192.168.1.110".to_string()])
        );
    }

    #[test]
    fn errors_name_the_place_and_problem() {
        let e = Policy::parse("[dns]\nnameservers = [\"x\"]\nsaerch = []\n");
        match e {
            Err(PolicyError::Syntax {
                line,
                column,
                message,
            }) => {
                assert_eq!((line, column), (3, 1));
                assert!(message.contains("saerch"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let e = Policy::parse("[boot]\nfirmware = \"efi\"\n");
        assert!(
            matches!(e, Err(PolicyError::Syntax { line: 2, .. })),
            "{e:?}"
        );
        let e = Policy::parse("[apt]\nrepos = [\"deb http://x\"]\n");
        assert!(matches!(
            e,
            Err(PolicyError::Invalid {
                field: "apt.repos",
                ..
            })
        ));
        let e = Policy::parse("[apt]\nfiles = [\"/etc/apt/x.sources\"]\n");
        assert!(matches!(
            e,
            Err(PolicyError::Invalid {
                field: "apt.files",
                ..
            })
        ));
        let e = Policy::parse(
            "[apt]\nrepos = [\"deb https://Enterprise.proxmox.com/debian/pve/ trixie pve-enterprise\"]\ndisabled = [\"https://enterprise.proxmox.com/debian/pve\"]\n",
        );
        assert!(e.is_err_and(|e| e.to_string().contains("apt.disabled")));
    }

    #[test]
    fn repos_are_normalised_on_parse() {
        let p =
            Policy::parse("[apt]\nrepos = [\"deb HTTP://Deb.debian.org/debian/ trixie main\"]\n");
        let repos = p.ok().and_then(|p| p.apt).and_then(|a| a.repos);
        assert_eq!(
            repos,
            Some(vec![
                "deb http://deb.debian.org/debian trixie main".to_string()
            ])
        );
    }
}
