//! The operator CLI client: `fleetward nodes`, `node …`, `findings`, `token …`,
//! `operator issue`, `audit`. Each calls the controller's `OperatorService` over mutual TLS.
//!
//! Credentials come from a data dir, a `cli.toml` or `FLEETWARD_*` variables ([`conn`]);
//! rendering is pure ([`output`]). Exit status, the same for every command: 0 done or
//! healthy; 1 the thing asked about is not OK (halted or aborted operation, refused request,
//! unknown node, error findings) or the controller failed; 2 usage or configuration error;
//! 3 the controller could not be reached.

/// `CliError::Config(format!(...))`.
macro_rules! config_err {
    ($($arg:tt)*) => { $crate::cli::CliError::Config(format!($($arg)*)) };
}

pub(crate) mod conn;
pub(crate) mod live;
pub(crate) mod output;
pub mod rollout;
pub(crate) mod shutdown;
pub(crate) mod words;

use clap::{Args, Subcommand, ValueEnum};
use fleetward_pki::{generate_key_and_csr, Identity, Role};
use fleetward_proto::api::{self, operator_service_client::OperatorServiceClient};
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tonic::transport::Channel;

/// Options every client command takes.
#[derive(Debug, Clone, Args)]
pub struct ClientOpts {
    /// Controller data directory (on the controller host): use its `admin` operator
    /// identity and the address `serve` listens on. Takes precedence over --config.
    #[arg(long, env = "FLEETWARD_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Client configuration [default: ~/.config/fleetward/cli.toml]. FLEETWARD_CA,
    /// FLEETWARD_CERT and FLEETWARD_KEY override its paths.
    #[arg(long, env = "FLEETWARD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Controller URL, e.g. https://ctl.example:7443.
    #[arg(long, env = "FLEETWARD_CONTROLLER", value_name = "URL")]
    pub controller: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub output: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SeverityArg {
    Info,
    Warning,
    Error,
}

/// Commands that talk to a running controller.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// List the enrolled nodes with their state and finding counts.
    Nodes(OptsOnly),
    /// Show, refresh or revoke one node.
    Node {
        #[command(subcommand)]
        cmd: NodeCmd,
    },
    /// List the findings of the nodes' latest reports.
    Findings {
        /// Only this node.
        #[arg(long)]
        node: Option<String>,
        /// Only findings at least this severe.
        #[arg(long, value_enum)]
        severity: Option<SeverityArg>,
        /// Do not wrap long messages to the terminal's width.
        #[arg(long)]
        wide: bool,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Create, list or revoke enrollment tokens.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Issue operator certificates.
    Operator {
        #[command(subcommand)]
        cmd: OperatorCmd,
    },
    /// Drift between nodes and against the policy (drift.*, policy.* findings).
    Drift(OptsOnly),
    /// Show, check, reload or capture the desired-state policy.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// The cluster's actual state as an operator document (deterministic: same state, same bytes).
    Report {
        #[arg(long, default_value = "markdown", value_parser = ["markdown"])]
        format: String,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Rolling updates: plan, start, status, pause, resume, abort, skip, list.
    Rollout {
        #[command(subcommand)]
        cmd: rollout::RolloutCmd,
    },
    /// Coordinated cluster shutdown: plan, start, status, cancel.
    Shutdown {
        #[command(subcommand)]
        cmd: shutdown::ShutdownCmd,
    },
    /// Bring the cluster back after `shutdown`: wait for the nodes and quorum, unset Ceph
    /// noout, re-arm HA, start guests in their startup order.
    Startup(shutdown::StartupArgs),
    /// A UPS event, for NUT's NOTIFYCMD or apcupsd: on-battery starts a shutdown with the
    /// remaining runtime as its deadline; restored stops it before the point of no return.
    PowerEvent {
        #[command(subcommand)]
        cmd: shutdown::PowerEventCmd,
    },
    /// Show the newest audit log entries.
    Audit {
        /// At most this many entries.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[command(flatten)]
        opts: ClientOpts,
    },
}

#[derive(Debug, Args)]
pub struct OptsOnly {
    #[command(flatten)]
    pub opts: ClientOpts,
}

/// A node name and the client options.
#[derive(Debug, Args)]
pub struct NodeArgs {
    pub name: String,
    #[command(flatten)]
    pub opts: ClientOpts,
}

#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// The node, its findings and (with --output json) its latest report.
    Show(NodeArgs),
    /// Ask the node to inspect now and report.
    Refresh(NodeArgs),
    /// Revoke the node's certificate and close its session.
    Revoke(NodeArgs),
    /// Two nodes' facts side by side, differences first.
    Diff {
        a: String,
        b: String,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// When each of the node's facts changed (old value, new value).
    History(NodeArgs),
}

#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// The policy in force (TOML).
    Show(OptsOnly),
    /// Check the fleet against the policy in force, or against a local policy FILE.
    Check {
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Re-read the policy file named in the controller's configuration.
    Reload(OptsOnly),
    /// Print the policy a node currently satisfies (a starting point to edit and commit).
    Capture {
        #[arg(long = "from", value_name = "NODE")]
        from: String,
        #[command(flatten)]
        opts: ClientOpts,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Make a one-time enrollment token and print the agent's enroll command.
    Create {
        /// How long the token is valid, e.g. 90s, 30m, 1h, 2d, 1h30m [default: the controller's].
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<u64>,
        /// Only this node name may enroll with it.
        #[arg(long)]
        node: Option<String>,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// List tokens (without their secrets).
    List(OptsOnly),
    /// Invalidate an unused token.
    Revoke {
        id: String,
        #[command(flatten)]
        opts: ClientOpts,
    },
}

/// What an operator certificate may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScopeArg {
    /// Everything, including join tokens, node revocation and operator identities.
    Admin,
    /// Rollouts, shutdowns, refreshes, policy reloads, and everything power may.
    Operator,
    /// Power events (`power-event`) and everything viewer may: for UPS hooks.
    Power,
    /// Read-only.
    Viewer,
}

impl ScopeArg {
    fn as_str(self) -> &'static str {
        match self {
            ScopeArg::Admin => "admin",
            ScopeArg::Operator => "operator",
            ScopeArg::Power => "power",
            ScopeArg::Viewer => "viewer",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum OperatorCmd {
    /// Issue an operator certificate for a key generated here (the key never leaves this
    /// machine), valid `operator_cert_secs` (default 90 days).
    Issue {
        name: String,
        /// What it may do (required): admin (everything), operator (rollouts, shutdowns,
        /// refresh, read), power (power-event and read), viewer (read-only).
        #[arg(long, value_enum)]
        scope: ScopeArg,
        /// Write NAME.key (0600), NAME.crt, ca.crt and cli.toml into this directory, e.g.
        /// ~/.config/fleetward. Without it, the key and certificate are printed.
        #[arg(long, value_name = "DIR")]
        write_config: Option<PathBuf>,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Every operator identity: name, scope, serial, expiry, revoked.
    List(OptsOnly),
    /// Revoke every certificate of an operator: its calls are refused at once, and a
    /// `--watch` it runs ends at its next poll.
    Revoke {
        name: String,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Renew this client's own certificate before it expires (same name and scope): a new
    /// key made here, the certificate and key files this client uses replaced.
    Renew(OptsOnly),
}

impl ClientCommand {
    fn opts(&self) -> &ClientOpts {
        use {ClientCommand as C, NodeCmd as N, OperatorCmd as O, PolicyCmd as P, TokenCmd as T};
        match self {
            C::Nodes(o)
            | C::Drift(o)
            | C::Token { cmd: T::List(o) }
            | C::Policy {
                cmd: P::Show(o) | P::Reload(o),
            } => &o.opts,
            C::Node {
                cmd: N::Show(a) | N::Refresh(a) | N::Revoke(a) | N::History(a),
            } => &a.opts,
            C::Node {
                cmd: N::Diff { opts, .. },
            }
            | C::Policy {
                cmd: P::Check { opts, .. } | P::Capture { opts, .. },
            }
            | C::Report { opts, .. } => opts,
            C::Findings { opts, .. } | C::Audit { opts, .. } => opts,
            C::Token {
                cmd: T::Create { opts, .. } | T::Revoke { opts, .. },
            } => opts,
            C::Operator {
                cmd: O::Issue { opts, .. } | O::Revoke { opts, .. },
            } => opts,
            C::Operator {
                cmd: O::List(o) | O::Renew(o),
            } => &o.opts,
            C::Rollout { cmd } => cmd.opts(),
            C::Shutdown { cmd } => cmd.opts(),
            C::PowerEvent { cmd } => cmd.opts(),
            C::Startup(o) => &o.opts,
        }
    }
}

/// Why a command did not do what was asked; each kind has its exit status.
#[derive(Debug)]
pub(crate) enum CliError {
    /// Usage or configuration: exit 2.
    Config(String),
    /// The controller refused or failed, or the thing asked about is missing: exit 1.
    Failed(String),
    /// The controller could not be reached or did not answer: exit 3.
    Unreachable(String),
}

/// Exit status: done, or healthy.
pub const EXIT_OK: u8 = 0;
/// Exit status: the thing asked about is not OK (halted or aborted operation, refused
/// request, unknown node, error findings), or the controller failed.
pub const EXIT_NOT_OK: u8 = 1;
/// Exit status: usage or configuration error.
pub const EXIT_USAGE: u8 = 2;
/// Exit status: the controller could not be reached.
pub const EXIT_UNREACHABLE: u8 = 3;

impl CliError {
    pub(crate) fn message(&self) -> &str {
        match self {
            CliError::Config(m) | CliError::Failed(m) | CliError::Unreachable(m) => m,
        }
    }

    /// The exit status this error ends the command with.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            CliError::Config(_) => EXIT_USAGE,
            CliError::Failed(_) => EXIT_NOT_OK,
            CliError::Unreachable(_) => EXIT_UNREACHABLE,
        }
    }
}

impl From<tonic::Status> for CliError {
    /// One line in words: the controller's message, with what the code means where the
    /// message alone would not say it. gRPC code names never reach the operator.
    fn from(s: tonic::Status) -> Self {
        use tonic::Code;
        let msg = s.message().trim();
        let or = |words: &str| {
            if msg.is_empty() {
                words.to_owned()
            } else {
                msg.to_owned()
            }
        };
        // Client-side failures (no connection, no answer) carry the transport's error as
        // their source; the controller's own "unavailable" answers have none.
        let transport = std::error::Error::source(&s).is_some();
        match s.code() {
            Code::Unavailable if transport => CliError::Unreachable(conn::chain_onto(
                "lost the connection to the controller".into(),
                std::error::Error::source(&s),
            )),
            Code::DeadlineExceeded | Code::Cancelled => CliError::Unreachable(
                "the controller did not answer in time (is it overloaded or stopped?)".into(),
            ),
            Code::InvalidArgument | Code::OutOfRange => CliError::Config(or("invalid request")),
            Code::FailedPrecondition => CliError::Failed(format!("refused: {}", or("not now"))),
            Code::NotFound => CliError::Failed(or("not found")),
            Code::AlreadyExists => CliError::Failed(or("already exists")),
            Code::PermissionDenied => CliError::Failed(or("not allowed for this operator")),
            Code::Unauthenticated => CliError::Failed(format!(
                "the controller did not accept this client's certificate: {}",
                or("no valid operator certificate")
            )),
            Code::Unimplemented => CliError::Failed(
                "the controller does not know this request (is it an older version?)".into(),
            ),
            Code::Unavailable | Code::Aborted | Code::ResourceExhausted => {
                CliError::Failed(or("the controller cannot do this now"))
            }
            Code::Ok | Code::Unknown | Code::Internal | Code::DataLoss => {
                CliError::Failed(format!("the controller failed: {}", or("no reason given")))
            }
        }
    }
}

/// What a command printed and whether the thing it asked about is OK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    pub text: String,
    /// False: exit 1 after printing (a halted rollout, error findings, …).
    pub ok: bool,
}

impl Reply {
    pub(crate) fn ok(text: String) -> Reply {
        Reply { text, ok: true }
    }
}

/// "90s", "30m", "1h", "2d", "1w", "1h30m" or plain seconds → seconds (> 0).
pub fn parse_ttl(s: &str) -> Result<u64, String> {
    let bad = || format!("invalid duration {s:?}: expected e.g. 90s, 30m, 1h, 2d or 1h30m");
    if let Ok(n) = s.parse::<u64>() {
        return if n > 0 { Ok(n) } else { Err(bad()) };
    }
    let (mut total, mut num) = (0u64, None::<u64>);
    for c in s.chars() {
        if let Some(d) = c.to_digit(10) {
            num = Some(
                num.unwrap_or(0)
                    .checked_mul(10)
                    .and_then(|n| n.checked_add(d.into()))
                    .ok_or_else(bad)?,
            );
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return Err(bad()),
        };
        let n = num.take().ok_or_else(bad)?;
        total = n
            .checked_mul(unit)
            .and_then(|v| v.checked_add(total))
            .ok_or_else(bad)?;
    }
    if num.is_some() || total == 0 {
        Err(bad())
    } else {
        Ok(total)
    }
}

/// Runs a client command: prints its output, errors as `fleetward: …` on stderr.
pub fn run(cmd: ClientCommand) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let result = match runtime {
        Ok(rt) => rt.block_on(execute(&cmd)),
        Err(e) => Err(CliError::Failed(format!(
            "cannot start the async runtime: {e}"
        ))),
    };
    match result {
        Ok(reply) => {
            // A closed pipe (`| head`) is not an error worth a message.
            let _ = std::io::stdout().lock().write_all(reply.text.as_bytes());
            ExitCode::from(if reply.ok { EXIT_OK } else { EXIT_NOT_OK })
        }
        Err(e) => {
            eprintln!("fleetward: {}", e.message());
            ExitCode::from(e.exit_code())
        }
    }
}

async fn execute(cmd: &ClientCommand) -> Result<Reply, CliError> {
    execute_env(cmd, &|k| std::env::var(k).ok()).await
}

/// For in-process callers (`fleetward demo`): the command's output, with credentials from
/// its options only (no `FLEETWARD_*` variables, no `cli.toml`).
pub(crate) async fn execute_isolated(cmd: &ClientCommand) -> Result<String, CliError> {
    Ok(execute_env(cmd, &|_| None).await?.text)
}

/// A client of the controller named by `opts` alone (as [`execute_isolated`]), and the
/// controller's URL.
pub(crate) async fn connect_isolated(
    opts: &ClientOpts,
) -> Result<(OperatorServiceClient<Channel>, String), CliError> {
    let creds = conn::resolve(opts, &|_| None)?;
    Ok((conn::connect(&creds).await?, creds.controller))
}

async fn execute_env(
    cmd: &ClientCommand,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Reply, CliError> {
    use {ClientCommand as C, NodeCmd as N, OperatorCmd as O, PolicyCmd as P, TokenCmd as T};
    let opts = cmd.opts();
    let fmt = opts.output;
    if let C::Report { format, .. } = cmd {
        if fmt != Format::Text {
            return Err(config_err!(
                "report has no JSON form: it prints the {format} document (drop --output)"
            ));
        }
    }
    let creds = conn::resolve(opts, env)?;
    match cmd {
        C::Shutdown { cmd } => return shutdown::shutdown(cmd, &creds, fmt).await,
        C::Startup(a) => return shutdown::startup(a, &creds, fmt).await,
        C::PowerEvent { cmd } => return shutdown::power_event(cmd, &creds, fmt).await,
        _ => {}
    }
    let mut c = conn::connect(&creds).await?;
    Ok(Reply::ok(match cmd {
        C::Nodes(_) => {
            let nodes = c.list_nodes(api::ListNodesRequest {}).await?;
            let findings = c.list_findings(api::ListFindingsRequest::default()).await?;
            output::nodes(&nodes.get_ref().nodes, &findings.get_ref().findings, fmt)
        }
        C::Node { cmd: N::Show(a) } => {
            let resp = c
                .get_node(api::GetNodeRequest {
                    name: a.name.clone(),
                })
                .await?;
            output::node_detail(resp.get_ref(), fmt).map_err(|e| {
                CliError::Failed(format!("the controller sent an unreadable report: {e}"))
            })?
        }
        C::Node { cmd: N::Refresh(a) } => {
            let resp = c
                .refresh_node(api::RefreshNodeRequest {
                    name: a.name.clone(),
                })
                .await?;
            let (name, id) = (&a.name, &resp.get_ref().command_id);
            let text = format!("asked {name} to refresh: a new report follows");
            output::done(text, json!({"node": name, "command_id": id}), fmt)
        }
        C::Node { cmd: N::Revoke(a) } => {
            c.revoke_node(api::RevokeNodeRequest {
                name: a.name.clone(),
            })
            .await?;
            let v = json!({"node": a.name, "revoked": true});
            output::done(format!("revoked {}", a.name), v, fmt)
        }
        C::Findings {
            node,
            severity,
            wide,
            ..
        } => {
            let min_severity = severity.map(|s| match s {
                SeverityArg::Info => api::Severity::Info as i32,
                SeverityArg::Warning => api::Severity::Warning as i32,
                SeverityArg::Error => api::Severity::Error as i32,
            });
            if let Some(name) = node {
                let nodes = c.list_nodes(api::ListNodesRequest {}).await?.into_inner();
                if !nodes.nodes.iter().any(|n| &n.name == name) {
                    return Err(CliError::Failed(format!(
                        "no node named {name} is enrolled (see `fleetward nodes`)"
                    )));
                }
            }
            let node = node.clone();
            let resp = c
                .list_findings(api::ListFindingsRequest { node, min_severity })
                .await?
                .into_inner();
            let errors = resp
                .findings
                .iter()
                .any(|f| f.severity() == api::Severity::Error);
            let width = (!wide).then(output::terminal_width).flatten();
            let text = output::findings_fit(&resp.findings, fmt, width);
            return Ok(Reply { text, ok: !errors });
        }
        C::Token {
            cmd: T::Create { ttl, node, .. },
        } => {
            let (ttl_seconds, node_name) = (ttl.unwrap_or(0), node.clone());
            let req = api::CreateTokenRequest {
                ttl_seconds,
                node_name,
            };
            let resp = c.create_token(req).await?;
            let loopback = ["127.0.0.1", "[::1]", "localhost"];
            if fmt == Format::Text && loopback.iter().any(|h| creds.controller.contains(h)) {
                eprintln!(
                    "fleetward: note: the enroll command names a loopback address; replace it \
                     (or pass --controller) with one the node can reach"
                );
            }
            output::token_created(resp.get_ref(), &creds.controller, fmt)
        }
        C::Token { cmd: T::List(_) } => {
            let resp = c.list_tokens(api::ListTokensRequest {}).await?;
            output::tokens(&resp.get_ref().tokens, output::now_ms(), fmt)
        }
        C::Token {
            cmd: T::Revoke { id, .. },
        } => {
            c.revoke_token(api::RevokeTokenRequest { id: id.clone() })
                .await?;
            let v = json!({"token": id, "revoked": true});
            output::done(format!("revoked token {id}"), v, fmt)
        }
        C::Operator { cmd: O::List(_) } => {
            let resp = c.list_operators(api::ListOperatorsRequest {}).await?;
            output::operators(&resp.get_ref().operators, output::now_ms(), fmt)
        }
        C::Operator {
            cmd: O::Revoke { name, .. },
        } => {
            let resp = c
                .revoke_operator(api::RevokeOperatorRequest { name: name.clone() })
                .await?
                .into_inner();
            let v = json!({"operator": name, "revoked": true, "serials": resp.serials});
            let text = format!(
                "revoked operator {name} ({} certificates)",
                resp.serials.len()
            );
            output::done(text, v, fmt)
        }
        C::Operator { cmd: O::Renew(_) } => renew_own(&mut c, &creds, fmt).await?,
        C::Operator {
            cmd:
                O::Issue {
                    name,
                    scope,
                    write_config,
                    ..
                },
        } => {
            let identity =
                Identity::new(Role::Operator, name.clone()).map_err(|e| config_err!("{e}"))?;
            let files = write_config
                .as_deref()
                .map(|p| ConfigFiles::new(p, name))
                .transpose()?;
            let (key, csr) =
                generate_key_and_csr(&identity).map_err(|e| CliError::Failed(e.to_string()))?;
            let req = api::IssueOperatorRequest {
                name: name.clone(),
                csr_pem: Some(csr),
                scope: scope.as_str().to_string(),
            };
            let resp = c.issue_operator(req).await?.into_inner();
            let mut v = json!({"name": name, "scope": scope.as_str(), "cert_pem": resp.cert_pem,
                               "ca_pem": resp.ca_pem});
            let Some(f) = files else {
                eprintln!(
                    "fleetward: issued {name}; its private key is printed only now: keep it 0600"
                );
                v["key_pem"] = json!(key.pem());
                let text = format!("{}{}", key.pem(), resp.cert_pem);
                return Ok(Reply::ok(output::done(text.trim_end().to_owned(), v, fmt)));
            };
            f.write(&creds.controller, &resp, key.pem())?;
            let [toml, cert, key, ca] = [&f.toml, &f.cert, &f.key, &f.ca].map(|p| p.display());
            v["files"] = json!({"config": toml.to_string(), "cert": cert.to_string(),
                                "key": key.to_string(), "ca": ca.to_string()});
            let text = format!(
                "issued operator certificate {name}\nwrote {toml}, {cert}, {key} (mode 0600), {ca}\n\
                 use it with: fleetward nodes --config {toml}"
            );
            output::done(text, v, fmt)
        }
        C::Audit { limit, .. } => {
            let resp = c
                .list_audit(api::ListAuditRequest { limit: *limit })
                .await?;
            output::audit(&resp.get_ref().entries, fmt)
        }
        C::Drift(_) => {
            let resp = c.list_drift(api::ListDriftRequest {}).await?;
            let policy = c.policy_show(api::PolicyShowRequest {}).await?.into_inner();
            let width = output::terminal_width();
            output::drift(
                &resp.get_ref().findings,
                !policy.toml.is_empty(),
                fmt,
                width,
            )
        }
        C::Node {
            cmd: N::Diff { a, b, .. },
        } => {
            let req = api::NodeDiffRequest {
                a: a.clone(),
                b: b.clone(),
            };
            output::diff(a, b, &c.node_diff(req).await?.get_ref().rows, fmt)
        }
        C::Node { cmd: N::History(a) } => {
            let req = api::NodeHistoryRequest {
                name: a.name.clone(),
            };
            output::history(&c.node_history(req).await?.get_ref().changes, fmt)
        }
        C::Policy { cmd: P::Show(_) } => output::policy(
            &c.policy_show(api::PolicyShowRequest {}).await?.into_inner(),
            fmt,
        ),
        C::Policy { cmd: P::Reload(_) } => output::policy(
            &c.policy_reload(api::PolicyReloadRequest {})
                .await?
                .into_inner(),
            fmt,
        ),
        C::Policy {
            cmd: P::Capture { from, .. },
        } => {
            let req = api::PolicyCaptureRequest { node: from.clone() };
            output::policy(&c.policy_capture(req).await?.into_inner(), fmt)
        }
        C::Policy {
            cmd: P::Check { file, .. },
        } => {
            let policy_toml = file
                .as_deref()
                .map(|f| {
                    std::fs::read_to_string(f).map_err(|e| config_err!("{}: {e}", f.display()))
                })
                .transpose()?;
            let resp = c
                .policy_check(api::PolicyCheckRequest { policy_toml })
                .await?;
            let findings = &resp.get_ref().findings;
            if findings.is_empty() && fmt == Format::Text {
                "policy met: no violations\n".to_string()
            } else {
                output::findings_fit(findings, fmt, output::terminal_width())
            }
        }
        C::Rollout { cmd } => return rollout::execute(&mut c, cmd, fmt).await,
        C::Report { format, .. } => {
            let req = api::RenderReportRequest {
                format: format.clone(),
            };
            c.render_report(req).await?.into_inner().text
        }
        // Dispatched above, before the operator-service connection.
        C::Shutdown { .. } | C::Startup(_) | C::PowerEvent { .. } => String::new(),
    }))
}

/// `operator renew`: a new key and CSR made here for the identity of this client's
/// certificate; the controller signs it (same scope); then the key and certificate files
/// this client read are replaced (each written beside its target and renamed over it).
async fn renew_own(
    c: &mut OperatorServiceClient<tonic::transport::Channel>,
    creds: &conn::Creds,
    fmt: Format,
) -> Result<String, CliError> {
    let pem = conn::read(&creds.cert)?;
    let der = fleetward_pki::ca_der_from_pem(&pem)
        .map_err(|e| config_err!("{}: {e}", creds.cert.display()))?;
    let identity = fleetward_pki::identity_from_der(&der)
        .map_err(|e| config_err!("{}: {e}", creds.cert.display()))?;
    let (key, csr) =
        generate_key_and_csr(&identity).map_err(|e| CliError::Failed(e.to_string()))?;
    let resp = c
        .renew_operator(api::RenewOperatorRequest { csr_pem: csr })
        .await?
        .into_inner();
    let fail = |p: &Path| {
        let p = p.display().to_string();
        move |e: std::io::Error| CliError::Failed(format!("cannot write {p}: {e}"))
    };
    let beside = |p: &Path| {
        let mut name = p.file_name().unwrap_or_default().to_os_string();
        name.push(".new");
        p.with_file_name(name)
    };
    let (key_new, cert_new) = (beside(&creds.key), beside(&creds.cert));
    fleetward_pki::write_private_key(&key_new, key.pem()).map_err(fail(&key_new))?;
    fleetward_pki::write_public(&cert_new, &resp.cert_pem).map_err(fail(&cert_new))?;
    std::fs::rename(&key_new, &creds.key).map_err(fail(&creds.key))?;
    std::fs::rename(&cert_new, &creds.cert).map_err(fail(&creds.cert))?;
    let until = output::rfc3339(resp.not_after_unix_ms);
    let v = json!({"name": identity.name, "not_after_unix_ms": resp.not_after_unix_ms,
                   "cert": creds.cert.display().to_string(), "key": creds.key.display().to_string()});
    let text = format!(
        "renewed operator certificate {} (valid until {until})\nwrote {}, {} (mode 0600)",
        identity.name,
        creds.cert.display(),
        creds.key.display()
    );
    Ok(output::done(text, v, fmt))
}

/// The files `operator issue --write-config` writes.
struct ConfigFiles {
    toml: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

impl ConfigFiles {
    /// Refuses up front (before a certificate is issued) to overwrite an existing config or key.
    fn new(path: &Path, name: &str) -> Result<Self, CliError> {
        let files = ConfigFiles {
            toml: path.join("cli.toml"),
            cert: path.join(format!("{name}.crt")),
            key: path.join(format!("{name}.key")),
            ca: path.join("ca.crt"),
        };
        for p in [&files.toml, &files.cert, &files.key] {
            if p.exists() {
                return Err(config_err!("refusing to overwrite {}", p.display()));
            }
        }
        Ok(files)
    }

    fn write(
        &self,
        controller: &str,
        resp: &api::IssueOperatorResponse,
        key_pem: &str,
    ) -> Result<(), CliError> {
        use std::os::unix::fs::DirBuilderExt;
        let name = |p: &Path| p.file_name().map(PathBuf::from);
        let cfg = conn::CliConfig {
            controller: Some(controller.to_owned()),
            ca: name(&self.ca),
            cert: name(&self.cert),
            key: name(&self.key),
        };
        let text = format!(
            "# fleetward CLI configuration, written by `fleetward operator issue`.\n\
             # Paths are relative to this file.\n{}",
            toml::to_string(&cfg).map_err(|e| CliError::Failed(e.to_string()))?
        );
        let fail = |p: &Path| {
            let p = p.display().to_string();
            move |e: std::io::Error| CliError::Failed(format!("cannot write {p}: {e}"))
        };
        if let Some(dir) = self.toml.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(fail(dir))?;
        }
        fleetward_pki::write_private_key(&self.key, key_pem).map_err(fail(&self.key))?;
        fleetward_pki::write_public(&self.cert, &resp.cert_pem).map_err(fail(&self.cert))?;
        fleetward_pki::write_public(&self.ca, &resp.ca_pem).map_err(fail(&self.ca))?;
        fleetward_pki::write_public(&self.toml, &text).map_err(fail(&self.toml))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: ClientCommand,
    }

    /// The CLI renders the operator API's messages only: the controller's state machines,
    /// drivers, store and server stay out of it, so their formats can change freely.
    #[test]
    fn the_cli_imports_no_controller_internals() {
        let sources = [
            ("mod.rs", include_str!("mod.rs")),
            ("conn.rs", include_str!("conn.rs")),
            ("output.rs", include_str!("output.rs")),
            ("rollout.rs", include_str!("rollout.rs")),
            ("shutdown.rs", include_str!("shutdown.rs")),
        ];
        let forbidden = [
            "orchestrate",
            "rollout",
            "shutdown",
            "store",
            "server",
            "wire",
        ];
        for (file, text) in sources {
            for line in text.lines() {
                let Some(pos) = line.find("crate::") else {
                    continue;
                };
                let module = line[pos + "crate::".len()..]
                    .split(|c: char| !c.is_alphanumeric() && c != '_')
                    .next()
                    .unwrap_or_default();
                assert!(
                    !forbidden.contains(&module),
                    "cli/{file} uses crate::{module}: {line}"
                );
            }
        }
    }

    #[test]
    fn ttl_parsing() {
        let ok = [
            ("90s", 90),
            ("30m", 1800),
            ("1h", 3600),
            ("2d", 172_800),
            ("1w", 604_800),
            ("1h30m", 5400),
            ("45", 45),
        ];
        for (s, secs) in ok {
            assert_eq!(parse_ttl(s), Ok(secs), "{s}");
        }
        for s in [
            "",
            "0",
            "0s",
            "h",
            "1x",
            "1h30",
            "-1h",
            "1.5h",
            "99999999999999999999d",
            " 1h",
        ] {
            assert!(parse_ttl(s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn status_codes_read_as_words_with_their_exit_codes() {
        use tonic::{Code, Status};
        let cases = [
            (
                Status::permission_denied("operators only"),
                "operators only",
                1,
            ),
            (Status::not_found(""), "not found", 1),
            (
                Status::failed_precondition("pve-02 has started: it cannot be skipped"),
                "refused: pve-02 has started: it cannot be skipped",
                1,
            ),
            (Status::invalid_argument("ttl too long"), "ttl too long", 2),
            (
                Status::unavailable("node pve-01 disconnected"),
                "node pve-01 disconnected",
                1,
            ),
            (
                Status::internal("disk full"),
                "the controller failed: disk full",
                1,
            ),
            (
                Status::deadline_exceeded("timeout"),
                "the controller did not answer in time (is it overloaded or stopped?)",
                3,
            ),
        ];
        for (status, text, code) in cases {
            let e = CliError::from(status);
            assert_eq!((e.message(), e.exit_code()), (text, code), "{e:?}");
        }
        // A transport failure (the status has a source) means the controller is unreachable.
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection reset");
        let mut s = Status::new(Code::Unavailable, "transport error");
        s.set_source(std::sync::Arc::new(io));
        let e = CliError::from(s);
        assert_eq!(e.exit_code(), 3, "{e:?}");
        assert!(e.message().contains("connection reset"), "{e:?}");
        // No gRPC code names anywhere.
        for code in [
            Code::FailedPrecondition,
            Code::PermissionDenied,
            Code::Unimplemented,
        ] {
            let m = CliError::from(Status::new(code, "")).message().to_owned();
            assert!(!m.contains("precondition") && !m.contains("denied"), "{m}");
        }
    }

    #[test]
    fn every_leaf_takes_the_client_options() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let args = [
            "x",
            "token",
            "create",
            "--ttl",
            "1h",
            "--node",
            "pve1",
            "--output",
            "json",
            "--data-dir",
            "/d",
        ];
        let cli = Cli::try_parse_from(args).unwrap();
        assert_eq!(cli.cmd.opts().output, Format::Json);
        assert_eq!(cli.cmd.opts().data_dir.as_deref(), Some(Path::new("/d")));
        assert!(matches!(
            cli.cmd,
            ClientCommand::Token {
                cmd: TokenCmd::Create {
                    ttl: Some(3600),
                    ..
                }
            }
        ));
        assert!(Cli::try_parse_from(["x", "token", "create", "--ttl", "soon"]).is_err());
        let cli = Cli::try_parse_from(["x", "audit"]).unwrap();
        assert!(matches!(cli.cmd, ClientCommand::Audit { limit: 50, .. }));
    }

    #[test]
    fn write_config_writes_a_usable_cli_toml() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("conf");
        let files = ConfigFiles::new(&dir, "alice").unwrap();
        let resp = api::IssueOperatorResponse {
            cert_pem: "CERT".into(),
            key_pem: None,
            ca_pem: "CA".into(),
        };
        files.write("https://ctl:7443", &resp, "KEY").unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("alice.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let opts = ClientOpts {
            data_dir: None,
            config: Some(dir.join("cli.toml")),
            controller: None,
            output: Format::Text,
        };
        let creds = conn::resolve(&opts, &|_| None).unwrap();
        assert_eq!(creds.controller, "https://ctl:7443");
        assert_eq!(std::fs::read_to_string(&creds.key).unwrap(), "KEY");
        assert_eq!(std::fs::read_to_string(&creds.cert).unwrap(), "CERT");
        assert_eq!(std::fs::read_to_string(&creds.ca).unwrap(), "CA");
        // A second run refuses before anything is issued.
        let again = ConfigFiles::new(&dir, "alice");
        assert!(
            matches!(again, Err(CliError::Config(m)) if m.contains("alice") || m.contains("cli.toml"))
        );
    }
}
