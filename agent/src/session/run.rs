//! `fleetward-agent run`: keep one session with the controller open.
//!
//! Per session: `Hello`, a full `Report`, then every `interval` a re-inspection (a `Report`
//! if its JSON changed, else a `Heartbeat`), and a `Heartbeat` whenever nothing was sent for
//! `heartbeat`. `Command`s are executed at most once (ids persisted in `commands.json`).
//! The certificate is renewed once less than a third of its validity is left. Lost
//! sessions are reopened after a jittered exponential [`Backoff`].

use super::backoff::Backoff;
use super::notify;
use super::state::{Credentials, SeenCommands, StateDir};
use super::{ControllerUrl, Error, CALL_TIMEOUT};
use crate::inspect::inspect;
use crate::root::Root;
use fleetward_pki::{self as pki, Identity, Role};
use fleetward_proto::api::agent_message::{self, Kind as Out};
use fleetward_proto::api::agent_service_client::AgentServiceClient;
use fleetward_proto::api::controller_message::Kind as In;
use fleetward_proto::api::{command, AgentMessage, Command, ControllerMessage, RenewRequest};
use fleetward_proto::Report;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, sleep_until, Instant};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tracing::{debug, error, info, warn};

/// A session that lasted this long resets the backoff.
const STABLE_SESSION: Duration = Duration::from_secs(30);
/// After a failed renewal, try again this much later.
const RENEW_RETRY: Duration = Duration::from_secs(300);
/// At most one renewal per this interval, even if the new certificate is due at once
/// (a validity shorter than the CA's back-dating would otherwise renew in a loop).
const RENEW_MIN_INTERVAL: Duration = Duration::from_secs(60);
/// Messages queued for the controller before the session counts as stuck.
const OUTBOX: usize = 64;

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub state_dir: PathBuf,
    /// The tree to inspect (`/` on a real node).
    pub root: PathBuf,
    /// Re-inspect this often.
    pub interval: Duration,
    /// Send a heartbeat when nothing was sent for this long.
    pub heartbeat: Duration,
}

/// Renew once less than a third of the validity (`not_after - not_before`) is left.
pub fn renewal_due(not_before: SystemTime, not_after: SystemTime, now: SystemTime) -> bool {
    let total = not_after.duration_since(not_before).unwrap_or_default();
    match not_after.duration_since(now) {
        Ok(left) => left.is_zero() || left < total / 3,
        Err(_) => true, // expired
    }
}

/// How a session ended, when not by an error.
enum Ended {
    Shutdown,
    Renewed,
    Closed(String),
}

/// How often `run --wait-for-enrollment` looks for the identity `enroll` writes.
pub const ENROLLMENT_POLL: Duration = Duration::from_secs(10);

/// Waits until `state_dir` holds an identity (`fleetward-agent enroll` has run), saying so
/// once in the log and in systemd's status line, and looking again every `poll`.
/// `Ok(false)`: `shutdown` turned true while waiting. Errors other than "not enrolled"
/// (an unreadable state directory) are returned at once.
pub async fn wait_for_enrollment(
    state_dir: &Path,
    poll: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> Result<bool, Error> {
    let state = StateDir::new(state_dir);
    let mut logged = false;
    loop {
        match state.load() {
            Ok(_) => {
                if logged {
                    info!(state_dir = %state_dir.display(), "enrolled: starting");
                }
                return Ok(true);
            }
            Err(Error::NotEnrolled(_)) if !logged => {
                logged = true;
                info!(
                    state_dir = %state_dir.display(),
                    "not enrolled: run `fleetward-agent enroll --controller https://HOST:7443 --token TOKEN --ca-sha256 HEX` on this node (`fleetward token create` on the controller prints the line); waiting"
                );
                notify::status("not enrolled: waiting for `fleetward-agent enroll`");
            }
            Err(Error::NotEnrolled(_)) => {}
            Err(e) => return Err(e),
        }
        tokio::select! {
            _ = sleep(poll) => {}
            _ = stopped(&mut shutdown) => return Ok(false),
        }
    }
}

/// Runs sessions until `shutdown` turns true. Returns an error only when the agent cannot
/// work at all (not enrolled, unreadable state).
pub async fn run(opts: RunOptions, mut shutdown: watch::Receiver<bool>) -> Result<(), Error> {
    let state = StateDir::new(&opts.state_dir);
    let mut agent = Agent {
        seen: state.seen_commands()?,
        state,
        root: Root::new(&opts.root),
        opts,
        renew_after: None,
    };
    let mut backoff = Backoff::default();
    loop {
        let creds = agent.state.load()?;
        let url: ControllerUrl = creds.config.controller.parse()?;
        let started = Instant::now();
        let ended = agent.session(&url, &creds, &mut shutdown).await;
        if started.elapsed() > STABLE_SESSION {
            backoff.reset();
        }
        let delay = match ended {
            Ok(Ended::Shutdown) => return Ok(()),
            Ok(Ended::Renewed) => {
                backoff.reset();
                continue;
            }
            Ok(Ended::Closed(reason)) => {
                warn!(%reason, "the controller closed the session");
                backoff.next_delay()
            }
            Err(e) if e.is_auth() => {
                error!(error = %e, "the controller refused this node: certificate revoked or unknown to the controller");
                backoff.max_delay()
            }
            Err(e) => {
                warn!(error = %e, "session lost");
                backoff.next_delay()
            }
        };
        info!(delay_ms = delay.as_millis() as u64, "reconnecting");
        tokio::select! {
            _ = sleep(delay) => {}
            _ = stopped(&mut shutdown) => return Ok(()),
        }
    }
}

async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // A dropped sender means nobody can ask us to stop: wait forever.
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

struct Agent {
    opts: RunOptions,
    state: StateDir,
    root: Root,
    seen: SeenCommands,
    renew_after: Option<Instant>,
}

/// The sending half of a session, with the per-session sequence number shared by reports
/// and heartbeats.
struct Outbox {
    tx: mpsc::Sender<AgentMessage>,
    seq: u64,
    last_sent: Instant,
    /// JSON of the last report sent in this session.
    last_report: Option<Vec<u8>>,
    /// Reports awaiting their `ReportAck`, with the command that asked for them.
    pending: HashMap<u64, Option<String>>,
}

impl Outbox {
    fn send(&mut self, kind: Out) -> Result<(), Error> {
        self.last_sent = Instant::now();
        self.tx
            .try_send(AgentMessage::new(kind))
            .map_err(|_| Error::Protocol("the session stopped taking messages".into()))
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn report(&mut self, report: &Report, command: Option<String>) -> Result<(), Error> {
        let msg = agent_message::Report::new(self.next_seq(), report);
        debug!(
            seq = msg.seq,
            bytes = msg.report_json.len(),
            "sending report"
        );
        self.pending.insert(msg.seq, command);
        self.last_report = Some(msg.report_json.clone());
        self.send(Out::Report(msg))
    }

    fn heartbeat(&mut self) -> Result<(), Error> {
        let seq = self.next_seq();
        self.send(Out::Heartbeat(agent_message::Heartbeat { seq }))
    }

    fn changed(&self, report: &Report) -> bool {
        self.last_report.as_deref() != Some(fleetward_proto::report_json_bytes(report).as_slice())
    }

    fn ack(&mut self, command_id: &str) -> Result<(), Error> {
        self.send(Out::CommandAck(agent_message::CommandAck {
            command_id: command_id.to_owned(),
        }))
    }

    fn result(
        &mut self,
        command_id: &str,
        ok: bool,
        message: impl Into<String>,
    ) -> Result<(), Error> {
        self.send(Out::CommandResult(agent_message::CommandResult {
            command_id: command_id.to_owned(),
            ok,
            message: message.into(),
        }))
    }
}

impl Agent {
    async fn inspect(&self) -> Report {
        let root = self.root.clone();
        match tokio::task::spawn_blocking(move || inspect(&root)).await {
            Ok(report) => report,
            // Only a panic inside inspect gets here; inspect once more, in place.
            Err(_) => inspect(&self.root),
        }
    }

    /// One session, from connect to its end.
    async fn session(
        &mut self,
        url: &ControllerUrl,
        creds: &Credentials,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Ended, Error> {
        let endpoint = url.endpoint(&creds.ca_pem, Some((&creds.cert_pem, creds.key.pem())))?;
        let channel = tokio::select! {
            c = endpoint.connect() => c.map_err(|e| url.transport_error(&e))?,
            _ = stopped(shutdown) => return Ok(Ended::Shutdown),
        };
        if self.maybe_renew(&channel, creds).await {
            return Ok(Ended::Renewed);
        }
        let report = self.inspect().await;
        let (tx, rx) = mpsc::channel(OUTBOX);
        let mut out = Outbox {
            tx,
            seq: 0,
            last_sent: Instant::now(),
            last_report: None,
            pending: HashMap::new(),
        };
        out.send(Out::Hello(agent_message::Hello {
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            boot_id: report.facts.node.boot_id.clone().unwrap_or_default(),
        }))?;
        out.report(&report, None)?;
        let mut client = AgentServiceClient::new(channel.clone());
        let mut inbound = tokio::select! {
            r = client.session(ReceiverStream::new(rx)) => r.map_err(Error::rpc("Session"))?.into_inner(),
            _ = stopped(shutdown) => return Ok(Ended::Shutdown),
        };
        info!(controller = %url, node = %creds.config.node_name, "session open");

        let idle_limit = self.opts.heartbeat * 3 + Duration::from_secs(10);
        let mut last_received = Instant::now();
        let mut inspect_at = Instant::now() + self.opts.interval;
        loop {
            tokio::select! {
                msg = inbound.message() => match msg.map_err(Error::rpc("Session"))? {
                    Some(msg) => {
                        last_received = Instant::now();
                        if let Some(ended) = self.handle(msg, &mut out).await? {
                            return Ok(ended);
                        }
                    }
                    None => return Err(Error::Protocol("the controller ended the session".into())),
                },
                _ = sleep_until(inspect_at) => {
                    inspect_at = Instant::now() + self.opts.interval;
                    let report = self.inspect().await;
                    if out.changed(&report) {
                        info!("inspection result changed; sending a report");
                        out.report(&report, None)?;
                    } else {
                        out.heartbeat()?;
                    }
                }
                _ = sleep_until(out.last_sent + self.opts.heartbeat) => {
                    out.heartbeat()?;
                    if self.maybe_renew(&channel, creds).await {
                        return Ok(Ended::Renewed);
                    }
                }
                _ = sleep_until(last_received + idle_limit) => {
                    return Err(Error::Protocol(format!(
                        "nothing heard from the controller for {} s", idle_limit.as_secs()
                    )));
                }
                _ = stopped(shutdown) => {
                    // Half-close our side, then give the controller a moment to end its own.
                    drop(out);
                    let _ = tokio::time::timeout(Duration::from_secs(2), async {
                        while let Ok(Some(_)) = inbound.message().await {}
                    })
                    .await;
                    info!("session closed: shutting down");
                    return Ok(Ended::Shutdown);
                }
            }
        }
    }

    /// Handles one controller message; `Some` ends the session.
    async fn handle(
        &mut self,
        msg: ControllerMessage,
        out: &mut Outbox,
    ) -> Result<Option<Ended>, Error> {
        match msg.kind {
            Some(In::ReportAck(ack)) => match out.pending.remove(&ack.seq) {
                Some(command) => {
                    // Ready (for systemd) once the controller has stored a first report.
                    notify::ready("connected: reports are acknowledged");
                    match command {
                        Some(command_id) => out.result(
                            &command_id,
                            true,
                            format!("inspected; report {} stored", ack.seq),
                        )?,
                        None => debug!(seq = ack.seq, "report stored"),
                    }
                }
                None => warn!(seq = ack.seq, "acknowledgement for a report never sent"),
            },
            Some(In::HeartbeatAck(ack)) => debug!(seq = ack.seq, "heartbeat acknowledged"),
            Some(In::Command(cmd)) => self.command(cmd, out).await?,
            Some(In::Close(close)) => return Ok(Some(Ended::Closed(close.reason))),
            None => debug!("ignoring a controller message of an unknown kind"),
        }
        Ok(None)
    }

    async fn command(&mut self, cmd: Command, out: &mut Outbox) -> Result<(), Error> {
        let id = cmd.command_id;
        if id.is_empty() {
            warn!("ignoring a command without an id");
            return Ok(());
        }
        let Some(command::Kind::Refresh(_)) = cmd.kind else {
            warn!(command_id = %id, "unknown command kind");
            out.ack(&id)?;
            let version = env!("CARGO_PKG_VERSION");
            return out.result(&id, false, format!("unknown command for agent {version}"));
        };
        if self.seen.contains(&id) {
            info!(command_id = %id, "command seen before; not executing it again");
            out.ack(&id)?;
            return out.result(&id, true, "already done");
        }
        if let Err(e) = self.seen.insert(&id) {
            warn!(command_id = %id, error = %e, "cannot persist the command id");
        }
        info!(command_id = %id, "refresh requested");
        out.ack(&id)?;
        let report = self.inspect().await;
        out.report(&report, Some(id))
    }

    /// Renews the certificate if due (and not recently failed). `true`: new identity saved.
    async fn maybe_renew(&mut self, channel: &Channel, creds: &Credentials) -> bool {
        let due = match (
            pki::not_before(&creds.cert_der),
            pki::not_after(&creds.cert_der),
        ) {
            (Ok(nb), Ok(na)) => renewal_due(nb, na, SystemTime::now()),
            _ => true,
        };
        if !due || self.renew_after.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        info!("certificate is in the last third of its validity: renewing");
        match self.renew(channel, creds).await {
            Ok(not_after) => {
                let left = not_after
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                info!(valid_for_s = left.as_secs(), "certificate renewed");
                self.renew_after = Some(Instant::now() + RENEW_MIN_INTERVAL);
                true
            }
            Err(e) => {
                warn!(error = %e, "certificate renewal failed; retrying later");
                self.renew_after = Some(Instant::now() + RENEW_RETRY);
                false
            }
        }
    }

    async fn renew(&self, channel: &Channel, creds: &Credentials) -> Result<SystemTime, Error> {
        let identity = Identity::new(Role::Agent, creds.config.node_name.clone())?;
        let (key, csr_pem) = pki::generate_key_and_csr(&identity)?;
        let mut client = AgentServiceClient::new(channel.clone());
        let resp = tokio::time::timeout(CALL_TIMEOUT, client.renew(RenewRequest { csr_pem }))
            .await
            .map_err(|_| Error::Protocol("Renew timed out".into()))?
            .map_err(Error::rpc("Renew"))?
            .into_inner();
        let der = pki::ca_der_from_pem(&resp.cert_pem)?;
        if pki::identity_from_der(&der)? != identity {
            return Err(Error::Protocol(
                "renewed certificate names another identity".into(),
            ));
        }
        // Fails unless the certificate is for the new key and parses as a client cert.
        pki::client_config(
            &pki::ca_der_from_pem(&creds.ca_pem)?,
            &resp.cert_pem,
            key.pem(),
        )?;
        self.state.save_renewal(&key, &resp.cert_pem)?;
        Ok(pki::not_after(&der)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_in_the_last_third() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let day = Duration::from_secs(86_400);
        let (nb, na) = (t0, t0 + 30 * day);
        assert!(!renewal_due(nb, na, t0));
        assert!(!renewal_due(nb, na, t0 + 19 * day));
        assert!(renewal_due(nb, na, t0 + 21 * day));
        assert!(renewal_due(nb, na, na + day), "expired");
        assert!(renewal_due(na, nb, t0), "nonsense validity");
    }

    #[test]
    fn waiting_for_enrollment_ends_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (stop, shutdown) = watch::channel(false);
        let enrolled = rt.block_on(async {
            let wait = wait_for_enrollment(dir.path(), Duration::from_millis(5), shutdown);
            let stopper = async {
                sleep(Duration::from_millis(30)).await;
                stop.send(true).unwrap();
            };
            tokio::join!(wait, stopper).0
        });
        assert!(!enrolled.unwrap(), "not enrolled, stopped while waiting");
    }
}
