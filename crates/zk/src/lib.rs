//! The eSSL / ZKTeco terminal protocol spoken on port 4370.
//!
//! Layout, from the bytes up (see `zk-protocol.md` for the protocol itself):
//! - [`packet`]: the 8-byte header, checksum; [`frame`]: TCP framing.
//! - [`time`], [`text`], [`commkey`]: the small encodings.
//! - [`attendance`], [`user`], [`sizes`], [`event`]: record and reply payloads.
//! - [`client`]: an async session over TCP or UDP, built only on the modules above.
//!
//! Everything that decodes bytes from a terminal returns a [`CodecError`] on bad input and never panics.

pub mod attendance;
pub mod client;
pub mod commkey;
pub mod consts;
mod error;
pub mod event;
pub mod frame;
pub mod packet;
pub mod sizes;
mod table;
pub mod text;
pub mod time;
pub mod user;

pub use client::{ClientConfig, DeviceInfo, ProbeConfig, RealtimeEvent, Transport, ZkClient, probe};
pub use error::{CodecError, ErrorKind, ZkError};
