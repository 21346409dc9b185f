//! `<binary> generate-docs --out DIR`: man pages (DIR/man1) and bash, zsh and fish
//! completions (DIR/completions) from a binary's clap definitions, for packaging.
//!
//! Shared by `fleetward` and `fleetward-agent` (`#[path]`-included by both `main.rs`). The
//! command is kept outside each binary's `Cli`, so it appears in neither the help, the man
//! pages nor the completions it writes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// If the first argument is `generate-docs`, write the documents for `cmd` and return the
/// exit code; otherwise `None`, and the binary parses its arguments as usual.
pub fn generate_if_asked(cmd: clap::Command) -> Option<ExitCode> {
    if std::env::args_os()
        .nth(1)
        .is_none_or(|a| a != "generate-docs")
    {
        return None;
    }
    let name = cmd.get_name().to_owned();
    let usage = clap::Command::new("generate-docs")
        .bin_name(format!("{name} generate-docs"))
        .about("Write man pages (DIR/man1) and bash, zsh and fish completions (DIR/completions)")
        .arg(
            clap::Arg::new("out")
                .long("out")
                .value_name("DIR")
                .required(true)
                .value_parser(clap::value_parser!(PathBuf)),
        );
    let args = usage.get_matches_from(std::env::args_os().skip(1));
    let out = args.get_one::<PathBuf>("out").cloned().unwrap_or_default();
    Some(match generate(cmd, &out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name} generate-docs: {e}");
            ExitCode::from(2)
        }
    })
}

fn generate(mut cmd: clap::Command, out: &Path) -> std::io::Result<()> {
    use clap_complete::Shell;
    let man = out.join("man1");
    let completions = out.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    // One page per visible command.
    clap_mangen::generate_to(cmd.clone(), &man)?;
    let name = cmd.get_name().to_owned();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, &name, &completions)?;
    }
    Ok(())
}
