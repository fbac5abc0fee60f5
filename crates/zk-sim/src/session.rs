//! One client session: the protocol state machine, independent of the transport. A request goes in, the packets
//! of the reply come out; the transport decides how to deliver them (and which faults to apply).

use std::sync::atomic::Ordering;

use essl_zk::attendance;
use essl_zk::client::Transport;
use essl_zk::commkey::verify_commkey;
use essl_zk::consts::*;
use essl_zk::event::{AttendanceEvent, EventForm, encode_attendance_event};
use essl_zk::packet::Packet;
use essl_zk::sizes::FreeSizes;
use essl_zk::user::{self, UserLayout};

use crate::terminal::Terminal;

/// What to do after a request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Send these packets, in order.
    Reply(Vec<Packet>),
    /// Send these packets, then end the session (`CMD_EXIT`, `CMD_RESTART`).
    ReplyAndClose(Vec<Packet>),
    /// Send nothing (acknowledgements of our events).
    Nothing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Fresh,
    NeedAuth,
    Ready,
}

pub(crate) struct Session {
    terminal: Terminal,
    transport: Transport,
    id: u16,
    state: State,
    /// Table prepared by `CMD_PREPARE_BUFFER`, served by `CMD_READ_BUFFER` until `CMD_FREE_DATA`.
    snapshot: Option<Vec<u8>>,
    event_mask: u32,
    /// Whether this session holds one of the terminal's session slots.
    holds_slot: bool,
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.holds_slot {
            let mut data = self.terminal.data();
            data.sessions = data.sessions.saturating_sub(1);
        }
    }
}

impl Session {
    pub(crate) fn new(terminal: Terminal, transport: Transport) -> Session {
        Session { terminal, transport, id: 0, state: State::Fresh, snapshot: None, event_mask: 0, holds_slot: false }
    }

    /// Whether the client registered for attendance events.
    pub(crate) fn wants_attendance_events(&self) -> bool {
        self.state == State::Ready && self.event_mask & u32::from(EF_ATTLOG) != 0
    }

    /// The event packet announcing `e` to this session.
    pub(crate) fn event_packet(&self, e: &AttendanceEvent) -> Option<Packet> {
        let form = match self.transport {
            Transport::Tcp => EventForm::Text36,
            Transport::Udp => EventForm::Numeric12,
        };
        let payload = encode_attendance_event(form, e).ok()?;
        Some(Packet::new(CMD_REG_EVENT, EF_ATTLOG, 0).with_payload(payload))
    }

    fn reply(&self, req: &Packet, code: u16, payload: impl Into<Vec<u8>>) -> Outcome {
        Outcome::Reply(vec![self.packet(req, code, payload)])
    }

    fn packet(&self, req: &Packet, code: u16, payload: impl Into<Vec<u8>>) -> Packet {
        Packet::new(code, self.id, req.reply_id).with_payload(payload)
    }

    pub(crate) fn handle(&mut self, req: &Packet) -> Outcome {
        match (self.state, req.command) {
            (_, CMD_CONNECT) => self.connect(req),
            // Our own events are acknowledged with CMD_ACK_OK; acknowledgements get no answer.
            (_, CMD_ACK_OK) => Outcome::Nothing,
            (State::Fresh, _) => self.reply(req, CMD_ACK_UNAUTH, []),
            (State::NeedAuth, CMD_AUTH) => {
                if verify_commkey(&req.payload, self.terminal.config().comm_key, self.id) {
                    self.state = State::Ready;
                    self.reply(req, CMD_ACK_OK, [])
                } else {
                    tracing::info!(session = self.id, "wrong comm key");
                    self.reply(req, CMD_ACK_UNAUTH, [])
                }
            }
            (State::NeedAuth, CMD_EXIT) => Outcome::ReplyAndClose(vec![self.packet(req, CMD_ACK_OK, [])]),
            (State::NeedAuth, _) => self.reply(req, CMD_ACK_UNAUTH, []),
            (State::Ready, _) => self.command(req),
        }
    }

    fn connect(&mut self, req: &Packet) -> Outcome {
        if self.state == State::Fresh {
            let mut data = self.terminal.data();
            if data.sessions >= self.terminal.config().max_sessions {
                drop(data);
                tracing::info!("session limit reached, refusing CMD_CONNECT");
                return Outcome::ReplyAndClose(vec![Packet::new(CMD_ACK_RETRY, 0, req.reply_id)]);
            }
            data.sessions += 1;
            drop(data);
            self.holds_slot = true;
            self.id = self.terminal.new_session_id();
            self.terminal.stats_ref().sessions_opened.fetch_add(1, Ordering::Relaxed);
            self.state = if self.terminal.config().comm_key == 0 { State::Ready } else { State::NeedAuth };
        }
        // A second connect on the same session keeps its id (ADRO).
        let code = if self.state == State::NeedAuth { CMD_ACK_UNAUTH } else { CMD_ACK_OK };
        self.reply(req, code, [])
    }

    fn command(&mut self, req: &Packet) -> Outcome {
        let p = &req.payload;
        match req.command {
            CMD_EXIT => Outcome::ReplyAndClose(vec![self.packet(req, CMD_ACK_OK, [])]),
            CMD_RESTART | CMD_POWEROFF => Outcome::ReplyAndClose(vec![self.packet(req, CMD_ACK_OK, [])]),
            CMD_AUTH | CMD_REFRESHDATA | CMD_REFRESHOPTION | CMD_STARTVERIFY | CMD_CANCELCAPTURE | CMD_OPTIONS_WRQ => {
                self.reply(req, CMD_ACK_OK, [])
            }
            CMD_ENABLEDEVICE | CMD_DISABLEDEVICE => {
                self.terminal.data().enabled = req.command == CMD_ENABLEDEVICE;
                self.reply(req, CMD_ACK_OK, [])
            }
            CMD_GET_VERSION => {
                let mut v = self.terminal.data().device.firmware.clone().into_bytes();
                v.push(0);
                self.reply(req, CMD_ACK_OK, v)
            }
            CMD_OPTIONS_RRQ => {
                let key = essl_zk::text::decode(p);
                match self.option(&key) {
                    Some(value) => self.reply(req, CMD_ACK_OK, format!("{key}={value}\0").into_bytes()),
                    None => self.reply(req, CMD_ACK_ERROR, []),
                }
            }
            CMD_GET_FREE_SIZES => self.reply(req, CMD_ACK_OK, self.sizes().encode()),
            CMD_GET_PINWIDTH => self.reply(req, CMD_ACK_OK, [9, 0]),
            CMD_GET_TIME => match essl_zk::time::encode_packed(self.terminal.now()) {
                Ok(t) => self.reply(req, CMD_ACK_OK, t.to_le_bytes()),
                Err(_) => self.reply(req, CMD_ACK_ERROR, []),
            },
            CMD_SET_TIME => match p.get(..4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])) {
                Some(v) => match essl_zk::time::decode_packed(v) {
                    Ok(t) => {
                        self.terminal.set_now(t);
                        self.reply(req, CMD_ACK_OK, [])
                    }
                    Err(_) => self.reply(req, CMD_ACK_ERROR, []),
                },
                None => self.reply(req, CMD_ACK_ERROR, []),
            },
            CMD_REG_EVENT => {
                self.event_mask = p.get(..4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).unwrap_or(0);
                self.reply(req, CMD_ACK_OK, [])
            }
            CMD_PREPARE_BUFFER => self.prepare_buffer(req),
            CMD_READ_BUFFER => self.read_buffer(req),
            CMD_FREE_DATA => {
                self.snapshot = None;
                self.reply(req, CMD_ACK_OK, [])
            }
            CMD_CLEAR_ATTLOG => {
                self.terminal.data().attendance.clear();
                self.reply(req, CMD_ACK_OK, [])
            }
            CMD_CLEAR_DATA => {
                let mut data = self.terminal.data();
                match p.first() {
                    Some(1) => data.attendance.clear(),
                    Some(5) => data.users.clear(),
                    Some(_) => {}
                    None => {
                        data.attendance.clear();
                        data.users.clear();
                    }
                }
                drop(data);
                self.reply(req, CMD_ACK_OK, [])
            }
            CMD_USER_WRQ => self.write_user(req),
            CMD_DELETE_USER => match p.get(..2) {
                Some(b) => {
                    let uid = u16::from_le_bytes([b[0], b[1]]);
                    self.terminal.data().users.retain(|u| u.uid != uid);
                    self.reply(req, CMD_ACK_OK, [])
                }
                None => self.reply(req, CMD_ACK_ERROR, []),
            },
            // Legacy unbuffered reads (PHP zklib): the table streamed as PREPARE_DATA, DATA..., ACK_OK.
            CMD_ATTLOG_RRQ => match self.table(CMD_ATTLOG_RRQ, 0) {
                Some(table) => Outcome::Reply(self.stream(req, &table, table.len())),
                None => self.reply(req, CMD_ACK_ERROR, []),
            },
            CMD_USERTEMP_RRQ if p.is_empty() => match self.table(CMD_USERTEMP_RRQ, FCT_USER) {
                Some(table) => Outcome::Reply(self.stream(req, &table, table.len())),
                None => self.reply(req, CMD_ACK_ERROR, []),
            },
            CMD_USERTEMP_RRQ => self.reply(req, CMD_ACK_ERROR, []), // no templates enrolled
            _ => self.reply(req, CMD_ACK_UNKNOWN, []),
        }
    }

    fn option(&self, key: &str) -> Option<String> {
        let data = self.terminal.data();
        let d = &data.device;
        Some(match key {
            "~SerialNumber" => d.serial_number.clone(),
            "~DeviceName" => d.device_name.clone(),
            "~Platform" => d.platform.clone(),
            "MAC" => d.mac.clone(),
            "~ZKFPVersion" => "10".into(),
            "~OS" => "1".into(),
            "~ExtendFmt" | "~UserExtFmt" | "FaceFunOn" | "CompatOldFirmware" | "WorkCode" => "0".into(),
            "IPAddress" => "127.0.0.1".into(),
            "NetMask" => "255.255.255.0".into(),
            "GATEIPAddress" => "0.0.0.0".into(),
            "~OEMVendor" => "ZKTeco Inc.".into(),
            "~ProductTime" => "2016-04-26 10:00:00".into(),
            "~PIN2Width" => "9".into(),
            "~IsOnlyRFMachine" => "0".into(),
            "~RFCardOn" => "1".into(),
            _ => return None,
        })
    }

    fn sizes(&self) -> FreeSizes {
        let cfg = self.terminal.config();
        let data = self.terminal.data();
        let users = data.users.len() as i32;
        let records = data.attendance.len() as i32;
        let admins = data.users.iter().filter(|u| u.privilege & 0x0E == 0x0E).count() as i32;
        let passwords = data.users.iter().filter(|u| !u.password.is_empty()).count() as i32;
        FreeSizes {
            users,
            fingers: 0,
            records,
            oplogs: 0,
            admins,
            passwords,
            fingers_cap: 3000,
            users_cap: cfg.users_cap,
            records_cap: cfg.records_cap,
            fingers_av: 3000,
            users_av: cfg.users_cap - users,
            records_av: cfg.records_cap - records,
            faces: Some(0),
            faces_cap: Some(0),
        }
    }

    /// The bytes of a table, or `None` if the terminal has no such table.
    fn table(&self, command: u16, function: i32) -> Option<Vec<u8>> {
        let cfg = self.terminal.config();
        let stats = self.terminal.stats_ref();
        match (command, function) {
            (CMD_ATTLOG_RRQ, _) => {
                stats.attendance_reads.fetch_add(1, Ordering::Relaxed);
                let data = self.terminal.data();
                attendance::encode_table(cfg.record_layout, &data.attendance).ok()
            }
            (CMD_USERTEMP_RRQ, FCT_USER) => {
                stats.user_reads.fetch_add(1, Ordering::Relaxed);
                Some(user::encode_table(cfg.user_layout, &self.terminal.data().users))
            }
            // No fingerprint templates and no operation log are simulated: empty tables.
            (CMD_DB_RRQ, _) | (CMD_OPLOG_RRQ, _) => Some(vec![0, 0, 0, 0]),
            _ => None,
        }
    }

    fn prepare_buffer(&mut self, req: &Packet) -> Outcome {
        let p = &req.payload;
        if p.len() < 7 {
            return self.reply(req, CMD_ACK_ERROR, []);
        }
        let command = u16::from_le_bytes([p[1], p[2]]);
        let function = i32::from_le_bytes([p[3], p[4], p[5], p[6]]);
        let Some(table) = self.table(command, function) else {
            return self.reply(req, CMD_ACK_ERROR, []);
        };
        if table.len() <= self.terminal.config().inline_max {
            return self.reply(req, CMD_DATA, table);
        }
        let size = (table.len() as u32).to_le_bytes();
        let sum = table.iter().fold(0u32, |a, &b| a.wrapping_add(u32::from(b))).to_le_bytes();
        let mut stat = vec![0];
        stat.extend_from_slice(&size);
        stat.extend_from_slice(&size);
        stat.extend_from_slice(&sum);
        self.snapshot = Some(table);
        self.reply(req, CMD_ACK_OK, stat)
    }

    fn read_buffer(&mut self, req: &Packet) -> Outcome {
        let p = &req.payload;
        let (Some(table), Some(b)) = (self.snapshot.as_ref(), p.get(..8)) else {
            return self.reply(req, CMD_ACK_ERROR, []);
        };
        let start = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let len = i32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        let (Ok(start), Ok(len)) = (usize::try_from(start), usize::try_from(len)) else {
            return self.reply(req, CMD_ACK_ERROR, []);
        };
        let Some(chunk) = start.checked_add(len).and_then(|end| table.get(start..end)) else {
            return self.reply(req, CMD_ACK_ERROR, []);
        };
        self.terminal.stats_ref().chunks_served.fetch_add(1, Ordering::Relaxed);
        Outcome::Reply(self.stream(req, chunk, len))
    }

    /// `PREPARE_DATA(len, packet size)`, the data in packets whose session field counts 0, 1, 2, ..., then `ACK_OK`
    /// carrying the last counter, as in the recordings (zk-protocol.md §6.4).
    fn stream(&self, req: &Packet, chunk: &[u8], len: usize) -> Vec<Packet> {
        let size = match self.transport {
            Transport::Tcp => self.terminal.config().tcp_packet_size,
            Transport::Udp => self.terminal.config().udp_packet_size,
        }
        .max(1);
        let mut prepare = (len as u32).to_le_bytes().to_vec();
        prepare.extend_from_slice(&(size as u32).to_le_bytes());
        let mut out = Vec::with_capacity(2 + chunk.len() / size + 1);
        out.push(self.packet(req, CMD_PREPARE_DATA, prepare));
        let mut counter: u16 = 0;
        for (i, piece) in chunk.chunks(size).enumerate() {
            counter = i as u16;
            out.push(Packet::new(CMD_DATA, counter, req.reply_id).with_payload(piece));
        }
        out.push(Packet::new(CMD_ACK_OK, counter, req.reply_id));
        out
    }

    fn write_user(&mut self, req: &Packet) -> Outcome {
        let layout = match req.payload.len() {
            72 => UserLayout::Long72,
            28 => UserLayout::Short28,
            _ => return self.reply(req, CMD_ACK_ERROR, []),
        };
        let Ok(u) = user::decode_record(layout, &req.payload) else {
            return self.reply(req, CMD_ACK_ERROR, []);
        };
        let mut data = self.terminal.data();
        match data.users.iter_mut().find(|x| x.uid == u.uid) {
            Some(existing) => *existing = u,
            None => data.users.push(u),
        }
        drop(data);
        self.reply(req, CMD_ACK_OK, [])
    }
}
