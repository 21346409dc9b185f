//! APT sources: which files in `sources.list.d` apt reads, and the one-line (`*.list`) and
//! deb822 (`*.sources`) formats.
//!
//! Pure functions: text in, [`AptEntry`]s and [`LocatedError`]s out; nothing here panics.
//! A line (one-line) or stanza (deb822) with an error yields no entry.

use fleetward_proto::{AptEntry, AptFileFormat, LocatedError};
use std::collections::BTreeMap;

/// What one file produced: every entry apt would read (enabled or not) and the lines it
/// would refuse.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    pub entries: Vec<AptEntry>,
    pub errors: Vec<LocatedError>,
}

/// Suffixes apt's `Dir::Ignore-Files-Silently` skips (besides `.dpkg-*` and `.ucf-*`).
const SILENT_SUFFIXES: [&str; 6] = ["~", ".disabled", ".bak", ".save", ".orig", ".distUpgrade"];

/// The last `/`-separated component, so callers may pass a name or a path.
fn base_name(file_name: &str) -> &str {
    file_name.rsplit('/').next().unwrap_or(file_name)
}

/// How apt treats a file in `/etc/apt/sources.list.d` by its file name: `.list` -> OneLine,
/// `.sources` -> Deb822, anything else (or any name [`ignore_reason`] rejects) -> Ignored.
pub fn file_format(file_name: &str) -> AptFileFormat {
    let name = base_name(file_name);
    if ignore_reason(name).is_some() {
        AptFileFormat::Ignored
    } else if name.ends_with(".list") {
        AptFileFormat::OneLine
    } else {
        AptFileFormat::Deb822
    }
}

/// Why apt ignores a file name (None if apt reads it), following apt's order of checks:
/// hidden files, then the extension (silently ignored backup suffixes first), then the
/// characters (only `[A-Za-z0-9_.-]` are allowed).
pub fn ignore_reason(file_name: &str) -> Option<String> {
    let name = base_name(file_name);
    if name.is_empty() {
        return Some("empty file name".into());
    }
    if name.starts_with('.') {
        return Some("apt ignores hidden files".into());
    }
    let ext = name.rsplit_once('.').map(|(_, e)| e);
    if !matches!(ext, Some("list" | "sources")) {
        if let Some(s) = SILENT_SUFFIXES.iter().find(|s| name.ends_with(**s)) {
            return Some(format!("apt ignores files ending in {s}"));
        }
        for family in ["dpkg-", "ucf-"] {
            let rest = ext.and_then(|e| e.strip_prefix(family)).unwrap_or_default();
            if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_lowercase()) {
                return Some(format!("apt ignores files ending in .{family}*"));
            }
        }
        return Some("invalid file name extension".into());
    }
    let valid = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-');
    if !name.bytes().all(valid) {
        return Some("invalid characters in file name".into());
    }
    None
}

/// Dispatch by format; [`AptFileFormat::Ignored`] gives an empty [`Parsed`].
pub fn parse(path: &str, format: AptFileFormat, text: &str) -> Parsed {
    match format {
        AptFileFormat::OneLine => parse_one_line(path, text),
        AptFileFormat::Deb822 => parse_deb822(path, text),
        AptFileFormat::Ignored => Parsed::default(),
    }
}

/// The text's lines with 1-based numbers, without a leading UTF-8 BOM or `\r` line ends.
fn numbered_lines(text: &str) -> impl Iterator<Item = (u32, &str)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    text.split('\n').enumerate().map(|(i, l)| {
        let n = u32::try_from(i + 1).unwrap_or(u32::MAX);
        (n, l.strip_suffix('\r').unwrap_or(l))
    })
}

fn located(path: &str, line: u32, message: impl Into<String>) -> LocatedError {
    let (path, message) = (path.to_string(), message.into());
    LocatedError {
        path,
        line,
        message,
    }
}

/// An entry of `path` at `line` from its `[types, uris, suites, components]`.
fn new_entry(
    path: &str,
    line: u32,
    enabled: bool,
    lists: [Vec<String>; 4],
    options: BTreeMap<String, String>,
) -> AptEntry {
    let [types, uris, suites, components] = lists;
    let file = path.to_string();
    AptEntry {
        file,
        line,
        enabled,
        types,
        uris,
        suites,
        components,
        options,
    }
}

/// apt's rule: a flat suite (ending in `/`) takes no components, any other suite needs one.
fn check_components(suites: &[String], components: &[String]) -> Result<(), String> {
    for suite in suites {
        match (suite.ends_with('/'), components.is_empty()) {
            (true, false) => return Err(format!("flat suite '{suite}' takes no components")),
            (false, true) => return Err(format!("suite '{suite}' needs at least one component")),
            _ => {}
        }
    }
    Ok(())
}

/// Parse the one-line format (`sources.list`, `*.list`):
/// `deb [opt=val ...] URI SUITE [COMPONENT...]`. A comment line whose rest is a valid
/// entry (`# deb ...`) is reported as a disabled entry; other comments are skipped.
pub fn parse_one_line(path: &str, text: &str) -> Parsed {
    let mut out = Parsed::default();
    for (line, raw) in numbered_lines(text) {
        if let Some(body) = raw.trim_start().strip_prefix('#') {
            if let Ok(Some(entry)) = one_line_entry(path, line, body, false) {
                out.entries.push(entry);
            }
            continue;
        }
        match one_line_entry(path, line, raw, true) {
            Ok(Some(entry)) => out.entries.push(entry),
            Ok(None) => {}
            Err(message) => out.errors.push(located(path, line, message)),
        }
    }
    out
}

/// One line's entry; `Ok(None)` for a blank or comment-only line. Like apt, everything
/// from the first `#` on is a comment.
fn one_line_entry(
    path: &str,
    line: u32,
    raw: &str,
    enabled: bool,
) -> Result<Option<AptEntry>, String> {
    let content = raw.split('#').next().unwrap_or_default().trim();
    if content.is_empty() {
        return Ok(None);
    }
    let (kind, rest) = content
        .split_once(char::is_whitespace)
        .unwrap_or((content, ""));
    if kind != "deb" && kind != "deb-src" {
        return Err(format!("unknown type '{kind}' (expected deb or deb-src)"));
    }
    let mut rest = rest.trim_start();
    let mut options = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('[') {
        let (inner, tail) = after.split_once(']').ok_or("unterminated '[' in options")?;
        for opt in inner.split_whitespace() {
            // `key+=v` / `key-=v` keep the operator in the key: `arch+` -> `v`.
            match opt.split_once('=') {
                Some((k, v)) if !k.is_empty() => options.insert(k.to_lowercase(), v.to_string()),
                _ => return Err(format!("malformed option '{opt}' (expected key=value)")),
            };
        }
        rest = tail;
    }
    let mut words = rest.split_whitespace().map(String::from);
    let uri = words.next().ok_or("missing URI")?;
    let suite = words.next().ok_or("missing suite")?;
    let (suites, components) = (vec![suite], words.collect::<Vec<_>>());
    check_components(&suites, &components)?;
    let lists = [vec![kind.to_string()], vec![uri], suites, components];
    Ok(Some(new_entry(path, line, enabled, lists, options)))
}

/// One deb822 stanza being read: lower-cased key -> (line, folded value).
#[derive(Default)]
struct Stanza {
    first_line: Option<u32>,
    fields: BTreeMap<String, (u32, String)>,
    last_key: Option<String>,
    broken: bool,
}

impl Stanza {
    /// End the stanza: push its entry or its error, and start afresh.
    fn finish(&mut self, path: &str, out: &mut Parsed) {
        let stanza = std::mem::take(self);
        if let (Some(line), false) = (stanza.first_line, stanza.broken) {
            match stanza.into_entry(path, line) {
                Ok(entry) => out.entries.push(entry),
                Err(e) => out.errors.push(e),
            }
        }
    }

    fn into_entry(mut self, path: &str, line: u32) -> Result<AptEntry, LocatedError> {
        let lists = ["types", "uris", "suites", "components"].map(|key| {
            let value = self.fields.remove(key).map(|(_, v)| v).unwrap_or_default();
            value
                .split_whitespace()
                .map(String::from)
                .collect::<Vec<_>>()
        });
        // apt reads `Enabled` first and skips a disabled stanza before it checks any other
        // field: a disabled stanza is never an error, whatever else it lacks.
        let enabled = match self.fields.remove("enabled") {
            None => true,
            Some((at, value)) => parse_bool(&value).ok_or_else(|| {
                let message = format!("Enabled: '{value}' is not yes or no");
                located(path, at, message)
            })?,
        };
        let [types, uris, suites, components] = &lists;
        if enabled {
            for (name, values) in [("Types", types), ("URIs", uris), ("Suites", suites)] {
                if values.is_empty() {
                    return Err(located(path, line, format!("stanza has no {name}")));
                }
            }
            let known = |t: &&String| matches!(t.as_str(), "deb" | "deb-src");
            if let Some(t) = types.iter().find(|t| !known(t)) {
                let message = format!("unknown type '{t}' (expected deb or deb-src)");
                return Err(located(path, line, message));
            }
            check_components(suites, components).map_err(|m| located(path, line, m))?;
        }
        let options = self
            .fields
            .into_iter()
            .map(|(k, (_, v))| (k, v.trim().into()));
        Ok(new_entry(path, line, enabled, lists, options.collect()))
    }
}

/// apt's boolean spellings, case-insensitive.
fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "yes" | "true" | "on" | "with" | "enable" | "1" => Some(true),
        "no" | "false" | "off" | "without" | "disable" | "0" => Some(false),
        _ => None,
    }
}

/// Parse the deb822 format (`*.sources`). Stanzas are separated by blank lines; `#` lines
/// are comments anywhere (they do not end a stanza); continuation lines (leading space or
/// tab, ` .` for an empty line) fold into the previous field with `\n`; keys are
/// case-insensitive and a duplicate key replaces the earlier one. Keys other than Types,
/// URIs, Suites, Components and Enabled go to `options`.
pub fn parse_deb822(path: &str, text: &str) -> Parsed {
    let mut out = Parsed::default();
    let mut stanza = Stanza::default();
    for (line, raw) in numbered_lines(text) {
        if raw.trim().is_empty() {
            stanza.finish(path, &mut out);
            continue;
        }
        if raw.starts_with('#') {
            continue;
        }
        stanza.first_line.get_or_insert(line);
        let error = if raw.starts_with([' ', '\t']) {
            let part = match raw.trim() {
                "." => "",
                part => part,
            };
            let last = stanza.last_key.as_ref();
            match last.and_then(|k| stanza.fields.get_mut(k)) {
                Some((_, value)) => {
                    value.push('\n');
                    value.push_str(part);
                    None
                }
                None => Some("continuation line before any field".to_string()),
            }
        } else {
            match raw.split_once(':') {
                None => Some("expected 'Key: value', a continuation or a comment".into()),
                Some((key, _)) if key.trim().is_empty() => Some("empty field name".into()),
                Some((key, _)) if key.trim().contains(char::is_whitespace) => {
                    Some(format!("field name '{}' contains whitespace", key.trim()))
                }
                Some((key, value)) => {
                    let key = key.trim().to_lowercase();
                    let value = (line, value.trim().to_string());
                    stanza.fields.insert(key.clone(), value);
                    stanza.last_key = Some(key);
                    None
                }
            }
        };
        if let Some(message) = error {
            stanza.broken = true;
            out.errors.push(located(path, line, message));
        }
    }
    stanza.finish(path, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DEBIAN: &str = "Types: deb\n# http://snapshot.debian.org/archive/debian/20250520T000000Z\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\nTypes: deb\n# http://snapshot.debian.org/archive/debian-security/20250520T000000Z\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n";
    const PVE: &str = "Types: deb\nURIs: https://enterprise.proxmox.com/debian/pve\nSuites: trixie\nComponents: pve-enterprise\nSigned-By: /usr/share/keyrings/proxmox-archive-keyring.gpg\n";
    const LIST: &str = "deb http://deb.debian.org/debian bookworm main contrib\ndeb http://deb.debian.org/debian bookworm-updates main contrib\n\n# security updates\ndeb http://security.debian.org/debian-security bookworm-security main contrib\n";

    /// An enabled entry of file `f`; `spec` is `types|uris|suites|components`.
    fn entry(line: u32, spec: &str, opts: &[(&str, &str)]) -> AptEntry {
        let mut parts = spec.split('|');
        let mut next = || -> Vec<String> {
            let part = parts.next().unwrap_or_default();
            part.split_whitespace().map(String::from).collect()
        };
        let lists = [next(), next(), next(), next()];
        let options = opts.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        new_entry("f", line, true, lists, options.collect())
    }

    fn disabled(mut e: AptEntry) -> AptEntry {
        e.enabled = false;
        e
    }

    /// The entries, asserting there are no errors.
    fn entries(parsed: Parsed) -> Vec<AptEntry> {
        assert_eq!(parsed.errors, vec![], "{parsed:?}");
        parsed.entries
    }

    /// Assert the errors' (line, message) pairs, and that there are no entries.
    fn assert_errors(parsed: Parsed, want: &[(u32, &str)]) {
        assert_eq!(parsed.entries, vec![], "{parsed:?}");
        let got: Vec<_> = parsed
            .errors
            .iter()
            .map(|e| (e.line, e.message.as_str()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn real_samples() {
        let key = [(
            "signed-by",
            "/usr/share/keyrings/debian-archive-keyring.gpg",
        )];
        let u = "http://deb.debian.org/debian";
        let want = vec![
            entry(1, &format!("deb|{u}|bookworm bookworm-updates|main"), &key),
            entry(8, &format!("deb|{u}-security|bookworm-security|main"), &key),
        ];
        assert_eq!(entries(parse("f", AptFileFormat::Deb822, DEBIAN)), want);
        let spec = "deb|https://enterprise.proxmox.com/debian/pve|trixie|pve-enterprise";
        let key = [(
            "signed-by",
            "/usr/share/keyrings/proxmox-archive-keyring.gpg",
        )];
        let want = entry(1, spec, &key);
        assert_eq!(entries(parse_deb822("f", PVE)), vec![want]);
        let s = "http://security.debian.org/debian-security";
        let want = [
            (1, u, "bookworm"),
            (2, u, "bookworm-updates"),
            (5, s, "bookworm-security"),
        ]
        .map(|(l, u, s)| entry(l, &format!("deb|{u}|{s}|main contrib"), &[]));
        assert_eq!(entries(parse("f", AptFileFormat::OneLine, LIST)), want);
        assert_eq!(parse("f", AptFileFormat::Ignored, LIST), Parsed::default());
    }

    #[test]
    fn file_names() {
        assert_eq!(file_format("pve.list"), AptFileFormat::OneLine);
        assert_eq!(file_format("/etc/apt/sources.list"), AptFileFormat::OneLine);
        assert_eq!(file_format("a-b_C.1.sources"), AptFileFormat::Deb822);
        assert_eq!(file_format("pve.list.bak"), AptFileFormat::Ignored);
        assert_eq!(ignore_reason("a-b_C.1.list"), None);
        let ending = "apt ignores files ending in";
        for (name, reason) in [
            ("pve.list.disabled", format!("{ending} .disabled")),
            ("pve.list~", format!("{ending} ~")),
            ("x.list.distUpgrade", format!("{ending} .distUpgrade")),
            ("x.list.dpkg-old", format!("{ending} .dpkg-*")),
            ("x.sources.ucf-dist", format!("{ending} .ucf-*")),
            ("x.conf", "invalid file name extension".into()),
            ("list", "invalid file name extension".into()),
            (".hidden.list", "apt ignores hidden files".into()),
            ("my repo.list", "invalid characters in file name".into()),
            ("pvé.sources", "invalid characters in file name".into()),
            ("", "empty file name".into()),
        ] {
            assert_eq!(ignore_reason(name), Some(reason), "{name}");
            assert_eq!(file_format(name), AptFileFormat::Ignored, "{name}");
        }
    }

    #[test]
    fn one_line_features() {
        let text = "\u{feff}deb [ Signed-By=/k.gpg arch=amd64,arm64 arch+=i386 ] http://x/ trixie main # note\r\n\
                    #deb http://y trixie main\n  # deb http://z ./\n# just words\n#deb-src http://w\n\
                    \tdeb-src [trusted=yes]file:/r ./\n";
        let opts = [
            ("signed-by", "/k.gpg"),
            ("arch", "amd64,arm64"),
            ("arch+", "i386"),
        ];
        let want = vec![
            entry(1, "deb|http://x/|trixie|main", &opts),
            disabled(entry(2, "deb|http://y|trixie|main", &[])),
            disabled(entry(3, "deb|http://z|./|", &[])),
            entry(6, "deb-src|file:/r|./|", &[("trusted", "yes")]),
        ];
        assert_eq!(entries(parse_one_line("f", text)), want);
    }

    #[test]
    fn one_line_errors() {
        let text = "rpm http://x a b\ndeb\ndeb http://x\ndeb [arch=amd64 http://x a b\n\
                    deb http://x bookworm\ndeb http://x ./ main\ndeb [arch] http://x a b\ndeb [] \n";
        let want = [
            (1, "unknown type 'rpm' (expected deb or deb-src)"),
            (2, "missing URI"),
            (3, "missing suite"),
            (4, "unterminated '[' in options"),
            (5, "suite 'bookworm' needs at least one component"),
            (6, "flat suite './' takes no components"),
            (7, "malformed option 'arch' (expected key=value)"),
            (8, "missing URI"),
        ];
        assert_errors(parse_one_line("f", text), &want);
        assert_eq!(parse_one_line("f", "x").errors[0].path, "f");
    }

    #[test]
    fn deb822_features() {
        let text = "\u{feff}# head\r\n\r\n  \t\ntYpeS: deb deb-src\r\nURIs: http://a\n http://b\n\
                    Suites: ./\nenabled: No\nSigned-By:\n -----BEGIN-----\n .\n key\n\
                    Architectures: amd64\narchitectures: arm64\n\n\n# only a comment\n\n\
                    Types: deb\nURIs: http://c\nSuites: s\nComponents: main\n\tcontrib\nEnabled: on";
        let opts = [
            ("signed-by", "-----BEGIN-----\n\nkey"),
            ("architectures", "arm64"),
        ];
        let want = vec![
            disabled(entry(4, "deb deb-src|http://a http://b|./|", &opts)),
            entry(19, "deb|http://c|s|main contrib", &[]),
        ];
        assert_eq!(entries(parse_deb822("f", text)), want);
    }

    #[test]
    fn deb822_errors() {
        let text = "URIs: http://a\nSuites: s\nComponents: c\n\n # orphan\nTypes: deb\n\n\
                    Types: deb\nURIs: u\n\nTypes: deb\nURIs: u\nSuites: s\n\n\
                    Types: deb rpm\nURIs: u\nSuites: s\nComponents: c\n\n\
                    Types: deb\nURIs: u\nSuites: s/ t\nComponents: c\n\nTypes: deb\nno colon here\n\n\
                    Types: deb\nURIs: u\nSuites: s\nComponents: c\nEnabled: maybe\n\n: v\n\n\
                    deb http://x: s c\n";
        let want = [
            (1, "stanza has no Types"),
            (5, "continuation line before any field"),
            (8, "stanza has no Suites"),
            (11, "suite 's' needs at least one component"),
            (15, "unknown type 'rpm' (expected deb or deb-src)"),
            (20, "flat suite 's/' takes no components"),
            (26, "expected 'Key: value', a continuation or a comment"),
            (32, "Enabled: 'maybe' is not yes or no"),
            (34, "empty field name"),
            (36, "field name 'deb http' contains whitespace"),
        ];
        assert_errors(parse_deb822("f", text), &want);
        let no_uris = parse_deb822("f", "Types: deb\nSuites: s\n");
        assert_errors(no_uris, &[(1, "stanza has no URIs")]);
        // apt skips a disabled stanza before looking at its other fields.
        let disabled = parse_deb822("f", "Types: deb\nSuites: s\nEnabled: no\n");
        assert!(disabled.errors.is_empty(), "{:?}", disabled.errors);
        assert!(disabled.entries.iter().all(|e| !e.enabled));
    }

    /// Neither parser panics, and every error and entry line is within the text.
    fn check(text: &str) {
        let max = u32::try_from(text.lines().count() + 1).unwrap_or(u32::MAX);
        for p in [parse_one_line("p", text), parse_deb822("p", text)] {
            let errs = p.errors.iter().map(|e| e.line);
            for line in errs.chain(p.entries.iter().map(|e| e.line)) {
                assert!((1..=max).contains(&line), "line {line} of {text:?}");
            }
        }
    }

    proptest! {
        #[test]
        fn arbitrary_text(text in any::<String>()) {
            check(&text);
            let _ = (file_format(&text), ignore_reason(&text));
        }

        #[test]
        fn mutated_samples(
            which in 0usize..3,
            cut in any::<prop::sample::Index>(),
            insert in "[ \t\r\n#:.\\[\\]/a-zé]{0,8}",
        ) {
            let sample = [DEBIAN, PVE, LIST][which];
            let mut at = cut.index(sample.len() + 1);
            while !sample.is_char_boundary(at) {
                at -= 1;
            }
            check(&sample[..at]);
            check(&format!("{}{insert}{}", &sample[..at], &sample[at..]));
        }
    }
}
