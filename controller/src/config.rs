//! `controller.toml`: what `serve` needs. `init` writes a commented default.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source} (run `fleetward init --data-dir DIR` first, or pass --config)")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid controller configuration: {message}")]
    Parse { path: PathBuf, message: String },
}

/// The controller's configuration. Every field has a default except what `init` writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The cluster name (the CA's common name carries it).
    pub name: String,
    /// Data directory (CA, server identity, database). Default: the directory holding
    /// the configuration file.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Where agents and operators connect, e.g. `0.0.0.0:7443`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Lifetime of agent certificates; agents renew at two thirds of it.
    #[serde(default = "default_agent_cert_secs")]
    pub agent_cert_secs: u64,
    /// Lifetime of operator certificates issued by `operator issue`.
    #[serde(default = "default_operator_cert_secs")]
    pub operator_cert_secs: u64,
    /// Largest message accepted from a client; larger ones are refused.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// A node without a report or heartbeat for this long is offline (`node.stale`).
    #[serde(default = "default_stale_secs")]
    pub stale_secs: u64,
    /// The desired-state policy (TOML, kept in version control); none by default.
    /// Reloaded on SIGHUP and by `fleetward policy reload`.
    #[serde(default)]
    pub policy: Option<PathBuf>,
    /// Serve Prometheus metrics over plain HTTP here (off by default; loopback only
    /// unless `metrics_allow_remote`).
    #[serde(default)]
    pub metrics_listen: Option<String>,
    #[serde(default)]
    pub metrics_allow_remote: bool,
    /// The Proxmox node this controller runs on: a rollout takes it last (alone), a
    /// shutdown powers it off last.
    #[serde(default)]
    pub host_node: Option<String>,
    /// Rollout and shutdown events are POSTed here as JSON (plain `http://` only).
    #[serde(default)]
    pub webhook: Option<String>,
    #[serde(default)]
    pub rollout: RolloutConfig,
}

/// Timeouts of rolling updates. Every timeout halts the rollout (nothing proceeds on
/// unknown state); the defaults suit real nodes, tests and the demo shorten them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutConfig {
    /// Waiting for one action's result (an upgrade can take long).
    pub action_timeout_secs: u64,
    /// Waiting for a fresh report after the upgrade.
    pub refresh_timeout_secs: u64,
    /// Waiting for a rebooted node to come back with a new boot id.
    pub reboot_timeout_secs: u64,
    /// Waiting for the post-reboot gate to pass.
    pub post_reboot_timeout_secs: u64,
    /// A node not heard from for longer counts as offline.
    pub max_silence_secs: u64,
    /// How often the driver re-evaluates (and checks timeouts), milliseconds.
    pub tick_ms: u64,
    /// What happens to running guests that are not managed by HA: `shutdown` (the
    /// node's own reboot shuts them down; `onboot` guests start again) or `refuse`
    /// (the node is not started while any runs).
    pub non_ha_guests: NonHaGuests,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum NonHaGuests {
    #[default]
    Shutdown,
    Refuse,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        RolloutConfig {
            action_timeout_secs: 2 * 3600,
            refresh_timeout_secs: 300,
            reboot_timeout_secs: 1200,
            post_reboot_timeout_secs: 600,
            max_silence_secs: 120,
            tick_ms: 1000,
            non_ha_guests: NonHaGuests::Shutdown,
        }
    }
}

fn default_listen() -> String {
    "0.0.0.0:7443".into()
}
fn default_agent_cert_secs() -> u64 {
    24 * 3600
}
fn default_operator_cert_secs() -> u64 {
    365 * 24 * 3600
}
fn default_max_message_bytes() -> usize {
    4 * 1024 * 1024
}
fn default_stale_secs() -> u64 {
    180
}

impl Config {
    pub fn new(name: &str, listen: Option<&str>) -> Self {
        Config {
            name: name.to_string(),
            data_dir: None,
            listen: listen.map_or_else(default_listen, String::from),
            agent_cert_secs: default_agent_cert_secs(),
            operator_cert_secs: default_operator_cert_secs(),
            max_message_bytes: default_max_message_bytes(),
            stale_secs: default_stale_secs(),
            policy: None,
            metrics_listen: None,
            metrics_allow_remote: false,
            host_node: None,
            webhook: None,
            rollout: RolloutConfig::default(),
        }
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg = Self::parse(path, &text)?;
        if cfg.data_dir.is_none() {
            cfg.data_dir = path.parent().map(Path::to_path_buf);
        }
        Ok(cfg)
    }

    /// The file `init` writes: every setting, commented.
    pub fn to_commented_toml(&self) -> String {
        format!(
            "# fleetward controller configuration (written by `fleetward init`).\n\
             # The cluster name, carried in the CA's common name.\n\
             name = {:?}\n\
             # Address agents and operators connect to.\n\
             listen = {:?}\n\
             # Agent certificate lifetime in seconds; agents renew at two thirds of it.\n\
             agent_cert_secs = {}\n\
             # Operator certificate lifetime in seconds.\n\
             operator_cert_secs = {}\n\
             # Largest gRPC message accepted, in bytes.\n\
             max_message_bytes = {}\n\
             # Seconds without a report or heartbeat before a node counts as stale.\n\
             stale_secs = {}\n\
             # The desired state (see packaging/policy/seed.toml); reloaded on SIGHUP.\n\
             # policy = \"/etc/fleetward/policy.toml\"\n\
             # Prometheus metrics over plain HTTP (off by default; loopback only).\n\
             # metrics_listen = \"127.0.0.1:9464\"\n\
             # The Proxmox node this controller runs on (rollouts take it last).\n\
             # host_node = \"pve-01\"\n\
             # Rollout/shutdown events POSTed as JSON (plain http).\n\
             # webhook = \"http://127.0.0.1:8080/fleetward\"\n\
             # [rollout]\n\
             # reboot_timeout_secs = 1200\n\
             # non_ha_guests = \"shutdown\"   # or \"refuse\"\n",
            self.name,
            self.listen,
            self.agent_cert_secs,
            self.operator_cert_secs,
            self.max_message_bytes,
            self.stale_secs
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_output_parses_back() {
        let c = Config::new("homelab", Some("127.0.0.1:7443"));
        assert_eq!(
            Config::parse(Path::new("x"), &c.to_commented_toml()).unwrap(),
            c
        );
    }

    #[test]
    fn errors_name_the_file() {
        let e =
            Config::parse(Path::new("/etc/fleetward/controller.toml"), "name = 3\n").unwrap_err();
        assert!(
            e.to_string().contains("/etc/fleetward/controller.toml"),
            "{e}"
        );
        let e = Config::parse(Path::new("c.toml"), "name = \"x\"\nlisen = \"typo\"\n").unwrap_err();
        assert!(e.to_string().contains("lisen"), "{e}");
        let e = Config::load(Path::new("/nonexistent/controller.toml")).unwrap_err();
        assert!(e.to_string().contains("fleetward init"), "{e}");
    }
}
