//! Rules: pure functions from [`Facts`] to [`Finding`]s with the stable codes of
//! `CHECKS.md`. No I/O here; everything a rule needs is a fact.
//!
//! Unknown is never absent: a file that exists but could not be read (or a line of it that
//! could not be) is in `facts.unreadable`, and no rule concludes from it that something is
//! missing, disabled or none ([`unknown`], [`partly_unknown`]).

mod apt;
mod boot;
mod cluster;
mod dns;
mod system;

use fleetward_proto::{Facts, Finding, Severity};

/// Codes this crate adds to the catalogue (documented in the README).
pub const UNREADABLE_INPUT: &str = "agent.unreadable-input";

/// Evaluate every rule. The order is stable: boot, apt, dns, cluster, system, then inputs
/// that could not be read.
pub fn evaluate(facts: &Facts) -> Vec<Finding> {
    let mut out = Findings::default();
    boot::check(facts, &mut out);
    apt::check(facts, &mut out);
    dns::check(facts, &mut out);
    cluster::check(facts, &mut out);
    system::check(facts, &mut out);
    for u in &facts.unreadable {
        out.push(
            UNREADABLE_INPUT,
            Severity::Warning,
            match u.line {
                None => format!(
                    "could not read {}: {}; facts from it are missing",
                    u.path, u.reason
                ),
                Some(line) => format!(
                    "could not parse line {line} of {}: {}; facts from that line are missing",
                    u.path, u.reason
                ),
            },
        )
        .at(&u.path, u.line);
    }
    out.0
}

/// Whether this is a Proxmox VE node (some checks only apply there).
pub fn is_pve(facts: &Facts) -> bool {
    facts.node.pve_manager_version.is_some()
}

pub fn has_package(facts: &Facts, name: &str) -> bool {
    facts.boot.packages.iter().any(|p| p.name == name)
}

/// Whether the installed packages are known (dpkg's status was readable, or is absent).
fn packages_known(facts: &Facts) -> bool {
    !facts.system.packages_unknown
}

/// The file at `path` exists but could not be read at all.
fn unknown(facts: &Facts, path: &str) -> bool {
    facts
        .unreadable
        .iter()
        .any(|u| u.path == path && u.line.is_none())
}

/// The file at `path`, or some line of it, could not be read.
fn partly_unknown(facts: &Facts, path: &str) -> bool {
    facts.unreadable.iter().any(|u| u.path == path)
}

/// Some file whose path starts with `prefix` (or a line of it) could not be read.
fn unknown_under(facts: &Facts, prefix: &str) -> bool {
    facts.unreadable.iter().any(|u| u.path.starts_with(prefix))
}

/// `v` joined with `sep`, or `none` when empty.
fn list_or(v: &[String], sep: &str, none: &str) -> String {
    if v.is_empty() {
        none.to_string()
    } else {
        v.join(sep)
    }
}

#[derive(Default)]
struct Findings(Vec<Finding>);

impl Findings {
    fn push(&mut self, code: &str, severity: Severity, message: String) -> &mut Finding {
        self.0.push(Finding {
            code: code.to_string(),
            severity,
            message,
            path: None,
            line: None,
        });
        let last = self.0.len() - 1;
        &mut self.0[last]
    }
}

trait At {
    fn at(&mut self, path: &str, line: Option<u32>);
}

impl At for Finding {
    fn at(&mut self, path: &str, line: Option<u32>) {
        self.path = Some(path.to_string());
        self.line = line;
    }
}
