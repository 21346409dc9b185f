//! `fleetward-agent`: the node agent's command line.
#![forbid(unsafe_code)]

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use fleetward_agent::session::enroll::{self, EnrollOptions};
use fleetward_agent::session::run::{self, RunOptions, SimOptions};
use fleetward_agent::session::state::DEFAULT_STATE_DIR;
use fleetward_agent::{inspect, probe, render, root::Root};
use fleetward_proto::Severity;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "fleetward-agent", version, about = "fleetward node agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Each subcommand's arguments are built only when it is the one given (or for help and
// the documents): `inspect` is timed as a whole process.
#[derive(Subcommand)]
#[command(defer = true)]
enum Command {
    /// Inspect this node (boot stack, ESPs, APT sources, resolver, quorum) and print a report.
    ///
    /// Exit status: 0 when no finding is an error, 1 when one is, 2 when the tool itself failed.
    Inspect {
        /// Inspect the tree under DIR instead of the live host (every path, including /proc
        /// and /sys, is read under it; no command is run).
        #[arg(long, value_name = "DIR")]
        root: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Also run live probes (name resolution); not allowed with --root.
        #[arg(long, conflicts_with = "root")]
        probe: bool,
        /// Names the probe resolves (default: deb.debian.org, security.debian.org, download.proxmox.com).
        #[arg(long = "probe-name", value_name = "NAME", requires = "probe")]
        probe_names: Vec<String>,
    },
    /// Enroll this node with the controller: make a key pair here (it never leaves the
    /// node), trade the one-time token and a CSR for a certificate, and store both.
    ///
    /// The controller is trusted only if it presents the CA with the pinned fingerprint.
    /// Exit status: 0 enrolled, 1 not enrolled (the message says why).
    Enroll {
        /// The controller, `https://HOST[:PORT]`.
        #[arg(long, value_name = "URL")]
        controller: String,
        /// The one-time enrollment token. Prefer the environment variable FLEETWARD_TOKEN
        /// (what `fleetward token create` prints) or --token-file: a token given as this
        /// argument is visible to every user of the node in `ps` while enroll runs.
        #[arg(
            long,
            value_name = "TOKEN",
            env = "FLEETWARD_TOKEN",
            hide_env_values = true,
            required_unless_present = "token_file",
            conflicts_with = "token_file"
        )]
        token: Option<String>,
        /// Read the one-time enrollment token from this file (surrounding whitespace is
        /// ignored).
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// SHA-256 fingerprint of the controller's CA certificate (hex; colons allowed).
        #[arg(long = "ca-sha256", value_name = "HEX")]
        ca_sha256: String,
        /// Node name to enroll as [default: the hostname of the node under --root].
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// Read the hostname under DIR instead of /.
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: PathBuf,
        /// Replace an existing identity in the state directory.
        #[arg(long)]
        force: bool,
    },
    /// Keep a session with the controller open: report at start and on every change,
    /// heartbeat in between, execute the controller's commands, renew the certificate
    /// before it expires, and reconnect after failures. Logs to stderr (RUST_LOG).
    Run {
        #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// Inspect the tree under DIR instead of the live host. Without --simulate, an agent
        /// inspecting a tree other than / is observe-only: actions run only on what is
        /// inspected.
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: PathBuf,
        /// Report, and refuse every action the controller sends (the report says so, and
        /// the controller plans no action for this node): how to adopt fleetward cautiously.
        #[arg(long)]
        observe_only: bool,
        /// Re-inspect every SECS seconds.
        #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        interval: u64,
        /// Send a heartbeat when nothing was sent for SECS seconds.
        #[arg(long, value_name = "SECS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3_600))]
        heartbeat: u64,
        /// If this node is not enrolled yet, say so once and wait (checking every 10 s)
        /// until `fleetward-agent enroll` has been run, instead of failing.
        #[arg(long)]
        wait_for_enrollment: bool,
        /// Execute the controller's actions with the simulated executor: they change the
        /// fixture tree under --root (which must be given and must not be /) the way the
        /// real action would change the node, and are logged to STATE_DIR/sim-actions.jsonl.
        /// A simulated reboot drops the session and reconnects after --sim-reboot-secs; a
        /// simulated power-off exits (status 0), and starting again on a powered-off tree
        /// powers it on. Without --simulate, actions run the real commands on this node
        /// (only when --root is /).
        #[arg(long)]
        simulate: bool,
        /// With --simulate: seconds a simulated reboot stays disconnected (fractions allowed).
        #[arg(long, value_name = "SECS", default_value_t = 2.0, requires = "simulate", value_parser = sim_secs)]
        sim_reboot_secs: f64,
        /// With --simulate: seconds each simulated action takes (fractions allowed).
        #[arg(long, value_name = "SECS", default_value_t = 0.0, requires = "simulate", value_parser = sim_secs)]
        sim_action_secs: f64,
        /// With --simulate: HA is asynchronous, as on a real cluster: an HA guest's stop or
        /// start, and node maintenance on/off, only queue a request that takes effect this
        /// many seconds later, and ha-disarm drops pending requests (fractions allowed).
        /// Without it HA acts at once.
        #[arg(long, value_name = "SECS", requires = "simulate", value_parser = sim_secs)]
        sim_ha_delay_secs: Option<f64>,
        /// With --simulate: after a simulated boot the node's Ceph OSDs read down (still
        /// in) for this many seconds, as ceph-osd units start after the node is up
        /// (fractions allowed). Without it they are up at once.
        #[arg(long, value_name = "SECS", requires = "simulate", value_parser = sim_secs)]
        sim_osd_delay_secs: Option<f64>,
    },
    /// Build a simulated node's root tree from a test fixture (for `run --simulate` and
    /// `fleetward demo`; not for real nodes).
    ///
    /// Copies the fixture's `root/` (after its `base` chain, minus its `remove` list) into
    /// OUT and writes each `esp/<XXXX-XXXX>/` as a FAT image with that volume id at
    /// OUT/dev/disk/by-uuid/<XXXX-XXXX> (pure Rust: no dosfstools or mtools needed). The
    /// fixture format is described in agent/tests/support/mod.rs. OUT must be new or
    /// empty; nothing outside it is written. Exit status: 0 built, 1 failed.
    #[command(hide = true)]
    SimRoot {
        /// The fixture directory, e.g. agent/tests/fixtures/seed/pve-01.
        #[arg(long, value_name = "DIR")]
        fixture: PathBuf,
        /// Where to build the node's root (must not exist, or be empty).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Resolve `base` files against DIR [default: the fixture's grandparent].
        #[arg(long, value_name = "DIR")]
        fixtures_root: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

/// `--sim-reboot-secs`: 0 to 3600 seconds, fractions allowed.
fn sim_secs(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && (0.0..=3600.0).contains(&v) {
        Ok(v)
    } else {
        Err("expected 0 to 3600 seconds".into())
    }
}

#[path = "../../packaging/docs.rs"]
mod docs;

fn main() -> ExitCode {
    // Building clap's command costs as much as parsing with it: build it a second time only
    // when the documents are asked for (`inspect` is timed as a whole process).
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "generate-docs")
    {
        if let Some(code) = docs::generate_if_asked(Cli::command()) {
            return code;
        }
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Enroll {
            controller,
            token,
            token_file,
            ca_sha256,
            name,
            state_dir,
            root,
            force,
        } => exit(read_token(token, token_file.as_deref()).and_then(|token| {
            cmd_enroll(EnrollOptions {
                controller,
                token,
                ca_sha256,
                state_dir,
                name,
                root,
                force,
            })
        })),
        Command::Run {
            state_dir,
            root,
            observe_only,
            interval,
            heartbeat,
            wait_for_enrollment,
            simulate,
            sim_reboot_secs,
            sim_action_secs,
            sim_ha_delay_secs,
            sim_osd_delay_secs,
        } => exit(cmd_run(
            RunOptions {
                state_dir,
                root,
                interval: Duration::from_secs(interval),
                heartbeat: Duration::from_secs(heartbeat),
                observe_only,
                simulate: simulate.then(|| SimOptions {
                    reboot_delay: Duration::from_secs_f64(sim_reboot_secs),
                    action_duration: Duration::from_secs_f64(sim_action_secs),
                    ha_delay: sim_ha_delay_secs.map(Duration::from_secs_f64),
                    osd_delay: sim_osd_delay_secs.map(Duration::from_secs_f64),
                }),
            },
            wait_for_enrollment,
        )),
        Command::SimRoot {
            fixture,
            out,
            fixtures_root,
        } => match fleetward_agent::simroot::build(&fixture, fixtures_root.as_deref(), &out) {
            Ok(built) => {
                println!(
                    "built {} from {} (ESP images: {})",
                    out.display(),
                    fixture.display(),
                    if built.esps.is_empty() {
                        "none".to_string()
                    } else {
                        built.esps.join(", ")
                    }
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("fleetward-agent sim-root: {e}");
                ExitCode::from(1)
            }
        },
        Command::Inspect {
            root,
            format,
            probe,
            probe_names,
        } => {
            let root = match root {
                Some(dir) if !dir.is_dir() => {
                    eprintln!("fleetward-agent: --root {}: not a directory", dir.display());
                    return ExitCode::from(2);
                }
                Some(dir) => Root::new(dir),
                None => Root::host(),
            };
            let report = if probe {
                let names = if probe_names.is_empty() {
                    probe::DEFAULT_NAMES.iter().map(|s| s.to_string()).collect()
                } else {
                    probe_names
                };
                inspect::inspect_with_probe(&root, &probe::SystemResolver, &names)
            } else {
                inspect::inspect(&root)
            };
            let out = match format {
                Format::Json => fleetward_proto::report_to_json(&report) + "\n",
                Format::Text => {
                    let color =
                        std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
                    render::text(&report, color)
                }
            };
            if let Err(e) = std::io::stdout().lock().write_all(out.as_bytes()) {
                if e.kind() != std::io::ErrorKind::BrokenPipe {
                    eprintln!("fleetward-agent: writing the report: {e}");
                    return ExitCode::from(2);
                }
            }
            if report.worst_severity() == Some(Severity::Error) {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}

fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleetward-agent: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// The enrollment token: from `--token`/`FLEETWARD_TOKEN`, or read from `--token-file`.
fn read_token(token: Option<String>, file: Option<&std::path::Path>) -> anyhow::Result<String> {
    let token = match (token, file) {
        (Some(t), _) => t,
        (None, Some(f)) => std::fs::read_to_string(f)
            .map_err(|e| anyhow::anyhow!("cannot read the token file {}: {e}", f.display()))?,
        (None, None) => anyhow::bail!("no token: set FLEETWARD_TOKEN or pass --token-file"),
    };
    let token = token.trim();
    if token.is_empty() {
        anyhow::bail!("the enrollment token is empty");
    }
    Ok(token.to_string())
}

fn cmd_enroll(opts: EnrollOptions) -> anyhow::Result<()> {
    let enrolled = runtime()?.block_on(enroll::enroll(&opts))?;
    let hours = enrolled
        .not_after
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default()
        .as_secs()
        / 3600;
    println!(
        "enrolled as {} (CA {}); certificate valid for {hours} h (renewed automatically); state in {}",
        enrolled.node_name,
        enrolled.ca_sha256,
        opts.state_dir.display()
    );
    Ok(())
}

/// Logs to the journal with structured fields when systemd connected stderr to it
/// (`$JOURNAL_STREAM`), else as text lines on stderr.
fn logging() {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    // RUST_LOG as `LEVEL` and `TARGET=LEVEL` directives, comma-separated. Not `EnvFilter`:
    // its span and field matching links regex-automata and, when proptest (a dev-dependency)
    // turns on regex-syntax's Unicode tables, ~9,000 more relocations into every start of
    // the binary, `inspect` included (a quarter of its whole-process time in the bench).
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| v.parse::<Targets>().ok())
        // fatfs logs "unmount failed read-only" at ERROR whenever a read-only image is
        // dropped (every ESP inspection); its real errors reach us as `Result`s.
        .unwrap_or_else(|| {
            Targets::new()
                .with_default(LevelFilter::INFO)
                .with_target("fatfs", LevelFilter::OFF)
        });
    let journald = std::env::var_os("JOURNAL_STREAM")
        .filter(|v| !v.is_empty())
        .and_then(|_| tracing_journald::layer().ok())
        .map(|l| l.with_syslog_identifier("fleetward-agent".to_owned()));
    match journald {
        Some(layer) => tracing_subscriber::registry()
            .with(filter)
            .with(layer)
            .init(),
        None => tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .finish()
            .with(filter)
            .init(),
    }
}

fn cmd_run(opts: RunOptions, wait_for_enrollment: bool) -> anyhow::Result<()> {
    logging();
    if !opts.root.is_dir() {
        anyhow::bail!("--root {}: not a directory", opts.root.display());
    }
    if opts.simulate.is_some() && opts.root.canonicalize()? == std::path::Path::new("/") {
        anyhow::bail!(
            "--simulate changes the tree under --root: give a fixture tree, not / (refusing to simulate onto the live system)"
        );
    }
    runtime()?.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!("signal received: stopping");
            let _ = stop.send(true);
        });
        tracing::info!(version = env!("CARGO_PKG_VERSION"), state_dir = %opts.state_dir.display(), "fleetward-agent starting");
        if wait_for_enrollment
            && !run::wait_for_enrollment(&opts.state_dir, run::ENROLLMENT_POLL, shutdown.clone())
                .await?
        {
            return Ok(());
        }
        run::run(opts, shutdown).await?;
        Ok(())
    })
}
