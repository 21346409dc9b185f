//! fleetward's trust root: the cluster CA, certificate issuing, identities carried in
//! certificates, and the rustls configurations for mutual TLS.
//!
//! Invariants:
//! - This crate does no network I/O and touches no database; it only computes, and reads or
//!   writes the files it is explicitly given.
//! - Private keys are never logged: [`KeyPairPem`] and [`Ca`] redact key material in `Debug`,
//!   and key files are created mode `0600` from the start (never widened after the fact).
//! - A certificate's identity is the single `fleetward://<role>/<name>` URI SAN. When signing
//!   a CSR, everything the CSR asks for (CA flag, SANs, key usages, validity) is discarded and
//!   replaced by what the CA decides; only the CSR's (signature-checked) public key is kept.
//! - Revocation is not checked during the TLS handshake: the controller checks the peer's
//!   serial against its [`RevocationSet`] on every call.
//! - rustls always uses the ring provider passed explicitly; no process-wide default is needed.
#![forbid(unsafe_code)]

mod ca;
mod files;
mod identity;
mod info;
mod pin;
mod revocation;
mod tls;

#[cfg(test)]
mod tests;

pub use ca::{fingerprint_sha256, generate_key_and_csr, random_token, Ca, IssuedCert, KeyPairPem};
pub use files::{write_private_key, write_public};
pub use identity::{
    identity_from_der, not_after, not_before, scope_from_der, serial_hex, Identity, Role, Scope,
};
pub use info::{dns_and_ip_sans, subject};
pub use pin::{
    cert_pem_from_der, client_config_pinned_fingerprint, normalize_fingerprint, PinnedCaVerifier,
};
pub use revocation::RevocationSet;
pub use tls::{
    ca_der_from_pem, client_config, client_config_pinned_ca, server_config,
    server_config_client_optional,
};

use std::path::PathBuf;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("invalid name {0:?}: expected [a-z0-9][a-z0-9.-]{{0,62}}")]
    InvalidName(String),
    #[error("invalid role {0:?}: expected agent, operator or controller")]
    InvalidRole(String),
    #[error("invalid scope {0:?}: expected admin, operator, power or viewer")]
    InvalidScope(String),
    #[error("invalid identity: {0}")]
    InvalidIdentity(String),
    #[error("cannot parse certificate: {0}")]
    Certificate(String),
    #[error("PEM: {0}")]
    Pem(String),
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("validity {0:?} is out of range")]
    Validity(std::time::Duration),
    #[error("CA: {0}")]
    InvalidCa(String),
    #[error("refusing to overwrite existing CA file {0}")]
    CaExists(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid SHA-256 fingerprint {0:?}: expected 64 hex digits (colons allowed)")]
    InvalidFingerprint(String),
    #[error("secure random number generator failed")]
    Random,
}
