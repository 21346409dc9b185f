//! APT sources: `sources.list` and every file in `sources.list.d`.

use super::Reader;
use crate::parse::apt;
use fleetward_proto::{AptFacts, AptFile, AptFileFormat};

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
