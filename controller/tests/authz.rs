//! Every RPC of every service, read from the compiled `.proto` (so a new RPC cannot be
//! missed), refuses the wrong caller: an agent certificate on operator RPCs, an operator
//! certificate on agent RPCs (except `Enroll`, which needs no certificate), and a call
//! without a certificate. The controller runs in this process on loopback; the
//! certificates are real ones from its CA.

use fleetward_controller::{config::Config, init, paths::DataDir, serve};
use fleetward_pki::{Ca, Identity, Role, Scope};
use prost::Message;
use std::time::Duration;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity as TlsIdentity};
use tonic::Code;

/// Every RPC of the compiled `.proto` as (service, its full path).
fn proto_rpcs() -> Vec<(String, String)> {
    let set = prost_types::FileDescriptorSet::decode(fleetward_proto::FILE_DESCRIPTOR_SET)
        .expect("the descriptor set decodes");
    let mut out = Vec::new();
    for file in set.file {
        let package = file.package().to_string();
        for service in file.service {
            let name = format!("{package}.{}", service.name());
            for method in service.method {
                out.push((name.clone(), format!("/{name}/{}", method.name())));
            }
        }
    }
    out
}

struct Running {
    addr: String,
    ca: Ca,
    ca_pem: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Running {
    async fn start() -> Running {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = DataDir::new(tmp.path().join("data"));
        init::init(&dir, "authz", None, &[]).expect("init");
        let mut cfg = Config::load(&dir.config()).expect("controller.toml");
        cfg.data_dir = Some(dir.root().to_path_buf());
        let loaded = serve::load(&dir, cfg).expect("serve::load");
        let listener = serve::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local_addr").to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            serve::run(loaded, listener, async {
                let _ = stopped.await;
            })
            .await
            .expect("serve::run");
        });
        Running {
            addr,
            ca: Ca::load(&dir.ca_dir()).expect("CA"),
            ca_pem: std::fs::read_to_string(dir.ca_cert()).expect("ca.crt"),
            stop: Some(stop),
            task: Some(task),
            _dir: tmp,
        }
    }

    /// A TLS channel, with a client certificate of `role` when given.
    async fn channel(&self, role: Option<Role>) -> Channel {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name("localhost");
        if let Some(role) = role {
            let name = match role {
                Role::Agent => "pve1",
                _ => "someone",
            };
            let (cert, key) = self
                .ca
                .issue(
                    &Identity::new(role, name).expect("identity"),
                    Duration::from_secs(3600),
                    &[],
                    &[],
                )
                .expect("issue");
            tls = tls.identity(TlsIdentity::from_pem(cert.pem, key.pem()));
        }
        Channel::from_shared(format!("https://{}", self.addr))
            .expect("url")
            .tls_config(tls)
            .expect("tls")
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .expect("connect")
    }

    /// A TLS channel with the client certificate and key given (PEM).
    async fn channel_with(&self, cert: &str, key: &str) -> Channel {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name("localhost")
            .identity(TlsIdentity::from_pem(cert, key));
        Channel::from_shared(format!("https://{}", self.addr))
            .expect("url")
            .tls_config(tls)
            .expect("tls")
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .expect("connect")
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("serve task");
        }
    }
}

/// Calls `path` with an empty request (valid for every message type) and returns the
/// status it ended with.
async fn call(channel: &Channel, path: &str) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unknown(e.to_string()))?;
    let codec = fleetward_proto::codec::LeanCodec::<(), ()>::default();
    let path = PathAndQuery::try_from(path).expect("path");
    grpc.unary(tonic::Request::new(()), path, codec)
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_refuses_the_wrong_role_and_a_missing_certificate() {
    let c = Running::start().await;
    let agent = c.channel(Some(Role::Agent)).await;
    let operator = c.channel(Some(Role::Operator)).await;
    let anonymous = c.channel(None).await;
    let rpcs = proto_rpcs();
    assert!(
        rpcs.len() >= 30,
        "the descriptor set lists {} RPCs",
        rpcs.len()
    );
    let mut checked = 0;
    for (service, path) in &rpcs {
        let wrong = match service.as_str() {
            "fleetward.v1.AgentService" => &operator,
            "fleetward.v1.OperatorService" | "fleetward.v1.ShutdownService" => &agent,
            other => panic!("no expectation for service {other}: decide who may call it"),
        };
        if path == "/fleetward.v1.AgentService/Enroll" {
            // Needs no certificate: refused for its bad token, not for its caller.
            for ch in [&operator, &anonymous] {
                let err = call(ch, path).await.expect_err("an empty enrollment fails");
                assert_ne!(err.code(), Code::Unauthenticated, "{path}: {err:?}");
                assert!(!err.message().contains("may not call"), "{path}: {err:?}");
            }
            continue;
        }
        let err = call(wrong, path)
            .await
            .expect_err(&format!("{path} must refuse the wrong role"));
        assert_eq!(err.code(), Code::PermissionDenied, "{path}: {err:?}");
        assert!(err.message().contains("may not call"), "{path}: {err:?}");
        let err = call(&anonymous, path)
            .await
            .expect_err(&format!("{path} must refuse a call without a certificate"));
        assert_eq!(err.code(), Code::Unauthenticated, "{path}: {err:?}");
        checked += 1;
    }
    assert_eq!(checked, rpcs.len() - 1);

    // The right role passes the layer: an operator lists nodes; an agent's call reaches
    // the handler, which refuses a node that never enrolled.
    call(&operator, "/fleetward.v1.OperatorService/ListNodes")
        .await
        .expect("an operator lists nodes");
    let err = call(&agent, "/fleetward.v1.AgentService/Renew")
        .await
        .expect_err("an unenrolled node cannot renew");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("not enrolled"), "{err:?}");
    // A path that is no RPC of the controller is refused by the layer too.
    let err = call(&operator, "/fleetward.v1.OperatorService/Nope")
        .await
        .expect_err("unknown RPC");
    assert_eq!(err.code(), Code::Unimplemented);
    c.stop().await;
}

/// The least scope each operator RPC needs, written out here independently of the
/// controller's table. An operator RPC not listed here must be admin-only (the default
/// for an RPC nobody classified).
fn least_scope(path: &str) -> Scope {
    let method = path.rsplit('/').next().unwrap_or_default();
    let service = path.split('/').nth(1).unwrap_or_default();
    match (service, method) {
        (
            "fleetward.v1.OperatorService",
            "ListNodes" | "GetNode" | "ListFindings" | "ListAudit" | "ListDrift" | "NodeDiff"
            | "NodeHistory" | "PolicyShow" | "PolicyCheck" | "PolicyCapture" | "RenderReport"
            | "RolloutPlan" | "RolloutStatus" | "RolloutList" | "RenewOperator",
        ) => Scope::Viewer,
        ("fleetward.v1.ShutdownService", "Plan" | "Status") => Scope::Viewer,
        ("fleetward.v1.ShutdownService", "PowerEvent") => Scope::Power,
        (
            "fleetward.v1.OperatorService",
            "RefreshNode" | "PolicyReload" | "RolloutStart" | "RolloutControl",
        ) => Scope::Operator,
        ("fleetward.v1.ShutdownService", "Start" | "Cancel" | "Startup") => Scope::Operator,
        _ => Scope::Admin,
    }
}

/// Every operator RPC × every scope, over mutual TLS on loopback: a scope below the RPC's
/// least scope is refused by the layer (PERMISSION_DENIED naming the scope it needs), one
/// at or above it passes the layer (the handler may still refuse the empty request, but
/// never for the caller's scope). The scoped certificates are issued through the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operator_rpc_allows_exactly_the_scopes_it_should() {
    let c = Running::start().await;
    let admin = c.channel(Some(Role::Operator)).await; // no scope in it: an admin
    let mut ops =
        fleetward_proto::api::operator_service_client::OperatorServiceClient::new(admin.clone());
    let mut by_scope = Vec::new();
    for scope in Scope::ALL {
        let name = format!("op-{scope}");
        let issued = ops
            .issue_operator(fleetward_proto::api::IssueOperatorRequest {
                name: name.clone(),
                csr_pem: None,
                scope: scope.to_string(),
            })
            .await
            .expect("issue a scoped operator")
            .into_inner();
        let der = fleetward_pki::ca_der_from_pem(&issued.cert_pem).expect("cert");
        assert_eq!(fleetward_pki::scope_from_der(&der).unwrap(), Some(scope));
        let key = issued.key_pem.expect("a key was made");
        by_scope.push((scope, c.channel_with(&issued.cert_pem, &key).await));
    }
    // A scope is required, and must be one we know.
    for bad in ["", "root"] {
        let err = ops
            .issue_operator(fleetward_proto::api::IssueOperatorRequest {
                name: "nobody".into(),
                csr_pem: None,
                scope: bad.into(),
            })
            .await
            .expect_err("no valid scope");
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    }

    let mut checked = 0;
    for (service, path) in proto_rpcs() {
        if service == "fleetward.v1.AgentService" {
            continue;
        }
        let least = least_scope(&path);
        for (scope, ch) in &by_scope {
            let result = call(ch, &path).await;
            if *scope >= least {
                if let Err(e) = &result {
                    assert!(
                        !e.message().contains("needs scope") && e.code() != Code::Unauthenticated,
                        "{path} must allow scope {scope}: {e:?}"
                    );
                }
            } else {
                let e = result.expect_err(&format!("{path} must refuse scope {scope}"));
                assert_eq!(e.code(), Code::PermissionDenied, "{path} {scope}: {e:?}");
                assert!(
                    e.message().contains(&format!("needs scope {least}")),
                    "{path} {scope}: {e:?}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 4 * 30, "{checked} checks");
    c.stop().await;
}
