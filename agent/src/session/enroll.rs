//! `fleetward-agent enroll`: the key pair is made here and never leaves the node; the
//! controller is trusted only if it presents the CA whose fingerprint came with the token.
//!
//! 1. A bare TLS handshake with [`fleetward_pki::PinnedCaVerifier`]: nothing is sent if the
//!    presented chain lacks the pinned CA (or the leaf does not verify against it).
//! 2. A gRPC channel trusting only that CA sends `Enroll{token, node_name, csr_pem}`.
//! 3. The answer is checked (same CA, our identity, our key) and only then written.

use super::state::{AgentConfig, StateDir};
use super::{ControllerUrl, Error, CALL_TIMEOUT};
use crate::root::Root;
use fleetward_pki::{self as pki, Identity, Role};
use fleetward_proto::api::agent_service_client::AgentServiceClient;
use fleetward_proto::api::EnrollRequest;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

#[derive(Debug, Clone)]
pub struct EnrollOptions {
    pub controller: String,
    pub token: String,
    /// SHA-256 of the CA certificate (hex, any case, colons allowed).
    pub ca_sha256: String,
    pub state_dir: PathBuf,
    /// Node name; default: the hostname of the node under `root`.
    pub name: Option<String>,
    pub root: PathBuf,
    /// Replace an existing identity.
    pub force: bool,
}

/// A successful enrollment.
#[derive(Debug, Clone)]
pub struct Enrolled {
    pub node_name: String,
    pub ca_sha256: String,
    pub not_after: SystemTime,
}

/// The node name: `--name`, else the hostname as `inspect` reads it (first label,
/// lower-cased: the controller matches it against the reports' hostname).
pub fn node_name(name: Option<&str>, root: &Root) -> Result<Identity, Error> {
    let name = match name {
        Some(n) => n.to_owned(),
        None => crate::collect::collect(root)
            .node
            .hostname
            .and_then(|h| h.split('.').next().map(str::to_ascii_lowercase))
            .filter(|h| !h.is_empty())
            .ok_or_else(|| Error::NoNodeName(root.base().to_owned()))?,
    };
    Ok(Identity::new(Role::Agent, name)?)
}

/// Step 1: handshake with the controller and return the DER of the pinned CA it presented.
pub async fn fetch_pinned_ca(url: &ControllerUrl, pin: &str) -> Result<Vec<u8>, Error> {
    let (config, verifier) = pki::client_config_pinned_fingerprint(pin)?;
    let name = ServerName::try_from(url.host().to_owned()).map_err(|e| url.connect_error(e))?;
    let handshake = async {
        let tcp = TcpStream::connect((url.host(), url.port())).await?;
        let mut tls = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?;
        let _ = tls.shutdown().await;
        Ok::<_, std::io::Error>(())
    };
    let result = timeout(CALL_TIMEOUT, handshake).await;
    if let Some(ca) = verifier.matched_ca() {
        return Ok(ca);
    }
    let chain = verifier.presented_chain();
    match result {
        Err(_) => Err(url.connect_error("timed out")),
        // A chain without the pinned CA in it is a mismatch; a chain with it whose leaf does
        // not verify (wrong name, expired) is reported as the handshake error below.
        _ if !chain.is_empty() && !chain.iter().any(|fp| fp == verifier.pin()) => {
            Err(Error::PinMismatch {
                presented: match chain.as_slice() {
                    [_leaf] => "unknown (it sent no CA certificate)".to_owned(),
                    [.., ca] => ca.clone(),
                    [] => String::new(),
                },
                pinned: verifier.pin().to_owned(),
            })
        }
        Ok(Err(e)) => Err(url.connect_error(format!("TLS handshake: {e}"))),
        Ok(Ok(())) => Err(url.connect_error("the handshake ended without verifying the CA")),
    }
}

/// The state directory exists (created 0700 if missing) and a file can be written into it
/// and renamed there, as saving the enrollment will.
fn check_state_dir(dir: &Path) -> Result<(), Error> {
    let err = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io { path, source }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err(dir))?;
    let probe = dir.join(".enroll-probe");
    pki::write_public(&probe, "").map_err(err(&probe))?;
    std::fs::remove_file(&probe).map_err(err(&probe))
}

/// Enrolls this node; see the module docs.
pub async fn enroll(opts: &EnrollOptions) -> Result<Enrolled, Error> {
    let url: ControllerUrl = opts.controller.parse()?;
    let pin = pki::normalize_fingerprint(&opts.ca_sha256)?;
    let state = StateDir::new(&opts.state_dir);
    if state.has_identity() && !opts.force {
        return Err(Error::AlreadyEnrolled(opts.state_dir.clone()));
    }
    let identity = node_name(opts.name.as_deref(), &Root::new(&opts.root))?;
    // Everything local is checked before the controller is contacted: once it accepts the
    // token, the token is used up, so a failure after that point would waste it.
    check_state_dir(&opts.state_dir)?;
    let (key, csr_pem) = pki::generate_key_and_csr(&identity)?;

    let ca_der = fetch_pinned_ca(&url, &pin).await?;
    let ca_pem = pki::cert_pem_from_der(&ca_der);

    let request = EnrollRequest {
        token: opts.token.clone(),
        node_name: identity.name.clone(),
        csr_pem,
    };
    let call = async {
        let channel = url
            .endpoint(&ca_pem, None)?
            .connect()
            .await
            .map_err(|e| url.transport_error(&e))?;
        let mut client = AgentServiceClient::new(channel);
        client.enroll(request).await.map_err(Error::rpc("Enroll"))
    };
    let resp = timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| url.connect_error("Enroll timed out"))??
        .into_inner();

    if pki::ca_der_from_pem(&resp.ca_pem)? != ca_der {
        return Err(Error::Protocol(
            "the controller returned a different CA than the pinned one it presented".into(),
        ));
    }
    let cert_der = pki::ca_der_from_pem(&resp.cert_pem)?;
    let got = pki::identity_from_der(&cert_der)?;
    if got != identity {
        return Err(Error::Protocol(format!(
            "the controller issued a certificate for {got}, not {identity}"
        )));
    }
    // Fails unless the certificate is for our key.
    pki::client_config(&ca_der, &resp.cert_pem, key.pem())?;

    let config = AgentConfig {
        controller: url.to_string(),
        node_name: identity.name.clone(),
    };
    state.save_enrollment(&config, &key, &resp.cert_pem, &ca_pem)?;
    Ok(Enrolled {
        node_name: identity.name,
        ca_sha256: pin,
        not_after: pki::not_after(&cert_der)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetward_pki::Ca;
    use std::time::Duration;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::{self, ServerConfig};

    /// A TLS server on 127.0.0.1:0 presenting `[leaf, CA]`; it counts application bytes
    /// received (there must be none).
    async fn server(ca: &Ca) -> (ControllerUrl, tokio::task::JoinHandle<usize>) {
        let ctl = Identity::new(Role::Controller, "ctl").unwrap();
        let ip = "127.0.0.1".parse().unwrap();
        let (leaf, key) = ca
            .issue(&ctl, Duration::from_secs(3600), &[], &[ip])
            .unwrap();
        let chain = vec![
            CertificateDer::from(leaf.der),
            CertificateDer::from(ca.cert_der().to_vec()),
        ];
        let key = PrivateKeyDer::from_pem_slice(key.pem().as_bytes()).unwrap();
        let config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                return 0;
            };
            let mut buf = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut tls, &mut buf).await;
            buf.len()
        });
        let url = format!("https://127.0.0.1:{port}").parse().unwrap();
        (url, task)
    }

    #[tokio::test]
    async fn pinned_handshake_over_loopback() {
        let (ca, other) = (Ca::generate("lab").unwrap(), Ca::generate("evil").unwrap());

        let (url, task) = server(&ca).await;
        let got = fetch_pinned_ca(&url, &ca.fingerprint_sha256().to_uppercase()).await;
        assert_eq!(got.unwrap(), ca.cert_der());
        assert_eq!(task.await.unwrap(), 0);

        let (url, task) = server(&ca).await;
        let err = fetch_pinned_ca(&url, &other.fingerprint_sha256())
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::PinMismatch { .. }), "{msg}");
        assert_eq!(
            msg,
            format!(
                "the controller's CA fingerprint is {}, not the pinned {}: refusing to enroll",
                ca.fingerprint_sha256(),
                other.fingerprint_sha256()
            )
        );
        assert_eq!(task.await.unwrap(), 0, "nothing was sent");
    }

    #[tokio::test]
    async fn enroll_refuses_before_any_network_io() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("agent.key"), "x").unwrap();
        let mut opts = EnrollOptions {
            controller: "https://127.0.0.1:1".into(),
            token: "t".into(),
            ca_sha256: "ab".repeat(32),
            state_dir: dir.path().to_owned(),
            name: Some("pve1".into()),
            root: "/".into(),
            force: false,
        };
        assert!(matches!(
            enroll(&opts).await,
            Err(Error::AlreadyEnrolled(_))
        ));
        opts.ca_sha256 = "nope".into();
        assert!(matches!(enroll(&opts).await, Err(Error::Pki(_))));
        opts.ca_sha256 = "ab".repeat(32);
        opts.force = true;
        opts.name = Some("Not A Name".into());
        assert!(matches!(enroll(&opts).await, Err(Error::Pki(_))));
    }

    #[tokio::test]
    async fn enroll_checks_the_state_dir_before_contacting_the_controller() {
        // A controller that would accept the token: any connection to it is a failure.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let not_a_dir = dir.path().join("state");
        std::fs::write(&not_a_dir, "a file, not a directory").unwrap();
        let opts = EnrollOptions {
            controller: format!("https://127.0.0.1:{port}"),
            token: "t".into(),
            ca_sha256: "ab".repeat(32),
            state_dir: not_a_dir.clone(),
            name: Some("pve1".into()),
            root: "/".into(),
            force: false,
        };
        let err = enroll(&opts).await.unwrap_err();
        assert!(
            matches!(&err, Error::Io { path, .. } if path == &not_a_dir),
            "{err}"
        );
        let accepted = timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(accepted.is_err(), "enroll connected to the controller");

        // A usable directory is created 0700 and left without the probe.
        let fresh = dir.path().join("new/state");
        check_state_dir(&fresh).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&fresh).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(std::fs::read_dir(&fresh).unwrap().count(), 0);
    }

    #[test]
    fn node_name_defaults_to_the_roots_hostname() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        assert!(matches!(node_name(None, &root), Err(Error::NoNodeName(_))));
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/hostname"), "PVE7.lab.example\n").unwrap();
        assert_eq!(node_name(None, &root).unwrap().name, "pve7");
        assert_eq!(node_name(Some("pve2"), &root).unwrap().name, "pve2");
    }
}
