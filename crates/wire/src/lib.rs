//! The messages between `essl-agent` and `essl-server`: one MessagePack message per binary WebSocket frame.
//!
//! - The agent opens with [`AgentMsg::Hello`] (the protocol versions it speaks); the server answers
//!   [`ServerMsg::Welcome`] with the version chosen, or closes with one of the [`close`] codes.
//! - The server sends [`ServerMsg::Request`]s for device work; the agent answers each with one
//!   [`AgentMsg::Response`], optionally preceded by [`AgentMsg::Progress`] and, for attendance, by
//!   [`AgentMsg::Punches`] batches that the server acknowledges with [`ServerMsg::Ack`] once committed (or, from
//!   protocol 2, refuses with [`ServerMsg::Nack`] when its database failed, so the agent sends it again soon).
//! - The agent reports [`AgentMsg::Reachability`] of its site's devices periodically: the routing table (and its
//!   heartbeat, with the outbox's fill).
//!
//! Versions: fields are added as optional (`#[serde(default)]`), which peers of the same protocol version ignore
//! or miss harmlessly; a new message, variant or meaning needs a new protocol version, and each side sends it only
//! to a peer that negotiated that version (`negotiate`). Protocol 2 adds `Op::ClearAttendance { sync_first }`
//! (the confirmed clear), `AgentMsg::ConfirmStored`, `ServerMsg::Stored`, `ServerMsg::Nack`, `OpResult::Cleared`
//! and `ErrorKind::NotConfirmed`.
//!
//! Decoding is bounded by [`MAX_MESSAGE_BYTES`] and never panics; an undecodable message is an error for the
//! caller to close that one connection with.

pub mod close;
mod codec;
mod duration;
mod messages;
mod time;

pub use codec::{WireError, decode_agent, decode_server, encode_agent, encode_server};
pub use duration::parse_duration;
pub use messages::*;
pub use time::{invalid_time_placeholder, raw_of_placeholder};

/// The protocol version this build speaks best.
pub const PROTOCOL_VERSION: u16 = 2;
/// The first protocol version with the confirmed clear of a terminal's log (`Op::ClearAttendance`).
pub const CLEAR_PROTOCOL_VERSION: u16 = 2;
/// The first protocol version with [`ServerMsg::Nack`].
pub const NACK_SINCE: u16 = 2;
/// The oldest protocol version this build still speaks.
pub const MIN_PROTOCOL_VERSION: u16 = 1;
/// Largest encoded message accepted (also the WebSocket frame limit).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Most punches in one [`AgentMsg::Punches`] batch; keeps each batch well under [`MAX_MESSAGE_BYTES`].
pub const MAX_PUNCHES_PER_BATCH: usize = 5_000;
/// Most users in one [`AgentMsg::Punches`] batch's user list: the largest terminals enrol 30,000 people, and even
/// with every text field at its longest the batch stays under [`MAX_MESSAGE_BYTES`] (tested). An agent whose
/// terminal holds more sends no list (its punches are stored unflagged) rather than a message the server refuses.
pub const MAX_USERS_PER_BATCH: usize = 30_000;

/// The highest version both sides speak, if any.
pub fn negotiate(peer_min: u16, peer_max: u16) -> Option<u16> {
    let top = peer_max.min(PROTOCOL_VERSION);
    (top >= peer_min.max(MIN_PROTOCOL_VERSION)).then_some(top)
}
