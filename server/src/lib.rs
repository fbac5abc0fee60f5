//! essl-server: the cloud side of essl-relay.
//!
//! - [`http`]: routes, extractors, the error shape; [`sync`]: the seed's check and sync on top of the hub;
//!   [`clear`]: clearing a terminal's log once every record of it is stored.
//! - [`hub`]: connected agents, their reachability reports, routing, single flight; `hub::session`: one agent's
//!   WebSocket.
//! - [`ingest`]: terminal records to attendance rows (time zones, flags).
//! - [`store`]: one interface, SQLite and PostgreSQL behind it.
//! - [`push`]: push (ADMS / iclock) terminals: their HTTP endpoints, parsers, command queue.
//! - [`cluster`]: several instances on one PostgreSQL database (shared registry with leases, requests and events
//!   across instances by LISTEN/NOTIFY).
//! - [`auth`]: tokens and callers. [`app`]: state, the serve loop, shutdown.
//!
//! The server never speaks the terminal protocol itself: it has no dependency on `essl-zk`.

pub mod app;
pub mod auth;
pub mod clear;
pub mod cluster;
pub mod http;
pub mod hub;
pub mod ingest;
pub mod metrics;
pub mod push;
pub mod store;
pub mod sync;
pub mod tls;
