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
