//! The cluster CA and certificate issuing.

use crate::identity::SCOPE_OU;
use crate::identity::{hex, is_ca, not_after, public_key_bits, serial_hex};
use crate::{write_private_key, write_public, Identity, PkiError, Role, Scope};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, CertifiedIssuer,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType, SerialNumber,
};
use sha2::{Digest, Sha256};
use std::fmt;
use std::net::IpAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::time::{Duration, SystemTime};
use time::OffsetDateTime;

const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Tolerated clock skew: certificates become valid this long before they are issued.
const BACKDATE: time::Duration = time::Duration::minutes(5);

/// A private key in PEM (PKCS#8). `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyPairPem(String);

impl KeyPairPem {
    pub fn new(pem: String) -> Self {
        KeyPairPem(pem)
    }
    /// The PEM text. Handle with care: write it only with [`crate::write_private_key`].
    pub fn pem(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for KeyPairPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyPairPem(<redacted>)")
    }
}

/// A certificate issued by the CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    pub pem: String,
    pub der: Vec<u8>,
    /// Lower-case hex, as [`crate::serial_hex`] returns it.
    pub serial: String,
    pub not_after: SystemTime,
}

/// The cluster's certificate authority (a self-signed root, path length 0).
#[derive(Debug)]
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: Vec<u8>,
    key_pem: KeyPairPem,
}

/// Lower-case hex SHA-256 of `der` (64 characters).
pub fn fingerprint_sha256(der: &[u8]) -> String {
    hex(&Sha256::digest(der))
}

/// A secret for one-time use (join tokens): 32 random bytes as 64 lower-case hex digits.
pub fn random_token() -> Result<String, PkiError> {
    let mut bytes = [0u8; 32];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| PkiError::Random)?;
    Ok(hex(&bytes))
}

/// 16 random bytes, high bit cleared (positive INTEGER) and next bit set (no leading zero
/// byte to strip, so the serial always has 32 hex digits).
fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| PkiError::Random)?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn validity_window(validity: Duration) -> Result<(OffsetDateTime, OffsetDateTime), PkiError> {
    let now = OffsetDateTime::now_utc();
    let not_after = time::Duration::try_from(validity)
        .ok()
        .and_then(|d| now.checked_add(d))
        .filter(|t| t.year() <= 9999 && !validity.is_zero())
        .ok_or(PkiError::Validity(validity))?;
    Ok((now - BACKDATE, not_after))
}

/// Fresh parameters with only a subject CN and the given SANs.
fn base_params(cn: String, sans: Vec<SanType>) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.subject_alt_names = sans;
    params
}

/// The complete parameters of a leaf certificate for `identity`; nothing comes from a CSR.
fn leaf_params(
    identity: &Identity,
    validity: Duration,
    dns_sans: &[String],
    ip_sans: &[IpAddr],
) -> Result<CertificateParams, PkiError> {
    let mut sans = vec![SanType::URI(identity.to_string().try_into()?)];
    for dns in dns_sans {
        sans.push(SanType::DnsName(dns.as_str().try_into()?));
    }
    sans.extend(ip_sans.iter().copied().map(SanType::IpAddress));
    let mut params = base_params(identity.name.clone(), sans);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match identity.role {
        Role::Controller => vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ],
        Role::Agent | Role::Operator => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    (params.not_before, params.not_after) = validity_window(validity)?;
    params.serial_number = Some(random_serial()?);
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// A leaf for an operator, its scope in the subject's organizational unit.
fn operator_params(
    identity: &Identity,
    scope: Scope,
    validity: Duration,
) -> Result<CertificateParams, PkiError> {
    if identity.role != Role::Operator {
        return Err(PkiError::InvalidIdentity(format!(
            "{identity} is not an operator: only operator certificates carry a scope"
        )));
    }
    let mut params = leaf_params(identity, validity, &[], &[])?;
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, format!("{SCOPE_OU}{scope}"));
    Ok(params)
}

fn issued(cert: rcgen::Certificate) -> Result<IssuedCert, PkiError> {
    let der = cert.der().to_vec();
    Ok(IssuedCert {
        pem: cert.pem(),
        serial: serial_hex(&der)?,
        not_after: not_after(&der)?,
        der,
    })
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

impl Ca {
    /// Creates a new self-signed CA for the cluster, valid for 10 years.
    pub fn generate(cluster_name: &str) -> Result<Self, PkiError> {
        if cluster_name.is_empty()
            || cluster_name.len() > 48
            || cluster_name.chars().any(char::is_control)
        {
            return Err(PkiError::InvalidName(cluster_name.to_owned()));
        }
        let mut params = base_params(format!("fleetward CA {cluster_name}"), vec![]);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        (params.not_before, params.not_after) = validity_window(CA_VALIDITY)?;
        params.serial_number = Some(random_serial()?);
        let key = KeyPair::generate()?;
        let key_pem = KeyPairPem(key.serialize_pem());
        let certified = CertifiedIssuer::self_signed(params, key)?;
        let (cert_pem, cert_der) = (certified.pem(), certified.der().to_vec());
        Self::from_parts(&cert_pem, cert_der, key_pem)
    }

    fn from_parts(
        cert_pem: &str,
        cert_der: Vec<u8>,
        key_pem: KeyPairPem,
    ) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem.pem())?;
        if key.public_key_raw() != public_key_bits(&cert_der)? {
            return Err(PkiError::InvalidCa("key does not match certificate".into()));
        }
        if !is_ca(&cert_der)? {
            return Err(PkiError::InvalidCa("certificate is not a CA".into()));
        }
        Ok(Ca {
            issuer: Issuer::from_ca_cert_pem(cert_pem, key)?,
            cert_pem: cert_pem.to_owned(),
            cert_der,
            key_pem,
        })
    }

    /// Writes `ca.crt` (0644) and `ca.key` (0600) into `dir` (created 0700 if missing).
    /// Refuses to overwrite an existing CA: that would orphan every issued certificate.
    pub fn save(&self, dir: &Path) -> Result<(), PkiError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?;
        let (crt, key) = (dir.join("ca.crt"), dir.join("ca.key"));
        for p in [&crt, &key] {
            if p.exists() {
                return Err(PkiError::CaExists(p.clone()));
            }
        }
        write_private_key(&key, self.key_pem.pem()).map_err(io_err(&key))?;
        write_public(&crt, &self.cert_pem).map_err(io_err(&crt))
    }

    /// Loads `ca.crt` and `ca.key` from `dir`, checking that the key belongs to the certificate.
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        let read = |name: &str| {
            let p = dir.join(name);
            std::fs::read_to_string(&p).map_err(io_err(&p))
        };
        let cert_pem = read("ca.crt")?;
        let key_pem = KeyPairPem(read("ca.key")?);
        let der = crate::ca_der_from_pem(&cert_pem)?;
        Self::from_parts(&cert_pem, der, key_pem)
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    pub fn fingerprint_sha256(&self) -> String {
        fingerprint_sha256(&self.cert_der)
    }

    /// Signs a CSR for `identity`. The CSR's signature is verified and only its public key
    /// is used: every other parameter it requests is replaced by ours.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        identity: &Identity,
        validity: Duration,
    ) -> Result<IssuedCert, PkiError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        csr.params = leaf_params(identity, validity, &[], &[])?;
        issued(csr.signed_by(&self.issuer)?)
    }

    /// Signs a CSR for operator `identity` with `scope` in the certificate (see [`Scope`]);
    /// like [`Ca::sign_csr`], only the CSR's public key is used.
    pub fn sign_operator_csr(
        &self,
        csr_pem: &str,
        identity: &Identity,
        scope: Scope,
        validity: Duration,
    ) -> Result<IssuedCert, PkiError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        csr.params = operator_params(identity, scope, validity)?;
        issued(csr.signed_by(&self.issuer)?)
    }

    /// Generates a key pair and issues an operator certificate with `scope` for it.
    pub fn issue_operator(
        &self,
        identity: &Identity,
        scope: Scope,
        validity: Duration,
    ) -> Result<(IssuedCert, KeyPairPem), PkiError> {
        let key = KeyPair::generate()?;
        let cert = operator_params(identity, scope, validity)?.signed_by(&key, &self.issuer)?;
        Ok((issued(cert)?, KeyPairPem(key.serialize_pem())))
    }

    /// Generates a key pair and issues a certificate for it, with optional DNS/IP SANs
    /// (for the controller's server certificate).
    pub fn issue(
        &self,
        identity: &Identity,
        validity: Duration,
        dns_sans: &[String],
        ip_sans: &[IpAddr],
    ) -> Result<(IssuedCert, KeyPairPem), PkiError> {
        let key = KeyPair::generate()?;
        let cert =
            leaf_params(identity, validity, dns_sans, ip_sans)?.signed_by(&key, &self.issuer)?;
        Ok((issued(cert)?, KeyPairPem(key.serialize_pem())))
    }
}

/// Agent side of enrollment: a fresh key pair and a CSR (PEM) naming `identity`.
/// The CA decides the final contents regardless of what the CSR says.
pub fn generate_key_and_csr(identity: &Identity) -> Result<(KeyPairPem, String), PkiError> {
    let key = KeyPair::generate()?;
    let sans = vec![SanType::URI(identity.to_string().try_into()?)];
    let csr = base_params(identity.name.clone(), sans)
        .serialize_request(&key)?
        .pem()?;
    Ok((KeyPairPem(key.serialize_pem()), csr))
}
