//! Push mode: the simulated terminal calls an ADMS (iclock) server over HTTP, as terminals set to "Cloud Server"
//! do (`shared/protocol/adms-push.md`): handshake, backlog upload in batches, realtime punches, polling every
//! `Delay` seconds, queued commands executed against its own data, results posted back, each batch sent again
//! until the server answers exactly `OK:<n>`. Switches reproduce the pitfalls of real firmware.
//!
//! In the security dialect (3.x) the terminal keeps the `RegistryCode` and `SessionID` the server hands it and,
//! once it holds both, sends `Cookie: token=<md5(RegistryCode + serial + SessionID), lowercase hex>` with every
//! request (notes §4.3 step 4).

pub mod http;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use jiff::civil::DateTime;
use jiff::{SignedDuration, Timestamp};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::fixture::{Fixture, PunchFixture, UserFixture, format_time, parse_time};
use crate::rng::Rng;

/// Which protocol family the terminal speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Attendance PUSH (2.x): `GET OPTION FROM`, `table=ATTLOG`, `OK:<n>`.
    Att,
    /// Security PUSH (3.x): registry, push, `table=rtlog`.
    Acc,
}

/// How the simulated push terminal behaves.
#[derive(Debug, Clone)]
pub struct PushConfig {
    /// The server's address (`http://` only).
    pub server: SocketAddr,
    /// Path before the endpoint: `/iclock/`, or `/iclock/s/<secret>/`.
    pub prefix: String,
    pub serial: String,
    pub dialect: Dialect,
    /// Records per backlog upload (real terminals: 128).
    pub batch: usize,
    /// Send `Stamp=9999` on every upload, as new firmware does, instead of a real resume marker.
    pub constant_stamp: bool,
    /// Names in GBK (and `language=83`), as Chinese-language firmware sends them.
    pub gbk: bool,
    /// CRLF line ends.
    pub crlf: bool,
    /// Extra and empty trailing ATTLOG fields (mask, temperature...).
    pub extra_fields: bool,
    /// Probability that the terminal "loses" the server's acknowledgement and sends the batch again.
    pub drop_acks: f64,
    /// The terminal's clock runs this far from what the server's `Date` and `TimeZone` say.
    pub clock_drift: SignedDuration,
    /// Label bodies `application/x-www-form-urlencoded`, as some firmware does.
    pub form_content_type: bool,
    /// Shortest wait between polls, whatever `Delay` says.
    pub min_delay: Duration,
    /// Wait after a failure until the server's `ErrorDelay` is known (the terminal's own setting).
    pub initial_error_delay: Duration,
    /// Deadline of one HTTP exchange.
    pub timeout: Duration,
    /// Seed of the random choices (dropped acknowledgements).
    pub seed: u64,
}

impl PushConfig {
    pub fn new(server: SocketAddr, serial: &str) -> PushConfig {
        PushConfig {
            server,
            prefix: "/iclock/".to_owned(),
            serial: serial.to_owned(),
            dialect: Dialect::Att,
            batch: 128,
            constant_stamp: false,
            gbk: false,
            crlf: false,
            extra_fields: false,
            drop_acks: 0.0,
            clock_drift: SignedDuration::ZERO,
            form_content_type: false,
            min_delay: Duration::from_millis(100),
            initial_error_delay: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
            seed: 1,
        }
    }
}

/// Counters a test can read.
#[derive(Debug, Default)]
struct Counters {
    handshakes: AtomicU64,
    uploads: AtomicU64,
    uploads_acked: AtomicU64,
    acks_dropped: AtomicU64,
    failures: AtomicU64,
    polls: AtomicU64,
    commands: AtomicU64,
}

/// A snapshot of the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PushStats {
    pub handshakes: u64,
    /// Upload requests sent (repeats included).
    pub uploads: u64,
    /// Uploads the server acknowledged with the right `OK:<n>` (and the terminal took note).
    pub uploads_acked: u64,
    pub acks_dropped: u64,
    /// Requests that failed (no connection, an error status, a wrong acknowledgement).
    pub failures: u64,
    pub polls: u64,
    /// Commands executed.
    pub commands: u64,
}

struct State {
    users: Vec<UserFixture>,
    log: Vec<PunchFixture>,
    /// Records of `log` the server has acknowledged, in order (the resume point).
    sent: usize,
    /// Uploads asked for by `DATA QUERY ATTLOG`, sent before anything else.
    queries: VecDeque<Vec<PunchFixture>>,
    /// Command results not yet delivered.
    results: Vec<String>,
    /// Minutes east of UTC, from the handshake's `TimeZone`.
    tz_minutes: i32,
    /// Set by `SET OPTION DateTime`: local clock minus (UTC + zone).
    clock_set: SignedDuration,
    delay: Duration,
    error_delay: Duration,
    /// A new handshake is due (boot, `CHECK`).
    handshake: bool,
    users_sent: bool,
    /// Probability of a lost acknowledgement (from the config; tests switch it).
    drop_acks: f64,
    rng: Rng,
    /// 3.x: the `RegistryCode` of the registration or of a handshake.
    registry_code: Option<String>,
    /// 3.x: the `SessionID` of the configuration; forgotten when the terminal registers again.
    session: Option<String>,
}

struct Inner {
    config: PushConfig,
    state: Mutex<State>,
    counters: Counters,
    wake: Notify,
}

/// A running push terminal.
pub struct PushTerminal {
    inner: Arc<Inner>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl PushTerminal {
    /// Starts calling the server with the fixture's users and punches as its backlog.
    pub fn start(fixture: &Fixture, config: PushConfig) -> PushTerminal {
        let state = State {
            users: fixture.users.clone(),
            log: fixture.attendance.clone(),
            sent: 0,
            queries: VecDeque::new(),
            results: Vec::new(),
            tz_minutes: 0,
            clock_set: SignedDuration::ZERO,
            delay: Duration::from_secs(10),
            error_delay: config.initial_error_delay,
            handshake: true,
            users_sent: false,
            drop_acks: config.drop_acks,
            rng: Rng::new(config.seed),
            registry_code: None,
            session: None,
        };
        let inner =
            Arc::new(Inner { config, state: Mutex::new(state), counters: Counters::default(), wake: Notify::new() });
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(inner.clone(), stop.clone()));
        PushTerminal { inner, stop, task }
    }

    /// Someone punches now (the terminal's clock); uploaded at once (realtime).
    pub fn punch(&self, user_index: usize, verify: u8, state: u8) -> PunchFixture {
        let p = {
            let mut s = self.inner.state();
            let (uid, user_id) = match s.users.get(user_index % s.users.len().max(1)) {
                Some(u) => (u.uid, u.user_id.clone()),
                None => (1, "1".to_owned()),
            };
            let mut t = self.inner.local_now(&s);
            // Strictly after this user's last punch, so (user, time) stays unique.
            if let Some(last) = s
                .log
                .iter()
                .rev()
                .take(64)
                .filter(|r| r.user_id == user_id)
                .filter_map(|r| parse_time(&r.timestamp))
                .max()
                && last >= t
            {
                t = last.saturating_add(SignedDuration::from_secs(1));
            }
            let p =
                PunchFixture { uid, user_id, timestamp: format_time(t), status: verify, punch: state, raw_time: None };
            s.log.push(p.clone());
            p
        };
        self.inner.wake.notify_one();
        p
    }

    /// Everything the terminal holds.
    pub fn records(&self) -> Vec<PunchFixture> {
        self.inner.state().log.clone()
    }

    pub fn users(&self) -> Vec<UserFixture> {
        self.inner.state().users.clone()
    }

    /// Whether every record was acknowledged by the server.
    pub fn caught_up(&self) -> bool {
        let s = self.inner.state();
        s.sent >= s.log.len() && s.queries.is_empty()
    }

    /// The terminal's clock now.
    pub fn now(&self) -> DateTime {
        let s = self.inner.state();
        self.inner.local_now(&s)
    }

    pub fn stats(&self) -> PushStats {
        let c = &self.inner.counters;
        PushStats {
            handshakes: c.handshakes.load(Ordering::Relaxed),
            uploads: c.uploads.load(Ordering::Relaxed),
            uploads_acked: c.uploads_acked.load(Ordering::Relaxed),
            acks_dropped: c.acks_dropped.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
            polls: c.polls.load(Ordering::Relaxed),
            commands: c.commands.load(Ordering::Relaxed),
        }
    }

    /// Switches the lost-acknowledgement probability.
    pub fn set_drop_acks(&self, p: f64) {
        self.inner.state().drop_acks = p;
    }

    pub async fn stop(self) {
        self.stop.cancel();
        self.inner.wake.notify_one();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The terminal's wall clock: UTC + the zone it was told + what was set + drift, whole seconds.
    fn local_now(&self, s: &State) -> DateTime {
        let at = Timestamp::now()
            .saturating_add(SignedDuration::from_mins(i64::from(s.tz_minutes)))
            .and_then(|t| t.saturating_add(s.clock_set))
            .and_then(|t| t.saturating_add(self.config.clock_drift))
            .unwrap_or_else(|_| Timestamp::now());
        let t = jiff::tz::TimeZone::UTC.to_datetime(at);
        t.date().at(t.hour(), t.minute(), t.second(), 0)
    }

    fn url(&self, endpoint: &str, extra: &str) -> String {
        let mut u = format!("{}{endpoint}?SN={}", self.config.prefix, self.config.serial);
        if !extra.is_empty() {
            u.push('&');
            u.push_str(extra);
        }
        u
    }

    async fn call(&self, method: &str, target: &str, body: &[u8]) -> Result<http::Answer, http::HttpError> {
        let ct = if self.config.form_content_type { Some("application/x-www-form-urlencoded") } else { None };
        let cookie = {
            let s = self.state();
            match (&s.registry_code, &s.session) {
                (Some(code), Some(session)) if self.config.dialect == Dialect::Acc => {
                    Some(format!("token={}", session_token(code, &self.config.serial, session)))
                }
                _ => None,
            }
        };
        http::request(self.config.server, method, target, ct, cookie.as_deref(), body, self.config.timeout).await
    }

    fn eol(&self) -> &'static str {
        if self.config.crlf { "\r\n" } else { "\n" }
    }

    fn encode(&self, text: &str) -> Vec<u8> {
        if self.config.gbk { encoding_rs::GBK.encode(text).0.into_owned() } else { text.as_bytes().to_vec() }
    }

    fn failed(&self) {
        self.counters.failures.fetch_add(1, Ordering::Relaxed);
    }
}

/// `TimeZone` of the handshake in minutes: hours when within (-12, 12) (the notes' rule: |v| <= 12 is hours).
fn tz_minutes(v: i32) -> i32 {
    if v.abs() <= 12 { v * 60 } else { v }
}

async fn run(inner: Arc<Inner>, stop: CancellationToken) {
    loop {
        if stop.is_cancelled() {
            return;
        }
        let ok = step(&inner).await;
        let wait = {
            let s = inner.state();
            let d = if ok { s.delay } else { s.error_delay };
            d.max(inner.config.min_delay)
        };
        let pending = {
            let s = inner.state();
            !s.queries.is_empty() || s.sent < s.log.len()
        };
        if ok && pending {
            continue;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
            () = inner.wake.notified(), if ok => {}
        }
    }
}

/// One round: handshake if due, uploads, a poll and its commands. `false` when something failed (then the terminal
/// waits `ErrorDelay`).
async fn step(inner: &Inner) -> bool {
    if inner.state().handshake {
        let done = match inner.config.dialect {
            Dialect::Att => handshake_att(inner).await,
            Dialect::Acc => handshake_acc(inner).await,
        };
        if !done {
            inner.failed();
            return false;
        }
        inner.counters.handshakes.fetch_add(1, Ordering::Relaxed);
    }
    let users_due = inner.config.dialect == Dialect::Att && !inner.state().users_sent;
    if users_due && !upload_users(inner).await {
        return false;
    }
    // Query results first, then the backlog and realtime punches, one batch per request.
    loop {
        let query = inner.state().queries.front().cloned();
        if let Some(batch) = query {
            if !upload(inner, &batch, None).await {
                return false;
            }
            inner.state().queries.pop_front();
            continue;
        }
        let (batch, next) = {
            let s = inner.state();
            let end = (s.sent + inner.config.batch.max(1)).min(s.log.len());
            (s.log[s.sent.min(end)..end].to_vec(), end)
        };
        if batch.is_empty() {
            break;
        }
        if !upload(inner, &batch, Some(next)).await {
            return false;
        }
        inner.state().sent = next;
    }
    poll(inner).await
}

async fn handshake_att(inner: &Inner) -> bool {
    let language = if inner.config.gbk { "83" } else { "69" };
    let target = inner.url("cdata", &format!("options=all&pushver=2.4.1&language={language}&PushOptionsFlag=1"));
    let answer = match inner.call("GET", &target, b"").await {
        Ok(a) if a.status == 200 => a,
        Ok(a) => {
            tracing::info!(status = a.status, "push handshake refused");
            return false;
        }
        Err(error) => {
            tracing::info!(%error, "push handshake failed");
            return false;
        }
    };
    let mut lines = answer.body.lines();
    if lines.next() != Some(format!("GET OPTION FROM: {}", inner.config.serial).as_str()) {
        tracing::warn!(body = %answer.body, "push handshake answer does not start with GET OPTION FROM");
        return false;
    }
    let mut s = inner.state();
    for line in lines {
        let Some((k, v)) = line.split_once('=') else { continue };
        match k {
            "Delay" => s.delay = Duration::from_secs(v.trim().parse().unwrap_or(10)),
            "ErrorDelay" => s.error_delay = Duration::from_secs(v.trim().parse().unwrap_or(30)),
            "TimeZone" => s.tz_minutes = tz_minutes(v.trim().parse().unwrap_or(0)),
            "ATTLOGStamp" => {
                // None/0: the server has nothing; send everything again.
                if matches!(v.trim(), "None" | "0" | "") {
                    s.sent = 0;
                } else if !inner.config.constant_stamp {
                    let len = s.log.len();
                    s.sent = v.trim().parse::<usize>().map_or(s.sent, |n| n.min(len));
                }
            }
            "OPERLOGStamp" if matches!(v.trim(), "None" | "0" | "") => s.users_sent = false,
            _ => {}
        }
    }
    s.handshake = false;
    true
}

async fn handshake_acc(inner: &Inner) -> bool {
    let target = inner.url("cdata", "options=all&pushver=3.1.2&DeviceType=acc");
    let answer = match inner.call("GET", &target, b"").await {
        Ok(a) if a.status == 200 => a,
        _ => return false,
    };
    if answer.body.trim() == "OK" {
        let body = format!(
            "DeviceType=acc,~DeviceName=essl-sim,FirmVer=ZAM180-NF-Ver1.1.17,PushVersion=3.1.2,~SerialNumber={}",
            inner.config.serial
        );
        match inner.call("POST", &inner.url("registry", ""), body.as_bytes()).await {
            Ok(a) if a.status == 200 && a.body.contains("RegistryCode=") => {
                let mut s = inner.state();
                s.registry_code = value_of(&a.body, "RegistryCode");
                s.session = None;
            }
            _ => return false,
        }
        match inner.call("POST", &inner.url("push", ""), b"").await {
            Ok(a) if a.status == 200 => apply_acc_options(inner, &a.body),
            _ => return false,
        }
    } else {
        apply_acc_options(inner, &answer.body);
    }
    let mut s = inner.state();
    s.handshake = false;
    s.users_sent = true;
    true
}

fn apply_acc_options(inner: &Inner, body: &str) {
    let mut s = inner.state();
    for line in body.lines() {
        let Some((k, v)) = line.split_once('=') else { continue };
        match k {
            "RequestDelay" => s.delay = Duration::from_secs(v.trim().parse().unwrap_or(30)),
            "ErrorDelay" => s.error_delay = Duration::from_secs(v.trim().parse().unwrap_or(30)),
            "TimeZone" => s.tz_minutes = tz_minutes(v.trim().parse().unwrap_or(0)),
            "RegistryCode" if !v.trim().is_empty() => s.registry_code = Some(v.trim().to_owned()),
            "SessionID" if !v.trim().is_empty() => s.session = Some(v.trim().to_owned()),
            _ => {}
        }
    }
}

/// The value of `key=` in a `key=value` answer.
fn value_of(body: &str, key: &str) -> Option<String> {
    body.lines().find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('=')).map(|v| v.trim().to_owned())
}

/// The session token of the security dialect: lowercase hex MD5 of the registry code, the serial number and the
/// session id, concatenated (notes §4.3 step 4).
pub fn session_token(registry_code: &str, serial: &str, session: &str) -> String {
    use md5::Digest;
    let mut md5 = md5::Md5::new();
    md5.update(registry_code.as_bytes());
    md5.update(serial.as_bytes());
    md5.update(session.as_bytes());
    md5.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The users, as `OPERLOG` `USER` lines (once per boot, or when the server has no OPERLOG stamp).
async fn upload_users(inner: &Inner) -> bool {
    let users = inner.state().users.clone();
    if users.is_empty() {
        inner.state().users_sent = true;
        return true;
    }
    let eol = inner.eol();
    let text: String = users
        .iter()
        .map(|u| {
            format!(
                "USER PIN={}\tName={}\tPri={}\tPasswd={}\tCard={}\tGrp={}\tTZ=0000000000000000\tVerify=-1\tViceCard={eol}",
                u.user_id,
                u.name,
                u.privilege,
                u.password,
                if u.card == 0 { String::new() } else { u.card.to_string() },
                u.group_id
            )
        })
        .collect();
    let stamp = if inner.config.constant_stamp { "9999".to_owned() } else { users.len().to_string() };
    let target = inner.url("cdata", &format!("table=OPERLOG&Stamp={stamp}"));
    inner.counters.uploads.fetch_add(1, Ordering::Relaxed);
    match inner.call("POST", &target, &inner.encode(&text)).await {
        Ok(a) if ack_matches(&a, users.len()) => {
            inner.state().users_sent = true;
            true
        }
        _ => {
            inner.failed();
            false
        }
    }
}

fn ack_matches(a: &http::Answer, n: usize) -> bool {
    let body = a.body.trim();
    a.status == 200 && (body == format!("OK:{n}") || body == format!("OK: {n}"))
}

/// One upload; `true` once the server acknowledged it as the terminal expects. `stamp_after`: the resume point
/// this batch reaches (real-stamp mode).
async fn upload(inner: &Inner, batch: &[PunchFixture], stamp_after: Option<usize>) -> bool {
    let eol = inner.eol();
    let (target, text, acc) = match inner.config.dialect {
        Dialect::Att => {
            let stamp = match (inner.config.constant_stamp, stamp_after) {
                (false, Some(n)) => n.to_string(),
                _ => "9999".to_owned(),
            };
            let text: String = batch
                .iter()
                .map(|p| {
                    let time = p.timestamp.replace('T', " ");
                    let extra = if inner.config.extra_fields { "\t0\t0\t\t36.5\t\t\t" } else { "\t0\t0" };
                    format!("{}\t{time}\t{}\t{}\t0{extra}{eol}", p.user_id, p.punch, p.status)
                })
                .collect();
            (inner.url("cdata", &format!("table=ATTLOG&Stamp={stamp}")), text, false)
        }
        Dialect::Acc => {
            let text: String = batch
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    format!(
                        "time={}\tpin={}\tcardno=0\tsitecode=0\tlinkid=0\teventaddr=1\tevent=0\tinoutstatus={}\tverifytype={}\tindex={i}{eol}",
                        p.timestamp.replace('T', " "),
                        p.user_id,
                        p.punch,
                        p.status
                    )
                })
                .collect();
            (inner.url("cdata", "table=rtlog"), text, true)
        }
    };
    inner.counters.uploads.fetch_add(1, Ordering::Relaxed);
    let answer = match inner.call("POST", &target, &inner.encode(&text)).await {
        Ok(a) => a,
        Err(error) => {
            tracing::info!(%error, "push upload failed; sending it again later");
            inner.failed();
            return false;
        }
    };
    let acked =
        if acc { answer.status == 200 && answer.body.trim() == "OK" } else { ack_matches(&answer, batch.len()) };
    if !acked {
        tracing::info!(status = answer.status, body = %answer.body, "push upload not acknowledged; sending it again later");
        inner.failed();
        return false;
    }
    let dropped = {
        let mut s = inner.state();
        let p = s.drop_acks;
        p > 0.0 && s.rng.chance(p)
    };
    if dropped {
        inner.counters.acks_dropped.fetch_add(1, Ordering::Relaxed);
        tracing::info!(records = batch.len(), "push acknowledgement dropped (simulated): the batch goes again");
        return false;
    }
    inner.counters.uploads_acked.fetch_add(1, Ordering::Relaxed);
    true
}

/// `getrequest`, then each command executed and the results posted.
async fn poll(inner: &Inner) -> bool {
    inner.counters.polls.fetch_add(1, Ordering::Relaxed);
    let info = {
        let s = inner.state();
        format!("Ver%208.0.4.2-sim,{},0,{},127.0.0.1,10,7,12,0,111", s.users.len(), s.log.len())
    };
    let answer = match inner.call("GET", &inner.url("getrequest", &format!("INFO={info}")), b"").await {
        Ok(a) if a.status == 200 => a,
        _ => {
            inner.failed();
            return false;
        }
    };
    for line in answer.body.lines() {
        let Some(rest) = line.strip_prefix("C:") else { continue };
        let Some((id, command)) = rest.split_once(':') else { continue };
        let result = execute(inner, id.trim(), command);
        inner.counters.commands.fetch_add(1, Ordering::Relaxed);
        inner.state().results.push(result);
    }
    let results = std::mem::take(&mut inner.state().results);
    if !results.is_empty() {
        let eol = inner.eol();
        let body: String = results.iter().map(|r| format!("{r}{eol}")).collect();
        match inner.call("POST", &inner.url("devicecmd", ""), &inner.encode(&body)).await {
            Ok(a) if a.status == 200 && a.body.trim() == "OK" => {}
            _ => {
                inner.state().results.extend(results);
                inner.failed();
                return false;
            }
        }
    }
    true
}

fn params(s: &str) -> Vec<(String, String)> {
    s.split('\t')
        .filter_map(|f| f.split_once('='))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.to_owned()))
        .collect()
}

fn get<'a>(p: &'a [(String, String)], k: &str) -> &'a str {
    p.iter().find(|(key, _)| key == k).map_or("", |(_, v)| v.as_str())
}

/// Runs a command against the terminal's own data; answers its result line.
fn execute(inner: &Inner, id: &str, command: &str) -> String {
    let mut s = inner.state();
    let (word, code, extra) = if let Some(rest) = command.strip_prefix("DATA QUERY ATTLOG ") {
        let p = params(rest);
        let from = get(&p, "starttime").replace(' ', "T");
        let to = get(&p, "endtime").replace(' ', "T");
        let found: Vec<PunchFixture> = s
            .log
            .iter()
            .filter(|r| r.timestamp.as_str() >= from.as_str() && r.timestamp.as_str() <= to.as_str())
            .cloned()
            .collect();
        let code = if found.is_empty() { -1 } else { 0 };
        for chunk in found.chunks(inner.config.batch.max(1)) {
            s.queries.push_back(chunk.to_vec());
        }
        ("DATA", code, String::new())
    } else if let Some(rest) = command.strip_prefix("DATA UPDATE USERINFO ") {
        let p = params(rest);
        let pin = get(&p, "pin").to_owned();
        let name = get(&p, "name").to_owned();
        let next_uid = s.users.iter().map(|u| u.uid).max().unwrap_or(0).saturating_add(1);
        let user = UserFixture {
            uid: s.users.iter().find(|u| u.user_id == pin).map_or(next_uid, |u| u.uid),
            user_id: pin.clone(),
            name,
            privilege: get(&p, "pri").parse().unwrap_or(0),
            password: get(&p, "passwd").to_owned(),
            card: get(&p, "card").parse().unwrap_or(0),
            group_id: get(&p, "grp").to_owned(),
        };
        if pin.is_empty() {
            ("DATA", -1, String::new())
        } else {
            s.users.retain(|u| u.user_id != pin);
            s.users.push(user);
            ("DATA", 0, String::new())
        }
    } else if let Some(rest) = command.strip_prefix("DATA DELETE USERINFO ") {
        let p = params(rest);
        let pin = get(&p, "pin").to_owned();
        let before = s.users.len();
        s.users.retain(|u| u.user_id != pin);
        ("DATA", if s.users.len() < before { 0 } else { -10 }, String::new())
    } else if command == "INFO" {
        let eol = inner.eol();
        let extra = format!(
            "{eol}~DeviceName=essl-sim push{eol}~SerialNumber={}{eol}UserCount={}{eol}TransactionCount={}{eol}FWVersion=Ver 8.0.4.2-sim{eol}~Platform=ZMM220_TFT",
            inner.config.serial,
            s.users.len(),
            s.log.len()
        );
        ("INFO", 0, extra)
    } else if command == "CHECK" {
        s.handshake = true;
        ("CHECK", 0, String::new())
    } else if let Some(v) = command.strip_prefix("SET OPTION DateTime=") {
        match v.trim().parse::<i64>().ok().and_then(zk_decode) {
            Some(t) => {
                let at = Timestamp::now()
                    .saturating_add(SignedDuration::from_mins(i64::from(s.tz_minutes)))
                    .unwrap_or_else(|_| Timestamp::now());
                let now = jiff::tz::TimeZone::UTC.to_datetime(at);
                s.clock_set = now.duration_until(t);
                ("SET OPTION", 0, String::new())
            }
            None => ("SET OPTION", -1, String::new()),
        }
    } else if command == "LOG" {
        ("LOG", 0, String::new())
    } else {
        // What terminals answer to syntax they do not know (USER ADD, SHELL on a locked-down unit, ...).
        (command.split(' ').next().unwrap_or(""), -1002, String::new())
    };
    format!("ID={id}&Return={code}&CMD={word}{extra}")
}

/// ZKTeco's legacy time encoding back to a wall-clock time.
fn zk_decode(n: i64) -> Option<DateTime> {
    if n < 0 {
        return None;
    }
    let secs = n % 86_400;
    let days = n / 86_400;
    let year = 2000 + days / 372;
    let month = (days % 372) / 31 + 1;
    let day = days % 31 + 1;
    jiff::civil::DateTime::new(
        i16::try_from(year).ok()?,
        i8::try_from(month).ok()?,
        i8::try_from(day).ok()?,
        i8::try_from(secs / 3600).ok()?,
        i8::try_from(secs % 3600 / 60).ok()?,
        i8::try_from(secs % 60).ok()?,
        0,
    )
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zk_time_decodes() {
        assert_eq!(zk_decode(0).map(|t| t.to_string()), Some("2000-01-01T00:00:00".into()));
        assert_eq!(
            zk_decode(372 * 86_400 + 31 * 86_400 + 61).map(|t| t.to_string()),
            Some("2001-02-01T00:01:01".into())
        );
        assert_eq!(tz_minutes(330), 330);
        assert_eq!(tz_minutes(-5), -300);
    }

    #[test]
    fn session_token_is_the_md5_of_the_three_values() {
        // RFC 1321's test vector for "abc", split across the three parts.
        assert_eq!(session_token("a", "b", "c"), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(value_of("registry=ok\nRegistryCode=Uy47 \n", "RegistryCode").as_deref(), Some("Uy47"));
        assert_eq!(value_of("RegistryCodeX=1\n", "RegistryCode"), None);
    }
}
