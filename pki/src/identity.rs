//! Identities (`fleetward://<role>/<name>`) and reading them back from certificates.

use crate::PkiError;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

const SCHEME: &str = "fleetward://";

/// What a certificate holder is allowed to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Agent,
    Operator,
    Controller,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Agent, Role::Operator, Role::Controller];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Operator => "operator",
            Role::Controller => "controller",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = PkiError;
    fn from_str(s: &str) -> Result<Self, PkiError> {
        let role = Role::ALL.into_iter().find(|r| r.as_str() == s);
        role.ok_or_else(|| PkiError::InvalidRole(s.to_owned()))
    }
}

/// What an operator certificate may do, carried in the certificate itself as its subject's
/// organizational unit `fleetward-scope:<scope>` (only the CA writes it: a CSR's subject is
/// discarded). Ordered: each scope may do everything the ones below it may.
/// An operator certificate without a scope (issued before scopes existed, e.g. by `init`)
/// is `Admin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Read-only.
    Viewer,
    /// Read-only, and power events (what a UPS hook needs).
    Power,
    /// Rollouts, shutdowns, refreshes, policy reloads, and everything `Power` may.
    Operator,
    /// Everything, including join tokens, node revocation and operator certificates.
    Admin,
}

/// The organizational unit prefix that carries a [`Scope`].
pub(crate) const SCOPE_OU: &str = "fleetward-scope:";

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Viewer, Scope::Power, Scope::Operator, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Viewer => "viewer",
            Scope::Power => "power",
            Scope::Operator => "operator",
            Scope::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = PkiError;
    fn from_str(s: &str) -> Result<Self, PkiError> {
        let scope = Scope::ALL.into_iter().find(|r| r.as_str() == s);
        scope.ok_or_else(|| PkiError::InvalidScope(s.to_owned()))
    }
}

/// The scope a certificate carries (`None`: it carries none; an operator certificate
/// without one counts as `Admin`). More than one scope, or one we do not know, is an error.
pub fn scope_from_der(cert_der: &[u8]) -> Result<Option<Scope>, PkiError> {
    let cert = parse(cert_der)?;
    let mut scopes = Vec::new();
    for ou in cert.subject().iter_organizational_unit() {
        let value = ou
            .as_str()
            .map_err(|e| PkiError::Certificate(format!("organizational unit: {e}")))?;
        if let Some(scope) = value.strip_prefix(SCOPE_OU) {
            scopes.push(scope.parse::<Scope>()?);
        }
    }
    match scopes.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        _ => Err(PkiError::InvalidIdentity(
            "more than one fleetward scope".into(),
        )),
    }
}

/// A validated identity. `Display` gives the URI form `fleetward://<role>/<name>`, which
/// `FromStr` parses back.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    pub role: Role,
    pub name: String,
}

impl Identity {
    /// Names are lower-case hostnames: `[a-z0-9][a-z0-9.-]{0,62}`; anything else is rejected.
    pub fn new(role: Role, name: impl Into<String>) -> Result<Self, PkiError> {
        let name = name.into();
        let b = name.as_bytes();
        let ok = (1..=63).contains(&b.len())
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter()
                .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-');
        if !ok {
            return Err(PkiError::InvalidName(name));
        }
        Ok(Identity { role, name })
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}/{}", self.role, self.name)
    }
}

impl FromStr for Identity {
    type Err = PkiError;
    fn from_str(s: &str) -> Result<Self, PkiError> {
        let (role, name) = s
            .strip_prefix(SCHEME)
            .and_then(|rest| rest.split_once('/'))
            .ok_or_else(|| {
                PkiError::InvalidIdentity(format!("{s:?} is not {SCHEME}<role>/<name>"))
            })?;
        Identity::new(role.parse()?, name)
    }
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, PkiError> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(PkiError::Certificate(
            "trailing data after certificate".into(),
        )),
        Err(e) => Err(PkiError::Certificate(e.to_string())),
    }
}

/// Reads the identity from a certificate: it must carry exactly one `fleetward:` URI SAN.
///
/// This only parses; it does not verify the certificate. Use it on peer certificates that the
/// TLS handshake has already verified against the CA.
pub fn identity_from_der(cert_der: &[u8]) -> Result<Identity, PkiError> {
    let cert = parse(cert_der)?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| PkiError::Certificate(e.to_string()))?
        .ok_or_else(|| PkiError::InvalidIdentity("certificate has no SAN".into()))?;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(u) if u.to_ascii_lowercase().starts_with("fleetward:") => Some(*u),
        _ => None,
    });
    match (uris.next(), uris.next()) {
        (Some(uri), None) => uri.parse(),
        (None, _) => Err(PkiError::InvalidIdentity("no fleetward URI SAN".into())),
        (Some(_), Some(_)) => Err(PkiError::InvalidIdentity(
            "more than one fleetward URI SAN".into(),
        )),
    }
}

/// The certificate's serial number as lower-case hex without separators.
pub fn serial_hex(cert_der: &[u8]) -> Result<String, PkiError> {
    Ok(hex(parse(cert_der)?.tbs_certificate.raw_serial()))
}

/// The end of the certificate's validity period.
pub fn not_after(cert_der: &[u8]) -> Result<SystemTime, PkiError> {
    system_time(
        parse(cert_der)?.validity().not_after.timestamp(),
        "notAfter",
    )
}

/// The start of the certificate's validity period.
pub fn not_before(cert_der: &[u8]) -> Result<SystemTime, PkiError> {
    system_time(
        parse(cert_der)?.validity().not_before.timestamp(),
        "notBefore",
    )
}

fn system_time(ts: i64, field: &str) -> Result<SystemTime, PkiError> {
    let t = if ts >= 0 {
        SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(ts.unsigned_abs()))
    } else {
        SystemTime::UNIX_EPOCH.checked_sub(Duration::from_secs(ts.unsigned_abs()))
    };
    t.ok_or_else(|| PkiError::Certificate(format!("{field} {ts} out of range")))
}

/// The certificate's subject public key (the BIT STRING contents).
pub(crate) fn public_key_bits(cert_der: &[u8]) -> Result<Vec<u8>, PkiError> {
    Ok(parse(cert_der)?
        .public_key()
        .subject_public_key
        .data
        .to_vec())
}

/// Whether the certificate says it is a CA (basicConstraints cA = true).
pub(crate) fn is_ca(cert_der: &[u8]) -> Result<bool, PkiError> {
    let cert = parse(cert_der)?;
    let bc = cert
        .basic_constraints()
        .map_err(|e| PkiError::Certificate(e.to_string()))?;
    Ok(bc.is_some_and(|bc| bc.value.ca))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
