use crate::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const DAY: Duration = Duration::from_secs(86_400);

fn id(role: Role, name: &str) -> Identity {
    Identity::new(role, name).unwrap()
}

#[test]
fn ca_save_load_roundtrip_keeps_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("pki");
    let ca = Ca::generate("lab").unwrap();
    ca.save(&ca_dir).unwrap();
    let loaded = Ca::load(&ca_dir).unwrap();
    assert_eq!(loaded.fingerprint_sha256(), ca.fingerprint_sha256());
    assert_eq!(ca.fingerprint_sha256(), fingerprint_sha256(ca.cert_der()));
    assert_eq!(ca.fingerprint_sha256().len(), 64);
    assert_eq!(ca_der_from_pem(loaded.cert_pem()).unwrap(), ca.cert_der());
    let mode = |f: &str| {
        std::fs::metadata(ca_dir.join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("ca.key"), 0o600);
    assert_eq!(mode("ca.crt"), 0o644);
    assert!(matches!(ca.save(&ca_dir), Err(PkiError::CaExists(_))));
    // A key that does not belong to the certificate is refused.
    std::fs::remove_file(ca_dir.join("ca.key")).unwrap();
    write_private_key(
        &ca_dir.join("ca.key"),
        &KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    assert!(matches!(Ca::load(&ca_dir), Err(PkiError::InvalidCa(_))));
}

#[test]
fn csr_requests_are_replaced_by_our_params() {
    let ca = Ca::generate("lab").unwrap();
    let key = KeyPair::generate().unwrap();
    let mut evil = CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
    evil.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    evil.not_after = rcgen::date_time_ymd(4096, 1, 1);
    evil.distinguished_name.push(DnType::CommonName, "root");
    evil.subject_alt_names.push(SanType::URI(
        "fleetward://controller/evil".try_into().unwrap(),
    ));
    let csr = evil.serialize_request(&key).unwrap().pem().unwrap();

    let agent = id(Role::Agent, "pve1");
    let cert = ca.sign_csr(&csr, &agent, DAY).unwrap();
    assert!(!crate::identity::is_ca(&cert.der).unwrap());
    assert_eq!(identity_from_der(&cert.der).unwrap(), agent);
    let expected = SystemTime::now() + DAY;
    let skew = expected
        .duration_since(cert.not_after)
        .unwrap_or_else(|e| e.duration());
    assert!(skew < Duration::from_secs(5), "not_after off by {skew:?}");
    assert_eq!(cert.not_after, not_after(&cert.der).unwrap());
    assert_eq!(cert.serial, serial_hex(&cert.der).unwrap());
    assert_eq!(cert.serial.len(), 32);
    let (_, x509) = x509_parser::parse_x509_certificate(&cert.der).unwrap();
    let san = x509.subject_alternative_name().unwrap().unwrap();
    assert_eq!(san.value.general_names.len(), 1, "only our URI SAN");
    let eku = x509.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
    // The public key is the CSR's.
    assert_eq!(
        crate::identity::public_key_bits(&cert.der).unwrap(),
        key.public_key_raw()
    );
    // Garbage and zero validity are refused.
    assert!(ca.sign_csr("not a csr", &agent, DAY).is_err());
    assert!(matches!(
        ca.sign_csr(&csr, &agent, Duration::ZERO),
        Err(PkiError::Validity(_))
    ));
}

#[test]
fn identity_roundtrips_through_certificates() {
    let ca = Ca::generate("lab").unwrap();
    for ident in [
        id(Role::Agent, "pve-01.lab"),
        id(Role::Operator, "alice"),
        id(Role::Controller, "ctl"),
    ] {
        let (cert, _key) = ca.issue(&ident, DAY, &["ctl.example".into()], &[]).unwrap();
        assert_eq!(identity_from_der(&cert.der).unwrap(), ident);
        let (_key, csr) = generate_key_and_csr(&ident).unwrap();
        let cert = ca.sign_csr(&csr, &ident, DAY).unwrap();
        assert_eq!(identity_from_der(&cert.der).unwrap(), ident);
        assert_eq!(ident.to_string().parse::<Identity>().unwrap(), ident);
    }
    assert_eq!(
        id(Role::Agent, "pve1").to_string(),
        "fleetward://agent/pve1"
    );
    // A certificate without a fleetward URI SAN has no identity.
    assert!(identity_from_der(ca.cert_der()).is_err());
}

#[test]
fn invalid_names_are_rejected() {
    let long_ok = "a".repeat(63);
    for good in ["pve1", "0node", "a.b-c", long_ok.as_str()] {
        assert!(Identity::new(Role::Agent, good).is_ok(), "{good}");
    }
    let too_long = "a".repeat(64);
    for bad in [
        "",
        "PVE1",
        "Pve1",
        "-pve",
        ".pve",
        "pve 1",
        "pve_1",
        "pve/1",
        "pvé",
        too_long.as_str(),
    ] {
        assert!(
            matches!(
                Identity::new(Role::Agent, bad),
                Err(PkiError::InvalidName(_))
            ),
            "{bad}"
        );
    }
    for bad in [
        "fleetward://root/x",
        "http://agent/x",
        "fleetward://agent",
        "fleetward://agent/A",
    ] {
        assert!(bad.parse::<Identity>().is_err(), "{bad}");
    }
}

#[test]
fn private_key_file_is_0600_and_key_debug_is_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _csr) = generate_key_and_csr(&id(Role::Agent, "pve1")).unwrap();
    assert!(key.pem().contains("PRIVATE KEY"));
    let debug = format!("{key:?} {:?}", Ca::generate("lab").unwrap());
    assert!(!debug.contains("PRIVATE"), "{debug}");
    let path = dir.path().join("agent.key");
    write_private_key(&path, key.pem()).unwrap();
    write_private_key(&path, key.pem()).unwrap(); // overwrite stays 0600
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), key.pem());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temp files left"
    );
}

#[test]
fn revocation_set_normalizes_and_serializes() {
    let mut set = RevocationSet::new();
    assert!(set.is_empty());
    assert!(set.insert("AB:CD"));
    assert!(!set.insert("abcd"));
    assert!(set.contains("ABCD") && !set.contains("abce"));
    let json = serde_json::to_string(&set).unwrap();
    assert_eq!(json, r#"["abcd"]"#);
    let back: RevocationSet = serde_json::from_str(r#"["AB:CD","01"]"#).unwrap();
    assert_eq!(back.len(), 2);
    assert!(back.contains("abcd"));
}

/// Runs a handshake between two in-memory connections to its end (or first error).
pub(crate) fn handshake(c: &mut Connection, s: &mut Connection) -> Result<(), rustls::Error> {
    while c.is_handshaking() || s.is_handshaking() {
        pump(c, s)?;
        pump(s, c)?;
    }
    Ok(())
}

/// Moves all pending TLS records from one connection to the other.
fn pump(from: &mut Connection, to: &mut Connection) -> Result<(), rustls::Error> {
    let mut buf = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut buf).unwrap();
    }
    let mut rd = &buf[..];
    while !rd.is_empty() {
        to.read_tls(&mut rd).unwrap();
        to.process_new_packets()?;
    }
    Ok(())
}

/// Handshakes over in-memory buffers (no sockets), then sends "ping" client → server.
fn connect(client: ClientConfig, server: &Arc<ServerConfig>) -> Result<Connection, rustls::Error> {
    let name = "ctl.lab".try_into().unwrap();
    let mut c = Connection::from(ClientConnection::new(Arc::new(client), name).unwrap());
    let mut s = Connection::from(ServerConnection::new(server.clone()).unwrap());
    handshake(&mut c, &mut s)?;
    c.writer().write_all(b"ping").unwrap();
    pump(&mut c, &mut s)?;
    let mut got = [0u8; 4];
    s.reader().read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    Ok(s)
}

#[test]
fn mutual_tls_handshake_in_memory() {
    let (ca, other) = (Ca::generate("lab").unwrap(), Ca::generate("other").unwrap());
    let ctl = id(Role::Controller, "ctl");
    let ip = "127.0.0.1".parse().unwrap();
    let (srv_cert, srv_key) = ca.issue(&ctl, DAY, &["ctl.lab".into()], &[ip]).unwrap();
    let server_cfg = Arc::new(server_config(ca.cert_der(), &srv_cert.pem, srv_key.pem()).unwrap());

    let agent = id(Role::Agent, "pve1");
    let (key, csr) = generate_key_and_csr(&agent).unwrap();
    let cert = ca.sign_csr(&csr, &agent, DAY).unwrap();
    let good = || client_config(ca.cert_der(), &cert.pem, key.pem()).unwrap();
    let server = connect(good(), &server_cfg).unwrap();
    let peer = &server.peer_certificates().unwrap()[0];
    assert_eq!(identity_from_der(peer).unwrap(), agent);
    assert_eq!(server.alpn_protocol(), Some(&b"h2"[..]));

    let unknown_issuer = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
    let (foreign, foreign_key) = other.issue(&agent, DAY, &[], &[]).unwrap();
    let foreign_cfg = client_config(ca.cert_der(), &foreign.pem, foreign_key.pem()).unwrap();
    assert_eq!(
        connect(foreign_cfg, &server_cfg).err(),
        Some(unknown_issuer.clone())
    );

    let no_cert = connect(client_config_pinned_ca(ca.cert_der()).unwrap(), &server_cfg).err();
    assert_eq!(no_cert, Some(rustls::Error::NoCertificatesPresented));

    // The client refuses a server certificate from another CA, too.
    let (bad_srv, bad_key) = other.issue(&ctl, DAY, &["ctl.lab".into()], &[]).unwrap();
    let bad_server = Arc::new(server_config(ca.cert_der(), &bad_srv.pem, bad_key.pem()).unwrap());
    assert_eq!(connect(good(), &bad_server).err(), Some(unknown_issuer));

    // An agent certificate (clientAuth only) cannot pose as the controller.
    let (imp, imp_key) = ca.issue(&agent, DAY, &["ctl.lab".into()], &[]).unwrap();
    let impostor = Arc::new(server_config(ca.cert_der(), &imp.pem, imp_key.pem()).unwrap());
    let err = connect(good(), &impostor).err();
    assert!(
        matches!(err, Some(rustls::Error::InvalidCertificate(_))),
        "{err:?}"
    );

    // A CA reloaded from disk issues certificates the original trusts.
    let dir = tempfile::tempdir().unwrap();
    ca.save(dir.path()).unwrap();
    let (c, k) = Ca::load(dir.path())
        .unwrap()
        .issue(&agent, DAY, &[], &[])
        .unwrap();
    connect(
        client_config(ca.cert_der(), &c.pem, k.pem()).unwrap(),
        &server_cfg,
    )
    .unwrap();
}

#[test]
fn operator_scopes_travel_in_the_certificate_and_a_csr_cannot_ask_for_one() {
    let ca = Ca::generate("lab").unwrap();
    let op = id(Role::Operator, "ups");
    for scope in Scope::ALL {
        let (cert, _) = ca.issue_operator(&op, scope, DAY).unwrap();
        assert_eq!(scope_from_der(&cert.der).unwrap(), Some(scope));
        assert_eq!(identity_from_der(&cert.der).unwrap(), op);
        assert_eq!(scope.as_str().parse::<Scope>().unwrap(), scope);
    }
    // A CSR that names an admin scope in its subject gets the scope the CA decides.
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, "fleetward-scope:admin");
    params.subject_alt_names = vec![SanType::URI(op.to_string().try_into().unwrap())];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let cert = ca.sign_operator_csr(&csr, &op, Scope::Power, DAY).unwrap();
    assert_eq!(scope_from_der(&cert.der).unwrap(), Some(Scope::Power));
    let plain = ca.sign_csr(&csr, &op, DAY).unwrap();
    assert_eq!(scope_from_der(&plain.der).unwrap(), None, "no scope: admin");
    // Only operators carry a scope; a scope we do not know is an error.
    let agent = id(Role::Agent, "pve1");
    assert!(ca.issue_operator(&agent, Scope::Viewer, DAY).is_err());
    assert!("root".parse::<Scope>().is_err());
    assert!(Scope::Viewer < Scope::Power && Scope::Power < Scope::Operator);
    assert!(Scope::Operator < Scope::Admin);
}
