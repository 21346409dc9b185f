//! One inspection: collect, then rules, then (optionally) live probes.

use crate::collect::collect;
use crate::probe::{self, Resolve};
use crate::root::Root;
use crate::rules;
use fleetward_proto::{Report, SCHEMA_VERSION};

/// Inspect the node under `root`. Reads files only; starts no process and changes nothing.
pub fn inspect(root: &Root) -> Report {
    let facts = collect(root);
    let findings = rules::evaluate(&facts);
    Report {
        schema_version: SCHEMA_VERSION,
        facts,
        findings,
    }
}

/// Inspect, then run the live name-resolution probe for `names` with `resolver`.
pub fn inspect_with_probe(root: &Root, resolver: &dyn Resolve, names: &[String]) -> Report {
    let mut report = inspect(root);
    report.findings.extend(probe::lookups(resolver, names));
    report
}

/// Adds apt's answer about the next dist-upgrade (asked by the caller through the executor,
/// read-only: `inspect` itself starts no process) to `report`, and judges it
/// (`upgrade.removes-protected`, `upgrade.held-back`): the transaction with the kernel that
/// boots after it, or why apt could not say.
pub fn with_transaction(
    report: &mut Report,
    answer: Result<crate::parse::apt_sim::Simulation, String>,
) {
    match answer {
        Ok(sim) => {
            report.facts.apt.transaction =
                Some(crate::parse::apt_sim::transaction(&report.facts.boot, sim));
            report.facts.apt.transaction_error = None;
        }
        Err(e) => {
            report.facts.apt.transaction = None;
            report.facts.apt.transaction_error = Some(e);
        }
    }
    report.findings = rules::evaluate(&report.facts);
}
