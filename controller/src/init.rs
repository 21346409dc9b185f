//! `fleetward init`: the CA, the server identity and the first operator, under a data dir.

use crate::config::Config;
use crate::paths::{DataDir, FIRST_OPERATOR};
use fleetward_pki::{write_private_key, write_public, Ca, Identity, PkiError, Role};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{0} already holds a controller (ca/ca.crt exists); refusing to replace its CA")]
    Exists(String),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("--san {0:?} is neither an IP address nor a DNS name (letters, digits and '-' in dot-separated labels)")]
    BadSan(String),
    #[error("--listen {0:?} is not a socket address (e.g. 0.0.0.0:7443, [::]:7443 or host.example:7443)")]
    BadListen(String),
    #[error("writing {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// What `init` made, for the message it prints.
pub struct Initialized {
    pub ca_sha256: String,
    pub sans: Vec<String>,
    /// The listen address written to the configuration.
    pub listen: String,
}

/// What `init` prints after its summary: where the controller will listen, and the three
/// commands that take a new controller to its first enrolled node.
pub fn next_steps(data_dir: &std::path::Path, listen: &str) -> String {
    let d = data_dir.display();
    let wildcard = listen.starts_with("0.0.0.0:") || listen.starts_with("[::]:");
    let reach = if wildcard {
        " (every interface: agents on other hosts can reach it)"
    } else {
        ""
    };
    format!(
        "serve will listen on {listen}{reach}; change `listen` in {d}/controller.toml\n\
         \n\
         next:\n  \
         1. fleetward serve --data-dir {d}\n     \
            run the controller (keep it running)\n  \
         2. fleetward token create --data-dir {d} --node NODE\n     \
            prints the command that enrolls node NODE; run that on the node\n  \
         3. fleetward nodes --data-dir {d}\n     \
            the enrolled nodes, once their agents report\n"
    )
}

/// The server certificate's lifetime; renewal of the controller's own identity is a later
/// concern, so it is long.
const SERVER_CERT: Duration = Duration::from_secs(5 * 365 * 24 * 3600);

pub fn init(
    dir: &DataDir,
    name: &str,
    listen: Option<&str>,
    sans: &[String],
) -> Result<Initialized, InitError> {
    // Everything the user typed is checked before anything is written.
    if let Some(listen) = listen {
        check_listen(listen)?;
    }
    for san in sans {
        check_san(san)?;
    }
    if dir.ca_cert().exists() {
        return Err(InitError::Exists(dir.root().display().to_string()));
    }
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| InitError::Io { path, source }
    };
    if let Some(parent) = dir.root().parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    // Keys live below it: only the controller's user may look inside.
    private_dir(dir.root()).map_err(io(dir.root()))?;
    let config = Config::new(name, listen);
    let ca = Ca::generate(name)?;
    ca.save(&dir.ca_dir())?;
    private_dir(&dir.ca_dir()).map_err(io(&dir.ca_dir()))?;

    let mut dns: Vec<String> = vec!["localhost".into()];
    let mut ips: Vec<IpAddr> = vec![
        [127, 0, 0, 1].into(),
        IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
    ];
    for san in sans {
        match san.parse::<IpAddr>() {
            Ok(ip) if !ips.contains(&ip) => ips.push(ip),
            Ok(_) => {}
            Err(_) if !dns.contains(san) => dns.push(san.clone()),
            Err(_) => {}
        }
    }
    let server = Identity::new(Role::Controller, "controller")?;
    let (cert, key) = ca.issue(&server, SERVER_CERT, &dns, &ips)?;
    // The chain carries the CA, so agents can pin its fingerprint at enrollment.
    write_public(
        &dir.server_cert(),
        &format!("{}{}", cert.pem, ca.cert_pem()),
    )
    .map_err(io(&dir.server_cert()))?;
    write_private_key(&dir.server_key(), key.pem()).map_err(io(&dir.server_key()))?;

    let op = Identity::new(Role::Operator, FIRST_OPERATOR)?;
    let (cert, key) = ca.issue(
        &op,
        Duration::from_secs(config.operator_cert_secs),
        &[],
        &[],
    )?;
    let op_cert = dir.operator_cert(FIRST_OPERATOR);
    if let Some(parent) = op_cert.parent() {
        private_dir(parent).map_err(io(parent))?;
    }
    write_public(&op_cert, &cert.pem).map_err(io(&op_cert))?;
    write_private_key(&dir.operator_key(FIRST_OPERATOR), key.pem())
        .map_err(io(&dir.operator_key(FIRST_OPERATOR)))?;
    write_public(&dir.config(), &config.to_commented_toml()).map_err(io(&dir.config()))?;
    Ok(Initialized {
        listen: config.listen.clone(),
        ca_sha256: ca.fingerprint_sha256(),
        sans: dns
            .into_iter()
            .chain(ips.iter().map(IpAddr::to_string))
            .collect(),
    })
}

/// Creates `path` if missing and sets it to exactly 0700, whatever the umask.
fn private_dir(path: &Path) -> std::io::Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => {}
        r => r?,
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
}

/// A listen address: an IP socket address, or `host:port` with a DNS host name.
fn check_listen(listen: &str) -> Result<(), InitError> {
    if listen.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let ok = match listen.rsplit_once(':') {
        Some((host, port)) => port.parse::<u16>().is_ok() && is_dns_name(host),
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(InitError::BadListen(listen.to_owned()))
    }
}

/// A subject alternative name: an IP address or a DNS name.
fn check_san(san: &str) -> Result<(), InitError> {
    if san.parse::<IpAddr>().is_ok() || is_dns_name(san) {
        Ok(())
    } else {
        Err(InitError::BadSan(san.to_owned()))
    }
}

/// A DNS host name: at most 253 characters of dot-separated labels, each 1..=63 letters,
/// digits and '-', neither starting nor ending with '-'.
fn is_dns_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sans_and_listen_addresses_are_checked() {
        for good in ["pve1", "ctl.lab.example", "10.0.0.5", "fd00::1", "a-b.c9"] {
            assert!(check_san(good).is_ok(), "{good}");
        }
        for bad in [
            "not a host!",
            "",
            "-x.example",
            "a..b",
            "x_y",
            "ctl.example.",
        ] {
            assert!(matches!(check_san(bad), Err(InitError::BadSan(_))), "{bad}");
        }
        for good in [
            "0.0.0.0:7443",
            "[::]:7443",
            "127.0.0.1:0",
            "ctl.lab.example:7443",
        ] {
            assert!(check_listen(good).is_ok(), "{good}");
        }
        for bad in [
            "foo",
            "0.0.0.0",
            ":7443",
            "host:99999",
            "a b:1",
            "::1:7443x",
        ] {
            assert!(
                matches!(check_listen(bad), Err(InitError::BadListen(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_bad_san_or_listen_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("data"));
        let r = init(&dir, "lab", None, &["not a host!".to_owned()]);
        assert!(matches!(r, Err(InitError::BadSan(_))));
        let r = init(&dir, "lab", Some("foo"), &[]);
        assert!(matches!(r, Err(InitError::BadListen(_))));
        assert!(!dir.root().exists());
    }

    #[test]
    fn private_dirs_are_0700_whatever_they_were() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("d");
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        private_dir(&d).unwrap();
        let fresh = tmp.path().join("fresh");
        private_dir(&fresh).unwrap();
        for p in [&d, &fresh] {
            let mode = std::fs::metadata(p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{}", p.display());
        }
        std::fs::write(tmp.path().join("file"), "").unwrap();
        assert!(private_dir(&tmp.path().join("file")).is_err());
    }
}

#[cfg(test)]
mod next_steps_tests {
    #[test]
    fn three_commands_and_the_listen_address() {
        let text = super::next_steps(std::path::Path::new("/var/lib/fleetward"), "0.0.0.0:7443");
        assert!(text.starts_with("serve will listen on 0.0.0.0:7443 (every interface"));
        let commands: Vec<&str> = text
            .lines()
            .filter_map(|l| l.trim_start().split_once(". fleetward "))
            .map(|(_, c)| c)
            .collect();
        assert_eq!(
            commands,
            [
                "serve --data-dir /var/lib/fleetward",
                "token create --data-dir /var/lib/fleetward --node NODE",
                "nodes --data-dir /var/lib/fleetward"
            ]
        );
    }
}
