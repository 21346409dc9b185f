//! `OperatorService`, called with operator certificates (the authorization layer lets no
//! other through): nodes, findings, tokens, operators, audit, drift, policy, reports, and
//! the rollout RPCs, which ask the rollout driver through its handle.

use super::{driver_status, internal, not_found, Authorized};
use crate::clock::now_ms;
use crate::fleet::{self, NodeView, Policy};
use crate::orchestrate::refresh::Refreshes;
use crate::orchestrate::rollout::{Rollout, Rollouts, ROLLOUT_PREFIX};
use crate::orchestrate::Audit;
use crate::state::{Caller, Controller, LoadedPolicy};
use crate::store::NodeRecord;
use fleetward_proto::api::{
    self, controller_message, operator_service_server::OperatorService,
    operator_service_server::OperatorServiceServer, ControllerMessage,
};
use fleetward_proto::{Report, Severity};

use std::sync::Arc;
use tonic::{Request, Response, Status};

/// `OperatorService`: the controller's state and the rollout driver's handle.
pub struct OperatorApi {
    ctl: Arc<Controller>,
    rollouts: Rollouts,
    refreshes: Refreshes,
}

impl OperatorApi {
    /// The service behind the authorization layer, decoding messages up to `max_message`
    /// bytes.
    pub fn server(
        ctl: Arc<Controller>,
        rollouts: Rollouts,
        refreshes: Refreshes,
        max_message: usize,
    ) -> Authorized<OperatorServiceServer<OperatorApi>> {
        let api = OperatorApi {
            ctl: ctl.clone(),
            rollouts,
            refreshes,
        };
        Authorized::new(
            ctl,
            OperatorServiceServer::new(api).max_decoding_message_size(max_message),
        )
    }
}

/// The API view of a node: its record, session and latest report's finding counts.
fn node_message(ctl: &Controller, rec: &NodeRecord, report: Option<&Report>) -> api::Node {
    api::Node {
        name: rec.name.clone(),
        last_seen_unix_ms: ctl.last_seen_ms(rec).map(|v| v as i64),
        session_state: if ctl.is_online(&rec.name) {
            api::SessionState::Online
        } else {
            api::SessionState::Offline
        } as i32,
        finding_counts: Some(api::FindingCounts::from_findings(
            report.map_or(&[][..], |r| &r.findings),
        )),
        cert_serial: rec.cert_serial.clone(),
        cert_not_after_unix_ms: Some(rec.cert_not_after_ms as i64),
        revoked: rec.revoked,
        agent_version: rec.agent_version.clone().unwrap_or_default(),
        observe_only: report.is_some_and(|r| r.facts.agent.observe_only),
    }
}

#[tonic::async_trait]
impl OperatorService for OperatorApi {
    async fn list_nodes(
        &self,
        req: Request<api::ListNodesRequest>,
    ) -> Result<Response<api::ListNodesResponse>, Status> {
        let ctl = &self.ctl;
        Caller::of(&req)?;
        let mut nodes = Vec::new();
        for rec in ctl.store().list_nodes().map_err(internal)? {
            let report = ctl.latest(&rec.name).map(|(r, _)| r);
            nodes.push(node_message(ctl, &rec, report.as_deref()));
        }
        Ok(Response::new(api::ListNodesResponse { nodes }))
    }

    async fn get_node(
        &self,
        req: Request<api::GetNodeRequest>,
    ) -> Result<Response<api::GetNodeResponse>, Status> {
        let ctl = &self.ctl;
        Caller::of(&req)?;
        let name = &req.get_ref().name;
        let rec = ctl
            .store()
            .get_node(name)
            .map_err(internal)?
            .ok_or_else(|| not_found("node", name))?;
        let report = ctl.store().latest_report(name).map_err(internal)?;
        Ok(Response::new(api::GetNodeResponse {
            node: Some(node_message(ctl, &rec, report.as_ref().map(|(_, r)| r))),
            report_json: report
                .as_ref()
                .map(|(_, r)| fleetward_proto::report_json_bytes(r)),
            report_received_unix_ms: report.map(|(t, _)| t as i64),
        }))
    }

    async fn list_findings(
        &self,
        req: Request<api::ListFindingsRequest>,
    ) -> Result<Response<api::ListFindingsResponse>, Status> {
        let ctl = &self.ctl;
        Caller::of(&req)?;
        let r = req.into_inner();
        let min = match r.min_severity.map(api::Severity::try_from) {
            None | Some(Ok(api::Severity::Unspecified)) => Severity::Info,
            Some(Ok(s)) => {
                Severity::try_from(s).map_err(|e| Status::invalid_argument(e.to_string()))?
            }
            Some(Err(_)) => return Err(Status::invalid_argument("unknown severity")),
        };
        let now = now_ms();
        let mut findings = Vec::new();
        for rec in ctl.store().list_nodes().map_err(internal)? {
            if r.node.as_ref().is_some_and(|n| *n != rec.name) {
                continue;
            }
            let stale_after = ctl.config().stale_secs.saturating_mul(1000);
            let seen = ctl.last_seen_ms(&rec);
            if !rec.revoked
                && seen.is_none_or(|t| now.saturating_sub(t) > stale_after)
                && Severity::Warning >= min
            {
                findings.push(api::Finding {
                    node: rec.name.clone(),
                    code: "node.stale".into(),
                    severity: api::Severity::Warning as i32,
                    message: match seen {
                        Some(t) => format!(
                            "no report or heartbeat for {} s",
                            now.saturating_sub(t) / 1000
                        ),
                        None => "never reported".into(),
                    },
                    path: None,
                    line: None,
                });
            }
            if let Some((report, _)) = ctl.latest(&rec.name) {
                findings.extend(
                    report
                        .findings
                        .iter()
                        .filter(|f| f.severity >= min)
                        .map(|f| api::Finding::from_report(&rec.name, f)),
                );
            }
        }
        findings.extend(
            ctl.fleet_findings(None)
                .iter()
                .chain(&ctl.left_in_maintenance())
                .filter(|f| {
                    f.finding.severity >= min && r.node.as_ref().is_none_or(|n| *n == f.node)
                })
                .map(|f| api::Finding::from_report(&f.node, &f.finding)),
        );
        Ok(Response::new(api::ListFindingsResponse { findings }))
    }

    async fn refresh_node(
        &self,
        req: Request<api::RefreshNodeRequest>,
    ) -> Result<Response<api::RefreshNodeResponse>, Status> {
        let ctl = &self.ctl;
        let caller = Caller::of(&req)?.clone();
        let name = &req.get_ref().name;
        let tx = ctl
            .session_sender(name)
            .ok_or_else(|| Status::failed_precondition(format!("node {name} is not connected")))?;
        let command_id = format!("refresh-{name}-{}-{}", now_ms(), ctl.next_id());
        let cmd = api::Command {
            command_id: command_id.clone(),
            kind: Some(api::command::Kind::Refresh(api::command::Refresh {})),
        };
        tx.send(Ok(ControllerMessage::new(
            controller_message::Kind::Command(cmd),
        )))
        .await
        .map_err(|_| Status::unavailable(format!("node {name} disconnected")))?;
        ctl.audit(
            &caller.identity.name,
            "node.refresh",
            name,
            command_id.clone(),
        )?;
        Ok(Response::new(api::RefreshNodeResponse { command_id }))
    }

    async fn revoke_node(
        &self,
        req: Request<api::RevokeNodeRequest>,
    ) -> Result<Response<api::RevokeNodeResponse>, Status> {
        let caller = Caller::of(&req)?;
        self.ctl
            .revoke_node(&caller.identity.name, &req.get_ref().name)?;
        Ok(Response::new(api::RevokeNodeResponse {}))
    }

    async fn create_token(
        &self,
        req: Request<api::CreateTokenRequest>,
    ) -> Result<Response<api::CreateTokenResponse>, Status> {
        let name = Caller::of(&req)?.identity.name.clone();
        let r = req.into_inner();
        let ctl = self.ctl.clone();
        let (rec, token) =
            super::blocking(move || ctl.create_token(&name, r.node_name.as_deref(), r.ttl_seconds))
                .await?;
        Ok(Response::new(api::CreateTokenResponse {
            id: rec.id,
            token,
            expires_at_unix_ms: rec.expires_ms as i64,
            ca_sha256: self.ctl.ca().fingerprint_sha256(),
        }))
    }

    async fn list_tokens(
        &self,
        req: Request<api::ListTokensRequest>,
    ) -> Result<Response<api::ListTokensResponse>, Status> {
        let ctl = &self.ctl;
        Caller::of(&req)?;
        let tokens = ctl
            .store()
            .list_tokens()
            .map_err(internal)?
            .into_iter()
            .map(|t| api::TokenInfo {
                id: t.id,
                node_name: t.node,
                expires_at_unix_ms: t.expires_ms as i64,
                used: t.used_ms.is_some(),
                revoked: t.revoked,
            })
            .collect();
        Ok(Response::new(api::ListTokensResponse { tokens }))
    }

    async fn revoke_token(
        &self,
        req: Request<api::RevokeTokenRequest>,
    ) -> Result<Response<api::RevokeTokenResponse>, Status> {
        let caller = Caller::of(&req)?;
        self.ctl
            .revoke_token(&caller.identity.name, &req.get_ref().id)?;
        Ok(Response::new(api::RevokeTokenResponse {}))
    }

    async fn issue_operator(
        &self,
        req: Request<api::IssueOperatorRequest>,
    ) -> Result<Response<api::IssueOperatorResponse>, Status> {
        let caller = Caller::of(&req)?;
        let r = req.get_ref();
        let (cert_pem, key_pem) = self.ctl.issue_operator(
            &caller.identity.name,
            &r.name,
            &r.scope,
            r.csr_pem.as_deref(),
        )?;
        Ok(Response::new(api::IssueOperatorResponse {
            cert_pem,
            key_pem,
            ca_pem: self.ctl.ca().cert_pem().to_string(),
        }))
    }

    async fn list_operators(
        &self,
        req: Request<api::ListOperatorsRequest>,
    ) -> Result<Response<api::ListOperatorsResponse>, Status> {
        Caller::of(&req)?;
        let operators = self
            .ctl
            .operators()?
            .into_iter()
            .map(|o| api::OperatorInfo {
                name: o.name,
                scope: o.scope,
                serial: o.serial,
                not_after_unix_ms: o.not_after_ms as i64,
                issued_unix_ms: o.issued_ms as i64,
                revoked: o.revoked,
            })
            .collect();
        Ok(Response::new(api::ListOperatorsResponse { operators }))
    }

    async fn revoke_operator(
        &self,
        req: Request<api::RevokeOperatorRequest>,
    ) -> Result<Response<api::RevokeOperatorResponse>, Status> {
        let caller = Caller::of(&req)?;
        let serials = self
            .ctl
            .revoke_operator(&caller.identity.name, &req.get_ref().name)?;
        Ok(Response::new(api::RevokeOperatorResponse { serials }))
    }

    async fn renew_operator(
        &self,
        req: Request<api::RenewOperatorRequest>,
    ) -> Result<Response<api::RenewOperatorResponse>, Status> {
        let caller = Caller::of(&req)?;
        let (cert_pem, not_after_ms) = self.ctl.renew_operator(caller, &req.get_ref().csr_pem)?;
        Ok(Response::new(api::RenewOperatorResponse {
            cert_pem,
            ca_pem: self.ctl.ca().cert_pem().to_string(),
            not_after_unix_ms: not_after_ms as i64,
        }))
    }

    async fn list_audit(
        &self,
        req: Request<api::ListAuditRequest>,
    ) -> Result<Response<api::ListAuditResponse>, Status> {
        let ctl = &self.ctl;
        Caller::of(&req)?;
        let limit = match req.get_ref().limit {
            0 => 100,
            n => n as usize,
        };
        let entries = ctl
            .store()
            .list_audit(limit)
            .map_err(internal)?
            .into_iter()
            .map(|e| api::AuditEntry {
                time_unix_ms: e.time_ms as i64,
                actor: e.actor,
                action: e.action,
                target: e.target,
                detail: e.detail,
            })
            .collect();
        Ok(Response::new(api::ListAuditResponse { entries }))
    }

    async fn list_drift(
        &self,
        req: Request<api::ListDriftRequest>,
    ) -> Result<Response<api::ListFindingsResponse>, Status> {
        let ctl = &self.ctl;
        Caller::of(&req)?;
        Ok(Response::new(fleet_response(&ctl.fleet_findings(None))))
    }

    async fn node_diff(
        &self,
        req: Request<api::NodeDiffRequest>,
    ) -> Result<Response<api::NodeDiffResponse>, Status> {
        let ctl = &self.ctl;
        Caller::of(&req)?;
        let r = req.get_ref();
        let latest = |name: &str| {
            ctl.latest(name)
                .map(|(r, _)| r)
                .ok_or_else(|| not_found("node with a report", name))
        };
        let (a, b) = (latest(&r.a)?, latest(&r.b)?);
        let rows = fleet::diff(&a.facts, &b.facts)
            .into_iter()
            .map(|d| api::DiffRow {
                differs: d.a != d.b,
                key: d.key,
                a: d.a,
                b: d.b,
            })
            .collect();
        Ok(Response::new(api::NodeDiffResponse { rows }))
    }

    async fn node_history(
        &self,
        req: Request<api::NodeHistoryRequest>,
    ) -> Result<Response<api::NodeHistoryResponse>, Status> {
        let ctl = &self.ctl;
        Caller::of(&req)?;
        let name = &req.get_ref().name;
        ctl.store()
            .get_node(name)
            .map_err(internal)?
            .ok_or_else(|| not_found("node", name))?;
        let changes = ctl
            .store()
            .fact_changes(name)
            .map_err(internal)?
            .into_iter()
            .map(|c| api::FactChange {
                time_unix_ms: c.time_ms as i64,
                key: c.key,
                old: c.old,
                new: c.new,
            })
            .collect();
        Ok(Response::new(api::NodeHistoryResponse { changes }))
    }

    async fn policy_show(
        &self,
        req: Request<api::PolicyShowRequest>,
    ) -> Result<Response<api::PolicyText>, Status> {
        let ctl = &self.ctl;
        Caller::of(&req)?;
        Ok(Response::new(policy_text(ctl.policy().as_deref())))
    }

    async fn policy_check(
        &self,
        req: Request<api::PolicyCheckRequest>,
    ) -> Result<Response<api::ListFindingsResponse>, Status> {
        let ctl = &self.ctl;
        Caller::of(&req)?;
        let given = match &req.get_ref().policy_toml {
            Some(text) => Some(
                Policy::parse(text)
                    .map_err(|e| Status::invalid_argument(format!("policy: {e}")))?,
            ),
            None => None,
        };
        let policy =
            match (&given, ctl.policy()) {
                (Some(p), _) => p.clone(),
                (None, Some(l)) => l.policy.clone(),
                (None, None) => return Err(Status::failed_precondition(
                    "no policy configured: set `policy = \"FILE\"` in controller.toml, or pass one",
                )),
            };
        let fleet = ctl.fleet();
        let views = NodeView::of(&fleet);
        Ok(Response::new(fleet_response(&fleet::check(
            &policy, &views,
        ))))
    }

    async fn policy_reload(
        &self,
        req: Request<api::PolicyReloadRequest>,
    ) -> Result<Response<api::PolicyText>, Status> {
        let ctl = &self.ctl;
        let caller = Caller::of(&req)?.clone();
        let loaded = ctl.reload_policy().map_err(Status::failed_precondition)?;
        let path = loaded
            .as_ref()
            .map_or(String::new(), |l| l.path.display().to_string());
        ctl.audit(&caller.identity.name, "policy.reload", &path, String::new())?;
        Ok(Response::new(policy_text(loaded.as_deref())))
    }

    async fn policy_capture(
        &self,
        req: Request<api::PolicyCaptureRequest>,
    ) -> Result<Response<api::PolicyText>, Status> {
        let ctl = &self.ctl;
        Caller::of(&req)?;
        let name = &req.get_ref().node;
        let (report, _) = ctl
            .latest(name)
            .ok_or_else(|| not_found("node with a report", name))?;
        Ok(Response::new(api::PolicyText {
            path: String::new(),
            toml: fleet::capture(&report.facts).to_toml(),
        }))
    }

    async fn render_report(
        &self,
        req: Request<api::RenderReportRequest>,
    ) -> Result<Response<api::RenderReportResponse>, Status> {
        let ctl = &self.ctl;
        Caller::of(&req)?;
        let format = req.get_ref().format.as_str();
        if !matches!(format, "" | "markdown") {
            return Err(Status::invalid_argument(format!(
                "unknown report format '{format}' (markdown)"
            )));
        }
        let fleet = ctl.fleet();
        let views = NodeView::of(&fleet);
        let findings: Vec<(String, fleetward_proto::Finding)> = fleet
            .iter()
            .flat_map(|(n, r)| r.findings.iter().map(move |f| (n.clone(), f.clone())))
            .collect();
        let policy = ctl.policy();
        let text = fleet::report::markdown(&fleet::report::Input {
            nodes: &views,
            node_findings: &findings,
            drift: &fleet::drift(&views),
            policy: policy.as_ref().map(|l| (&l.policy, l.path.as_path())),
            policy_findings: &policy
                .as_ref()
                .map(|l| fleet::check(&l.policy, &views))
                .unwrap_or_default(),
        });
        Ok(Response::new(api::RenderReportResponse { text }))
    }

    async fn rollout_plan(
        &self,
        req: Request<api::RolloutRequest>,
    ) -> Result<Response<api::RolloutPlanResponse>, Status> {
        let ctl = &self.ctl;
        let caller = Caller::of(&req)?.clone();
        let r = req.into_inner();
        if r.refresh_lists {
            let nodes = plan_nodes(ctl, &r.nodes)?;
            refresh_lists(ctl, &self.refreshes, &caller, &nodes).await?;
        }
        let plan = rollout_plan(ctl, &r, false)?;
        let view = crate::orchestrate::rollout::cluster_view(ctl, &Default::default());
        let latest: Vec<(String, Arc<Report>)> = plan
            .nodes
            .iter()
            .filter_map(|n| ctl.latest(n).map(|(r, _)| (n.clone(), r)))
            .collect();
        let reports = latest
            .iter()
            .map(|(n, r)| (n.clone(), r.as_ref()))
            .collect();
        let dry = crate::rollout::dry_run(&plan, &view, &reports, r.refresh_lists);
        Ok(Response::new(crate::wire::rollout_plan(&dry)))
    }

    async fn rollout_start(
        &self,
        req: Request<api::RolloutRequest>,
    ) -> Result<Response<api::RolloutStatusResponse>, Status> {
        let ctl = &self.ctl;
        let caller = Caller::of(&req)?.clone();
        let r = req.into_inner();
        if r.refresh_lists && !r.lists_refreshed {
            let nodes = plan_nodes(ctl, &r.nodes)?;
            refresh_lists(ctl, &self.refreshes, &caller, &nodes).await?;
        }
        let plan = rollout_plan(ctl, &r, r.refresh_lists)?;
        let observe_only: Vec<&str> = plan
            .nodes
            .iter()
            .filter(|n| {
                ctl.latest(n)
                    .is_some_and(|(r, _)| r.facts.agent.observe_only)
            })
            .map(String::as_str)
            .collect();
        if !observe_only.is_empty() {
            return Err(Status::failed_precondition(format!(
                "observe-only: {} (the agent refuses every action; leave such nodes out with --nodes)",
                observe_only.join(", ")
            )));
        }
        let refused = crate::orchestrate::rollout::refused_guests(ctl, &plan.nodes);
        if !refused.is_empty() {
            return Err(Status::failed_precondition(format!(
                "non_ha_guests = \"refuse\": {}",
                refused.join("; ")
            )));
        }
        let window = (!r.window.trim().is_empty()).then(|| r.window.trim().to_string());
        if let Some(w) = &window {
            crate::window::Window::parse(w).map_err(Status::invalid_argument)?;
        }
        let audit = Audit {
            actor: caller.identity.name.clone(),
            action: "rollout.start".into(),
            detail: format!(
                "nodes {} max-unavailable {}{}",
                plan.nodes.join(","),
                plan.max_unavailable,
                window
                    .as_deref()
                    .map(|w| format!(" window {w}"))
                    .unwrap_or_default()
            ),
        };
        let record = Rollout::new(plan, window, caller.identity.name.clone());
        let (rollout, _) = self
            .rollouts
            .start(record, Some(audit))
            .await
            .map_err(driver_status)?;
        rollout_status(ctl, &self.rollouts, &rollout).await
    }

    async fn rollout_status(
        &self,
        req: Request<api::RolloutStatusRequest>,
    ) -> Result<Response<api::RolloutStatusResponse>, Status> {
        let ctl = &self.ctl;
        Caller::of(&req)?;
        let id = req.into_inner().id;
        let rollout = find_rollout(ctl, &id)?;
        rollout_status(ctl, &self.rollouts, &rollout).await
    }

    async fn rollout_control(
        &self,
        req: Request<api::RolloutControlRequest>,
    ) -> Result<Response<api::RolloutStatusResponse>, Status> {
        let ctl = &self.ctl;
        let caller = Caller::of(&req)?.clone();
        let r = req.into_inner();
        let mut event = crate::wire::control_event(r.verb, r.node)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if r.restore {
            if event != crate::rollout::Event::Abort {
                return Err(Status::invalid_argument("restore goes with abort only"));
            }
            event = crate::rollout::Event::AbortRestore;
        }
        let audit = Audit {
            actor: caller.identity.name.clone(),
            action: "rollout.control".into(),
            detail: match &event {
                crate::rollout::Event::Skip { node } => format!("skip {node}"),
                e => format!("{e:?}").to_lowercase(),
            },
        };
        let id = (!r.id.is_empty()).then_some(r.id);
        let (rollout, _) = self
            .rollouts
            .control(id, event, Some(audit))
            .await
            .map_err(driver_status)?;
        rollout_status(ctl, &self.rollouts, &rollout).await
    }

    async fn rollout_list(
        &self,
        req: Request<api::RolloutListRequest>,
    ) -> Result<Response<api::RolloutListResponse>, Status> {
        Caller::of(&req)?;
        let mut all: Vec<Rollout> = self
            .ctl
            .store()
            .list_operations(ROLLOUT_PREFIX)
            .map_err(internal)?;
        all.sort_by_key(|r| r.created_ms);
        let rollouts = all.iter().map(crate::wire::rollout).collect();
        Ok(Response::new(api::RolloutListResponse { rollouts }))
    }
}

fn fleet_response(findings: &[fleet::FleetFinding]) -> api::ListFindingsResponse {
    api::ListFindingsResponse {
        findings: findings
            .iter()
            .map(|f| api::Finding::from_report(&f.node, &f.finding))
            .collect(),
    }
}

fn policy_text(p: Option<&LoadedPolicy>) -> api::PolicyText {
    api::PolicyText {
        path: p.map_or(String::new(), |l| l.path.display().to_string()),
        toml: p.map_or(String::new(), |l| l.text.clone()),
    }
}

/// The plan's nodes: the requested ones (each must be enrolled), or every enrolled, not
/// revoked node.
fn plan_nodes(ctl: &Controller, nodes: &[String]) -> Result<Vec<String>, Status> {
    if nodes.is_empty() {
        return Ok(ctl
            .store()
            .list_nodes()
            .map_err(internal)?
            .into_iter()
            .filter(|n| !n.revoked)
            .map(|n| n.name)
            .collect());
    }
    for n in nodes {
        ctl.node_enrolled(n)?;
    }
    Ok(nodes.to_vec())
}

/// The plan of `r`; with `skip_idle` (a start after its lists were refreshed) without
/// the nodes that have nothing to do, refused when none has anything to do.
fn rollout_plan(
    ctl: &Controller,
    r: &api::RolloutRequest,
    skip_idle: bool,
) -> Result<crate::rollout::Plan, Status> {
    let mut nodes = plan_nodes(ctl, &r.nodes)?;
    let reboot = crate::wire::reboot_policy(r.reboot)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    if skip_idle {
        let view = crate::orchestrate::rollout::cluster_view(ctl, &Default::default());
        nodes.retain(|n| {
            let report = ctl.latest(n).map(|(r, _)| r);
            crate::rollout::has_work(reboot, report.as_deref(), view.nodes.get(n))
        });
        if nodes.is_empty() {
            return Err(Status::failed_precondition(
                "nothing to do: no node has a package to upgrade or needs a reboot \
                 (as of their last package lists; rollout plan --refresh-lists updates them)",
            ));
        }
    }
    let id = format!("{ROLLOUT_PREFIX}{}", now_ms());
    let mut plan = crate::rollout::Plan::new(
        id,
        nodes,
        r.max_unavailable.max(1) as usize,
        ctl.host_node().node().map(str::to_owned),
        reboot,
    )
    .map_err(|e| Status::invalid_argument(e.to_string()))?;
    plan.timeouts = ctl.config().rollout.timeouts.clone();
    Ok(plan)
}

fn find_rollout(ctl: &Controller, id: &str) -> Result<Rollout, Status> {
    if !id.is_empty() {
        return ctl
            .store()
            .get_operation(id)
            .map_err(internal)?
            .ok_or_else(|| not_found("rollout", id));
    }
    let all: Vec<Rollout> = ctl
        .store()
        .list_operations(ROLLOUT_PREFIX)
        .map_err(internal)?;
    all.into_iter()
        .max_by_key(|r| r.created_ms)
        .ok_or_else(|| Status::not_found("there is no rollout yet"))
}

async fn rollout_status(
    ctl: &Controller,
    rollouts: &Rollouts,
    rollout: &Rollout,
) -> Result<Response<api::RolloutStatusResponse>, Status> {
    let events = ctl
        .store()
        .op_events(&rollout.state.plan.id)
        .map_err(internal)?;
    // A driver that stopped has no output to show; the status is still the journal's.
    let output = rollouts.output().await;
    Ok(Response::new(crate::wire::rollout_status(
        rollout, &events, &output,
    )))
}

/// `rollout plan --refresh-lists`: `apt-get update` on every node through its executor,
/// then a fresh report from each: an operation of the refresh driver (journaled, audited
/// before anything is sent), followed here until it ends.
async fn refresh_lists(
    ctl: &Controller,
    refreshes: &Refreshes,
    caller: &Caller,
    nodes: &[String],
) -> Result<(), Status> {
    use crate::refresh::{RefreshState, Status as S};
    let id = format!("refresh-{}", now_ms());
    let timeout_ms = ctl.config().rollout.timeouts.refresh_ms.max(1000);
    let record = RefreshState::new(&id, nodes, timeout_ms, now_ms(), &caller.identity.name);
    let audit = Audit {
        actor: caller.identity.name.clone(),
        action: "rollout.refresh-lists".into(),
        detail: nodes.join(","),
    };
    let mut watch = refreshes.watch().await.map_err(driver_status)?;
    refreshes
        .start(record, Some(audit))
        .await
        .map_err(driver_status)?;
    loop {
        if let Some(r) = watch.borrow_and_update().as_ref().filter(|r| r.id == id) {
            match &r.status {
                S::Done => return Ok(()),
                S::Failed { reason } => return Err(Status::aborted(reason.clone())),
                S::Planned | S::Running => {}
            }
        }
        // The machine's own bound ends it; this only stops waiting if the driver is gone.
        watch
            .changed()
            .await
            .map_err(|_| Status::unavailable("the refresh driver stopped"))?;
    }
}
