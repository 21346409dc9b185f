//! Every acknowledged write of security state is synced before its reply: the controller
//! runs in this process on loopback with a sync observer on its store
//! (`Store::observe_syncs`); the test records each sync (with its write class) and each
//! reply the client receives in ONE ordered log, then checks that between a call and its
//! reply the store synced every class the call writes — and that a refused call or a read
//! synced nothing. The orchestration journal (`put_operation`) is covered by the store's own
//! test (`store::durable::tests`), since no RPC answers before the driver journals.

use fleetward_controller::{config::Config, init, paths::DataDir, serve, store::WriteClass};
use fleetward_pki::{generate_key_and_csr, Identity, Role};
use fleetward_proto::api::{
    agent_service_client::AgentServiceClient, operator_service_client::OperatorServiceClient,
    CreateTokenRequest, EnrollRequest, IssueOperatorRequest, ListNodesRequest, RenewRequest,
    RevokeNodeRequest, RevokeTokenRequest,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity as TlsIdentity};

#[derive(Debug, Clone, PartialEq)]
enum Ev {
    Sync(WriteClass),
    Reply(&'static str),
}

type Log = Arc<Mutex<Vec<Ev>>>;

async fn channel(addr: &str, ca_pem: &str, id: Option<(String, String)>) -> Channel {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some((cert, key)) = id {
        tls = tls.identity(TlsIdentity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("connect")
}

/// Takes the events since the last call: they must end with `Reply(name)`, and the syncs
/// before it must be exactly `classes` (in any order).
fn check(log: &Log, name: &'static str, classes: &[WriteClass]) {
    check_with(log, name, classes, &[])
}

/// Like [`check`], with syncs of the classes in `optional` allowed besides.
fn check_with(log: &Log, name: &'static str, classes: &[WriteClass], optional: &[WriteClass]) {
    let events: Vec<Ev> = std::mem::take(&mut *log.lock().unwrap());
    assert_eq!(events.last(), Some(&Ev::Reply(name)), "{name}: {events:?}");
    let mut synced: Vec<WriteClass> = events
        .iter()
        .filter_map(|e| match e {
            Ev::Sync(c) if !optional.contains(c) => Some(*c),
            _ => None,
        })
        .collect();
    let mut want = classes.to_vec();
    let key = |c: &WriteClass| format!("{c:?}");
    synced.sort_by_key(key);
    want.sort_by_key(key);
    assert_eq!(
        synced, want,
        "{name}: the syncs before its reply ({events:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_is_synced_before_its_reply() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(tmp.path().join("data"));
    init::init(&dir, "durable", None, &[]).unwrap();
    let mut cfg = Config::load(&dir.config()).unwrap();
    cfg.data_dir = Some(dir.root().to_path_buf());
    let loaded = serve::load(&dir, cfg).unwrap();
    let log: Log = Arc::default();
    let recorder = log.clone();
    loaded
        .controller
        .store()
        .observe_syncs(Some(Arc::new(move |class| {
            recorder.lock().unwrap().push(Ev::Sync(class))
        })));
    let listener = serve::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve::run(loaded, listener, async {
        let _ = stopped.await;
    }));
    let ca_pem = std::fs::read_to_string(dir.ca_cert()).unwrap();
    let admin = (
        std::fs::read_to_string(dir.operator_cert("admin")).unwrap(),
        std::fs::read_to_string(dir.operator_key("admin")).unwrap(),
    );
    let mut op = OperatorServiceClient::new(channel(&addr, &ca_pem, Some(admin)).await);
    let reply = |name: &'static str| log.lock().unwrap().push(Ev::Reply(name));
    use WriteClass::*;

    // A read syncs nothing.
    op.list_nodes(ListNodesRequest::default()).await.unwrap();
    reply("list nodes");
    check(&log, "list nodes", &[]);

    let token = op
        .create_token(CreateTokenRequest {
            ttl_seconds: 600,
            node_name: Some("pve-01".into()),
        })
        .await
        .unwrap()
        .into_inner();
    reply("token create");
    check(&log, "token create", &[Token, Audit]);

    let (key, csr) = generate_key_and_csr(&Identity::new(Role::Agent, "pve-01").unwrap()).unwrap();
    let mut anon = AgentServiceClient::new(channel(&addr, &ca_pem, None).await);
    let enroll = |token: &str| EnrollRequest {
        token: token.to_string(),
        node_name: "pve-01".into(),
        csr_pem: csr.clone(),
    };
    let cert = anon
        .enroll(enroll(&token.token))
        .await
        .unwrap()
        .into_inner()
        .cert_pem;
    reply("enroll");
    check(&log, "enroll", &[Enrollment, Audit]);

    // The used token is refused: nothing written, nothing synced.
    anon.enroll(enroll(&token.token)).await.unwrap_err();
    reply("enroll again");
    check(&log, "enroll again", &[]);

    let mut agent =
        AgentServiceClient::new(channel(&addr, &ca_pem, Some((cert, key.pem().to_string()))).await);
    let (_key2, csr2) =
        generate_key_and_csr(&Identity::new(Role::Agent, "pve-01").unwrap()).unwrap();
    agent.renew(RenewRequest { csr_pem: csr2 }).await.unwrap();
    reply("renew");
    check(&log, "renew", &[NodeCertificate, Audit]);

    let other = op
        .create_token(CreateTokenRequest {
            ttl_seconds: 600,
            node_name: None,
        })
        .await
        .unwrap()
        .into_inner();
    reply("token create 2");
    check(&log, "token create 2", &[Token, Audit]);
    op.revoke_token(RevokeTokenRequest { id: other.id })
        .await
        .unwrap();
    reply("token revoke");
    check(&log, "token revoke", &[Token, Audit]);

    op.issue_operator(IssueOperatorRequest {
        name: "ups".into(),
        csr_pem: None,
        scope: "power".into(),
    })
    .await
    .unwrap();
    reply("operator issue");
    // (An operator registry, where there is one, writes as `Operator`.)
    check_with(&log, "operator issue", &[Audit], &[Operator]);

    op.revoke_node(RevokeNodeRequest {
        name: "pve-01".into(),
    })
    .await
    .unwrap();
    reply("node revoke");
    check(&log, "node revoke", &[NodeCertificate, Audit]);

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
