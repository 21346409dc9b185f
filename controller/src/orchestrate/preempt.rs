//! Power loss outranks maintenance: a shutdown started with `--preempt`, or by
//! `power-event on-battery`, first takes the controller from the operation that holds it.
//!
//! A rollout is halted with gate `preempted` (it sends nothing new from then on, and a
//! resume is refused); its in-flight actions are left to reach their result (an upgrade is
//! never interrupted) for at most `[shutdown] preempt_wait_ms`; then it is aborted. Both
//! steps go through the rollout's driver, so they are in its event log and the audit log;
//! the shutdown's start writes the same story into its own log (`preempted`). A list
//! refresh is only waited for (it ends by itself, within the same bound). The shutdown is
//! then planned from the cluster as observed after the rollout stopped.

use std::time::Duration;

use super::rollout::{Rollout, Rollouts};
use super::{Audit, DriverError};
use crate::rollout::{Event, Status};
use crate::state::Controller;

/// In-flight actions of `r` that have not answered (a reboot the agent took counts as
/// answered: its proof is the node's return, which the shutdown observes itself).
pub fn unanswered(r: &Rollout) -> Vec<String> {
    r.state
        .nodes
        .iter()
        .filter_map(|n| n.pending.as_ref().filter(|p| !p.acked))
        .map(|p| p.key.to_string())
        .collect()
}

/// Takes the controller from whatever operation holds it, for a shutdown `by` (its
/// reason). `None`: nothing was running. `Some(detail)`: what was preempted and how its
/// in-flight actions ended, for the shutdown's event log. An error: nothing was started
/// (a shutdown holds the controller, or a refresh did not end within the bound).
pub async fn preempt(
    ctl: &Controller,
    rollouts: &Rollouts,
    actor: &str,
    by: &str,
) -> Result<Option<String>, DriverError> {
    let wait = Duration::from_millis(ctl.config().shutdown.preempt_wait_ms);
    let Some(held) = ctl.operations().held() else {
        return Ok(None);
    };
    match held.kind {
        "rollout" => preempt_rollout(ctl, rollouts, &held.id, actor, by, wait)
            .await
            .map(Some),
        "refresh" => {
            let deadline = tokio::time::Instant::now() + wait;
            while ctl.operations().held().is_some_and(|h| h.id == held.id) {
                if tokio::time::Instant::now() >= deadline {
                    return Err(DriverError::Refused(format!(
                        "the package list refresh {} did not end within {} s; nothing was \
                         started",
                        held.id,
                        wait.as_secs()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(Some(format!(
                "waited for the package list refresh {}",
                held.id
            )))
        }
        // Another shutdown: the start itself refuses with its words.
        _ => Ok(None),
    }
}

async fn preempt_rollout(
    ctl: &Controller,
    rollouts: &Rollouts,
    id: &str,
    actor: &str,
    by: &str,
    wait: Duration,
) -> Result<String, DriverError> {
    let audit = |action: &str, detail: String| {
        Some(Audit {
            actor: actor.to_string(),
            action: action.to_string(),
            detail,
        })
    };
    let mut watch = rollouts.watch().await?;
    let event = Event::Preempt { by: by.to_string() };
    let (r, _) = rollouts
        .control(
            Some(id.to_string()),
            event,
            audit("rollout.preempt", by.to_string()),
        )
        .await?;
    let before = unanswered(&r);
    tracing::info!(rollout = id, in_flight = ?before, "preempting the rollout for a shutdown");
    // The driver steps each result as it comes; the watch sees every record it writes.
    let deadline = tokio::time::Instant::now() + wait;
    let mut left = before.clone();
    loop {
        if let Some(r) = watch.borrow_and_update().as_ref().filter(|r| r.id() == id) {
            left = unanswered(r);
            if r.finished() || !matches!(r.state.status, Status::Halted { .. }) {
                left.clear();
            }
        }
        if left.is_empty() {
            break;
        }
        match tokio::time::timeout_at(deadline, watch.changed()).await {
            Ok(Ok(())) => continue,
            Ok(Err(_)) => return Err(DriverError::Stopped("rollout")),
            Err(_) => break, // the bound
        }
    }
    let settled = before.len() - left.len().min(before.len());
    let detail = if left.is_empty() {
        format!(
            "rollout {id} preempted: {settled} in-flight action(s) reached their result; \
             then aborted"
        )
    } else {
        format!(
            "rollout {id} preempted: {} in-flight action(s) unanswered after {} s ({}); \
             aborted anyway, left running on their nodes",
            left.len(),
            wait.as_secs(),
            left.join(", ")
        )
    };
    match rollouts
        .control(
            Some(id.to_string()),
            Event::Abort,
            audit("rollout.abort", detail.clone()),
        )
        .await
    {
        Ok(_) => {}
        // Finished meanwhile (its last node was done): nothing to abort.
        Err(DriverError::NotFound(_)) => {}
        Err(e) => return Err(e),
    }
    if ctl.operations().held().is_some_and(|h| h.id == id) {
        return Err(DriverError::Refused(format!(
            "rollout {id} could not be stopped; nothing was started"
        )));
    }
    Ok(detail)
}
