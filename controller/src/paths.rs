//! The controller's data directory layout, shared by `init`, `serve` and the CLI client.
//!
//! ```text
//! D/controller.toml          serve's configuration, written by `init`
//! D/ca/ca.crt, D/ca/ca.key   the cluster CA (key 0600)
//! D/server.crt, server.key   the controller's TLS identity (leaf + CA chain; key 0600)
//! D/operators/NAME.crt/.key  operator identities; `init` creates `admin`
//! D/listen.addr              the address `serve` actually bound (written after binding, removed on exit)
//! D/db/                      the sled database (only `store` touches it)
//! D/db/fleetward-journal/    reports and fact changes: the report journal (`store::journal`)
//! ```

use std::path::{Path, PathBuf};

/// The first operator `init` creates.
pub const FIRST_OPERATOR: &str = "admin";

#[derive(Debug, Clone)]
pub struct DataDir(PathBuf);

impl DataDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        DataDir(path.into())
    }
    pub fn root(&self) -> &Path {
        &self.0
    }
    pub fn config(&self) -> PathBuf {
        self.0.join("controller.toml")
    }
    pub fn ca_dir(&self) -> PathBuf {
        self.0.join("ca")
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.ca_dir().join("ca.crt")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.0.join("server.crt")
    }
    pub fn server_key(&self) -> PathBuf {
        self.0.join("server.key")
    }
    pub fn operator_cert(&self, name: &str) -> PathBuf {
        self.0.join("operators").join(format!("{name}.crt"))
    }
    pub fn operator_key(&self, name: &str) -> PathBuf {
        self.0.join("operators").join(format!("{name}.key"))
    }
    pub fn listen_addr(&self) -> PathBuf {
        self.0.join("listen.addr")
    }
    pub fn db(&self) -> PathBuf {
        self.0.join("db")
    }
}
