//! APT sources (`sources.list` and every file in `sources.list.d`) and the upgrades apt's
//! downloaded package lists offer.

use super::{Input, Reader};
use crate::parse::{apt, compressed, control::Installed, packages};
use fleetward_proto::{upgrade_needs_reboot, AptEntry, AptFacts, AptFile, AptFileFormat};
use std::collections::BTreeSet;

pub const SOURCES_LIST: &str = "/etc/apt/sources.list";
pub const SOURCES_DIR: &str = "/etc/apt/sources.list.d";
pub const LISTS_DIR: &str = "/var/lib/apt/lists";
/// Package lists are far larger than configuration files (Debian's main list is tens of
/// MB): they are read with their own limits, compressed and decoded.
const LIST_MAX_BYTES: u64 = 256 * 1024 * 1024;
const LIST_MAX_DECODED: usize = 512 * 1024 * 1024;

pub(super) fn apt(r: &mut Reader, installed: &[Installed]) -> AptFacts {
    let mut facts = AptFacts::default();
    let mut files: Vec<(String, AptFileFormat, Option<String>)> = Vec::new();
    if r.root.exists(SOURCES_LIST) {
        files.push((SOURCES_LIST.to_string(), AptFileFormat::OneLine, None));
    }
    let names = r.list_dir(SOURCES_DIR).read().unwrap_or_default();
    for name in names {
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
    // Lists left behind by a source that is now disabled (or in a file apt ignores) are not
    // read by apt; lists of no known source are kept (they may come from elsewhere).
    let prefixes = |entries: &mut dyn Iterator<Item = &AptEntry>| -> Vec<String> {
        entries
            .filter(|e| e.types.iter().any(|t| t == "deb"))
            .flat_map(|e| {
                e.uris
                    .iter()
                    .flat_map(move |u| e.suites.iter().map(move |s| packages::list_prefix(u, s)))
            })
            .collect()
    };
    let enabled = prefixes(&mut facts.entries.iter().filter(|e| e.enabled));
    let dropped = prefixes(
        &mut facts
            .entries
            .iter()
            .filter(|e| !e.enabled)
            .chain(&facts.ignored_entries),
    );
    let apt_skips = |name: &str| {
        dropped.iter().any(|p| name.starts_with(p.as_str()))
            && !enabled.iter().any(|p| name.starts_with(p.as_str()))
    };
    (facts.upgradable, facts.unreadable_lists) = upgradable(r, installed, &apt_skips);
    facts.upgrade_needs_reboot = facts
        .upgradable
        .iter()
        .any(|u| upgrade_needs_reboot(&u.package));
    facts
}

/// What every `*_Packages` index in the lists directory offers the installed packages, and
/// the indexes that exist but could not be read or decoded.
///
/// Debian keeps the indexes uncompressed unless apt is configured otherwise
/// (`Acquire::GzipIndexes`, `Acquire::CompressionTypes`): then they are `.lz4`, `.gz`,
/// `.xz` or `.zst`, and are decoded here as apt decodes them.
fn upgradable(
    r: &mut Reader,
    installed: &[Installed],
    apt_skips: &dyn Fn(&str) -> bool,
) -> (Vec<fleetward_proto::Upgrade>, Vec<String>) {
    let mut unreadable_lists = Vec::new();
    if installed.is_empty() {
        return (Vec::new(), unreadable_lists);
    }
    let names: BTreeSet<&str> = installed.iter().map(|p| p.name.as_str()).collect();
    let mut available = Vec::new();
    let listing = match r.list_dir(LISTS_DIR) {
        Input::Read(l) => l,
        Input::Missing => Vec::new(),
        Input::Unreadable => {
            unreadable_lists.push(LISTS_DIR.to_string());
            Vec::new()
        }
    };
    for name in listing {
        let Some(compression) = compressed::by_name(&name) else {
            continue;
        };
        if apt_skips(&name) {
            continue;
        }
        let path = format!("{LISTS_DIR}/{name}");
        if r.root.is_dir(&path) {
            continue;
        }
        let mut found = Vec::new();
        let wanted = |p: &str| names.contains(p);
        let read = read_list(r, &path, compression, &wanted, &mut |stanza| {
            found.extend(packages::parse(stanza, wanted));
        });
        match read {
            Ok(()) => available.extend(found),
            Err(reason) => {
                r.unreadable(&path, reason);
                unreadable_lists.push(path);
            }
        }
    }
    (packages::upgradable(installed, available), unreadable_lists)
}

/// Read one package list, decoded as it streams, and hand each stanza whose `Package:` is
/// `wanted` to `stanza`: a list holds tens of MB of text, of which only one stanza is ever
/// held, and the stanzas of other packages are skipped from their `Package:` line on.
fn read_list(
    r: &mut Reader,
    path: &str,
    compression: compressed::Compression,
    wanted: &dyn Fn(&str) -> bool,
    stanza: &mut dyn FnMut(&str),
) -> Result<(), String> {
    use std::io::{BufRead, Read};
    r.note_input(path);
    let real = r.root.resolve(path)?;
    let meta = std::fs::metadata(&real).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > LIST_MAX_BYTES {
        return Err(format!("larger than {LIST_MAX_BYTES} bytes"));
    }
    let file = std::fs::File::open(&real).map_err(|e| e.to_string())?;
    let decoded = compressed::reader(compression, file.take(LIST_MAX_BYTES), LIST_MAX_DECODED)?;
    let mut input = std::io::BufReader::new(decoded.take(LIST_MAX_DECODED as u64 + 1));
    let mut total = 0usize;
    let mut current = String::new();
    let mut skipping = false;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = input
            .read_until(b'\n', &mut line)
            .map_err(|e| e.to_string())?;
        total += n;
        if total > LIST_MAX_DECODED {
            return Err(format!("larger than {LIST_MAX_DECODED} bytes when decoded"));
        }
        if line.contains(&0) {
            return Err("contains NUL bytes (binary data)".into());
        }
        let text = std::str::from_utf8(&line).map_err(|_| "not valid UTF-8 text".to_string())?;
        if n == 0 || text.trim().is_empty() {
            if !current.is_empty() && !skipping {
                stanza(&current);
            }
            current.clear();
            skipping = false;
            if n == 0 {
                return Ok(());
            }
        } else if !skipping {
            if let Some(name) = text.strip_prefix("Package:") {
                skipping = !wanted(name.trim());
            }
            current.push_str(text);
        }
    }
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
