//! A simulated eSSL / ZKTeco terminal, faithful enough that clients written for real terminals (pyzk, our
//! `essl-zk`) cannot tell the difference.
//!
//! - [`fixture`]: the JSON data format; [`generate`]: reproducible realistic data.
//! - [`terminal`]: the state shared by all sessions (data, clock, faults, realtime punches).
//! - `session`: the protocol state machine of one session, independent of the transport.
//! - [`server`]: TCP and UDP on one port, fault injection on the way out.
//! - [`push`]: push (ADMS / iclock) mode: the terminal calls an HTTP server instead of being polled.

pub mod faults;
pub mod fixture;
pub mod generate;
pub mod push;
mod rng;
pub mod server;
mod session;
pub mod terminal;

pub use faults::Faults;
pub use fixture::Fixture;
pub use server::Simulator;
pub use terminal::{StatsSnapshot, Terminal, TerminalConfig};
