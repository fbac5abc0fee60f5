//! One connected session: `Hello` -> `Welcome` (within `hello_timeout`), then one loop over incoming frames,
//! finished requests, the probe ticker and the liveness timers, until the connection ends. How it ended decides
//! the next reconnect delay (see `relay::run`).

use std::sync::Arc;
use std::time::Duration;

use essl_wire::{AgentMsg, OutboxFill, ServerMsg, close};
use futures_util::StreamExt;
use futures_util::stream::SplitStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep_until};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::clear::Verdicts;
use super::connect::WsStream;
use super::devices::{DeviceTable, probe_all};
use super::jobs::{JobCtx, Jobs};
use super::outgoing::{Out, Outgoing, QUEUE, writer};
use super::upload::Uploader;
use crate::config::Timing;
use crate::outbox::Outbox;

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum End {
    /// We were asked to stop.
    Shutdown,
    /// The token was refused (HTTP 401/403, or close code `UNAUTHORIZED`).
    Refused(String),
    /// No common protocol version (close code `INCOMPATIBLE`, or a `Welcome` with a version we do not speak).
    Incompatible(String),
    /// The server is going away (close code `GOING_AWAY`, 1001 or 1012): come back soon.
    GoingAway(String),
    /// Anything else: a network error, a silent or misbehaving server, a plain close.
    Failed(String),
}

/// The end of a session and, if it got that far, when `Welcome` arrived.
pub(crate) struct Ended {
    pub end: End,
    pub welcomed_at: Option<Instant>,
}

/// Runs one session on a connected WebSocket.
pub(crate) async fn run(shared: &Shared, ws: WsStream, shutdown: &CancellationToken) -> Ended {
    let timing = &shared.config.timing;
    let (sink, mut stream) = ws.split();
    let (out, queue) = mpsc::channel(QUEUE);
    let mut writer = tokio::spawn(writer(sink, queue, timing.write_timeout));
    let mut session = Session { out, writer: &mut writer, writer_done: false, timing, closing: false };

    let end = session.handshake(&mut stream, shutdown).await;
    let (welcomed_at, end) = match end {
        Ok(welcome) => {
            let welcomed_at = Instant::now();
            (Some(welcomed_at), session.serve(shared, welcome, &mut stream, shutdown).await)
        }
        Err(end) => (None, end),
    };
    session.finish(&end).await;
    Ended { end, welcomed_at }
}

/// What the server's `Welcome` said.
struct Welcome {
    protocol: u16,
    agent_id: String,
    site: String,
    devices: Vec<essl_wire::DeviceSpec>,
    probe_interval_ms: u64,
}

struct Session<'a> {
    out: Out,
    writer: &'a mut JoinHandle<Result<(), String>>,
    /// The writer's result was taken (a finished `JoinHandle` must not be polled again).
    writer_done: bool,
    timing: &'a Timing,
    /// A close frame is queued: worth waiting for the writer to send it.
    closing: bool,
}

/// Control flow out of the loop: `Err(End)` ends the session.
type Step = Result<(), End>;

impl Session<'_> {
    async fn send(&self, msg: AgentMsg) -> Step {
        self.out.send(Outgoing::Msg(msg)).await.map_err(|_| End::Failed("the connection's writer stopped".into()))
    }

    /// Sends `Hello` and waits for `Welcome`.
    async fn handshake(
        &mut self,
        stream: &mut SplitStream<WsStream>,
        shutdown: &CancellationToken,
    ) -> Result<Welcome, End> {
        self.send(AgentMsg::Hello {
            min_protocol: essl_wire::MIN_PROTOCOL_VERSION,
            max_protocol: essl_wire::PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            hostname: crate::host::hostname(),
            os: crate::host::os(),
        })
        .await?;
        let deadline = Instant::now() + self.timing.hello_timeout;
        loop {
            let frame = tokio::select! {
                _ = shutdown.cancelled() => return Err(End::Shutdown),
                _ = sleep_until(deadline) => {
                    return Err(self.protocol_error(format!("no Welcome within {:?}", self.timing.hello_timeout)));
                }
                frame = stream.next() => frame,
            };
            match self.decode(frame)? {
                None => {}
                Some(ServerMsg::Welcome { protocol, agent_id, site, devices, probe_interval_ms }) => {
                    if !(essl_wire::MIN_PROTOCOL_VERSION..=essl_wire::PROTOCOL_VERSION).contains(&protocol) {
                        self.queue_close(close::INCOMPATIBLE, "unsupported protocol");
                        return Err(End::Incompatible(format!("the server chose protocol {protocol}")));
                    }
                    return Ok(Welcome { protocol, agent_id, site, devices, probe_interval_ms });
                }
                Some(other) => {
                    return Err(self.protocol_error(format!("expected Welcome, got {}", msg_name(&other))));
                }
            }
        }
    }

    /// The main loop, after `Welcome`.
    async fn serve(
        &mut self,
        shared: &Shared,
        welcome: Welcome,
        stream: &mut SplitStream<WsStream>,
        shutdown: &CancellationToken,
    ) -> End {
        let timing = self.timing;
        let probe_every = shared.config.probe_interval.unwrap_or_else(|| server_interval(welcome.probe_interval_ms));
        tracing::info!(
            server = %shared.config.server,
            agent_id = %welcome.agent_id,
            site = %welcome.site,
            protocol = welcome.protocol,
            devices = welcome.devices.len(),
            probe_interval_ms = probe_every.as_millis() as u64,
            "connected"
        );
        shared.devices.replace(welcome.devices);
        let devices = shared.devices.clone();
        let conn = shared.conns.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Queued batches go first, in order: the uploader starts from the oldest.
        let uploader = Uploader::start(shared.outbox.clone(), self.out.clone(), conn, timing.ack_timeout);
        let verdicts = Verdicts::default();
        let mut jobs = Jobs::new(JobCtx {
            devices: devices.clone(),
            out: self.out.clone(),
            outbox: shared.outbox.clone(),
            conn,
            protocol: welcome.protocol,
            verdicts: verdicts.clone(),
            timing: Arc::new(timing.clone()),
        });
        let mut rounds = Rounds::new(shared.outbox.clone());
        // The first tick is immediate: a reachability report right after Welcome.
        let mut probe_ticker = interval_at(Instant::now(), probe_every);
        probe_ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut ping_ticker = interval_at(Instant::now() + timing.ping_interval, timing.ping_interval);
        ping_ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();

        loop {
            let step = tokio::select! {
                _ = shutdown.cancelled() => Err(End::Shutdown),
                frame = stream.next() => {
                    last_heard = Instant::now();
                    match self.decode(frame) {
                        Ok(Some(msg)) => self.handle(msg, &mut jobs, &uploader, &devices, &mut rounds, &verdicts).await,
                        Ok(None) => Ok(()),
                        Err(end) => Err(end),
                    }
                }
                Some(response) = jobs.next_done() => self.send(response).await,
                _ = probe_ticker.tick() => {
                    rounds.start(&devices, &self.out, timing, false);
                    Ok(())
                }
                _ = ping_ticker.tick() => {
                    // A full queue means frames are waiting anyway; silence is judged on what comes back.
                    let _ = self.out.try_send(Outgoing::Ping);
                    Ok(())
                }
                _ = sleep_until(last_heard + 2 * timing.ping_interval) => {
                    let silent = 2 * timing.ping_interval;
                    self.queue_close(close::SILENT, "no pong");
                    Err(End::Failed(format!("nothing heard from the server for {silent:?}")))
                }
                result = &mut *self.writer => {
                    self.writer_done = true;
                    Err(End::Failed(match result {
                        Ok(Err(e)) => e,
                        _ => "the connection's writer stopped".into(),
                    }))
                }
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    async fn handle(
        &mut self,
        msg: ServerMsg,
        jobs: &mut Jobs,
        uploader: &Uploader,
        devices: &DeviceTable,
        rounds: &mut Rounds,
        verdicts: &Verdicts,
    ) -> Step {
        match msg {
            ServerMsg::Request { id, device, op } => match jobs.start(id, device, op) {
                Some(immediate) => self.send(immediate).await,
                None => Ok(()),
            },
            ServerMsg::Cancel { id } => {
                jobs.cancel(id);
                Ok(())
            }
            ServerMsg::Ack { batch } => {
                uploader.ack(batch);
                Ok(())
            }
            ServerMsg::Nack { batch, error } => {
                let error: String = error.chars().filter(|c| !c.is_control()).take(300).collect();
                tracing::warn!(batch, %error, "the server could not store a batch; it stays queued and goes again");
                uploader.nack(batch);
                Ok(())
            }
            ServerMsg::DevicesChanged { devices: specs } => {
                tracing::info!(devices = specs.len(), "the site's devices changed");
                devices.replace(specs);
                rounds.start(devices, &self.out, self.timing, true);
                Ok(())
            }
            ServerMsg::Stored { id, confirmed, reason } => {
                let verdict = if confirmed { Ok(()) } else { Err(reason.unwrap_or_else(|| "no reason given".into())) };
                verdicts.deliver(id, verdict);
                Ok(())
            }
            ServerMsg::Welcome { .. } => Err(self.protocol_error("a second Welcome".into())),
        }
    }

    /// One incoming frame: `Ok(Some(msg))`, `Ok(None)` for control frames, `Err` when the session is over.
    fn decode(
        &mut self,
        frame: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Result<Option<ServerMsg>, End> {
        match frame {
            None => Err(End::Failed("the server closed the connection".into())),
            Some(Err(e)) => Err(End::Failed(format!("connection error: {e}"))),
            Some(Ok(Message::Binary(bytes))) => match essl_wire::decode_server(&bytes) {
                Ok(msg) => Ok(Some(msg)),
                Err(e) => Err(self.protocol_error(format!("undecodable message from the server: {e}"))),
            },
            Some(Ok(Message::Text(_))) => Err(self.protocol_error("a text frame (the protocol is binary)".into())),
            Some(Ok(Message::Close(frame))) => Err(classify_close(frame)),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Ok(None),
        }
    }

    /// Closes with `PROTOCOL_ERROR`; the session ends as failed.
    fn protocol_error(&mut self, what: String) -> End {
        self.queue_close(close::PROTOCOL_ERROR, "protocol error");
        End::Failed(format!("protocol error: {what}"))
    }

    fn queue_close(&mut self, code: u16, reason: &str) {
        self.closing |= self.out.try_send(Outgoing::Close(code, reason.into())).is_ok();
    }

    /// Says goodbye where appropriate and gives the writer a moment to send the close frame.
    async fn finish(mut self, end: &End) {
        if self.writer_done {
            return;
        }
        if *end == End::Shutdown {
            self.queue_close(1000, "agent shutting down");
        }
        // Request tasks may still hold queue senders, so the queue need not close: wait for the close frame only.
        if !self.closing || tokio::time::timeout(Duration::from_secs(1), &mut *self.writer).await.is_err() {
            self.writer.abort();
        }
    }
}

/// What a close frame from the server means for the agent.
fn classify_close(frame: Option<CloseFrame>) -> End {
    let Some(frame) = frame else { return End::Failed("the server closed the connection".into()) };
    let code = u16::from(frame.code);
    let reason: String = frame.reason.as_str().chars().filter(|c| !c.is_control()).take(200).collect();
    match code {
        close::UNAUTHORIZED => End::Refused(reason),
        close::INCOMPATIBLE => End::Incompatible(reason),
        // 1001 going away, 1012 service restart: the standard codes a proxy or server may use.
        close::GOING_AWAY | 1001 | 1012 => End::GoingAway(reason),
        close::REPLACED => End::Failed(format!(
            "replaced by a newer connection with the same token (is a second agent running with it?): {reason}"
        )),
        _ => End::Failed(format!("the server closed the connection (code {code}: {reason})")),
    }
}

/// The server's probe interval; a nonsensical one falls back to 30 s.
fn server_interval(ms: u64) -> Duration {
    match ms {
        1_000..=3_600_000 => Duration::from_millis(ms),
        _ => Duration::from_secs(30),
    }
}

fn msg_name(msg: &ServerMsg) -> &'static str {
    match msg {
        ServerMsg::Welcome { .. } => "Welcome",
        ServerMsg::Request { .. } => "Request",
        ServerMsg::Cancel { .. } => "Cancel",
        ServerMsg::DevicesChanged { .. } => "DevicesChanged",
        ServerMsg::Ack { .. } => "Ack",
        ServerMsg::Stored { .. } => "Stored",
        ServerMsg::Nack { .. } => "Nack",
    }
}

/// The reachability round in progress, if any. Rounds do not overlap: a tick during a round is skipped, a
/// device list change restarts the round. Each report carries the outbox's fill: the heartbeat the server shows.
struct Rounds {
    running: Option<JoinHandle<()>>,
    outbox: Outbox,
}

impl Rounds {
    fn new(outbox: Outbox) -> Rounds {
        Rounds { running: None, outbox }
    }

    fn start(&mut self, devices: &DeviceTable, out: &Out, timing: &Timing, restart: bool) {
        if let Some(running) = &self.running {
            if !running.is_finished() && !restart {
                tracing::debug!("previous reachability round still running; tick skipped");
                return;
            }
            running.abort();
        }
        let (all, out, timing, outbox) = (devices.all(), out.clone(), timing.clone(), self.outbox.clone());
        self.running = Some(tokio::spawn(async move {
            let reports = probe_all(all, &timing).await;
            tracing::debug!(
                devices = reports.len(),
                reachable = reports.iter().filter(|r| r.reachable).count(),
                "reachability"
            );
            let outbox = match outbox.stats().await {
                Ok(s) => Some(OutboxFill {
                    bytes: s.bytes,
                    limit_bytes: s.max_bytes,
                    pending_records: s.punches,
                    pending_batches: s.batches,
                }),
                Err(error) => {
                    tracing::warn!(%error, "cannot read the outbox's fill");
                    None
                }
            };
            let _ = out.send(Outgoing::Msg(AgentMsg::Reachability { reports, outbox })).await;
        }));
    }
}

impl Drop for Rounds {
    fn drop(&mut self) {
        if let Some(running) = &self.running {
            running.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    fn frame(code: u16) -> Option<CloseFrame> {
        Some(CloseFrame { code: CloseCode::from(code), reason: "why".into() })
    }

    #[test]
    fn close_codes() {
        assert_eq!(classify_close(frame(close::UNAUTHORIZED)), End::Refused("why".into()));
        assert_eq!(classify_close(frame(close::INCOMPATIBLE)), End::Incompatible("why".into()));
        assert_eq!(classify_close(frame(close::GOING_AWAY)), End::GoingAway("why".into()));
        assert_eq!(classify_close(frame(1001)), End::GoingAway("why".into()));
        assert!(matches!(classify_close(frame(close::PROTOCOL_ERROR)), End::Failed(_)));
        assert!(matches!(classify_close(frame(close::REPLACED)), End::Failed(_)));
        assert!(matches!(classify_close(None), End::Failed(_)));
    }

    #[test]
    fn probe_interval_from_the_server() {
        assert_eq!(server_interval(30_000), Duration::from_secs(30));
        assert_eq!(server_interval(0), Duration::from_secs(30));
        assert_eq!(server_interval(5_000), Duration::from_secs(5));
    }
}
