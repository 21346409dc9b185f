//! The negative matrix: every way a caller can be wrong is refused, changes no state, and
//! the controller keeps serving the others.

use fleetward_pki::Role;
use fleetward_proto::api::{
    self, agent_message, agent_service_client::AgentServiceClient, controller_message,
    operator_service_client::OperatorServiceClient, AgentMessage,
};
use fleetward_proto::Report;
use fleetward_tests::{minimal_report, Controller};
use std::io::Write;
use std::time::Duration;
use tokio_stream::StreamExt;
use tonic::Code;

/// What an operator can see of the controller's state; compared before and after each
/// refused call.
async fn state(c: &Controller) -> (Vec<api::Node>, Vec<api::TokenInfo>, usize) {
    let mut op = c.operator().await;
    let nodes = op
        .list_nodes(api::ListNodesRequest {})
        .await
        .unwrap()
        .into_inner()
        .nodes;
    let tokens = op
        .list_tokens(api::ListTokensRequest {})
        .await
        .unwrap()
        .into_inner()
        .tokens;
    let audit = op
        .list_audit(api::ListAuditRequest { limit: 1000 })
        .await
        .unwrap()
        .into_inner()
        .entries
        .len();
    let nodes = nodes
        .into_iter()
        .map(|mut n| {
            n.last_seen_unix_ms = None; // heartbeats of the healthy agent move it
            n.session_state = 0;
            n
        })
        .collect();
    (nodes, tokens, audit)
}

/// Send one report on a fresh session and return the first controller answer (or error).
async fn send_report(
    c: &Controller,
    cert: &str,
    key: &str,
    report: &Report,
    seq: u64,
) -> Result<u64, tonic::Status> {
    let ch = c
        .channel(Some((cert, key)))
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut client = AgentServiceClient::new(ch).max_encoding_message_size(64 << 20);
    let msgs = vec![AgentMessage::new(agent_message::Kind::Report(
        agent_message::Report::new(seq, report),
    ))];
    let mut inbound = client
        .session(tokio_stream::iter(msgs).chain(tokio_stream::pending()))
        .await?
        .into_inner();
    match tokio::time::timeout(Duration::from_secs(10), inbound.next()).await {
        Ok(Some(Ok(m))) => match m.kind {
            Some(controller_message::Kind::ReportAck(a)) => Ok(a.seq),
            other => Err(tonic::Status::unknown(format!("unexpected {other:?}"))),
        },
        Ok(Some(Err(s))) => Err(s),
        Ok(None) => Err(tonic::Status::unknown("stream ended")),
        Err(_) => Err(tonic::Status::deadline_exceeded("no answer")),
    }
}

fn code_of<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> Code {
    r.expect_err("must be refused").code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_matrix() {
    let c = Controller::start();

    // A healthy agent that must keep being served throughout.
    let tok = c.token(Some("pve-01"), 600).await;
    let (good_cert, good_key) = c.enroll("pve-01", &tok).await.expect("enroll pve-01");
    assert_eq!(
        send_report(
            &c,
            &good_cert,
            &good_key,
            &minimal_report("pve-01", None),
            1
        )
        .await
        .unwrap(),
        1
    );
    let (b_cert, b_key) = c
        .enroll("pve-02", &c.token(None, 600).await)
        .await
        .expect("enroll pve-02");
    assert_eq!(
        send_report(&c, &b_cert, &b_key, &minimal_report("pve-02", None), 1)
            .await
            .unwrap(),
        1
    );

    let short = c.token(None, 1).await; // expires before case 6 uses it
    let before = state(&c).await;
    let unchanged =
        || async { assert_eq!(state(&c).await, before, "a refused call changed state") };
    let still_serving = || async {
        assert_eq!(
            send_report(
                &c,
                &good_cert,
                &good_key,
                &minimal_report("pve-01", None),
                7
            )
            .await
            .unwrap(),
            7
        );
    };

    // 1. No client certificate: operator and agent calls are refused.
    let anon = c.channel(None).await.unwrap();
    let r = OperatorServiceClient::new(anon.clone())
        .list_nodes(api::ListNodesRequest {})
        .await;
    assert_eq!(code_of(r), Code::Unauthenticated);
    let r = AgentServiceClient::new(anon)
        .renew(api::RenewRequest {
            csr_pem: String::new(),
        })
        .await;
    assert_eq!(code_of(r), Code::Unauthenticated);
    unchanged().await;

    // 2. A certificate from another CA: the TLS handshake fails, no call gets through.
    let foreign = fleetward_pki::Ca::generate("evil").unwrap();
    let (fc, fk) = foreign
        .issue(
            &fleetward_pki::Identity::new(Role::Operator, "admin").unwrap(),
            Duration::from_secs(3600),
            &[],
            &[],
        )
        .unwrap();
    match c.channel(Some((&fc.pem, fk.pem()))).await {
        Err(_) => {}
        Ok(ch) => {
            let r = OperatorServiceClient::new(ch)
                .list_nodes(api::ListNodesRequest {})
                .await;
            assert!(r.is_err(), "a foreign CA's certificate was accepted");
        }
    }
    unchanged().await;

    // 3. An expired certificate (ours, valid for one second).
    let (ec, ek) = c.mint(Role::Operator, "late", Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    match c.channel(Some((&ec, &ek))).await {
        Err(_) => {}
        Ok(ch) => {
            let r = OperatorServiceClient::new(ch)
                .list_nodes(api::ListNodesRequest {})
                .await;
            assert!(r.is_err(), "an expired certificate was accepted");
        }
    }
    unchanged().await;

    // 4. An agent certificate calling an operator RPC.
    let ch = c.channel(Some((&good_cert, &good_key))).await.unwrap();
    let r = OperatorServiceClient::new(ch)
        .create_token(api::CreateTokenRequest {
            ttl_seconds: 60,
            node_name: None,
        })
        .await;
    assert_eq!(code_of(r), Code::PermissionDenied);
    // ... and an operator certificate calling an agent RPC.
    let (oc, ok) = c.mint(Role::Operator, "admin", Duration::from_secs(3600));
    let ch = c.channel(Some((&oc, &ok))).await.unwrap();
    let r = AgentServiceClient::new(ch)
        .renew(api::RenewRequest {
            csr_pem: String::new(),
        })
        .await;
    assert_eq!(code_of(r), Code::PermissionDenied);

    // 5. Node A's certificate sending a report for node B.
    let r = send_report(
        &c,
        &good_cert,
        &good_key,
        &minimal_report("pve-02", None),
        2,
    )
    .await;
    assert_eq!(code_of(r), Code::PermissionDenied);
    unchanged().await;

    // 6. A reused token, an expired token, an unknown token.
    assert_eq!(
        code_of(c.enroll("pve-01", &tok).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code_of(c.enroll("pve-09", &short).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code_of(c.enroll("pve-09", "0000").await),
        Code::PermissionDenied
    );
    unchanged().await;

    // 7. Garbage bytes, and a TLS client hello that never speaks gRPC.
    for junk in [
        &b"\x16\x03\x01\x02\x00garbage garbage garbage"[..],
        b"GET / HTTP/1.1\r\n\r\n",
        &[0u8; 4096],
    ] {
        let mut s = std::net::TcpStream::connect(&c.addr).unwrap();
        let _ = s.write_all(junk);
    }
    // A complete TLS + HTTP/2 connection that never makes a call.
    let idle = c.channel(None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(idle);
    still_serving().await;
    unchanged().await;

    // 8. A message over the size limit (4 MiB by default).
    let mut big = minimal_report("pve-01", None);
    big.facts.node.kernel_cmdline = Some("x".repeat(5 << 20));
    let r = send_report(&c, &good_cert, &good_key, &big, 3).await;
    let code = code_of(r);
    assert!(
        matches!(code, Code::OutOfRange | Code::ResourceExhausted),
        "oversized report: {code:?}"
    );

    // 9. A revoked certificate: refused at once, its open session closed.
    let ch = c.channel(Some((&b_cert, &b_key))).await.unwrap();
    let mut client = AgentServiceClient::new(ch);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(AgentMessage::new(agent_message::Kind::Heartbeat(
        agent_message::Heartbeat { seq: 1 },
    )))
    .await
    .unwrap();
    let mut inbound = client
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        inbound.next().await,
        Some(Ok(api::ControllerMessage {
            kind: Some(controller_message::Kind::HeartbeatAck(_))
        }))
    ));
    c.operator()
        .await
        .revoke_node(api::RevokeNodeRequest {
            name: "pve-02".into(),
        })
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(m) = inbound.next().await {
            if m.is_err() {
                return true;
            }
        }
        true
    })
    .await;
    assert_eq!(
        ended,
        Ok(true),
        "the revoked node's session was not cut within one second"
    );
    let r = send_report(&c, &b_cert, &b_key, &minimal_report("pve-02", None), 9).await;
    assert_eq!(code_of(r), Code::PermissionDenied);

    still_serving().await;
    // Only the revocation changed anything: pve-02 revoked, one audit entry more.
    let after = state(&c).await;
    let mut expected = before.clone();
    expected.0[1].revoked = true;
    expected.2 += 1;
    assert_eq!(after, expected);
    drop(tx);
}
