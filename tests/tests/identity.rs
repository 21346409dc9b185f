//! Agent identities: a certificate speaks for its node only while it is the node's current
//! one (or, for a short overlap after a renewal, the one it replaced), and enrollment never
//! replaces an enrolled node unless the token was created for that node. Each attack is
//! refused and leaves the node record, the revoked serials, the tokens and the audit log
//! exactly as they were.

use fleetward_controller::store::{AuditEntry, NodeRecord, TokenRecord};
use fleetward_pki::{generate_key_and_csr, Identity, Role};
use fleetward_proto::api::{
    self, agent_message, agent_service_client::AgentServiceClient, controller_message,
    AgentMessage, ControllerMessage,
};
use fleetward_tests::Controller;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Code, Status, Streaming};

/// Everything an identity attack could change, read from the store.
#[derive(Debug, PartialEq)]
struct Snapshot {
    node: Option<NodeRecord>,
    revoked: Vec<String>,
    tokens: Vec<TokenRecord>,
    audit: Vec<AuditEntry>,
}

fn snapshot(c: &Controller, node: &str) -> Snapshot {
    let server = c.server();
    let store = server.store();
    Snapshot {
        node: store.get_node(node).expect("get_node"),
        revoked: store.revoked_serials().expect("revoked_serials"),
        tokens: store.list_tokens().expect("list_tokens"),
        audit: store.list_audit(usize::MAX).expect("list_audit"),
    }
}

fn record(c: &Controller, node: &str) -> NodeRecord {
    c.server()
        .store()
        .get_node(node)
        .expect("get_node")
        .expect("the node is enrolled")
}

fn last_audit(c: &Controller) -> AuditEntry {
    c.server().store().list_audit(1).expect("list_audit")[0].clone()
}

/// `Renew` with the agent certificate (`cert`, `key`) of `node`: the new (cert, key).
async fn renew(
    c: &Controller,
    node: &str,
    cert: &str,
    key: &str,
) -> Result<(String, String), Status> {
    let (new_key, csr) =
        generate_key_and_csr(&Identity::new(Role::Agent, node).expect("identity")).expect("csr");
    let ch = c
        .channel(Some((cert, key)))
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let resp = AgentServiceClient::new(ch)
        .renew(api::RenewRequest { csr_pem: csr })
        .await?;
    Ok((resp.into_inner().cert_pem, new_key.pem().to_string()))
}

/// An open session: the sender of agent messages and the controller's stream.
type Session = (mpsc::Sender<AgentMessage>, Streaming<ControllerMessage>);

/// Opens a session with (`cert`, `key`) and waits for the answer to one heartbeat.
async fn session(c: &Controller, cert: &str, key: &str) -> Result<Session, Status> {
    let ch = c
        .channel(Some((cert, key)))
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let (tx, rx) = mpsc::channel(4);
    let mut inbound = AgentServiceClient::new(ch)
        .session(ReceiverStream::new(rx))
        .await?
        .into_inner();
    heartbeat(&tx, &mut inbound).await?;
    Ok((tx, inbound))
}

async fn heartbeat(
    tx: &mpsc::Sender<AgentMessage>,
    inbound: &mut Streaming<ControllerMessage>,
) -> Result<(), Status> {
    tx.send(AgentMessage::new(agent_message::Kind::Heartbeat(
        agent_message::Heartbeat { seq: 1 },
    )))
    .await
    .map_err(|_| Status::cancelled("session gone"))?;
    match tokio::time::timeout(Duration::from_secs(10), inbound.next()).await {
        Ok(Some(Ok(ControllerMessage {
            kind: Some(controller_message::Kind::HeartbeatAck(_)),
        }))) => Ok(()),
        Ok(Some(Err(s))) => Err(s),
        Ok(other) => Err(Status::unknown(format!("unexpected {other:?}"))),
        Err(_) => Err(Status::deadline_exceeded("no answer")),
    }
}

fn refused<T>(r: Result<T, Status>) -> Status {
    match r {
        Ok(_) => panic!("must be refused"),
        Err(s) => s,
    }
}

/// The attacker copies pve-02's certificate S1 and renews with it (the record now names
/// the attacker's S2); the operator revokes pve-02 and enrolls it again with a token for
/// it (S3). Neither S1 nor S2 ever speaks for pve-02 again, and the record keeps S3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superseded_certificate_does_not_come_back() {
    let c = Controller::start_in_process();
    let (s1_cert, s1_key) = c
        .enroll("pve-02", &c.token(Some("pve-02"), 600).await)
        .await
        .expect("enroll pve-02");
    let s1 = record(&c, "pve-02").cert_serial;

    // The stolen copy renews first.
    let (s2_cert, s2_key) = renew(&c, "pve-02", &s1_cert, &s1_key)
        .await
        .expect("the copy renews while S1 is current");
    let rec = record(&c, "pve-02");
    let s2 = rec.cert_serial.clone();
    assert_ne!(s2, s1);
    assert_eq!(rec.previous_serial.as_deref(), Some(s1.as_str()));
    let audit = last_audit(&c);
    assert_eq!(audit.action, "node.renew");
    assert!(
        audit.detail.contains(&s1) && audit.detail.contains(&s2),
        "{audit:?}"
    );

    // The operator revokes the node: every serial it ever had is revoked.
    c.operator()
        .await
        .revoke_node(api::RevokeNodeRequest {
            name: "pve-02".into(),
        })
        .await
        .expect("revoke pve-02");
    {
        let server = c.server();
        let store = server.store();
        assert!(store.is_revoked(&s1).unwrap() && store.is_revoked(&s2).unwrap());
    }
    let audit = last_audit(&c);
    assert_eq!(audit.action, "node.revoke");
    assert!(
        audit.detail.contains(&s1) && audit.detail.contains(&s2),
        "{audit:?}"
    );

    // The legitimate re-enrollment (`enroll --force` with a token for pve-02).
    let (s3_cert, s3_key) = c
        .enroll("pve-02", &c.token(Some("pve-02"), 600).await)
        .await
        .expect("re-enroll pve-02");
    let s3 = record(&c, "pve-02").cert_serial;
    assert!(s3 != s1 && s3 != s2);
    assert_eq!(last_audit(&c).action, "node.replace");

    let before = snapshot(&c, "pve-02");
    for (name, cert, key) in [("S1", &s1_cert, &s1_key), ("S2", &s2_cert, &s2_key)] {
        let err = refused(renew(&c, "pve-02", cert, key).await);
        assert_eq!(
            err.code(),
            Code::PermissionDenied,
            "renew with {name}: {err:?}"
        );
        let err = refused(session(&c, cert, key).await);
        assert_eq!(
            err.code(),
            Code::PermissionDenied,
            "session with {name}: {err:?}"
        );
        assert_eq!(
            snapshot(&c, "pve-02"),
            before,
            "{name}'s refusal changed state"
        );
    }
    assert_eq!(record(&c, "pve-02").cert_serial, s3);

    // The legitimate certificate works.
    let _session = session(&c, &s3_cert, &s3_key)
        .await
        .expect("S3 opens a session");
}

/// A renewal leaves the replaced certificate usable until the new one is used; its first
/// use retires the old one, audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_retires_its_predecessor_on_first_use() {
    let c = Controller::start_in_process();
    let (s1_cert, s1_key) = c
        .enroll("pve-01", &c.token(Some("pve-01"), 600).await)
        .await
        .expect("enroll pve-01");
    let s1 = record(&c, "pve-01").cert_serial;
    let (s2_cert, s2_key) = renew(&c, "pve-01", &s1_cert, &s1_key).await.expect("renew");
    let s2 = record(&c, "pve-01").cert_serial;

    // The overlap: S1 still opens a session (an agent that has not switched yet).
    let _old = session(&c, &s1_cert, &s1_key)
        .await
        .expect("S1 during the overlap");
    // The first session with S2 retires S1.
    let _new = session(&c, &s2_cert, &s2_key).await.expect("S2");
    let audit = last_audit(&c);
    assert_eq!(audit.action, "node.cert.retire");
    assert!(
        audit.detail.contains(&s1) && audit.detail.contains(&s2),
        "{audit:?}"
    );
    assert!(c.server().store().is_revoked(&s1).unwrap());
    assert_eq!(record(&c, "pve-01").previous_serial, None);

    let before = snapshot(&c, "pve-01");
    let err = refused(session(&c, &s1_cert, &s1_key).await);
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = refused(renew(&c, "pve-01", &s1_cert, &s1_key).await);
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(snapshot(&c, "pve-01"), before);
}

/// `token create` without `--node`, then `enroll --name pve-01` elsewhere: refused; the
/// real pve-01 keeps its session and record, and the token stays unused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unbound_token_cannot_take_over_an_enrolled_node() {
    let c = Controller::start_in_process();
    let (cert, key) = c
        .enroll("pve-01", &c.token(Some("pve-01"), 600).await)
        .await
        .expect("enroll pve-01");
    let (tx, mut inbound) = session(&c, &cert, &key).await.expect("pve-01's session");
    let unbound = c.token(None, 600).await;

    let before = snapshot(&c, "pve-01");
    let err = refused(c.enroll("pve-01", &unbound).await);
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("already enrolled"), "{err:?}");
    assert_eq!(snapshot(&c, "pve-01"), before, "the refusal changed state");
    assert!(
        before
            .tokens
            .iter()
            .any(|t| t.node.is_none() && t.used_ms.is_none()),
        "the unbound token stays unused"
    );
    // The real pve-01 is still connected and served.
    assert!(c.server().is_online("pve-01"));
    heartbeat(&tx, &mut inbound)
        .await
        .expect("pve-01's session is still served");

    // The same token still enrolls a name not yet enrolled.
    c.enroll("pve-03", &unbound).await.expect("enroll pve-03");
    assert_eq!(last_audit(&c).action, "node.enroll");

    // A token created for pve-01 replaces it, audited as a replacement; the old
    // certificate and session are done.
    let old_serial = record(&c, "pve-01").cert_serial;
    let (new_cert, new_key) = c
        .enroll("pve-01", &c.token(Some("pve-01"), 600).await)
        .await
        .expect("replace pve-01");
    let audit = last_audit(&c);
    assert_eq!(audit.action, "node.replace");
    assert!(audit.detail.contains(&old_serial), "{audit:?}");
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match inbound.next().await {
                Some(Ok(_)) => continue,
                Some(Err(s)) => return Some(s.code()),
                None => return None,
            }
        }
    })
    .await
    .expect("the replaced node's session ends");
    assert_eq!(ended, Some(Code::PermissionDenied));
    let err = refused(session(&c, &cert, &key).await);
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let _session = session(&c, &new_cert, &new_key)
        .await
        .expect("the new pve-01");
}
