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
        // zsh: the generated file ends by dispatching to `_fleetward`; dispatch to the
        // dynamic wrapper instead, and make it the completer from the first use on.
        let zsh = completions.join("_fleetward");
        let text = std::fs::read_to_string(&zsh)?;
        let Some(at) = text.rfind(ZSH_DISPATCH) else {
            return Err(std::io::Error::other(
                "the generated zsh completion no longer ends as expected (clap_complete changed?)",
            ));
        };
        std::fs::write(&zsh, format!("{}{ZSH_DYNAMIC}", &text[..at]))?;
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
/// value's placeholder (its value name, else its choices `text|json`, else its name in
/// capitals), then the positionals, then COMMAND for a command with subcommands.
fn synopsis(cmd: &clap::Command) -> String {
    let mut line = cmd.get_bin_name().unwrap_or(cmd.get_name()).to_owned();
    let placeholder = |a: &clap::Arg| match a.get_value_names() {
        Some(v) => v.join(" "),
        None if !a.get_possible_values().is_empty() => a
            .get_possible_values()
            .iter()
            .filter(|v| !v.is_hide_set())
            .map(|v| v.get_name().to_owned())
            .collect::<Vec<_>>()
            .join("|"),
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

/// Roff for the sections clap does not make (EXIT STATUS, ENVIRONMENT, FILES, EXAMPLES), for
/// the page of `path` (e.g. "fleetward rollout status").
fn extra_sections(binary: &str, path: &str) -> String {
    let mut out = String::from(if binary == "fleetward" {
        CONTROLLER_SECTIONS
    } else {
        agent_exit_status(path)
    });
    if binary != "fleetward" {
        out += AGENT_SECTIONS;
    }
    out += ".SH EXAMPLES\n";
    for e in examples(path) {
        out += &format!(".PP\n.nf\n{}\n.fi\n", roff_escape(e));
    }
    out
}

/// Plain text as roff: hyphens, quotes and a leading dot or quote kept literal.
fn roff_escape(text: &str) -> String {
    let body = text
        .replace('\\', "\\e")
        .replace('-', "\\-")
        .replace('\'', "\\(aq")
        .replace('"', "\\(dq");
    if body.starts_with('.') {
        format!("\\&{body}")
    } else {
        body
    }
}

/// Working command lines for every page (a page without one fails the docs test).
fn examples(path: &str) -> &'static [&'static str] {
    match path {
        "fleetward" => &[
            "fleetward init --data-dir /var/lib/fleetward --san ctl.example.org",
            "fleetward nodes",
            "fleetward rollout plan",
            "fleetward rollout start --watch",
        ],
        "fleetward init" => &[
            "fleetward init --data-dir /var/lib/fleetward --san ctl.example.org --san 192.0.2.10",
            "fleetward init --data-dir /var/lib/fleetward --listen 192.0.2.10:7443",
        ],
        "fleetward serve" => &[
            "systemctl enable --now fleetward",
            "fleetward serve --data-dir /var/lib/fleetward --listen 127.0.0.1:7443",
        ],
        "fleetward ca" | "fleetward ca status" => &[
            "fleetward ca status --data-dir /var/lib/fleetward",
            "fleetward ca status --data-dir /var/lib/fleetward --output json",
        ],
        "fleetward server-cert" | "fleetward server-cert renew" => &[
            "fleetward server-cert renew --data-dir /var/lib/fleetward && systemctl restart fleetward",
        ],
        "fleetward demo" => &["fleetward demo", "fleetward demo --speed 0.1 --keep"],
        "fleetward nodes" => &[
            "fleetward nodes",
            "fleetward nodes --output json | jq -r '.[].name'",
        ],
        "fleetward findings" => &[
            "fleetward findings --severity error || echo \"something to fix\"",
            "fleetward findings --node pve-01 --wide",
        ],
        "fleetward drift" => &["fleetward drift", "fleetward drift --output json"],
        "fleetward report" => &[
            "fleetward report > cluster-$(date +%F).md",
            "fleetward report --format markdown | diff -u last-report.md -",
        ],
        "fleetward audit" => &["fleetward audit --limit 20", "fleetward audit --output json"],
        "fleetward node" => &["fleetward node show pve-01", "fleetward node diff pve-01 pve-02"],
        "fleetward node show" => &["fleetward node show pve-01"],
        "fleetward node history" => &["fleetward node history pve-01"],
        "fleetward node diff" => &["fleetward node diff pve-01 pve-02"],
        "fleetward node refresh" => &["fleetward node refresh pve-01 && fleetward node show pve-01"],
        "fleetward node revoke" => &[
            "fleetward node revoke pve-03",
            "fleetward token create --node pve-03   # to enroll it again",
        ],
        "fleetward token" => &["fleetward token create --node pve-04", "fleetward token list"],
        "fleetward token create" => &[
            "fleetward token create --node pve-01 --ttl 1h",
            "fleetward token create --ttl 30m --output json",
        ],
        "fleetward token list" => &["fleetward token list", "fleetward token list --output json"],
        "fleetward token revoke" => &["fleetward token list", "fleetward token revoke 9c1e4f2a"],
        "fleetward operator" => &[
            "fleetward operator issue alice --scope operator --write-config ~alice/.config/fleetward",
            "fleetward operator list",
        ],
        "fleetward operator issue" => &[
            "fleetward operator issue alice --scope operator --write-config ~alice/.config/fleetward",
            "fleetward operator issue ups --scope power --write-config /etc/nut/fleetward",
        ],
        "fleetward operator list" => &["fleetward operator list", "fleetward operator list --output json"],
        "fleetward operator revoke" => &["fleetward operator revoke alice"],
        "fleetward operator renew" => &["fleetward operator renew"],
        "fleetward policy" => &[
            "fleetward policy capture --from pve-01 > /etc/fleetward/policy.toml",
            "fleetward policy reload",
        ],
        "fleetward policy capture" => &["fleetward policy capture --from pve-01 > policy.toml"],
        "fleetward policy check" => &[
            "fleetward policy check",
            "fleetward policy check --file policy.toml",
        ],
        "fleetward policy reload" => &["fleetward policy reload && fleetward drift"],
        "fleetward policy show" => &["fleetward policy show"],
        "fleetward rollout" | "fleetward rollout start" => &[
            "fleetward rollout plan --nodes pve-01,pve-02",
            "fleetward rollout start --window \"Sat 02:00-05:00 Europe/Berlin\" --watch",
            "fleetward rollout start --yes --reboot if-needed",
        ],
        "fleetward rollout plan" => &[
            "fleetward rollout plan",
            "fleetward rollout plan --refresh-lists --max-unavailable 1 --output json",
        ],
        "fleetward rollout status" => &["fleetward rollout status --watch && echo completed"],
        "fleetward rollout list" => &["fleetward rollout list"],
        "fleetward rollout pause" => &["fleetward rollout pause"],
        "fleetward rollout resume" => &["fleetward rollout resume --id rollout-20261207-0200"],
        "fleetward rollout skip" => &["fleetward rollout skip pve-03"],
        "fleetward rollout abort" => &[
            "fleetward rollout abort --restore",
            "fleetward rollout abort --yes && fleetward findings",
        ],
        "fleetward shutdown" | "fleetward shutdown start" => &[
            "fleetward shutdown plan --deadline 10m",
            "fleetward shutdown start --reason maintenance --watch",
            "fleetward shutdown start --preempt --yes --reason \"UPS on battery\"",
        ],
        "fleetward shutdown plan" => &["fleetward shutdown plan --deadline 15m --reason \"UPS test\""],
        "fleetward shutdown status" => &["fleetward shutdown status --watch"],
        "fleetward shutdown cancel" => &["fleetward shutdown cancel && fleetward startup --watch"],
        "fleetward startup" => &["fleetward startup --watch"],
        "fleetward power-event" => &[
            "fleetward power-event on-battery --runtime 900",
            "fleetward power-event restored",
        ],
        "fleetward power-event on-battery" => &["fleetward power-event on-battery --runtime 900"],
        "fleetward power-event restored" => &["fleetward power-event restored"],
        "fleetward-agent" => &[
            "fleetward-agent inspect",
            "FLEETWARD_TOKEN=TOKEN fleetward-agent enroll --controller https://ctl.example.org:7443 --ca-sha256 HEX",
        ],
        "fleetward-agent inspect" => &[
            "fleetward-agent inspect",
            "fleetward-agent inspect --format json > report.json",
            "fleetward-agent inspect --root /mnt/pve-01-backup",
            "fleetward-agent inspect --probe --probe-name download.proxmox.com",
        ],
        "fleetward-agent enroll" => &[
            "FLEETWARD_TOKEN=TOKEN fleetward-agent enroll --controller https://ctl.example.org:7443 --ca-sha256 HEX",
            "fleetward-agent enroll --token-file /root/token --force --controller https://ctl.example.org:7443 --ca-sha256 HEX",
        ],
        "fleetward-agent run" => &[
            "systemctl enable --now fleetward-agent",
            "fleetward-agent run --observe-only",
            "fleetward-agent run --root ./pve-01 --simulate --state-dir ./state",
        ],
        _ => &[],
    }
}

/// The agent page's EXIT STATUS.
fn agent_exit_status(path: &str) -> &'static str {
    match path {
        "fleetward-agent inspect" => {
            ".SH \"EXIT STATUS\"\n.TP\n.B 0\nNo finding is an error.\n.TP\n.B 1\nSome finding is an error.\n.TP\n.B 2\nThe tool itself failed (an unusable \\fB\\-\\-root\\fR, an option error).\n"
        }
        "fleetward-agent enroll" => {
            ".SH \"EXIT STATUS\"\n.TP\n.B 0\nEnrolled.\n.TP\n.B 1\nNot enrolled; the message says why (a token refused, a CA fingerprint that does not match, an identity already here without \\fB\\-\\-force\\fR).\n.TP\n.B 2\nUsage error.\n"
        }
        "fleetward-agent run" => {
            ".SH \"EXIT STATUS\"\n.TP\n.B 0\nStopped by a signal, or (with \\fB\\-\\-simulate\\fR) the simulated node was powered off.\n.TP\n.B 1\nIt cannot run: not enrolled (without \\fB\\-\\-wait\\-for\\-enrollment\\fR), an unreadable state directory, a refused certificate.\n.TP\n.B 2\nUsage error.\n"
        }
        _ => {
            ".SH \"EXIT STATUS\"\n.B inspect\nexits 0 when no finding is an error, 1 when one is, 2 when the tool failed;\n.B enroll\nand\n.B run\nexit 0 on success, 1 on failure; usage errors exit 2.\n"
        }
    }
}

/// ENVIRONMENT and FILES of every `fleetward-agent` page.
const AGENT_SECTIONS: &str = r#".SH ENVIRONMENT
.TP
.B RUST_LOG
The log filter (default: info; release builds log up to debug, trace is compiled out). \fBrun\fR logs to the journal when started by systemd, else to stderr.
.TP
.B NO_COLOR
\fBinspect\fR prints no colours when set.
.TP
.B NOTIFY_SOCKET
Set by systemd: \fBrun\fR sends READY=1 once the controller acknowledged its first report.
.TP
.B FLEETWARD_TOKEN
\fBenroll\fR's one-time token, kept out of the process list (as \fB\-\-token\-file\fR; \fB\-\-token\fR is visible in \fBps\fR).
.TP
.B FLEETWARD_AGENT_ARGS
Extra arguments of the service's \fBrun\fR (for example \fB\-\-observe\-only\fR), set in \fI/etc/fleetward/agent.env\fR.
.SH FILES
.TP
.I /var/lib/fleetward-agent/agent.key
The node's private key (0600; it never leaves the node).
.TP
.I /var/lib/fleetward-agent/agent.crt
The node's certificate, renewed by \fBrun\fR before it expires.
.TP
.I /var/lib/fleetward-agent/ca.crt
The controller's CA, pinned at enrollment.
.TP
.I /var/lib/fleetward-agent/agent.toml
The controller's address and this node's name.
.TP
.I /var/lib/fleetward-agent/commands.json
The ids of the commands already run, so a re-sent command runs once.
.TP
.I /etc/fleetward/agent.env
The service's environment (\fBFLEETWARD_AGENT_ARGS\fR).
"#;

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
The log filter of \fBserve\fR (default: info; release builds log up to debug, trace is compiled out).
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

/// How clap_complete's zsh file ends (replaced by [`ZSH_DYNAMIC`]).
const ZSH_DISPATCH: &str = r#"if [ "$funcstack[1]" = "_fleetward" ]; then
    _fleetward "$@"
else
    compdef _fleetward fleetward
fi
"#;

/// Zsh: the same as bash, then the generated completion when nothing was found.
const ZSH_DYNAMIC: &str = r#"_fleetward_dynamic() {
    local -a found
    case ${words[CURRENT-1]} in
        --node|--from|--nodes|show|refresh|revoke|history|skip|diff)
            found=(${(f)"$(timeout 3 fleetward nodes --output json 2>/dev/null |
                sed -n 's/^    "name": "\(.*\)",$/\1/p')"}) ;;
        --id)
            found=(${(f)"$(timeout 3 fleetward rollout list --output json 2>/dev/null |
                sed -n 's/^    "id": "\(rollout-[^"]*\)",$/\1/p')"}) ;;
    esac
    if (( ${#found} )) && compadd -a found; then
        return 0
    fi
    _fleetward "$@"
}

compdef _fleetward_dynamic fleetward
if [ "$funcstack[1]" = "_fleetward" ]; then
    _fleetward_dynamic "$@"
fi
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
