//! The agent's state directory (default `/var/lib/fleetward-agent`, mode 0700):
//!
//! | file | contents |
//! |---|---|
//! | `agent.key` | the node's private key (0600; made on the node, never sent anywhere) |
//! | `agent.crt` | the node's client certificate |
//! | `ca.crt` | the fleetward CA, the only root trusted for the controller |
//! | `agent.toml` | controller URL and node name |
//! | `commands.json` | ids of recently executed commands (for at-most-once execution) |
//!
//! Every file is replaced atomically. A renewal writes `agent.key.new` then `agent.crt.new`
//! and renames both into place; [`StateDir::load`] finishes an interrupted renewal, so the key
//! and certificate on disk always belong together.

use super::Error;
use fleetward_pki::{self as pki, KeyPairPem};
use serde::{Deserialize, Serialize};
use std::collections::{HashSet, VecDeque};
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

pub const DEFAULT_STATE_DIR: &str = "/var/lib/fleetward-agent";
/// How many command ids `commands.json` remembers.
pub const SEEN_COMMANDS_MAX: usize = 1000;

const KEY: &str = "agent.key";
const CERT: &str = "agent.crt";
const CA: &str = "ca.crt";
const CONFIG: &str = "agent.toml";
const COMMANDS: &str = "commands.json";

/// `agent.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentConfig {
    /// `https://host:port` of the controller.
    pub controller: String,
    pub node_name: String,
}

/// What a session needs: who we are and whom we trust.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub config: AgentConfig,
    pub key: KeyPairPem,
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    pub ca_pem: String,
}

#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

fn rename(from: &Path, to: &Path) -> Result<(), Error> {
    fs::rename(from, to).map_err(io_err(from))
}

impl StateDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StateDir { dir: dir.into() }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A key or certificate is already there.
    pub fn has_identity(&self) -> bool {
        [KEY, CERT].iter().any(|f| self.file(f).exists())
    }

    fn read(&self, name: &str) -> Result<String, Error> {
        let path = self.file(name);
        fs::read_to_string(&path).map_err(|e| match e.kind() {
            ErrorKind::NotFound => Error::NotEnrolled(self.dir.clone()),
            _ => io_err(&path)(e),
        })
    }

    fn write_public(&self, name: &str, text: &str) -> Result<(), Error> {
        let path = self.file(name);
        pki::write_public(&path, text).map_err(io_err(&path))
    }

    fn write_key(&self, name: &str, key: &KeyPairPem) -> Result<(), Error> {
        let path = self.file(name);
        pki::write_private_key(&path, key.pem()).map_err(io_err(&path))
    }

    /// Stores a fresh enrollment (creating the directory 0700), replacing any old identity.
    pub fn save_enrollment(
        &self,
        config: &AgentConfig,
        key: &KeyPairPem,
        cert_pem: &str,
        ca_pem: &str,
    ) -> Result<(), Error> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(io_err(&self.dir))?;
        for stale in [format!("{KEY}.new"), format!("{CERT}.new")] {
            let _ = fs::remove_file(self.file(&stale));
        }
        let toml = toml::to_string(config).map_err(|e| Error::Format {
            path: self.file(CONFIG),
            message: e.to_string(),
        })?;
        self.write_key(KEY, key)?;
        self.write_public(CERT, cert_pem)?;
        self.write_public(CA, ca_pem)?;
        self.write_public(CONFIG, &toml)
    }

    /// Replaces key and certificate after a renewal (see the module docs).
    pub fn save_renewal(&self, key: &KeyPairPem, cert_pem: &str) -> Result<(), Error> {
        self.write_key(&format!("{KEY}.new"), key)?;
        self.write_public(&format!("{CERT}.new"), cert_pem)?;
        self.finish_renewal()
    }

    /// `agent.crt.new` exists only once both new files are complete: then move both in.
    /// A lone `agent.key.new` is a renewal that never got its certificate: drop it.
    fn finish_renewal(&self) -> Result<(), Error> {
        let (key_new, cert_new) = (
            self.file(&format!("{KEY}.new")),
            self.file(&format!("{CERT}.new")),
        );
        if cert_new.exists() {
            if key_new.exists() {
                rename(&key_new, &self.file(KEY))?;
            }
            rename(&cert_new, &self.file(CERT))?;
        } else if key_new.exists() {
            fs::remove_file(&key_new).map_err(io_err(&key_new))?;
        }
        Ok(())
    }

    /// Loads everything a session needs.
    pub fn load(&self) -> Result<Credentials, Error> {
        self.finish_renewal()?;
        let config_text = self.read(CONFIG)?;
        let config: AgentConfig = toml::from_str(&config_text).map_err(|e| Error::Format {
            path: self.file(CONFIG),
            message: e.to_string(),
        })?;
        let cert_pem = self.read(CERT)?;
        Ok(Credentials {
            config,
            key: KeyPairPem::new(self.read(KEY)?),
            cert_der: pki::ca_der_from_pem(&cert_pem)?,
            cert_pem,
            ca_pem: self.read(CA)?,
        })
    }

    /// The seen-commands store of this directory (empty if `commands.json` is missing).
    pub fn seen_commands(&self) -> Result<SeenCommands, Error> {
        SeenCommands::load(self.file(COMMANDS))
    }
}

/// Ids of the most recent [`SEEN_COMMANDS_MAX`] commands, oldest first, persisted as a JSON
/// array: a command re-sent after a reconnect or restart is not executed again.
#[derive(Debug)]
pub struct SeenCommands {
    path: PathBuf,
    max: usize,
    order: VecDeque<String>,
    set: HashSet<String>,
}

impl SeenCommands {
    pub fn load(path: PathBuf) -> Result<Self, Error> {
        Self::load_bounded(path, SEEN_COMMANDS_MAX)
    }

    /// Like [`SeenCommands::load`], remembering at most `max` ids.
    pub fn load_bounded(path: PathBuf, max: usize) -> Result<Self, Error> {
        let ids: Vec<String> = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Format {
                path: path.clone(),
                message: e.to_string(),
            })?,
            Err(e) if e.kind() == ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let mut seen = SeenCommands {
            path,
            max,
            order: VecDeque::new(),
            set: HashSet::new(),
        };
        for id in ids {
            seen.remember(id);
        }
        Ok(seen)
    }

    pub fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    fn remember(&mut self, id: String) -> bool {
        if !self.set.insert(id.clone()) {
            return false;
        }
        self.order.push_back(id);
        while self.order.len() > self.max {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }

    /// Records `id` and writes the file atomically. `Ok(false)`: it was already there.
    /// When writing fails the id is still remembered in memory.
    pub fn insert(&mut self, id: &str) -> Result<bool, Error> {
        if !self.remember(id.to_owned()) {
            return Ok(false);
        }
        let json = serde_json::to_string(&self.order).map_err(|e| Error::Format {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        pki::write_public(&self.path, &json).map_err(io_err(&self.path))?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetward_pki::{generate_key_and_csr, Ca, Identity, Role};
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    #[test]
    fn seen_commands_dedupe_bound_and_survive_reload() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let mut seen = state.seen_commands().unwrap();
        assert!(seen.is_empty());
        assert!(seen.insert("c1").unwrap());
        assert!(!seen.insert("c1").unwrap());
        assert!(state.seen_commands().unwrap().contains("c1"));
        // Bounded: the oldest ids go first, on disk too.
        let path = dir.path().join(COMMANDS);
        let mut small = SeenCommands::load_bounded(path.clone(), 10).unwrap();
        for i in 0..15 {
            small.insert(&format!("x{i}")).unwrap();
        }
        let reloaded = SeenCommands::load_bounded(path, 10).unwrap();
        assert_eq!(reloaded.len(), 10);
        assert!(!reloaded.contains("c1") && !reloaded.contains("x4"));
        assert!(reloaded.contains("x5") && reloaded.contains("x14"));
        // A file longer than the bound is trimmed on load.
        let path = dir.path().join(COMMANDS);
        assert_eq!(SeenCommands::load_bounded(path, 3).unwrap().len(), 3);
        // A corrupt file is an error, not a silent reset.
        fs::write(dir.path().join(COMMANDS), "{").unwrap();
        assert!(matches!(state.seen_commands(), Err(Error::Format { .. })));
    }

    #[test]
    fn enrollment_and_renewal_files() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().join("state"));
        assert!(matches!(state.load(), Err(Error::NotEnrolled(_))));
        assert!(!state.has_identity());

        let ca = Ca::generate("lab").unwrap();
        let ident = Identity::new(Role::Agent, "pve1").unwrap();
        let issue = || {
            let (key, csr) = generate_key_and_csr(&ident).unwrap();
            let cert = ca
                .sign_csr(&csr, &ident, Duration::from_secs(3600))
                .unwrap();
            (key, cert.pem)
        };
        let config = AgentConfig {
            controller: "https://127.0.0.1:7443".into(),
            node_name: "pve1".into(),
        };
        let (key, cert) = issue();
        state
            .save_enrollment(&config, &key, &cert, ca.cert_pem())
            .unwrap();
        assert!(state.has_identity());
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(state.path()), 0o700);
        assert_eq!(mode(&state.file(KEY)), 0o600);
        assert_eq!(mode(&state.file(CERT)), 0o644);
        let creds = state.load().unwrap();
        assert_eq!(creds.config, config);
        assert_eq!(creds.key, key);
        assert_eq!(creds.cert_pem, cert);

        let (key2, cert2) = issue();
        state.save_renewal(&key2, &cert2).unwrap();
        let creds = state.load().unwrap();
        assert_eq!((creds.key, creds.cert_pem), (key2.clone(), cert2.clone()));
        assert_eq!(mode(&state.file(KEY)), 0o600);

        // Interrupted renewals: a lone new key is dropped; a complete pair is moved in.
        let (key3, cert3) = issue();
        state.write_key("agent.key.new", &key3).unwrap();
        assert_eq!(state.load().unwrap().key, key2);
        assert!(!state.file("agent.key.new").exists());
        state.write_key("agent.key.new", &key3).unwrap();
        state.write_public("agent.crt.new", &cert3).unwrap();
        let creds = state.load().unwrap();
        assert_eq!((creds.key, creds.cert_pem), (key3, cert3));
        let names: Vec<_> = fs::read_dir(state.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 4, "{names:?}");
    }
}
