//! The gRPC services, each thin over [`crate::state::Controller`]: `AgentService`
//! ([`agent`]), `OperatorService` ([`operator`]) and `ShutdownService` ([`shutdown`]).
//!
//! Authorization is a layer ([`Authorized`]), not a call each handler must remember: every
//! RPC of every service is listed in [`RPCS`] with the role it requires (for operator RPCs,
//! the least operator scope: viewer < power < operator < admin); the layer looks the
//! request's path up, refuses a path that is not listed, has
//! [`Controller::authorize`](crate::state::Controller::authorize) decide on the client
//! certificate, and puts the verified [`Caller`] into the request. The services can only be
//! built wrapped in it (`*Api::server`), and a handler that needs the caller takes it with
//! [`Caller::of`], which fails for a request that did not pass the layer.

pub mod agent;
pub mod operator;
pub mod shutdown;

pub use agent::AgentApi;
pub use operator::OperatorApi;
pub use shutdown::ShutdownApi;

use crate::state::{Caller, Controller};
use fleetward_pki::{Role, Scope};
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::NamedService;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;

pub(crate) use crate::state::{internal, not_found};

/// Runs `f` — a call that makes a durable write — on tokio's blocking pool: its sync must
/// not hold a runtime worker, and concurrent calls then share their syncs (the store's group
/// commit) instead of queueing behind one worker each.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| internal(format!("a blocking call failed: {e}")))?
}

/// A driver's refusal or failure as a gRPC status.
pub(crate) fn driver_status(e: crate::orchestrate::DriverError) -> Status {
    use crate::orchestrate::DriverError as E;
    match e {
        E::Refused(m) | E::NotFound(m) => Status::failed_precondition(m),
        e @ (E::Persist { .. } | E::Stopped(_)) => Status::unavailable(e.to_string()),
    }
}

/// Who may call an RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No certificate needed (enrollment: the agent has none yet).
    Anyone,
    /// A client certificate of this role, not revoked.
    Role(Role),
    /// An operator certificate, not revoked and current in the operator registry, whose
    /// scope is at least this one (`viewer` < `power` < `operator` < `admin`).
    Operator(Scope),
}

const AGENT: Access = Access::Role(Role::Agent);
/// Read-only: every scope.
const VIEWER: Access = Access::Operator(Scope::Viewer);
/// Power events: `power`, `operator`, `admin`.
const POWER: Access = Access::Operator(Scope::Power);
/// Rollouts, shutdowns, refreshes, policy reloads: `operator`, `admin`.
const OPERATE: Access = Access::Operator(Scope::Operator);
/// Tokens, node revocation, operator identities: `admin` only.
const ADMIN: Access = Access::Operator(Scope::Admin);
/// An operator RPC nobody classified yet is for admins only.
#[allow(dead_code)]
const OPERATOR: Access = ADMIN;

/// Every RPC the controller serves: (service, method, who may call it). The layer refuses
/// whatever is not here, and a test checks this table against the services of the compiled
/// `.proto`, so a new RPC cannot be served without a decision about who may call it.
pub const RPCS: &[(&str, &str, Access)] = &[
    ("fleetward.v1.AgentService", "Enroll", Access::Anyone),
    ("fleetward.v1.AgentService", "Renew", AGENT),
    ("fleetward.v1.AgentService", "Session", AGENT),
    ("fleetward.v1.OperatorService", "ListNodes", VIEWER),
    ("fleetward.v1.OperatorService", "GetNode", VIEWER),
    ("fleetward.v1.OperatorService", "ListFindings", VIEWER),
    ("fleetward.v1.OperatorService", "RefreshNode", OPERATE),
    ("fleetward.v1.OperatorService", "RevokeNode", ADMIN),
    ("fleetward.v1.OperatorService", "CreateToken", ADMIN),
    ("fleetward.v1.OperatorService", "ListTokens", ADMIN),
    ("fleetward.v1.OperatorService", "RevokeToken", ADMIN),
    ("fleetward.v1.OperatorService", "IssueOperator", ADMIN),
    ("fleetward.v1.OperatorService", "ListAudit", VIEWER),
    ("fleetward.v1.OperatorService", "ListDrift", VIEWER),
    ("fleetward.v1.OperatorService", "NodeDiff", VIEWER),
    ("fleetward.v1.OperatorService", "NodeHistory", VIEWER),
    ("fleetward.v1.OperatorService", "PolicyShow", VIEWER),
    ("fleetward.v1.OperatorService", "PolicyCheck", VIEWER),
    ("fleetward.v1.OperatorService", "PolicyReload", OPERATE),
    ("fleetward.v1.OperatorService", "PolicyCapture", VIEWER),
    ("fleetward.v1.OperatorService", "RenderReport", VIEWER),
    ("fleetward.v1.OperatorService", "RolloutPlan", VIEWER),
    ("fleetward.v1.OperatorService", "RolloutStart", OPERATE),
    ("fleetward.v1.OperatorService", "RolloutStatus", VIEWER),
    ("fleetward.v1.OperatorService", "RolloutControl", OPERATE),
    ("fleetward.v1.OperatorService", "RolloutList", VIEWER),
    ("fleetward.v1.ShutdownService", "Plan", VIEWER),
    ("fleetward.v1.ShutdownService", "Start", OPERATE),
    ("fleetward.v1.ShutdownService", "Status", VIEWER),
    ("fleetward.v1.ShutdownService", "Cancel", OPERATE),
    ("fleetward.v1.ShutdownService", "Startup", OPERATE),
    ("fleetward.v1.ShutdownService", "PowerEvent", POWER),
    ("fleetward.v1.OperatorService", "ListOperators", ADMIN),
    ("fleetward.v1.OperatorService", "RevokeOperator", ADMIN),
    // Every operator renews its own certificate (the handler renews only the caller's).
    ("fleetward.v1.OperatorService", "RenewOperator", VIEWER),
];

/// Who may call the RPC at `path` (`/package.Service/Method`); `None` for an unknown one.
pub fn access(path: &str) -> Option<Access> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    RPCS.iter()
        .find(|(s, m, _)| *s == service && *m == method)
        .map(|(_, _, a)| *a)
}

/// A service behind the authorization layer (see the module documentation).
#[derive(Clone)]
pub struct Authorized<S> {
    inner: S,
    ctl: Arc<Controller>,
}

impl<S> Authorized<S> {
    fn new(ctl: Arc<Controller>, inner: S) -> Self {
        Authorized { inner, ctl }
    }

    /// The caller of `req` if it may call the RPC it names (`None` for RPCs anyone may
    /// call), or the status that refuses it.
    fn check<B>(&self, req: &http::Request<B>) -> Result<Option<Caller>, Status> {
        let path = req.uri().path();
        let (role, min_scope) = match access(path) {
            Some(Access::Anyone) => return Ok(None),
            Some(Access::Role(role)) => (role, None),
            Some(Access::Operator(scope)) => (Role::Operator, Some(scope)),
            None => {
                return Err(Status::unimplemented(format!(
                    "{path} is not an RPC of this controller"
                )))
            }
        };
        let certs = req
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|i| i.peer_certs());
        let caller = self.ctl.authorize(certs.as_deref().map(|c| &c[..]), role)?;
        if let Some(min) = min_scope {
            let scope = caller.scope.unwrap_or(Scope::Admin);
            if scope < min {
                return Err(Status::permission_denied(format!(
                    "operator {} has scope {scope}; {path} needs scope {min} or above",
                    caller.identity.name
                )));
            }
        }
        Ok(Some(caller))
    }
}

impl<S: NamedService> NamedService for Authorized<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for Authorized<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        match self.check(&req) {
            Ok(Some(caller)) => {
                req.extensions_mut().insert(caller);
            }
            Ok(None) => {}
            Err(status) => {
                tracing::debug!(path = req.uri().path(), code = ?status.code(), message = status.message(), "call refused");
                return Box::pin(async move { Ok(status.into_http()) });
            }
        }
        // The service that was polled ready serves this call; its clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use std::collections::BTreeSet;

    /// Every (service, method) of the compiled `.proto`.
    fn proto_rpcs() -> BTreeSet<(String, String)> {
        let set = prost_types::FileDescriptorSet::decode(fleetward_proto::FILE_DESCRIPTOR_SET)
            .expect("the descriptor set decodes");
        let mut out = BTreeSet::new();
        for file in set.file {
            let package = file.package().to_string();
            for service in file.service {
                let name = format!("{package}.{}", service.name());
                for method in service.method {
                    out.insert((name.clone(), method.name().to_string()));
                }
            }
        }
        out
    }

    #[test]
    fn the_table_lists_every_rpc_of_the_proto_once() {
        let table: Vec<(String, String)> = RPCS
            .iter()
            .map(|(s, m, _)| (s.to_string(), m.to_string()))
            .collect();
        let unique: BTreeSet<_> = table.iter().cloned().collect();
        assert_eq!(unique.len(), table.len(), "an RPC is listed twice");
        assert_eq!(unique, proto_rpcs());
    }

    #[test]
    fn the_table_names_the_served_services() {
        use fleetward_proto::api::{
            agent_service_server::AgentServiceServer,
            operator_service_server::OperatorServiceServer,
            shutdown_service_server::ShutdownServiceServer,
        };
        let served: BTreeSet<&str> = [
            <AgentServiceServer<AgentApi> as NamedService>::NAME,
            <OperatorServiceServer<OperatorApi> as NamedService>::NAME,
            <ShutdownServiceServer<ShutdownApi> as NamedService>::NAME,
        ]
        .into();
        let listed: BTreeSet<&str> = RPCS.iter().map(|(s, _, _)| *s).collect();
        assert_eq!(served, listed);
    }

    #[test]
    fn only_enrollment_is_open_and_paths_resolve() {
        assert_eq!(
            access("/fleetward.v1.AgentService/Enroll"),
            Some(Access::Anyone)
        );
        assert_eq!(access("/fleetward.v1.AgentService/Session"), Some(AGENT));
        assert_eq!(
            access("/fleetward.v1.ShutdownService/PowerEvent"),
            Some(POWER)
        );
        assert_eq!(access("/fleetward.v1.AgentService/Nope"), None);
        assert_eq!(access("fleetward.v1.AgentService/Enroll"), None);
        assert_eq!(access("/"), None);
        let open: Vec<_> = RPCS
            .iter()
            .filter(|(_, _, a)| *a == Access::Anyone)
            .map(|(s, m, _)| format!("{s}/{m}"))
            .collect();
        assert_eq!(open, ["fleetward.v1.AgentService/Enroll"]);
    }
}
