//! APT sources: `sources.list` and every file in `sources.list.d`.

use super::Reader;
use crate::parse::apt;
use fleetward_proto::{AptEntry, AptFacts, AptFile, AptFileFormat};

pub const SOURCES_LIST: &str = "/etc/apt/sources.list";
pub const SOURCES_DIR: &str = "/etc/apt/sources.list.d";

pub(super) fn apt(r: &mut Reader) -> AptFacts {
    let mut facts = AptFacts::default();
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
