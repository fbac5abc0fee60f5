//! The message types. Ids of devices, agents and sites are UUIDs in text form; times are Unix milliseconds;
//! a terminal's own wall-clock time travels as `YYYY-MM-DDTHH:MM:SS` text (no zone).

use serde::{Deserialize, Serialize};

/// Agent to server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentMsg {
    /// First message: who is speaking and which protocol versions it understands.
    Hello { min_protocol: u16, max_protocol: u16, agent_version: String, hostname: String, os: String },
    /// The outcome of one request.
    Response { id: u64, outcome: Outcome },
    /// Progress of a long request (bytes or records done of total).
    Progress { id: u64, done: u64, total: u64 },
    /// Probe results for the site's devices, sent every probe interval: the agent's heartbeat. `outbox` is the
    /// fill of its outbox (optional: older agents leave it out, older servers ignore it).
    Reachability {
        reports: Vec<Reach>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        outbox: Option<OutboxFill>,
    },
    /// Attendance records of one device, to be stored and then acknowledged with `Ack { batch }`.
    ///
    /// `users` (optional, at most [`crate::MAX_USERS_PER_BATCH`]): the terminal's whole list of enrolled users,
    /// read in the same terminal session as the records that follow it, sent when it changed. The server replaces
    /// the device's user list with it before storing `records` (usually none), so the punches after it are
    /// flagged against the users the terminal really has. Older servers ignore it.
    Punches {
        batch: u64,
        device: String,
        request: Option<u64>,
        records: Vec<Punch>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        users: Option<Vec<DeviceUser>>,
    },
    /// Protocol 2, during `ClearAttendance` request `id`: the terminal is held and every record on it is
    /// acknowledged; does the server's database hold them? Answered with [`ServerMsg::Stored`]; the agent clears
    /// the terminal only on `confirmed: true`.
    ConfirmStored {
        id: u64,
        /// Records on the terminal.
        records: u64,
        /// Of those, distinct (local time, user id) pairs: the server's unique key, so the most rows it can hold.
        keys: u64,
        /// The earliest and latest `local_time` among them (placeholders of invalid times included); `None` for
        /// an empty log.
        first_local_time: Option<String>,
        last_local_time: Option<String>,
    },
}

/// Server to agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerMsg {
    /// Accepted: the version chosen, who the agent is, and the devices of its site.
    Welcome { protocol: u16, agent_id: String, site: String, devices: Vec<DeviceSpec>, probe_interval_ms: u64 },
    /// Device work to do.
    Request { id: u64, device: String, op: Op },
    /// The requester gave up; stop working on `id` if possible.
    Cancel { id: u64 },
    /// The site's device list changed.
    DevicesChanged { devices: Vec<DeviceSpec> },
    /// The batch is committed to the database; the agent may forget it.
    Ack { batch: u64 },
    /// Protocol 2: the answer to [`AgentMsg::ConfirmStored`] for request `id`; `reason` says why not.
    Stored { id: u64, confirmed: bool, reason: Option<String> },
    /// The batch could not be stored (nothing of it was committed): the agent keeps it and sends it again after a
    /// short delay. Protocol 2 and later; a server never sends it on a protocol 1 connection.
    Nack { batch: u64, error: String },
}

/// How to reach one terminal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSpec {
    pub id: String,
    pub name: String,
    /// `host:port` on the office LAN.
    pub addr: String,
    pub udp: bool,
    /// 0 = none.
    pub comm_key: u32,
}

/// Device work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Open and close a session, report the time it took.
    Probe,
    /// Read all attendance and send it as `Punches` batches before the response.
    SyncAttendance,
    /// Read the enrolled users.
    ReadUsers,
    /// Identity and counters.
    DeviceInfo,
    /// Read the terminal's clock.
    GetTime,
    /// Set the terminal's clock (its local wall-clock time).
    SetTime { local_time: String },
    /// Protocol 2: delete every attendance record on the terminal, only if every one of them is stored. The agent
    /// holds the terminal (disabled: it takes no punches), reads its log, makes sure every record is acknowledged
    /// (with `sync_first`, sending what is not and waiting for the acks; without, refusing at once), asks the server
    /// to confirm (`ConfirmStored` / `Stored`), clears, and always enables the terminal again. Answered with
    /// `OpResult::Cleared` or `ErrorKind::NotConfirmed`. Servers send it only to agents that speak protocol 2.
    ClearAttendance { sync_first: bool },
}

/// Result of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Ok(OpResult),
    Err(OpError),
}

/// What a successful request returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    Probe {
        rtt_us: u64,
    },
    Synced {
        /// Records sent in `Punches` batches for this request.
        records: u64,
        batches: u64,
        /// Records on the terminal; more than `records` when the agent sent only what was past its watermark.
        /// Agents before the outbox do not send it (then `records` is both).
        #[serde(default)]
        read: Option<u64>,
        /// Why every record was sent again although the agent had a watermark (log cleared, terminal replaced).
        #[serde(default)]
        reset: Option<String>,
    },
    Users {
        users: Vec<DeviceUser>,
    },
    Info(DeviceInfo),
    Time {
        local_time: String,
    },
    Done,
    /// Protocol 2: the terminal's log is cleared; it held `records`, every one of them stored.
    Cleared {
        records: u64,
    },
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpError {
    pub kind: ErrorKind,
    pub message: String,
}

/// Failure classes; `Unreachable` is what makes the server try the next agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorKind {
    Unreachable,
    AuthFailed,
    Busy,
    Protocol,
    UnknownDevice,
    Cancelled,
    Internal,
    /// Protocol 2: a `ClearAttendance` refused because not every record on the terminal is confirmed stored; the
    /// message says why. Nothing was cleared.
    NotConfirmed,
}

/// One attendance record as the terminal stores it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Punch {
    pub uid: u16,
    pub user_id: String,
    /// Terminal wall-clock time, `YYYY-MM-DDTHH:MM:SS`; for a record whose time field is no date, the placeholder
    /// [`crate::invalid_time_placeholder`] of `raw_time`.
    pub local_time: String,
    pub status: u8,
    pub punch: u8,
    /// Set only when the terminal's time field is no date (a corrupt record): the packed u32 as stored. Such a
    /// punch is sent, never dropped; `local_time` then holds the placeholder, so a server that does not know this
    /// field still stores it once (as a time before 2000, which no terminal can hold). Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_time: Option<u32>,
}

/// One enrolled user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceUser {
    pub uid: u16,
    pub user_id: String,
    pub name: String,
    pub privilege: u8,
    pub card: u32,
    pub group_id: String,
}

/// Identity and counters of a terminal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub serial_number: String,
    pub device_name: String,
    pub platform: String,
    pub firmware: String,
    pub mac: String,
    pub users: i64,
    pub records: i64,
    pub fingerprints: i64,
}

/// How full the agent's outbox is: what it holds that the server has not acknowledged, against its bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxFill {
    /// Bytes the outbox file uses.
    pub bytes: u64,
    /// Its bound (`outbox_max_mb`): at or above it, new terminal reads are refused (queued ones are kept).
    pub limit_bytes: u64,
    /// Records queued, not yet acknowledged by the server.
    pub pending_records: u64,
    /// Batches queued.
    pub pending_batches: u64,
}

/// One probe result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reach {
    pub device: String,
    pub reachable: bool,
    pub rtt_us: Option<u64>,
    pub checked_at_ms: i64,
    pub error: Option<String>,
}
