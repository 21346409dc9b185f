//! The registry of issued operator certificates (tree `operators`: operator name →
//! [`OperatorRecord`] JSON). Revoking an operator puts every serial it was ever issued
//! into `revocations` in the same transaction; a renewal keeps the replaced serial
//! accepted until the new one is first used or its overlap ends (like a node's).

use super::{decode, decode_all, encode, revoke_in, tx_err, Result, Store, StoreError, WriteClass};
use serde::{Deserialize, Serialize};
use sled::transaction::abort;
use sled::Transactional;

/// One operator identity and the certificates issued to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorRecord {
    pub name: String,
    /// `admin`, `operator`, `power` or `viewer` (as in the certificate).
    pub scope: String,
    /// The current certificate.
    pub serial: String,
    pub not_after_ms: u64,
    pub issued_ms: u64,
    pub revoked: bool,
    /// Every serial ever issued under this name, the current one last.
    pub serials: Vec<String>,
    /// The serial the last renewal replaced, accepted until `previous_until_ms` or until
    /// the current one is used.
    #[serde(default)]
    pub previous_serial: Option<String>,
    #[serde(default)]
    pub previous_until_ms: u64,
}

impl OperatorRecord {
    pub fn new(name: &str, scope: &str, serial: &str, not_after_ms: u64, now_ms: u64) -> Self {
        OperatorRecord {
            name: name.to_string(),
            scope: scope.to_string(),
            serial: serial.to_string(),
            not_after_ms,
            issued_ms: now_ms,
            revoked: false,
            serials: vec![serial.to_string()],
            previous_serial: None,
            previous_until_ms: 0,
        }
    }

    /// Whether a certificate with `serial` speaks for this operator at `now_ms`: the
    /// current one, or the one its last renewal replaced during the overlap.
    pub fn accepts(&self, serial: &str, now_ms: u64) -> bool {
        !self.revoked
            && (serial == self.serial
                || (self.previous_serial.as_deref() == Some(serial)
                    && now_ms < self.previous_until_ms))
    }
}

/// Why an operator registry change was refused.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("no operator named '{0}'")]
    Unknown(String),
    #[error("operator '{0}' already exists; revoke it first, or renew its certificate")]
    Exists(String),
    #[error("operator '{0}' is revoked")]
    Revoked(String),
    #[error("certificate {serial} is not the current certificate of operator '{name}'")]
    NotCurrent { name: String, serial: String },
    #[error("operator '{0}' is the last admin; issue another admin first")]
    LastAdmin(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Store {
    pub fn get_operator(&self, name: &str) -> Result<Option<OperatorRecord>> {
        self.operators
            .get(name.as_bytes())?
            .map(|raw| decode("operators", name.as_bytes(), &raw))
            .transpose()
    }

    pub fn list_operators(&self) -> Result<Vec<OperatorRecord>> {
        decode_all("operators", self.operators.iter())
    }

    /// Records a newly issued operator certificate. Refused while an unrevoked operator of
    /// that name exists; a revoked one is replaced (its serials stay revoked and in the
    /// history).
    pub fn add_operator(&self, rec: &OperatorRecord) -> Result<(), OperatorError> {
        self.change_operator(&rec.name, |old| {
            let mut new = rec.clone();
            if let Some(old) = old {
                if !old.revoked {
                    return Err(OperatorError::Exists(rec.name.clone()));
                }
                let mut serials = old.serials;
                serials.extend(new.serials);
                new.serials = serials;
            }
            Ok((Some(new), Vec::new(), ()))
        })
    }

    /// Records an operator certificate found on disk (`init`'s first operator) when the
    /// registry does not know its name yet. Returns whether it was added.
    pub fn adopt_operator(&self, rec: &OperatorRecord) -> Result<bool, OperatorError> {
        self.change_operator(&rec.name, |old| match old {
            Some(_) => Ok((None, Vec::new(), false)),
            None => Ok((Some(rec.clone()), Vec::new(), true)),
        })
    }

    /// Revokes operator `name` and every serial it was ever issued, in one transaction;
    /// refused for the last unrevoked admin. Returns the revoked record.
    pub fn revoke_operator(&self, name: &str) -> Result<OperatorRecord, OperatorError> {
        let others_admin = self
            .list_operators()?
            .iter()
            .any(|o| o.name != name && !o.revoked && o.scope == "admin");
        self.change_operator(name, |old| {
            let mut rec = old.ok_or_else(|| OperatorError::Unknown(name.to_string()))?;
            if rec.scope == "admin" && !rec.revoked && !others_admin {
                return Err(OperatorError::LastAdmin(name.to_string()));
            }
            let mut serials = rec.serials.clone();
            for s in [Some(&rec.serial), rec.previous_serial.as_ref()]
                .into_iter()
                .flatten()
            {
                if !serials.contains(s) {
                    serials.push(s.clone());
                }
            }
            rec.revoked = true;
            rec.previous_serial = None;
            rec.previous_until_ms = 0;
            Ok((Some(rec.clone()), serials, rec))
        })
    }

    /// A renewal of operator `name` from its certificate `serial` (which must speak for it
    /// at `now_ms`): `new_serial` becomes current; `serial` stays accepted until
    /// `overlap_until_ms` or the first use of the new one. An older previous serial is
    /// revoked. Returns the revoked serials.
    pub fn renew_operator(
        &self,
        name: &str,
        serial: &str,
        new_serial: &str,
        not_after_ms: u64,
        now_ms: u64,
        overlap_until_ms: u64,
    ) -> Result<Vec<String>, OperatorError> {
        self.change_operator(name, |old| {
            let mut rec = old.ok_or_else(|| OperatorError::Unknown(name.to_string()))?;
            if rec.revoked {
                return Err(OperatorError::Revoked(name.to_string()));
            }
            if !rec.accepts(serial, now_ms) {
                return Err(OperatorError::NotCurrent {
                    name: name.to_string(),
                    serial: serial.to_string(),
                });
            }
            let mut revoked = Vec::new();
            if serial == rec.serial {
                revoked.extend(rec.previous_serial.take());
                rec.previous_serial = Some(serial.to_string());
                rec.previous_until_ms = overlap_until_ms;
            } else {
                // Renewed again from the previous one: the unused renewal is void.
                revoked.push(rec.serial.clone());
            }
            rec.serial = new_serial.to_string();
            rec.serials.push(new_serial.to_string());
            rec.not_after_ms = not_after_ms;
            Ok((Some(rec), revoked.clone(), revoked))
        })
    }

    /// Operator `name`'s current certificate `serial` is in use: the one it replaced is
    /// revoked. Returns the retired serial.
    pub fn retire_operator_previous(
        &self,
        name: &str,
        serial: &str,
    ) -> Result<Option<String>, OperatorError> {
        self.change_operator(name, |old| {
            let Some(mut rec) = old.filter(|r| r.serial == serial && !r.revoked) else {
                return Ok((None, Vec::new(), None));
            };
            let Some(previous) = rec.previous_serial.take() else {
                return Ok((None, Vec::new(), None));
            };
            rec.previous_until_ms = 0;
            Ok((Some(rec), vec![previous.clone()], Some(previous)))
        })
    }

    /// In ONE transaction over operators and revocations: reads operator `name`, lets `f`
    /// decide the new record (`None`: unchanged), the serials to revoke and the result.
    /// Through the one durable write path ([`Store::durable`], class `Operator`).
    fn change_operator<T>(
        &self,
        name: &str,
        f: impl Fn(
            Option<OperatorRecord>,
        ) -> Result<(Option<OperatorRecord>, Vec<String>, T), OperatorError>,
    ) -> Result<T, OperatorError> {
        let key = name.as_bytes();
        self.durable(WriteClass::Operator, || {
            self.change_operator_unsynced(key, &f)
        })
    }

    fn change_operator_unsynced<T>(
        &self,
        key: &[u8],
        f: &impl Fn(
            Option<OperatorRecord>,
        ) -> Result<(Option<OperatorRecord>, Vec<String>, T), OperatorError>,
    ) -> Result<T, OperatorError> {
        let out = (&self.operators, &self.revocations)
            .transaction(|(operators, revocations)| {
                let old = operators
                    .get(key)?
                    .map(|raw| decode::<OperatorRecord>("operators", key, &raw))
                    .transpose()
                    .map_err(OperatorError::from)
                    .or_else(abort)?;
                let (new, revoke, out) = f(old).or_else(abort)?;
                revoke_in(revocations, &revoke)?;
                if let Some(new) = new {
                    operators.insert(key, encode(&new))?;
                }
                Ok(out)
            })
            .map_err(tx_err)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoking_an_operator_revokes_every_serial_and_spares_the_last_admin() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("db")).unwrap();
        let admin = OperatorRecord::new("admin", "admin", "a1", 10, 1);
        store.add_operator(&admin).unwrap();
        assert!(matches!(
            store.revoke_operator("admin"),
            Err(OperatorError::LastAdmin(_))
        ));
        store
            .add_operator(&OperatorRecord::new("ups", "power", "u1", 10, 1))
            .unwrap();
        assert!(matches!(
            store.add_operator(&OperatorRecord::new("ups", "admin", "u9", 10, 1)),
            Err(OperatorError::Exists(_))
        ));
        let revoked = store.renew_operator("ups", "u1", "u2", 20, 5, 100).unwrap();
        assert!(revoked.is_empty());
        let rec = store.get_operator("ups").unwrap().unwrap();
        assert!(rec.accepts("u1", 50) && rec.accepts("u2", 50) && !rec.accepts("u1", 100));
        assert_eq!(
            store.retire_operator_previous("ups", "u2").unwrap(),
            Some("u1".into())
        );
        assert!(store.is_revoked("u1").unwrap());
        let rec = store.revoke_operator("ups").unwrap();
        assert!(rec.revoked);
        assert!(store.is_revoked("u2").unwrap());
        assert!(!store.is_revoked("a1").unwrap());
        // A revoked name may be issued again; its old serials stay revoked.
        store
            .add_operator(&OperatorRecord::new("ups", "power", "u3", 30, 6))
            .unwrap();
        let rec = store.get_operator("ups").unwrap().unwrap();
        assert_eq!(rec.serials, ["u1", "u2", "u3"]);
        assert!(store.is_revoked("u2").unwrap() && !store.is_revoked("u3").unwrap());
        assert!(!store
            .adopt_operator(&OperatorRecord::new("ups", "admin", "x", 1, 1))
            .unwrap());
    }
}
