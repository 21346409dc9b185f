//! `fleetward shutdown plan|start|status|cancel`, `fleetward startup` and
//! `fleetward power-event on-battery|restored`: a client of `ShutdownService`.

use std::io::{BufRead, Write};
use std::time::Duration;

use clap::{Args, Subcommand};
use fleetward_proto::api::{self, shutdown_service_client::ShutdownServiceClient};
use serde_json::{json, Value};
use tonic::transport::Channel;

use super::conn::{self, Creds};
use super::output::{rfc3339, table};
use super::{parse_ttl, CliError, ClientOpts, Format, OptsOnly};
use crate::orchestrate::shutdown::{stage_word, Shutdown};
use crate::shutdown::{Outcome, Stage};

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
    },
    /// Where the newest shutdown is: stage, every action sent and its outcome, events.
    Status {
        /// Print again on every change until the shutdown is down or finished.
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Stop the shutdown and restart what it stopped (refused after the first power-off).
    Cancel(OptsOnly),
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

fn unreadable(e: serde_json::Error) -> CliError {
    CliError::Failed(format!("the controller sent an unreadable shutdown: {e}"))
}

/// `fleetward shutdown …`.
pub(super) async fn shutdown(
    cmd: &ShutdownCmd,
    creds: &Creds,
    fmt: Format,
) -> Result<String, CliError> {
    let mut c = client(creds).await?;
    match cmd {
        ShutdownCmd::Plan(p) => {
            let resp = c.plan(plan_request(p)).await?.into_inner();
            Ok(match fmt {
                Format::Json => {
                    json_text(&serde_json::from_str(&resp.plan_json).map_err(unreadable)?)
                }
                Format::Text => resp.summary.join("\n") + "\n",
            })
        }
        ShutdownCmd::Start { plan, yes } => {
            let resp = c.plan(plan_request(plan)).await?.into_inner();
            let shown: Value = serde_json::from_str(&resp.plan_json).map_err(unreadable)?;
            let summary = resp.summary.join("\n") + "\n";
            if !yes {
                confirm(&summary)?;
            }
            let mut req = plan_request(plan);
            req.reviewed_steps_json = shown["steps"].to_string();
            let st = c.start(req).await?.into_inner();
            let out = render_status(&st, fmt)?;
            Ok(match fmt {
                Format::Text if *yes => format!("{summary}\n{out}"),
                _ => out,
            })
        }
        ShutdownCmd::Status { watch, .. } => {
            let req = || api::ShutdownStatusRequest { id: String::new() };
            if !watch {
                return render_status(&c.status(req()).await?.into_inner(), fmt);
            }
            let mut last = String::new();
            loop {
                let st = c.status(req()).await?.into_inner();
                let out = match fmt {
                    // One JSON document per line, one line per change.
                    Format::Json => status_json(&st)?.to_string() + "\n",
                    Format::Text => render_status(&st, fmt)? + "\n",
                };
                if out != last {
                    let mut stdout = std::io::stdout().lock();
                    let _ = stdout.write_all(out.as_bytes());
                    let _ = stdout.flush();
                    last = out;
                }
                let stage = parse_state(&st)?.map(|s| s.state.stage);
                if matches!(stage, None | Some(Stage::Down | Stage::Finished)) {
                    return Ok(String::new());
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        ShutdownCmd::Cancel(_) => {
            let st = c
                .cancel(api::ShutdownControlRequest { id: String::new() })
                .await?
                .into_inner();
            render_status(&st, fmt)
        }
    }
}

/// `fleetward startup`.
pub(super) async fn startup(creds: &Creds, fmt: Format) -> Result<String, CliError> {
    let st = client(creds)
        .await?
        .startup(api::ShutdownControlRequest { id: String::new() })
        .await?
        .into_inner();
    render_status(&st, fmt)
}

/// `fleetward power-event …`.
pub(super) async fn power_event(
    cmd: &PowerEventCmd,
    creds: &Creds,
    fmt: Format,
) -> Result<String, CliError> {
    let req = match cmd {
        PowerEventCmd::OnBattery { runtime, .. } => api::PowerEventRequest {
            event: "on-battery".into(),
            runtime_secs: *runtime,
        },
        PowerEventCmd::Restored(_) => api::PowerEventRequest {
            event: "restored".into(),
            runtime_secs: 0,
        },
    };
    let st = client(creds).await?.power_event(req).await?.into_inner();
    render_status(&st, fmt)
}

fn plan_request(p: &PlanArgs) -> api::ShutdownPlanRequest {
    api::ShutdownPlanRequest {
        reason: p.reason.clone().unwrap_or_default(),
        deadline_secs: p.deadline.unwrap_or(0),
        reviewed_steps_json: String::new(),
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

fn parse_state(st: &api::ShutdownStatusResponse) -> Result<Option<Shutdown>, CliError> {
    if st.state_json.is_empty() {
        return Ok(None);
    }
    serde_json::from_str(&st.state_json)
        .map(Some)
        .map_err(unreadable)
}

fn status_json(st: &api::ShutdownStatusResponse) -> Result<Value, CliError> {
    let state: Value = if st.state_json.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&st.state_json).map_err(unreadable)?
    };
    let events: Value = serde_json::from_str(&st.events_json).unwrap_or(Value::Array(vec![]));
    Ok(json!({"message": st.message, "state": state, "events": events}))
}

/// A status response as text or JSON.
fn render_status(st: &api::ShutdownStatusResponse, fmt: Format) -> Result<String, CliError> {
    if fmt == Format::Json {
        return Ok(json_text(&status_json(st)?));
    }
    let Some(s) = parse_state(st)? else {
        return Ok(format!("{}\n", st.message));
    };
    Ok(format!(
        "{}\n{}",
        st.message,
        status_text(&s, &events_of(st))
    ))
}

fn events_of(st: &api::ShutdownStatusResponse) -> Vec<(u64, Value)> {
    let v: Value = serde_json::from_str(&st.events_json).unwrap_or(Value::Null);
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|e| (e["time_ms"].as_u64().unwrap_or(0), e["event"].clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// How many of the newest events the text status shows.
const EVENTS_SHOWN: usize = 12;

fn ms_time(ms: u64) -> String {
    rfc3339(i64::try_from(ms).unwrap_or(i64::MAX))
}

/// The text form of a shutdown: header, every action sent, the newest events.
pub(super) fn status_text(s: &Shutdown, events: &[(u64, Value)]) -> String {
    let st = &s.state;
    let plan = &st.plan;
    let mut out = format!(
        "shutdown {}{} started by {} at {}\nstage: {}  point of no return: {}",
        plan.id,
        plan.reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default(),
        s.actor,
        ms_time(s.created_ms),
        stage_word(st.stage),
        if st.no_return {
            "passed"
        } else {
            "not reached"
        },
    );
    if let Some(d) = plan.deadline_ms {
        let forced = st.schedule.as_ref().is_some_and(|s| s.forced);
        out.push_str(&format!(
            "  deadline: {}{}",
            ms_time(d),
            if forced { " (forced stops)" } else { "" }
        ));
    }
    out.push('\n');
    if !st.missing.is_empty() {
        let missing: Vec<&str> = st.missing.iter().map(String::as_str).collect();
        out.push_str(&format!("did not return: {}\n", missing.join(", ")));
    }
    let rows: Vec<Vec<String>> = st
        .sent
        .iter()
        .map(|x| {
            vec![
                x.key.node.clone(),
                x.key.step.clone(),
                x.key.attempt.to_string(),
                match x.outcome {
                    Outcome::Pending => "pending",
                    Outcome::Ok => "ok",
                    Outcome::Failed => "FAILED",
                    Outcome::Abandoned => "abandoned",
                }
                .to_string(),
            ]
        })
        .collect();
    if rows.is_empty() {
        out.push_str("no action sent yet\n");
    } else {
        out.push_str(&table(&["NODE", "STEP", "ATTEMPT", "OUTCOME"], &rows));
    }
    let skip = events.len().saturating_sub(EVENTS_SHOWN);
    let rows: Vec<Vec<String>> = events
        .iter()
        .skip(skip)
        .map(|(t, e)| vec![ms_time(*t), e.to_string()])
        .collect();
    if !rows.is_empty() {
        out.push('\n');
        out.push_str(&table(&["TIME", "EVENT"], &rows));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shutdown::{Config, NodeView, Plan, ShutdownState, ShutdownView};

    #[test]
    fn runtime_accepts_whole_and_fractional_seconds() {
        assert_eq!(parse_runtime("900"), Ok(900));
        assert_eq!(parse_runtime(" 1234.75 "), Ok(1234));
        for bad in ["0", "0.5", "-3", "abc", "inf", "NaN", ""] {
            assert!(parse_runtime(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn status_text_shows_stage_actions_and_events() {
        let mut view = ShutdownView::default();
        view.nodes.insert(
            "pve-01".into(),
            NodeView {
                online: true,
                ..NodeView::default()
            },
        );
        let cfg = Config {
            reason: Some("maintenance".into()),
            ..Config::default()
        };
        let plan = Plan::new("shutdown-1", &view, &cfg, 0).unwrap();
        let state = ShutdownState::new(plan);
        let (state, _) =
            crate::shutdown::step(&state, &crate::shutdown::Event::Start { now_ms: 5 }, &view);
        let s = Shutdown {
            state,
            created_ms: 0,
            actor: "admin".into(),
        };
        let text = status_text(&s, &[(0, json!({"event": "started", "forced": false}))]);
        assert!(
            text.contains("shutdown shutdown-1 (maintenance) started by admin"),
            "{text}"
        );
        // One node and no host: HA maintenance mode comes first.
        assert!(
            text.contains("stage: disarm-ha  point of no return: not reached"),
            "{text}"
        );
        assert!(
            text.contains("pve-01  maintenance-on  1        pending"),
            "{text}"
        );
        assert!(text.contains("\"started\""), "{text}");
    }
}
