//! What instances tell each other through PostgreSQL notifications: small JSON envelopes, versioned, each naming
//! its sender. Pure types and their checked decoding; no I/O.
//!
//! A notification payload is at most 8000 bytes (PostgreSQL's limit); anything bigger (a long user list in a
//! reply) travels through `essl_cluster_replies` and the notice only names it.

use essl_wire::Op;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::hub::{CallError, CallResult, HubEvent};

/// The notice versions this build speaks. A newer instance that changes a notice's meaning raises the version and
/// keeps sending the old one to instances that do not speak it (their range is in `essl_instances`).
pub const MIN_NOTICE: u16 = 1;
pub const MAX_NOTICE: u16 = 1;

/// PostgreSQL refuses payloads of 8000 bytes or more; a margin for the channel name and framing.
pub const MAX_PAYLOAD: usize = 7_900;

/// The channel every instance listens to (presence, reachability, live events).
pub const BROADCAST: &str = "essl_cluster";

/// The channel of one instance (requests to it, replies to it). PostgreSQL identifiers are at most 63 bytes:
/// 7 + 32 hex digits.
pub fn channel_of(instance: Uuid) -> String {
    format!("essl_i_{}", instance.simple())
}

/// One notice and who sent it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u16,
    pub from: Uuid,
    pub notice: Notice,
}

/// An agent's connection as other instances mirror it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceNotice {
    pub agent_id: Uuid,
    pub site_id: Uuid,
    pub conn: u64,
    pub protocol: u16,
    pub version: String,
    pub hostname: String,
    pub os: String,
    pub connected_since_ms: i64,
}

/// One probe report of an agent, as mirrored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReachNotice {
    pub device_id: Uuid,
    pub reachable: bool,
    pub rtt_us: Option<u64>,
    pub checked_at_ms: i64,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Notice {
    /// To one instance: run `op` on `device` through your agent `agent`, within `timeout_ms`.
    Request { id: Uuid, agent: Uuid, device: Uuid, op: Op, timeout_ms: u64 },
    /// To the instance that asked: the outcome of request `id`; `None`: it is in `essl_cluster_replies` under `id`.
    Reply { id: Uuid, outcome: Option<Result<CallResult, CallError>> },
    /// Broadcast: an agent connected to the sender.
    Up { presence: PresenceNotice },
    /// Broadcast: the sender's connection `conn` of `agent` ended; `moving`: because the sender is shutting down
    /// (the agent reconnects elsewhere within moments, so requests for its devices wait for it).
    Down { agent: Uuid, conn: u64, moving: bool },
    /// Broadcast: an agent of the sender reported on its devices (omitted when too long: the heartbeat's refresh
    /// from the database brings it).
    Reach { agent: Uuid, reports: Vec<ReachNotice> },
    /// Broadcast: something the dashboards' live streams show.
    Event { event: HubEvent },
    /// Broadcast: the sender is gone; forget its agents now rather than when its lease runs out.
    Leaving,
}

/// Why a payload was not taken.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum NoticeError {
    #[error("payload of {0} bytes, more than {MAX_PAYLOAD}")]
    TooLarge(usize),
    #[error("undecodable notice: {0}")]
    Undecodable(String),
    #[error("notice version {0}, this instance speaks {MIN_NOTICE}..={MAX_NOTICE}")]
    Version(u16),
}

impl Envelope {
    pub fn new(from: Uuid, notice: Notice) -> Envelope {
        Envelope { v: MAX_NOTICE, from, notice }
    }

    /// The payload, or [`NoticeError::TooLarge`] when it cannot travel as a notification.
    pub fn encode(&self) -> Result<String, NoticeError> {
        let text = serde_json::to_string(self).map_err(|e| NoticeError::Undecodable(e.to_string()))?;
        if text.len() > MAX_PAYLOAD {
            return Err(NoticeError::TooLarge(text.len()));
        }
        Ok(text)
    }

    /// A payload from the database. Its length is checked before parsing; an envelope of another version is refused
    /// after reading only its version (a newer instance may have changed everything else).
    pub fn decode(payload: &str) -> Result<Envelope, NoticeError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(NoticeError::TooLarge(payload.len()));
        }
        #[derive(Deserialize)]
        struct Version {
            v: u16,
        }
        let version: Version = serde_json::from_str(payload).map_err(|e| NoticeError::Undecodable(e.to_string()))?;
        if !(MIN_NOTICE..=MAX_NOTICE).contains(&version.v) {
            return Err(NoticeError::Version(version.v));
        }
        serde_json::from_str(payload).map_err(|e| NoticeError::Undecodable(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let from = Uuid::from_u128(7);
        let e = Envelope::new(
            from,
            Notice::Request {
                id: Uuid::from_u128(1),
                agent: Uuid::from_u128(2),
                device: Uuid::from_u128(3),
                op: Op::Probe,
                timeout_ms: 8000,
            },
        );
        let text = e.encode().expect("fits");
        assert_eq!(Envelope::decode(&text), Ok(e));
        let reply =
            Envelope::new(from, Notice::Reply { id: Uuid::from_u128(1), outcome: Some(Err(CallError::NoAgent)) });
        assert_eq!(Envelope::decode(&reply.encode().expect("fits")), Ok(reply));

        assert!(matches!(Envelope::decode("not json"), Err(NoticeError::Undecodable(_))));
        assert!(matches!(Envelope::decode(r#"{"v":1,"from":"x"}"#), Err(NoticeError::Undecodable(_))));
        assert_eq!(Envelope::decode(r#"{"v":99,"anything":"else"}"#), Err(NoticeError::Version(99)));
        assert_eq!(Envelope::decode(r#"{"v":0}"#), Err(NoticeError::Version(0)));
        let huge = format!(r#"{{"v":1,"pad":"{}"}}"#, "x".repeat(MAX_PAYLOAD));
        assert!(matches!(Envelope::decode(&huge), Err(NoticeError::TooLarge(_))));
        let big = Envelope::new(
            from,
            Notice::Reach {
                agent: from,
                reports: vec![ReachNotice {
                    device_id: from,
                    reachable: true,
                    rtt_us: None,
                    checked_at_ms: 0,
                    error: Some("e".repeat(MAX_PAYLOAD)),
                }],
            },
        );
        assert!(matches!(big.encode(), Err(NoticeError::TooLarge(_))));
    }

    #[test]
    fn channel_names_are_valid_identifiers() {
        let c = channel_of(Uuid::new_v4());
        assert!(c.len() <= 63 && c.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_'));
    }
}
