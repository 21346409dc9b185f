//! The agent's connection to the controller: `enroll` (once) and `run` (the long-lived
//! session), over mutual-TLS gRPC (`fleetward.v1.AgentService`).
//!
//! - [`state`]: the state directory (key, certificates, `agent.toml`, seen command ids).
//! - [`enroll`]: first contact, trusting the controller only by the pinned CA fingerprint.
//! - [`run`]: one session at a time: reports, heartbeats, commands, renewal, reconnects.
//! - [`backoff`]: jittered exponential reconnect delays.
//! - [`notify`]: readiness and status for systemd (`Type=notify`).

pub mod backoff;
pub mod enroll;
pub mod notify;
pub mod run;
pub mod state;

use fleetward_pki::PkiError;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Uri};

/// How long a TCP connect, a TLS handshake or a unary call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything that can go wrong talking to the controller or keeping the agent's state.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("invalid controller URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("{0} already holds an agent identity; pass --force to replace it")]
    AlreadyEnrolled(PathBuf),
    #[error("{0} holds no agent identity; run `fleetward-agent enroll` first")]
    NotEnrolled(PathBuf),
    #[error("no node name: no hostname under {0} (pass --name)")]
    NoNodeName(PathBuf),
    #[error("the controller's CA fingerprint is {presented}, not the pinned {pinned}: refusing to enroll")]
    PinMismatch { presented: String, pinned: String },
    #[error("connecting to {url}: {message}")]
    Connect { url: String, message: String },
    #[error("{call}: {} ({:?})", .status.message(), .status.code())]
    Rpc {
        call: &'static str,
        status: Box<tonic::Status>,
    },
    #[error("{0}")]
    Protocol(String),
    /// The options ask for something the agent refuses to do (e.g. simulate onto `/`).
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Executor(#[from] crate::executor::ExecutorError),
}

impl Error {
    /// The controller refused us for who we are (revoked or unknown certificate).
    pub fn is_auth(&self) -> bool {
        matches!(self, Error::Rpc { status, .. }
            if matches!(status.code(), tonic::Code::PermissionDenied | tonic::Code::Unauthenticated))
    }

    fn rpc(call: &'static str) -> impl FnOnce(tonic::Status) -> Error {
        move |status| Error::Rpc {
            call,
            status: Box::new(status),
        }
    }
}

/// `https://host[:port]` (port 443 by default); no path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerUrl {
    url: String,
    host: String,
    port: u16,
}

impl ControllerUrl {
    pub fn as_str(&self) -> &str {
        &self.url
    }
    /// Host name or IP address (IPv6 without brackets): the name the certificate must match.
    pub fn host(&self) -> &str {
        &self.host
    }
    pub fn port(&self) -> u16 {
        self.port
    }

    fn connect_error(&self, message: impl ToString) -> Error {
        Error::Connect {
            url: self.url.clone(),
            message: message.to_string(),
        }
    }

    /// A connect error with its whole source chain (tonic's own says only "transport error").
    fn transport_error(&self, e: &dyn std::error::Error) -> Error {
        let mut message = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            message = format!("{message}: {s}");
            source = s.source();
        }
        self.connect_error(message)
    }

    /// A gRPC endpoint trusting only `ca_pem`, presenting `client` (cert PEM, key PEM) if given.
    fn endpoint(&self, ca_pem: &str, client: Option<(&str, &str)>) -> Result<Endpoint, Error> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca_pem))
            .domain_name(self.host.clone());
        if let Some((cert, key)) = client {
            tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        Ok(Endpoint::from_shared(self.url.clone())
            .and_then(|e| e.tls_config(tls))
            .map_err(|e| self.connect_error(e))?
            .connect_timeout(CALL_TIMEOUT)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20)))
    }
}

impl FromStr for ControllerUrl {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let err = |reason: &str| Error::Url {
            url: s.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = s.parse().map_err(|_| err("not a URL"))?;
        if uri.scheme_str() != Some("https") {
            return Err(err("expected https://HOST[:PORT]"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(err("expected no path"));
        }
        let host = uri.host().unwrap_or_default();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(err("no host"));
        }
        let port = uri.port_u16().unwrap_or(443);
        Ok(ControllerUrl {
            url: format!("https://{}:{port}", uri.host().unwrap_or(host)),
            host: host.to_owned(),
            port,
        })
    }
}

impl std::fmt::Display for ControllerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_urls_parse() {
        let u: ControllerUrl = "https://127.0.0.1:7443".parse().unwrap();
        assert_eq!(
            (u.host(), u.port(), u.as_str()),
            ("127.0.0.1", 7443, "https://127.0.0.1:7443")
        );
        let u: ControllerUrl = "https://ctl.lab/".parse().unwrap();
        assert_eq!((u.host(), u.port()), ("ctl.lab", 443));
        let u: ControllerUrl = "https://[::1]:7443".parse().unwrap();
        assert_eq!((u.host(), u.as_str()), ("::1", "https://[::1]:7443"));
        for bad in [
            "",
            "ctl.lab",
            "http://ctl.lab",
            "https://ctl.lab/x",
            "https://:7443",
            "https://a b",
        ] {
            assert!(bad.parse::<ControllerUrl>().is_err(), "{bad}");
        }
    }
}
