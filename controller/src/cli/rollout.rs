//! `fleetward rollout …`: plan, start, watch and steer rolling updates. Renders the
//! operator API's typed rollout messages; knows nothing of the controller's internals.

use std::io::{BufRead, Write};

use clap::{Args, Subcommand, ValueEnum};
use fleetward_proto::api::{self, operator_service_client::OperatorServiceClient};
use serde_json::{json, Value};
use tonic::transport::Channel;

use super::live::Live;
use super::output::{self, enum_name, json_string, rfc3339, table, View};
use super::words;
use super::{CliError, ClientOpts, Format, Reply};

/// `--reboot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RebootArg {
    IfNeeded,
    Always,
    Never,
}

impl From<RebootArg> for api::RebootPolicy {
    fn from(r: RebootArg) -> Self {
        match r {
            RebootArg::IfNeeded => api::RebootPolicy::IfNeeded,
            RebootArg::Always => api::RebootPolicy::Always,
            RebootArg::Never => api::RebootPolicy::Never,
        }
    }
}

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
    #[arg(long, value_enum, default_value_t = RebootArg::IfNeeded)]
    pub reboot: RebootArg,
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
        /// Run `apt-get update` on the nodes first, then leave out each node with nothing
        /// to upgrade and no reboot to do (none left: nothing is started, exit 0).
        #[arg(long)]
        refresh_lists: bool,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        /// Then follow its progress as `status --watch` does.
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Progress per node (the newest rollout unless --id). Exit status 1 when it halted
    /// or was aborted.
    Status {
        #[arg(long, value_name = "ROLLOUT")]
        id: Option<String>,
        /// Follow the progress until the rollout completes, halts or is aborted; exits
        /// with the final state's status. A terminal shows one block redrawn in place;
        /// piped, one line per change (with --output json, one document per change).
        #[arg(long)]
        watch: bool,
        /// Show command ids (idempotency keys) in the text output.
        #[arg(long)]
        verbose: bool,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// No new node starts; started nodes finish.
    Pause(IdOpts),
    /// Continue a paused or halted rollout (re-runs the step that stopped).
    Resume(IdOpts),
    /// Stop for good (asks first, unless --yes). Started nodes are left where they are
    /// (the status names them) unless --restore brings them back.
    Abort {
        /// Do not ask for confirmation (required when stdin is not a terminal).
        #[arg(long)]
        yes: bool,
        /// Bring the nodes the rollout started back first: `ceph osd unset noout` (if it
        /// set it) and maintenance off, each observed; an action in flight (an upgrade)
        /// is waited for, never interrupted.
        #[arg(long)]
        restore: bool,
        #[command(flatten)]
        id: IdOpts,
    },
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
    #[arg(long, value_name = "ROLLOUT")]
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
            RolloutCmd::Pause(i) | RolloutCmd::Resume(i) => &i.opts,
            RolloutCmd::Skip { id, .. } | RolloutCmd::Abort { id, .. } => &id.opts,
        }
    }
}

fn request(sel: &Selection) -> api::RolloutRequest {
    api::RolloutRequest {
        nodes: sel.nodes.clone(),
        max_unavailable: sel.max_unavailable,
        reboot: api::RebootPolicy::from(sel.reboot).into(),
        refresh_lists: false,
        window: String::new(),
        lists_refreshed: false,
    }
}

pub(super) async fn execute(
    c: &mut OperatorServiceClient<Channel>,
    cmd: &RolloutCmd,
    fmt: Format,
) -> Result<Reply, CliError> {
    Ok(match cmd {
        RolloutCmd::Plan {
            sel, refresh_lists, ..
        } => {
            let mut req = request(sel);
            req.refresh_lists = *refresh_lists;
            let resp = c.rollout_plan(req).await?.into_inner();
            Reply::ok(match fmt {
                Format::Json => json_string(&plan_json(&resp)),
                Format::Text => plan_text(&resp),
            })
        }
        RolloutCmd::Start {
            sel,
            window,
            refresh_lists,
            yes,
            watch,
            ..
        } => {
            if *refresh_lists || !yes {
                let mut req = request(sel);
                req.refresh_lists = *refresh_lists;
                let plan = c.rollout_plan(req).await?.into_inner();
                if !plan.nodes.is_empty() && plan.nodes.iter().all(|n| n.skipped) {
                    // Every node is up to date: done, and no rollout (no migration) starts.
                    return Ok(Reply::ok(match fmt {
                        Format::Json => json_string(&plan_json(&plan)),
                        Format::Text => plan_text(&plan) + "no rollout started\n",
                    }));
                }
                if !yes {
                    eprint!("{}", plan_text(&plan));
                    if !confirm("Start this rolling update?")? {
                        return Err(CliError::Failed("not started".into()));
                    }
                }
            }
            let mut req = request(sel);
            req.refresh_lists = *refresh_lists;
            // The plan above refreshed them: once is enough.
            req.lists_refreshed = *refresh_lists;
            req.window = window.clone().unwrap_or_default();
            let resp = c.rollout_start(req).await?.into_inner();
            match (&resp.rollout, watch) {
                (Some(r), true) => return watch_rollout(c, r.id.clone(), fmt, false).await,
                _ => status_reply(&resp, fmt)?,
            }
        }
        RolloutCmd::Status {
            id, watch, verbose, ..
        } => {
            let id = id.clone().unwrap_or_default();
            if *watch {
                return watch_rollout(c, id, fmt, *verbose).await;
            }
            let req = api::RolloutStatusRequest { id };
            let resp = c.rollout_status(req).await?.into_inner();
            Reply {
                text: status_render(&resp, fmt, &View::here(*verbose))?,
                ok: healthy(resp.rollout.as_ref()),
            }
        }
        RolloutCmd::Pause(i) => control(c, i, api::ControlVerb::Pause, "", fmt).await?,
        RolloutCmd::Resume(i) => control(c, i, api::ControlVerb::Resume, "", fmt).await?,
        RolloutCmd::Abort { yes, restore, id } => {
            if !yes {
                confirm_abort(*restore)?;
            }
            let req = api::RolloutControlRequest {
                id: id.id.clone().unwrap_or_default(),
                verb: api::ControlVerb::Abort.into(),
                node: String::new(),
                restore: *restore,
            };
            control_req(c, req, fmt).await?
        }
        RolloutCmd::Skip { node, id } => control(c, id, api::ControlVerb::Skip, node, fmt).await?,
        RolloutCmd::List { .. } => {
            let resp = c
                .rollout_list(api::RolloutListRequest {})
                .await?
                .into_inner();
            Reply::ok(list_out(&resp.rollouts, fmt))
        }
    })
}

async fn control(
    c: &mut OperatorServiceClient<Channel>,
    i: &IdOpts,
    verb: api::ControlVerb,
    node: &str,
    fmt: Format,
) -> Result<Reply, CliError> {
    let req = api::RolloutControlRequest {
        id: i.id.clone().unwrap_or_default(),
        verb: verb.into(),
        node: node.into(),
        restore: false,
    };
    control_req(c, req, fmt).await
}

/// `rollout abort` without `--yes`: asks on a terminal; without one it refuses (exit 2),
/// since nobody could answer.
fn confirm_abort(restore: bool) -> Result<(), CliError> {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        return Err(CliError::Config(
            "rollout abort needs confirmation and stdin is not a terminal: pass --yes".into(),
        ));
    }
    let question = if restore {
        "Abort the rollout and bring its started nodes back (noout unset, maintenance off)?"
    } else {
        "Abort the rollout? Started nodes stay where they are (in maintenance, perhaps \
         under noout) until a person brings them back; --restore does it."
    };
    if confirm(question)? {
        Ok(())
    } else {
        Err(CliError::Failed(
            "not confirmed: nothing was aborted".into(),
        ))
    }
}

async fn control_req(
    c: &mut OperatorServiceClient<Channel>,
    req: api::RolloutControlRequest,
    fmt: Format,
) -> Result<Reply, CliError> {
    let verb = req.verb();
    let node = req.node.clone();
    // A refused request (skip of a started node, resume of a finished rollout) comes back
    // as an error with the reason; an accepted one is done, whatever state it leaves.
    let resp = c.rollout_control(req).await?.into_inner();
    // The controller ignores a request that cannot apply to the rollout's state (resume an
    // aborted rollout): that is a refusal too, not a status with exit 0.
    if let Some(r) = &resp.rollout {
        use api::RolloutState as S;
        let state = r.state();
        let finished = matches!(state, S::Aborted | S::Completed);
        let refused = match verb {
            api::ControlVerb::Resume => finished.then_some("nothing to resume"),
            api::ControlVerb::Pause => {
                (finished || state == S::Halted).then_some("only a running rollout can be paused")
            }
            api::ControlVerb::Abort => (state == S::Completed).then_some("nothing to abort"),
            api::ControlVerb::Skip => r
                .nodes
                .iter()
                .any(|n| n.name == node && n.phase() != api::RolloutPhase::Skipped)
                .then_some("the node has already started"),
            api::ControlVerb::Unspecified => None,
        };
        if let Some(why) = refused {
            return Err(CliError::Failed(format!(
                "refused: rollout {} is {}: {why}",
                r.id,
                state_word(r)
            )));
        }
    }
    Ok(Reply::ok(status_out(&resp, fmt)?))
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

/// Follows rollout `id` (empty: the newest) until it completes, halts or is aborted; the
/// reply is empty (everything was printed) and carries the final state's verdict.
async fn watch_rollout(
    c: &mut OperatorServiceClient<Channel>,
    id: String,
    fmt: Format,
    verbose: bool,
) -> Result<Reply, CliError> {
    let req = api::RolloutStatusRequest { id };
    let mut live = Live::stdout();
    let mut last_json = String::new();
    loop {
        let resp = c.rollout_status(req.clone()).await?.into_inner();
        let r = resp
            .rollout
            .as_ref()
            .ok_or_else(|| CliError::Failed("the controller sent no rollout".into()))?;
        match fmt {
            Format::Json => {
                // One document per line, one line per change.
                let line = status_json(&resp, r).to_string();
                if line != last_json {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{line}");
                    let _ = out.flush();
                    last_json = line;
                }
            }
            Format::Text => {
                let (block, timeline) = live_frame(&resp, r, &View::here(verbose));
                live.frame(&block, &timeline);
            }
        }
        if !unfinished(Some(r)) {
            return Ok(Reply {
                text: String::new(),
                ok: healthy(Some(r)),
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// The live view's block (headline, the node table, the newest events) and its timeline
/// (every event as a timed sentence).
pub(crate) fn live_frame(
    resp: &api::RolloutStatusResponse,
    r: &api::Rollout,
    view: &View,
) -> (String, Vec<String>) {
    let timeline: Vec<String> = resp
        .events
        .iter()
        .map(|e| format!("{}  {}", rfc3339(e.time_unix_ms), words::rollout_event(e)))
        .collect();
    let mut block = headline(r) + "\n" + &node_table(r, &resp.events, view);
    for line in timeline.iter().skip(timeline.len().saturating_sub(3)) {
        block += line;
        block.push('\n');
    }
    (block, timeline)
}

/// Still running, paused or not started: `status --watch` keeps showing it.
fn unfinished(r: Option<&api::Rollout>) -> bool {
    r.is_some_and(|r| {
        matches!(
            r.state(),
            api::RolloutState::Running | api::RolloutState::Paused | api::RolloutState::Planned
        )
    })
}

/// Neither halted nor aborted: `status` exits 0 (a running rollout is healthy so far).
fn healthy(r: Option<&api::Rollout>) -> bool {
    r.is_some_and(|r| {
        !matches!(
            r.state(),
            api::RolloutState::Halted | api::RolloutState::Aborted
        )
    })
}

/// The status, and exit 1 when the rollout halted or was aborted.
fn status_reply(resp: &api::RolloutStatusResponse, fmt: Format) -> Result<Reply, CliError> {
    Ok(Reply {
        text: status_out(resp, fmt)?,
        ok: healthy(resp.rollout.as_ref()),
    })
}

/// One word for a rollout's state: `running`, `halted`, ….
pub fn state_word(r: &api::Rollout) -> String {
    words::rollout_state(r.state())
}

fn phase_name(p: api::RolloutPhase) -> String {
    enum_name(p.as_str_name(), "ROLLOUT_PHASE_")
}

fn gate_name(g: api::RolloutGate) -> String {
    enum_name(g.as_str_name(), "ROLLOUT_GATE_")
}

fn reboot_name(r: api::RebootPolicy) -> String {
    enum_name(r.as_str_name(), "REBOOT_POLICY_")
}

/// A rollout as JSON, with stable machine names.
fn rollout_json(r: &api::Rollout) -> Value {
    let nodes: Vec<Value> = r
        .nodes
        .iter()
        .map(|n| {
            let attempts: serde_json::Map<String, Value> = n
                .attempts
                .iter()
                .map(|a| (a.action.clone(), json!(a.attempts)))
                .collect();
            json!({
                "name": n.name,
                "phase": phase_name(n.phase()),
                "waiting_for": n.waiting_for,
                "acknowledged": n.acknowledged,
                "attempts": attempts,
                "expected_kernel": n.expected_kernel,
                "deadline_unix_ms": n.deadline_unix_ms,
            })
        })
        .collect();
    let halt = r
        .halt
        .as_ref()
        .map(|h| json!({"node": h.node, "gate": gate_name(h.gate()), "reason": h.reason}));
    json!({
        "id": r.id,
        "status": state_word(r),
        "halt": halt,
        "max_unavailable": r.max_unavailable,
        "reboot": reboot_name(r.reboot()),
        "controller_host": r.controller_host,
        "window": r.window,
        "window_paused": r.window_paused,
        "created_unix_ms": r.created_unix_ms,
        "updated_unix_ms": r.updated_unix_ms,
        "actor": r.actor,
        "nodes": nodes,
        "left_changed": left_changed(r),
    })
}

/// Nodes an aborted rollout started and did not finish: left in maintenance (perhaps
/// under noout) for a person.
fn left_changed(r: &api::Rollout) -> Vec<String> {
    if r.state() != api::RolloutState::Aborted {
        return Vec::new();
    }
    r.nodes
        .iter()
        .filter(|n| {
            !matches!(
                n.phase(),
                api::RolloutPhase::Pending | api::RolloutPhase::Done | api::RolloutPhase::Skipped
            )
        })
        .map(|n| n.name.clone())
        .collect()
}

/// An event as JSON: `{time_unix_ms, event, …the fields its kind uses}`.
fn event_json(e: &api::RolloutEvent) -> Value {
    let kind = match e.kind() {
        api::RolloutEventKind::Unspecified => "unknown".to_string(),
        k => enum_name(k.as_str_name(), "ROLLOUT_EVENT_KIND_"),
    };
    let mut v = json!({"time_unix_ms": e.time_unix_ms, "event": kind});
    if !e.node.is_empty() {
        v["node"] = json!(e.node);
    }
    if e.phase() != api::RolloutPhase::Unspecified {
        v["phase"] = json!(phase_name(e.phase()));
    }
    if e.gate() != api::RolloutGate::Unspecified {
        v["gate"] = json!(gate_name(e.gate()));
    }
    if !e.reason.is_empty() {
        v["reason"] = json!(e.reason);
    }
    v
}

/// `rollout list`.
pub(crate) fn list_out(all: &[api::Rollout], fmt: Format) -> String {
    match fmt {
        Format::Json => json_string(&Value::Array(all.iter().map(rollout_json).collect())),
        Format::Text => {
            let rows: Vec<Vec<String>> = all
                .iter()
                .map(|r| {
                    let done = r
                        .nodes
                        .iter()
                        .filter(|n| n.phase() == api::RolloutPhase::Done);
                    vec![
                        r.id.clone(),
                        rfc3339(r.created_unix_ms),
                        state_word(r),
                        format!("{}/{}", done.count(), r.nodes.len()),
                        r.actor.clone(),
                    ]
                })
                .collect();
            table(&["ID", "CREATED", "STATUS", "DONE", "BY"], &rows)
        }
    }
}

/// A status response as text or JSON.
pub(crate) fn status_out(
    resp: &api::RolloutStatusResponse,
    fmt: Format,
) -> Result<String, CliError> {
    status_render(resp, fmt, &View::here(false))
}

/// How many of the newest events the text status shows.
const EVENTS_SHOWN: usize = 6;

/// [`status_out`] at `now_ms`; `verbose` adds command ids to the text.
pub(crate) fn status_render(
    resp: &api::RolloutStatusResponse,
    fmt: Format,
    view: &View,
) -> Result<String, CliError> {
    let r = resp
        .rollout
        .as_ref()
        .ok_or_else(|| CliError::Failed("the controller sent no rollout".into()))?;
    if fmt == Format::Json {
        return Ok(json_string(&status_json(resp, r)));
    }
    let mut text = view.wrap_line(&headline(r)) + "\n";
    text += &view.wrap_line(&format!(
        "started by {} at {}; max-unavailable {}; {}",
        or_someone(&r.actor),
        rfc3339(r.created_unix_ms),
        r.max_unavailable,
        words::reboot(r.reboot())
    ));
    text.push('\n');
    if let Some(w) = &r.window {
        let open = if r.window_paused {
            " (closed now: no node starts until it opens)"
        } else {
            ""
        };
        text += &view.wrap_line(&format!("window: {w}{open}"));
        text.push('\n');
    }
    text += &node_table(r, &resp.events, view);
    let skip = resp.events.len().saturating_sub(EVENTS_SHOWN);
    for e in resp.events.iter().skip(skip) {
        let line = format!("{}  {}", rfc3339(e.time_unix_ms), words::rollout_event(e));
        text += &view.wrap_line(&line);
        text.push('\n');
    }
    for o in &resp.output {
        if let Some(last) = o.lines.last() {
            text += &view.wrap_line(&format!("{}> {last}", o.node));
            text.push('\n');
        }
    }
    let left = left_changed(r);
    if !left.is_empty() {
        text += &view.wrap_line(&format!(
            "LEFT CHANGED: {} (started and not finished: in HA maintenance, perhaps under \
             Ceph noout); bring them back by hand (`ha-manager crm-command node-maintenance \
             disable NODE`, `ceph osd unset noout`) — `fleetward findings` shows \
             node.left-in-maintenance until they are",
            left.join(", ")
        ));
        text.push('\n');
    }
    if r.state() == api::RolloutState::Halted {
        text += &view.wrap_line(
            "next: fix the cause, then `fleetward rollout resume` (re-runs the step that \
             stopped), or `fleetward rollout abort`",
        );
        text.push('\n');
    }
    Ok(text)
}

fn or_someone(actor: &str) -> &str {
    if actor.is_empty() {
        "someone"
    } else {
        actor
    }
}

/// "rollout ID: halted at NODE by gate GATE: REASON", "rollout ID: running (2/3 done)".
pub(crate) fn headline(r: &api::Rollout) -> String {
    let done = r
        .nodes
        .iter()
        .filter(|n| {
            matches!(
                n.phase(),
                api::RolloutPhase::Done | api::RolloutPhase::Skipped
            )
        })
        .count();
    let mut text = format!(
        "rollout {}: {} ({done}/{} nodes done)",
        r.id,
        words::rollout_state(r.state()),
        r.nodes.len()
    );
    if let Some(h) = &r.halt {
        if r.state() == api::RolloutState::Halted {
            let at = if h.node.is_empty() {
                String::new()
            } else {
                format!(" at {}", h.node)
            };
            text += &format!("{at} by gate {}: {}", words::gate(h.gate()), h.reason);
        }
    }
    text
}

/// NODE | NOW | FOR | WAITING FOR | KERNEL AFTER: what each node does, since when, and the
/// bound after which waiting halts the rollout.
pub(crate) fn node_table(r: &api::Rollout, events: &[api::RolloutEvent], view: &View) -> String {
    let (verbose, now_ms) = (view.verbose, view.now_ms);
    let rows: Vec<Vec<String>> = r
        .nodes
        .iter()
        .map(|n| {
            let since = events
                .iter()
                .rev()
                .find(|e| e.node == n.name && e.kind() == api::RolloutEventKind::Phase)
                .map(|e| e.time_unix_ms);
            let active = !matches!(
                n.phase(),
                api::RolloutPhase::Pending | api::RolloutPhase::Done | api::RolloutPhase::Skipped
            );
            let elapsed = match since {
                Some(t) if active => words::duration(now_ms - t),
                _ => "-".into(),
            };
            let mut waiting = match &n.waiting_for {
                Some(id) => {
                    let mut w = words::command(id);
                    if n.acknowledged {
                        w += ", acknowledged";
                    }
                    if verbose {
                        w += &format!(" [{id}]");
                    }
                    w
                }
                None => String::new(),
            };
            // A bound matters only while the rollout moves: a halted one waits for a person.
            let moving = matches!(
                r.state(),
                api::RolloutState::Running | api::RolloutState::Paused
            );
            if let Some(d) = n.deadline_unix_ms.filter(|_| active && moving) {
                let bound = if d > now_ms {
                    format!("halts in {}", words::duration(d - now_ms))
                } else {
                    "overdue".to_owned()
                };
                waiting = if waiting.is_empty() {
                    bound
                } else {
                    format!("{waiting}; {bound}")
                };
            }
            vec![
                n.name.clone(),
                words::phase(n.phase()).to_owned(),
                elapsed,
                if waiting.is_empty() {
                    "-".into()
                } else {
                    waiting
                },
                n.expected_kernel.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let header = ["NODE", "NOW", "FOR", "WAITING FOR", "KERNEL AFTER"];
    output::fit_table(&header, &rows, view.width, 3)
}

/// The status as JSON, with stable machine names and every key.
fn status_json(resp: &api::RolloutStatusResponse, r: &api::Rollout) -> Value {
    let output: serde_json::Map<String, Value> = resp
        .output
        .iter()
        .map(|o| (o.node.clone(), json!(o.lines)))
        .collect();
    json!({
        "rollout": rollout_json(r),
        "events": resp.events.iter().map(event_json).collect::<Vec<_>>(),
        "output": output,
    })
}

/// The dry run as JSON, with stable machine names.
fn plan_json(d: &api::RolloutPlanResponse) -> Value {
    let nodes: Vec<Value> = d
        .nodes
        .iter()
        .map(|n| {
            let packages: Vec<Value> = n
                .packages
                .iter()
                .map(|p| json!({"package": p.package, "installed": p.installed, "candidate": p.candidate}))
                .collect();
            let guests: Vec<Value> = n
                .guests
                .iter()
                .map(|g| json!({"vmid": g.vmid, "name": g.name, "what": g.what}))
                .collect();
            json!({
                "name": n.name,
                "position": n.position,
                "gate_ok": n.gate_ok,
                "gate_failure": (!n.gate_ok).then_some(&n.gate_failure),
                "steps": n.steps,
                "packages": packages,
                "reboot": n.reboot,
                "next_kernel": n.next_kernel,
                "guests": guests,
                "downtime_secs": n.downtime_secs,
                "skipped": n.skipped,
                "packages_from_apt": n.packages_from_apt,
                "removed": n.removed,
                "kept_back": n.kept_back,
                "apt_error": n.apt_error,
            })
        })
        .collect();
    json!({
        "id": d.id,
        "max_unavailable": d.max_unavailable,
        "reboot": reboot_name(d.reboot()),
        "controller_host": d.controller_host,
        "nodes": nodes,
        "blocked": d.blocked,
        "nothing_to_do": nothing_to_do(d),
    })
}

/// No selected node has a package to upgrade (as of its last lists) or a reboot to do.
fn nothing_to_do(d: &api::RolloutPlanResponse) -> bool {
    !d.nodes.is_empty() && d.nodes.iter().all(|n| n.packages.is_empty() && !n.reboot)
}

/// The dry run as text.
pub fn plan_text(d: &api::RolloutPlanResponse) -> String {
    let skipped = d.nodes.iter().filter(|n| n.skipped).count();
    let fresh = d.nodes.iter().any(|n| n.skipped);
    let mut t = format!(
        "rolling update plan: {} node(s), max-unavailable {}, {}\n",
        d.nodes.len(),
        d.max_unavailable,
        words::reboot(d.reboot())
    );
    if let Some(h) = &d.controller_host {
        t += &format!("the controller's own node {h} goes last\n");
    }
    if skipped > 0 && !nothing_to_do(d) {
        t += &format!("{skipped} node(s) with nothing to do skipped: no migration, no reboot\n");
    }
    if nothing_to_do(d) && fresh {
        t += "nothing to upgrade: no node has a package to upgrade or needs a reboot\n";
    } else if nothing_to_do(d) {
        t += "nothing to upgrade as of the nodes' last package lists; each node's turn\n\
              still refreshes them and upgrades what they then offer (--refresh-lists:\n\
              refresh now, and leave out the nodes with nothing to do)\n";
    }
    for n in &d.nodes {
        if n.skipped {
            t += &format!(
                "\n{}. {}  skipped: nothing to upgrade, no reboot needed (guests untouched)\n",
                n.position, n.name
            );
            continue;
        }
        t += &format!(
            "\n{}. {}  gate: {}  reboot: {}  kernel after: {}  downtime ~{} min\n",
            n.position,
            n.name,
            if n.gate_ok {
                "ok".to_string()
            } else {
                format!("FAILS ({})", n.gate_failure)
            },
            if n.reboot { "yes" } else { "no" },
            n.next_kernel.as_deref().unwrap_or("-"),
            n.downtime_secs.div_ceil(60)
        );
        for s in &n.steps {
            t += &format!("   - {s}\n");
        }
        let source = if n.packages_from_apt {
            "apt's transaction"
        } else {
            "the node's last package lists"
        };
        if n.packages.is_empty() {
            t += &format!("   packages: none to upgrade (as of {source})\n");
        } else {
            t += &format!("   packages ({}, {source}):\n", n.packages.len());
            for p in &n.packages {
                if p.installed.is_empty() {
                    t += &format!("     {} NEW {}\n", p.package, p.candidate);
                } else {
                    t += &format!("     {} {} -> {}\n", p.package, p.installed, p.candidate);
                }
            }
        }
        if !n.removed.is_empty() {
            t += &format!(
                "   REMOVED ({}): {}\n",
                n.removed.len(),
                n.removed.join(", ")
            );
        }
        if !n.kept_back.is_empty() {
            t += &format!(
                "   kept back ({}): {}\n",
                n.kept_back.len(),
                n.kept_back.join(", ")
            );
        }
        if let Some(e) = &n.apt_error {
            t += &format!("   apt could not say what the upgrade does: {e}\n");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout() -> api::Rollout {
        api::Rollout {
            id: "rollout-1".into(),
            state: api::RolloutState::Halted.into(),
            halt: Some(api::RolloutHalt {
                node: "pve2".into(),
                gate: api::RolloutGate::EspHoldsKernel.into(),
                reason: "sda2 lacks the kernel".into(),
            }),
            max_unavailable: 1,
            reboot: api::RebootPolicy::IfNeeded.into(),
            window: Some("Sat 02:00-05:00 UTC".into()),
            window_paused: true,
            actor: "admin".into(),
            nodes: vec![
                api::RolloutNode {
                    name: "pve1".into(),
                    phase: api::RolloutPhase::Done.into(),
                    ..Default::default()
                },
                api::RolloutNode {
                    name: "pve2".into(),
                    phase: api::RolloutPhase::AwaitReturn.into(),
                    waiting_for: Some("rollout-1/pve2/reboot/1".into()),
                    acknowledged: true,
                    deadline_unix_ms: Some(120_000),
                    expected_kernel: Some("6.8.12-4-pve".into()),
                    attempts: vec![api::ActionAttempts {
                        action: "reboot".into(),
                        attempts: 1,
                    }],
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn status_text_and_json() {
        let resp = api::RolloutStatusResponse {
            rollout: Some(rollout()),
            events: vec![api::RolloutEvent {
                time_unix_ms: 5,
                kind: api::RolloutEventKind::Phase.into(),
                node: "pve2".into(),
                phase: api::RolloutPhase::AwaitReturn.into(),
                ..Default::default()
            }],
            output: vec![api::NodeOutput {
                node: "pve2".into(),
                lines: vec!["a".into(), "Setting up".into()],
            }],
        };
        let view = |verbose| View {
            verbose,
            now_ms: 65_000,
            width: None,
        };
        let text = status_render(&resp, Format::Text, &view(false)).unwrap();
        assert!(
            text.starts_with(
                "rollout rollout-1: halted (1/2 nodes done) at pve2 by gate esp-holds-kernel: \
                 sda2 lacks the kernel\n\
                 started by admin at 1970-01-01T00:00:00Z; max-unavailable 1; reboot if needed\n\
                 window: Sat 02:00-05:00 UTC (closed now: no node starts until it opens)\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("pve2  rebooting  64 s  reboot, acknowledged  6.8.12-4-pve"),
            "{text}"
        );
        assert!(
            text.contains("1970-01-01T00:00:00Z  pve2: rebooting\n"),
            "{text}"
        );
        assert!(text.contains("pve2> Setting up\n"), "{text}");
        assert!(text.contains("`fleetward rollout resume`"), "{text}");
        assert!(!text.contains("rollout-1/pve2/reboot/1"), "{text}");
        let verbose = status_render(&resp, Format::Text, &view(true)).unwrap();
        assert!(verbose.contains("[rollout-1/pve2/reboot/1]"), "{verbose}");
        let v: Value = serde_json::from_str(&status_out(&resp, Format::Json).unwrap()).unwrap();
        assert_eq!(v["rollout"]["status"], "halted");
        assert_eq!(v["rollout"]["halt"]["gate"], "esp-holds-kernel");
        assert_eq!(v["rollout"]["nodes"][1]["phase"], "await-return");
        assert_eq!(v["rollout"]["nodes"][1]["attempts"], json!({"reboot": 1}));
        assert_eq!(v["rollout"]["reboot"], "if-needed");
        assert_eq!(
            v["events"][0],
            json!({"time_unix_ms": 5, "event": "phase", "node": "pve2", "phase": "await-return"})
        );
        assert_eq!(v["output"]["pve2"][1], "Setting up");
        assert!(!unfinished(resp.rollout.as_ref()));
    }

    #[test]
    fn list_shows_done_nodes() {
        let text = list_out(&[rollout()], Format::Text);
        assert!(
            text.lines()
                .nth(1)
                .unwrap()
                .starts_with("rollout-1  1970-01-01T00:00:00Z  halted  1/2   admin"),
            "{text}"
        );
    }

    #[test]
    fn plan_text_and_json() {
        let d = api::RolloutPlanResponse {
            id: "rollout-9".into(),
            max_unavailable: 1,
            reboot: api::RebootPolicy::Always.into(),
            controller_host: Some("pve2".into()),
            nodes: vec![api::RolloutNodePlan {
                name: "pve1".into(),
                position: 1,
                gate_ok: false,
                gate_failure: "no quorum".into(),
                steps: vec!["preflight gate".into()],
                packages: vec![api::PackageUpgrade {
                    package: "proxmox-ve".into(),
                    installed: "8.1".into(),
                    candidate: "8.2".into(),
                }],
                reboot: true,
                next_kernel: None,
                guests: vec![api::RolloutGuestPlan {
                    vmid: 100,
                    name: Some("web".into()),
                    what: "keeps running".into(),
                }],
                downtime_secs: 61,
                ..Default::default()
            }],
            blocked: vec!["pve1".into()],
        };
        let text = plan_text(&d);
        assert!(
            text.starts_with(
                "rolling update plan: 1 node(s), max-unavailable 1, always reboot\n\
             the controller's own node pve2 goes last\n\n\
             1. pve1  gate: FAILS (no quorum)  reboot: yes  kernel after: -  downtime ~2 min\n"
            ),
            "{text}"
        );
        assert!(text.contains("     proxmox-ve 8.1 -> 8.2\n"), "{text}");
        assert!(
            text.contains("   guest 100 (web): keeps running\n"),
            "{text}"
        );
        assert!(text.ends_with("blocked now: pve1 (a rollout would halt there)\n"));
        let v = plan_json(&d);
        assert_eq!(v["reboot"], "always");
        assert_eq!(v["nodes"][0]["gate_ok"], false);
        assert_eq!(v["nodes"][0]["gate_failure"], "no quorum");
        assert_eq!(v["nodes"][0]["packages"][0]["package"], "proxmox-ve");
    }
}
