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
    let mut built = cmd.clone().disable_help_subcommand(true);
    built.build();
    let name = cmd.get_name().to_owned();
    man_pages(&built, &name, &man)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, &name, &completions)?;
    }
    if name == "fleetward" {
        // Node names and rollout ids, asked of the controller (quietly nothing offline).
        let bash = completions.join("fleetward.bash");
        let text = std::fs::read_to_string(&bash)?;
        std::fs::write(&bash, text + BASH_DYNAMIC)?;
        let fish = completions.join("fleetward.fish");
        let text = std::fs::read_to_string(&fish)?;
        std::fs::write(&fish, text + FISH_DYNAMIC)?;
    }
    Ok(())
}

/// `cmd`'s page and its visible subcommands' pages, each with a synopsis that names its
/// values (`--data-dir DIR`) and the binary's EXIT STATUS, ENVIRONMENT, FILES and EXAMPLES.
fn man_pages(cmd: &clap::Command, binary: &str, dir: &Path) -> std::io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        man_pages(sub, binary, dir)?;
    }
    let page = cmd.clone().override_usage(synopsis(cmd));
    let man = clap_mangen::Man::new(page);
    let mut text = Vec::new();
    man.render(&mut text)?;
    let path = cmd.get_bin_name().unwrap_or(cmd.get_name()).to_owned();
    text.extend_from_slice(extra_sections(binary, &path).as_bytes());
    std::fs::write(dir.join(man.get_filename()), text)
}

/// `fleetward rollout status [--id ROLLOUT] [--watch] …`: every visible option with its
/// value's placeholder, then the positionals, then COMMAND for a command with subcommands.
fn synopsis(cmd: &clap::Command) -> String {
    let mut line = cmd.get_bin_name().unwrap_or(cmd.get_name()).to_owned();
    let placeholder = |a: &clap::Arg| match a.get_value_names() {
        Some(v) => v.join(" "),
        None => a.get_id().as_str().to_uppercase().replace('-', "_"),
    };
    for a in cmd
        .get_arguments()
        .filter(|a| !a.is_hide_set() && !a.is_positional())
    {
        let Some(long) = a.get_long() else { continue };
        let takes_value = a.get_action().takes_values();
        let opt = if takes_value {
            format!("--{long} {}", placeholder(a))
        } else {
            format!("--{long}")
        };
        if a.is_required_set() {
            line += &format!(" {opt}");
        } else {
            line += &format!(" [{opt}]");
        }
    }
    for a in cmd.get_positionals().filter(|a| !a.is_hide_set()) {
        let v = placeholder(a);
        if a.is_required_set() {
            line += &format!(" {v}");
        } else {
            line += &format!(" [{v}]");
        }
    }
    if cmd.has_subcommands() {
        line += " COMMAND";
    }
    line
}

/// Roff for the sections clap does not make, for the page of `path` (e.g. "fleetward
/// rollout status").
fn extra_sections(binary: &str, path: &str) -> String {
    if binary != "fleetward" {
        return String::new();
    }
    let mut out = String::from(CONTROLLER_SECTIONS);
    let examples: &[&str] = match path {
        "fleetward" => &[
            "fleetward init \\-\\-data\\-dir /var/lib/fleetward \\-\\-san ctl.example.org",
            "fleetward nodes",
            "fleetward rollout plan",
            "fleetward rollout start \\-\\-watch",
        ],
        "fleetward init" => &["fleetward init \\-\\-data\\-dir /var/lib/fleetward \\-\\-san ctl.example.org"],
        "fleetward serve" => &["fleetward serve \\-\\-data\\-dir /var/lib/fleetward"],
        "fleetward nodes" => &["fleetward nodes", "fleetward nodes \\-\\-output json | jq \\-r \\(aq.[].name\\(aq"],
        "fleetward findings" => &[
            "fleetward findings \\-\\-severity error || echo \\(dqsomething to fix\\(dq",
            "fleetward findings \\-\\-node pve\\-01 \\-\\-wide",
        ],
        "fleetward token create" => &["fleetward token create \\-\\-node pve\\-01 \\-\\-ttl 1h"],
        "fleetward rollout" | "fleetward rollout start" => &[
            "fleetward rollout plan \\-\\-nodes pve\\-01,pve\\-02",
            "fleetward rollout start \\-\\-window \\(dqSat 02:00\\-05:00 Europe/Berlin\\(dq \\-\\-watch",
        ],
        "fleetward rollout status" => &[
            "fleetward rollout status \\-\\-watch && echo completed",
        ],
        "fleetward shutdown" | "fleetward shutdown start" => &[
            "fleetward shutdown plan \\-\\-deadline 10m",
            "fleetward shutdown start \\-\\-reason maintenance \\-\\-watch",
        ],
        "fleetward startup" => &["fleetward startup \\-\\-watch"],
        "fleetward power-event on-battery" => &["fleetward power\\-event on\\-battery \\-\\-runtime 900"],
        _ => &[],
    };
    if !examples.is_empty() {
        out += ".SH EXAMPLES\n";
        for e in examples {
            out += &format!(".PP\n.nf\n{e}\n.fi\n");
        }
    }
    out
}

/// EXIT STATUS, ENVIRONMENT and FILES of every `fleetward` page.
const CONTROLLER_SECTIONS: &str = r#".SH "EXIT STATUS"
The same for every operator command:
.TP
.B 0
Done, or healthy.
.TP
.B 1
The thing asked about is not OK: a halted or aborted rollout, a refused request (skip, resume, cancel; a rollout, shutdown or list refresh while another operation runs; a shutdown whose controller host is unknown, without \fB\-\-yes\-host\-unknown\fR), an unknown node, error findings for \fBfindings\fR, a startup that did not bring everything back; or the controller failed.
.TP
.B 2
Usage or configuration error (also \fBrollout abort\fR without \fB\-\-yes\fR when stdin is not a terminal).
.TP
.B 3
The controller could not be reached or did not answer.
.PP
With \fB\-\-watch\fR, the final state's status. \fBdemo\fR exits 130 when interrupted.
.SH ENVIRONMENT
.TP
.B FLEETWARD_DATA_DIR
The controller's data directory, as \fB\-\-data\-dir\fR.
.TP
.B FLEETWARD_CONFIG
The client configuration (or, for \fBserve\fR, the controller's), as \fB\-\-config\fR.
.TP
.B FLEETWARD_CONTROLLER
The controller's URL, as \fB\-\-controller\fR.
.TP
.B FLEETWARD_CA, FLEETWARD_CERT, FLEETWARD_KEY
The CA certificate, operator certificate and key the client uses; they override the configuration's.
.TP
.B COLUMNS
The width text tables and live views fit (default: the terminal's).
.TP
.B RUST_LOG
The log filter of \fBserve\fR (default: info).
.TP
.B FLEETWARD_TEST_HOSTNAME
Tests only: the hostname \fBserve\fR believes it has when it finds the node it runs on (\fBhost_node\fR unset). Never set it on a real controller.
.SH FILES
.TP
.I /etc/fleetward/controller.toml
The controller's configuration.
.TP
.I /var/lib/fleetward
The controller's data directory: CA, certificates, database, audit log.
.TP
.I ~/.config/fleetward/cli.toml
The client configuration \fBoperator issue \-\-write\-config\fR writes.
"#;

/// Bash: complete node names and rollout ids by asking the controller (quietly nothing
/// when it cannot be reached).
const BASH_DYNAMIC: &str = r#"
_fleetward_dynamic() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]} words
    case "$prev" in
        --node|--from|--nodes|show|refresh|revoke|history|skip|diff)
            words=$(timeout 3 fleetward nodes --output json 2>/dev/null |
                sed -n 's/^    "name": "\(.*\)",$/\1/p') ;;
        --id)
            words=$(timeout 3 fleetward rollout list --output json 2>/dev/null |
                sed -n 's/^    "id": "\(rollout-[^"]*\)",$/\1/p') ;;
        *)
            _fleetward "$@"
            return ;;
    esac
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
    [ ${#COMPREPLY[@]} -gt 0 ] || _fleetward "$@"
}
complete -F _fleetward_dynamic -o nosort -o bashdefault -o default fleetward
"#;

/// Fish: the same, for node-taking options and rollout ids.
const FISH_DYNAMIC: &str = r#"
function __fleetward_nodes
    timeout 3 fleetward nodes --output json 2>/dev/null | string match -rg '^    "name": "(.*)",$'
end
function __fleetward_rollouts
    timeout 3 fleetward rollout list --output json 2>/dev/null | string match -rg '^    "id": "(rollout-[^"]*)",$'
end
complete -c fleetward -n "__fish_seen_subcommand_from findings" -l node -f -a "(__fleetward_nodes)"
complete -c fleetward -n "__fish_seen_subcommand_from show refresh revoke history diff skip" -f -a "(__fleetward_nodes)"
complete -c fleetward -n "__fish_seen_subcommand_from rollout" -l id -f -a "(__fleetward_rollouts)"
"#;
