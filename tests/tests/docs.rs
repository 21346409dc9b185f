//! The man pages both binaries generate (`generate-docs`, what `packaging/build` installs):
//! every page has EXIT STATUS, ENVIRONMENT, FILES and EXAMPLES, the synopsis names each
//! option's value, and an example of a page uses only options that page documents.

use fleetward_tests::bin;
use std::path::Path;
use std::process::Command;

fn generate(binary: &str, out: &Path) -> Vec<(String, String)> {
    let status = Command::new(bin(binary))
        .args(["generate-docs", "--out"])
        .arg(out)
        .status()
        .expect("generate-docs");
    assert!(status.success(), "{binary} generate-docs: {status}");
    let mut pages: Vec<(String, String)> = std::fs::read_dir(out.join("man1"))
        .expect("man1")
        .map(|e| {
            let path = e.expect("entry").path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&path).expect("page"))
        })
        .collect();
    pages.sort();
    pages
}

/// The roff between `.SH NAME` and the next `.SH`.
fn section<'a>(page: &'a str, name: &str) -> Option<&'a str> {
    let start = page
        .find(&format!(".SH {name}\n"))
        .or_else(|| page.find(&format!(".SH \"{name}\"\n")))?;
    let body = &page[start + 4..];
    let body = &body[body.find('\n').map_or(0, |i| i + 1)..];
    Some(&body[..body.find("\n.SH ").map_or(body.len(), |i| i + 1)])
}

#[test]
fn every_page_answers_exit_status_environment_files_and_examples() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut wrong = Vec::new();
    let mut count = 0;
    for binary in ["fleetward", "fleetward-agent"] {
        let pages = generate(binary, &dir.path().join(binary));
        assert!(pages.len() > 3, "{binary}: only {} pages", pages.len());
        for (name, page) in pages {
            count += 1;
            for s in [
                "SYNOPSIS",
                "EXIT STATUS",
                "ENVIRONMENT",
                "FILES",
                "EXAMPLES",
            ] {
                match section(&page, s) {
                    Some(body) if body.lines().any(|l| !l.starts_with('.') && !l.is_empty()) => {}
                    _ => wrong.push(format!("{name}: no {s} section (or an empty one)")),
                }
            }
            // Placeholders: no option in the synopsis is directly followed by another
            // option when the OPTIONS section shows it takes a value (`--opt <VALUE>`).
            let synopsis = section(&page, "SYNOPSIS")
                .unwrap_or_default()
                .replace("\\-", "-");
            let options = section(&page, "OPTIONS")
                .unwrap_or_default()
                .replace("\\-", "-");
            let words: Vec<&str> = synopsis
                .split(|c: char| c.is_whitespace() || c == '[' || c == ']')
                .filter(|w| !w.is_empty())
                .collect();
            for (i, w) in words.iter().enumerate() {
                if !w.starts_with("--") {
                    continue;
                }
                let takes_value =
                    options.contains(&format!("{w}=")) || options.contains(&format!("{w} <"));
                let next = words.get(i + 1).copied().unwrap_or("");
                if takes_value && (next.is_empty() || next.starts_with("--")) {
                    wrong.push(format!("{name}: synopsis option {w} lacks its placeholder"));
                }
            }
            // Examples use the options their page documents.
            let examples = section(&page, "EXAMPLES")
                .unwrap_or_default()
                .replace("\\-", "-");
            let command = name.trim_end_matches(".1").replace('-', " ");
            for line in examples.lines().filter(|l| !l.starts_with('.')) {
                let flat = line.replace('-', " ");
                // A parent page's examples show its subcommands, whose pages check them.
                if !flat.starts_with(&command) || words.last() == Some(&"COMMAND") {
                    continue;
                }
                // Up to the first shell operator: what follows is another command.
                let own = line
                    .split_whitespace()
                    .take_while(|w| !["&&", "||", "|", ">", ";", "#"].contains(w));
                for flag in own.filter(|w| w.starts_with("--")) {
                    let flag = flag.split('=').next().unwrap_or(flag);
                    if !words.contains(&flag) {
                        wrong.push(format!(
                            "{name}: example `{line}` uses {flag}, not on the page"
                        ));
                    }
                }
            }
        }
    }
    assert!(count >= 48, "only {count} pages");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Where `man` is installed, every page renders with the four sections as headings.
#[test]
fn pages_render_with_man() {
    if Command::new("man").arg("--version").output().is_err() {
        eprintln!("skipped: man is not installed here");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pages = generate("fleetward-agent", dir.path());
    for (name, _) in pages {
        let out = Command::new("man")
            .arg("-l")
            .arg(dir.path().join("man1").join(&name))
            .env("MANWIDTH", "80")
            .env("MANPAGER", "cat")
            .output()
            .expect("man -l");
        let text = String::from_utf8_lossy(&out.stdout);
        for s in ["EXIT STATUS", "ENVIRONMENT", "FILES", "EXAMPLES"] {
            assert!(
                text.lines().any(|l| l == s),
                "{name}: {s} not rendered:\n{text}"
            );
        }
    }
}
