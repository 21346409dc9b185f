//! `fleetward`: the controller daemon (`serve`), its set-up (`init`), and the operator CLI.
#![forbid(unsafe_code)]

use clap::{Args, CommandFactory, Parser, Subcommand};
use fleetward_controller::{config::Config, init, paths::DataDir, serve};
use std::path::PathBuf;
use std::process::ExitCode;

/// jemalloc instead of glibc's malloc: report ingestion allocates and frees many short-lived
/// buffers of a few KiB on several threads, where glibc spent a quarter of the controller's
/// CPU in `malloc_consolidate`/`unlink_chunk` (measured with perf under the load benchmark).
/// mimalloc was as fast but held ~25 % more memory with 10,000 idle sessions.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "fleetward",
    version,
    about = "fleetward controller and operator CLI"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the CA, the server certificate and a first operator certificate under a data dir.
    Init(InitArgs),
    /// Run the controller.
    Serve(ServeArgs),
    /// Try fleetward without a Proxmox cluster: a controller and three simulated nodes on
    /// 127.0.0.1 in a temporary directory; shows the fleet, its drift, the rollout plan, and
    /// runs a complete rolling update with live progress.
    ///
    /// Changes nothing on this machine: the nodes are `fleetward-agent run --simulate`
    /// processes acting on fixture trees in the temporary directory (removed at the end
    /// unless --keep). Needs `fleetward-agent` beside this binary (`cargo build --release
    /// --workspace --bins`). Exit status: 0 the rolling update completed, 1 it did not or the
    /// demo failed, 130 interrupted.
    Demo(DemoArgs),
    /// The controller's CA and server certificate (on the controller host, from the data dir).
    Ca {
        #[command(subcommand)]
        cmd: CaCmd,
    },
    /// Re-issue the controller's server certificate (on the controller host).
    ServerCert {
        #[command(subcommand)]
        cmd: ServerCertCmd,
    },
    #[command(flatten)]
    Client(fleetward_controller::cli::ClientCommand),
}

#[derive(Subcommand)]
enum CaCmd {
    /// The CA and the server certificate: subject, SHA-256, not-after and days left, and
    /// the server certificate's names. Reads the data directory; needs no running controller.
    Status {
        #[arg(long, env = "FLEETWARD_DATA_DIR", value_name = "DIR")]
        data_dir: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = fleetward_controller::cli::Format::Text)]
        output: fleetward_controller::cli::Format,
    },
}

#[derive(Subcommand)]
enum ServerCertCmd {
    /// A new server key and certificate from the CA, with the same names (5 years, at most
    /// the CA's remaining validity); written atomically (key 0600, certificate 0644).
    /// Agents pin the CA, not the server certificate, so they are unaffected. A running
    /// `serve` keeps the old one until it is restarted (`systemctl restart fleetward`).
    Renew {
        #[arg(long, env = "FLEETWARD_DATA_DIR", value_name = "DIR")]
        data_dir: PathBuf,
    },
}

#[derive(Args)]
struct InitArgs {
    #[arg(long, env = "FLEETWARD_DATA_DIR", value_name = "DIR")]
    data_dir: PathBuf,
    /// Cluster name (carried in the CA's name).
    #[arg(long, default_value = "fleetward")]
    name: String,
    /// A host name or IP address agents use to reach the controller (repeatable);
    /// localhost, 127.0.0.1 and ::1 are always included.
    #[arg(long = "san", value_name = "HOST_OR_IP")]
    sans: Vec<String>,
    /// The listen address written to the configuration.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
}

#[derive(Args)]
struct ServeArgs {
    /// Configuration file (TOML). Default: DATA_DIR/controller.toml, else /etc/fleetward/controller.toml.
    #[arg(long, env = "FLEETWARD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory (overrides the configuration's).
    #[arg(long, env = "FLEETWARD_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Listen address (overrides the configuration's), e.g. 127.0.0.1:7443 or 127.0.0.1:0.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
}

#[derive(Args)]
struct DemoArgs {
    /// A directory with one fixture directory per node [default: the three seed fixtures
    /// built into this binary, as in the source's agent/tests/fixtures/seed].
    #[arg(long, value_name = "DIR")]
    fixtures: Option<PathBuf>,
    /// Keep the temporary directory (controller data dir, node trees, logs).
    #[arg(long)]
    keep: bool,
    /// Seconds each simulated action takes; a simulated reboot takes four times as long.
    #[arg(long, value_name = "SECS", default_value_t = fleetward_controller::demo::DEFAULT_SPEED, value_parser = speed)]
    speed: f64,
}

/// `--speed`: 0 to 60 seconds, fractions allowed.
fn speed(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && (0.0..=60.0).contains(&v) {
        Ok(v)
    } else {
        Err("expected 0 to 60 seconds".into())
    }
}

fn logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

#[path = "../../packaging/docs.rs"]
mod docs;

fn main() -> ExitCode {
    if let Some(code) = docs::generate_if_asked(Cli::command()) {
        return code;
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Init(a) => {
            let dir = DataDir::new(&a.data_dir);
            match init::init(&dir, &a.name, a.listen.as_deref(), &a.sans) {
                Ok(done) => {
                    println!("initialised {}", a.data_dir.display());
                    println!("CA certificate SHA-256: {}", done.ca_sha256);
                    println!("server certificate names: {}", done.sans.join(", "));
                    println!(
                        "first operator: {}",
                        dir.operator_cert(fleetward_controller::paths::FIRST_OPERATOR)
                            .display()
                    );
                    print!("{}", init::next_steps(&a.data_dir, &done.listen));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("fleetward init: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Client(c) => fleetward_controller::cli::run(c),
        Command::Ca {
            cmd: CaCmd::Status { data_dir, output },
        } => match fleetward_controller::certs::status(&DataDir::new(&data_dir)) {
            Ok(certs) => {
                print!(
                    "{}",
                    fleetward_controller::certs::render_status(&certs, output)
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("fleetward ca status: {e}");
                ExitCode::from(2)
            }
        },
        Command::ServerCert {
            cmd: ServerCertCmd::Renew { data_dir },
        } => match fleetward_controller::certs::renew_server(&DataDir::new(&data_dir)) {
            Ok(cert) => {
                println!(
                    "renewed {}: SHA-256 {}, {} days left, names {}",
                    DataDir::new(&data_dir).server_cert().display(),
                    cert.sha256,
                    cert.days_left,
                    cert.names.join(", ")
                );
                println!("restart the controller to use it: systemctl restart fleetward");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("fleetward server-cert renew: {e}");
                ExitCode::from(1)
            }
        },
        Command::Demo(a) => {
            use fleetward_controller::demo::{self, DemoError, DemoOptions};
            let opts = DemoOptions {
                fixtures: a.fixtures,
                keep: a.keep,
                speed: a.speed,
            };
            match demo::run(&opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(DemoError::Interrupted) => {
                    eprintln!("fleetward demo: interrupted");
                    ExitCode::from(130)
                }
                Err(e) => {
                    eprintln!("fleetward demo: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Serve(a) => {
            logging("info");
            match serve_main(a) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("fleetward serve: {}", serve_error(&e));
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn serve_main(a: ServeArgs) -> anyhow::Result<()> {
    let config_path = a
        .config
        .clone()
        .or_else(|| a.data_dir.as_ref().map(|d| DataDir::new(d).config()))
        .unwrap_or_else(|| PathBuf::from("/etc/fleetward/controller.toml"));
    let mut cfg = Config::load(&config_path)?;
    if let Some(d) = a.data_dir {
        cfg.data_dir = Some(d);
    }
    if let Some(l) = a.listen {
        cfg.listen = l;
    }
    let dir = DataDir::new(
        cfg.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/var/lib/fleetward")),
    );
    // Durable writes (enrollment, renewal, tokens) run on the blocking pool and share their
    // syncs (group commit); a handful of threads is enough for that, and each thread costs
    // memory (its stack, its allocator cache) for as long as it lives.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(8)
        .build()?;
    rt.block_on(async move {
        let listen = cfg.listen.clone();
        let loaded = serve::load(&dir, cfg)?;
        let listener = serve::bind(&listen).await?;
        let addr = listener.local_addr()?;
        let _listening = serve::ListenRecord::write(&dir, addr)?;
        tracing::info!(%addr, data_dir = %dir.root().display(), "fleetward controller listening");
        serve::run(loaded, listener, shutdown_signal()).await?;
        Ok(())
    })
}

/// The error in one line: a database another `serve` holds says who; otherwise the chain
/// of causes, each said once.
fn serve_error(e: &anyhow::Error) -> String {
    use fleetward_controller::{serve::ServeError, store::StoreError};
    if let Some(ServeError::Store(StoreError::Open { path, source })) =
        e.downcast_ref::<ServeError>()
    {
        // The database reports a held lock as an I/O error naming it (the OS error in
        // debug form inside the message); read as text, so only `store` knows the database.
        if source.to_string().contains("acquire lock") {
            let db = std::path::Path::new(path);
            let dir = db.parent().unwrap_or(db).display();
            let holder = lock_holder(&db.join("db"))
                .map(|pid| format!(" (pid {pid})"))
                .unwrap_or_default();
            return format!(
                "another fleetward serve{holder} holds {dir}: stop it first, or give this one \
                 another --data-dir"
            );
        }
    }
    let mut out = String::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        if !out.contains(&msg) {
            out = if out.is_empty() {
                msg
            } else {
                format!("{out}: {msg}")
            };
        }
    }
    out
}

/// The process holding a `flock` on `file`, from /proc/locks (Linux): the database locks
/// its file so.
fn lock_holder(file: &std::path::Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let inode = std::fs::metadata(file).ok()?.ino();
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        // "1: FLOCK  ADVISORY  WRITE 1433 fe:00:10023521 0 EOF"
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (pid, id) = (fields.get(4)?, fields.get(5)?);
        let ino: u64 = id.rsplit(':').next()?.parse().ok()?;
        (ino == inode).then(|| pid.parse().ok()).flatten()
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "signal received"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "signal received"),
    }
}
