//! The dashboard in a real headless Chromium (Debian's, driven over the DevTools protocol by `essl_e2e::browser`)
//! against a real server, agent and simulated terminal: what a person sees and does. Skipped with a `SKIPPED
//! browser:` line when Chromium is missing; `.ci/run` installs it, sets `ESSL_REQUIRE_BROWSER` and fails on skips.

use std::time::Duration;

use essl_e2e::browser::{Page, launch_or_skip};
use essl_e2e::*;
use essl_server::hub::HubEvent;
use essl_zk_sim::generate;
use essl_zk_sim::push::{PushConfig, PushTerminal};
use serde_json::json;
use uuid::Uuid;

/// Long enough for a busy 2-core machine; every wait ends as soon as its condition holds.
const WAIT: Duration = Duration::from_secs(20);

async fn wait(page: &Page, predicate: &str) {
    if let Err(e) = page.wait_for(predicate, WAIT).await {
        let shot = std::env::temp_dir().join(format!("essl-dashboard-{}.png", Uuid::new_v4().simple()));
        let _ = page.screenshot(&shot).await;
        panic!("{e}\n(screenshot: {})", shot.display());
    }
}

/// A JS string literal of `s` (JSON is valid JS).
fn js(s: &str) -> String {
    json!(s).to_string()
}

async fn log_in(page: &Page, server: &Server, user: &str, password: &str) {
    page.goto(&server.url("/")).await.expect("the page loads");
    wait(page, "!document.querySelector('#login-form').closest('[hidden]')").await;
    page.fill("#login-username", user).await.expect("user name");
    page.fill("#login-password", password).await.expect("password");
    page.click("#login-submit").await.expect("submit");
}

async fn text(page: &Page, selector: &str) -> String {
    let v = page.eval(&format!("document.querySelector({})?.textContent ?? ''", js(selector))).await.expect("eval");
    v.as_str().unwrap_or_default().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_devices_sync_and_cached_data_live() {
    let Some(browser) = launch_or_skip("agents_devices_sync_and_cached_data_live").await else { return };
    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let server = Server::start(&db).await;
    let fixture = generate::generate(8, 150, 11);
    let sim = terminal(&fixture).await;
    let device = server.add_device("Front door", sim.addr, "HQ").await;
    let (agent_id, token) = server.add_agent("front-desk-pc", "HQ").await;

    let page = browser.new_page().await.expect("page");
    log_in(&page, &server, ADMIN_USER, PASSWORD).await;
    wait(&page, "document.querySelector('#whoami').textContent.includes('admin')").await;
    wait(&page, "document.querySelector('#live')?.dataset.state === 'open'").await;

    // Agents: offline until it connects, then connected without a reload.
    page.click("a[data-nav='agents']").await.expect("agents tab");
    let row = format!("tr[data-agent-id='{agent_id}']");
    wait(&page, &format!("document.querySelector(\"{row} [data-field=status]\")?.textContent.trim() === 'offline'"))
        .await;
    let agent = Agent::start(&server, &token);
    wait(&page, &format!("document.querySelector(\"{row} [data-field=status]\")?.textContent.trim() === 'connected'"))
        .await;
    wait_reachable(&server, &device, &agent_id).await;

    // Nothing stored yet (the agent's scheduled sync is minutes away): Sync walks checking, syncing, completed,
    // and stores the terminal's 150 records.
    page.click("a[data-nav='devices']").await.expect("devices tab");
    let drow = format!("[data-device-id='{device}']");
    wait(&page, &format!("document.querySelector(\"{drow} [data-field=records]\")?.textContent.trim() === '0'")).await;
    // Record every state the indicator passes through.
    page.eval(&format!(
        "window.__states = []; new MutationObserver(() => {{ const s = document.querySelector(\"{drow} \
         [data-sync-state]\")?.dataset.syncState; if (s && window.__states.at(-1) !== s) window.__states.push(s); }})\
         .observe(document.body, {{ subtree: true, attributes: true, attributeFilter: ['data-sync-state'] }}); true"
    ))
    .await
    .expect("observer");
    page.click(&format!("{drow} button[data-action='sync']")).await.expect("sync");
    wait(&page, &format!("document.querySelector(\"{drow} [data-sync-state]\").dataset.syncState === 'completed'"))
        .await;
    let states = page.eval("window.__states").await.expect("states");
    assert_eq!(states, json!(["checking", "syncing", "completed"]), "the indicator's states");
    assert_eq!(text(&page, &format!("{drow} [data-field='synced-count']")).await, "150");
    let panel = text(&page, &format!("{drow} [data-sync-state]")).await;
    assert!(panel.contains("150 records read from the terminal"), "{panel}");
    wait(&page, &format!("document.querySelector(\"{drow} [data-field=records]\")?.textContent.trim() === '150'"))
        .await;

    // A punch on the terminal: the count goes up without a reload (realtime -> database -> event stream).
    sim.terminal.punch(2, 1, 0);
    wait(&page, &format!("document.querySelector(\"{drow} [data-field=records]\")?.textContent.trim() === '151'"))
        .await;

    // The terminal goes away: Sync shows the cached data with the right figures.
    sim.stop().await;
    page.eval("window.__states = []; true").await.expect("reset");
    page.click(&format!("{drow} button[data-action='sync']")).await.expect("sync again");
    wait(&page, &format!("document.querySelector(\"{drow} [data-sync-state]\").dataset.syncState === 'cached'")).await;
    let states = page.eval("window.__states").await.expect("states");
    assert_eq!(states.as_array().and_then(|a| a.last()), Some(&json!("cached")), "{states}");
    assert!(states.as_array().is_some_and(|a| a.contains(&json!("checking"))), "checking came first: {states}");
    let stored = server.state.store.count_attendance(Some(device.parse().expect("uuid"))).await.expect("count");
    assert_eq!(stored, 151);
    assert_eq!(text(&page, &format!("{drow} [data-field='cached-count']")).await, "151");
    assert_eq!(text(&page, &format!("{drow} [data-field='minutes-since']")).await, "0");
    assert_ne!(text(&page, &format!("{drow} [data-field='last-sync']")).await, "never");
    let panel = text(&page, &format!("{drow} [data-sync-state]")).await;
    assert!(panel.contains("Tip"), "the cached state carries the tip: {panel}");

    // History lists both attempts.
    page.click("a[data-nav='history']").await.expect("history tab");
    wait(&page, "document.querySelectorAll('tr[data-sync-id]').length >= 2").await;

    // The agent dies: it shows offline without a reload.
    page.click("a[data-nav='agents']").await.expect("agents tab");
    agent.kill();
    wait(&page, &format!("document.querySelector(\"{row} [data-field=status]\")?.textContent.trim() === 'offline'"))
        .await;

    let problems = page.console_problems();
    assert!(problems.is_empty(), "console problems: {problems:#?}");
    drop(page);
    browser.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_token_is_shown_once_with_its_install_command() {
    let Some(browser) = launch_or_skip("an_agent_token_is_shown_once_with_its_install_command").await else { return };
    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let server = Server::start(&db).await;
    let page = browser.new_page().await.expect("page");
    log_in(&page, &server, ADMIN_USER, PASSWORD).await;
    wait(&page, "!document.querySelector('#nav-admin-item')?.hidden").await;
    page.click("a[data-nav='admin']").await.expect("admin tab");
    page.fill("#token-name", "branch-pc").await.expect("name");
    page.fill("#token-site", "Branch").await.expect("site");
    page.click("#token-create").await.expect("create");
    wait(&page, "(document.querySelector('#token-value')?.textContent || '').includes('essla_')").await;
    let token = text(&page, "#token-value").await;
    assert!(token.starts_with("essla_"), "{token}");
    let install = text(&page, "#token-install").await;
    let ws = format!("ws://{}/agent/ws", server.addr);
    assert!(install.contains(&token) && install.contains("service install") && install.contains(&ws), "{install}");

    // The token works: an agent connects with it, and the list shows it connected.
    let agent = Agent::start(&server, &token);
    let agents = server.get("/api/agents").await.1;
    let id = agents["items"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["name"] == "branch-pc"))
        .and_then(|a| a["id"].as_str())
        .expect("the new agent is listed")
        .to_owned();
    page.click("a[data-nav='agents']").await.expect("agents tab");
    wait(
        &page,
        &format!("document.querySelector(\"tr[data-agent-id='{id}'] [data-field=status]\")?.textContent.trim() === 'connected'"),
    )
    .await;

    // Once dismissed it is gone for good: not in the page, not after a reload.
    page.click("a[data-nav='admin']").await.expect("admin tab");
    page.click("#token-dismiss").await.expect("dismiss");
    wait(&page, "!document.querySelector('#token-once')").await;
    let contains = format!("document.documentElement.outerHTML.includes({})", js(&token));
    assert_eq!(page.eval(&contains).await.expect("eval"), json!(false));
    page.goto(&server.url("/#/admin")).await.expect("reload");
    wait(&page, "document.querySelector('#whoami').textContent.includes('admin')").await;
    assert_eq!(page.eval(&contains).await.expect("eval"), json!(false));

    // Revoke it from the list (the confirmation is accepted): the agent is disconnected.
    page.click(&format!("button[data-action='revoke'][data-agent-id='{id}']")).await.expect("revoke");
    page.click("a[data-nav='agents']").await.expect("agents tab");
    wait(
        &page,
        &format!(
            "document.querySelector(\"tr[data-agent-id='{id}'] [data-field=status]\")?.textContent.trim() === 'revoked'"
        ),
    )
    .await;
    assert_eq!(page.dialogs().len(), 1, "{:?}", page.dialogs());
    let problems = page.console_problems();
    assert!(problems.is_empty(), "console problems: {problems:#?}");
    agent.stop().await;
    drop(page);
    browser.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_names_phone_width_keyboard_and_attendance() {
    let Some(browser) = launch_or_skip("hostile_names_phone_width_keyboard_and_attendance").await else { return };
    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let server = Server::start(&db).await;
    let fixture = generate::generate(5, 40, 3);
    let sim = terminal(&fixture).await;
    // Names are untrusted: a terminal's or an admin's typo must never become markup or script.
    let evil_device = "<img src=x onerror=\"window.__xss=1\">Door";
    let evil_agent = "\"><svg onload=window.__xss=2>";
    let device = server.add_device(evil_device, sim.addr, "HQ").await;
    let (agent_id, token) = server.add_agent(evil_agent, "HQ").await;
    let agent = Agent::start(&server, &token);
    wait_reachable(&server, &device, &agent_id).await;

    let page = browser.new_page().await.expect("page");
    page.set_viewport(375, 740, true).await.expect("phone");
    log_in(&page, &server, STAFF_USER, PASSWORD).await;
    wait(&page, "document.querySelector('#whoami').textContent.includes('staff')").await;
    assert_eq!(page.eval("!!document.querySelector('#nav-admin-item')?.hidden").await.expect("eval"), json!(true));

    for route in ["agents", "devices", "history", "attendance"] {
        page.goto(&server.url(&format!("/#/{route}"))).await.expect("route");
        wait(&page, &format!("!document.querySelector('a[data-nav={route}]').closest('[hidden]')")).await;
        // Let the lists load, then nothing may stick out sideways.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let fits = page.eval("document.documentElement.scrollWidth <= window.innerWidth + 1").await.expect("eval");
        assert_eq!(fits, json!(true), "{route} scrolls sideways at 375 px");
    }
    page.goto(&server.url("/#/devices")).await.expect("devices");
    let drow = format!("[data-device-id='{device}']");
    wait(&page, &format!("document.querySelector(\"{drow} [data-field=name]\")?.textContent === {}", js(evil_device)))
        .await;
    page.goto(&server.url("/#/agents")).await.expect("agents");
    wait(
        &page,
        &format!(
            "document.querySelector(\"tr[data-agent-id='{agent_id}']\")?.textContent.includes({})",
            js(evil_agent)
        ),
    )
    .await;
    assert_eq!(page.eval("window.__xss ?? null").await.expect("eval"), json!(null), "a name ran as script");
    assert_eq!(page.eval("document.querySelectorAll('img[src=x], svg[onload]').length").await.expect("eval"), json!(0));

    // Keyboard only: Tab to the device's Sync button, Enter.
    page.goto(&server.url("/#/devices")).await.expect("devices");
    wait(&page, &format!("!!document.querySelector(\"{drow} button[data-action=sync]\")")).await;
    let target = format!("document.activeElement === document.querySelector(\"{drow} button[data-action=sync]\")");
    let mut reached = false;
    for _ in 0..60 {
        page.press("Tab").await.expect("tab");
        if page.eval(&target).await.expect("eval") == json!(true) {
            reached = true;
            break;
        }
    }
    assert!(reached, "Tab never reached the Sync button");
    let visible = "getComputedStyle(document.activeElement).outlineStyle !== 'none'";
    assert_eq!(page.eval(visible).await.expect("eval"), json!(true), "the focused button shows focus");
    page.press("Enter").await.expect("enter");
    wait(&page, &format!("document.querySelector(\"{drow} [data-sync-state]\").dataset.syncState === 'completed'"))
        .await;

    // Attendance: filter by one user, and the CSV link downloads exactly that.
    let user = fixture.attendance[0].user_id.clone();
    let expected = fixture.attendance.iter().filter(|r| r.user_id == user).count();
    page.goto(&server.url("/#/attendance")).await.expect("attendance");
    page.fill("#f-user", &user).await.expect("user filter");
    page.press("Enter").await.expect("submit");
    wait(
        &page,
        &format!(
            "[...document.querySelectorAll('tr[data-punch]')].length === {expected} && \
             [...document.querySelectorAll('tr[data-punch]')].every(r => r.textContent.includes({}))",
            js(&user)
        ),
    )
    .await;
    let csv = page
        .eval("fetch(document.querySelector('#attendance-csv').href).then(r => r.text())")
        .await
        .expect("the CSV downloads");
    let lines = csv.as_str().unwrap_or_default().lines().filter(|l| !l.trim().is_empty()).count();
    assert_eq!(lines, expected + 1, "a header and one line per punch:\n{csv}");

    let problems = page.console_problems();
    assert!(problems.is_empty(), "console problems: {problems:#?}");
    agent.stop().await;
    sim.stop().await;
    drop(page);
    browser.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_login_and_expired_session() {
    let Some(browser) = launch_or_skip("wrong_login_and_expired_session").await else { return };
    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let server = Server::start(&db).await;
    let page = browser.new_page().await.expect("page");
    log_in(&page, &server, ADMIN_USER, "not the password").await;
    wait(&page, "(document.querySelector('#login-error')?.textContent || '').includes('Wrong user name or password')")
        .await;
    // The password field is not left holding the wrong password's text in the page's markup.
    let leaked = page.eval("document.documentElement.outerHTML.includes('not the password')").await.expect("eval");
    assert_eq!(leaked, json!(false));

    page.fill("#login-password", PASSWORD).await.expect("password");
    page.click("#login-submit").await.expect("submit");
    wait(&page, "document.querySelector('#whoami').textContent.includes('admin')").await;
    let cookies = page.cookies().await.expect("cookies");
    let session = cookies.iter().find(|c| c.name == "essl_session").expect("a session cookie");
    assert!(session.http_only, "scripts cannot read the session");
    assert_eq!(session.same_site.as_deref(), Some("Strict"));
    assert_eq!(page.eval("document.cookie.includes('essl_session')").await.expect("eval"), json!(false));

    // The server forgets the session (expiry, or a password change elsewhere): the next action asks to log in.
    let secret = essl_server::auth::token::Secret::new("another good password");
    let hash = essl_server::auth::password::hash_with(&secret, 1_000).expect("hash");
    server.state.store.set_password(ADMIN_USER, &hash).await.expect("password changed");
    page.click("a[data-nav='devices']").await.expect("devices tab");
    wait(&page, "(document.querySelector('#login-error')?.textContent || '').includes('session expired')").await;
    wait(&page, "!document.querySelector('#login-form').closest('[hidden]')").await;
    drop(page);
    browser.close().await;
    server.stop().await;
}

/// Waits until `done` holds (checked every 50 ms), at most [`WAIT`].
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    essl_e2e::poll_until(WAIT, what, async || done()).await;
}

/// The predicate "the text of `selector` is `expected`" (trimmed).
fn text_is(selector: &str, expected: &str) -> String {
    format!("(document.querySelector({})?.textContent ?? '').trim() === {}", js(selector), js(expected))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn push_terminal_claimed_and_its_punches_live() {
    let Some(browser) = launch_or_skip("push_terminal_claimed_and_its_punches_live").await else { return };
    const SERIAL: &str = "CEXJ201260042";
    const BACKLOG: usize = 400;
    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let server = Server::start(&db).await;
    // A terminal set to "Cloud Server" with this server's address: unknown here, so quarantined; it keeps its
    // backlog and tries again.
    let mut config = PushConfig::new(server.addr, SERIAL);
    config.min_delay = Duration::from_millis(50);
    config.initial_error_delay = Duration::from_millis(500);
    config.timeout = Duration::from_secs(5);
    config.batch = 50;
    let terminal = PushTerminal::start(&generate::generate(6, BACKLOG, 5), config);
    wait_until("the terminal was turned away", || terminal.stats().failures >= 1).await;

    let page = browser.new_page().await.expect("page");
    log_in(&page, &server, ADMIN_USER, PASSWORD).await;
    wait(&page, "!document.querySelector('#nav-admin-item')?.hidden").await;
    wait(&page, "document.querySelector('#live')?.dataset.state === 'open'").await;

    // Admin: the serial is listed, quarantined, with the dialect of its handshake.
    page.click("a[data-nav='admin']").await.expect("admin tab");
    let prow = format!("tr[data-push-serial='{SERIAL}']");
    wait(&page, &text_is(&format!("{prow} [data-field=push-state]"), "quarantined")).await;
    let listed = text(&page, &prow).await;
    assert!(listed.contains("att"), "the dialect of its handshake: {listed}");
    assert_eq!(server.state.store.count_attendance(None).await.expect("count"), 0, "nothing stored while quarantined");

    // Claim it through the form (a cookie session: the request carries the CSRF token, or it would be refused).
    page.click(&format!("{prow} button[data-action=claim]")).await.expect("claim");
    wait(&page, "!document.querySelector('#claim-form').hidden").await;
    assert_eq!(text(&page, "#claim-serial").await, SERIAL);
    page.fill("#claim-name", "Gate <b>B</b>").await.expect("name");
    page.fill("#claim-site", "HQ").await.expect("site");
    page.fill("#claim-timezone", "Asia/Kolkata").await.expect("time zone");
    page.click("#claim-submit").await.expect("submit");
    wait(&page, &text_is(&format!("{prow} [data-field=push-state]"), "claimed")).await;
    wait(&page, "document.querySelector('#claim-form').hidden").await;
    assert_eq!(
        page.eval(&format!("!!document.querySelector(\"{prow} button[data-action=claim]\")")).await.expect("eval"),
        json!(false)
    );
    let (_, devices) = server.get("/api/devices").await;
    let device = devices["items"]
        .as_array()
        .and_then(|a| a.iter().find(|d| d["serialNumber"] == SERIAL))
        .unwrap_or_else(|| panic!("the claimed device: {devices}"))
        .clone();
    assert_eq!(
        (&device["kind"], &device["site"], &device["timezone"]),
        (&json!("push"), &json!("HQ"), &json!("Asia/Kolkata"))
    );
    let id = device["id"].as_str().expect("id").to_owned();

    // Devices: the push device beside pulled ones, its backlog arriving, then each new punch, without a reload.
    page.click("a[data-nav='devices']").await.expect("devices tab");
    page.eval("window.__samePage = true").await.expect("marker");
    let drow = format!("[data-device-id='{id}']");
    wait(&page, &text_is(&format!("{drow} [data-field=name]"), "Gate <b>B</b>")).await;
    assert_eq!(text(&page, &format!("{drow} [data-field=kind]")).await, "push");
    wait(&page, &text_is(&format!("{drow} [data-field=records]"), &BACKLOG.to_string())).await;
    terminal.punch(1, 1, 0);
    wait(&page, &text_is(&format!("{drow} [data-field=records]"), &(BACKLOG + 1).to_string())).await;
    terminal.punch(2, 15, 1);
    wait(&page, &text_is(&format!("{drow} [data-field=records]"), &(BACKLOG + 2).to_string())).await;
    assert_eq!(page.eval("window.__samePage === true").await.expect("eval"), json!(true), "the page was reloaded");
    // Last contact, dialect, firmware and the command queue (admins see what the push terminals list has).
    let contact = text(&page, &format!("{drow} [data-field=last-contact]")).await;
    assert!(contact.ends_with("ago"), "last contact: {contact}");
    assert_eq!(text(&page, &format!("{drow} [data-field=dialect]")).await, "att");
    wait(&page, &text_is(&format!("{drow} [data-field=firmware]"), "Ver 8.0.4.2-sim")).await;
    assert_eq!(text(&page, &format!("{drow} [data-field=pending-commands]")).await, "0");
    wait_until("the terminal caught up", || terminal.caught_up()).await;
    let stored = server.state.store.count_attendance(Some(id.parse().expect("uuid"))).await.expect("count");
    assert_eq!(stored, terminal.records().len() as i64);

    // The admin page with its push terminals fits a phone.
    page.set_viewport(375, 740, true).await.expect("phone");
    page.click("a[data-nav='admin']").await.expect("admin tab");
    wait(&page, &text_is(&format!("{prow} [data-field=push-state]"), "claimed")).await;
    let fits = page.eval("document.documentElement.scrollWidth <= window.innerWidth + 1").await.expect("eval");
    assert_eq!(fits, json!(true), "the admin page scrolls sideways at 375 px");

    let problems = page.console_problems();
    assert!(problems.is_empty(), "console problems: {problems:#?}");
    terminal.stop().await;

    // The push terminals list carries what the page shows: a command queued for the stopped terminal waits.
    let (status, queued) = server.post(&format!("/api/devices/{id}/commands"), json!({"type": "info"})).await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{queued}");
    let (_, list) = server.get("/api/push/terminals").await;
    let t = list["items"]
        .as_array()
        .and_then(|a| a.iter().find(|t| t["serialNumber"] == SERIAL).cloned())
        .unwrap_or_else(|| panic!("listed: {list}"));
    assert_eq!(
        (&t["status"], &t["deviceName"], &t["dialect"], &t["firmware"], &t["pendingCommands"]),
        (&json!("claimed"), &json!("Gate <b>B</b>"), &json!("att"), &json!("Ver 8.0.4.2-sim"), &json!(1)),
        "{t}"
    );
    drop(page);
    browser.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nearly_full_agent_outbox_shows_a_warning() {
    let Some(browser) = launch_or_skip("a_nearly_full_agent_outbox_shows_a_warning").await else { return };
    const LIMIT: u64 = 256 << 10;
    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let server = Server::start(&db).await;
    let mut events = server.events();
    // The database refuses every punch: what the agent reads stays in its outbox, which fills past 80 %.
    db.refuse_punches(true).await;
    let sim = terminal(&generate::generate(20, 3_000, 7)).await;
    let device = server.add_device("Front door", sim.addr, "HQ").await;
    let (agent_id, token) = server.add_agent("office-pc", "HQ").await;
    let agent = Agent::start_configured(&server.ws_url(), &token, |c| {
        c.collect.outbox_max_bytes = LIMIT;
        c.collect.sync_interval = Duration::from_secs(1);
        c.timing.ack_timeout = Duration::from_secs(1);
        c.probe_interval = Some(Duration::from_millis(300));
    });
    wait_reachable(&server, &device, &agent_id).await;
    let agent_uuid: Uuid = agent_id.parse().expect("uuid");
    wait_event(&mut events, WAIT, |e| {
        matches!(e, HubEvent::OutboxFill { agent_id, bytes, limit_bytes }
            if *agent_id == agent_uuid && *limit_bytes == LIMIT && *bytes * 100 >= LIMIT * 80)
    })
    .await;

    // A page opened now shows it from the agents list (the fill no longer changes, so no event brings it).
    let page = browser.new_page().await.expect("page");
    log_in(&page, &server, STAFF_USER, PASSWORD).await;
    wait(&page, "document.querySelector('#live')?.dataset.state === 'open'").await;
    let row = format!("tr[data-agent-id='{agent_id}']");
    wait(&page, &format!("!!document.querySelector(\"{row} [data-field=outbox-warning]\")")).await;
    let warning = text(&page, &format!("{row} [data-field=outbox-warning]")).await;
    let percent: u64 = warning
        .strip_prefix("outbox ")
        .and_then(|w| w.strip_suffix("% full"))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the warning's text: {warning}"));
    assert!((80..=100).contains(&percent), "{warning}");
    let colour = page
        .eval(&format!("getComputedStyle(document.querySelector(\"{row} [data-field=outbox-warning]\")).color"))
        .await
        .expect("eval");
    assert_eq!(colour, json!("rgb(180, 83, 9)"), "amber");

    // The database takes punches again: the outbox drains and the warning gives way to the plain figure, live.
    page.eval("window.__samePage = true").await.expect("marker");
    db.refuse_punches(false).await;
    wait(
        &page,
        &format!(
            "!document.querySelector(\"{row} [data-field=outbox-warning]\") && \
             (document.querySelector(\"{row} [data-field=outbox]\")?.textContent ?? '').includes(' of 256.0 KB')"
        ),
    )
    .await;
    assert_eq!(page.eval("window.__samePage === true").await.expect("eval"), json!(true), "the page was reloaded");

    let problems = page.console_problems();
    assert!(problems.is_empty(), "console problems: {problems:#?}");
    agent.stop().await;
    sim.stop().await;
    drop(page);
    browser.close().await;
    server.stop().await;
}
