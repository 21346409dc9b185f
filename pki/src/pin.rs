//! Pinning the CA by fingerprint, for the agent's first contact (enrollment).
//!
//! Before enrolling, the agent knows only the CA's SHA-256 fingerprint (it came with the
//! token). [`PinnedCaVerifier`] accepts the controller only if a certificate in the chain it
//! presents has exactly that fingerprint, is a CA, and the leaf verifies against it as the
//! sole root (hostname, validity, serverAuth: the ordinary WebPKI checks). Afterwards
//! [`PinnedCaVerifier::matched_ca`] hands back that CA, so the caller can trust it from then on.

use crate::identity::is_ca;
use crate::tls::{provider, ALPN_H2};
use crate::{fingerprint_sha256, PkiError};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::sync::{Arc, Mutex, PoisonError};

/// `pin` as 64 lower-case hex digits; accepts upper case and `:` separators.
pub fn normalize_fingerprint(pin: &str) -> Result<String, PkiError> {
    let hex: String = pin
        .trim()
        .chars()
        .filter(|&c| c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex)
    } else {
        Err(PkiError::InvalidFingerprint(pin.to_owned()))
    }
}

/// What the verifier saw during the last handshake.
#[derive(Debug, Default, Clone)]
struct Seen {
    /// SHA-256 fingerprints of the presented chain, leaf first.
    chain: Vec<String>,
    /// The certificate matching the pin, once the leaf verified against it.
    matched: Option<Vec<u8>>,
}

/// A server certificate verifier that trusts only the CA with the pinned fingerprint.
#[derive(Debug)]
pub struct PinnedCaVerifier {
    pin: String,
    provider: Arc<CryptoProvider>,
    seen: Mutex<Seen>,
}

impl PinnedCaVerifier {
    /// `pin` is a SHA-256 fingerprint (see [`normalize_fingerprint`]).
    pub fn new(pin: &str) -> Result<Self, PkiError> {
        Ok(PinnedCaVerifier {
            pin: normalize_fingerprint(pin)?,
            provider: provider(),
            seen: Mutex::new(Seen::default()),
        })
    }

    /// The pinned fingerprint, normalized.
    pub fn pin(&self) -> &str {
        &self.pin
    }

    /// The DER of the pinned CA, if the last handshake presented it and the leaf verified.
    pub fn matched_ca(&self) -> Option<Vec<u8>> {
        self.seen().matched
    }

    /// Fingerprints of the chain the server presented in the last handshake, leaf first
    /// (empty before any handshake).
    pub fn presented_chain(&self) -> Vec<String> {
        self.seen().chain
    }

    fn seen(&self) -> Seen {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn record(&self, seen: Seen) {
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) = seen;
    }
}

fn rejected() -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain: Vec<&CertificateDer<'_>> =
            std::iter::once(end_entity).chain(intermediates).collect();
        let mut seen = Seen {
            chain: chain.iter().map(|c| fingerprint_sha256(c)).collect(),
            matched: None,
        };
        let ca = chain
            .iter()
            .zip(&seen.chain)
            .find(|(_, fp)| **fp == self.pin)
            .map(|(c, _)| *c)
            .filter(|c| is_ca(c).unwrap_or(false));
        let Some(ca) = ca else {
            self.record(seen);
            return Err(rejected());
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let webpki =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        let verified =
            webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now);
        if verified.is_ok() {
            seen.matched = Some(ca.to_vec());
        }
        self.record(seen);
        verified
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client config (no client certificate, ALPN `h2`) that trusts only the CA whose SHA-256
/// fingerprint is `pin`, and the verifier to ask afterwards what was presented and matched.
pub fn client_config_pinned_fingerprint(
    pin: &str,
) -> Result<(ClientConfig, Arc<PinnedCaVerifier>), PkiError> {
    let verifier = Arc::new(PinnedCaVerifier::new(pin)?);
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok((config, verifier))
}

/// A certificate's DER as PEM (`-----BEGIN CERTIFICATE-----`, base64 in 64-column lines).
pub fn cert_pem_from_der(der: &[u8]) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = Vec::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            b64.push(if i <= chunk.len() {
                B64[(n >> (18 - 6 * i)) as usize & 63]
            } else {
                b'='
            });
        }
    }
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ca_der_from_pem, Ca, Identity, Role};
    use rustls::{ClientConnection, Connection, ServerConfig, ServerConnection};
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::PrivateKeyDer;
    use std::time::Duration;

    /// A CA and a server config whose chain is `[leaf, CA]` (or `[leaf]`), no client auth.
    fn server(ca: &Ca, signer: &Ca, send_ca: bool) -> Arc<ServerConfig> {
        let ctl = Identity::new(Role::Controller, "ctl").unwrap();
        let ip = "127.0.0.1".parse().unwrap();
        let (leaf, key) = signer
            .issue(&ctl, Duration::from_secs(3600), &[], &[ip])
            .unwrap();
        let mut chain = vec![CertificateDer::from(leaf.der)];
        if send_ca {
            chain.push(CertificateDer::from(ca.cert_der().to_vec()));
        }
        let key = PrivateKeyDer::from_pem_slice(key.pem().as_bytes()).unwrap();
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        Arc::new(config)
    }

    /// In-memory handshake; returns the verifier to inspect afterwards.
    fn handshake(
        server: &Arc<ServerConfig>,
        pin: &str,
    ) -> (Result<(), rustls::Error>, Arc<PinnedCaVerifier>) {
        let (config, verifier) = client_config_pinned_fingerprint(pin).unwrap();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let mut c = Connection::from(ClientConnection::new(Arc::new(config), name).unwrap());
        let mut s = Connection::from(ServerConnection::new(server.clone()).unwrap());
        let result = crate::tests::handshake(&mut c, &mut s);
        (result, verifier)
    }

    #[test]
    fn fingerprints_normalize() {
        let fp = "AB".repeat(32);
        let colons = vec!["Ab"; 32].join(":");
        assert_eq!(normalize_fingerprint(&fp).unwrap(), "ab".repeat(32));
        assert_eq!(normalize_fingerprint(&colons).unwrap(), "ab".repeat(32));
        for bad in ["", "abc", &"g".repeat(64), &"a".repeat(66), "é"] {
            assert!(normalize_fingerprint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pem_from_der_round_trips() {
        let ca = Ca::generate("lab").unwrap();
        assert_eq!(
            ca_der_from_pem(&cert_pem_from_der(ca.cert_der())).unwrap(),
            ca.cert_der()
        );
        for n in 1..8u8 {
            let der: Vec<u8> = (0..n).map(|i| i.wrapping_mul(97)).collect();
            assert_eq!(ca_der_from_pem(&cert_pem_from_der(&der)).unwrap(), der);
        }
    }

    #[test]
    fn only_the_pinned_ca_is_trusted() {
        let (ca, other) = (Ca::generate("lab").unwrap(), Ca::generate("evil").unwrap());
        let good = server(&ca, &ca, true);

        // The pin matches the presented CA (any case, colons allowed).
        let (r, v) = handshake(&good, &ca.fingerprint_sha256());
        assert_eq!(r, Ok(()));
        assert_eq!(v.matched_ca().as_deref(), Some(ca.cert_der()));
        let upper: Vec<String> = ca
            .fingerprint_sha256()
            .to_uppercase()
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        assert_eq!(handshake(&good, &upper.join(":")).0, Ok(()));

        // A wrong pin: refused, and the presented CA is reported.
        let (r, v) = handshake(&good, &other.fingerprint_sha256());
        assert_eq!(r, Err(rejected()));
        assert_eq!(v.matched_ca(), None);
        assert_eq!(v.presented_chain().len(), 2);
        assert_eq!(v.presented_chain()[1], ca.fingerprint_sha256());

        // A chain without the CA: refused.
        let (r, v) = handshake(&server(&ca, &ca, false), &ca.fingerprint_sha256());
        assert_eq!(r, Err(rejected()));
        assert_eq!(v.presented_chain().len(), 1);

        // The pinned CA is sent along, but the leaf is from another CA: refused.
        let (r, v) = handshake(&server(&ca, &other, true), &ca.fingerprint_sha256());
        assert!(
            matches!(r, Err(rustls::Error::InvalidCertificate(_))),
            "{r:?}"
        );
        assert_eq!(v.matched_ca(), None);

        // Pinning the leaf itself does not make it a trust root.
        let leaf_fp = v.presented_chain()[0].clone();
        let (r, _) = handshake(&server(&ca, &ca, true), &leaf_fp);
        assert!(r.is_err());
    }
}
