//! APT sources (`sources.list` and every file in `sources.list.d`) and the upgrades apt's
//! downloaded package lists offer.

use super::Reader;
use crate::parse::{apt, control::Installed, packages};
use fleetward_proto::{upgrade_needs_reboot, AptEntry, AptFacts, AptFile, AptFileFormat};
use std::collections::BTreeSet;

pub const SOURCES_LIST: &str = "/etc/apt/sources.list";
pub const SOURCES_DIR: &str = "/etc/apt/sources.list.d";
pub const LISTS_DIR: &str = "/var/lib/apt/lists";

pub(super) fn apt(r: &mut Reader, installed: &[Installed]) -> AptFacts {
    let mut facts = AptFacts::default();
    facts.upgradable = upgradable(r, installed);
    facts.upgrade_needs_reboot = facts
        .upgradable
        .iter()
        .any(|u| upgrade_needs_reboot(&u.package));
    let mut files: Vec<(String, AptFileFormat, Option<String>)> = Vec::new();
    if r.root.exists(SOURCES_LIST) {
        files.push((SOURCES_LIST.to_string(), AptFileFormat::OneLine, None));
    }
    for name in r.root.list_dir(SOURCES_DIR) {
        let path = format!("{SOURCES_DIR}/{name}");
        if r.root.is_dir(&path) {
            continue;
        }
        match apt::ignore_reason(&name) {
            Some(reason) => files.push((path, AptFileFormat::Ignored, Some(reason))),
            None => files.push((path, apt::file_format(&name), None)),
        }
    }
    for (path, format, ignored_reason) in files {
        let size = r.root.file_size(&path).unwrap_or(0);
        if format != AptFileFormat::Ignored {
            if let Some(text) = r.text(&path) {
                let parsed = apt::parse(&path, format, &text);
                facts.entries.extend(parsed.entries);
                facts.errors.extend(parsed.errors);
            }
        } else if let Some(kept) = kept_format(&path) {
            // A disabled reference: read for the record; apt does not, so its errors
            // are not apt's errors.
            if let Some(text) = r.text(&path) {
                let parsed = apt::parse(&path, kept, &text);
                facts
                    .ignored_entries
                    .extend(parsed.entries.into_iter().map(|e| AptEntry {
                        enabled: false,
                        ..e
                    }));
            }
        }
        facts.files.push(AptFile {
            path,
            format,
            ignored_reason,
            size,
        });
    }
    facts
}

/// What every `*_Packages` index in the lists directory offers the installed packages.
///
/// Only plain-text indexes are read: Debian keeps them uncompressed unless apt is configured
/// otherwise (`Acquire::GzipIndexes`, or `*_Packages.lz4` with `Acquire::CompressionTypes`),
/// and compressed ones (`.lz4`, `.gz`, `.xz`, ...) are skipped, not decoded.
fn upgradable(r: &mut Reader, installed: &[Installed]) -> Vec<fleetward_proto::Upgrade> {
    if installed.is_empty() {
        return Vec::new();
    }
    let names: BTreeSet<&str> = installed.iter().map(|p| p.name.as_str()).collect();
    let mut available = Vec::new();
    for name in r.root.list_dir(LISTS_DIR) {
        if !name.ends_with("_Packages") {
            continue;
        }
        let path = format!("{LISTS_DIR}/{name}");
        if r.root.is_dir(&path) {
            continue;
        }
        if let Some(text) = r.text(&path) {
            available.extend(packages::parse(&text, |p| names.contains(p)));
        }
    }
    packages::upgradable(installed, available)
}

/// The format an ignored file would have if it were enabled again: `x.sources.disabled`
/// is deb822, `x.list.bak` one-line; anything else is not a sources file.
fn kept_format(path: &str) -> Option<AptFileFormat> {
    let name = path.rsplit('/').next().unwrap_or(path);
    let sources = name.rfind(".sources.");
    let list = name.rfind(".list.");
    match (sources, list) {
        (Some(s), Some(l)) if l > s => Some(AptFileFormat::OneLine),
        (Some(_), _) => Some(AptFileFormat::Deb822),
        (None, Some(_)) => Some(AptFileFormat::OneLine),
        (None, None) => None,
    }
}
