//! `controller.toml`: what `serve` needs. `init` writes a commented default.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    /// The controller runs on no cluster node: with `host_node` unset and no node matching
    /// the controller's hostname or addresses, a shutdown starts without
    /// `--yes-host-unknown`.
    #[serde(default)]
    pub host_outside_cluster: bool,
    /// Rollout and shutdown events are POSTed here as JSON (plain `http://` only).
    #[serde(default)]
    pub webhook: Option<String>,
    #[serde(default)]
    pub rollout: RolloutConfig,
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// Limits on connections (TLS handshake, caps, keepalive).
    #[serde(default)]
    pub connections: ConnectionLimits,
    /// Limits on report ingestion (size, rate, disk).
    #[serde(default)]
    pub ingest: IngestLimits,
}

/// Coordinated shutdown and startup (`fleetward shutdown`, `startup`, `power-event`).
/// Durations are milliseconds, like every duration of an orchestration, so that tests and
/// demos can scale them down; the defaults suit real nodes. The waits and bounds of the
/// machine itself are [`crate::shutdown::Timing`]'s keys, in the same section. Unlike a
/// rollout, a passed bound moves the shutdown on (see `shutdown/mod.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "toml::Table")]
pub struct ShutdownConfig {
    /// Explicit power-off tiers, every enrolled node exactly once, e.g.
    /// `[["pve-04", "pve-05"], ["pve-02", "pve-03"], ["pve-01"]]`. Empty: nodes without a
    /// Ceph monitor, then monitor nodes, then `host_node` alone.
    pub tiers: Vec<Vec<String>>,
    /// How HA is kept from fencing or migrating: `auto` (cluster-wide `disarm-ha` when every
    /// online node's report shows the disarm state, else maintenance mode per node),
    /// `disarm` (every node runs pve-ha-manager >= 5.1.3) or `maintenance`.
    pub ha_mode: HaMode,
    /// After a controller restart, how long to wait for the agents it expects before it
    /// steps the operation again (a step on a half-reconnected cluster would count nodes
    /// that are merely reconnecting as down).
    pub recover_grace_ms: u64,
    /// How often the driver re-evaluates (bounds, deadline); keep well under `safety_ms`.
    pub tick_ms: u64,
    /// A shutdown that preempts a rollout (`--preempt`, `power-event on-battery`) waits at
    /// most this long for the rollout's in-flight actions to reach their result.
    pub preempt_wait_ms: u64,
    /// The machine's waits and bounds.
    #[serde(flatten)]
    pub timing: crate::shutdown::Timing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum HaMode {
    #[default]
    Auto,
    Disarm,
    Maintenance,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            tiers: Vec::new(),
            ha_mode: HaMode::Auto,
            recover_grace_ms: 60_000,
            tick_ms: 1000,
            preempt_wait_ms: 300_000,
            timing: crate::shutdown::Timing::default(),
        }
    }
}

impl TryFrom<toml::Table> for ShutdownConfig {
    type Error = String;
    fn try_from(mut t: toml::Table) -> Result<Self, String> {
        let d = ShutdownConfig::default();
        Ok(ShutdownConfig {
            tiers: take(&mut t, "tiers")?.unwrap_or(d.tiers),
            ha_mode: take(&mut t, "ha_mode")?.unwrap_or(d.ha_mode),
            recover_grace_ms: take(&mut t, "recover_grace_ms")?.unwrap_or(d.recover_grace_ms),
            tick_ms: take(&mut t, "tick_ms")?.unwrap_or(d.tick_ms),
            preempt_wait_ms: take(&mut t, "preempt_wait_ms")?.unwrap_or(d.preempt_wait_ms),
            timing: t.try_into().map_err(|e: toml::de::Error| e.to_string())?,
        })
    }
}

/// Takes `key` out of a section read as a table. A section that embeds another type
/// (`#[serde(flatten)]`) is read this way because serde's `deny_unknown_fields` does not
/// work with flattening: the section's own keys are taken out, and the embedded type,
/// which denies unknown keys itself, gets the rest.
fn take<T: serde::de::DeserializeOwned>(
    t: &mut toml::Table,
    key: &str,
) -> Result<Option<T>, String> {
    t.remove(key)
        .map(|v| {
            v.try_into()
                .map_err(|e: toml::de::Error| format!("{key}: {e}"))
        })
        .transpose()
}

/// Rolling updates. Durations are milliseconds; the timeouts are
/// [`crate::rollout::Timeouts`]'s keys, in the same section. Every timeout halts the rollout
/// (nothing proceeds on unknown state); the defaults suit real nodes, tests and the demo
/// shorten them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "toml::Table")]
pub struct RolloutConfig {
    /// How often the driver re-evaluates (and checks timeouts).
    pub tick_ms: u64,
    /// What happens to running guests that are not managed by HA: `shutdown` (the
    /// node's own reboot shuts them down; `onboot` guests start again) or `refuse`
    /// (the node is not started while any runs).
    pub non_ha_guests: NonHaGuests,
    #[serde(flatten)]
    pub timeouts: crate::rollout::Timeouts,
}

impl TryFrom<toml::Table> for RolloutConfig {
    type Error = String;
    fn try_from(mut t: toml::Table) -> Result<Self, String> {
        let d = RolloutConfig::default();
        Ok(RolloutConfig {
            tick_ms: take(&mut t, "tick_ms")?.unwrap_or(d.tick_ms),
            non_ha_guests: take(&mut t, "non_ha_guests")?.unwrap_or(d.non_ha_guests),
            timeouts: t.try_into().map_err(|e: toml::de::Error| e.to_string())?,
        })
    }
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
            tick_ms: 1000,
            non_ha_guests: NonHaGuests::Shutdown,
            timeouts: crate::rollout::Timeouts::default(),
        }
    }
}

/// The shortest certificate lifetime `serve` accepts (agents renew at two thirds of it).
pub const MIN_CERT_SECS: u64 = 60;

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
            host_outside_cluster: false,
            webhook: None,
            rollout: RolloutConfig::default(),
            shutdown: ShutdownConfig::default(),
            connections: ConnectionLimits::default(),
            ingest: IngestLimits::default(),
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

    /// Checks the certificate lifetimes before `serve` starts: each at least
    /// [`MIN_CERT_SECS`], and none longer than `ca_remaining`, the CA's remaining validity
    /// (a certificate cannot outlive the CA that signed it).
    pub fn check_lifetimes(&self, ca_remaining: Duration) -> Result<(), String> {
        for (key, secs) in [
            ("agent_cert_secs", self.agent_cert_secs),
            ("operator_cert_secs", self.operator_cert_secs),
        ] {
            if secs < MIN_CERT_SECS {
                return Err(format!(
                    "{key} = {secs} is too short: a certificate must live at least {MIN_CERT_SECS} s"
                ));
            }
            if secs > ca_remaining.as_secs() {
                return Err(format!(
                    "{key} = {secs} is longer than the CA's remaining validity ({} s, {} days): \
                     certificates would outlive the CA that signed them",
                    ca_remaining.as_secs(),
                    ca_remaining.as_secs() / 86_400
                ));
            }
        }
        Ok(())
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
             # host_node = \"pve-01\"   # found from hostname/addresses when unset\n\
             # host_outside_cluster = true   # the controller runs on no cluster node\n\
             # Rollout/shutdown events POSTed as JSON (plain http).\n\
             # webhook = \"http://127.0.0.1:8080/fleetward\"\n\
             # [rollout]\n\
             # reboot_ms = 1200000   # durations of [rollout] and [shutdown] are milliseconds\n\
             # non_ha_guests = \"shutdown\"   # or \"refuse\"\n\
             # [shutdown]\n\
             # tiers = [[\"pve-04\", \"pve-05\"], [\"pve-02\", \"pve-03\"], [\"pve-01\"]]\n\
             # ha_mode = \"auto\"   # or \"disarm\" (pve-ha-manager >= 5.1.3), \"maintenance\"\n\
             # tier_wait_ms = 300000\n\
             # Limits; the defaults need no tuning (see the README).\n\
             # [connections]\n\
             # tls_handshake_timeout_ms = 10000\n\
             # max_connections = 20000\n\
             # max_unverified_per_ip = 512\n\
             # [ingest]\n\
             # max_report_bytes = 1048576\n\
             # min_free_bytes = 536870912\n",
            self.name,
            self.listen,
            self.agent_cert_secs,
            self.operator_cert_secs,
            self.max_message_bytes,
            self.stale_secs
        )
    }
}

/// `[connections]`: what a connection may hold of the controller (see `listen.rs`). The
/// defaults need no tuning: they admit the 10,000-agent load benchmark with room to spare
/// and close what never completes a handshake.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionLimits {
    /// A TLS handshake not finished this long after the connection was accepted is closed.
    pub tls_handshake_timeout_ms: u64,
    /// Connections open at once (handshaking or serving); at the cap the controller stops
    /// accepting until one closes. Also bounded by the process's file descriptor limit.
    pub max_connections: usize,
    /// Connections per source address that have not completed a handshake with a client
    /// certificate from the CA (handshaking, enrolling, health checks); more are closed at
    /// once.
    pub max_unverified_per_ip: usize,
    /// A connection that completed its handshake without a client certificate (enrollment,
    /// health checks) is closed this long after it was accepted.
    pub unverified_lifetime_ms: u64,
    /// TCP keepalive: idle time before the first probe (probes every 10 s after it).
    pub tcp_keepalive_ms: u64,
    /// HTTP/2 pings on an idle connection, and how long to wait for the answer.
    pub http2_keepalive_interval_ms: u64,
    pub http2_keepalive_timeout_ms: u64,
    /// Concurrent HTTP/2 streams (calls) per connection.
    pub max_concurrent_streams: u32,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            tls_handshake_timeout_ms: 10_000,
            max_connections: 20_000,
            max_unverified_per_ip: 512,
            unverified_lifetime_ms: 60_000,
            tcp_keepalive_ms: 60_000,
            http2_keepalive_interval_ms: 30_000,
            http2_keepalive_timeout_ms: 20_000,
            max_concurrent_streams: 128,
        }
    }
}

/// `[ingest]`: what one node's reports may cost (see `ingest.rs`). A normal agent (a
/// report per inspection interval, on change and after each action) stays far below the
/// rate; a report over a limit is refused (RESOURCE_EXHAUSTED) and not stored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestLimits {
    /// Largest report JSON accepted (the seed report is about 11 KB).
    pub max_report_bytes: usize,
    /// Per node: reports per minute on average, and how many may come at once.
    pub reports_per_min: u32,
    pub report_burst: u32,
    /// Per node: report bytes per minute on average, and how many may come at once.
    pub report_bytes_per_min: u64,
    pub report_burst_bytes: u64,
    /// Below this much free space on the data directory's file system reports are refused
    /// (UNAVAILABLE; the agent keeps its report and retries).
    pub min_free_bytes: u64,
    /// The report journal is compacted after this many bytes written, besides every
    /// minute.
    pub compact_after_bytes: u64,
}

impl Default for IngestLimits {
    fn default() -> Self {
        IngestLimits {
            max_report_bytes: 1024 * 1024,
            reports_per_min: 30,
            report_burst: 60,
            report_bytes_per_min: 8 * 1024 * 1024,
            report_burst_bytes: 16 * 1024 * 1024,
            min_free_bytes: 512 * 1024 * 1024,
            compact_after_bytes: 64 * 1024 * 1024,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::Timeouts;

    #[test]
    fn nonsensical_lifetimes_are_refused() {
        let year = Duration::from_secs(365 * 86_400);
        let ok = Config::new("lab", None);
        assert_eq!(ok.check_lifetimes(10 * year), Ok(()));
        let mut c = ok.clone();
        c.agent_cert_secs = 0;
        let e = c.check_lifetimes(10 * year).unwrap_err();
        assert!(e.contains("agent_cert_secs = 0"), "{e}");
        let mut c = ok.clone();
        c.operator_cert_secs = 0;
        let e = c.check_lifetimes(10 * year).unwrap_err();
        assert!(e.contains("operator_cert_secs = 0"), "{e}");
        let mut c = ok.clone();
        c.agent_cert_secs = u64::MAX;
        let e = c.check_lifetimes(10 * year).unwrap_err();
        assert!(e.contains("remaining validity"), "{e}");
        // The default operator lifetime does not fit a CA with a month left.
        let e = ok.check_lifetimes(year / 12).unwrap_err();
        assert!(e.contains("operator_cert_secs"), "{e}");
    }

    #[test]
    fn init_output_parses_back() {
        let c = Config::new("homelab", Some("127.0.0.1:7443"));
        assert_eq!(
            Config::parse(Path::new("x"), &c.to_commented_toml()).unwrap(),
            c
        );
    }

    #[test]
    fn orchestration_sections_embed_the_machines_timing_and_refuse_unknown_keys() {
        let base = Config::new("t", None).to_commented_toml();
        let text = base.clone()
            + "[rollout]\nreboot_ms = 6000\ntick_ms = 100\nnon_ha_guests = \"refuse\"\n\
               [shutdown]\ntier_wait_ms = 5000\nrecover_grace_ms = 10\nha_mode = \"disarm\"\n";
        let c = Config::parse(Path::new("x"), &text).unwrap();
        assert_eq!(c.rollout.timeouts.reboot_ms, 6000);
        assert_eq!(c.rollout.timeouts.action_ms, Timeouts::default().action_ms);
        assert_eq!(
            (c.rollout.tick_ms, c.rollout.non_ha_guests),
            (100, NonHaGuests::Refuse)
        );
        assert_eq!(c.shutdown.timing.tier_wait_ms, 5000);
        assert_eq!(
            (c.shutdown.recover_grace_ms, c.shutdown.ha_mode),
            (10, HaMode::Disarm)
        );
        for bad in [
            "[rollout]\nreboot_timeout_secs = 60\n",
            "[shutdown]\ntier_wait = 5\n",
            "[rollout]\ntick_ms = \"fast\"\n",
        ] {
            let e = Config::parse(Path::new("x"), &(base.clone() + bad)).unwrap_err();
            let what = bad.lines().nth(1).unwrap().split(' ').next().unwrap();
            assert!(e.to_string().contains(what), "{bad}: {e}");
        }
    }

    #[test]
    fn limit_sections_parse_with_defaults_and_refuse_unknown_keys() {
        let base = Config::new("t", None).to_commented_toml();
        let c = Config::parse(
            Path::new("x"),
            &(base.clone()
                + "[connections]\ntls_handshake_timeout_ms = 1500\n[ingest]\nmin_free_bytes = 0\n"),
        )
        .unwrap();
        assert_eq!(c.connections.tls_handshake_timeout_ms, 1500);
        assert_eq!(
            c.connections.max_connections,
            ConnectionLimits::default().max_connections
        );
        assert_eq!(c.ingest.min_free_bytes, 0);
        assert_eq!(c.ingest.max_report_bytes, 1024 * 1024);
        for bad in [
            "[connections]\nhandshake_timeout = 5\n",
            "[ingest]\nmax_report_size = 5\n",
        ] {
            let e = Config::parse(Path::new("x"), &(base.clone() + bad)).unwrap_err();
            let what = bad.lines().nth(1).unwrap().split(' ').next().unwrap();
            assert!(e.to_string().contains(what), "{bad}: {e}");
        }
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
