//! What a certificate says about itself, for `fleetward ca status` and
//! `fleetward server-cert renew`: its subject and its DNS and IP subject alternative names.
//! Parsing only; nothing is verified.

use crate::PkiError;
use std::net::IpAddr;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, PkiError> {
    X509Certificate::from_der(der)
        .map(|(_, c)| c)
        .map_err(|e| PkiError::Certificate(e.to_string()))
}

/// The certificate's subject as text (RFC 4514 order), e.g. `CN=fleetward CA lab`.
pub fn subject(cert_der: &[u8]) -> Result<String, PkiError> {
    Ok(parse(cert_der)?.subject().to_string())
}

/// The certificate's DNS names and IP addresses (its other SANs, such as the fleetward
/// identity URI, are left out), in the certificate's order.
pub fn dns_and_ip_sans(cert_der: &[u8]) -> Result<(Vec<String>, Vec<IpAddr>), PkiError> {
    let cert = parse(cert_der)?;
    let (mut dns, mut ips) = (Vec::new(), Vec::new());
    let Some(san) = cert
        .subject_alternative_name()
        .map_err(|e| PkiError::Certificate(e.to_string()))?
    else {
        return Ok((dns, ips));
    };
    for name in &san.value.general_names {
        match name {
            GeneralName::DNSName(d) => dns.push(d.to_string()),
            GeneralName::IPAddress(b) => match b.len() {
                4 => ips.push(IpAddr::from(<[u8; 4]>::try_from(*b).expect("4 bytes"))),
                16 => ips.push(IpAddr::from(<[u8; 16]>::try_from(*b).expect("16 bytes"))),
                n => {
                    return Err(PkiError::Certificate(format!(
                        "an IP address SAN of {n} bytes"
                    )))
                }
            },
            _ => {}
        }
    }
    Ok((dns, ips))
}
