//! Everything the agent sends goes through one queue and one writer task, so messages leave in the order they
//! were queued (a sync's `Punches` before its `Response`) and a slow server slows the senders down instead of
//! growing memory.

use std::time::Duration;

use essl_wire::{AgentMsg, ErrorKind, OpError, Outcome};
use futures_util::SinkExt;
use futures_util::stream::SplitSink;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use super::connect::WsStream;

/// Frames waiting for the writer.
pub(crate) const QUEUE: usize = 64;

/// One item for the writer.
#[derive(Debug)]
pub(crate) enum Outgoing {
    Msg(AgentMsg),
    Ping,
    /// The last frame: the writer sends it and stops.
    Close(u16, String),
}

/// The sending side of the queue, cloned into every job.
pub(crate) type Out = mpsc::Sender<Outgoing>;

/// Writes queued items until the queue closes, a `Close` is written, or a write fails or takes longer than
/// `write_timeout` (a server that does not read is as dead as one that does not answer).
pub(crate) async fn writer(
    mut sink: SplitSink<WsStream, Message>,
    mut queue: mpsc::Receiver<Outgoing>,
    write_timeout: Duration,
) -> Result<(), String> {
    while let Some(item) = queue.recv().await {
        let (frame, last) = match item {
            Outgoing::Msg(msg) => match encode(msg) {
                Some(bytes) => (Message::binary(bytes), false),
                None => continue,
            },
            Outgoing::Ping => (Message::Ping(Vec::new().into()), false),
            Outgoing::Close(code, reason) => {
                (Message::Close(Some(CloseFrame { code: code.into(), reason: reason.into() })), true)
            }
        };
        match tokio::time::timeout(write_timeout, sink.send(frame)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("sending failed: {e}")),
            Err(_) => return Err(format!("the server did not take a frame within {write_timeout:?}")),
        }
        if last {
            return Ok(());
        }
    }
    Ok(())
}

/// Encodes a message. A response too large for one frame becomes an error response, so the server is not left
/// waiting; any other message that cannot be encoded is dropped with an error in the log.
fn encode(msg: AgentMsg) -> Option<Vec<u8>> {
    match essl_wire::encode_agent(&msg) {
        Ok(bytes) => Some(bytes),
        Err(error) => {
            tracing::error!(%error, kind = kind_of(&msg), "cannot encode a message");
            let AgentMsg::Response { id, .. } = msg else { return None };
            let outcome =
                Outcome::Err(OpError { kind: ErrorKind::Internal, message: format!("response not sent: {error}") });
            essl_wire::encode_agent(&AgentMsg::Response { id, outcome }).ok()
        }
    }
}

fn kind_of(msg: &AgentMsg) -> &'static str {
    match msg {
        AgentMsg::Hello { .. } => "Hello",
        AgentMsg::Response { .. } => "Response",
        AgentMsg::Progress { .. } => "Progress",
        AgentMsg::Reachability { .. } => "Reachability",
        AgentMsg::Punches { .. } => "Punches",
        AgentMsg::ConfirmStored { .. } => "ConfirmStored",
    }
}
