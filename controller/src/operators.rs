//! Operator identities: the registry of issued operator certificates (name, scope,
//! serials, expiry), and what `OperatorService`'s operator calls change in it, each step
//! audited. The scope is in the certificate ([`fleetward_pki::Scope`]); the registry
//! decides which of an operator's certificates still count: its current one (or, for
//! [`RENEW_OVERLAP_MS`], the one its renewal replaced) and none once it is revoked.
//! An operator certificate whose name the registry does not know (issued before the
//! registry existed) counts by its scope and serial alone.

use crate::clock::{ms, now_ms};
use crate::paths::DataDir;
use crate::state::{internal, not_found, Caller, Controller, RENEW_OVERLAP_MS};
use crate::store::{OperatorError, OperatorRecord};
use fleetward_pki::{
    identity_from_der, not_after, scope_from_der, serial_hex, Identity, Role, Scope,
};
use std::time::Duration;
use tonic::Status;

fn operator_status(e: OperatorError) -> Status {
    match e {
        OperatorError::Store(e) => internal(e),
        OperatorError::Unknown(name) => not_found("operator", &name),
        e @ (OperatorError::Exists(_) | OperatorError::LastAdmin(_)) => {
            Status::failed_precondition(e.to_string())
        }
        e => Status::permission_denied(e.to_string()),
    }
}

impl Controller {
    /// Whether operator `name`'s certificate `serial` still counts (see the module doc).
    /// The first use of a renewed certificate retires the one it replaced (audited).
    pub(crate) fn operator_current(&self, name: &str, serial: &str) -> Result<(), Status> {
        let Some(rec) = self.store().get_operator(name).map_err(internal)? else {
            return Ok(());
        };
        if rec.revoked {
            return Err(Status::permission_denied(format!(
                "operator {name} is revoked"
            )));
        }
        if !rec.accepts(serial, now_ms()) {
            return Err(Status::permission_denied(format!(
                "certificate {serial} is not the current certificate of operator {name}"
            )));
        }
        if rec.serial == serial && rec.previous_serial.is_some() {
            let retired = self
                .store()
                .retire_operator_previous(name, serial)
                .map_err(operator_status)?;
            if let Some(old) = retired {
                self.audit(
                    name,
                    "operator.cert.retire",
                    name,
                    format!("certificate {old} revoked: its successor {serial} is in use"),
                )?;
            }
        }
        Ok(())
    }

    /// A certificate for a new operator `name` with `scope`: signed from `csr_pem`, or
    /// with a new key when there is no CSR. Refused while an unrevoked operator of that
    /// name exists. Returns (certificate PEM, the new key's PEM if one was made).
    pub(crate) fn issue_operator(
        &self,
        actor: &str,
        name: &str,
        scope: &str,
        csr_pem: Option<&str>,
    ) -> Result<(String, Option<String>), Status> {
        let identity = Identity::new(Role::Operator, name.to_string())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if scope.is_empty() {
            return Err(Status::invalid_argument(
                "a scope is required: admin, operator, power or viewer",
            ));
        }
        let scope: Scope = scope
            .parse()
            .map_err(|e: fleetward_pki::PkiError| Status::invalid_argument(e.to_string()))?;
        if let Some(rec) = self.store().get_operator(name).map_err(internal)? {
            if !rec.revoked {
                return Err(operator_status(OperatorError::Exists(name.to_string())));
            }
        }
        let validity = Duration::from_secs(self.config().operator_cert_secs);
        let (issued, key_pem) = match csr_pem {
            Some(csr) => (
                self.ca()
                    .sign_operator_csr(csr, &identity, scope, validity)
                    .map_err(|e| Status::invalid_argument(format!("cannot sign the CSR: {e}")))?,
                None,
            ),
            None => {
                let (cert, key) = self
                    .ca()
                    .issue_operator(&identity, scope, validity)
                    .map_err(internal)?;
                (cert, Some(key.pem().to_string()))
            }
        };
        let not_after_ms = ms(issued.not_after);
        let rec = OperatorRecord::new(name, scope.as_str(), &issued.serial, not_after_ms, now_ms());
        self.store().add_operator(&rec).map_err(operator_status)?;
        self.audit(
            actor,
            "operator.issue",
            name,
            format!("certificate {} scope {scope}", issued.serial),
        )?;
        Ok((issued.pem, key_pem))
    }

    /// A new certificate for the calling operator, same name and scope, from `csr_pem`.
    /// The caller's certificate stays accepted until the new one is used (at most
    /// [`RENEW_OVERLAP_MS`]). An operator the registry does not know is registered by it.
    /// Returns (certificate PEM, expiry unix ms).
    pub(crate) fn renew_operator(
        &self,
        caller: &Caller,
        csr_pem: &str,
    ) -> Result<(String, u64), Status> {
        let name = &caller.identity.name;
        let scope = caller.scope.unwrap_or(Scope::Admin);
        let validity = Duration::from_secs(self.config().operator_cert_secs);
        let issued = self
            .ca()
            .sign_operator_csr(csr_pem, &caller.identity, scope, validity)
            .map_err(|e| Status::invalid_argument(format!("cannot sign the CSR: {e}")))?;
        let (now, not_after_ms) = (now_ms(), ms(issued.not_after));
        let known = self.store().get_operator(name).map_err(internal)?.is_some();
        if !known {
            let mut rec = OperatorRecord::new(name, scope.as_str(), &caller.serial, 0, now);
            rec.issued_ms = 0;
            self.store().adopt_operator(&rec).map_err(operator_status)?;
        }
        let revoked = self
            .store()
            .renew_operator(
                name,
                &caller.serial,
                &issued.serial,
                not_after_ms,
                now,
                now + RENEW_OVERLAP_MS,
            )
            .map_err(operator_status)?;
        let mut detail = format!(
            "certificate {} scope {scope} replaces {}, accepted until {} is used (at most {} s)",
            issued.serial,
            caller.serial,
            issued.serial,
            RENEW_OVERLAP_MS / 1000
        );
        if !revoked.is_empty() {
            detail.push_str(&format!("; revoked {}", revoked.join(", ")));
        }
        self.audit(name, "operator.renew", name, detail)?;
        Ok((issued.pem, not_after_ms))
    }

    /// Revokes operator `name` and every certificate it was issued; its next call is
    /// refused (every call is authorized, so a `--watch` loop ends at its next poll).
    /// The last admin cannot be revoked. Returns the revoked serials.
    pub(crate) fn revoke_operator(&self, actor: &str, name: &str) -> Result<Vec<String>, Status> {
        let rec = self
            .store()
            .revoke_operator(name)
            .map_err(operator_status)?;
        let mut serials = rec.serials.clone();
        if !serials.contains(&rec.serial) {
            serials.push(rec.serial.clone());
        }
        self.audit(
            actor,
            "operator.revoke",
            name,
            format!("certificates {}", serials.join(", ")),
        )?;
        Ok(serials)
    }

    /// Every operator the registry knows, by name.
    pub fn operators(&self) -> Result<Vec<OperatorRecord>, Status> {
        self.store().list_operators().map_err(internal)
    }
}

/// Registers the operator certificates under the data dir's `operators/` (`init`'s first
/// operator) that the registry does not know yet, so `operator list` shows them and
/// `operator revoke` can revoke them. A certificate without a scope is an admin.
pub fn adopt_operator_files(ctl: &Controller, dir: &DataDir) {
    let Some(ops) = dir.operator_cert("x").parent().map(|p| p.to_path_buf()) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(&ops) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("crt") {
            continue;
        }
        let Ok(pem) = std::fs::read_to_string(&path) else {
            continue;
        };
        let Ok(der) = fleetward_pki::ca_der_from_pem(&pem) else {
            continue;
        };
        let (Ok(id), Ok(serial), Ok(scope), Ok(exp)) = (
            identity_from_der(&der),
            serial_hex(&der),
            scope_from_der(&der),
            not_after(&der),
        ) else {
            continue;
        };
        if id.role != Role::Operator {
            continue;
        }
        let scope = scope.unwrap_or(Scope::Admin);
        let rec = OperatorRecord::new(&id.name, scope.as_str(), &serial, ms(exp), now_ms());
        match ctl.store().adopt_operator(&rec) {
            Ok(true) => {
                tracing::info!(operator = %id.name, %scope, path = %path.display(), "operator certificate registered")
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, path = %path.display(), "cannot register an operator certificate")
            }
        }
    }
}

/// How long before expiry the controller renews the data directory's own operator
/// certificate (`operators/admin.*`) itself.
pub const LOCAL_RENEW_BEFORE: Duration = Duration::from_secs(14 * 24 * 3600);

/// The local renewal on the controller host: when the data directory's first operator
/// certificate (`operators/admin.crt`) expires within [`LOCAL_RENEW_BEFORE`] (or has
/// expired), the controller, which holds the CA, issues a new key and certificate with the
/// same name and scope, replaces both files (each written beside its target and renamed
/// over it), records the renewal in the registry and audits it. Returns whether it renewed.
/// Other operators renew through the API (`fleetward operator renew`).
pub fn renew_local_admin(ctl: &Controller, dir: &DataDir) -> Result<bool, String> {
    use crate::paths::FIRST_OPERATOR;
    let (cert_path, key_path) = (
        dir.operator_cert(FIRST_OPERATOR),
        dir.operator_key(FIRST_OPERATOR),
    );
    let Ok(pem) = std::fs::read_to_string(&cert_path) else {
        return Ok(false);
    };
    let der = fleetward_pki::ca_der_from_pem(&pem).map_err(|e| e.to_string())?;
    let exp = not_after(&der).map_err(|e| e.to_string())?;
    let left = exp
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    if left > LOCAL_RENEW_BEFORE {
        return Ok(false);
    }
    let identity = identity_from_der(&der).map_err(|e| e.to_string())?;
    let serial = serial_hex(&der).map_err(|e| e.to_string())?;
    let scope = scope_from_der(&der)
        .map_err(|e| e.to_string())?
        .unwrap_or(Scope::Admin);
    if identity.role != Role::Operator {
        return Err(format!(
            "{} is not an operator certificate",
            cert_path.display()
        ));
    }
    if let Some(rec) = ctl
        .store()
        .get_operator(&identity.name)
        .map_err(|e| e.to_string())?
    {
        if rec.revoked || rec.serial != serial {
            // Revoked or superseded: renewing it would bring it back.
            return Ok(false);
        }
    }
    let validity = Duration::from_secs(ctl.config().operator_cert_secs);
    let (cert, key) = ctl
        .ca()
        .issue_operator(&identity, scope, validity)
        .map_err(|e| e.to_string())?;
    let now = now_ms();
    let rec = OperatorRecord::new(&identity.name, scope.as_str(), &serial, ms(exp), now);
    ctl.store()
        .adopt_operator(&rec)
        .map_err(|e| e.to_string())?;
    ctl.store()
        .renew_operator(
            &identity.name,
            &serial,
            &cert.serial,
            ms(cert.not_after),
            now,
            now,
        )
        .map_err(|e| e.to_string())?;
    let beside = |p: &std::path::Path| {
        let mut name = p.file_name().unwrap_or_default().to_os_string();
        name.push(".new");
        p.with_file_name(name)
    };
    let (key_new, cert_new) = (beside(&key_path), beside(&cert_path));
    let io = |p: &std::path::Path| {
        let p = p.display().to_string();
        move |e: std::io::Error| format!("{p}: {e}")
    };
    fleetward_pki::write_private_key(&key_new, key.pem()).map_err(io(&key_new))?;
    fleetward_pki::write_public(&cert_new, &cert.pem).map_err(io(&cert_new))?;
    std::fs::rename(&key_new, &key_path).map_err(io(&key_path))?;
    std::fs::rename(&cert_new, &cert_path).map_err(io(&cert_path))?;
    ctl.audit_event(
        "controller",
        "operator.renew",
        &identity.name,
        format!(
            "certificate {} scope {scope} replaces {serial} (renewed locally on the controller host)",
            cert.serial
        ),
    );
    tracing::info!(operator = %identity.name, path = %cert_path.display(), "operator certificate renewed locally");
    Ok(true)
}

/// Runs [`renew_local_admin`] now and every 12 hours for as long as the controller lives.
pub fn spawn_local_renewal(ctl: &std::sync::Arc<Controller>, dir: DataDir) {
    let weak = std::sync::Arc::downgrade(ctl);
    let _ = std::thread::Builder::new()
        .name("operator-renew".into())
        .spawn(move || loop {
            let Some(ctl) = weak.upgrade() else { return };
            if let Err(e) = renew_local_admin(&ctl, &dir) {
                tracing::error!(error = %e, "cannot renew the data directory's operator certificate");
            }
            drop(ctl);
            std::thread::sleep(Duration::from_secs(12 * 3600));
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn the_controller_renews_its_own_admin_certificate_before_it_expires() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("data"));
        crate::init::init(&dir, "lab", None, &[]).unwrap();
        let mut cfg = Config::load(&dir.config()).unwrap();
        cfg.data_dir = Some(dir.root().to_path_buf());
        let store = crate::store::Store::open(dir.db()).unwrap();
        let ca = fleetward_pki::Ca::load(&dir.ca_dir()).unwrap();
        let ctl = Controller::new(store, ca, cfg, None).unwrap();
        adopt_operator_files(&ctl, &dir);
        // 90 days left: nothing to do.
        assert!(!renew_local_admin(&ctl, &dir).unwrap());
        let admin = ctl.store().get_operator("admin").unwrap().expect("adopted");
        assert_eq!(admin.scope, "admin");
        // A certificate that expires in a day is replaced, files and registry.
        let ca = fleetward_pki::Ca::load(&dir.ca_dir()).unwrap();
        let id = Identity::new(Role::Operator, "admin").unwrap();
        let (cert, _key) = ca
            .issue(&id, Duration::from_secs(86_400), &[], &[])
            .unwrap();
        std::fs::write(dir.operator_cert("admin"), &cert.pem).unwrap();
        // (as if the file had been renewed to this short-lived one before)
        ctl.store()
            .renew_operator("admin", &admin.serial, &cert.serial, 0, now_ms(), now_ms())
            .unwrap();
        assert!(renew_local_admin(&ctl, &dir).unwrap());
        let pem = std::fs::read_to_string(dir.operator_cert("admin")).unwrap();
        let der = fleetward_pki::ca_der_from_pem(&pem).unwrap();
        let new_serial = serial_hex(&der).unwrap();
        assert_ne!(new_serial, cert.serial);
        let left = not_after(&der)
            .unwrap()
            .duration_since(std::time::SystemTime::now())
            .unwrap();
        assert!(left > Duration::from_secs(80 * 86_400), "{left:?}");
        let rec = ctl.store().get_operator("admin").unwrap().unwrap();
        assert_eq!(rec.serial, new_serial);
        assert!(!rec.accepts(&cert.serial, now_ms() + 1));
        assert!(!renew_local_admin(&ctl, &dir).unwrap(), "once is enough");
    }
}
