//! `essl-agent`: the office-LAN side of essl-relay.
//!
//! - [`config`]: flags, environment and `agent.toml`, validated once; the token is a [`config::Secret`].
//! - [`relay`]: the outbound WebSocket to `essl-server` and the device work it asks for ([`relay::run`]).
//! - `collect`: the agent's own reading of its terminals (realtime events, scheduled sync) into the outbox.
//! - [`outbox`]: the durable store of records read from terminals, until the server acknowledged them.
//! - [`addr`]: terminal addresses (shared with the `device` CLI); `host`: what `Hello` says about this computer.
//!
//! The binary (`main.rs`) adds the command line: `essl-agent run` and the `essl-agent device ...` CLI.

pub mod addr;
mod collect;
pub mod config;
mod host;
pub mod outbox;
pub mod relay;
