//! Push (ADMS / iclock) terminals: they call `/iclock/...` over HTTP themselves (no agent), identified by the
//! serial number in every query. The protocol is in `shared/protocol/adms-push.md`; this module follows it.
//!
//! - `mod.rs`: the routes (device-facing, not part of the JSON API nor of its OpenAPI document), the request
//!   pipeline (rate limits, body caps, journal, identification, dispatch) and the per-endpoint handlers.
//! - [`parse`]: tolerant parsers (query, bodies, lines, results). [`reply`]: the exact answers.
//! - [`commands`]: the allow-list of commands the server may queue. `ingest.rs`: records to rows.
//! - `limit.rs`: token buckets per serial and per client address.
//!
//! Every request is journaled (`essl_push_journal`, body capped) before it is parsed, except bodiless polls
//! (`getrequest`/`ping` without `INFO`), which only update the terminal's last contact. A serial without an active
//! push device is quarantined: answered, journaled, nothing ingested, no command sent, its uploads refused (403) so
//! that the terminal keeps its records and sends them again once an admin claimed it.
//!
//! Security PUSH (3.x) sessions (notes §4.3): a registered terminal is handed its `RegistryCode` and a random
//! `SessionID` (stored with it, new after each registration); from then on its uploads, polls, command results and
//! configuration requests must carry `Cookie: token=<md5(RegistryCode + serial + SessionID)>` or are refused (401,
//! journaled, nothing ingested, no command handed out). Weak (the handshake hands both values to whoever asks with
//! the serial), but it is what the protocol offers; attendance (2.x) terminals have no token.

pub mod commands;
mod ingest;
mod limit;
pub mod parse;
pub mod reply;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::routing::any;
use jiff::Timestamp;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::app::AppState;
use crate::store::model::{Device, DeviceKind, NewSyncAttempt, SyncStatus};
use crate::store::{PushCommand, PushSeen, PushTerminal, StampTable, StoreError, TakePolicy};
use crate::sync::{DeviceSync, Synced};
pub use commands::{Command, CommandError, UserSpec};
pub use limit::Limiter;
use parse::Query;

/// Settings of the push endpoints.
#[derive(Debug, Clone)]
pub struct PushConfig {
    /// `Delay` of the handshake: seconds between polls.
    pub delay: Duration,
    /// `ErrorDelay`: how long a terminal waits after a failed request.
    pub error_delay: Duration,
    /// A sent command without a result is sent again after this long.
    pub resend_after: Duration,
    /// Sends before a command expires.
    pub max_attempts: i32,
    /// A queued command never fetched expires after this long.
    pub command_ttl: Duration,
    /// Commands handed out per poll.
    pub commands_per_poll: u32,
    /// Requests per second (sustained) and burst, per serial.
    pub per_serial: (f64, f64),
    /// Requests per second (sustained) and burst, per client address.
    pub per_address: (f64, f64),
    /// Body bytes kept in the journal per request.
    pub journal_body_cap: usize,
    /// Journal entries older than this are forgotten.
    pub journal_retention: Duration,
    /// Largest `ATTLOG` (and `rtlog`) body.
    pub attlog_max: usize,
    /// Largest `OPERLOG`, `USERINFO`, `BIODATA` body (templates, photos).
    pub operlog_max: usize,
    /// Largest body of anything else.
    pub other_max: usize,
    /// Window of the re-upload that the seed's sync-attendance queues for a push terminal.
    pub sync_window: Duration,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            delay: Duration::from_secs(10),
            error_delay: Duration::from_secs(30),
            resend_after: Duration::from_secs(60),
            max_attempts: 5,
            command_ttl: Duration::from_secs(7 * 86_400),
            commands_per_poll: 10,
            per_serial: (10.0, 200.0),
            per_address: (50.0, 1000.0),
            journal_body_cap: 64 * 1024,
            journal_retention: Duration::from_secs(30 * 86_400),
            attlog_max: 1024 * 1024,
            operlog_max: 8 * 1024 * 1024,
            other_max: 2 * 1024 * 1024,
            sync_window: Duration::from_secs(7 * 86_400),
        }
    }
}

impl PushConfig {
    fn largest_body(&self) -> usize {
        self.attlog_max.max(self.operlog_max).max(self.other_max)
    }

    /// A terminal that polled within this long counts as reachable: three poll intervals and some slack.
    pub fn reachable_within(&self) -> Duration {
        self.delay * 3 + Duration::from_secs(5)
    }

    fn options(&self) -> reply::Options {
        reply::Options {
            error_delay_secs: self.error_delay.as_secs().max(1),
            delay_secs: self.delay.as_secs().max(1),
            trans_interval_min: 1,
            realtime: true,
        }
    }

    fn take_policy(&self) -> TakePolicy {
        TakePolicy {
            resend_after: self.resend_after,
            max_attempts: self.max_attempts,
            ttl: self.command_ttl,
            limit: self.commands_per_poll,
        }
    }
}

/// Per-server state of the push endpoints (rate limiters); part of [`AppState`].
pub struct PushHub {
    per_serial: Limiter,
    per_address: Limiter,
}

impl PushHub {
    pub fn new(config: &PushConfig) -> PushHub {
        PushHub {
            per_serial: Limiter::new(config.per_serial.0, config.per_serial.1),
            per_address: Limiter::new(config.per_address.0, config.per_address.1),
        }
    }
}

/// The device-facing routes: `/iclock/<endpoint>` and `/iclock/s/<secret>/<endpoint>`, any method.
pub fn routes(config: &PushConfig) -> Router<AppState> {
    Router::new()
        .route("/iclock/{endpoint}", any(handle))
        .route("/iclock/s/{secret}/{endpoint}", any(handle))
        .layer(DefaultBodyLimit::max(config.largest_body()))
}

/// The SHA-256 a site's push secret is stored as.
pub fn secret_hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// A new secret path segment: 32 random bytes, hex.
pub fn new_secret() -> Result<String, getrandom::Error> {
    random_hex(32)
}

/// The session token of a security-PUSH (3.x) terminal, as it sends it in `Cookie: token=`: lowercase hex MD5 of
/// its registry code, serial number and session id, concatenated.
pub fn session_token(registry_code: &str, serial: &str, session: &str) -> String {
    let mut md5 = md5::Md5::new();
    md5.update(registry_code.as_bytes());
    md5.update(serial.as_bytes());
    md5.update(session.as_bytes());
    md5.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The `token` cookie of a request, if any (several `Cookie` headers and `a=b; token=...` lists are read).
fn cookie_token(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("token"))
        .map(|(_, v)| v.trim().trim_matches('"').to_owned())
}

/// The requests a 3.x terminal sends with its session token once it was handed one: configuration, uploads,
/// command polls and results, query answers. Not the handshake and the registration (which hand out the session)
/// nor the keep-alive `ping` or the time request (`GET rtdata`), which the notes do not say carry it.
fn needs_token(endpoint: &str, method: &Method) -> bool {
    match endpoint {
        "push" | "getrequest" | "devicecmd" | "querydata" => true,
        "cdata" | "rtdata" => method == Method::POST,
        _ => false,
    }
}

/// Why a 3.x terminal's request is refused for its token, if it is: the outcome for the journal.
fn token_refusal(ctx: &Ctx, identity: &Identity, terminal: &PushTerminal) -> Option<&'static str> {
    if !matches!(identity, Identity::Known(_)) || terminal.dialect != "acc" || !needs_token(&ctx.endpoint, &ctx.method)
    {
        return None;
    }
    let (Some(code), Some(session)) = (&terminal.registry_code, &terminal.session_id) else { return None };
    let Some(given) = &ctx.token else { return Some("refused: no session token") };
    let expected = session_token(code, &terminal.serial, session);
    // Constant time: the comparison must not tell a guesser how many leading characters were right.
    if bool::from(expected.as_bytes().ct_eq(given.to_ascii_lowercase().as_bytes())) {
        None
    } else {
        Some("refused: wrong session token")
    }
}

fn random_hex(n: usize) -> Result<String, getrandom::Error> {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Which endpoint, from the path: lowercased, `.aspx` dropped; and the secret segment if any.
fn endpoint(path: &str) -> (String, Option<String>) {
    let rest = path.strip_prefix("/iclock/").unwrap_or(path);
    let (secret, name) = match rest.strip_prefix("s/").and_then(|r| r.split_once('/')) {
        Some((secret, name)) => (Some(parse::percent_decode(secret)), name),
        None => (None, rest),
    };
    let name = name.to_ascii_lowercase();
    let name = name.strip_suffix(".aspx").unwrap_or(&name).to_owned();
    (name, secret)
}

/// What a request was about, for the journal and the logs.
struct Ctx {
    journal: Option<i64>,
    /// Set once a handler recorded the request's outcome in the journal itself (alongside its other writes).
    outcome_recorded: AtomicBool,
    serial: String,
    endpoint: String,
    query: Query,
    method: Method,
    address: Option<SocketAddr>,
    /// The `token` cookie (security PUSH sessions).
    token: Option<String>,
}

/// Whether a serial belongs to an active push device (and which), or is quarantined.
enum Identity {
    Known(Device),
    Quarantined,
}

async fn handle(State(state): State<AppState>, req: Request) -> Response {
    let started = Instant::now();
    let address = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let token = cookie_token(req.headers());
    let raw_query = req.uri().query().unwrap_or_default().to_owned();
    let (endpoint, secret) = endpoint(&path);
    let query = Query::parse(&raw_query);
    let serial = query.value("sn").unwrap_or_default().to_owned();
    let config = &state.config.push;

    // Rate limits first: a flood is neither journaled nor parsed.
    let by_address = address.is_none_or(|a| state.push.per_address.allow(&a.ip().to_string()));
    let by_serial = serial.is_empty() || state.push.per_serial.allow(&serial);
    if !by_address || !by_serial {
        tracing::info!(serial = %serial, address = ?address, endpoint = %endpoint, "push request over its rate limit");
        let mut r = reply::text(StatusCode::SERVICE_UNAVAILABLE, "BUSY");
        r.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("5"));
        return r;
    }

    let table = query.value("table").unwrap_or_default().to_ascii_lowercase();
    let cap = match table.as_str() {
        "attlog" | "rtlog" => config.attlog_max,
        "operlog" | "userinfo" | "biodata" | "tabledata" => config.operlog_max,
        _ => config.other_max,
    };
    let (body, too_large) = match axum::body::to_bytes(req.into_body(), config.largest_body()).await {
        Ok(b) => {
            let over = b.len() > cap;
            (b, over)
        }
        Err(error) => {
            tracing::info!(serial = %serial, %error, "push body unreadable or over the largest cap");
            return reply::text(StatusCode::PAYLOAD_TOO_LARGE, "ERROR: body too large");
        }
    };

    // Journal before anything parses the body (bodiless polls only touch the terminal's last contact). Who the
    // terminal is comes from the query alone, so it is looked up while the journal entry is written; the body is
    // parsed only once both are done.
    let poll = matches!(endpoint.as_str(), "getrequest" | "ping") && body.is_empty() && query.get("info").is_none();
    let entry = crate::store::NewJournal {
        serial: (!serial.is_empty()).then(|| serial.clone()),
        method: method.to_string(),
        path: path.clone(),
        query: raw_query.clone(),
        body: body[..body.len().min(config.journal_body_cap)].to_vec(),
        body_len: i64::try_from(body.len()).unwrap_or(i64::MAX),
        remote_addr: address.map(|a| a.to_string()),
        received_at: Timestamp::now(),
    };
    let mut ctx = Ctx {
        journal: None,
        outcome_recorded: AtomicBool::new(false),
        serial,
        endpoint,
        query,
        method,
        address,
        token,
    };
    let journal = async { if poll { Ok(None) } else { state.store.journal_push(&entry).await.map(Some) } };
    let identified =
        async { if too_large { None } else { Some(identify(&state, &ctx, secret.as_deref(), &table).await) } };
    let (journal, identified) = tokio::join!(journal, identified);
    match journal {
        Ok(id) => ctx.journal = id,
        Err(error) => {
            tracing::error!(serial = %ctx.serial, %error, "cannot journal a push request; asking the terminal to retry");
            return reply::text(StatusCode::SERVICE_UNAVAILABLE, "ERROR: storage unavailable");
        }
    }

    let served = match identified {
        None => Ok((
            reply::text(StatusCode::PAYLOAD_TOO_LARGE, "ERROR: body too large"),
            format!("refused: body over {cap} bytes"),
        )),
        Some(Ok(Identified::Refused(done))) => Ok(done),
        Some(Ok(Identified::Terminal { identity, terminal, acc })) => match token_refusal(&ctx, &identity, &terminal) {
            Some(refusal) => {
                tracing::warn!(serial = %ctx.serial, address = ?ctx.address, endpoint = %ctx.endpoint, refusal,
                    "security PUSH request without its session token");
                // A refused poll is journaled too: someone polling with a terminal's serial is worth seeing.
                if ctx.journal.is_none() {
                    match state.store.journal_push(&entry).await {
                        Ok(id) => ctx.journal = Some(id),
                        Err(error) => tracing::warn!(serial = %ctx.serial, %error, "cannot journal a refused poll"),
                    }
                }
                Ok((reply::text(StatusCode::UNAUTHORIZED, "ERROR: session token required"), refusal.to_owned()))
            }
            None => dispatch(&state, &ctx, &identity, &terminal, acc, &table, &body).await,
        },
        Some(Err(error)) => Err(error),
    };
    let recorded = served.is_ok() && ctx.outcome_recorded.load(Ordering::Relaxed);
    let (response, outcome) = match served {
        Ok(done) => done,
        Err(error) => {
            tracing::error!(serial = %ctx.serial, endpoint = %ctx.endpoint, %error, "push request failed; the terminal will retry");
            (reply::text(StatusCode::SERVICE_UNAVAILABLE, "ERROR: try again"), format!("error: {error}"))
        }
    };
    if !recorded {
        record_outcome(&state, &ctx, &outcome).await;
    }
    tracing::debug!(serial = %ctx.serial, endpoint = %ctx.endpoint, status = %response.status(), outcome = %outcome,
        elapsed_ms = started.elapsed().as_millis() as u64, "push request");
    response
}

type Handled = (Response, String);

/// Writes what became of a journaled request; a failure is logged, never the terminal's problem.
async fn record_outcome(state: &AppState, ctx: &Ctx, outcome: &str) {
    if let Some(id) = ctx.journal {
        match state.store.set_journal_outcome(id, outcome).await {
            Ok(()) => ctx.outcome_recorded.store(true, Ordering::Relaxed),
            Err(error) => tracing::warn!(journal_id = id, %error, "cannot record a push request's outcome"),
        }
    }
}

/// What [`identify`] found: a request refused before its body matters, or the terminal behind it.
enum Identified {
    Refused(Handled),
    Terminal {
        identity: Identity,
        terminal: Box<PushTerminal>,
        /// Security PUSH (3.x) rather than attendance PUSH.
        acc: bool,
    },
}

/// Identifies the terminal from the path and query alone (never the body): its serial, the site's secret, its
/// device (known or quarantined); records the contact.
async fn identify(state: &AppState, ctx: &Ctx, secret: Option<&str>, table: &str) -> Result<Identified, StoreError> {
    if !parse::valid_serial(&ctx.serial) {
        let refused = (reply::text(StatusCode::BAD_REQUEST, "ERROR: no serial number"), "refused: no valid SN".into());
        return Ok(Identified::Refused(refused));
    }
    let secret_site = match secret {
        Some(s) => match state.store.site_by_push_secret(&secret_hash(s)).await? {
            Some(site) => Some(site),
            None => {
                tracing::warn!(serial = %ctx.serial, address = ?ctx.address, "push request with an unknown secret path");
                return Ok(Identified::Refused((
                    reply::text(StatusCode::NOT_FOUND, "ERROR"),
                    "refused: unknown secret".into(),
                )));
            }
        },
        None => None,
    };
    let identity = match state.store.device_by_serial(&ctx.serial).await? {
        Some(d) if d.kind == DeviceKind::Push && d.active => {
            // A site with a secret takes its terminals only through it; a secret names exactly one site.
            let site_secret = match d.site_id {
                Some(site) => state.store.site_push_secret(site).await?,
                None => None,
            };
            if (site_secret.is_some() || secret_site.is_some())
                && secret_site != d.site_id.filter(|_| site_secret.is_some())
            {
                tracing::warn!(serial = %ctx.serial, address = ?ctx.address, "push request without its site's secret path");
                let refused = (reply::text(StatusCode::NOT_FOUND, "ERROR"), "refused: wrong or missing secret".into());
                return Ok(Identified::Refused(refused));
            }
            Identity::Known(d)
        }
        Some(d) => {
            tracing::warn!(serial = %ctx.serial, device_id = %d.id, kind = %d.kind, active = d.active,
                "push request for a serial whose device is not an active push device; quarantined");
            Identity::Quarantined
        }
        None => Identity::Quarantined,
    };
    let handshake = ctx.endpoint == "cdata" && ctx.method == Method::GET && ctx.query.get("options").is_some();
    let acc = ctx.endpoint == "registry"
        || ctx.query.value("pushver").is_some_and(|v| v.starts_with('3'))
        || ctx.query.value("devicetype").is_some_and(|v| v.eq_ignore_ascii_case("acc"))
        || table == "rtlog";
    let seen = PushSeen {
        serial: ctx.serial.clone(),
        at: Timestamp::now(),
        address: ctx.address.map(|a| a.ip().to_string()),
        push_version: if handshake { ctx.query.value("pushver").map(|v| v.chars().take(32).collect()) } else { None },
        dialect: (handshake || acc).then(|| if acc { "acc" } else { "att" }.to_owned()),
        language: if handshake { ctx.query.value("language").map(|v| v.chars().take(8).collect()) } else { None },
    };
    let terminal = state.store.push_seen(&seen).await?;
    if matches!(identity, Identity::Quarantined) && handshake {
        tracing::warn!(serial = %ctx.serial, address = ?ctx.address, "unknown push terminal quarantined until an admin claims it");
    }
    Ok(Identified::Terminal { identity, terminal: Box::new(terminal), acc })
}

/// Serves the endpoint for an identified terminal (the request is journaled by now).
async fn dispatch(
    state: &AppState,
    ctx: &Ctx,
    identity: &Identity,
    terminal: &PushTerminal,
    acc: bool,
    table: &str,
    body: &Bytes,
) -> Result<Handled, StoreError> {
    let quarantined = matches!(identity, Identity::Quarantined);
    match (ctx.endpoint.as_str(), identity) {
        ("cdata", _) if ctx.method == Method::GET => Ok(handshake_reply(state, ctx, terminal, identity, acc).await?),
        ("cdata", Identity::Quarantined) => {
            Ok((reply::text(StatusCode::FORBIDDEN, "ERROR: unknown device"), "quarantined: upload refused".into()))
        }
        ("cdata", Identity::Known(device)) => upload(state, ctx, device, terminal, table, body).await,
        ("getrequest", _) => poll(state, ctx, terminal, identity).await,
        ("devicecmd", Identity::Known(device)) => results(state, device, terminal, body).await,
        ("devicecmd", Identity::Quarantined) => Ok((reply::ok(), "quarantined: results ignored".into())),
        ("registry", Identity::Known(_)) => {
            merge_info(state, terminal, parse::key_values(&text_of(terminal, body), ',')).await?;
            // A registration keeps the terminal's code and forgets its session: the next configuration request
            // (`push`, or a handshake) hands out a new one, and until then no token is asked for.
            let code = state.store.register_push(&ctx.serial, &random_hex(8).map_err(unavailable)?).await?;
            Ok((reply::text(StatusCode::OK, format!("RegistryCode={code}\n")), "ok: registered".into()))
        }
        ("registry" | "push", Identity::Quarantined) => Ok((
            reply::text(StatusCode::NOT_ACCEPTABLE, "ERROR: unknown device"),
            "quarantined: registration refused".into(),
        )),
        ("push", Identity::Known(device)) => match session(state, ctx).await? {
            Some((code, session)) => {
                let body = reply::options_3x(&code, &session, tz_value(device), &state.config.push.options());
                Ok((reply::text(StatusCode::OK, body), "ok: configuration sent".into()))
            }
            None => Ok((
                reply::text(StatusCode::NOT_ACCEPTABLE, "ERROR: not registered"),
                "refused: configuration asked before registering".into(),
            )),
        },
        ("rtdata", _) => {
            let zone = match identity {
                Identity::Known(d) => crate::ingest::zone(&d.timezone),
                Identity::Quarantined => None,
            }
            .unwrap_or(jiff::tz::TimeZone::UTC);
            let now = Timestamp::now();
            let local = zone.to_datetime(now);
            let offset = zone.to_offset(now).seconds();
            let sign = if offset < 0 { '-' } else { '+' };
            let body = format!(
                "DateTime={},ServerTZ={sign}{:02}{:02}\n",
                commands::zk_time(local),
                offset.abs() / 3600,
                offset.abs() % 3600 / 60
            );
            Ok((reply::text(StatusCode::OK, body), "ok: time".into()))
        }
        ("querydata", _) => {
            let name = ctx
                .query
                .value("tablename")
                .unwrap_or("data")
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .collect::<String>();
            let n = parse::lines(&text_of(terminal, body)).count();
            Ok((reply::text(StatusCode::OK, format!("{name}={n}")), format!("ok: {n} lines journaled")))
        }
        ("file", _) => Ok((reply::text(StatusCode::NOT_FOUND, "ERROR"), "refused: no files are served".into())),
        _ => Ok((reply::ok(), if quarantined { "quarantined: answered OK".into() } else { "ok".into() })),
    }
}

fn unavailable(e: getrandom::Error) -> StoreError {
    StoreError::Unavailable(format!("no random numbers: {e}"))
}

/// The registry code and session of a registered 3.x terminal: the session it holds, or a new random one (16 random
/// bytes, hex), stored with the terminal. `None` before it registered.
async fn session(state: &AppState, ctx: &Ctx) -> Result<Option<(String, String)>, StoreError> {
    state.store.push_session(&ctx.serial, &random_hex(16).map_err(unavailable)?).await
}

fn tz_value(device: &Device) -> i32 {
    let zone = crate::ingest::zone(&device.timezone).unwrap_or(jiff::tz::TimeZone::UTC);
    reply::timezone_value(&zone, Timestamp::now())
}

fn text_of(terminal: &PushTerminal, body: &[u8]) -> String {
    parse::decode_text(body, parse::chinese_language(terminal.language.as_deref()))
}

async fn handshake_reply(
    state: &AppState,
    ctx: &Ctx,
    terminal: &PushTerminal,
    identity: &Identity,
    acc: bool,
) -> Result<Handled, StoreError> {
    if ctx.query.get("options").is_none() {
        // GET cdata without options (RemoteAtt lookups and the like): nothing to look up here.
        return Ok((reply::ok(), "ok: nothing to answer".into()));
    }
    let config = &state.config.push;
    match (identity, acc) {
        (Identity::Known(device), false) => {
            let legacy = ctx.query.get("pushver").is_none();
            let body = reply::options_2x(&ctx.serial, Some(terminal), legacy, tz_value(device), &config.options());
            Ok((reply::text(StatusCode::OK, body), "ok: options sent".into()))
        }
        (Identity::Quarantined, false) => {
            // Answered so that the terminal carries on (polls, uploads), but its uploads are refused until claimed:
            // it keeps its records. No stamps: none are known.
            let body = reply::options_2x(&ctx.serial, None, ctx.query.get("pushver").is_none(), 0, &config.options());
            Ok((reply::text(StatusCode::OK, body), "quarantined: options sent".into()))
        }
        (Identity::Known(device), true) => match session(state, ctx).await? {
            Some((code, session)) => {
                let body = reply::options_3x(&code, &session, tz_value(device), &config.options());
                Ok((reply::text(StatusCode::OK, body), "ok: registered terminal".into()))
            }
            None => Ok((reply::ok(), "ok: not registered yet".into())),
        },
        (Identity::Quarantined, true) => Ok((reply::ok(), "quarantined: told to register".into())),
    }
}

/// `POST /iclock/cdata?table=...` of a known terminal.
async fn upload(
    state: &AppState,
    ctx: &Ctx,
    device: &Device,
    terminal: &PushTerminal,
    table: &str,
    body: &Bytes,
) -> Result<Handled, StoreError> {
    let text = text_of(terminal, body);
    match table {
        "attlog" | "rtlog" => {
            let lines: Vec<&str> = parse::lines(&text).collect();
            let parsed: Vec<Result<parse::AttLine, parse::LineError>> = lines
                .iter()
                .map(|l| if table == "rtlog" { parse::rtlog_line(l) } else { parse::att_line(l) })
                .collect();
            let bad = parsed.iter().filter(|p| p.is_err()).count();
            for e in parsed.iter().filter_map(|p| p.as_ref().err()).take(3) {
                tracing::warn!(serial = %ctx.serial, error = %e, "push record not stored (kept in the journal)");
            }
            let records: Vec<parse::AttLine> = parsed.into_iter().filter_map(Result::ok).collect();
            let started = Instant::now();
            let stats = match ingest::store(state, device, &records).await {
                Ok(s) => s,
                Err(ingest::Error::Store(e)) => return Err(e),
                Err(e @ ingest::Error::TimeZone { .. }) => {
                    tracing::error!(serial = %ctx.serial, error = %e, "push upload not stored");
                    return Ok((reply::text(StatusCode::SERVICE_UNAVAILABLE, "ERROR"), format!("error: {e}")));
                }
            };
            let outcome = format!(
                "ok: {} lines, {} records, {} new, {} unreadable",
                lines.len(),
                records.len(),
                stats.inserted,
                bad
            );
            // After the commit, and independent of each other: the terminal's stamp, the sync history and the
            // journal's outcome (written again by `handle` should the stamp fail).
            let stamp = async {
                match ctx.query.value("stamp").or_else(|| ctx.query.value("attlogstamp")) {
                    Some(stamp) => {
                        let stamp: String = stamp.chars().take(64).collect();
                        state.store.set_push_stamp(&ctx.serial, StampTable::AttLog, &stamp).await
                    }
                    None => Ok(()),
                }
            };
            let history = async {
                if stats.inserted > 0 {
                    record_upload(state, device, stats.inserted, lines.len(), started.elapsed()).await;
                }
            };
            let (stamp, (), ()) = tokio::join!(stamp, history, record_outcome(state, ctx, &outcome));
            stamp?;
            let reply = if table == "rtlog" { reply::ok() } else { reply::ok_n(lines.len()) };
            Ok((reply, outcome))
        }
        "operlog" | "userinfo" => {
            let lines: Vec<&str> = parse::lines(&text).collect();
            let users: Vec<parse::UserLine> = lines
                .iter()
                .filter_map(|l| match parse::oper_line(l) {
                    parse::OperLine::User(u) => Some(u),
                    parse::OperLine::Other(_) => None,
                })
                .collect();
            if !users.is_empty() {
                ingest::upsert_users(state, device, &users).await?;
            }
            if let Some(stamp) = ctx.query.value("stamp").or_else(|| ctx.query.value("opstamp")) {
                state
                    .store
                    .set_push_stamp(&ctx.serial, StampTable::OperLog, &stamp.chars().take(64).collect::<String>())
                    .await?;
            }
            Ok((reply::ok_n(lines.len()), format!("ok: {} lines, {} users", lines.len(), users.len())))
        }
        "options" => {
            merge_info(state, terminal, parse::key_values(&text, ',')).await?;
            Ok((reply::ok(), "ok: options stored".into()))
        }
        "tabledata" => {
            let name: String =
                ctx.query.value("tablename").unwrap_or("data").chars().filter(char::is_ascii_alphanumeric).collect();
            let n = parse::lines(&text).count();
            Ok((reply::text(StatusCode::OK, format!("{name}={n}")), format!("ok: {n} lines journaled")))
        }
        _ => Ok((reply::ok(), format!("ok: table {table:?} journaled"))),
    }
}

/// A push upload that stored rows is a sync in the history, as a pull sync is.
async fn record_upload(state: &AppState, device: &Device, inserted: u64, lines: usize, took: Duration) {
    let attempt = NewSyncAttempt {
        device_id: device.id,
        last_sync_time: Timestamp::now(),
        sync_status: SyncStatus::Success,
        records_synced: i32::try_from(inserted).unwrap_or(i32::MAX),
        records_total: Some(i32::try_from(lines).unwrap_or(i32::MAX)),
        error_message: None,
        error_kind: None,
        synced_by_user_id: None,
        sync_duration_ms: Some(i32::try_from(took.as_millis()).unwrap_or(i32::MAX)),
        agent_id: None,
    };
    if let Err(error) = state.store.record_sync(&attempt).await {
        tracing::warn!(device_id = %device.id, %error, "cannot record a push upload in the sync history");
    }
}

/// Merges reported key=value pairs into the terminal's stored info (a JSON object).
async fn merge_info(state: &AppState, terminal: &PushTerminal, pairs: Vec<(String, String)>) -> Result<(), StoreError> {
    if pairs.is_empty() {
        return Ok(());
    }
    let mut info: serde_json::Map<String, serde_json::Value> =
        terminal.info.as_deref().and_then(|s| serde_json::from_str(s).ok()).unwrap_or_default();
    for (k, v) in pairs.into_iter().take(200) {
        let k: String = k.chars().filter(|c| !c.is_control()).take(64).collect();
        let v: String = v.chars().filter(|c| !c.is_control()).take(256).collect();
        info.insert(k, serde_json::Value::String(v));
    }
    let text = serde_json::Value::Object(info).to_string();
    state.store.set_push_info(&terminal.serial, &text).await
}

/// `GET /iclock/getrequest`: INFO is stored; a known terminal gets its due commands, a quarantined one `OK`.
async fn poll(
    state: &AppState,
    ctx: &Ctx,
    terminal: &PushTerminal,
    identity: &Identity,
) -> Result<Handled, StoreError> {
    if let Some(info) = ctx.query.get("info") {
        merge_info(state, terminal, parse::poll_info(info)).await?;
    }
    let Identity::Known(device) = identity else {
        return Ok((reply::ok(), "quarantined: no commands".into()));
    };
    let due = state.store.take_push_commands(device.id, &state.config.push.take_policy()).await?;
    let (send, refused): (Vec<PushCommand>, Vec<PushCommand>) =
        due.into_iter().partition(|c| commands::allowed(&c.command));
    for c in refused {
        tracing::error!(device_id = %device.id, command_id = c.id, "queued command is not on the allow-list; not sent");
        state
            .store
            .finish_push_command(
                device.id,
                c.id,
                crate::store::CommandStatus::Failed,
                None,
                Some("not on the allow-list"),
            )
            .await?;
    }
    let outcome = if send.is_empty() {
        "ok: no commands".to_owned()
    } else {
        format!("ok: sent commands {}", send.iter().map(|c| c.id.to_string()).collect::<Vec<_>>().join(","))
    };
    Ok((reply::commands(&send), outcome))
}

/// `POST /iclock/devicecmd`: results matched by id (and device); `OK` whatever they say.
async fn results(
    state: &AppState,
    device: &Device,
    terminal: &PushTerminal,
    body: &Bytes,
) -> Result<Handled, StoreError> {
    let text = text_of(terminal, body);
    let results = parse::cmd_results(&text);
    let mut matched = 0;
    for r in &results {
        let Some(id) = r.id else { continue };
        let ret = r.ret;
        let result_text = (!r.extras.is_empty()).then(|| {
            let mut s = r.extras.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("\n");
            s.truncate(s.char_indices().nth(16 * 1024).map_or(s.len(), |(i, _)| i));
            s.replace('\0', "")
        });
        let cmd_kind =
            state.store.list_push_commands(device.id, 200).await?.into_iter().find(|c| c.id == id).map(|c| c.kind);
        // DATA QUERY answers -1 when the window holds no record: done, nothing to upload.
        let ok = match ret {
            Some(0) => true,
            Some(-1) if cmd_kind.as_deref() == Some("reupload") => true,
            Some(n) if n > 0 && cmd_kind.as_deref() == Some("reupload") => true,
            _ => false,
        };
        let status = if ok { crate::store::CommandStatus::Ok } else { crate::store::CommandStatus::Failed };
        match state.store.finish_push_command(device.id, id, status, ret, result_text.as_deref()).await? {
            Some(c) => {
                matched += 1;
                tracing::info!(device_id = %device.id, command_id = c.id, kind = %c.kind, status = %c.status, return_code = ?ret, "push command finished");
                if c.kind == "info" && ok {
                    merge_info(state, terminal, r.extras.iter().filter(|(k, _)| k != "content").cloned().collect())
                        .await?;
                }
            }
            None => {
                tracing::debug!(device_id = %device.id, command_id = id, "result for an unknown or finished command")
            }
        }
    }
    Ok((reply::ok(), format!("ok: {} results, {matched} matched", results.len())))
}

/// Queues a command for a push device (admin routes, the seed's sync): rendered and checked first.
pub async fn queue(
    state: &AppState,
    device: &Device,
    command: &Command,
    by: Option<&str>,
) -> Result<PushCommand, QueueError> {
    if device.kind != DeviceKind::Push {
        return Err(QueueError::NotPush);
    }
    let text = command.render()?;
    let queued = state.store.queue_push_command(device.id, command.kind(), &text, by).await?;
    tracing::info!(device_id = %device.id, command_id = queued.id, kind = %queued.kind, "push command queued");
    Ok(queued)
}

/// Why a command was not queued.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("commands go only to push devices")]
    NotPush,
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// When the push device last called, if ever.
pub async fn last_seen(state: &AppState, device: &Device) -> Result<Option<Timestamp>, StoreError> {
    let Some(serial) = &device.serial_number else { return Ok(None) };
    Ok(state.store.get_push_terminal(serial).await?.map(|t| t.last_seen))
}

/// Whether a push device called within its expected interval.
pub async fn reachable(state: &AppState, device: &Device) -> Result<bool, StoreError> {
    Ok(last_seen(state, device).await?.is_some_and(|t| called_within(state, t)))
}

/// Whether a call at `at` is recent enough for the terminal to count as reachable.
pub fn called_within(state: &AppState, at: Timestamp) -> bool {
    let within =
        jiff::SignedDuration::try_from(state.config.push.reachable_within()).unwrap_or(jiff::SignedDuration::MAX);
    Timestamp::now().duration_since(at) <= within
}

/// The seed's sync-attendance for a push terminal: it uploads by itself, so this queues a re-upload of the last
/// [`PushConfig::sync_window`] (`DATA QUERY ATTLOG`) when the terminal is polling, and reports what is stored.
/// Recorded as a sync attempt like any other; unreachable when the terminal has not polled in time.
pub async fn sync(state: &AppState, device: Device, caller: Option<Uuid>) -> Result<DeviceSync, StoreError> {
    let started = Instant::now();
    let stored = state.store.count_attendance(Some(device.id)).await?;
    let reachable = reachable(state, &device).await?;
    let result = if reachable {
        let zone = crate::ingest::zone(&device.timezone).unwrap_or(jiff::tz::TimeZone::UTC);
        let now = Timestamp::now();
        let window = jiff::SignedDuration::try_from(state.config.push.sync_window)
            .unwrap_or(jiff::SignedDuration::from_hours(24));
        let start = zone.to_datetime(now.checked_sub(window).unwrap_or(now));
        let end = zone.to_datetime(now.checked_add(jiff::SignedDuration::from_hours(24)).unwrap_or(now));
        let trunc = |t: jiff::civil::DateTime| t.date().at(t.hour(), t.minute(), t.second(), 0);
        match queue(
            state,
            &device,
            &Command::Reupload { start: trunc(start), end: trunc(end) },
            caller.map(|c| c.to_string()).as_deref(),
        )
        .await
        {
            Ok(c) => {
                let msg = format!("re-upload of {} to {} queued as command {}", trunc(start), trunc(end), c.id);
                let _ = state.store.add_sync_log(device.id, None, "info", &msg).await;
                Ok(Synced { read: u64::try_from(stored).unwrap_or(0), received: 0, inserted: 0, reset: None })
            }
            Err(QueueError::Store(e)) => return Err(e),
            Err(e) => {
                Err(crate::hub::CallError::Failed { kind: essl_wire::ErrorKind::Protocol, message: e.to_string() })
            }
        }
    } else {
        Err(crate::hub::CallError::Unreachable("the push terminal has not called within its poll interval".into()))
    };
    let duration = started.elapsed();
    let (status, total, message, kind) = match &result {
        Ok(_) => (SyncStatus::Success, Some(i32::try_from(stored).unwrap_or(i32::MAX)), None, None),
        Err(e) => (SyncStatus::Failed, None, Some(e.to_string()), Some(crate::store::model::ErrorKind::Connection)),
    };
    state
        .store
        .record_sync(&NewSyncAttempt {
            device_id: device.id,
            last_sync_time: Timestamp::now(),
            sync_status: status,
            records_synced: 0,
            records_total: total,
            error_message: message,
            error_kind: kind,
            synced_by_user_id: caller,
            sync_duration_ms: Some(i32::try_from(duration.as_millis()).unwrap_or(i32::MAX)),
            agent_id: None,
        })
        .await?;
    Ok(DeviceSync { device, result, duration })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_token_and_cookie() {
        // RFC 1321's test vector for "abc", split across the three parts.
        assert_eq!(session_token("a", "b", "c"), "900150983cd24fb0d6963f7d28e17f72");
        let mut headers = axum::http::HeaderMap::new();
        assert_eq!(cookie_token(&headers), None);
        headers.append(axum::http::header::COOKIE, axum::http::HeaderValue::from_static("lang=en"));
        headers.append(axum::http::header::COOKIE, axum::http::HeaderValue::from_static("a=b; Token = \"abc\" ;c=d"));
        assert_eq!(cookie_token(&headers).as_deref(), Some("abc"));
    }

    #[test]
    fn which_requests_need_the_token() {
        assert!(needs_token("getrequest", &Method::GET) && needs_token("push", &Method::POST));
        assert!(needs_token("cdata", &Method::POST) && needs_token("rtdata", &Method::POST));
        assert!(!needs_token("cdata", &Method::GET) && !needs_token("registry", &Method::POST));
        assert!(!needs_token("rtdata", &Method::GET) && !needs_token("ping", &Method::GET));
    }
}
