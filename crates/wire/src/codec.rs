//! MessagePack with field names (so fields can be added without breaking older peers), size-bounded.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{AgentMsg, MAX_MESSAGE_BYTES, ServerMsg};

/// A message that could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("message of {0} bytes exceeds the limit of {MAX_MESSAGE_BYTES}")]
    TooLarge(usize),
    #[error("undecodable message: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("unencodable message: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
}

fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, WireError> {
    let bytes = rmp_serde::to_vec_named(msg)?;
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(WireError::TooLarge(bytes.len()));
    }
    Ok(bytes)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(WireError::TooLarge(bytes.len()));
    }
    // Nesting in our messages is shallow; the default depth limit of rmp-serde (1024) guards recursion.
    Ok(rmp_serde::from_slice(bytes)?)
}

/// Encodes an agent message.
pub fn encode_agent(msg: &AgentMsg) -> Result<Vec<u8>, WireError> {
    encode(msg)
}

/// Encodes a server message.
pub fn encode_server(msg: &ServerMsg) -> Result<Vec<u8>, WireError> {
    encode(msg)
}

/// Decodes an agent message.
pub fn decode_agent(bytes: &[u8]) -> Result<AgentMsg, WireError> {
    decode(bytes)
}

/// Decodes a server message.
pub fn decode_server(bytes: &[u8]) -> Result<ServerMsg, WireError> {
    decode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;

    #[test]
    fn hello_round_trips_and_unknown_kinds_fail() {
        let hello = AgentMsg::Hello {
            min_protocol: 1,
            max_protocol: 1,
            agent_version: "0.1.0".into(),
            hostname: "front-desk".into(),
            os: "linux".into(),
        };
        let bytes = encode_agent(&hello).expect("encodes");
        assert_eq!(decode_agent(&bytes).expect("decodes"), hello);
        // A server message is not an agent message.
        let ack = encode_server(&ServerMsg::Ack { batch: 1 }).expect("encodes");
        assert!(decode_agent(&ack).is_err());
        assert!(decode_agent(&[0xc1]).is_err());
        assert!(decode_agent(&vec![0; MAX_MESSAGE_BYTES + 1]).is_err());
    }

    /// `Synced` gained optional fields: what an older agent sends still decodes, and an older server (which knows
    /// only the first two fields) still decodes what a newer agent sends.
    #[test]
    fn synced_fields_are_backward_compatible() {
        #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
        enum OldResult {
            Synced { records: u64, batches: u64 },
        }
        let old = rmp_serde::to_vec_named(&OldResult::Synced { records: 5, batches: 1 }).expect("encodes");
        let new: OpResult = rmp_serde::from_slice(&old).expect("decodes");
        assert_eq!(new, OpResult::Synced { records: 5, batches: 1, read: None, reset: None });
        let full = OpResult::Synced { records: 0, batches: 0, read: Some(100_000), reset: Some("cleared".into()) };
        let bytes = rmp_serde::to_vec_named(&full).expect("encodes");
        let seen_by_old: OldResult = rmp_serde::from_slice(&bytes).expect("an old server decodes it");
        assert_eq!(seen_by_old, OldResult::Synced { records: 0, batches: 0 });
    }

    /// `Punch.raw_time` is new: punches of older agents (and of the outbox they left) still decode, a valid punch
    /// is encoded exactly as before, and an older server decodes an invalid-time punch (storing its placeholder).
    #[test]
    fn punch_raw_time_is_backward_compatible() {
        #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
        struct OldPunch {
            uid: u16,
            user_id: String,
            local_time: String,
            status: u8,
            punch: u8,
        }
        let old =
            OldPunch { uid: 1, user_id: "7".into(), local_time: "2025-11-24T09:01:02".into(), status: 1, punch: 0 };
        let old_bytes = rmp_serde::to_vec_named(&old).expect("encodes");
        let new: Punch = rmp_serde::from_slice(&old_bytes).expect("decodes");
        assert_eq!(new.raw_time, None);
        assert_eq!(rmp_serde::to_vec_named(&new).expect("encodes"), old_bytes, "a valid punch is encoded as before");
        let corrupt =
            Punch { raw_time: Some(583_804_800), local_time: crate::invalid_time_placeholder(583_804_800), ..new };
        let seen_by_old: OldPunch = rmp_serde::from_slice(&rmp_serde::to_vec_named(&corrupt).expect("encodes"))
            .expect("an old server decodes it");
        assert_eq!(seen_by_old.local_time, "1018-07-03T00:00:00");
        let json: Punch = serde_json::from_str(r#"{"uid":1,"user_id":"7","local_time":"x","status":1,"punch":0}"#)
            .expect("an outbox row written before raw_time reads back");
        assert_eq!(json.raw_time, None);
    }

    /// `Reachability.outbox` is new: an older agent's report still decodes, and an older server decodes a newer
    /// agent's report (ignoring the fill).
    #[test]
    fn reachability_outbox_is_backward_compatible() {
        #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
        enum OldAgentMsg {
            Reachability { reports: Vec<Reach> },
        }
        let reports = vec![Reach {
            device: "d".into(),
            reachable: true,
            rtt_us: Some(150),
            checked_at_ms: 1_700_000_000_000,
            error: None,
        }];
        let old = rmp_serde::to_vec_named(&OldAgentMsg::Reachability { reports: reports.clone() }).expect("encodes");
        assert_eq!(
            decode_agent(&old).expect("decodes"),
            AgentMsg::Reachability { reports: reports.clone(), outbox: None }
        );
        let fill = OutboxFill { bytes: 900_000, limit_bytes: 1 << 20, pending_records: 8_000, pending_batches: 2 };
        let new =
            encode_agent(&AgentMsg::Reachability { reports: reports.clone(), outbox: Some(fill) }).expect("encodes");
        let seen_by_old: OldAgentMsg = rmp_serde::from_slice(&new).expect("an old server decodes it");
        assert_eq!(seen_by_old, OldAgentMsg::Reachability { reports });
    }

    /// `Punches.users` is new: an older agent's batch still decodes (no list), a batch without a list is encoded
    /// exactly as before, and an older server decodes a batch with a list (ignoring it).
    #[test]
    fn punches_users_are_backward_compatible() {
        #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
        enum OldAgentMsg {
            Punches { batch: u64, device: String, request: Option<u64>, records: Vec<Punch> },
        }
        let old = OldAgentMsg::Punches { batch: 3, device: "d".into(), request: Some(9), records: Vec::new() };
        let old_bytes = rmp_serde::to_vec_named(&old).expect("encodes");
        let new = decode_agent(&old_bytes).expect("decodes");
        let plain =
            AgentMsg::Punches { batch: 3, device: "d".into(), request: Some(9), records: Vec::new(), users: None };
        assert_eq!(new, plain);
        assert_eq!(encode_agent(&plain).expect("encodes"), old_bytes, "a batch without a list is encoded as before");
        let user = DeviceUser {
            uid: 1,
            user_id: "1001".into(),
            name: "Anjali".into(),
            privilege: 0,
            card: 0,
            group_id: "1".into(),
        };
        let with_list = AgentMsg::Punches {
            batch: 3,
            device: "d".into(),
            request: Some(9),
            records: Vec::new(),
            users: Some(vec![user]),
        };
        let seen_by_old: OldAgentMsg =
            rmp_serde::from_slice(&encode_agent(&with_list).expect("encodes")).expect("an old server decodes it");
        assert_eq!(seen_by_old, old);
    }

    #[test]
    fn negotiation() {
        assert_eq!(negotiate(1, 1), Some(1), "an agent of protocol 1 is still served");
        assert_eq!(negotiate(1, 2), Some(2));
        assert_eq!(negotiate(1, 9), Some(PROTOCOL_VERSION));
        assert_eq!(negotiate(PROTOCOL_VERSION + 1, PROTOCOL_VERSION + 3), None);
        assert_eq!(negotiate(0, 0), None);
    }
}
