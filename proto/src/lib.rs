//! fleetward's wire schema.
//!
//! `report` is the one definition of what an agent reports about its node: the agent
//! prints it (`inspect --format json`) and the controller stores it. Nothing else in the
//! workspace defines a second copy.
//!
//! `api` is the gRPC API (`fleetward.v1`, generated from `proto/fleetward.proto` at build
//! time with a pure-Rust compiler, no `protoc`). Only this crate knows protobuf: the API
//! carries the report as its canonical JSON ([`report_json_bytes`], [`report_from_bytes`])
//! rather than a second, protobuf copy of the schema.
#![forbid(unsafe_code)]

pub mod action;
pub mod api;
pub mod codec;
pub mod report;

pub use api::FILE_DESCRIPTOR_SET;
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

/// The canonical JSON of a report as bytes, for the API's `report_json` fields.
pub fn report_json_bytes(report: &Report) -> Vec<u8> {
    report_to_json(report).into_bytes()
}

/// Parse a report from an API `report_json` field (canonical JSON, UTF-8).
pub fn report_from_bytes(bytes: &[u8]) -> Result<Report, serde_json::Error> {
    // Same parser and types as `report_from_json`; `from_slice` also rejects bad UTF-8
    // with a `serde_json::Error`.
    serde_json::from_slice(bytes)
}
