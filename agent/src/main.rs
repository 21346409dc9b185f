//! `fleetward-agent`: the node agent's command line.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand, ValueEnum};
use fleetward_agent::{inspect, probe, render, root::Root};
use fleetward_proto::Severity;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "fleetward-agent", version, about = "fleetward node agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
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
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
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
