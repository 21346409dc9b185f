//! `fleetward serve`: bind, serve the API over mutual TLS until a signal, drain, flush.

use crate::api::{AgentApi, OperatorApi, ShutdownApi};
use crate::config::Config;
use crate::paths::DataDir;
use crate::state::Controller;
use crate::store::Store;
use fleetward_pki::Ca;
use fleetward_proto::api::{
    agent_service_server::AgentServiceServer, operator_service_server::OperatorServiceServer,
    shutdown_service_server::ShutdownServiceServer,
};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::transport::Server;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("reading {path}: {source} (is {dir} a data directory made by `fleetward init`?)")]
    Read {
        path: String,
        dir: String,
        source: std::io::Error,
    },
    #[error("loading the CA: {0}")]
    Ca(#[from] fleetward_pki::PkiError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS or transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("the server's TLS configuration: {0}")]
    Tls(String),
    #[error("server reflection: {0}")]
    Reflection(String),
    #[error("{0} (fix the file, or remove `policy` from the configuration)")]
    Policy(String),
    #[error("metrics_listen: {0}")]
    Metrics(String),
    #[error("{path} is accessible by group or others (mode {mode:04o}); a private key must be readable by its owner only: run `chmod 600 {path}`")]
    KeyMode { path: String, mode: u32 },
    #[error("{0}; fix it in the configuration")]
    Lifetime(String),
}

/// Everything `serve` needs from the data dir, loaded before binding.
pub struct Loaded {
    pub controller: Arc<Controller>,
    tls: Arc<rustls::ServerConfig>,
    limits: crate::config::ConnectionLimits,
    max_message: usize,
    metrics: Option<std::net::SocketAddr>,
    /// The CA's and the server certificate's not-after (unix seconds), for the metrics.
    certificates: Vec<(String, i64)>,
}

fn unix_secs(t: std::time::SystemTime) -> i64 {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

pub fn load(dir: &DataDir, cfg: Config) -> Result<Loaded, ServeError> {
    let read = |p: std::path::PathBuf| {
        std::fs::read_to_string(&p).map_err(|source| ServeError::Read {
            path: p.display().to_string(),
            dir: dir.root().display().to_string(),
            source,
        })
    };
    for key in [dir.server_key(), dir.ca_dir().join("ca.key")] {
        check_private(&key).map_err(|e| match e {
            Ok(mode) => ServeError::KeyMode {
                path: key.display().to_string(),
                mode,
            },
            Err(source) => ServeError::Read {
                path: key.display().to_string(),
                dir: dir.root().display().to_string(),
                source,
            },
        })?;
    }
    let cert = read(dir.server_cert())?;
    let key = read(dir.server_key())?;
    let ca_pem = read(dir.ca_cert())?;
    let ca = Ca::load(&dir.ca_dir())?;
    let ca_not_after = fleetward_pki::not_after(ca.cert_der())?;
    let server_not_after = fleetward_pki::not_after(&fleetward_pki::ca_der_from_pem(&cert)?)?;
    let certificates = vec![
        ("ca".to_string(), unix_secs(ca_not_after)),
        ("server".to_string(), unix_secs(server_not_after)),
    ];
    let ca_remaining = ca_not_after
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    cfg.check_lifetimes(ca_remaining)
        .map_err(ServeError::Lifetime)?;
    let store = Store::open(dir.db())?;
    // Enrollment has no client certificate yet; every other call is refused without one.
    let ca_der = fleetward_pki::ca_der_from_pem(&ca_pem)?;
    let tls = fleetward_pki::server_config_client_optional(&ca_der, &cert, &key)
        .map_err(|e| ServeError::Tls(e.to_string()))?;
    let limits = cfg.connections.clone();
    let max_message = cfg.max_message_bytes;
    let metrics = match &cfg.metrics_listen {
        Some(addr) => Some(
            crate::metrics::check_listen(addr, cfg.metrics_allow_remote)
                .map_err(ServeError::Metrics)?,
        ),
        None => None,
    };
    let policy = match &cfg.policy {
        Some(path) => Some(crate::state::load_policy(path).map_err(ServeError::Policy)?),
        None => None,
    };
    let listen_ip = cfg
        .listen
        .parse::<std::net::SocketAddr>()
        .ok()
        .map(|a| a.ip());
    let controller = Controller::new(store, ca, cfg, policy)?;
    // The binary's edge: who the controller's host is (`host::find` decides the node).
    controller.set_host_identity(crate::host::lookup(listen_ip));
    crate::operators::adopt_operator_files(&controller, dir);
    crate::operators::spawn_local_renewal(&controller, dir.clone());
    Ok(Loaded {
        controller,
        tls: Arc::new(tls),
        limits,
        max_message,
        metrics,
        certificates,
    })
}

/// The address `serve` actually listens on, recorded in the data directory (`listen.addr`,
/// written atomically after binding) for clients that find the controller by `--data-dir`:
/// a `--listen` override or port 0 makes it differ from the configuration's `listen`.
/// Removed when dropped, i.e. when `serve` exits.
pub struct ListenRecord(std::path::PathBuf);

impl ListenRecord {
    pub fn write(dir: &DataDir, addr: std::net::SocketAddr) -> std::io::Result<Self> {
        let path = dir.listen_addr();
        fleetward_pki::write_public(&path, &format!("{addr}\n"))?;
        Ok(ListenRecord(path))
    }
}

impl Drop for ListenRecord {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0) {
            tracing::warn!(path = %self.0.display(), error = %e, "cannot remove the listen address record");
        }
    }
}

/// A private key file is neither readable nor writable by group or others:
/// `Err(Ok(mode))` if it is, `Err(Err(_))` if it cannot be inspected.
fn check_private(path: &std::path::Path) -> Result<(), Result<u32, std::io::Error>> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).map_err(Err)?.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        Ok(())
    } else {
        Err(Ok(mode))
    }
}

pub async fn bind(addr: &str) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: addr.to_string(),
            source,
        })
}

/// Serve until `shutdown` resolves; then close agent sessions, wait for in-flight calls
/// (bounded), and flush the database.
pub async fn run(
    loaded: Loaded,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let Loaded {
        controller,
        tls,
        limits,
        max_message,
        metrics,
        certificates,
    } = loaded;
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    // The rollout driver resumes an unfinished rollout from the store before serving.
    let rollouts = crate::orchestrate::rollout::spawn(controller.clone());
    let refreshes = crate::orchestrate::refresh::spawn(controller.clone());
    // So does the shutdown driver (a `Down` shutdown waits for `fleetward startup`).
    let shutdowns = crate::orchestrate::shutdown::spawn(controller.clone());
    if let Some(addr) = metrics {
        let listener = bind(&addr.to_string()).await?;
        tracing::info!(%addr, "metrics listening (plain HTTP, GET /metrics)");
        let ctl = controller.clone();
        let mut stop = stopping.clone();
        tokio::spawn(async move {
            let snapshot = Arc::new(move || {
                let mut snapshot = ctl.metrics_snapshot();
                snapshot.certificates = certificates.clone();
                snapshot
            });
            let shutdown = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = crate::metrics::serve(listener, snapshot, shutdown).await {
                tracing::error!(error = %e, "metrics endpoint failed");
            }
        });
    }
    // SIGHUP reloads the policy; a bad file keeps the old one and says why.
    if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        let ctl = controller.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                if let Err(e) = ctl.reload_policy() {
                    tracing::error!(error = %e, "policy reload failed; the previous policy stays in force");
                }
            }
        });
    }
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<AgentServiceServer<AgentApi>>().await;
    health
        .set_serving::<OperatorServiceServer<OperatorApi>>()
        .await;
    health
        .set_serving::<ShutdownServiceServer<ShutdownApi>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(fleetward_proto::api::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    // Each API behind the authorization layer (the only way `api` builds them).
    let agent = AgentApi::server(controller.clone(), max_message);
    let shutdown_api =
        ShutdownApi::server(controller.clone(), shutdowns, rollouts.clone(), max_message);
    let operator = OperatorApi::server(controller.clone(), rollouts, refreshes, max_message);

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let ctl = controller.clone();
    let ms = Duration::from_millis;
    let server = Server::builder()
        .http2_keepalive_interval(Some(ms(limits.http2_keepalive_interval_ms)))
        .http2_keepalive_timeout(Some(ms(limits.http2_keepalive_timeout_ms)))
        .max_concurrent_streams(Some(limits.max_concurrent_streams))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(agent)
        .add_service(operator)
        .add_service(shutdown_api)
        // The accept loop and TLS handshakes with their limits (`listen`); it also turns
        // Nagle off: small acks must not wait for a delayed ACK (40 ms stalls otherwise).
        .serve_with_incoming_shutdown(crate::listen::incoming(listener, tls, limits), async move {
            let _ = stop_rx.await;
        });
    tokio::pin!(server);
    // Bound (by the caller) and about to accept: systemd's `Type=notify` start is done.
    crate::notify::notify("READY=1\nSTATUS=serving");
    tokio::select! {
        r = &mut server => r?,
        () = shutdown => {
            crate::notify::notify("STOPPING=1\nSTATUS=draining: closing agent sessions");
            tracing::info!(sessions = ctl.session_count(), "shutting down: closing agent sessions");
            ctl.close_all_sessions("controller shutting down");
            let _ = stopping_tx.send(true);
            let _ = stop_tx.send(());
            if tokio::time::timeout(Duration::from_secs(10), &mut server).await.is_err() {
                tracing::warn!("in-flight calls did not finish within 10 s");
            }
        }
    }
    controller.store().flush()?;
    tracing::info!("database flushed; bye");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn load_err(dir: &DataDir, cfg: Config) -> String {
        match load(dir, cfg) {
            Ok(_) => panic!("load accepted it"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn serve_refuses_readable_keys_and_nonsensical_lifetimes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("data"));
        crate::init::init(&dir, "lab", None, &[]).unwrap();
        let cfg = || Config::new("lab", None);
        for key in [dir.ca_dir().join("ca.key"), dir.server_key()] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
            let e = load_err(&dir, cfg());
            assert!(
                e.contains(&format!("run `chmod 600 {}`", key.display())) && e.contains("0644"),
                "{e}"
            );
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let mut c = cfg();
        c.agent_cert_secs = 0;
        assert!(load_err(&dir, c).contains("agent_cert_secs = 0"));
        let mut c = cfg();
        c.operator_cert_secs = 0;
        assert!(load_err(&dir, c).contains("operator_cert_secs = 0"));
        let mut c = cfg();
        c.agent_cert_secs = 20 * 365 * 86_400;
        assert!(load_err(&dir, c).contains("remaining validity"));
        assert!(load(&dir, cfg()).is_ok());
    }
}
