//! `ShutdownService`: the operator API of the coordinated shutdown and startup. Operator
//! certificates only (the authorization layer); every call that changes something is
//! audited by the driver ([`crate::orchestrate`]) before it acts.

use std::sync::Arc;

use fleetward_proto::api::{
    self, shutdown_service_server::ShutdownService, shutdown_service_server::ShutdownServiceServer,
};
use serde_json::json;
use tonic::{Request, Response, Status};

use super::{driver_status, internal, Authorized};
use crate::clock::now_ms;
use crate::host::HostNode;
use crate::orchestrate::rollout::Rollouts;
use crate::orchestrate::shutdown::{
    self as driver, stage_word, Shutdown, Shutdowns, SHUTDOWN_PREFIX,
};
use crate::orchestrate::{Audit, DriverError};
use crate::shutdown::{step_name, Event, Plan, PlanStep};
use crate::state::{Caller, Controller};

/// The service: the controller's state and the shutdown driver's handle.
pub struct ShutdownApi {
    ctl: Arc<Controller>,
    shutdowns: Shutdowns,
    /// For a preempting start (`--preempt`, `power-event on-battery`).
    rollouts: Rollouts,
}

impl ShutdownApi {
    /// The service behind the authorization layer, decoding messages up to `max_message`
    /// bytes.
    pub fn server(
        ctl: Arc<Controller>,
        shutdowns: Shutdowns,
        rollouts: Rollouts,
        max_message: usize,
    ) -> Authorized<ShutdownServiceServer<ShutdownApi>> {
        let api = ShutdownApi {
            ctl: ctl.clone(),
            shutdowns,
            rollouts,
        };
        Authorized::new(
            ctl,
            ShutdownServiceServer::new(api).max_decoding_message_size(max_message),
        )
    }
}

/// The reason a UPS-started shutdown carries (the audit log names the calling operator).
fn ups_reason(runtime_secs: u64) -> String {
    format!("UPS on battery (runtime {runtime_secs} s)")
}

/// Builds the plan for the cluster as it is now, with where the controller runs (its
/// node, when known, is powered off last and alone).
fn build_plan(
    ctl: &Controller,
    reason: Option<String>,
    deadline_secs: u64,
) -> Result<(Plan, HostNode), Status> {
    let now = now_ms();
    let deadline_ms =
        (deadline_secs > 0).then(|| now.saturating_add(deadline_secs.saturating_mul(1000)));
    let mut config = driver::plan_config(ctl.config(), reason, deadline_ms);
    let host = ctl.host_node();
    config.controller_host = host.node().map(str::to_owned);
    let view = driver::view(ctl);
    let plan = Plan::new(format!("{SHUTDOWN_PREFIX}{now}"), &view, &config, now)
        .map_err(|e| Status::failed_precondition(format!("cannot plan a shutdown: {e}")))?;
    Ok((plan, host))
}

/// The plan as the API shows it, with the controller's host said (in capitals when
/// unknown) right under the title.
pub(crate) fn plan_response(plan: &Plan, host: &HostNode) -> api::ShutdownPlanResponse {
    let mut resp = crate::wire::shutdown_plan_response(plan);
    let at = resp.summary.len().min(1);
    resp.summary.insert(at, host.describe());
    if let Some(p) = resp.plan.as_mut() {
        p.controller_host_note = host.describe();
        p.controller_host_unknown = matches!(host, HostNode::Unknown(_));
    }
    resp
}

/// The same steps, ignoring what depends on the moment (guest-stop timeouts cut by a
/// deadline): stage, node and step name in the same order.
fn same_steps(a: &[PlanStep], b: &[PlanStep]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.stage == y.stage && x.node == y.node && step_name(&x.action) == step_name(&y.action)
        })
}

fn reason_of(r: &str) -> Option<String> {
    let r = r.trim();
    (!r.is_empty()).then(|| r.to_string())
}

/// The newest shutdown (or the one named), from the store.
fn find(ctl: &Controller, id: &str) -> Result<Option<Shutdown>, Status> {
    if !id.is_empty() {
        return ctl
            .store()
            .get_operation(id)
            .map_err(internal)?
            .map(Some)
            .ok_or_else(|| Status::not_found(format!("shutdown {id} not found")));
    }
    let all: Vec<Shutdown> = ctl
        .store()
        .list_operations(SHUTDOWN_PREFIX)
        .map_err(internal)?;
    Ok(all.into_iter().max_by_key(|s| s.created_ms))
}

fn status(
    ctl: &Controller,
    s: Option<&Shutdown>,
    message: String,
) -> Result<Response<api::ShutdownStatusResponse>, Status> {
    let events = match s {
        Some(s) => ctl.store().op_events(s.id()).map_err(internal)?,
        None => Vec::new(),
    };
    Ok(Response::new(crate::wire::shutdown_status(
        s.map(|s| (s, events.as_slice())),
        message,
    )))
}

fn audit(actor: &str, action: &str, detail: String) -> Option<Audit> {
    Some(Audit {
        actor: actor.to_string(),
        action: action.to_string(),
        detail,
    })
}

/// Asks the driver to start `plan`, audited as `shutdown.start`.
async fn start(
    shutdowns: &Shutdowns,
    plan: Plan,
    actor: &str,
    detail: String,
    preempted: Option<String>,
) -> Result<Shutdown, Status> {
    let mut record = Shutdown::new(plan, actor.to_string());
    record.preempted = preempted;
    let audit = audit(actor, "shutdown.start", detail);
    let (s, _) = shutdowns
        .start(record, audit)
        .await
        .map_err(driver_status)?;
    Ok(s)
}

/// An operator's `event` on shutdown `id` (or the newest), audited as `action` by the
/// driver first, and refused (with the machine's reason) when the machine refuses it.
async fn audited_control(
    shutdowns: &Shutdowns,
    actor: &str,
    id: &str,
    action: &str,
    missing: &'static str,
    event: Event,
) -> Result<Shutdown, Status> {
    let id = (!id.is_empty()).then(|| id.to_string());
    let audit = audit(actor, action, String::new());
    match shutdowns.control(id, event, audit).await {
        Ok((s, _)) => Ok(s),
        Err(DriverError::NotFound(_)) => Err(Status::failed_precondition(missing)),
        Err(e) => Err(driver_status(e)),
    }
}

#[tonic::async_trait]
impl ShutdownService for ShutdownApi {
    async fn plan(
        &self,
        req: Request<api::ShutdownPlanRequest>,
    ) -> Result<Response<api::ShutdownPlanResponse>, Status> {
        let ctl = &self.ctl;
        Caller::of(&req)?;
        let r = req.into_inner();
        let (plan, host) = build_plan(ctl, reason_of(&r.reason), r.deadline_secs)?;
        Ok(Response::new(plan_response(&plan, &host)))
    }

    async fn start(
        &self,
        req: Request<api::ShutdownPlanRequest>,
    ) -> Result<Response<api::ShutdownStatusResponse>, Status> {
        let ctl = &self.ctl;
        let caller = Caller::of(&req)?.clone();
        let r = req.into_inner();
        let actor = caller.identity.name.clone();
        // One operation at a time: without --preempt a running operation refuses the
        // start (the driver's claim, with its words); with it the rollout is stopped first.
        let preempted = if r.preempt {
            let by = format!("a shutdown started by {actor}");
            crate::orchestrate::preempt::preempt(ctl, &self.rollouts, &actor, &by)
                .await
                .map_err(driver_status)?
        } else {
            None
        };
        let (plan, host) = build_plan(ctl, reason_of(&r.reason), r.deadline_secs)?;
        if let HostNode::Unknown(why) = &host {
            if !r.yes_host_unknown {
                return Err(Status::failed_precondition(format!(
                    "the controller cannot tell which node it runs on ({why}): it could be \
                     powered off before the others; set host_node (or host_outside_cluster \
                     = true) in controller.toml, or pass --yes-host-unknown; nothing was \
                     started"
                )));
            }
        }
        if let Some(reviewed) = &r.reviewed {
            let reviewed = crate::wire::reviewed_steps(reviewed)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            if !same_steps(&reviewed, &plan.steps()) {
                return Err(Status::failed_precondition(
                    "the cluster changed since the plan was shown (guests, nodes or Ceph \
                     roles differ): nothing was started; review the new plan",
                ));
            }
        }
        let detail = json!({
            "reason": plan.reason,
            "deadline_secs": r.deadline_secs,
            "tiers": plan.tiers,
            "controller_host": host.describe(),
            "preempted": preempted,
        })
        .to_string();
        let s = start(&self.shutdowns, plan, &actor, detail, preempted).await?;
        status(ctl, Some(&s), format!("shutdown {} started", s.id()))
    }

    async fn status(
        &self,
        req: Request<api::ShutdownStatusRequest>,
    ) -> Result<Response<api::ShutdownStatusResponse>, Status> {
        let ctl = &self.ctl;
        Caller::of(&req)?;
        let id = req.into_inner().id;
        match find(ctl, &id)? {
            Some(s) => {
                let msg = format!("shutdown {}: {}", s.id(), stage_word(s.state.stage));
                status(ctl, Some(&s), msg)
            }
            None => Err(Status::not_found("there is no shutdown yet")),
        }
    }

    async fn cancel(
        &self,
        req: Request<api::ShutdownControlRequest>,
    ) -> Result<Response<api::ShutdownStatusResponse>, Status> {
        let ctl = &self.ctl;
        let caller = Caller::of(&req)?.clone();
        let id = req.into_inner().id;
        let actor = &caller.identity.name;
        let s = audited_control(
            &self.shutdowns,
            actor,
            &id,
            "shutdown.cancel",
            "there is no shutdown to cancel",
            Event::Cancel,
        )
        .await?;
        status(
            ctl,
            Some(&s),
            format!(
                "shutdown {} cancelled: restoring what it stopped ({})",
                s.id(),
                stage_word(s.state.stage)
            ),
        )
    }

    async fn startup(
        &self,
        req: Request<api::ShutdownControlRequest>,
    ) -> Result<Response<api::ShutdownStatusResponse>, Status> {
        let ctl = &self.ctl;
        let caller = Caller::of(&req)?.clone();
        let id = req.into_inner().id;
        let actor = &caller.identity.name;
        let event = Event::StartUp { now_ms: now_ms() };
        let missing = "there is no shutdown to start up from";
        let s = audited_control(
            &self.shutdowns,
            actor,
            &id,
            "shutdown.startup",
            missing,
            event,
        )
        .await?;
        status(
            ctl,
            Some(&s),
            format!(
                "startup of {} begun ({})",
                s.id(),
                stage_word(s.state.stage)
            ),
        )
    }

    async fn power_event(
        &self,
        req: Request<api::PowerEventRequest>,
    ) -> Result<Response<api::ShutdownStatusResponse>, Status> {
        let ctl = &self.ctl;
        let caller = Caller::of(&req)?.clone();
        let r = req.into_inner();
        let current = find(ctl, "")?.filter(|s| !s.finished());
        let event = crate::wire::power_event(r.event)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        match event {
            crate::wire::Power::OnBattery => {
                if r.runtime_secs == 0 {
                    return Err(Status::invalid_argument(
                        "on-battery needs the remaining runtime in seconds (> 0)",
                    ));
                }
                ctl.audit(
                    &caller.identity.name,
                    "shutdown.power-event",
                    "on-battery",
                    format!("runtime {} s", r.runtime_secs),
                )?;
                if let Some(s) = current {
                    // NOTIFYCMD may fire again: the running shutdown keeps its deadline.
                    let msg = format!(
                        "shutdown {} is already in progress ({}): nothing new started",
                        s.id(),
                        stage_word(s.state.stage)
                    );
                    return status(ctl, Some(&s), msg);
                }
                // Power loss outranks maintenance: a running rollout is preempted.
                let actor = caller.identity.name.clone();
                let by = format!("a power event ({})", ups_reason(r.runtime_secs));
                let preempted =
                    crate::orchestrate::preempt::preempt(ctl, &self.rollouts, &actor, &by)
                        .await
                        .map_err(driver_status)?;
                // The UPS does not wait for a person: an unknown controller host is said
                // in the plan and the audit log, not refused.
                let (plan, host) =
                    build_plan(ctl, Some(ups_reason(r.runtime_secs)), r.runtime_secs)?;
                let detail = format!("{}; {}", ups_reason(r.runtime_secs), host.describe());
                let s = start(&self.shutdowns, plan, &actor, detail, preempted).await?;
                let msg = format!(
                    "shutdown {} started: the last node is due off within {} s",
                    s.id(),
                    r.runtime_secs
                );
                status(ctl, Some(&s), msg)
            }
            crate::wire::Power::Restored => {
                ctl.audit(
                    &caller.identity.name,
                    "shutdown.power-event",
                    "restored",
                    String::new(),
                )?;
                let Some(s) = current else {
                    return status(ctl, None, "no shutdown in progress: nothing to do".into());
                };
                if s.state.stage == crate::shutdown::Stage::Down {
                    let msg = format!(
                        "shutdown {} powered the cluster off; run `fleetward startup` once the \
                         nodes are powered on",
                        s.id()
                    );
                    return status(ctl, Some(&s), msg);
                }
                let id = Some(s.id().to_string());
                let restored = self.shutdowns.control(id, Event::PowerRestored, None).await;
                let (s, msg) = match restored {
                    Ok((s, _)) => {
                        let msg = format!(
                            "power restored: shutdown {} stopped, restoring what it stopped",
                            s.id()
                        );
                        (s, msg)
                    }
                    Err(DriverError::Refused(reason)) => {
                        (s, format!("power restored, but: {reason}"))
                    }
                    Err(e) => return Err(driver_status(e)),
                };
                status(ctl, Some(&s), msg)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shutdown::Stage;
    use fleetward_proto::action::Action;

    fn step(stage: Stage, node: &str, action: Action) -> PlanStep {
        PlanStep {
            stage,
            node: node.into(),
            action,
        }
    }

    #[test]
    fn reviewed_steps_compare_by_stage_node_and_step() {
        let stop = |t| Action::GuestStop {
            vmid: 100,
            kind: fleetward_proto::action::GuestKind::Qemu,
            timeout_secs: t,
            force: true,
        };
        let a = vec![
            step(Stage::StopGuests { group: 0 }, "a", stop(180)),
            step(Stage::PowerOff { tier: 0 }, "a", Action::PowerOff),
        ];
        let mut b = a.clone();
        b[0].action = stop(3);
        assert!(same_steps(&a, &b), "a cut timeout is the same step");
        b[1].node = "b".into();
        assert!(!same_steps(&a, &b));
        assert!(!same_steps(&a, &a[..1]));
    }
}
