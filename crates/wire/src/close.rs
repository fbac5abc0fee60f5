//! WebSocket close codes (4000-4999 are for applications) and what the agent does on each.

/// The token was refused or revoked: the agent stops retrying fast (it backs off to its longest delay).
pub const UNAUTHORIZED: u16 = 4001;
/// No common protocol version: the agent logs that it must be upgraded and backs off to its longest delay.
pub const INCOMPATIBLE: u16 = 4002;
/// The peer sent something undecodable or out of order.
pub const PROTOCOL_ERROR: u16 = 4003;
/// The server is shutting down or handing over: reconnect after a short, jittered delay.
pub const GOING_AWAY: u16 = 4004;
/// Another connection of the same agent replaced this one.
pub const REPLACED: u16 = 4005;
/// Nothing heard from the peer for two liveness intervals.
pub const SILENT: u16 = 4006;

/// Whether the agent should slow down to its longest retry delay after this close code.
pub fn is_fatal_for_agent(code: u16) -> bool {
    matches!(code, UNAUTHORIZED | INCOMPATIBLE)
}
