//! fleetward's wire schema.
//!
//! `report` is the one definition of what an agent reports about its node: the agent
//! prints it (`inspect --format json`) and the controller stores it. Nothing else in the
//! workspace defines a second copy.
#![forbid(unsafe_code)]

pub mod report;

pub use report::*;

/// Serialise a report as the canonical JSON the agent prints and the controller stores.
pub fn report_to_json(report: &Report) -> String {
    // Serialising plain data structs with string keys cannot fail.
    serde_json::to_string_pretty(report).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// Parse a report from its canonical JSON.
pub fn report_from_json(json: &str) -> Result<Report, serde_json::Error> {
    serde_json::from_str(json)
}
