//! The terminal's state, shared by all sessions: identity, users, the attendance log, the clock, the faults in
//! force, and the realtime punch broadcast.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use essl_zk::attendance::{AttendanceRecord, RecordLayout};
use essl_zk::event::AttendanceEvent;
use essl_zk::user::{User, UserLayout};
use jiff::civil::DateTime;
use jiff::{SignedDuration, Timestamp, tz::TimeZone};
use tokio::sync::broadcast;

use crate::faults::Faults;
use crate::fixture::{DeviceFixture, Fixture, FixtureError, PunchFixture, UserFixture};

/// How the simulated firmware behaves.
#[derive(Debug, Clone)]
pub struct TerminalConfig {
    /// Comm key; 0 = none.
    pub comm_key: u32,
    /// Attendance record layout of this firmware.
    pub record_layout: RecordLayout,
    /// User record layout of this firmware.
    pub user_layout: UserLayout,
    /// Concurrent sessions accepted (TCP and UDP together); further `CMD_CONNECT`s get `CMD_ACK_RETRY`.
    pub max_sessions: usize,
    /// Tables up to this size are answered inline with one `CMD_DATA` (1,016 keeps the datagram within the
    /// 1,024 bytes UDP clients read).
    pub inline_max: usize,
    /// Payload bytes per `CMD_DATA` packet in chunk replies over TCP. The default sends each chunk as one packet,
    /// which every client reads deterministically; 1,008 is what recorded terminals use (pyzk then needs a
    /// `frame_gap` of about 1 ms, as a slow embedded sender gives it).
    pub tcp_packet_size: usize,
    /// Payload bytes per `CMD_DATA` datagram over UDP.
    pub udp_packet_size: usize,
    /// Pause between the frames of a chunk reply over TCP, like a slow embedded sender (pyzk relies on it).
    pub frame_gap: Duration,
    /// Idle time after which a TCP session is dropped.
    pub idle_timeout: Duration,
    /// Attendance capacity reported by `CMD_GET_FREE_SIZES`.
    pub records_cap: i32,
    /// User capacity.
    pub users_cap: i32,
}

impl Default for TerminalConfig {
    fn default() -> Self {
        TerminalConfig {
            comm_key: 0,
            record_layout: RecordLayout::Long40,
            user_layout: UserLayout::Long72,
            max_sessions: 8,
            inline_max: 1016,
            tcp_packet_size: essl_zk::consts::MAX_CHUNK_TCP as usize,
            udp_packet_size: 1024,
            frame_gap: Duration::ZERO,
            idle_timeout: Duration::from_secs(300),
            records_cap: 200_000,
            users_cap: 10_000,
        }
    }
}

/// Counters a test can read to see what clients did.
#[derive(Debug, Default)]
pub struct Stats {
    pub sessions_opened: AtomicU64,
    pub attendance_reads: AtomicU64,
    pub user_reads: AtomicU64,
    pub chunks_served: AtomicU64,
    pub events_sent: AtomicU64,
    pub bad_packets: AtomicU64,
}

/// Snapshot of the [`Stats`] counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    pub sessions_opened: u64,
    pub attendance_reads: u64,
    pub user_reads: u64,
    pub chunks_served: u64,
    pub events_sent: u64,
    pub bad_packets: u64,
}

pub(crate) struct Data {
    pub device: DeviceFixture,
    pub users: Vec<User>,
    pub attendance: Vec<AttendanceRecord>,
    /// Terminal time = host UTC wall time + offset (set by `CMD_SET_TIME`).
    pub clock_offset: SignedDuration,
    pub enabled: bool,
    pub sessions: usize,
}

struct Shared {
    config: TerminalConfig,
    data: Mutex<Data>,
    faults: Mutex<Faults>,
    events: broadcast::Sender<AttendanceEvent>,
    stats: Stats,
    next_session: AtomicU64,
    started: Instant,
}

/// A simulated terminal; cheap to clone, all clones share one state.
#[derive(Clone)]
pub struct Terminal {
    shared: Arc<Shared>,
}

impl Terminal {
    /// A terminal holding `fixture`.
    pub fn new(fixture: &Fixture, config: TerminalConfig) -> Result<Terminal, FixtureError> {
        let users = fixture.protocol_users()?;
        let attendance = fixture.records()?;
        let (events, _) = broadcast::channel(4096);
        Ok(Terminal {
            shared: Arc::new(Shared {
                config,
                data: Mutex::new(Data {
                    device: fixture.device.clone(),
                    users,
                    attendance,
                    clock_offset: SignedDuration::ZERO,
                    enabled: true,
                    sessions: 0,
                }),
                faults: Mutex::new(Faults::default()),
                events,
                stats: Stats::default(),
                next_session: AtomicU64::new(u64::from(std::process::id() as u16 | 1)),
                started: Instant::now(),
            }),
        })
    }

    pub fn config(&self) -> &TerminalConfig {
        &self.shared.config
    }

    pub(crate) fn data(&self) -> MutexGuard<'_, Data> {
        // A panic while holding the lock cannot leave the data half-written in a way that matters to a simulator.
        self.shared.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        self.shared.faults.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Changes the faults in force for every later packet.
    pub fn set_faults(&self, faults: Faults) {
        *self.shared.faults.lock().unwrap_or_else(|e| e.into_inner()) = faults;
    }

    pub(crate) fn stats_ref(&self) -> &Stats {
        &self.shared.stats
    }

    /// What clients did so far.
    pub fn stats(&self) -> StatsSnapshot {
        let s = &self.shared.stats;
        StatsSnapshot {
            sessions_opened: s.sessions_opened.load(Ordering::Relaxed),
            attendance_reads: s.attendance_reads.load(Ordering::Relaxed),
            user_reads: s.user_reads.load(Ordering::Relaxed),
            chunks_served: s.chunks_served.load(Ordering::Relaxed),
            events_sent: s.events_sent.load(Ordering::Relaxed),
            bad_packets: s.bad_packets.load(Ordering::Relaxed),
        }
    }

    /// A fresh non-zero session id.
    pub(crate) fn new_session_id(&self) -> u16 {
        loop {
            let id = self.shared.next_session.fetch_add(1, Ordering::Relaxed) as u16;
            if id != 0 {
                return id;
            }
        }
    }

    /// Seconds since start, for logs.
    pub fn uptime(&self) -> Duration {
        self.shared.started.elapsed()
    }

    /// The terminal's wall-clock time now.
    pub fn now(&self) -> DateTime {
        let offset = self.data().clock_offset;
        self.now_with(offset)
    }

    fn now_with(&self, offset: SignedDuration) -> DateTime {
        let now = Timestamp::now().saturating_add(offset).unwrap_or(Timestamp::now());
        // Terminals keep whole seconds.
        let t = TimeZone::UTC.to_datetime(now);
        t.with().subsec_nanosecond(0).build().unwrap_or(t)
    }

    /// Sets the wall clock (what `CMD_SET_TIME` does).
    pub fn set_now(&self, t: DateTime) {
        let host = TimeZone::UTC.to_datetime(Timestamp::now());
        let offset = host.duration_until(t);
        self.data().clock_offset = offset;
    }

    /// Whether the terminal takes punches: `false` between a client's `CMD_DISABLEDEVICE` and `CMD_ENABLEDEVICE`
    /// (the terminal shows "working..." and ignores keypad, finger and card).
    pub fn is_enabled(&self) -> bool {
        self.data().enabled
    }

    /// A user trying to punch: like [`Terminal::punch`], but a disabled terminal ignores it (`None`), as a real one
    /// does; the user tries again later.
    pub fn try_punch(&self, user_index: usize, status: u8, punch: u8) -> Option<AttendanceRecord> {
        // One lock for the check and the append: a client's CMD_DISABLEDEVICE lands before or after, never between.
        let mut data = self.data();
        if !data.enabled {
            return None;
        }
        Some(self.append_punch(&mut data, user_index, status, punch))
    }

    /// Records a punch as if a user had just put a finger on the sensor: appended to the log and announced to
    /// every session that subscribed to events. Returns the record. Tests' shortcut: it ignores whether the
    /// terminal is disabled (see [`Terminal::try_punch`]).
    pub fn punch(&self, user_index: usize, status: u8, punch: u8) -> AttendanceRecord {
        let mut data = self.data();
        self.append_punch(&mut data, user_index, status, punch)
    }

    fn append_punch(&self, data: &mut Data, user_index: usize, status: u8, punch: u8) -> AttendanceRecord {
        let now = self.now_with(data.clock_offset);
        let (uid, user_id) = match data.users.get(user_index % data.users.len().max(1)) {
            Some(u) => (u.uid, u.user_id.clone()),
            None => (1, "1".to_owned()),
        };
        // Strictly after the newest record of this user, so (user, time) stays unique even at sub-second rates.
        let last = data
            .attendance
            .iter()
            .rev()
            .take(64)
            .filter(|r| r.user_id == user_id)
            .filter_map(|r| r.timestamp.valid())
            .max();
        let timestamp = match last {
            Some(l) if l >= now => l.saturating_add(SignedDuration::from_secs(1)),
            _ => now,
        };
        let record = AttendanceRecord { uid, user_id, timestamp: timestamp.into(), status, punch };
        data.attendance.push(record.clone());
        if !self.faults().no_events {
            let _ =
                self.shared.events.send(AttendanceEvent { user_id: record.user_id.clone(), status, punch, timestamp });
        }
        record
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<AttendanceEvent> {
        self.shared.events.subscribe()
    }

    /// What the terminal holds, in the fixture format.
    pub fn to_fixture(&self) -> Fixture {
        let data = self.data();
        Fixture {
            device: data.device.clone(),
            users: data.users.iter().map(UserFixture::from).collect(),
            attendance: data.attendance.iter().map(PunchFixture::from).collect(),
        }
    }

    /// Number of attendance records held.
    pub fn record_count(&self) -> usize {
        self.data().attendance.len()
    }

    /// Replaces the attendance log (tests: a terminal whose log was replaced).
    pub fn replace_attendance(&self, records: Vec<AttendanceRecord>) {
        self.data().attendance = records;
    }
}
