//! `AgentService`, called by agents: `Enroll` (no certificate yet: a join token), `Renew`
//! and `Session` (agent certificates only, through the authorization layer). A session
//! registers with the controller's state, records every message's time in the node's slot,
//! hands reports to ingestion, and forwards command progress as session events.

use super::Authorized;
use crate::clock::now_ms;
use crate::events::AgentEventKind;
use crate::ingest::Ingest;
use crate::state::{Caller, Controller, Kill, NodeSlot, Outbound};
use fleetward_proto::api::{
    self, agent_message, agent_service_server::AgentService,
    agent_service_server::AgentServiceServer, controller_message, AgentMessage, ControllerMessage,
};
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// `AgentService`: the controller's state and its ingestion path.
pub struct AgentApi {
    ctl: Arc<Controller>,
    ingest: Arc<Ingest>,
}

impl AgentApi {
    /// The service behind the authorization layer, decoding messages up to `max_message`
    /// bytes; it starts the report writer.
    pub fn server(
        ctl: Arc<Controller>,
        max_message: usize,
    ) -> Authorized<AgentServiceServer<AgentApi>> {
        let api = AgentApi {
            ingest: Arc::new(Ingest::start(ctl.clone())),
            ctl: ctl.clone(),
        };
        Authorized::new(
            ctl,
            AgentServiceServer::new(api).max_decoding_message_size(max_message),
        )
    }
}

type SessionStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<ControllerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn enroll(
        &self,
        req: Request<api::EnrollRequest>,
    ) -> Result<Response<api::EnrollResponse>, Status> {
        let r = req.into_inner();
        let ctl = self.ctl.clone();
        let cert_pem =
            super::blocking(move || ctl.enroll(&r.token, &r.node_name, &r.csr_pem)).await?;
        Ok(Response::new(api::EnrollResponse {
            cert_pem,
            ca_pem: self.ctl.ca().cert_pem().to_string(),
        }))
    }

    async fn renew(
        &self,
        req: Request<api::RenewRequest>,
    ) -> Result<Response<api::RenewResponse>, Status> {
        let caller = Caller::of(&req)?.clone();
        let ctl = self.ctl.clone();
        let csr = req.into_inner().csr_pem;
        let cert_pem = super::blocking(move || ctl.renew(&caller, &csr)).await?;
        Ok(Response::new(api::RenewResponse { cert_pem }))
    }

    type SessionStream = SessionStream;

    async fn session(
        &self,
        req: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let ctl = self.ctl.clone();
        let node = Caller::of(&req)?.identity.name.clone();
        ctl.node_enrolled(&node)?;
        let (tx, rx) = mpsc::channel(64);
        let (id, killed, slot) = ctl.register(&node, tx.clone());
        tracing::info!(node = %node, "session opened");
        let inbound = req.into_inner();
        let ingest = self.ingest.clone();
        tokio::spawn(async move {
            let end = drive_session(&ctl, &ingest, &slot, &node, inbound, &tx, killed).await;
            ctl.unregister(&slot, id);
            // Replaced by a newer session: the node is still connected.
            if !ctl.is_online(&node) {
                ctl.publish(&node, AgentEventKind::Disconnected);
            }
            match end {
                Ok(()) => tracing::info!(node = %node, "session closed"),
                Err(status) => {
                    tracing::warn!(node = %node, code = ?status.code(), message = status.message(), "session ended");
                    let _ = tx.send(Err(status)).await;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

async fn drive_session(
    ctl: &Controller,
    ingest: &Ingest,
    slot: &NodeSlot,
    node: &str,
    mut inbound: Streaming<AgentMessage>,
    tx: &Outbound,
    mut killed: watch::Receiver<Option<Kill>>,
) -> Result<(), Status> {
    use agent_message::Kind;
    let send = |kind: controller_message::Kind| {
        let tx = tx.clone();
        async move {
            tx.send(Ok(ControllerMessage::new(kind)))
                .await
                .map_err(|_| Status::cancelled("session gone"))
        }
    };
    // Only a session's first Hello announces it: a repeated one (a confused or hostile
    // agent) must not make the drivers re-send what is outstanding again and again.
    let mut greeted = false;
    loop {
        let msg = tokio::select! {
            m = inbound.message() => m,
            _ = killed.changed() => {
                let kill = killed.borrow().clone().unwrap_or(Kill { revoked: false, reason: "closed".into() });
                let _ = send(controller_message::Kind::Close(controller_message::Close { reason: kill.reason.clone() })).await;
                return Err(if kill.revoked {
                    Status::permission_denied(kill.reason)
                } else {
                    Status::unavailable(kill.reason)
                });
            }
        };
        let msg = match msg {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(()),
            // A decode error (e.g. a message over the size limit) goes back to the agent;
            // a vanished agent makes the reply go nowhere, which is fine.
            Err(status) => return Err(status),
        };
        slot.heard(now_ms());
        match msg.kind {
            Some(Kind::Hello(_)) if greeted => {
                tracing::warn!(node, "ignoring a repeated Hello on the same session");
            }
            Some(Kind::Hello(h)) => {
                greeted = true;
                ctl.record_hello(node, &h.agent_version, &h.boot_id)?;
                ctl.publish(node, AgentEventKind::Connected { boot_id: h.boot_id });
            }
            Some(Kind::Report(r)) => {
                let seq = r.seq;
                // Boxed: what a report keeps across the write (the parsed report, its
                // flat) is large, and the session task would otherwise be that large for
                // its whole life (its allocation was ~2.8 KB per idle session, heaptrack).
                Box::pin(ingest.store_report(slot, node, r)).await?;
                send(controller_message::Kind::ReportAck(
                    controller_message::ReportAck { seq },
                ))
                .await?;
            }
            Some(Kind::Heartbeat(h)) => {
                send(controller_message::Kind::HeartbeatAck(
                    controller_message::HeartbeatAck { seq: h.seq },
                ))
                .await?;
            }
            Some(Kind::CommandAck(a)) => {
                tracing::info!(node, command = %a.command_id, "command acknowledged");
                ctl.publish(node, AgentEventKind::CommandAck { id: a.command_id });
            }
            Some(Kind::CommandOutput(o)) => {
                tracing::debug!(node, command = %o.command_id, line = %o.line, "command output");
                ctl.publish(
                    node,
                    AgentEventKind::CommandOutput {
                        id: o.command_id,
                        line: o.line,
                    },
                );
            }
            Some(Kind::CommandResult(r)) => {
                tracing::info!(node, command = %r.command_id, ok = r.ok, exit_code = ?r.exit_code, replayed = r.replayed, message = %r.message, "command finished");
                // Before the result wakes a driver: its view then holds the OSD map read
                // after the noout action.
                if let Some(c) = &r.ceph {
                    ctl.record_ceph_probe(
                        node,
                        crate::state::CephProbe {
                            noout: c.noout,
                            osds: fleetward_proto::OsdCounts {
                                total: c.osds_total,
                                up: c.osds_up,
                                inside: c.osds_in,
                            },
                        },
                    );
                }
                ctl.publish(
                    node,
                    AgentEventKind::CommandResult {
                        id: r.command_id,
                        ok: r.ok,
                        message: r.message,
                        exit_code: r.exit_code,
                        replayed: r.replayed,
                    },
                );
            }
            None => return Err(Status::invalid_argument("empty agent message")),
        }
    }
}
