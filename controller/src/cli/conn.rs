//! Where the controller is and who we are: credential resolution and the mTLS channel.
//!
//! Precedence, per field: `--controller` / `FLEETWARD_CONTROLLER`, `FLEETWARD_CA`,
//! `FLEETWARD_CERT`, `FLEETWARD_KEY` win; otherwise `--data-dir` (the first operator's
//! identity and the address `serve` bound) if given, else the client config (`--config`,
//! default `~/.config/fleetward/cli.toml`).

use super::{CliError, ClientOpts};
use crate::config::Config;
use crate::paths::{DataDir, FIRST_OPERATOR};
use fleetward_proto::api::operator_service_client::OperatorServiceClient;
use serde::{Deserialize, Serialize};
use std::io::ErrorKind;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Everything needed to call the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Creds {
    /// `https://host:port`.
    pub controller: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `cli.toml`. Relative paths are relative to the file's directory.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CliConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub controller: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

const HELP: &str = "pass --data-dir DIR (on the controller host) or --config FILE (default \
    ~/.config/fleetward/cli.toml, written by `fleetward operator issue NAME --write-config DIR`), \
    or set FLEETWARD_CONTROLLER, FLEETWARD_CA, FLEETWARD_CERT and FLEETWARD_KEY";

/// The file's text, or `None` if it does not exist.
fn read_if_exists(path: &Path) -> Result<Option<String>, CliError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(config_err!("cannot read {}: {e}", path.display())),
    }
}

pub(crate) fn read(path: &Path) -> Result<String, CliError> {
    read_if_exists(path)?.ok_or_else(|| config_err!("{} does not exist", path.display()))
}

/// Resolves the credentials; `env` looks up environment variables (injected for tests).
pub(crate) fn resolve(
    opts: &ClientOpts,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Creds, CliError> {
    let (base, source) = if let Some(dir) = &opts.data_dir {
        (
            from_data_dir(&DataDir::new(dir))?,
            format!("data dir {}", dir.display()),
        )
    } else if let Some(path) = &opts.config {
        (
            parse_cli_config(path, &read(path)?)?,
            path.display().to_string(),
        )
    } else if let Some(home) = env("HOME") {
        let path = Path::new(&home).join(".config/fleetward/cli.toml");
        match read_if_exists(&path)? {
            Some(text) => (parse_cli_config(&path, &text)?, path.display().to_string()),
            None => (
                CliConfig::default(),
                format!("{} (missing)", path.display()),
            ),
        }
    } else {
        (CliConfig::default(), "no config ($HOME is not set)".into())
    };
    let path = |var: &str, base: Option<PathBuf>| env(var).map(PathBuf::from).or(base);
    let controller = opts
        .controller
        .clone()
        .or_else(|| env("FLEETWARD_CONTROLLER"));
    let fields = (
        controller.or(base.controller),
        path("FLEETWARD_CA", base.ca),
        path("FLEETWARD_CERT", base.cert),
        path("FLEETWARD_KEY", base.key),
    );
    let (Some(controller), Some(ca), Some(cert), Some(key)) = fields else {
        let missing = [
            fields.0.is_none().then_some("controller address"),
            fields.1.is_none().then_some("CA certificate"),
            fields.2.is_none().then_some("operator certificate"),
            fields.3.is_none().then_some("operator key"),
        ];
        let missing: Vec<&str> = missing.into_iter().flatten().collect();
        let what = match missing.len() {
            4 => "no client configuration".to_owned(),
            _ => format!("no {} configured", missing.join(", ")),
        };
        return Err(config_err!("{what} (from {source}): {HELP}"));
    };
    let controller = controller_url(&controller)?;
    Ok(Creds {
        controller,
        ca,
        cert,
        key,
    })
}

fn parse_cli_config(path: &Path, text: &str) -> Result<CliConfig, CliError> {
    let mut cfg: CliConfig = toml::from_str(text)
        .map_err(|e| config_err!("{} is not a valid client config: {e}", path.display()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    for p in [&mut cfg.ca, &mut cfg.cert, &mut cfg.key]
        .into_iter()
        .flatten()
    {
        *p = dir.join(&*p);
    }
    Ok(cfg)
}

fn from_data_dir(dir: &DataDir) -> Result<CliConfig, CliError> {
    if !dir.root().is_dir() {
        let d = dir.root().display();
        return Err(config_err!(
            "data dir {d} does not exist (run `fleetward init --data-dir {d}` first)"
        ));
    }
    let controller = match read_if_exists(&dir.listen_addr())? {
        Some(addr) => Some(addr.trim().to_owned()),
        None => match read_if_exists(&dir.config())? {
            Some(text) => Some(
                Config::parse(&dir.config(), &text)
                    .map_err(|e| config_err!("{e}"))?
                    .listen,
            ),
            None => {
                let d = dir.root().display();
                return Err(config_err!(
                    "{d} is not a fleetward data dir (it has no controller.toml): point \
                     --data-dir at the controller's (e.g. /var/lib/fleetward), or run \
                     `fleetward init --data-dir {d}` to make one"
                ));
            }
        },
    };
    Ok(CliConfig {
        controller,
        ca: Some(dir.ca_cert()),
        cert: Some(dir.operator_cert(FIRST_OPERATOR)),
        key: Some(dir.operator_key(FIRST_OPERATOR)),
    })
}

/// `host:port` or a URL → an `https://` URL; a wildcard bind address becomes loopback.
pub(crate) fn controller_url(s: &str) -> Result<String, CliError> {
    let s = s.trim();
    if let Some((scheme, _)) = s.split_once("://") {
        return match scheme {
            "https" => Ok(s.trim_end_matches('/').to_owned()),
            _ => Err(config_err!("controller URL {s:?} must use https://")),
        };
    }
    let addr = match s.parse::<SocketAddr>() {
        Ok(mut a) if a.ip().is_unspecified() => {
            a.set_ip(match a {
                SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
            });
            a.to_string()
        }
        _ => s.to_owned(),
    };
    Ok(format!("https://{addr}"))
}

/// The error and its sources, "outer: inner: innermost", without repeats.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    chain_onto(e.to_string(), e.source())
}

/// `out`, then each error of the chain from `source` that `out` does not already say.
pub(crate) fn chain_onto(mut out: String, mut source: Option<&dyn std::error::Error>) -> String {
    while let Some(s) = source {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out = format!("{out}: {msg}");
        }
        source = s.source();
    }
    out
}

/// Connects with mutual TLS (connect timeout 5 s, per-request timeout 30 s).
pub(crate) async fn connect(creds: &Creds) -> Result<OperatorServiceClient<Channel>, CliError> {
    Ok(OperatorServiceClient::new(channel(creds).await?))
}

/// The CLI warns on stderr when its own certificate expires within this time.
pub(crate) const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// The warning for a certificate at `path` that ends at `not_after`, if it ends within
/// [`EXPIRY_WARNING`] of `now`.
pub(crate) fn expiry_warning(
    path: &Path,
    not_after: std::time::SystemTime,
    now: std::time::SystemTime,
) -> Option<String> {
    let when = super::output::rfc3339(crate::clock::ms(not_after) as i64);
    match not_after.duration_since(now) {
        Err(_) => Some(format!(
            "warning: this client's certificate {} expired at {when}; an admin issues a new one              (`fleetward operator issue`)",
            path.display()
        )),
        Ok(left) if left < EXPIRY_WARNING => Some(format!(
            "warning: this client's certificate {} expires in {} days (at {when}); renew it now              with `fleetward operator renew`",
            path.display(),
            left.as_secs() / 86_400
        )),
        Ok(_) => None,
    }
}

/// The mutual-TLS channel every service client of the CLI uses. Warns once per process
/// on stderr when the client certificate expires soon.
pub(crate) async fn channel(creds: &Creds) -> Result<Channel, CliError> {
    let cert_pem = read(&creds.cert)?;
    static WARNED: std::sync::Once = std::sync::Once::new();
    let not_after = fleetward_pki::ca_der_from_pem(&cert_pem)
        .ok()
        .and_then(|der| fleetward_pki::not_after(&der).ok());
    if let Some(w) =
        not_after.and_then(|t| expiry_warning(&creds.cert, t, std::time::SystemTime::now()))
    {
        WARNED.call_once(|| eprintln!("fleetward: {w}"));
    }
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&creds.ca)?))
        .identity(Identity::from_pem(cert_pem, read(&creds.key)?));
    let url = &creds.controller;
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| config_err!("invalid controller URL {url:?}: {}", chain(&e)))?
        .tls_config(tls)
        .map_err(|e| config_err!("TLS configuration: {}", chain(&e)))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30));
    let channel = (endpoint.connect().await).map_err(|e| {
        CliError::Unreachable(format!(
            "cannot reach the controller at {url}: {} (is `fleetward serve` running there?)",
            chain(&e)
        ))
    })?;
    Ok(channel)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Format;
    use std::collections::HashMap;

    fn opts(data_dir: Option<&Path>, config: Option<&Path>) -> ClientOpts {
        ClientOpts {
            data_dir: data_dir.map(Path::to_path_buf),
            config: config.map(Path::to_path_buf),
            controller: None,
            output: Format::Text,
        }
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn data_dir(listen_addr: Option<&str>) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let toml = Config::new("lab", Some("10.0.0.5:7443")).to_commented_toml();
        std::fs::write(d.path().join("controller.toml"), toml).unwrap();
        if let Some(a) = listen_addr {
            std::fs::write(d.path().join("listen.addr"), a).unwrap();
        }
        d
    }

    #[test]
    fn data_dir_uses_first_operator_and_listen_addr() {
        let d = data_dir(Some("0.0.0.0:7443\n"));
        let c = resolve(&opts(Some(d.path()), None), &env(&[])).unwrap();
        assert_eq!(c.controller, "https://127.0.0.1:7443");
        assert_eq!(c.ca, d.path().join("ca/ca.crt"));
        assert_eq!(c.cert, d.path().join("operators/admin.crt"));
        assert_eq!(c.key, d.path().join("operators/admin.key"));
        // Without listen.addr, controller.toml's `listen`.
        let d = data_dir(None);
        let c = resolve(&opts(Some(d.path()), None), &env(&[])).unwrap();
        assert_eq!(c.controller, "https://10.0.0.5:7443");
    }

    #[test]
    fn wildcard_addresses_become_loopback() {
        assert_eq!(
            controller_url("0.0.0.0:7443").unwrap(),
            "https://127.0.0.1:7443"
        );
        assert_eq!(controller_url("[::]:7443").unwrap(), "https://[::1]:7443");
        assert_eq!(
            controller_url("ctl.lan:7443").unwrap(),
            "https://ctl.lan:7443"
        );
        assert_eq!(controller_url("https://ctl:1/").unwrap(), "https://ctl:1");
        assert!(matches!(
            controller_url("http://ctl:1"),
            Err(CliError::Config(_))
        ));
    }

    #[test]
    fn cli_toml_paths_are_relative_to_it() {
        let d = tempfile::tempdir().unwrap();
        let cfg = d.path().join("cli.toml");
        let text = "controller = \"https://ctl:7443\"\nca = \"ca.crt\"\ncert = \"/abs/op.crt\"\nkey = \"op.key\"\n";
        std::fs::write(&cfg, text).unwrap();
        let c = resolve(&opts(None, Some(&cfg)), &env(&[])).unwrap();
        let expected = Creds {
            controller: "https://ctl:7443".into(),
            ca: d.path().join("ca.crt"),
            cert: "/abs/op.crt".into(),
            key: d.path().join("op.key"),
        };
        assert_eq!(c, expected);
        // The default location is under $HOME.
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(home.path().join(".config/fleetward")).unwrap();
        std::fs::copy(&cfg, home.path().join(".config/fleetward/cli.toml")).unwrap();
        let c = resolve(
            &opts(None, None),
            &env(&[("HOME", home.path().to_str().unwrap())]),
        )
        .unwrap();
        assert_eq!(c.controller, "https://ctl:7443");
        assert_eq!(c.ca, home.path().join(".config/fleetward/ca.crt"));
    }

    #[test]
    fn env_wins_over_data_dir_and_config() {
        let d = data_dir(Some("127.0.0.1:7443"));
        let e = env(&[
            ("FLEETWARD_CONTROLLER", "ctl:9"),
            ("FLEETWARD_CA", "/e/ca"),
            ("FLEETWARD_KEY", "/e/key"),
        ]);
        let c = resolve(&opts(Some(d.path()), None), &e).unwrap();
        assert_eq!(
            (c.controller.as_str(), c.ca.as_path(), c.key.as_path()),
            ("https://ctl:9", Path::new("/e/ca"), Path::new("/e/key"))
        );
        assert_eq!(c.cert, d.path().join("operators/admin.crt"));
        // The --controller flag beats everything.
        let mut o = opts(Some(d.path()), None);
        o.controller = Some("https://flag:1".into());
        assert_eq!(resolve(&o, &e).unwrap().controller, "https://flag:1");
        // Env alone is enough, with no config file anywhere.
        let all = env(&[
            ("FLEETWARD_CONTROLLER", "ctl:9"),
            ("FLEETWARD_CA", "/e/ca"),
            ("FLEETWARD_CERT", "/e/cert"),
            ("FLEETWARD_KEY", "/e/key"),
            ("HOME", "/nonexistent"),
        ]);
        assert_eq!(
            resolve(&opts(None, None), &all).unwrap().cert,
            Path::new("/e/cert")
        );
    }

    #[test]
    fn missing_configuration_is_a_config_error_naming_the_way_out() {
        let e = resolve(&opts(None, None), &env(&[("HOME", "/nonexistent")])).unwrap_err();
        let CliError::Config(msg) = e else {
            panic!("{e:?}")
        };
        assert!(
            msg.contains("--data-dir") && msg.contains("--config"),
            "{msg}"
        );
        assert!(
            msg.contains("/nonexistent/.config/fleetward/cli.toml (missing)"),
            "{msg}"
        );
        // An explicit --config that does not exist names the file.
        let e = resolve(&opts(None, Some(Path::new("/nope/cli.toml"))), &env(&[])).unwrap_err();
        assert!(
            matches!(&e, CliError::Config(m) if m.contains("/nope/cli.toml")),
            "{e:?}"
        );
        // So does an empty directory given as the data dir.
        let empty = tempfile::tempdir().unwrap();
        let e = resolve(&opts(Some(empty.path()), None), &env(&[])).unwrap_err();
        assert!(
            matches!(&e, CliError::Config(m) if m.contains("is not a fleetward data dir")),
            "{e:?}"
        );
        // So does a data dir that does not exist, and a bad cli.toml.
        let e = resolve(&opts(Some(Path::new("/nope")), None), &env(&[])).unwrap_err();
        assert!(
            matches!(&e, CliError::Config(m) if m.contains("fleetward init")),
            "{e:?}"
        );
        let d = tempfile::tempdir().unwrap();
        let cfg = d.path().join("cli.toml");
        std::fs::write(&cfg, "controler = \"x\"\n").unwrap();
        let e = resolve(&opts(None, Some(&cfg)), &env(&[])).unwrap_err();
        assert!(
            matches!(&e, CliError::Config(m) if m.contains("controler")),
            "{e:?}"
        );
    }
}
