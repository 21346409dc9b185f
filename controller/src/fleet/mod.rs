//! The controller's fleet rules: pure functions over many nodes' facts.
//!
//! No I/O, no database, no clock — callers pass the latest reports in and get findings
//! (codes `drift.*` and `policy.*` of `CHECKS.md`) or comparison rows out.
//!
//! - [`normalize`]: [`flatten`] turns a node's facts into stable `area.key -> value` pairs
//!   (the vocabulary of drift, `node diff` and fact history); [`diff`] and [`changes`]
//!   compare two of them.
//! - [`drift`](mod@drift): nodes compared with each other — the majority is the reference.
//! - [`policy`]: nodes compared with the operator's desired state (a TOML file in git).
//! - [`left`]: `node.left-in-maintenance`, HA maintenance or Ceph `noout` that no operation
//!   holds.
//!
//! Drift and policy never look at identities (hostname, IPs, boot ids, ESP volume ids) or at
//! Secure Boot *Setup Mode*: the seed cluster differs in exactly those, legitimately.

pub mod drift;
pub mod left;
pub mod normalize;
pub mod policy;
pub mod report;

#[cfg(test)]
mod tests;

pub use drift::drift;
pub use normalize::{
    changes, changes_between, changes_since, diff, flatten, flatten_packed, Change, DiffRow,
    PackedFlat,
};
pub use policy::{capture, check, Policy, PolicyError};

use fleetward_proto::{Facts, Finding};

/// One node's latest facts, as the fleet rules see them.
#[derive(Debug, Clone, Copy)]
pub struct NodeView<'a> {
    pub name: &'a str,
    pub facts: &'a Facts,
}

impl<'a> NodeView<'a> {
    /// The views of named reports (a fleet's latest reports).
    pub fn of<R: std::ops::Deref<Target = fleetward_proto::Report>>(
        reports: &'a [(String, R)],
    ) -> Vec<NodeView<'a>> {
        reports
            .iter()
            .map(|(n, r)| NodeView {
                name: n,
                facts: &r.facts,
            })
            .collect()
    }
}

/// A finding about one node, from the fleet rules.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FleetFinding {
    pub node: String,
    pub finding: Finding,
}

/// Deterministic output order: by node, then code.
fn sort_findings(out: &mut [FleetFinding]) {
    out.sort_by(|a, b| {
        (a.node.as_str(), a.finding.code.as_str()).cmp(&(b.node.as_str(), b.finding.code.as_str()))
    });
}

/// `a, b, c`, at most `MAX_NAMES` names, then `and N more`.
fn name_list<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    const MAX_NAMES: usize = 8;
    let names: Vec<&str> = names.into_iter().collect();
    if names.len() <= MAX_NAMES {
        return names.join(", ");
    }
    format!(
        "{} and {} more",
        names[..MAX_NAMES].join(", "),
        names.len() - MAX_NAMES
    )
}
