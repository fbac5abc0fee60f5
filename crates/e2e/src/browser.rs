//! A small Chrome DevTools Protocol client for browser tests: Debian's headless Chromium (no downloaded browser, no
//! node), driven over its one DevTools WebSocket.
//!
//! Shape: one task owns the WebSocket; callers register a oneshot under a fresh message id, and that task hands each
//! answer to its id and each event to the page (CDP session) it belongs to. A page keeps what tests ask about later
//! (console problems, dialogs, finished loads), so nothing is missed between two calls. Every wait has a deadline
//! and every failure is a [`BrowserError`] that says what was awaited and what the page showed at the time.

use std::collections::{HashMap, VecDeque};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, ChildStderr, Command};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;

/// Chromium prints its DevTools address within a second or two; 20 s leaves room for a machine busy compiling.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(20);
/// One CDP command: commands answer in milliseconds unless the renderer hangs or died.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
const LOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `click`/`type_text` wait for their element to become usable (default; see `set_action_timeout`).
const ACTION_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);
const SNAPSHOT_BYTES: usize = 2048;

/// The flags of the brief: no sandbox (containers, root), nothing that talks to Google, a fixed window size so
/// layouts do not depend on the headless default (800x600).
const FLAGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--mute-audio",
    "--window-size=1280,800",
    "--remote-debugging-port=0",
];

#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    #[error("could not start chromium at {path}: {source}")]
    Spawn { path: PathBuf, source: std::io::Error },
    #[error("chromium printed no DevTools address within {waited:?}; the end of its stderr:\n{stderr}")]
    NoDevTools { waited: Duration, stderr: String },
    #[error("chromium offered DevTools at {0}, which is not on 127.0.0.1; refusing to connect")]
    NotLoopback(String),
    #[error("could not connect to chromium's DevTools at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("the connection to chromium is closed (did it exit or crash?); {method} got no answer")]
    Closed { method: String },
    #[error("chromium did not answer {method} within {waited:?}")]
    NoAnswer { method: String, waited: Duration },
    #[error("{method} failed: {message} (CDP error {code})")]
    Protocol { method: String, code: i64, message: String },
    #[error("unexpected answer to {method}: {answer}")]
    BadAnswer { method: String, answer: String },
    #[error("JavaScript threw while evaluating `{expression}`: {description}")]
    Js { expression: String, description: String },
    #[error("navigation to {url} failed: {reason}")]
    Navigation { url: String, reason: String },
    #[error("timed out after {waited:?} waiting for {what}\n{snapshot}")]
    Timeout { what: String, waited: Duration, snapshot: String },
    #[error("press: unknown key {0:?} (known: Tab, Shift+Tab, Enter, Escape, Backspace, Space, Arrow*, Home, End)")]
    UnknownKey(String),
    #[error("cannot write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// Where the browser is: `ESSL_CHROMIUM` if set, else Debian's `/usr/bin/chromium`.
pub fn chromium_path() -> PathBuf {
    match std::env::var_os("ESSL_CHROMIUM") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from("/usr/bin/chromium"),
    }
}

/// A browser for test `test`, or `None` after a `SKIPPED browser:` line when chromium is not installed (a panic
/// instead when `ESSL_REQUIRE_BROWSER` is set, so CI cannot pass by skipping). A chromium that is installed but
/// does not start is a failure, never a skip.
pub async fn launch_or_skip(test: &str) -> Option<Browser> {
    let path = chromium_path();
    match Browser::launch_at(&path).await {
        Ok(Some(browser)) => Some(browser),
        Ok(None) if std::env::var_os("ESSL_REQUIRE_BROWSER").is_some() => {
            panic!(
                "chromium not found: install Debian's chromium (looked for {}; ESSL_CHROMIUM overrides)",
                path.display()
            )
        }
        Ok(None) => {
            // Written to the process's stdout, not println!: libtest swallows a passing test's println!, and CI
            // greps for this line. The leading newline keeps it at the start of a line under --test-threads=1.
            let _ = writeln!(
                std::io::stdout().lock(),
                "\nSKIPPED browser: {test}: chromium not found at {} (apt-get install chromium, or set ESSL_CHROMIUM)",
                path.display()
            );
            None
        }
        Err(e) => panic!("{test}: chromium is installed but did not start: {e}"),
    }
}

/// A running headless Chromium with a fresh profile; killed and its profile removed on drop.
pub struct Browser {
    conn: Arc<Conn>,
    pump: tokio::task::JoinHandle<()>,
    startup: Duration,
    // Last: dropped after the pump is aborted.
    process: Process,
}

impl Browser {
    /// Starts the browser found by [`chromium_path`]; `Ok(None)` when there is none.
    pub async fn launch() -> Result<Option<Browser>, BrowserError> {
        Self::launch_at(&chromium_path()).await
    }

    /// Starts the browser at `path`; `Ok(None)` when no file is there.
    pub async fn launch_at(path: &Path) -> Result<Option<Browser>, BrowserError> {
        if !path.is_file() {
            return Ok(None);
        }
        let started = Instant::now();
        let profile = std::env::temp_dir().join(format!("essl-e2e-chromium-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&profile).map_err(|source| BrowserError::Io { path: profile.clone(), source })?;
        let spawned = Command::new(path)
            .args(FLAGS)
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(source) => {
                let _ = std::fs::remove_dir_all(&profile);
                return Err(BrowserError::Spawn { path: path.to_owned(), source });
            }
        };
        // From here on, any early return kills the process and removes the profile.
        let mut process = Process { child, profile, stderr: Arc::default() };
        let (url_tx, url_rx) = oneshot::channel();
        if let Some(stderr) = process.child.stderr.take() {
            tokio::spawn(drain_stderr(stderr, process.stderr.clone(), url_tx));
        }
        let url = match tokio::time::timeout(LAUNCH_TIMEOUT, url_rx).await {
            Ok(Ok(url)) => url,
            // Timed out, or stderr ended (chromium exited) without the line.
            _ => {
                // Give an exiting chromium's last words a moment to reach the tail.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let stderr = lock(&process.stderr).iter().cloned().collect::<Vec<_>>().join("\n");
                return Err(BrowserError::NoDevTools { waited: started.elapsed(), stderr });
            }
        };
        if !url.starts_with("ws://127.0.0.1:") {
            return Err(BrowserError::NotLoopback(url));
        }
        let remaining = LAUNCH_TIMEOUT.saturating_sub(started.elapsed()).max(Duration::from_secs(1));
        let ws = match tokio::time::timeout(remaining, tokio_tungstenite::connect_async(url.as_str())).await {
            Ok(Ok((ws, _response))) => ws,
            Ok(Err(e)) => return Err(BrowserError::Connect { url, reason: e.to_string() }),
            Err(_) => return Err(BrowserError::Connect { url, reason: format!("no handshake within {remaining:?}") }),
        };
        let (out, out_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared { next_id: AtomicU64::new(1), routes: Mutex::default() });
        let pump = tokio::spawn(pump(ws, out_rx, shared.clone()));
        let conn = Arc::new(Conn { out, shared });
        Ok(Some(Browser { conn, pump, startup: started.elapsed(), process }))
    }

    /// From spawning the process to a connected WebSocket.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// The browser's product string, e.g. `Chrome/156.0.8078.108`.
    pub async fn version(&self) -> Result<String, BrowserError> {
        let v = self.conn.call(None, "Browser.getVersion", json!({})).await?;
        Ok(str_field(&v, "product", "Browser.getVersion")?.to_owned())
    }

    /// A new tab on `about:blank`, with console, log and load reporting on from its first moment.
    pub async fn new_page(&self) -> Result<Page, BrowserError> {
        let created = self.conn.call(None, "Target.createTarget", json!({"url": "about:blank"})).await?;
        let target = str_field(&created, "targetId", "Target.createTarget")?.to_owned();
        let attach = json!({"targetId": target, "flatten": true});
        let attached = self.conn.call(None, "Target.attachToTarget", attach).await?;
        let session = str_field(&attached, "sessionId", "Target.attachToTarget")?.to_owned();
        let state = Arc::new(SessionState::default());
        lock(&self.conn.shared.routes).sessions.insert(session.clone(), state.clone());
        let page = Page {
            conn: self.conn.clone(),
            session,
            target,
            state,
            action_timeout_ms: AtomicU64::new(ACTION_TIMEOUT.as_millis() as u64),
        };
        for method in ["Page.enable", "Runtime.enable", "Log.enable"] {
            page.call(method, json!({})).await?;
        }
        // Lifecycle events carry the loader id, so goto waits for the load of its own navigation, not a late
        // event of the previous document.
        page.call("Page.setLifecycleEventsEnabled", json!({"enabled": true})).await?;
        Ok(page)
    }

    /// Closes the browser politely (it flushes and ends its children), then removes the profile.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.conn.call(None, "Browser.close", json!({}))).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.process.child.wait()).await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

/// The chromium process and its profile directory.
struct Process {
    child: Child,
    profile: PathBuf,
    stderr: Arc<Mutex<VecDeque<String>>>,
}

impl Drop for Process {
    fn drop(&mut self) {
        // SIGKILL, then wait (bounded) so the profile is not removed under a live browser; its zygote and
        // renderers notice their parent is gone and exit within about a second.
        let _ = self.child.start_kill();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(10));
        }
        // A dying child may still create a file in the profile; retry a few times rather than leave it behind.
        for _ in 0..20 {
            match std::fs::remove_dir_all(&self.profile) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => std::thread::sleep(Duration::from_millis(50)),
                _ => break,
            }
        }
    }
}

/// Keeps reading stderr for the life of the process: a full pipe would block chromium. The last lines stay for
/// error messages; the DevTools address goes to `url` once.
async fn drain_stderr(stderr: ChildStderr, tail: Arc<Mutex<VecDeque<String>>>, url: oneshot::Sender<String>) {
    let mut url = Some(url);
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_owned();
        if let Some(at) = text.find("DevTools listening on ")
            && let Some(tx) = url.take()
        {
            let _ = tx.send(text[at + "DevTools listening on ".len()..].trim().to_owned());
        }
        let mut tail = lock(&tail);
        tail.push_back(text);
        if tail.len() > 30 {
            tail.pop_front();
        }
    }
}

type Answer = Result<Value, (i64, String)>;

struct Shared {
    next_id: AtomicU64,
    routes: Mutex<Routes>,
}

#[derive(Default)]
struct Routes {
    closed: bool,
    pending: HashMap<u64, oneshot::Sender<Answer>>,
    sessions: HashMap<String, Arc<SessionState>>,
}

struct Conn {
    out: mpsc::UnboundedSender<String>,
    shared: Arc<Shared>,
}

impl Conn {
    async fn call(&self, session: Option<&str>, method: &str, params: Value) -> Result<Value, BrowserError> {
        let closed = || BrowserError::Closed { method: method.to_owned() };
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut routes = lock(&self.shared.routes);
            // Checked under the same lock the pump takes when it fails everything: no waiter is left behind.
            if routes.closed {
                return Err(closed());
            }
            routes.pending.insert(id, tx);
        }
        if self.out.send(message(id, session, method, params)).is_err() {
            lock(&self.shared.routes).pending.remove(&id);
            return Err(closed());
        }
        match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err((code, message)))) => Err(BrowserError::Protocol { method: method.to_owned(), code, message }),
            Ok(Err(_)) => Err(closed()),
            Err(_) => {
                lock(&self.shared.routes).pending.remove(&id);
                Err(BrowserError::NoAnswer { method: method.to_owned(), waited: COMMAND_TIMEOUT })
            }
        }
    }

    /// A command whose answer nobody waits for (closing a tab from Drop).
    fn fire(&self, session: Option<&str>, method: &str, params: Value) {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let _ = self.out.send(message(id, session, method, params));
    }
}

fn message(id: u64, session: Option<&str>, method: &str, params: Value) -> String {
    let mut msg = json!({"id": id, "method": method, "params": params});
    if let Some(session) = session {
        msg["sessionId"] = json!(session);
    }
    msg.to_string()
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The one task that owns the socket: writes what callers queue, routes what chromium sends.
async fn pump(mut ws: Ws, mut out: mpsc::UnboundedReceiver<String>, shared: Arc<Shared>) {
    loop {
        tokio::select! {
            next = out.recv() => {
                let Some(text) = next else { break };
                if ws.send(Message::text(text)).await.is_err() {
                    break;
                }
            }
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    if let Some(reply) = shared.dispatch(text.as_str())
                        && ws.send(Message::text(reply)).await.is_err()
                    {
                        break;
                    }
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
    let mut routes = lock(&shared.routes);
    routes.closed = true;
    // Dropping the senders wakes every waiter with `Closed` at once instead of after its timeout.
    routes.pending.clear();
}

impl Shared {
    /// Routes one incoming message; returns a message to send back (the answer to a JavaScript dialog).
    fn dispatch(&self, text: &str) -> Option<String> {
        let msg: Value = serde_json::from_str(text).ok()?;
        if let Some(id) = msg.get("id").and_then(Value::as_u64) {
            let waiter = lock(&self.routes).pending.remove(&id)?;
            let answer = match msg.get("error") {
                Some(e) => {
                    let mut text = e["message"].as_str().unwrap_or("(no message)").to_owned();
                    if let Some(data) = e["data"].as_str() {
                        text = format!("{text}: {data}");
                    }
                    Err((e["code"].as_i64().unwrap_or(0), text))
                }
                None => Ok(msg.get("result").cloned().unwrap_or(Value::Null)),
            };
            let _ = waiter.send(answer);
            return None;
        }
        // Events of the browser target itself (no session) are of no interest.
        let session = msg["sessionId"].as_str()?;
        let state = lock(&self.routes).sessions.get(session).cloned()?;
        let reply = state.on_event(msg["method"].as_str()?, &msg["params"])?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        Some(message(id, Some(session), "Page.handleJavaScriptDialog", reply))
    }
}

/// What a page's events leave behind for the test to read.
#[derive(Default)]
struct SessionState {
    problems: Mutex<Vec<String>>,
    dialogs: Mutex<Vec<String>>,
    /// Loader ids whose main document fired `load` (the last few).
    loaded: watch::Sender<VecDeque<String>>,
}

impl SessionState {
    /// Records one event; returns the parameters of a dialog answer when the page opened one.
    fn on_event(&self, method: &str, params: &Value) -> Option<Value> {
        match method {
            "Runtime.consoleAPICalled" => {
                let kind = params["type"].as_str().unwrap_or("");
                if matches!(kind, "error" | "warning" | "assert") {
                    let args = params["args"].as_array().map(Vec::as_slice).unwrap_or_default();
                    let text = args.iter().map(remote_text).collect::<Vec<_>>().join(" ");
                    let frame = &params["stackTrace"]["callFrames"][0];
                    let at = match (frame["url"].as_str(), frame["lineNumber"].as_u64()) {
                        (Some(url), Some(line)) if !url.is_empty() => format!(" (at {url}:{})", line + 1),
                        _ => String::new(),
                    };
                    lock(&self.problems).push(format!("console.{kind}: {text}{at}"));
                }
            }
            "Runtime.exceptionThrown" => {
                let text = exception_text(&params["exceptionDetails"]);
                lock(&self.problems).push(format!("uncaught exception: {text}"));
            }
            "Log.entryAdded" => {
                let entry = &params["entry"];
                let level = entry["level"].as_str().unwrap_or("");
                if matches!(level, "error" | "warning") {
                    let (source, text) =
                        (entry["source"].as_str().unwrap_or("?"), entry["text"].as_str().unwrap_or(""));
                    let url = entry["url"].as_str().map(|u| format!(" ({u})")).unwrap_or_default();
                    lock(&self.problems).push(format!("{level} from {source}: {text}{url}"));
                }
            }
            "Page.lifecycleEvent" if params["name"] == "load" => {
                if let Some(loader) = params["loaderId"].as_str() {
                    self.loaded.send_modify(|ids| {
                        ids.push_back(loader.to_owned());
                        if ids.len() > 32 {
                            ids.pop_front();
                        }
                    });
                }
            }
            "Page.javascriptDialogOpening" => {
                // An open dialog blocks the page's script, so every later evaluate would hang: accept it at once
                // (confirm() is true) and keep the message for the test.
                let (kind, text) =
                    (params["type"].as_str().unwrap_or("dialog"), params["message"].as_str().unwrap_or(""));
                lock(&self.dialogs).push(format!("{kind}: {text}"));
                return Some(json!({"accept": true}));
            }
            "Inspector.targetCrashed" => lock(&self.problems).push("the page's renderer crashed".to_owned()),
            _ => {}
        }
        None
    }
}

/// One tab. Dropping it closes the tab.
pub struct Page {
    conn: Arc<Conn>,
    session: String,
    target: String,
    state: Arc<SessionState>,
    action_timeout_ms: AtomicU64,
}

/// A cookie as the browser stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct Cookie {
    pub name: String,
    pub value: String,
    pub domain: String,
    pub path: String,
    pub http_only: bool,
    pub secure: bool,
    /// `Strict`, `Lax`, `None`, or absent when the server did not say.
    pub same_site: Option<String>,
}

impl Page {
    async fn call(&self, method: &str, params: Value) -> Result<Value, BrowserError> {
        self.conn.call(Some(&self.session), method, params).await
    }

    /// How long `click`, `type_text`, `fill` and `select_option` wait for their element (10 s by default).
    pub fn set_action_timeout(&self, timeout: Duration) {
        self.action_timeout_ms.store(timeout.as_millis() as u64, Ordering::Relaxed);
    }

    fn action_timeout(&self) -> Duration {
        Duration::from_millis(self.action_timeout_ms.load(Ordering::Relaxed))
    }

    /// Navigates and waits for the new document's `load` event (images, scripts and styles loaded).
    pub async fn goto(&self, url: &str) -> Result<(), BrowserError> {
        let nav = self.call("Page.navigate", json!({"url": url})).await?;
        if let Some(reason) = nav["errorText"].as_str().filter(|r| !r.is_empty()) {
            return Err(BrowserError::Navigation { url: url.to_owned(), reason: reason.to_owned() });
        }
        let Some(loader) = nav["loaderId"].as_str() else {
            // A same-document navigation (only the #fragment changed): there is no new load to wait for.
            return self.wait_for("document.readyState === 'complete'", LOAD_TIMEOUT).await.map(drop);
        };
        let mut loaded = self.state.loaded.subscribe();
        match tokio::time::timeout(LOAD_TIMEOUT, loaded.wait_for(|ids| ids.iter().any(|id| id == loader))).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(BrowserError::Closed { method: "Page.navigate".to_owned() }),
            Err(_) => Err(self.timeout_error(format!("the load event of {url}"), LOAD_TIMEOUT, None).await),
        }
    }

    /// Evaluates `js` in the page (awaiting a promise) and returns its value as JSON (`undefined` is `null`; NaN,
    /// Infinity and BigInts are strings). A thrown exception is `BrowserError::Js` with its description.
    pub async fn eval(&self, js: &str) -> Result<Value, BrowserError> {
        Ok(by_value(&self.evaluate(js).await?))
    }

    /// The RemoteObject of an evaluation.
    async fn evaluate(&self, js: &str) -> Result<Value, BrowserError> {
        let params = json!({"expression": js, "returnByValue": true, "awaitPromise": true, "userGesture": true});
        let mut answer = self.call("Runtime.evaluate", params).await?;
        if let Some(details) = answer.get("exceptionDetails") {
            return Err(BrowserError::Js { expression: shorten(js, 200), description: exception_text(details) });
        }
        Ok(answer["result"].take())
    }

    /// Polls the expression every 50 ms until it is truthy and returns that value. While the page is loading, an
    /// expression that throws (an element not there yet) counts as false. On timeout the error carries the
    /// predicate, the last error, the page's URL and text and the console problems so far.
    pub async fn wait_for(&self, predicate: &str, timeout: Duration) -> Result<Value, BrowserError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last_error = None;
        // However short the timeout, the predicate gets one full evaluation: one already true must not fail
        // because a busy machine took longer than the timeout to answer.
        let mut attempt_deadline = deadline.max(tokio::time::Instant::now() + Duration::from_secs(2));
        loop {
            match tokio::time::timeout_at(attempt_deadline, self.evaluate(predicate)).await {
                Ok(Ok(obj)) if truthy(&obj) => return Ok(by_value(&obj)),
                Ok(Ok(_)) => last_error = None,
                Ok(Err(e @ BrowserError::Closed { .. })) => return Err(e),
                Ok(Err(e)) => last_error = Some(e.to_string()),
                Err(_) => break,
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                break;
            }
            tokio::time::sleep(POLL.min(deadline - now)).await;
            attempt_deadline = deadline;
        }
        Err(self.timeout_error(format!("`{}` to be truthy", shorten(predicate, 500)), timeout, last_error).await)
    }

    /// Clicks the element's center with real mouse events (trusted, hit-tested like a user's click), after
    /// waiting until it exists, is enabled, has a size, is not covered and has stopped moving.
    pub async fn click(&self, selector: &str) -> Result<(), BrowserError> {
        let (x, y) = self.actionable_point(selector).await?;
        let events = [("mouseMoved", "none", 0, 0), ("mousePressed", "left", 1, 1), ("mouseReleased", "left", 0, 1)];
        for (kind, button, buttons, clicks) in events {
            let params =
                json!({"type": kind, "x": x, "y": y, "button": button, "buttons": buttons, "clickCount": clicks});
            self.call("Input.dispatchMouseEvent", params).await?;
        }
        Ok(())
    }

    async fn actionable_point(&self, selector: &str) -> Result<(f64, f64), BrowserError> {
        let js = format!("({CLICK_PROBE})({})", json!(selector));
        let timeout = self.action_timeout();
        let deadline = Instant::now() + timeout;
        let mut previous: Option<(f64, f64)> = None;
        let mut problem: String;
        loop {
            match self.eval(&js).await {
                Ok(v) => match (v["x"].as_f64(), v["y"].as_f64()) {
                    // Two equal positions in a row: not in the middle of a transition.
                    (Some(x), Some(y)) if previous == Some((x, y)) => return Ok((x, y)),
                    (Some(x), Some(y)) => {
                        previous = Some((x, y));
                        problem = "it is still moving".to_owned();
                    }
                    _ => {
                        previous = None;
                        problem = v["problem"].as_str().unwrap_or("unexpected probe answer").to_owned();
                    }
                },
                Err(e @ BrowserError::Closed { .. }) => return Err(e),
                Err(e) => problem = e.to_string(),
            }
            if Instant::now() + POLL > deadline {
                let what = format!("{selector} to be clickable (last check: {problem})");
                return Err(self.timeout_error(what, timeout, None).await);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Focuses the element, puts the caret at the end and inserts `text` as typing would (input events fire).
    pub async fn type_text(&self, selector: &str, text: &str) -> Result<(), BrowserError> {
        self.focus(selector, false).await?;
        self.call("Input.insertText", json!({"text": text})).await.map(drop)
    }

    /// Like `type_text`, but replaces what the field holds.
    pub async fn fill(&self, selector: &str, text: &str) -> Result<(), BrowserError> {
        self.focus(selector, true).await?;
        if text.is_empty() {
            return self.press("Backspace").await;
        }
        self.call("Input.insertText", json!({"text": text})).await.map(drop)
    }

    async fn focus(&self, selector: &str, select_all: bool) -> Result<(), BrowserError> {
        let js = format!("({FOCUS_PROBE})({}, {select_all})", json!(selector));
        let predicate = format!("{js}.ok");
        match self.wait_for(&predicate, self.action_timeout()).await {
            Ok(_) => Ok(()),
            Err(BrowserError::Timeout { waited, snapshot, .. }) => {
                let problem = self.eval(&format!("{js}.problem")).await.unwrap_or_default();
                let what = format!("{selector} to take focus (last check: {})", problem.as_str().unwrap_or("?"));
                Err(BrowserError::Timeout { what, waited, snapshot })
            }
            Err(e) => Err(e),
        }
    }

    /// Chooses the option with value `value` of a `<select>` and fires `input` and `change` as a user's pick does.
    pub async fn select_option(&self, selector: &str, value: &str) -> Result<(), BrowserError> {
        let js = format!(
            "((sel, value) => {{ const el = document.querySelector(sel);
               if (!el || !Array.from(el.options || []).some(o => o.value === value)) return false;
               el.value = value; el.dispatchEvent(new Event('input', {{bubbles: true}}));
               el.dispatchEvent(new Event('change', {{bubbles: true}})); return true; }})({}, {})",
            json!(selector),
            json!(value)
        );
        self.wait_for(&js, self.action_timeout()).await.map(drop)
    }

    /// Presses and releases a key in the focused element: Tab, Shift+Tab, Enter, Escape, Backspace, Space,
    /// ArrowUp/Down/Left/Right, Home, End.
    pub async fn press(&self, key: &str) -> Result<(), BrowserError> {
        let (name, code, vk, text, modifiers) = match key {
            "Tab" => ("Tab", "Tab", 9, None, 0),
            "Shift+Tab" => ("Tab", "Tab", 9, None, 8),
            "Enter" => ("Enter", "Enter", 13, Some("\r"), 0),
            "Escape" => ("Escape", "Escape", 27, None, 0),
            "Backspace" => ("Backspace", "Backspace", 8, None, 0),
            "Space" | " " => (" ", "Space", 32, Some(" "), 0),
            "ArrowLeft" => ("ArrowLeft", "ArrowLeft", 37, None, 0),
            "ArrowUp" => ("ArrowUp", "ArrowUp", 38, None, 0),
            "ArrowRight" => ("ArrowRight", "ArrowRight", 39, None, 0),
            "ArrowDown" => ("ArrowDown", "ArrowDown", 40, None, 0),
            "Home" => ("Home", "Home", 36, None, 0),
            "End" => ("End", "End", 35, None, 0),
            other => return Err(BrowserError::UnknownKey(other.to_owned())),
        };
        let mut down = json!({"type": "rawKeyDown", "key": name, "code": code, "windowsVirtualKeyCode": vk,
            "nativeVirtualKeyCode": vk, "modifiers": modifiers});
        // A key that produces text must be a `keyDown` with that text, or Enter would not submit a form.
        if let Some(text) = text {
            down["type"] = json!("keyDown");
            down["text"] = json!(text);
            down["unmodifiedText"] = json!(text);
        }
        self.call("Input.dispatchKeyEvent", down).await?;
        let up = json!({"type": "keyUp", "key": name, "code": code, "windowsVirtualKeyCode": vk,
            "nativeVirtualKeyCode": vk, "modifiers": modifiers});
        self.call("Input.dispatchKeyEvent", up).await.map(drop)
    }

    /// Emulates a screen of `width` x `height` CSS pixels (`mobile`: a phone's viewport and scrollbars).
    pub async fn set_viewport(&self, width: u32, height: u32, mobile: bool) -> Result<(), BrowserError> {
        let params = json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile});
        self.call("Emulation.setDeviceMetricsOverride", params).await.map(drop)
    }

    /// A PNG of the viewport, for looking at a failure.
    pub async fn screenshot(&self, path: &Path) -> Result<(), BrowserError> {
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"})).await?;
        let data = str_field(&shot, "data", "Page.captureScreenshot")?;
        let png = base64_decode(data).ok_or_else(|| BrowserError::BadAnswer {
            method: "Page.captureScreenshot".to_owned(),
            answer: "data is not base64".to_owned(),
        })?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| BrowserError::Io { path: dir.to_owned(), source })?;
        }
        std::fs::write(path, png).map_err(|source| BrowserError::Io { path: path.to_owned(), source })
    }

    /// Everything the page complained about since it was created: console.error/warn/assert, uncaught exceptions
    /// and rejections, and the browser's own errors and warnings (failed loads, CSP violations...).
    pub fn console_problems(&self) -> Vec<String> {
        lock(&self.state.problems).clone()
    }

    /// The alert/confirm/prompt dialogs the page opened (all accepted), as `type: message`.
    pub fn dialogs(&self) -> Vec<String> {
        lock(&self.state.dialogs).clone()
    }

    /// The cookies the browser would send to the current page.
    pub async fn cookies(&self) -> Result<Vec<Cookie>, BrowserError> {
        let answer = self.call("Network.getCookies", json!({})).await?;
        let list = answer["cookies"].as_array().ok_or_else(|| BrowserError::BadAnswer {
            method: "Network.getCookies".to_owned(),
            answer: shorten(&answer.to_string(), 500),
        })?;
        let text = |c: &Value, k: &str| c[k].as_str().unwrap_or("").to_owned();
        Ok(list
            .iter()
            .map(|c| Cookie {
                name: text(c, "name"),
                value: text(c, "value"),
                domain: text(c, "domain"),
                path: text(c, "path"),
                http_only: c["httpOnly"].as_bool().unwrap_or(false),
                secure: c["secure"].as_bool().unwrap_or(false),
                same_site: c["sameSite"].as_str().map(str::to_owned),
            })
            .collect())
    }

    /// A timeout error with what the page looked like when the wait gave up.
    async fn timeout_error(&self, what: String, waited: Duration, last_error: Option<String>) -> BrowserError {
        let js = "({url: location.href, text: document.body ? document.body.innerText : '(no body yet)'})";
        let page = match tokio::time::timeout(Duration::from_secs(2), self.eval(js)).await {
            Ok(Ok(v)) => format!(
                "--- page {} shows (first 2 KB of its text):\n{}",
                v["url"].as_str().unwrap_or("?"),
                shorten(v["text"].as_str().unwrap_or(""), SNAPSHOT_BYTES)
            ),
            Ok(Err(e)) => format!("--- no snapshot of the page: {e}"),
            Err(_) => "--- no snapshot of the page: it did not answer within 2 s".to_owned(),
        };
        let mut snapshot = page;
        if let Some(e) = last_error {
            snapshot.push_str(&format!("\n--- the last evaluation failed: {e}"));
        }
        let problems = self.console_problems();
        if !problems.is_empty() {
            snapshot.push_str(&format!("\n--- console problems so far:\n{}", problems.join("\n")));
        }
        BrowserError::Timeout { what, waited, snapshot }
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        lock(&self.conn.shared.routes).sessions.remove(&self.session);
        self.conn.fire(None, "Target.closeTarget", json!({"targetId": self.target}));
    }
}

/// Where a click would land, or why it cannot yet: `{x, y}` or `{problem}`.
const CLICK_PROBE: &str = r#"(sel) => {
  const el = document.querySelector(sel);
  if (!el) return {problem: 'no element matches'};
  if (el.disabled) return {problem: 'the element is disabled'};
  el.scrollIntoView({block: 'center', inline: 'center', behavior: 'instant'});
  const r = el.getBoundingClientRect();
  if (r.width < 1 || r.height < 1) return {problem: 'the element has no size (hidden?)'};
  const x = r.left + r.width / 2, y = r.top + r.height / 2;
  const hit = document.elementFromPoint(x, y);
  if (hit === el || el.contains(hit)) return {x, y};
  if (!hit) return {problem: 'its center is outside the viewport'};
  const cls = typeof hit.className === 'string' && hit.className.trim() ? '.' + hit.className.trim().split(/\s+/).join('.') : '';
  return {problem: 'covered by ' + hit.tagName.toLowerCase() + (hit.id ? '#' + hit.id : '') + cls};
}"#;

/// Focuses an element (caret at the end, or everything selected): `{ok}` or `{problem}`.
const FOCUS_PROBE: &str = r#"(sel, selectAll) => {
  const el = document.querySelector(sel);
  if (!el) return {problem: 'no element matches'};
  el.scrollIntoView({block: 'center', behavior: 'instant'});
  el.focus();
  if (document.activeElement !== el) return {problem: 'it cannot take focus (disabled, hidden or not focusable?)'};
  if (typeof el.value === 'string') {
    try { if (selectAll) el.select(); else el.setSelectionRange(el.value.length, el.value.length); } catch (e) {}
  }
  return {ok: true};
}"#;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn str_field<'a>(v: &'a Value, key: &str, method: &str) -> Result<&'a str, BrowserError> {
    v[key].as_str().ok_or_else(|| BrowserError::BadAnswer {
        method: method.to_owned(),
        answer: format!("no {key} in {}", shorten(&v.to_string(), 500)),
    })
}

/// The JSON value of a RemoteObject evaluated with `returnByValue`.
fn by_value(obj: &Value) -> Value {
    match (obj.get("value"), obj["unserializableValue"].as_str()) {
        (Some(v), _) => v.clone(),
        (None, Some(u)) => Value::String(u.to_owned()),
        (None, None) => Value::Null,
    }
}

/// JavaScript's truthiness of a RemoteObject.
fn truthy(obj: &Value) -> bool {
    match (obj.get("value"), obj["unserializableValue"].as_str()) {
        (Some(Value::Null), _) => false,
        (Some(Value::Bool(b)), _) => *b,
        (Some(Value::Number(n)), _) => n.as_f64().is_some_and(|f| f != 0.0),
        (Some(Value::String(s)), _) => !s.is_empty(),
        (Some(_), _) => true,
        (None, Some(u)) => !matches!(u, "NaN" | "-0" | "0n" | "-0n"),
        (None, None) => false,
    }
}

/// A console argument as text: strings bare, other values as JSON, objects by their description.
fn remote_text(arg: &Value) -> String {
    match arg.get("value") {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => arg["description"]
            .as_str()
            .or(arg["unserializableValue"].as_str())
            .or(arg["type"].as_str())
            .unwrap_or("?")
            .to_owned(),
    }
}

fn exception_text(details: &Value) -> String {
    let exception = &details["exception"];
    if let Some(d) = exception["description"].as_str() {
        return d.to_owned();
    }
    if let Some(v) = exception.get("value") {
        return format!("{} {v}", details["text"].as_str().unwrap_or("Uncaught"));
    }
    details["text"].as_str().unwrap_or("(no description)").to_owned()
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn shorten(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes more)", &s[..end], s.len() - end)
}

/// Standard base64 (screenshots); `None` on a character outside the alphabet.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            b'\r' | b'\n' => continue,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_known_vectors() {
        assert_eq!(base64_decode("").as_deref(), Some(&b""[..]));
        assert_eq!(base64_decode("Zg==").as_deref(), Some(&b"f"[..]));
        assert_eq!(base64_decode("Zm9vYmFy").as_deref(), Some(&b"foobar"[..]));
        assert_eq!(base64_decode("iVBORw0KGgo=").as_deref(), Some(&b"\x89PNG\r\n\x1a\n"[..]));
        assert_eq!(base64_decode("Zm9v!"), None);
    }

    #[test]
    fn truthiness_follows_javascript() {
        for (obj, expected) in [
            (json!({"type": "undefined"}), false),
            (json!({"type": "object", "subtype": "null", "value": null}), false),
            (json!({"type": "number", "value": 0}), false),
            (json!({"type": "number", "unserializableValue": "NaN"}), false),
            (json!({"type": "string", "value": ""}), false),
            (json!({"type": "string", "value": "x"}), true),
            (json!({"type": "object", "value": {}}), true),
            (json!({"type": "number", "unserializableValue": "Infinity"}), true),
        ] {
            assert_eq!(truthy(&obj), expected, "{obj}");
        }
    }

    #[test]
    fn shorten_cuts_at_a_character_boundary() {
        assert_eq!(shorten("abc", 5), "abc");
        assert!(shorten("ééé", 3).starts_with("é..."));
    }
}
