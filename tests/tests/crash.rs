//! SIGKILL the controller while it ingests reports and records audited actions; after a
//! restart no acknowledged report, node or audit entry is missing.

use fleetward_proto::api::{
    self, agent_message, agent_service_client::AgentServiceClient, controller_message, AgentMessage,
};
use fleetward_tests::{minimal_report, Controller};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_stream::StreamExt;

/// Send reports one after another until the connection dies; record every acknowledged
/// counter.
async fn reporter(
    ch: tonic::transport::Channel,
    name: String,
    acked: Arc<Mutex<HashMap<String, u64>>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let Ok(resp) = AgentServiceClient::new(ch)
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
    else {
        return;
    };
    let mut inbound = resp.into_inner();
    for counter in 1u64.. {
        let msg =
            agent_message::Report::new(counter, &minimal_report(&name, Some(counter.to_string())));
        if tx
            .send(AgentMessage::new(agent_message::Kind::Report(msg)))
            .await
            .is_err()
        {
            return;
        }
        match inbound.next().await {
            Some(Ok(api::ControllerMessage {
                kind: Some(controller_message::Kind::ReportAck(a)),
            })) if a.seq == counter => {
                acked.lock().unwrap().insert(name.clone(), counter);
            }
            _ => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    // Each node sends reports as fast as acks come back, far beyond a real agent's rate: the
    // per-node rate limit (`[ingest]`) is lifted for this test.
    let mut ctl = Controller::start_with_toml(&[], fleetward_tests::NO_RATE_LIMIT);
    let mut creds = Vec::new();
    for name in ["pve-01", "pve-02", "pve-03"] {
        let tok = ctl.token(Some(name), 600).await;
        let (cert, key) = ctl.enroll(name, &tok).await.expect("enroll");
        creds.push((name.to_string(), cert, key));
    }

    for round in 0..3 {
        let acked: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
        let mut tasks = Vec::new();
        for (name, cert, key) in &creds {
            let ch = ctl.channel(Some((cert, key))).await.expect("connect");
            tasks.push(tokio::spawn(reporter(ch, name.clone(), acked.clone())));
        }
        // Audited actions while reports stream in: token creations whose call returned.
        let tokens: Arc<Mutex<Vec<String>>> = Arc::default();
        let (mut op, tokens2) = (ctl.operator().await, tokens.clone());
        let auditor = tokio::spawn(async move {
            loop {
                match op
                    .create_token(api::CreateTokenRequest {
                        ttl_seconds: 60,
                        node_name: None,
                    })
                    .await
                {
                    Ok(r) => tokens2.lock().unwrap().push(r.into_inner().id),
                    Err(_) => return,
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(1500 + round * 700)).await;
        ctl.kill();
        for t in tasks {
            let _ = t.await;
        }
        let _ = auditor.await;
        let acked = acked.lock().unwrap().clone();
        let tokens = tokens.lock().unwrap().clone();
        assert_eq!(
            acked.len(),
            3,
            "every node had reports acknowledged: {acked:?}"
        );
        assert!(!tokens.is_empty(), "some audited actions were acknowledged");

        ctl.restart();
        let mut op = ctl.operator().await;
        let nodes = op
            .list_nodes(api::ListNodesRequest {})
            .await
            .unwrap()
            .into_inner()
            .nodes;
        assert_eq!(
            nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
            ["pve-01", "pve-02", "pve-03"]
        );
        for (name, counter) in &acked {
            let got = op
                .get_node(api::GetNodeRequest { name: name.clone() })
                .await
                .unwrap()
                .into_inner();
            let report =
                fleetward_proto::report_from_bytes(&got.report_json.expect("a stored report"))
                    .unwrap();
            let stored: u64 = report.facts.node.boot_id.unwrap().parse().unwrap();
            assert!(
                stored >= *counter,
                "{name}: report {counter} was acknowledged, latest stored is {stored}"
            );
        }
        let audit = op
            .list_audit(api::ListAuditRequest { limit: 100_000 })
            .await
            .unwrap()
            .into_inner()
            .entries;
        let listed = op
            .list_tokens(api::ListTokensRequest {})
            .await
            .unwrap()
            .into_inner()
            .tokens;
        for id in &tokens {
            assert!(
                audit
                    .iter()
                    .any(|e| e.action == "token.create" && e.target == *id),
                "audit entry for token {id} lost"
            );
            assert!(listed.iter().any(|t| t.id == *id), "token {id} lost");
        }
    }
}
