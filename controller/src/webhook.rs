//! Notifications: one JSON POST per rollout/shutdown event to the configured URL.
//! Plain `http://` only (put a local relay in front for HTTPS); a failed delivery is logged
//! and not retried: the audit log and the operation's event log remain the record.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);

/// POSTs `body` (JSON) to `url`; `Ok` on a 2xx answer.
pub async fn post(url: &str, body: String) -> Result<(), String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("bad URL {url:?}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("{url}: only http:// webhooks are supported"));
    }
    let host = uri
        .host()
        .ok_or_else(|| format!("{url}: no host"))?
        .to_string();
    let port = uri.port_u16().unwrap_or(80);
    let work = async {
        let stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("connect {host}:{port}: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = hyper::Request::post(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(hyper::header::HOST, format!("{host}:{port}"))
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let _ = resp.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("{url} answered {status}"))
        }
    };
    tokio::time::timeout(TIMEOUT, work)
        .await
        .map_err(|_| format!("{url}: no answer in {TIMEOUT:?}"))?
}

/// Posts one operation event (`{"operation", "time_ms", "event"}`) to `url` in the
/// background, when a webhook is configured. Shared by the rollout and shutdown drivers.
pub fn spawn_event(url: Option<&str>, operation: &str, time_ms: u64, event: &serde_json::Value) {
    let Some(url) = url else {
        return;
    };
    let body = serde_json::json!({
        "operation": operation,
        "time_ms": time_ms,
        "event": event,
    })
    .to_string();
    let url = url.to_owned();
    tokio::spawn(async move {
        if let Err(e) = post(&url, body).await {
            tracing::warn!(url = %url, error = %e, "webhook failed");
        }
    });
}
