//! `fleetward rollout …`: plan, start, watch and steer rolling updates.

use std::io::{BufRead, Write};

use clap::{Args, Subcommand};
use fleetward_proto::api::{self, operator_service_client::OperatorServiceClient};
use serde_json::Value;
use tonic::transport::Channel;

use super::output::{json_string, rfc3339, table};
use super::{CliError, ClientOpts, Format};
use crate::orchestrate::rollout::{status_word, Rollout};
use crate::rollout::{DryRun, Phase, Status};
use crate::store::OpEvent;

#[derive(Debug, Args)]
pub struct Selection {
    /// Only these nodes, in this order (default: every enrolled node, by name; the
    /// controller's own node always goes last).
    #[arg(long, value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// Nodes in maintenance at the same time.
    #[arg(long, default_value_t = 1)]
    pub max_unavailable: u32,
    /// Reboot: if-needed (a new kernel or /run/reboot-required), always, never.
    #[arg(long, default_value = "if-needed", value_parser = ["if-needed", "always", "never"])]
    pub reboot: String,
}

#[derive(Debug, Subcommand)]
pub enum RolloutCmd {
    /// Dry run: gates now, order, steps, packages, guests and downtime per node.
    Plan {
        #[command(flatten)]
        sel: Selection,
        /// Run `apt-get update` on the nodes first so the package lists are current.
        #[arg(long)]
        refresh_lists: bool,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Start a rolling update (shows the plan and asks first, unless --yes).
    Start {
        #[command(flatten)]
        sel: Selection,
        /// Start nodes only inside this window, e.g. "Sat 02:00-05:00 Europe/Berlin".
        #[arg(long)]
        window: Option<String>,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Progress per node (the newest rollout unless --id).
    Status {
        #[arg(long)]
        id: Option<String>,
        /// Keep showing progress until the rollout completes, halts or is aborted.
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// No new node starts; started nodes finish.
    Pause(IdOpts),
    /// Continue a paused or halted rollout (re-runs the step that stopped).
    Resume(IdOpts),
    /// Stop for good; started nodes are left where they are for a person.
    Abort(IdOpts),
    /// Leave out a node that has not started (audited).
    Skip {
        node: String,
        #[command(flatten)]
        id: IdOpts,
    },
    /// Every rollout, oldest first.
    List {
        #[command(flatten)]
        opts: ClientOpts,
    },
}

#[derive(Debug, Args)]
pub struct IdOpts {
    /// The rollout (default: the newest).
    #[arg(long)]
    pub id: Option<String>,
    #[command(flatten)]
    pub opts: ClientOpts,
}

impl RolloutCmd {
    pub fn opts(&self) -> &ClientOpts {
        match self {
            RolloutCmd::Plan { opts, .. }
            | RolloutCmd::Start { opts, .. }
            | RolloutCmd::Status { opts, .. }
            | RolloutCmd::List { opts } => opts,
            RolloutCmd::Pause(i) | RolloutCmd::Resume(i) | RolloutCmd::Abort(i) => &i.opts,
            RolloutCmd::Skip { id, .. } => &id.opts,
        }
    }
}

fn request(sel: &Selection) -> api::RolloutRequest {
    api::RolloutRequest {
        nodes: sel.nodes.clone(),
        max_unavailable: sel.max_unavailable,
        reboot: sel.reboot.clone(),
        refresh_lists: false,
        window: String::new(),
    }
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, json: &str) -> Result<T, CliError> {
    serde_json::from_str(json)
        .map_err(|e| CliError::Failed(format!("the controller sent an unreadable {what}: {e}")))
}

pub(super) async fn execute(
    c: &mut OperatorServiceClient<Channel>,
    cmd: &RolloutCmd,
    fmt: Format,
) -> Result<String, CliError> {
    Ok(match cmd {
        RolloutCmd::Plan {
            sel, refresh_lists, ..
        } => {
            let mut req = request(sel);
            req.refresh_lists = *refresh_lists;
            let resp = c.rollout_plan(req).await?.into_inner();
            let dry: DryRun = parse("plan", &resp.plan_json)?;
            match fmt {
                Format::Json => json_string(&serde_json::to_value(&dry).unwrap_or_default()),
                Format::Text => plan_text(&dry),
            }
        }
        RolloutCmd::Start {
            sel, window, yes, ..
        } => {
            if !yes {
                let resp = c.rollout_plan(request(sel)).await?.into_inner();
                let dry: DryRun = parse("plan", &resp.plan_json)?;
                eprint!("{}", plan_text(&dry));
                if !confirm("Start this rolling update?")? {
                    return Err(CliError::Failed("not started".into()));
                }
            }
            let mut req = request(sel);
            req.window = window.clone().unwrap_or_default();
            let resp = c.rollout_start(req).await?.into_inner();
            status_out(&resp, fmt)?
        }
        RolloutCmd::Status { id, watch, .. } => {
            let req = api::RolloutStatusRequest {
                id: id.clone().unwrap_or_default(),
            };
            if !watch {
                let resp = c.rollout_status(req).await?.into_inner();
                return status_out(&resp, fmt);
            }
            let mut last = String::new();
            loop {
                let resp = c.rollout_status(req.clone()).await?.into_inner();
                let text = status_out(&resp, fmt)?;
                if text != last {
                    print!("{text}");
                    let _ = std::io::stdout().flush();
                    last = text;
                }
                let r: Rollout = parse("rollout", &resp.state_json)?;
                if !matches!(
                    r.state.status,
                    Status::Running | Status::Paused | Status::Planned
                ) {
                    return Ok(String::new());
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
        RolloutCmd::Pause(i) => control(c, i, "pause", "", fmt).await?,
        RolloutCmd::Resume(i) => control(c, i, "resume", "", fmt).await?,
        RolloutCmd::Abort(i) => control(c, i, "abort", "", fmt).await?,
        RolloutCmd::Skip { node, id } => control(c, id, "skip", node, fmt).await?,
        RolloutCmd::List { .. } => {
            let resp = c
                .rollout_list(api::RolloutListRequest {})
                .await?
                .into_inner();
            let all: Vec<Rollout> = resp
                .states_json
                .iter()
                .map(|j| parse("rollout", j))
                .collect::<Result<_, _>>()?;
            match fmt {
                Format::Json => json_string(&serde_json::to_value(&all).unwrap_or_default()),
                Format::Text => {
                    let rows: Vec<Vec<String>> = all
                        .iter()
                        .map(|r| {
                            let done = r.state.nodes.iter().filter(|n| n.phase == Phase::Done);
                            vec![
                                r.state.plan.id.clone(),
                                rfc3339(r.created_ms as i64),
                                status_word(&r.state.status).into(),
                                format!("{}/{}", done.count(), r.state.nodes.len()),
                                r.actor.clone(),
                            ]
                        })
                        .collect();
                    table(&["ID", "CREATED", "STATUS", "DONE", "BY"], &rows)
                }
            }
        }
    })
}

async fn control(
    c: &mut OperatorServiceClient<Channel>,
    i: &IdOpts,
    action: &str,
    node: &str,
    fmt: Format,
) -> Result<String, CliError> {
    let resp = c
        .rollout_control(api::RolloutControlRequest {
            id: i.id.clone().unwrap_or_default(),
            action: action.into(),
            node: node.into(),
        })
        .await?
        .into_inner();
    status_out(&resp, fmt)
}

fn confirm(question: &str) -> Result<bool, CliError> {
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| CliError::Failed(format!("cannot read the answer: {e}")))?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

pub(crate) fn status_out(
    resp: &api::RolloutStatusResponse,
    fmt: Format,
) -> Result<String, CliError> {
    let r: Rollout = parse("rollout", &resp.state_json)?;
    let events: Vec<OpEvent> = parse("event log", &resp.events_json)?;
    let output: Value = parse("output", &resp.output_json)?;
    if fmt == Format::Json {
        return Ok(json_string(&serde_json::json!({
            "rollout": r,
            "events": events,
            "output": output,
        })));
    }
    let mut text = format!(
        "rollout {}: {}",
        r.state.plan.id,
        status_word(&r.state.status)
    );
    if let Status::Halted { node, gate, reason } = &r.state.status {
        text += &format!(" at {node} (gate {gate:?}): {reason}");
    }
    if let Some(w) = &r.window {
        text += &format!(
            "\nwindow: {w}{}",
            if r.window_paused {
                " (outside: waiting)"
            } else {
                ""
            }
        );
    }
    text += &format!("\nmax-unavailable: {}\n", r.state.plan.max_unavailable);
    let rows: Vec<Vec<String>> = r
        .state
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                format!("{:?}", n.phase),
                n.pending.as_ref().map_or("-".into(), |p| p.key.to_string()),
                n.expected_kernel.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    text += &table(&["NODE", "PHASE", "WAITING FOR", "EXPECTED KERNEL"], &rows);
    if let Some(obj) = output.as_object() {
        for (node, lines) in obj {
            let lines: Vec<&str> = lines
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if let Some(last) = lines.last() {
                text += &format!("{node}> {last}\n");
            }
        }
    }
    Ok(text)
}

/// The dry run as text.
pub fn plan_text(d: &DryRun) -> String {
    let mut t = format!(
        "rolling update plan: {} node(s), max-unavailable {}, reboot {:?}\n",
        d.nodes.len(),
        d.plan.max_unavailable,
        d.plan.reboot_policy
    );
    if let Some(h) = &d.plan.controller_host {
        t += &format!("the controller's own node {h} goes last\n");
    }
    for n in &d.nodes {
        t += &format!(
            "\n{}. {}  gate: {}  reboot: {}  kernel after: {}  downtime ~{} min\n",
            n.position,
            n.name,
            match &n.gate {
                Ok(()) => "ok".to_string(),
                Err(e) => format!("FAILS ({e})"),
            },
            if n.reboot { "yes" } else { "no" },
            n.next_kernel.as_deref().unwrap_or("-"),
            n.downtime_secs.div_ceil(60)
        );
        for s in &n.steps {
            t += &format!("   - {s}\n");
        }
        if n.packages.is_empty() {
            t += "   packages: none to upgrade (as of the node's last package lists)\n";
        } else {
            t += &format!("   packages ({}):\n", n.packages.len());
            for p in &n.packages {
                t += &format!("     {} {} -> {}\n", p.package, p.installed, p.candidate);
            }
        }
        for g in &n.guests {
            t += &format!(
                "   guest {}{}: {}\n",
                g.vmid,
                g.name
                    .as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default(),
                g.what
            );
        }
    }
    if !d.blocked.is_empty() {
        t += &format!(
            "\nblocked now: {} (a rollout would halt there)\n",
            d.blocked.join(", ")
        );
    }
    t
}
