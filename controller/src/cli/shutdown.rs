//! `fleetward shutdown plan|start|status|cancel`, `fleetward startup` and
//! `fleetward power-event on-battery|restored`: a client of `ShutdownService`. Renders its
//! typed messages; knows nothing of the controller's internals.

use std::io::{BufRead, Write};
use std::time::Duration;

use clap::{Args, Subcommand};
use fleetward_proto::api::{self, shutdown_service_client::ShutdownServiceClient};
use serde_json::{json, Value};
use tonic::transport::Channel;

use super::conn::{self, Creds};
use super::live::Live;
use super::output::{self, enum_name, rfc3339, table, View};
use super::words;
use super::{parse_ttl, CliError, ClientOpts, Format, OptsOnly, Reply};

#[derive(Debug, Subcommand)]
pub enum ShutdownCmd {
    /// Show the shutdown plan for the cluster as it is now (nothing happens).
    Plan(PlanArgs),
    /// Show the plan, ask for confirmation (unless --yes), and start the shutdown.
    Start {
        #[command(flatten)]
        plan: PlanArgs,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        /// Then follow its progress as `status --watch` does.
        #[arg(long)]
        watch: bool,
        /// A running rollout does not refuse the start: it stops sending, its in-flight
        /// actions settle (bounded by `[shutdown] preempt_wait_ms`), it is aborted, and the
        /// shutdown is planned from the cluster as it is then (the plan shown before may
        /// differ).
        #[arg(long)]
        preempt: bool,
        /// Start although the controller cannot tell which node it runs on (the plan says
        /// CONTROLLER HOST UNKNOWN): that node may be powered off before the others.
        #[arg(long)]
        yes_host_unknown: bool,
    },
    /// Where the newest shutdown is: stage, every action sent and its outcome, events.
    Status {
        /// Follow it until the cluster is down or the bring-up finished; exits with the
        /// final state's status. A terminal shows one block redrawn in place; piped, one
        /// line per change (with --output json, one document per change).
        #[arg(long)]
        watch: bool,
        /// Show command ids (idempotency keys) in the text output.
        #[arg(long)]
        verbose: bool,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Stop the shutdown and restart what it stopped (refused after the first power-off).
    Cancel(OptsOnly),
}

/// `fleetward startup`.
#[derive(Debug, Args)]
pub struct StartupArgs {
    /// Follow the bring-up until it finished (nodes, quorum, noout, HA, guests); exits 1
    /// when a node, guest or flag did not come back.
    #[arg(long)]
    pub watch: bool,
    #[command(flatten)]
    pub opts: ClientOpts,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Why (shown in the plan, the audit log and the webhook).
    #[arg(long)]
    pub reason: Option<String>,
    /// The last node must be off by then, e.g. 10m or 900s (a UPS's remaining runtime):
    /// graceful waits are cut and guest stops forced when the time does not suffice.
    #[arg(long, value_parser = parse_ttl, value_name = "DURATION")]
    pub deadline: Option<u64>,
    #[command(flatten)]
    pub opts: ClientOpts,
}

#[derive(Debug, Subcommand)]
pub enum PowerEventCmd {
    /// The UPS runs on battery: start a shutdown due within the remaining runtime (a
    /// running shutdown is left as it is).
    OnBattery {
        /// Remaining runtime in seconds (NUT: `upsc UPS battery.runtime`).
        #[arg(long, value_name = "SECS", value_parser = parse_runtime)]
        runtime: u64,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Power is back: stop a shutdown that has not powered any node off yet and restore.
    Restored(OptsOnly),
}

impl ShutdownCmd {
    pub(super) fn opts(&self) -> &ClientOpts {
        match self {
            ShutdownCmd::Plan(p) | ShutdownCmd::Start { plan: p, .. } => &p.opts,
            ShutdownCmd::Status { opts, .. } => opts,
            ShutdownCmd::Cancel(o) => &o.opts,
        }
    }
}

impl PowerEventCmd {
    pub(super) fn opts(&self) -> &ClientOpts {
        match self {
            PowerEventCmd::OnBattery { opts, .. } => opts,
            PowerEventCmd::Restored(o) => &o.opts,
        }
    }
}

/// Seconds, whole or with a fraction (`upsc` may print `1234.00`), > 0.
fn parse_runtime(s: &str) -> Result<u64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("invalid runtime {s:?}: expected seconds, e.g. 900"))?;
    if (1.0..1e9).contains(&v) {
        Ok(v as u64)
    } else {
        Err(format!("invalid runtime {s:?}: expected 1 or more seconds"))
    }
}

async fn client(creds: &Creds) -> Result<ShutdownServiceClient<Channel>, CliError> {
    Ok(ShutdownServiceClient::new(conn::channel(creds).await?))
}

fn json_text(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default() + "\n"
}

/// `fleetward shutdown …`.
pub(super) async fn shutdown(
    cmd: &ShutdownCmd,
    creds: &Creds,
    fmt: Format,
) -> Result<Reply, CliError> {
    let mut c = client(creds).await?;
    match cmd {
        ShutdownCmd::Plan(p) => {
            let resp = c.plan(plan_request(p)).await?.into_inner();
            Ok(Reply::ok(match fmt {
                Format::Json => json_text(&plan_json(&resp)),
                Format::Text => plan_text(&resp, &View::here(false)),
            }))
        }
        ShutdownCmd::Start {
            plan,
            yes,
            watch,
            preempt,
            yes_host_unknown,
        } => {
            let resp = c.plan(plan_request(plan)).await?.into_inner();
            let summary = plan_text(&resp, &View::here(false));
            if !yes {
                confirm(&summary)?;
            }
            let mut req = plan_request(plan);
            req.preempt = *preempt;
            req.yes_host_unknown = *yes_host_unknown;
            // A preempting start plans from the cluster as it is once the rollout stopped.
            if !preempt {
                req.reviewed = Some(api::ReviewedSteps {
                    steps: resp.plan.map(|p| p.steps).unwrap_or_default(),
                });
            }
            let st = c.start(req).await?.into_inner();
            if *watch {
                return watch_shutdown(&mut c, fmt, false, false).await;
            }
            let out = render_status(&st, fmt);
            Ok(Reply {
                text: match fmt {
                    Format::Text if *yes => format!("{summary}\n{out}"),
                    _ => out,
                },
                ok: healthy(&st),
            })
        }
        ShutdownCmd::Status { watch, verbose, .. } => {
            if *watch {
                return watch_shutdown(&mut c, fmt, *verbose, false).await;
            }
            let req = api::ShutdownStatusRequest { id: String::new() };
            let st = c.status(req).await?.into_inner();
            Ok(Reply {
                text: render_status_at(&st, fmt, &View::here(*verbose)),
                ok: healthy(&st),
            })
        }
        ShutdownCmd::Cancel(_) => {
            let st = c
                .cancel(api::ShutdownControlRequest { id: String::new() })
                .await?
                .into_inner();
            Ok(status_reply(&st, fmt))
        }
    }
}

/// Not OK (exit 1): the bring-up finished without every node, guest or flag back.
fn healthy(st: &api::ShutdownStatusResponse) -> bool {
    use api::ShutdownEventKind as K;
    let Some(s) = &st.shutdown else {
        return true;
    };
    s.missing.is_empty()
        && !st.events.iter().any(|e| {
            matches!(
                e.kind(),
                K::NotReturned | K::NooutLeftSet | K::GuestsNotStarted
            )
        })
}

fn status_reply(st: &api::ShutdownStatusResponse, fmt: Format) -> Reply {
    Reply {
        text: render_status(st, fmt),
        ok: healthy(st),
    }
}

/// `fleetward startup`.
pub(super) async fn startup(
    a: &StartupArgs,
    creds: &Creds,
    fmt: Format,
) -> Result<Reply, CliError> {
    let mut c = client(creds).await?;
    let st = c
        .startup(api::ShutdownControlRequest { id: String::new() })
        .await?
        .into_inner();
    if a.watch {
        if fmt == Format::Text {
            println!("{}", st.message);
        }
        return watch_shutdown(&mut c, fmt, false, true).await;
    }
    Ok(status_reply(&st, fmt))
}

/// Follows the newest shutdown until the cluster is down or the bring-up finished (with
/// `until_finished`, only the latter); the reply carries the final state's verdict.
async fn watch_shutdown(
    c: &mut ShutdownServiceClient<Channel>,
    fmt: Format,
    verbose: bool,
    until_finished: bool,
) -> Result<Reply, CliError> {
    use api::ShutdownStageKind as K;
    let mut live = Live::stdout();
    let mut last_json = String::new();
    loop {
        let req = api::ShutdownStatusRequest { id: String::new() };
        let st = c.status(req).await?.into_inner();
        match fmt {
            Format::Json => {
                // One document per line, one line per change.
                let line = status_json(&st).to_string();
                if line != last_json {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{line}");
                    let _ = out.flush();
                    last_json = line;
                }
            }
            Format::Text => {
                let (block, timeline) = live_frame(&st, &View::here(verbose));
                live.frame(&block, &timeline);
            }
        }
        let stage = st.shutdown.as_ref().and_then(|s| s.stage).map(|s| s.kind());
        let done = match stage {
            None | Some(K::Finished) => true,
            Some(K::Down) => !until_finished,
            Some(_) => false,
        };
        if done {
            return Ok(Reply {
                text: String::new(),
                ok: healthy(&st),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The live view's block (headline, the current stage's actions, the newest events) and
/// its timeline (every event as a timed sentence).
fn live_frame(st: &api::ShutdownStatusResponse, view: &View) -> (String, Vec<String>) {
    let (verbose, now_ms) = (view.verbose, view.now_ms);
    let Some(s) = &st.shutdown else {
        return (st.message.clone(), vec![]);
    };
    let timeline: Vec<String> = st
        .events
        .iter()
        .map(|e| {
            format!(
                "{}  {}",
                rfc3339(e.time_unix_ms),
                words::shutdown_event(e, verbose)
            )
        })
        .collect();
    // The headline has no clock in it: piped, a new line means a new state.
    let mut block = format!(
        "shutdown {}: {}{}\n",
        s.id,
        words::stage(s.stage.as_ref()),
        if s.no_return {
            "; point of no return passed"
        } else {
            ""
        }
    );
    if let Some(d) = s.stage_deadline_unix_ms.filter(|d| *d > now_ms) {
        block += &format!(
            "the stage moves on in {} at the latest\n",
            words::duration(d - now_ms)
        );
    }
    // The actions still open, or else the newest few: what the stage waits for.
    let open: Vec<&api::ShutdownSend> = s
        .sent
        .iter()
        .filter(|x| x.outcome() == api::SendOutcome::Pending)
        .collect();
    let shown: Vec<&api::ShutdownSend> = if open.is_empty() {
        s.sent.iter().rev().take(4).rev().collect()
    } else {
        open
    };
    let rows: Vec<Vec<String>> = shown
        .iter()
        .map(|x| {
            vec![
                x.node.clone(),
                words::step(&x.step),
                words::outcome(x.outcome()).to_owned(),
            ]
        })
        .collect();
    if !rows.is_empty() {
        block += &table(&["NODE", "STEP", "OUTCOME"], &rows);
    }
    for line in timeline.iter().skip(timeline.len().saturating_sub(3)) {
        block += line;
        block.push('\n');
    }
    (block, timeline)
}

/// `fleetward power-event …`.
pub(super) async fn power_event(
    cmd: &PowerEventCmd,
    creds: &Creds,
    fmt: Format,
) -> Result<Reply, CliError> {
    let req = match cmd {
        PowerEventCmd::OnBattery { runtime, .. } => api::PowerEventRequest {
            event: api::PowerEvent::OnBattery.into(),
            runtime_secs: *runtime,
        },
        PowerEventCmd::Restored(_) => api::PowerEventRequest {
            event: api::PowerEvent::Restored.into(),
            runtime_secs: 0,
        },
    };
    let st = client(creds).await?.power_event(req).await?.into_inner();
    Ok(status_reply(&st, fmt))
}

/// The plan as text: the controller's summary lines fitted to the view's width. A step
/// whose action does not fit continues under the ACTION column; other lines wrap.
pub(crate) fn plan_text(resp: &api::ShutdownPlanResponse, view: &View) -> String {
    let action_col = resp
        .summary
        .iter()
        .find(|l| l.trim_start().starts_with('#'))
        .and_then(|l| l.find("ACTION"));
    let mut out = String::new();
    for line in &resp.summary {
        let step = action_col.and_then(|col| {
            let head = line.get(..col)?;
            let numbered = head.trim_start().starts_with(|c: char| c.is_ascii_digit());
            numbered.then(|| (head, &line[col..], col))
        });
        match (view.width, step) {
            (Some(w), Some((head, action, col))) if line.chars().count() > w && col + 20 <= w => {
                let indent = format!("\n{}", " ".repeat(col));
                out += head.trim_end();
                out += &" ".repeat(col - head.trim_end().chars().count());
                out += &output::wrap(action, w - col).join(&indent);
            }
            _ => out += &view.wrap_line(line),
        }
        out.push('\n');
    }
    out
}

fn plan_request(p: &PlanArgs) -> api::ShutdownPlanRequest {
    api::ShutdownPlanRequest {
        reason: p.reason.clone().unwrap_or_default(),
        deadline_secs: p.deadline.unwrap_or(0),
        reviewed: None,
        preempt: false,
        yes_host_unknown: false,
    }
}

/// Shows the plan on stderr and asks; anything but `yes` stops here.
fn confirm(summary: &str) -> Result<(), CliError> {
    let stdin = std::io::stdin();
    eprint!("{summary}");
    eprint!("Start this shutdown? It stops guests and powers off the nodes. Type 'yes': ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .map_err(|e| CliError::Failed(format!("reading the answer: {e}")))?;
    if line.trim() == "yes" {
        Ok(())
    } else {
        Err(CliError::Failed(
            "not confirmed: nothing was started (pass --yes to skip the question)".into(),
        ))
    }
}

/// A stage as JSON: `{"stage": "power-off", "tier": 0}`, `{"stage": "down"}`.
fn stage_json(s: Option<&api::ShutdownStage>) -> Value {
    use api::ShutdownStageKind as K;
    let Some(s) = s else {
        return Value::Null;
    };
    let name = enum_name(s.kind().as_str_name(), "SHUTDOWN_STAGE_KIND_");
    match s.kind() {
        K::StopGuests | K::StartGuests => json!({"stage": name, "group": s.index}),
        K::PowerOff => json!({"stage": name, "tier": s.index}),
        _ => json!({"stage": name}),
    }
}

/// An action's canonical JSON as a value (a string if it is not JSON).
fn action_value(action_json: &str) -> Value {
    serde_json::from_str(action_json).unwrap_or_else(|_| json!(action_json))
}

/// The plan as JSON: `{plan, steps, schedule, summary}`.
fn plan_json(resp: &api::ShutdownPlanResponse) -> Value {
    let Some(p) = &resp.plan else {
        return json!({"plan": null, "steps": [], "schedule": null, "summary": resp.summary});
    };
    let guests: Vec<Value> = p
        .guests
        .iter()
        .map(|g| {
            json!({
                "node": g.node,
                "vmid": g.vmid,
                "kind": enum_name(g.kind().as_str_name(), "GUEST_KIND_"),
                "running": g.running,
                "onboot": g.onboot,
                "order": g.order,
                "up_secs": g.up_secs,
                "timeout_secs": g.timeout_secs,
                "ha": g.ha,
            })
        })
        .collect();
    let steps: Vec<Value> = p
        .steps
        .iter()
        .map(|s| {
            json!({
                "stage": stage_json(s.stage.as_ref()),
                "node": s.node,
                "step": s.step,
                "action": action_value(&s.action_json),
            })
        })
        .collect();
    let schedule = p.schedule.as_ref().map(|s| {
        json!({
            "start_unix_ms": s.start_unix_ms,
            "forced": s.forced,
            "fits": s.fits,
            "guest_ms": s.guest_ms,
            "flag_ms": s.flag_ms,
            "tier_ms": s.tier_ms,
            "guests_end_unix_ms": s.guests_end_unix_ms,
            "ha_end_unix_ms": s.ha_end_unix_ms,
            "noout_end_unix_ms": s.noout_end_unix_ms,
            "tier_end_unix_ms": s.tier_end_unix_ms,
            "expected_ms": s.expected_ms,
        })
    });
    json!({
        "plan": {
            "id": p.id,
            "reason": p.reason,
            "created_unix_ms": p.created_unix_ms,
            "deadline_unix_ms": p.deadline_unix_ms,
            "controller_host": p.controller_host,
            "controller_host_note": p.controller_host_note,
            "controller_host_unknown": p.controller_host_unknown,
            "ha": {
                "mode": enum_name(p.ha_mode().as_str_name(), "HA_MODE_"),
                "nodes": p.ha_nodes,
            },
            "noout": p.noout,
            "tiers": p.tiers.iter().map(|t| &t.nodes).collect::<Vec<_>>(),
            "guests": guests,
            "osd_nodes": p.osd_nodes,
            "offline": p.offline,
        },
        "steps": steps,
        "schedule": schedule,
        "summary": resp.summary,
    })
}

fn up_reason_name(r: api::UpReason) -> Option<String> {
    (r != api::UpReason::Unspecified).then(|| enum_name(r.as_str_name(), "UP_REASON_"))
}

fn shutdown_json(s: &api::Shutdown) -> Value {
    let sent: Vec<Value> = s
        .sent
        .iter()
        .map(|x| {
            json!({
                "command_id": x.command_id,
                "node": x.node,
                "step": x.step,
                "attempt": x.attempt,
                "outcome": enum_name(x.outcome().as_str_name(), "SEND_OUTCOME_"),
                "action": action_value(&x.action_json),
            })
        })
        .collect();
    json!({
        "id": s.id,
        "reason": s.reason,
        "actor": s.actor,
        "created_unix_ms": s.created_unix_ms,
        "deadline_unix_ms": s.deadline_unix_ms,
        "stage": stage_json(s.stage.as_ref()),
        "no_return": s.no_return,
        "forced": s.forced,
        "up_reason": up_reason_name(s.up_reason()),
        "missing": s.missing,
        "sent": sent,
        "stage_deadline_unix_ms": s.stage_deadline_unix_ms,
        "updated_unix_ms": s.updated_unix_ms,
    })
}

/// An event as JSON: `{time_unix_ms, event, …the fields its kind uses}`.
fn event_json(e: &api::ShutdownEvent) -> Value {
    use api::ShutdownEventKind as K;
    let kind = match e.kind() {
        K::Unspecified => "unknown".to_string(),
        k => enum_name(k.as_str_name(), "SHUTDOWN_EVENT_KIND_"),
    };
    let mut v = json!({"time_unix_ms": e.time_unix_ms, "event": kind});
    if e.kind() == K::Started {
        v["forced"] = json!(e.forced);
    }
    if e.kind() == K::ActionFailed {
        v["retrying"] = json!(e.retrying);
    }
    if let Some(s) = &e.stage {
        v["stage"] = stage_json(Some(s));
    }
    let texts = [
        ("node", &e.node),
        ("output", &e.output),
        ("reason", &e.reason),
    ];
    for (k, t) in texts {
        if !t.is_empty() {
            v[k] = json!(t);
        }
    }
    if let Some(r) = up_reason_name(e.up_reason()) {
        v["up_reason"] = json!(r);
    }
    if !e.command_ids.is_empty() {
        v["command_ids"] = json!(e.command_ids);
    }
    if !e.nodes.is_empty() {
        v["nodes"] = json!(e.nodes);
    }
    if !e.vmids.is_empty() {
        v["vmids"] = json!(e.vmids);
    }
    v
}

fn status_json(st: &api::ShutdownStatusResponse) -> Value {
    json!({
        "message": st.message,
        "shutdown": st.shutdown.as_ref().map(shutdown_json),
        "events": st.events.iter().map(event_json).collect::<Vec<_>>(),
    })
}

/// A status response as text or JSON.
fn render_status(st: &api::ShutdownStatusResponse, fmt: Format) -> String {
    render_status_at(st, fmt, &View::here(false))
}

/// [`render_status`] at `now_ms`; `verbose` adds command ids to the text.
pub(crate) fn render_status_at(
    st: &api::ShutdownStatusResponse,
    fmt: Format,
    view: &View,
) -> String {
    if fmt == Format::Json {
        return json_text(&status_json(st));
    }
    let Some(s) = &st.shutdown else {
        return format!("{}\n", view.wrap_line(&st.message));
    };
    format!(
        "{}\n{}",
        view.wrap_line(&st.message),
        status_text(s, &st.events, view)
    )
}

/// How many of the newest events the text status shows.
const EVENTS_SHOWN: usize = 12;

/// "stage: start guests, group 2 (moves on in 90 s at the latest)".
fn stage_line(s: &api::Shutdown, now_ms: i64) -> String {
    let mut line = format!("stage: {}", words::stage(s.stage.as_ref()));
    let starting = s
        .stage
        .is_some_and(|st| st.kind() == api::ShutdownStageKind::StartGuests);
    let answered = s
        .sent
        .iter()
        .all(|x| x.outcome() != api::SendOutcome::Pending);
    if starting && answered && !s.sent.is_empty() {
        // Every start of the group answered: the stage holds for the group's `up=` delay.
        line += ", waiting out the started guests' startup delay (up=)";
    }
    if let Some(d) = s.stage_deadline_unix_ms {
        if d > now_ms {
            line += &format!(
                " (moves on in {} at the latest)",
                words::duration(d - now_ms)
            );
        }
    }
    line
}

/// The text form of a shutdown: header, every action sent, the newest events.
fn status_text(s: &api::Shutdown, events: &[api::ShutdownEvent], view: &View) -> String {
    let (verbose, now_ms) = (view.verbose, view.now_ms);
    let mut out = view.wrap_line(&format!(
        "shutdown {}{} started by {} at {}",
        s.id,
        s.reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default(),
        s.actor,
        rfc3339(s.created_unix_ms),
    ));
    out.push('\n');
    let mut line = format!(
        "{}; point of no return: {}",
        stage_line(s, now_ms),
        if s.no_return { "passed" } else { "not reached" },
    );
    // The deadline is the shutdown's; a bring-up has none.
    let down = s.up_reason() == api::UpReason::Unspecified;
    if let Some(d) = s.deadline_unix_ms.filter(|_| down) {
        line.push_str(&format!(
            "; deadline: {}{}",
            rfc3339(d),
            if s.forced { " (forced stops)" } else { "" }
        ));
    }
    out.push_str(&view.wrap_line(&line));
    out.push('\n');
    if let Some(r) = words::up_reason(s.up_reason()) {
        out.push_str(&format!("bring-up: {r}\n"));
    }
    if !s.missing.is_empty() {
        out.push_str(&format!("did not return: {}\n", s.missing.join(", ")));
    }
    let rows: Vec<Vec<String>> = s
        .sent
        .iter()
        .map(|x| {
            let mut step = words::step(&x.step);
            if verbose {
                step += &format!(" [{}]", x.command_id);
            }
            vec![
                x.node.clone(),
                step,
                x.attempt.to_string(),
                words::outcome(x.outcome()).to_owned(),
            ]
        })
        .collect();
    if rows.is_empty() {
        out.push_str("no action sent yet\n");
    } else {
        let header = ["NODE", "STEP", "ATTEMPT", "OUTCOME"];
        out.push_str(&output::fit_table(&header, &rows, view.width, 1));
    }
    let skip = events.len().saturating_sub(EVENTS_SHOWN);
    let rows: Vec<Vec<String>> = events
        .iter()
        .skip(skip)
        .map(|e| vec![rfc3339(e.time_unix_ms), words::shutdown_event(e, verbose)])
        .collect();
    if !rows.is_empty() {
        out.push('\n');
        out.push_str(&output::fit_table(&["TIME", "EVENT"], &rows, view.width, 1));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_accepts_whole_and_fractional_seconds() {
        assert_eq!(parse_runtime("900"), Ok(900));
        assert_eq!(parse_runtime(" 1234.75 "), Ok(1234));
        for bad in ["0", "0.5", "-3", "abc", "inf", "NaN", ""] {
            assert!(parse_runtime(bad).is_err(), "{bad}");
        }
    }

    fn stage(kind: api::ShutdownStageKind, index: u32) -> Option<api::ShutdownStage> {
        Some(api::ShutdownStage {
            kind: kind.into(),
            index,
        })
    }

    #[test]
    fn status_text_shows_stage_actions_and_events() {
        let s = api::Shutdown {
            id: "shutdown-1".into(),
            reason: Some("maintenance".into()),
            actor: "admin".into(),
            stage: stage(api::ShutdownStageKind::DisarmHa, 0),
            sent: vec![api::ShutdownSend {
                command_id: "shutdown-1/pve-01/maintenance-on/1".into(),
                node: "pve-01".into(),
                step: "maintenance-on".into(),
                attempt: 1,
                outcome: api::SendOutcome::Pending.into(),
                action_json: r#"{"action":"maintenance-on"}"#.into(),
            }],
            ..Default::default()
        };
        let events = [
            api::ShutdownEvent {
                kind: api::ShutdownEventKind::Started.into(),
                ..Default::default()
            },
            api::ShutdownEvent {
                kind: api::ShutdownEventKind::Stage.into(),
                stage: stage(api::ShutdownStageKind::PowerOff, 0),
                ..Default::default()
            },
        ];
        let view = View {
            verbose: false,
            now_ms: 0,
            width: None,
        };
        let text = status_text(&s, &events, &view);
        assert!(
            text.contains("shutdown shutdown-1 (maintenance) started by admin"),
            "{text}"
        );
        assert!(
            text.contains("stage: disarm HA; point of no return: not reached"),
            "{text}"
        );
        assert!(
            text.contains("pve-01  maintenance on  1        waiting"),
            "{text}"
        );
        assert!(text.contains("  shutdown started\n"), "{text}");
        assert!(text.contains("  stage: power off, tier 1\n"), "{text}");
        assert!(!text.contains("shutdown-1/pve-01"), "{text}");

        let st = api::ShutdownStatusResponse {
            message: "ok".into(),
            shutdown: Some(s),
            events: events.to_vec(),
        };
        let v = status_json(&st);
        assert_eq!(v["shutdown"]["stage"], json!({"stage": "disarm-ha"}));
        assert_eq!(v["shutdown"]["sent"][0]["outcome"], "pending");
        assert_eq!(
            v["shutdown"]["sent"][0]["action"]["action"],
            "maintenance-on"
        );
        assert_eq!(
            v["events"][0],
            json!({"time_unix_ms": 0, "event": "started", "forced": false})
        );
        assert_eq!(
            v["events"][1]["stage"],
            json!({"stage": "power-off", "tier": 0})
        );
    }

    #[test]
    fn plan_json_keeps_steps_with_their_actions() {
        let resp = api::ShutdownPlanResponse {
            summary: vec!["Shutdown plan shutdown-1".into()],
            plan: Some(api::ShutdownPlan {
                id: "shutdown-1".into(),
                ha_mode: api::HaMode::Disarm.into(),
                ha_nodes: vec!["pve-01".into()],
                tiers: vec![api::PowerOffTier {
                    nodes: vec!["pve-01".into()],
                }],
                steps: vec![api::ShutdownPlanStep {
                    stage: stage(api::ShutdownStageKind::StopGuests, 0),
                    node: "pve-01".into(),
                    step: "guest-stop-100".into(),
                    action_json: r#"{"action":"guest-stop","vmid":100}"#.into(),
                }],
                ..Default::default()
            }),
        };
        let v = plan_json(&resp);
        assert_eq!(
            v["plan"]["ha"],
            json!({"mode": "disarm", "nodes": ["pve-01"]})
        );
        assert_eq!(v["plan"]["tiers"], json!([["pve-01"]]));
        assert_eq!(
            v["steps"][0]["stage"],
            json!({"stage": "stop-guests", "group": 0})
        );
        assert_eq!(v["steps"][0]["action"]["vmid"], 100);
    }
}
