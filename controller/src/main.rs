//! `fleetward`: the controller daemon (`serve`), its set-up (`init`), and the operator CLI.
#![forbid(unsafe_code)]

use clap::{Args, CommandFactory, Parser, Subcommand};
use fleetward_controller::{config::Config, init, paths::DataDir, serve};
use std::path::PathBuf;
use std::process::ExitCode;

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
    #[command(flatten)]
    Client(fleetward_controller::cli::ClientCommand),
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

fn logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

// `fleetward generate-docs --out DIR`: man pages and shell completions for packaging.
// A hidden command kept outside `Cli`, so it appears in neither the help, the man pages
// nor the completions it writes.
#[derive(Parser)]
#[command(
    name = "fleetward generate-docs",
    bin_name = "fleetward generate-docs",
    about = "Write man pages (DIR/man1) and bash, zsh and fish completions (DIR/completions)"
)]
struct GenerateDocs {
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

fn main() -> ExitCode {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "generate-docs")
    {
        let a = GenerateDocs::parse_from(std::env::args_os().skip(1));
        return match generate_docs(Cli::command(), &a.out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("fleetward generate-docs: {e:#}");
                ExitCode::from(2)
            }
        };
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
                    println!("next: fleetward serve --data-dir {}", a.data_dir.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("fleetward init: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Client(c) => fleetward_controller::cli::run(c),
        Command::Serve(a) => {
            logging("info");
            match serve_main(a) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("fleetward serve: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// Man pages (one per visible command, `fleetward-node-show.1` etc.) into `out/man1`, and
/// completions into `out/completions`.
fn generate_docs(cmd: clap::Command, out: &std::path::Path) -> anyhow::Result<()> {
    use clap_complete::Shell;
    let man = out.join("man1");
    let completions = out.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    // One page per visible command.
    clap_mangen::generate_to(cmd.clone(), &man)?;
    let mut cmd = cmd;
    let name = cmd.get_name().to_owned();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, &name, &completions)?;
    }
    Ok(())
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
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let listen = cfg.listen.clone();
        let loaded = serve::load(&dir, cfg)?;
        let listener = serve::bind(&listen).await?;
        let addr = listener.local_addr()?;
        fleetward_pki::write_public(&dir.listen_addr(), &format!("{addr}\n"))?;
        tracing::info!(%addr, data_dir = %dir.root().display(), "fleetward controller listening");
        serve::run(loaded, listener, shutdown_signal()).await?;
        Ok(())
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
