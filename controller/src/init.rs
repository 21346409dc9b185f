//! `fleetward init`: the CA, the server identity and the first operator, under a data dir.

use crate::config::Config;
use crate::paths::{DataDir, FIRST_OPERATOR};
use fleetward_pki::{write_private_key, write_public, Ca, Identity, PkiError, Role};
use std::net::IpAddr;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{0} already holds a controller (ca/ca.crt exists); refusing to replace its CA")]
    Exists(String),
    #[error(transparent)]
    Pki(#[from] PkiError),
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
    if dir.ca_cert().exists() {
        return Err(InitError::Exists(dir.root().display().to_string()));
    }
    let io = |path: &std::path::Path| {
        let path = path.display().to_string();
        move |source| InitError::Io { path, source }
    };
    std::fs::create_dir_all(dir.root()).map_err(io(dir.root()))?;
    // Keys live below it: only the controller's user may look inside.
    std::fs::set_permissions(
        dir.root(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .map_err(io(dir.root()))?;
    let config = Config::new(name, listen);
    let ca = Ca::generate(name)?;
    ca.save(&dir.ca_dir())?;

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
        std::fs::create_dir_all(parent).map_err(io(parent))?;
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
