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

/// Serialise a report as the JSON the agent prints (indented; the wire and the journal use
/// the compact [`report_json_bytes`]).
pub fn report_to_json(report: &Report) -> String {
    // Serialising plain data structs with string keys cannot fail.
    serde_json::to_string_pretty(report).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// Parse a report from its canonical JSON.
pub fn report_from_json(json: &str) -> Result<Report, serde_json::Error> {
    serde_json::from_str(json)
}

/// The canonical JSON of a report as bytes, for the API's `report_json` fields and the
/// controller's journal: compact (no indentation), about a third smaller than the printed
/// form and faster to write, hash and compress.
pub fn report_json_bytes(report: &Report) -> Vec<u8> {
    report_json_bytes_sized(report, 8 * 1024)
}

/// [`report_json_bytes`] into a buffer of `capacity` bytes to start with (the size of the
/// JSON the report was parsed from, say), so it is not grown and copied again and again.
pub fn report_json_bytes_sized(report: &Report, capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(capacity);
    // Serialising plain data structs with string keys into memory cannot fail.
    if let Err(e) = serde_json::to_writer(&mut out, report) {
        out = format!("{{\"error\":\"{e}\"}}").into_bytes();
    }
    out
}

/// Parse a report from an API `report_json` field (canonical JSON, UTF-8).
pub fn report_from_bytes(bytes: &[u8]) -> Result<Report, serde_json::Error> {
    // Same parser and types as `report_from_json`; `from_slice` also rejects bad UTF-8
    // with a `serde_json::Error`.
    serde_json::from_slice(bytes)
}
