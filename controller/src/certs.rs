//! The controller's own certificates, on the controller host (they read the data
//! directory, the CA key included, and need no running controller):
//! `fleetward ca status` (the CA and the server certificate: subject, SHA-256, not-after,
//! days left, the server's names) and `fleetward server-cert renew` (a new server key and
//! certificate from the CA with the same names; agents pin the CA, not the server
//! certificate, so they are unaffected). `serve` reads the server certificate when it
//! starts: a renewal takes effect at its next restart.

use crate::cli::Format;
use crate::paths::DataDir;
use fleetward_pki::{Ca, Identity, PkiError, Role};
use serde::Serialize;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

/// The server certificate's lifetime (at most the CA's remaining validity).
pub const SERVER_CERT_LIFETIME: Duration = Duration::from_secs(5 * 365 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("reading {path}: {source} (is {dir} a data directory made by `fleetward init`?)")]
    Read {
        path: String,
        dir: String,
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Pki { path: String, source: PkiError },
    #[error("the CA expired; a new CA needs every node enrolled again")]
    CaExpired,
}

/// One certificate as `ca status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CertStatus {
    /// `ca` or `server`.
    pub certificate: &'static str,
    pub subject: String,
    pub sha256: String,
    pub not_after_unix: i64,
    /// Whole days from now to not-after (negative once expired).
    pub days_left: i64,
    /// DNS names and IP addresses (the server certificate's; empty for the CA).
    pub names: Vec<String>,
}

fn read(dir: &DataDir, path: std::path::PathBuf) -> Result<String, CertError> {
    std::fs::read_to_string(&path).map_err(|source| CertError::Read {
        path: path.display().to_string(),
        dir: dir.root().display().to_string(),
        source,
    })
}

fn unix(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// The status of the first certificate in the PEM file `path`, at `now_unix`.
fn cert_status(
    certificate: &'static str,
    path: &std::path::Path,
    pem: &str,
    now_unix: i64,
) -> Result<CertStatus, CertError> {
    let pki = |source| CertError::Pki {
        path: path.display().to_string(),
        source,
    };
    let der = fleetward_pki::ca_der_from_pem(pem).map_err(pki)?;
    let not_after = unix(fleetward_pki::not_after(&der).map_err(pki)?);
    let (dns, ips) = fleetward_pki::dns_and_ip_sans(&der).map_err(pki)?;
    Ok(CertStatus {
        certificate,
        subject: fleetward_pki::subject(&der).map_err(pki)?,
        sha256: fleetward_pki::fingerprint_sha256(&der),
        not_after_unix: not_after,
        days_left: (not_after - now_unix).div_euclid(86_400),
        names: dns
            .into_iter()
            .chain(ips.iter().map(IpAddr::to_string))
            .collect(),
    })
}

/// The CA's and the server certificate's status, read from the data directory.
pub fn status(dir: &DataDir) -> Result<Vec<CertStatus>, CertError> {
    let now = unix(SystemTime::now());
    let (ca, server) = (dir.ca_cert(), dir.server_cert());
    Ok(vec![
        cert_status("ca", &ca, &read(dir, ca.clone())?, now)?,
        cert_status("server", &server, &read(dir, server.clone())?, now)?,
    ])
}

/// `ca status`'s output.
pub fn render_status(certs: &[CertStatus], format: Format) -> String {
    if format == Format::Json {
        return serde_json::to_string_pretty(certs).expect("plain data serialises") + "\n";
    }
    let mut out = String::new();
    for c in certs {
        let title = match c.certificate {
            "ca" => "CA",
            _ => "server certificate",
        };
        let when = jiff::Timestamp::from_second(c.not_after_unix)
            .map(|t| t.strftime("%Y-%m-%d %H:%M UTC").to_string())
            .unwrap_or_else(|_| c.not_after_unix.to_string());
        let left = match c.days_left {
            d if d < 0 => format!("expired {} days ago", -d),
            1 => "1 day left".to_string(),
            d => format!("{d} days left"),
        };
        out.push_str(&format!("{title}\n  subject    {}\n", c.subject));
        out.push_str(&format!("  SHA-256    {}\n", c.sha256));
        out.push_str(&format!("  not after  {when} ({left})\n"));
        if !c.names.is_empty() {
            out.push_str(&format!("  names      {}\n", c.names.join(", ")));
        }
    }
    out
}

/// `server-cert renew`: a new key and server certificate from the CA, with the names of
/// the current one, for [`SERVER_CERT_LIFETIME`] or the CA's remaining validity if
/// shorter; the key written 0600 and the certificate (with the CA in its chain) 0644,
/// each atomically. Returns the new certificate's status.
pub fn renew_server(dir: &DataDir) -> Result<CertStatus, CertError> {
    let server_path = dir.server_cert();
    let current = read(dir, server_path.clone())?;
    let pki = |path: &std::path::Path| {
        let path = path.display().to_string();
        move |source| CertError::Pki { path, source }
    };
    let der = fleetward_pki::ca_der_from_pem(&current).map_err(pki(&server_path))?;
    let (dns, ips) = fleetward_pki::dns_and_ip_sans(&der).map_err(pki(&server_path))?;
    let ca_dir = dir.ca_dir();
    let ca = Ca::load(&ca_dir).map_err(pki(&ca_dir))?;
    let ca_left = fleetward_pki::not_after(ca.cert_der())
        .map_err(pki(&ca_dir))?
        .duration_since(SystemTime::now())
        .map_err(|_| CertError::CaExpired)?;
    let identity = Identity::new(Role::Controller, "controller").map_err(pki(&server_path))?;
    let (cert, key) = ca
        .issue(&identity, SERVER_CERT_LIFETIME.min(ca_left), &dns, &ips)
        .map_err(pki(&ca_dir))?;
    let write = |path: std::path::PathBuf, r: std::io::Result<()>| {
        r.map_err(|source| CertError::Write {
            path: path.display().to_string(),
            source,
        })
    };
    // Each file is replaced atomically; a crash between the two leaves the new key beside
    // the old certificate, which TLS handshakes fail with: running the command again
    // writes a matching pair.
    write(
        dir.server_key(),
        fleetward_pki::write_private_key(&dir.server_key(), key.pem()),
    )?;
    let pem = format!("{}{}", cert.pem, ca.cert_pem());
    write(
        server_path.clone(),
        fleetward_pki::write_public(&server_path, &pem),
    )?;
    cert_status("server", &server_path, &pem, unix(SystemTime::now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_keeps_the_names_and_the_ca_and_changes_the_key() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("d"));
        crate::init::init(
            &dir,
            "lab",
            None,
            &["ctl.example.net".into(), "10.0.0.5".into()],
        )
        .unwrap();
        let before = status(&dir).unwrap();
        assert_eq!(before[0].certificate, "ca");
        assert!(before[0].subject.contains("lab"), "{}", before[0].subject);
        assert!(before[0].days_left > 3000, "{before:?}");
        assert_eq!(
            before[1].names,
            [
                "localhost",
                "ctl.example.net",
                "127.0.0.1",
                "::1",
                "10.0.0.5"
            ]
        );
        let old_key = std::fs::read(dir.server_key()).unwrap();
        let renewed = renew_server(&dir).unwrap();
        let after = status(&dir).unwrap();
        assert_eq!(after[1], renewed);
        assert_eq!(after[0], before[0], "the CA is unchanged");
        assert_eq!(after[1].names, before[1].names);
        assert_ne!(after[1].sha256, before[1].sha256);
        assert_ne!(std::fs::read(dir.server_key()).unwrap(), old_key);
        use std::os::unix::fs::PermissionsExt;
        let mode =
            |p: std::path::PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(dir.server_key()), 0o600);
        assert_eq!(mode(dir.server_cert()), 0o644);
        // The renewed identity still loads for `serve` (key matches, chain has the CA).
        let cfg = crate::config::Config::new("lab", None);
        assert!(crate::serve::load(&dir, cfg).is_ok());
        let text = render_status(&after, Format::Text);
        assert!(
            text.contains("days left") && text.contains(&after[1].sha256),
            "{text}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render_status(&after, Format::Json)).unwrap();
        assert_eq!(json[1]["names"][1], "ctl.example.net");
    }
}
