//! rustls configurations for mutual TLS, always with the ring provider passed explicitly.

use crate::PkiError;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;

pub(crate) const ALPN_H2: &[u8] = b"h2";

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn pem_err(e: rustls_pki_types::pem::Error) -> PkiError {
    PkiError::Pem(e.to_string())
}

/// The DER of the first certificate in `pem`.
pub fn ca_der_from_pem(pem: &str) -> Result<Vec<u8>, PkiError> {
    Ok(CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(pem_err)?
        .to_vec())
}

fn roots(ca_der: &[u8]) -> Result<Arc<RootCertStore>, PkiError> {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(ca_der.to_vec()))?;
    Ok(Arc::new(roots))
}

fn chain_and_key(
    cert_pem: &str,
    key_pem: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PkiError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err)?;
    if chain.is_empty() {
        return Err(PkiError::Pem("no certificate found".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(pem_err)?;
    Ok((chain, key))
}

/// The controller's server config: clients must present a certificate chaining to the CA
/// (any role; the controller authorizes per call by the identity in the certificate).
/// ALPN `h2`.
///
/// No CRL is configured: revocation is enforced per call by the controller, which looks up the
/// peer certificate's serial in its [`crate::RevocationSet`].
pub fn server_config(
    ca_der: &[u8],
    server_cert_chain_pem: &str,
    server_key_pem: &str,
) -> Result<ServerConfig, PkiError> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(roots(ca_der)?, provider.clone()).build()?;
    let (chain, key) = chain_and_key(server_cert_chain_pem, server_key_pem)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// Like [`server_config`], but a client may connect without a certificate (enrollment,
/// health checks); one it presents must still chain to the CA. The controller's server
/// config: its authorization layer requires a certificate for every call but `Enroll`.
pub fn server_config_client_optional(
    ca_der: &[u8],
    server_cert_chain_pem: &str,
    server_key_pem: &str,
) -> Result<ServerConfig, PkiError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca_der)?, provider.clone())
        .allow_unauthenticated()
        .build()?;
    let (chain, key) = chain_and_key(server_cert_chain_pem, server_key_pem)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// A client config presenting `client_cert_pem` and trusting only the CA. ALPN `h2`.
pub fn client_config(
    ca_der: &[u8],
    client_cert_pem: &str,
    client_key_pem: &str,
) -> Result<ClientConfig, PkiError> {
    let (chain, key) = chain_and_key(client_cert_pem, client_key_pem)?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca_der)?)
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// A client config without a client certificate that trusts only the CA (pinned, e.g. by
/// fingerprint, before enrollment). ALPN `h2`.
pub fn client_config_pinned_ca(ca_der: &[u8]) -> Result<ClientConfig, PkiError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca_der)?)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}
