//! The gRPC API (`package fleetward.v1`), generated from `proto/fleetward.proto`.
//!
//! `AgentService` is what agents call (enroll, renew, and the long-lived `Session`
//! stream); `OperatorService` is what the operator CLI calls. The inspection report is not
//! modelled in protobuf: it travels as the canonical JSON of [`crate::Report`] in
//! `report_json` fields (see [`crate::report_json_bytes`] and [`crate::report_from_bytes`]).
//!
//! Generated items: messages such as [`AgentMessage`] (oneof in [`agent_message::Kind`]),
//! [`ControllerMessage`], [`Command`], the [`Severity`] and [`SessionState`] enums, and the
//! client/server modules [`agent_service_client`], [`agent_service_server`],
//! [`operator_service_client`], [`operator_service_server`]. Rollouts and shutdowns are
//! typed messages ([`Rollout`], [`RolloutEvent`], [`RolloutPlanResponse`], [`ShutdownPlan`],
//! [`Shutdown`], [`ShutdownEvent`]); the controller maps its internal state to them.

use crate::action::{self, ActionRequest};
use crate::report;

#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
mod generated {
    tonic::include_proto!("fleetward.v1");
}

pub use generated::*;

/// The encoded `FileDescriptorSet` of the API, for `tonic-reflection`
/// (`register_encoded_file_descriptor_set`).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/fleetward_descriptor.bin"));

impl From<report::Severity> for Severity {
    fn from(s: report::Severity) -> Self {
        match s {
            report::Severity::Info => Severity::Info,
            report::Severity::Warning => Severity::Warning,
            report::Severity::Error => Severity::Error,
        }
    }
}

/// `Severity::Unspecified` has no counterpart in the report schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnspecifiedSeverity;

impl std::fmt::Display for UnspecifiedSeverity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("severity is unspecified")
    }
}

impl std::error::Error for UnspecifiedSeverity {}

impl TryFrom<Severity> for report::Severity {
    type Error = UnspecifiedSeverity;
    fn try_from(s: Severity) -> Result<Self, UnspecifiedSeverity> {
        match s {
            Severity::Unspecified => Err(UnspecifiedSeverity),
            Severity::Info => Ok(report::Severity::Info),
            Severity::Warning => Ok(report::Severity::Warning),
            Severity::Error => Ok(report::Severity::Error),
        }
    }
}

impl agent_message::Report {
    /// A report message carrying `report` as canonical JSON.
    pub fn new(seq: u64, report: &report::Report) -> Self {
        Self {
            seq,
            report_json: crate::report_json_bytes(report),
        }
    }

    /// Parse the carried report.
    pub fn parse(&self) -> Result<report::Report, serde_json::Error> {
        crate::report_from_bytes(&self.report_json)
    }
}

impl AgentMessage {
    /// Wrap a payload: `AgentMessage::new(agent_message::Kind::Heartbeat(..))`.
    pub fn new(kind: agent_message::Kind) -> Self {
        Self { kind: Some(kind) }
    }
}

impl ControllerMessage {
    /// Wrap a payload: `ControllerMessage::new(controller_message::Kind::Close(..))`.
    pub fn new(kind: controller_message::Kind) -> Self {
        Self { kind: Some(kind) }
    }
}

/// An action command whose action cannot be run: its JSON does not parse as an
/// [`action::Action`], or its arguments fail [`action::Action::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidAction(pub String);

impl std::fmt::Display for InvalidAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid action: {}", self.0)
    }
}

impl std::error::Error for InvalidAction {}

impl Command {
    /// The command that asks an agent to run `req` (its `id` becomes the `command_id`, the
    /// idempotency key `operation/node/step/attempt`).
    pub fn action(req: &ActionRequest) -> Self {
        Self {
            command_id: req.id.clone(),
            kind: Some(command::Kind::Action(command::Action::new(&req.action))),
        }
    }

    /// A refresh command (inspect now, send a report).
    pub fn refresh(command_id: impl Into<String>) -> Self {
        Self {
            command_id: command_id.into(),
            kind: Some(command::Kind::Refresh(command::Refresh {})),
        }
    }
}

impl command::Action {
    /// Carries `action` as its canonical JSON.
    pub fn new(action: &action::Action) -> Self {
        Self {
            // Serializing a plain enum of strings and integers cannot fail.
            action_json: serde_json::to_string(action).unwrap_or_default(),
        }
    }

    /// The carried action, parsed and validated.
    pub fn parse(&self) -> Result<action::Action, InvalidAction> {
        let a: action::Action =
            serde_json::from_str(&self.action_json).map_err(|e| InvalidAction(e.to_string()))?;
        a.validate().map_err(InvalidAction)?;
        Ok(a)
    }

    /// The request to execute: the carried action under `command_id`.
    pub fn request(&self, command_id: &str) -> Result<ActionRequest, InvalidAction> {
        Ok(ActionRequest {
            id: command_id.to_owned(),
            action: self.parse()?,
        })
    }
}

impl FindingCounts {
    /// Count findings per severity.
    pub fn from_findings(findings: &[report::Finding]) -> Self {
        let mut counts = Self::default();
        for f in findings {
            match f.severity {
                report::Severity::Info => counts.info += 1,
                report::Severity::Warning => counts.warning += 1,
                report::Severity::Error => counts.error += 1,
            }
        }
        counts
    }
}

impl Finding {
    /// The API form of one report finding of `node`.
    pub fn from_report(node: &str, f: &report::Finding) -> Self {
        Self {
            node: node.to_owned(),
            code: f.code.clone(),
            severity: Severity::from(f.severity).into(),
            message: f.message.clone(),
            path: f.path.clone(),
            line: f.line,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn sample_report() -> report::Report {
        report::Report {
            schema_version: report::SCHEMA_VERSION,
            facts: report::Facts::default(),
            findings: vec![
                report::Finding {
                    code: "FW-BOOT-001".into(),
                    severity: report::Severity::Error,
                    message: "boom".into(),
                    path: Some("/etc/kernel/proxmox-boot-uuids".into()),
                    line: Some(2),
                },
                report::Finding {
                    code: "FW-DNS-002".into(),
                    severity: report::Severity::Warning,
                    message: "hmm".into(),
                    path: None,
                    line: None,
                },
            ],
        }
    }

    #[test]
    fn agent_message_round_trips_with_report() {
        let report = sample_report();
        let msg = AgentMessage::new(agent_message::Kind::Report(agent_message::Report::new(
            7, &report,
        )));
        let decoded = AgentMessage::decode(msg.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded, msg);
        let Some(agent_message::Kind::Report(r)) = decoded.kind else {
            panic!("not a report: {decoded:?}");
        };
        assert_eq!(r.seq, 7);
        assert_eq!(r.parse().unwrap(), report);
    }

    #[test]
    fn controller_message_round_trips_with_command() {
        let msg = ControllerMessage::new(controller_message::Kind::Command(Command {
            command_id: "cmd-1".into(),
            kind: Some(command::Kind::Refresh(command::Refresh {})),
        }));
        let decoded = ControllerMessage::decode(msg.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded, msg);

        let close =
            ControllerMessage::new(controller_message::Kind::Close(controller_message::Close {
                reason: "replaced".into(),
            }));
        let decoded = ControllerMessage::decode(close.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded, close);
    }

    #[test]
    fn action_commands_round_trip_and_reject_bad_actions() {
        let req = ActionRequest {
            id: "roll-1/pve-01/reboot/1".into(),
            action: action::Action::GuestStop {
                vmid: 101,
                kind: action::GuestKind::Qemu,
                timeout_secs: 60,
                force: false,
            },
        };
        let cmd = Command::action(&req);
        assert_eq!(cmd.command_id, req.id);
        let decoded = Command::decode(cmd.encode_to_vec().as_slice()).unwrap();
        let Some(command::Kind::Action(a)) = decoded.kind else {
            panic!("not an action: {decoded:?}");
        };
        assert_eq!(a.request(&decoded.command_id).unwrap(), req);

        let bad = |json: &str| {
            command::Action {
                action_json: json.into(),
            }
            .parse()
            .unwrap_err()
        };
        assert!(bad("{").to_string().starts_with("invalid action: "));
        assert!(bad(r#"{"action":"rm-rf"}"#).0.contains("rm-rf"));
        assert!(bad(r#"{"action":"guest-start","vmid":1,"kind":"lxc"}"#)
            .0
            .contains("VMID"));
        assert_eq!(
            Command::refresh("r").kind,
            Some(command::Kind::Refresh(command::Refresh {}))
        );
    }

    #[test]
    fn empty_message_decodes_to_no_kind() {
        // A peer newer than us may send a kind we do not know: it decodes as `None`.
        let decoded = AgentMessage::decode(&[][..]).unwrap();
        assert_eq!(decoded.kind, None);
    }

    #[test]
    fn severity_maps_both_ways() {
        for s in [
            report::Severity::Info,
            report::Severity::Warning,
            report::Severity::Error,
        ] {
            assert_eq!(report::Severity::try_from(Severity::from(s)), Ok(s));
        }
        assert_eq!(
            report::Severity::try_from(Severity::Unspecified),
            Err(UnspecifiedSeverity)
        );
        // Both orders agree.
        assert!(Severity::Info < Severity::Warning && Severity::Warning < Severity::Error);
    }

    #[test]
    fn findings_convert_and_count() {
        let report = sample_report();
        let f = Finding::from_report("pve1", &report.findings[0]);
        assert_eq!(f.severity(), Severity::Error);
        assert_eq!(f.path.as_deref(), Some("/etc/kernel/proxmox-boot-uuids"));
        assert_eq!(f.line, Some(2));
        let counts = FindingCounts::from_findings(&report.findings);
        assert_eq!(
            counts,
            FindingCounts {
                info: 0,
                warning: 1,
                error: 1
            }
        );
    }

    #[test]
    fn optional_fields_keep_absence() {
        let req = ListFindingsRequest {
            node: None,
            min_severity: Some(Severity::Warning.into()),
        };
        let decoded = ListFindingsRequest::decode(req.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded.node, None);
        assert_eq!(decoded.min_severity(), Severity::Warning);
    }

    #[test]
    fn file_descriptor_set_describes_the_api() {
        let fds = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
        let file = fds
            .file
            .iter()
            .find(|f| f.package() == "fleetward.v1")
            .expect("fleetward.v1 in the descriptor set");
        let services: Vec<&str> = file.service.iter().map(|s| s.name()).collect();
        assert_eq!(
            services,
            ["AgentService", "OperatorService", "ShutdownService"]
        );
    }
}
