//! Push (ADMS / iclock) terminals: the request journal, what each serial reported, the command queue and the
//! per-site secret path segments. Model types and the [`Store`] methods; the SQL is in each backend's `push.rs`.

use std::fmt;
use std::time::Duration;

use jiff::Timestamp;
use uuid::Uuid;

use super::check::{self, StoreError};
use super::{Store, UnknownVariant};

/// A request as it arrived, before anything parsed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJournal {
    /// The `SN` query value if there was one (any case), at most 64 characters.
    pub serial: Option<String>,
    pub method: String,
    pub path: String,
    /// The raw query string.
    pub query: String,
    /// The body, cut at the journal's cap.
    pub body: Vec<u8>,
    /// The body's full length.
    pub body_len: i64,
    pub remote_addr: Option<String>,
    pub received_at: Timestamp,
}

/// A journaled request (`essl_push_journal`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    pub id: i64,
    pub serial: Option<String>,
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Vec<u8>,
    pub body_len: i64,
    pub remote_addr: Option<String>,
    pub received_at: Timestamp,
    /// `received` until the request was handled; then what happened (`ok ...`, `quarantined`, `error ...`).
    pub outcome: String,
}

/// What a serial told us (`essl_push_terminals`), claimed or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushTerminal {
    pub serial: String,
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
    pub last_address: Option<String>,
    /// `pushver` of the handshake.
    pub push_version: Option<String>,
    /// `att` (attendance PUSH, 2.x) or `acc` (security PUSH, 3.x).
    pub dialect: String,
    /// The terminal's UI language code (`language` of the handshake; 83 = Simplified Chinese).
    pub language: Option<String>,
    /// JSON object of what the terminal reported (INFO, options, registry).
    pub info: Option<String>,
    pub attlog_stamp: Option<String>,
    pub operlog_stamp: Option<String>,
    pub registry_code: Option<String>,
    /// The `SessionID` a registered security-PUSH (3.x) terminal was handed, once it was; its requests then carry
    /// `Cookie: token=<md5(registry_code + serial + session_id)>`.
    pub session_id: Option<String>,
}

/// A contact from a serial: upserted into `essl_push_terminals`; `None`s keep what is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushSeen {
    pub serial: String,
    pub at: Timestamp,
    pub address: Option<String>,
    pub push_version: Option<String>,
    pub dialect: Option<String>,
    pub language: Option<String>,
}

/// Which stamp of a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StampTable {
    AttLog,
    OperLog,
}

/// Where a queued command is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandStatus {
    /// Waiting for the terminal's next poll.
    Queued,
    /// Handed to the terminal; re-sent when no result comes in time.
    Sent,
    /// The terminal reported success.
    Ok,
    /// The terminal reported an error code.
    Failed,
    /// Sent too often without a result, or queued too long.
    Expired,
}

impl CommandStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CommandStatus::Queued => "queued",
            CommandStatus::Sent => "sent",
            CommandStatus::Ok => "ok",
            CommandStatus::Failed => "failed",
            CommandStatus::Expired => "expired",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, CommandStatus::Ok | CommandStatus::Failed | CommandStatus::Expired)
    }
}

impl fmt::Display for CommandStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for CommandStatus {
    type Err = UnknownVariant;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "queued" => CommandStatus::Queued,
            "sent" => CommandStatus::Sent,
            "ok" => CommandStatus::Ok,
            "failed" => CommandStatus::Failed,
            "expired" => CommandStatus::Expired,
            _ => return Err(UnknownVariant { what: "command status", value: s.to_owned() }),
        })
    }
}

/// A command of a push device's queue (`essl_push_commands`). `id` is the CmdID on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushCommand {
    pub id: i64,
    pub device_id: Uuid,
    /// What it does, for people: `set_clock`, `reupload`, `info`, `check`, `upsert_user`, `delete_user`.
    pub kind: String,
    /// The command line after `C:<id>:`.
    pub command: String,
    pub status: CommandStatus,
    pub attempts: i32,
    pub created_at: Timestamp,
    pub sent_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    /// The terminal's `Return=`.
    pub return_code: Option<i32>,
    /// What the terminal sent with the result (INFO's key=value lines...), capped.
    pub result: Option<String>,
    pub requested_by: Option<String>,
}

/// How the queue hands out commands at a poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TakePolicy {
    /// A sent command without a result is sent again after this long.
    pub resend_after: Duration,
    /// Sends before a command expires.
    pub max_attempts: i32,
    /// A queued command not sent within this long expires (the terminal never polled).
    pub ttl: Duration,
    /// Commands per poll.
    pub limit: u32,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl TakePolicy {
    pub(crate) fn resend_ms(&self) -> i64 {
        ms(self.resend_after)
    }
    pub(crate) fn ttl_ms(&self) -> i64 {
        ms(self.ttl)
    }
}

fn serial(s: &str) -> Result<(), StoreError> {
    if s.is_empty() || s.len() > 64 {
        return Err(StoreError::Invalid("serial number must be 1 to 64 bytes".into()));
    }
    check::text("serial number", s)
}

impl Store {
    // ---- journal

    /// Journals a request before it is parsed; returns its id.
    #[tracing::instrument(skip_all, fields(serial = ?j.serial, path = %j.path, body_len = j.body_len))]
    pub async fn journal_push(&self, j: &NewJournal) -> Result<i64, StoreError> {
        // Text columns cannot hold NUL on PostgreSQL: a hostile query or serial is kept with NULs escaped.
        let j = NewJournal {
            serial: j.serial.as_deref().map(|s| s.replace('\0', "\\0").chars().take(64).collect()),
            method: j.method.replace('\0', "\\0"),
            path: j.path.replace('\0', "\\0"),
            query: j.query.replace('\0', "\\0"),
            remote_addr: j.remote_addr.clone(),
            body: j.body.clone(),
            body_len: j.body_len,
            received_at: j.received_at,
        };
        dispatch!(self.journal_push(&j))
    }

    /// Records what became of a journaled request.
    #[tracing::instrument(skip_all, fields(journal_id = id))]
    pub async fn set_journal_outcome(&self, id: i64, outcome: &str) -> Result<(), StoreError> {
        let outcome = outcome.replace('\0', "\\0");
        dispatch!(self.set_journal_outcome(id, &outcome))
    }

    /// The latest journaled requests, newest first, of one serial or of all.
    #[tracing::instrument(skip_all, fields(limit))]
    pub async fn list_journal(&self, serial: Option<&str>, limit: u32) -> Result<Vec<JournalEntry>, StoreError> {
        check::opt_text("serial number", serial)?;
        dispatch!(self.list_journal(serial, limit))
    }

    /// Forgets journal entries received before `before`; answers how many.
    #[tracing::instrument(skip_all)]
    pub async fn prune_journal(&self, before: Timestamp) -> Result<u64, StoreError> {
        dispatch!(self.prune_journal(before))
    }

    // ---- terminals

    /// Records a contact from a serial (created on first contact); answers the stored state.
    #[tracing::instrument(skip_all, fields(serial = %seen.serial))]
    pub async fn push_seen(&self, seen: &PushSeen) -> Result<PushTerminal, StoreError> {
        serial(&seen.serial)?;
        check::opt_text("address", seen.address.as_deref())?;
        check::opt_text("push version", seen.push_version.as_deref())?;
        check::opt_text("language", seen.language.as_deref())?;
        if let Some(d) = &seen.dialect
            && d != "att"
            && d != "acc"
        {
            return Err(StoreError::Invalid(format!("unknown dialect {d:?}")));
        }
        dispatch!(self.push_seen(seen))
    }

    #[tracing::instrument(skip_all, fields(serial = %serial))]
    pub async fn get_push_terminal(&self, serial: &str) -> Result<Option<PushTerminal>, StoreError> {
        check::text("serial number", serial)?;
        dispatch!(self.get_push_terminal(serial))
    }

    /// Every serial ever seen, by serial.
    #[tracing::instrument(skip_all)]
    pub async fn list_push_terminals(&self) -> Result<Vec<PushTerminal>, StoreError> {
        dispatch!(self.list_push_terminals())
    }

    /// Stores a stamp the terminal sent, after its upload was committed.
    #[tracing::instrument(skip_all, fields(serial = %serial))]
    pub async fn set_push_stamp(&self, serial: &str, table: StampTable, stamp: &str) -> Result<(), StoreError> {
        check::text("serial number", serial)?;
        check::text("stamp", stamp)?;
        dispatch!(self.set_push_stamp(serial, table, stamp))
    }

    /// Replaces what the terminal reported (a JSON object).
    #[tracing::instrument(skip_all, fields(serial = %serial))]
    pub async fn set_push_info(&self, serial: &str, info: &str) -> Result<(), StoreError> {
        check::text("serial number", serial)?;
        check::text("info", info)?;
        dispatch!(self.set_push_info(serial, info))
    }

    /// Registers a security-PUSH (3.x) terminal: it keeps the registry code it has, else gets `code`; its session
    /// is forgotten, so that each registration is handed a new one. Answers the terminal's registry code.
    /// [`StoreError::NotFound`] for a serial never seen.
    #[tracing::instrument(skip_all, fields(serial = %serial))]
    pub async fn register_push(&self, serial: &str, code: &str) -> Result<String, StoreError> {
        check::text("serial number", serial)?;
        check::text("registry code", code)?;
        dispatch!(self.register_push(serial, code))
    }

    /// The registry code and session of a registered 3.x terminal: the session it was handed, or else `session`,
    /// stored now (two racing requests end with the same one). `None` when the terminal has not registered.
    #[tracing::instrument(skip_all, fields(serial = %serial))]
    pub async fn push_session(&self, serial: &str, session: &str) -> Result<Option<(String, String)>, StoreError> {
        check::text("serial number", serial)?;
        check::text("session id", session)?;
        dispatch!(self.push_session(serial, session))
    }

    /// The device with this serial number, if any.
    #[tracing::instrument(skip_all, fields(serial = %serial))]
    pub async fn device_by_serial(&self, serial: &str) -> Result<Option<super::Device>, StoreError> {
        check::text("serial number", serial)?;
        dispatch!(self.device_by_serial(serial))
    }

    // ---- commands

    /// Appends a command to a device's queue. [`StoreError::NotFound`] if the device does not exist.
    #[tracing::instrument(skip_all, fields(device_id = %device_id, kind = %kind))]
    pub async fn queue_push_command(
        &self,
        device_id: Uuid,
        kind: &str,
        command: &str,
        requested_by: Option<&str>,
    ) -> Result<PushCommand, StoreError> {
        check::text("command kind", kind)?;
        check::text("command", command)?;
        check::opt_text("requested by", requested_by)?;
        dispatch!(self.queue_push_command(device_id, kind, command, requested_by))
    }

    /// The commands to hand to a polling terminal, marked sent (attempt counted), oldest first: queued ones, and
    /// sent ones whose result is overdue. Those sent `max_attempts` times, or queued longer than the TTL, expire.
    #[tracing::instrument(skip_all, fields(device_id = %device_id))]
    pub async fn take_push_commands(
        &self,
        device_id: Uuid,
        policy: &TakePolicy,
    ) -> Result<Vec<PushCommand>, StoreError> {
        dispatch!(self.take_push_commands(device_id, policy))
    }

    /// Records a terminal's result for one of its commands. `None` if the device has no such command, or it is
    /// already final (a repeated result changes nothing).
    #[tracing::instrument(skip_all, fields(device_id = %device_id, command_id = id, status = %status))]
    pub async fn finish_push_command(
        &self,
        device_id: Uuid,
        id: i64,
        status: CommandStatus,
        return_code: Option<i32>,
        result: Option<&str>,
    ) -> Result<Option<PushCommand>, StoreError> {
        check::opt_text("command result", result)?;
        dispatch!(self.finish_push_command(device_id, id, status, return_code, result))
    }

    /// A device's commands, newest first.
    #[tracing::instrument(skip_all, fields(device_id = %device_id, limit))]
    pub async fn list_push_commands(&self, device_id: Uuid, limit: u32) -> Result<Vec<PushCommand>, StoreError> {
        dispatch!(self.list_push_commands(device_id, limit))
    }

    // ---- secrets

    /// Sets (or replaces) a site's push secret, given as its SHA-256.
    #[tracing::instrument(skip_all, fields(site_id = %site_id))]
    pub async fn set_site_push_secret(&self, site_id: Uuid, hash: &[u8]) -> Result<(), StoreError> {
        check::secret_hash(hash)?;
        dispatch!(self.set_site_push_secret(site_id, hash))
    }

    /// The SHA-256 of a site's push secret, if it has one.
    #[tracing::instrument(skip_all, fields(site_id = %site_id))]
    pub async fn site_push_secret(&self, site_id: Uuid) -> Result<Option<Vec<u8>>, StoreError> {
        dispatch!(self.site_push_secret(site_id))
    }

    /// The site whose push secret has this SHA-256.
    #[tracing::instrument(skip_all)]
    pub async fn site_by_push_secret(&self, hash: &[u8]) -> Result<Option<Uuid>, StoreError> {
        dispatch!(self.site_by_push_secret(hash))
    }
}
