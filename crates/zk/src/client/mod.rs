//! The async client: one session with one terminal, over TCP or UDP.
//!
//! A session is strictly request/reply: one request in flight, replies matched by reply id, realtime events that
//! arrive in between acknowledged and queued. Every wait has a deadline, so a terminal that stops answering gives a
//! [`ZkError::Timeout`], never a hang.

mod bulk;
mod conn;
mod probe;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use jiff::civil::DateTime;
use tokio::time::Instant;

pub use conn::Transport;
pub use probe::{ProbeConfig, probe};

use crate::attendance::{AttendanceRecord, RecordLayout};
use crate::consts::*;
use crate::error::ZkError;
use crate::event::{AttendanceEvent, decode_attendance_event};
use crate::packet::{Packet, next_reply_id};
use crate::sizes::FreeSizes;
use crate::user::{User, UserLayout};
use crate::{commkey, time};
use conn::Conn;

/// How to talk to a terminal.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub transport: Transport,
    /// Comm key ("password") set on the terminal; 0 means none.
    pub comm_key: u32,
    /// Deadline for connecting and for each reply (each chunk of a bulk read has its own).
    pub timeout: Duration,
    /// How often a failed chunk of a bulk read is requested again (pyzk: 3).
    pub chunk_retries: u32,
    /// Over UDP, how often a request whose reply did not come is sent again (same reply id, so a late reply to
    /// the first copy is as good as one to the second).
    pub udp_retries: u32,
    /// Largest table we accept (the size comes from the terminal).
    pub max_table_bytes: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            transport: Transport::Tcp,
            comm_key: 0,
            timeout: Duration::from_secs(10),
            chunk_retries: 3,
            udp_retries: 2,
            max_table_bytes: 256 * 1024 * 1024,
        }
    }
}

/// Identity of a terminal.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceInfo {
    pub serial_number: String,
    pub device_name: String,
    pub platform: String,
    pub firmware: String,
    pub mac: String,
    pub sizes: FreeSizes,
}

/// Something the terminal announced on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RealtimeEvent {
    Attendance(AttendanceEvent),
    /// Any other event flag, with its raw payload.
    Other {
        flag: u16,
        payload: Vec<u8>,
    },
}

/// Attendance as read, with the layout the terminal used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttendanceRead {
    pub layout: RecordLayout,
    pub records: Vec<AttendanceRecord>,
    /// The user list, when it was read to complete the records of a short layout (callers that want it too need
    /// not read it again).
    pub users: Option<Vec<User>>,
}

/// A connected, authenticated session.
pub struct ZkClient {
    conn: Conn,
    cfg: ClientConfig,
    session_id: u16,
    reply_id: u16,
    events: VecDeque<RealtimeEvent>,
}

impl ZkClient {
    /// Opens a session: `CMD_CONNECT`, then `CMD_AUTH` if the terminal asks for the comm key.
    pub async fn connect(addr: SocketAddr, cfg: ClientConfig) -> Result<ZkClient, ZkError> {
        let conn = Conn::open(addr, cfg.transport, cfg.timeout).await?;
        // reply id 65534 so that the first request (CMD_CONNECT) goes out as 0, like pyzk.
        let mut client = ZkClient { conn, cfg, session_id: 0, reply_id: 65534, events: VecDeque::new() };
        let reply = client.request(CMD_CONNECT, &[]).await?;
        client.session_id = reply.session_id;
        match reply.command {
            CMD_ACK_OK => {}
            CMD_ACK_UNAUTH => {
                let key = commkey::make_commkey(client.cfg.comm_key, client.session_id, commkey::DEFAULT_TICKS);
                let auth = client.request(CMD_AUTH, &key).await?;
                match auth.command {
                    CMD_ACK_OK => {}
                    CMD_ACK_UNAUTH if client.cfg.comm_key == 0 => return Err(ZkError::AuthRequired),
                    CMD_ACK_UNAUTH => return Err(ZkError::AuthFailed),
                    code => return Err(refusal(CMD_AUTH, code)),
                }
            }
            code => return Err(refusal(CMD_CONNECT, code)),
        }
        tracing::debug!(%addr, session = client.session_id, "session opened");
        Ok(client)
    }

    /// The transport of this session.
    pub fn transport(&self) -> Transport {
        self.conn.transport()
    }

    /// The session id the terminal assigned.
    pub fn session_id(&self) -> u16 {
        self.session_id
    }

    /// Sends one command and waits for the packet that answers it.
    pub(crate) async fn request(&mut self, command: u16, payload: &[u8]) -> Result<Packet, ZkError> {
        self.reply_id = next_reply_id(self.reply_id);
        let packet = Packet::new(command, self.session_id, self.reply_id).with_payload(payload);
        let retries = if self.transport() == Transport::Udp { self.cfg.udp_retries } else { 0 };
        let mut attempt = 0;
        loop {
            self.conn.send(&packet).await?;
            let deadline = Instant::now() + self.cfg.timeout;
            match self.recv_reply(deadline).await {
                Err(ZkError::Timeout(_)) if attempt < retries => {
                    attempt += 1;
                    tracing::debug!(command, attempt, "no reply over UDP, sending again");
                }
                other => return other,
            }
        }
    }

    /// The next packet carrying our current reply id; events met on the way are acknowledged and queued.
    pub(crate) async fn recv_reply(&mut self, deadline: Instant) -> Result<Packet, ZkError> {
        loop {
            let p = self.conn.recv(deadline, self.cfg.timeout).await?;
            if p.command == CMD_REG_EVENT {
                self.queue_event(p).await?;
                continue;
            }
            if p.reply_id != self.reply_id {
                tracing::debug!(got = p.reply_id, want = self.reply_id, command = p.command, "skipping stale reply");
                continue;
            }
            return Ok(p);
        }
    }

    async fn queue_event(&mut self, p: Packet) -> Result<(), ZkError> {
        // The acknowledgement carries reply id 0 and leaves our counter alone (§10.3).
        self.conn.send(&Packet::new(CMD_ACK_OK, self.session_id, 0)).await?;
        let event = match p.session_id {
            EF_ATTLOG => match decode_attendance_event(&p.payload) {
                Ok(e) => RealtimeEvent::Attendance(e),
                Err(error) => {
                    tracing::warn!(%error, len = p.payload.len(), "undecodable attendance event");
                    RealtimeEvent::Other { flag: p.session_id, payload: p.payload }
                }
            },
            flag => RealtimeEvent::Other { flag, payload: p.payload },
        };
        // Bounded: a terminal flooding events while we wait for a reply must not grow memory without limit.
        if self.events.len() >= 10_000 {
            self.events.pop_front();
        }
        self.events.push_back(event);
        Ok(())
    }

    /// Sends a command that must be answered with `CMD_ACK_OK`, returning its payload.
    async fn command_ok(&mut self, command: u16, payload: &[u8]) -> Result<Vec<u8>, ZkError> {
        let reply = self.request(command, payload).await?;
        match reply.command {
            CMD_ACK_OK => Ok(reply.payload),
            code => Err(refusal(command, code)),
        }
    }

    /// Reads one option value (`~SerialNumber`, `MAC`, ...); `None` if the terminal does not know the key.
    pub async fn read_option(&mut self, key: &str) -> Result<Option<String>, ZkError> {
        let mut req = key.as_bytes().to_vec();
        req.push(0);
        let reply = self.request(CMD_OPTIONS_RRQ, &req).await?;
        match reply.command {
            CMD_ACK_OK => {
                let text = crate::text::decode(&reply.payload);
                let value = text.split_once('=').map(|(_, v)| v).unwrap_or("");
                Ok(Some(value.replace('=', "").trim().to_owned()))
            }
            CMD_ACK_ERROR => Ok(None),
            code => Err(refusal(CMD_OPTIONS_RRQ, code)),
        }
    }

    /// Firmware version string (`CMD_GET_VERSION`).
    pub async fn firmware_version(&mut self) -> Result<String, ZkError> {
        let payload = self.command_ok(CMD_GET_VERSION, &[]).await?;
        Ok(crate::text::decode(&payload))
    }

    /// Counters and capacities.
    pub async fn read_sizes(&mut self) -> Result<FreeSizes, ZkError> {
        let payload = self.command_ok(CMD_GET_FREE_SIZES, &[]).await?;
        Ok(FreeSizes::decode(&payload)?)
    }

    /// Serial number, name, platform, firmware, MAC and the counters.
    pub async fn device_info(&mut self) -> Result<DeviceInfo, ZkError> {
        let serial_number = self.read_option("~SerialNumber").await?.unwrap_or_default();
        let device_name = self.read_option("~DeviceName").await?.unwrap_or_default();
        let platform = self.read_option("~Platform").await?.unwrap_or_default();
        let mac = self.read_option("MAC").await?.unwrap_or_default();
        let firmware = self.firmware_version().await?;
        let sizes = self.read_sizes().await?;
        Ok(DeviceInfo { serial_number, device_name, platform, firmware, mac, sizes })
    }

    /// The terminal's wall-clock time.
    pub async fn get_time(&mut self) -> Result<DateTime, ZkError> {
        let payload = self.command_ok(CMD_GET_TIME, &[]).await?;
        let Some(b) = payload.get(..4) else {
            return Err(ZkError::Unexpected(format!("time reply of {} bytes", payload.len())));
        };
        Ok(time::decode_packed(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))?)
    }

    /// Sets the terminal's wall-clock time.
    pub async fn set_time(&mut self, t: DateTime) -> Result<(), ZkError> {
        let packed = time::encode_packed(t)?;
        self.command_ok(CMD_SET_TIME, &packed.to_le_bytes()).await?;
        self.command_ok(CMD_REFRESHDATA, &[]).await?;
        Ok(())
    }

    /// Reads all users.
    pub async fn read_users(&mut self) -> Result<(UserLayout, Vec<User>), ZkError> {
        let sizes = self.read_sizes().await?;
        let table = self.read_table(CMD_USERTEMP_RRQ, FCT_USER, &mut |_, _| {}).await?;
        let hint = usize::try_from(sizes.users).ok();
        Ok(crate::user::decode_table(&table, hint)?)
    }

    /// Reads all attendance records. `progress(done, total)` is called as bytes arrive.
    pub async fn read_attendance(
        &mut self,
        progress: &mut (dyn FnMut(usize, usize) + Send),
    ) -> Result<AttendanceRead, ZkError> {
        let sizes = self.read_sizes().await?;
        let table = self.read_table(CMD_ATTLOG_RRQ, 0, progress).await?;
        let hint = usize::try_from(sizes.records).ok();
        let (layout, mut records) = crate::attendance::decode_table(&table, hint)?;
        let mut users = None;
        if !layout.is_complete() && !records.is_empty() {
            // The short layouts name only the uid (8) or only the PIN (16): the user list supplies the other.
            let (_, list) = self.read_users().await?;
            resolve_users(layout, &mut records, &list);
            users = Some(list);
        }
        Ok(AttendanceRead { layout, records, users })
    }

    /// Deletes every attendance record on the terminal. Destructive: callers must have stored them first.
    pub async fn clear_attendance(&mut self) -> Result<(), ZkError> {
        self.command_ok(CMD_CLEAR_ATTLOG, &[]).await?;
        self.command_ok(CMD_REFRESHDATA, &[]).await?;
        Ok(())
    }

    /// Lets the terminal take punches again.
    pub async fn enable_device(&mut self) -> Result<(), ZkError> {
        self.command_ok(CMD_ENABLEDEVICE, &[]).await.map(drop)
    }

    /// Makes the terminal ignore keypad, finger and card ("working...").
    pub async fn disable_device(&mut self) -> Result<(), ZkError> {
        self.command_ok(CMD_DISABLEDEVICE, &[]).await.map(drop)
    }

    /// Restarts the terminal. Some terminals never answer this, so a timeout counts as success.
    pub async fn restart(mut self) -> Result<(), ZkError> {
        self.cfg.timeout = self.cfg.timeout.min(Duration::from_secs(2));
        match self.command_ok(CMD_RESTART, &[]).await {
            Ok(_) | Err(ZkError::Timeout(_) | ZkError::Closed) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Subscribes to realtime attendance events for the rest of the session.
    pub async fn subscribe_attendance(&mut self) -> Result<(), ZkError> {
        self.command_ok(CMD_REG_EVENT, &u32::from(EF_ATTLOG).to_le_bytes()).await.map(drop)
    }

    /// The next realtime event, waiting at most `wait`; `Ok(None)` when none came. Events are acknowledged.
    pub async fn next_event(&mut self, wait: Duration) -> Result<Option<RealtimeEvent>, ZkError> {
        if let Some(e) = self.events.pop_front() {
            return Ok(Some(e));
        }
        let deadline = Instant::now() + wait;
        loop {
            let p = match self.conn.recv(deadline, wait).await {
                Ok(p) => p,
                Err(ZkError::Timeout(_)) => return Ok(None),
                Err(e) => return Err(e),
            };
            if p.command == CMD_REG_EVENT {
                self.queue_event(p).await?;
                return Ok(self.events.pop_front());
            }
            tracing::debug!(command = p.command, "ignoring non-event packet while waiting for events");
        }
    }

    /// Ends the session politely (`CMD_EXIT`).
    pub async fn disconnect(mut self) -> Result<(), ZkError> {
        self.command_ok(CMD_EXIT, &[]).await.map(drop)
    }
}

fn refusal(command: u16, code: u16) -> ZkError {
    match code {
        // After a successful connect, "unauthorised" means the terminal forgot our session (restart, idle expiry).
        CMD_ACK_UNAUTH if command == CMD_CONNECT || command == CMD_AUTH => ZkError::AuthFailed,
        CMD_ACK_UNAUTH => ZkError::SessionLost,
        CMD_ACK_RETRY | CMD_ACK_REPEAT => ZkError::Busy(code),
        code => ZkError::Refused { command, code },
    }
}

fn resolve_users(layout: RecordLayout, records: &mut [AttendanceRecord], users: &[User]) {
    use std::collections::HashMap;
    match layout {
        RecordLayout::Short8 => {
            let by_uid: HashMap<u16, &str> = users.iter().map(|u| (u.uid, u.user_id.as_str())).collect();
            for r in records {
                if let Some(pin) = by_uid.get(&r.uid) {
                    r.user_id = (*pin).to_owned();
                }
            }
        }
        RecordLayout::Medium16 => {
            let by_pin: HashMap<&str, u16> = users.iter().map(|u| (u.user_id.as_str(), u.uid)).collect();
            for r in records {
                if let Some(uid) = by_pin.get(r.user_id.as_str()) {
                    r.uid = *uid;
                }
            }
        }
        RecordLayout::Long40 => {}
    }
}
