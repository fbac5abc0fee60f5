//! Typed errors. Callers branch on [`ZkError::kind`] to tell an unreachable terminal from a wrong comm key,
//! a busy terminal or a terminal that speaks something we do not understand.

use std::time::Duration;

/// What went wrong while decoding bytes that came from the wire. Pure data: no I/O involved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("packet too short: {len} bytes, need at least {need}")]
    Short { len: usize, need: usize },
    #[error("checksum mismatch: packet says {found:#06x}, computed {computed:#06x}")]
    Checksum { found: u16, computed: u16 },
    #[error("bad TCP frame magic {0:02x?}")]
    BadMagic([u8; 4]),
    #[error("TCP frame announces {len} bytes, more than the limit of {max}")]
    FrameTooLarge { len: usize, max: usize },
    #[error("TCP frame announces {0} bytes, less than a ZK header")]
    FrameTooSmall(usize),
    #[error("impossible packed time {0:#010x}")]
    BadTime(u32),
    #[error("impossible date/time in event bytes {0:02x?}")]
    BadEventTime([u8; 6]),
    #[error("time {0} is outside 2000-01-01..2099-12-31 that terminals can store")]
    TimeOutOfRange(String),
    #[error("{what}: table says {declared} bytes but {actual} are present")]
    SizeMismatch { what: &'static str, declared: usize, actual: usize },
    #[error("{what}: {len} bytes of records fit no known record size (count hint {hint:?})")]
    UnknownRecordSize { what: &'static str, len: usize, hint: Option<usize> },
    #[error("{what}: record is {len} bytes, expected {expected}")]
    RecordLength { what: &'static str, len: usize, expected: usize },
    #[error("unsupported event payload length {0}")]
    EventLength(usize),
    #[error("malformed reply: {0}")]
    Malformed(&'static str),
}

/// Coarse classes of failure, for callers that decide what to do next (retry elsewhere, ask for a key, report).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Nothing answered: connection refused, no route, or no reply within the timeout.
    Unreachable,
    /// The terminal answered but refused the comm key.
    AuthFailed,
    /// The terminal answered but is busy (retry later).
    Busy,
    /// The terminal sent something that breaks the protocol, or refused a command.
    Protocol,
}

/// Every error of the client.
#[derive(Debug, thiserror::Error)]
pub enum ZkError {
    #[error("connecting to {addr} failed: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("connection closed by the terminal")]
    Closed,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("the terminal refused the comm key")]
    AuthFailed,
    #[error("the terminal requires a comm key and none was configured")]
    AuthRequired,
    #[error("the terminal no longer knows this session; reconnect")]
    SessionLost,
    #[error("the terminal is busy (reply code {0})")]
    Busy(u16),
    #[error("the terminal answered {code} to command {command}")]
    Refused { command: u16, code: u16 },
    #[error("protocol violation: {0}")]
    Codec(#[from] CodecError),
    #[error("protocol violation: {0}")]
    Unexpected(String),
}

impl ZkError {
    /// The class of this failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ZkError::Connect { .. } | ZkError::Timeout(_) | ZkError::Closed | ZkError::Io(_) | ZkError::SessionLost => {
                ErrorKind::Unreachable
            }
            ZkError::AuthFailed | ZkError::AuthRequired => ErrorKind::AuthFailed,
            ZkError::Busy(_) => ErrorKind::Busy,
            ZkError::Refused { .. } | ZkError::Codec(_) | ZkError::Unexpected(_) => ErrorKind::Protocol,
        }
    }
}
