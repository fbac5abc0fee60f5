//! Tests of the browser harness itself (`essl_e2e::browser`), against a tiny HTTP server written here, so a
//! failing dashboard test can be trusted to be about the dashboard.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use essl_e2e::browser::{Browser, BrowserError, Page, launch_or_skip};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(10);

const PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>harness</title>
<style>
  #covered-wrap { position: relative; }
  #overlay { position: absolute; inset: 0; background: rgba(0,0,0,.3); }
</style></head>
<body>
<p id="out">not clicked</p>
<button id="btn">Click me</button>
<form id="form"><input id="name" autocomplete="off"><button id="submit" type="submit">Send</button></form>
<p id="submitted"></p>
<button id="err">Make trouble</button>
<button id="ask">Ask</button>
<p id="answer"></p>
<p id="keys"></p>
<div id="covered-wrap"><button id="covered">Under the overlay</button><div id="overlay"></div></div>
<select id="pick"><option value="tcp">TCP</option><option value="udp">UDP</option></select>
<p id="picked"></p>
<script>
  let clicks = 0;
  const $ = id => document.getElementById(id);
  $('btn').addEventListener('click', e => {
    clicks++;
    $('out').textContent = 'clicked ' + clicks + (e.isTrusted ? ' trusted' : ' synthetic');
  });
  $('form').addEventListener('submit', e => { e.preventDefault(); $('submitted').textContent = 'hello ' + $('name').value; });
  $('err').addEventListener('click', () => {
    console.error('deliberate console error', 42);
    setTimeout(() => { throw new Error('deliberate uncaught'); }, 0);
  });
  $('ask').addEventListener('click', () => { $('answer').textContent = 'confirmed: ' + confirm('Revoke it?'); });
  document.addEventListener('keydown', e => { $('keys').textContent = e.key + '/' + e.code + '/' + e.keyCode; });
  $('pick').addEventListener('change', e => { $('picked').textContent = 'picked ' + e.target.value; });
</script>
</body></html>"#;

const SLOW_PAGE: &str = r#"<!doctype html><html><head><meta charset="utf-8"><link rel="icon" href="data:,"></head>
<body><p>slow</p><img id="img" src="/slow.svg" alt="slow"></body></html>"#;

const BROKEN_PAGE: &str = r#"<!doctype html><html><head><meta charset="utf-8"><link rel="icon" href="data:,"></head>
<body><p>broken</p><img src="/missing.png" alt="missing"></body></html>"#;

/// Serves the pages above on 127.0.0.1 (one request per connection, which is all a test page needs).
async fn site() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(answer(stream));
        }
    });
    addr
}

async fn answer(mut stream: TcpStream) {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let request = String::from_utf8_lossy(&request);
    let path = request.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let (status, kind, body, extra) = match path.as_str() {
        "/" => (
            "200 OK",
            "text/html; charset=utf-8",
            PAGE,
            "Set-Cookie: harness=yes; HttpOnly; SameSite=Strict; Path=/\r\n",
        ),
        "/slow" => ("200 OK", "text/html; charset=utf-8", SLOW_PAGE, ""),
        "/slow.svg" => {
            // After DOMContentLoaded, before load: goto must wait for this.
            tokio::time::sleep(Duration::from_millis(700)).await;
            ("200 OK", "image/svg+xml", r#"<svg xmlns="http://www.w3.org/2000/svg" width="20" height="10"/>"#, "")
        }
        "/broken" => ("200 OK", "text/html; charset=utf-8", BROKEN_PAGE, ""),
        _ => ("404 Not Found", "text/plain", "not found", ""),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// A browser on the test page, or `None` (skipped) without chromium.
async fn open(test: &str) -> Option<(Browser, Page, SocketAddr)> {
    let browser = launch_or_skip(test).await?;
    let addr = site().await;
    let page = browser.new_page().await.expect("new page");
    page.goto(&format!("http://{addr}/")).await.expect("goto");
    Some((browser, page, addr))
}

fn text_is(selector: &str, text: &str) -> String {
    format!("document.querySelector({}).textContent === {}", json!(selector), json!(text))
}

#[tokio::test]
async fn a_missing_chromium_is_none_not_an_error() {
    let launched = Browser::launch_at(Path::new("/nonexistent/chromium")).await.expect("no error");
    assert!(launched.is_none());
}

#[tokio::test]
async fn click_is_a_real_trusted_click_and_says_why_it_cannot() {
    let Some((browser, page, _)) = open("click_is_a_real_trusted_click_and_says_why_it_cannot").await else { return };
    page.click("#btn").await.expect("click");
    page.wait_for(&text_is("#out", "clicked 1 trusted"), WAIT).await.expect("the click counted, as trusted");
    page.click("#btn").await.expect("click again");
    page.wait_for(&text_is("#out", "clicked 2 trusted"), WAIT).await.expect("one click, one count");

    page.set_action_timeout(Duration::from_millis(500));
    let started = Instant::now();
    let covered = page.click("#covered").await.expect_err("an overlay takes the click");
    assert!(started.elapsed() < Duration::from_secs(5), "the action timeout applies");
    let message = covered.to_string();
    assert!(message.contains("#covered to be clickable") && message.contains("covered by div#overlay"), "{message}");
    assert!(message.contains("Click me"), "the error shows the page's text: {message}");

    let missing = page.click("#nothing").await.expect_err("no such element").to_string();
    assert!(missing.contains("no element matches"), "{missing}");
    browser.close().await;
}

#[tokio::test]
async fn typing_and_enter_submit_a_form_and_select_picks_an_option() {
    let Some((browser, page, _)) = open("typing_and_enter_submit_a_form_and_select_picks_an_option").await else {
        return;
    };
    page.type_text("#name", "Zo").await.expect("type");
    page.type_text("#name", "ë").await.expect("type appends");
    page.press("Enter").await.expect("enter");
    page.wait_for(&text_is("#submitted", "hello Zoë"), WAIT).await.expect("Enter submitted the form");

    page.fill("#name", "Ann").await.expect("fill");
    assert_eq!(page.eval("document.querySelector('#name').value").await.expect("eval"), json!("Ann"));
    page.fill("#name", "").await.expect("fill empty");
    assert_eq!(page.eval("document.querySelector('#name').value").await.expect("eval"), json!(""));

    page.select_option("#pick", "udp").await.expect("select");
    page.wait_for(&text_is("#picked", "picked udp"), WAIT).await.expect("change fired");
    browser.close().await;
}

#[tokio::test]
async fn tab_moves_focus_and_keys_carry_their_codes() {
    let Some((browser, page, _)) = open("tab_moves_focus_and_keys_carry_their_codes").await else { return };
    page.type_text("#name", "").await.expect("focus");
    page.press("Tab").await.expect("tab");
    page.wait_for("document.activeElement.id === 'submit'", WAIT).await.expect("Tab moved focus forward");
    page.press("Shift+Tab").await.expect("shift tab");
    page.wait_for("document.activeElement.id === 'name'", WAIT).await.expect("Shift+Tab moved it back");
    page.press("Escape").await.expect("escape");
    page.wait_for(&text_is("#keys", "Escape/Escape/27"), WAIT).await.expect("Escape's key, code and keyCode");
    page.press("Enter").await.expect("enter");
    page.wait_for(&text_is("#keys", "Enter/Enter/13"), WAIT).await.expect("Enter's key, code and keyCode");
    let unknown = page.press("F13").await.expect_err("unknown key");
    assert!(matches!(unknown, BrowserError::UnknownKey(_)), "{unknown}");
    browser.close().await;
}

#[tokio::test]
async fn console_problems_catch_errors_uncaught_exceptions_and_failed_loads() {
    let Some((browser, page, addr)) = open("console_problems_catch_errors_uncaught_exceptions_and_failed_loads").await
    else {
        return;
    };
    assert_eq!(page.console_problems(), Vec::<String>::new(), "a clean page has none");

    // A throwing evaluation is the caller's error, not a problem of the page.
    let thrown = page.eval("missingFunction()").await.expect_err("ReferenceError");
    assert!(
        matches!(&thrown, BrowserError::Js { description, .. } if description.contains("ReferenceError")),
        "{thrown}"
    );
    let rejected = page.eval("Promise.reject(new Error('nope'))").await.expect_err("rejection");
    assert!(rejected.to_string().contains("nope"), "{rejected}");

    page.click("#err").await.expect("click");
    let deadline = Instant::now() + WAIT;
    while page.console_problems().len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let problems = page.console_problems();
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(problems.iter().any(|p| p.starts_with("console.error: deliberate console error 42")), "{problems:#?}");
    assert!(
        problems.iter().any(|p| p.starts_with("uncaught exception:") && p.contains("deliberate uncaught")),
        "{problems:#?}"
    );

    page.goto(&format!("http://{addr}/broken")).await.expect("goto");
    page.wait_for("document.readyState === 'complete'", WAIT).await.expect("loaded");
    let deadline = Instant::now() + WAIT;
    while page.console_problems().len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let problems = page.console_problems();
    assert!(problems.iter().skip(2).any(|p| p.contains("404")), "a failed load is a problem: {problems:#?}");
    browser.close().await;
}

#[tokio::test]
async fn set_viewport_changes_inner_width() {
    let Some((browser, page, _)) = open("set_viewport_changes_inner_width").await else { return };
    assert_eq!(page.eval("window.innerWidth").await.expect("eval"), json!(1280), "the launch's window size");
    page.set_viewport(390, 844, true).await.expect("phone");
    page.wait_for("window.innerWidth === 390 && window.innerHeight === 844", WAIT).await.expect("phone viewport");
    page.set_viewport(1024, 700, false).await.expect("desktop");
    page.wait_for("window.innerWidth === 1024", WAIT).await.expect("desktop viewport");
    browser.close().await;
}

#[tokio::test]
async fn goto_waits_for_load_and_everything_reports_failures() {
    let Some((browser, page, addr)) = open("goto_waits_for_load_and_everything_reports_failures").await else { return };
    println!("chromium {} started in {:?}", browser.version().await.expect("version"), browser.startup_time());

    // Cookies, dialogs, promises and screenshots on the first page.
    let cookies = page.cookies().await.expect("cookies");
    let cookie = cookies.iter().find(|c| c.name == "harness").expect("the page's cookie");
    assert!(cookie.http_only && cookie.same_site.as_deref() == Some("Strict") && cookie.path == "/", "{cookie:?}");
    page.click("#ask").await.expect("click");
    page.wait_for(&text_is("#answer", "confirmed: true"), WAIT).await.expect("confirm() was accepted");
    assert_eq!(page.dialogs(), vec!["confirm: Revoke it?".to_owned()]);
    let later = page.eval("new Promise(r => setTimeout(() => r({n: 7}), 100))").await.expect("awaited");
    assert_eq!(later, json!({"n": 7}));
    assert_eq!(page.eval("undefined").await.expect("eval"), serde_json::Value::Null);
    let shot = std::env::temp_dir().join(format!("essl-harness-{}.png", std::process::id()));
    page.screenshot(&shot).await.expect("screenshot");
    let png = std::fs::read(&shot).expect("read screenshot");
    let _ = std::fs::remove_file(&shot);
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 1000, "{} bytes", png.len());

    // goto returns after the load event, which waits for the slow image.
    let started = Instant::now();
    page.goto(&format!("http://{addr}/slow")).await.expect("goto");
    assert!(started.elapsed() >= Duration::from_millis(600), "returned before the image came: {:?}", started.elapsed());
    let img = page.eval("[document.querySelector('#img').complete, document.querySelector('#img').naturalWidth]");
    assert_eq!(img.await.expect("eval"), json!([true, 20]));
    // A hash change is a same-document navigation: no new load, still no hang.
    page.goto(&format!("http://{addr}/slow#there")).await.expect("same-document goto");

    // A port nobody listens on.
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("addr");
    let refused = page.goto(&format!("http://{closed}/")).await.expect_err("nothing listens");
    assert!(refused.to_string().contains("ERR_CONNECTION_REFUSED"), "{refused}");

    page.goto(&format!("http://{addr}/")).await.expect("goto");
    let started = Instant::now();
    let timeout = page.wait_for("document.title === 'never'", Duration::from_millis(300)).await.expect_err("timeout");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    let message = timeout.to_string();
    page.wait_for("document.title === 'harness'", Duration::ZERO).await.expect("a true predicate gets one try");
    assert!(message.contains("document.title === 'never'"), "names the predicate: {message}");
    assert!(message.contains("Click me") && message.contains(&format!("http://{addr}/")), "shows the page: {message}");
    browser.close().await;
}

#[tokio::test]
async fn dropping_the_browser_kills_it_and_removes_its_profile() {
    let Some(browser) = launch_or_skip("dropping_the_browser_kills_it_and_removes_its_profile").await else { return };
    let page = browser.new_page().await.expect("new page");
    page.goto("chrome://version").await.expect("goto");
    let text = page.eval("document.body.innerText").await.expect("eval");
    // The profile directory appears in the command line and as the profile path: cut it out of either.
    let text = text.as_str().unwrap_or_default();
    let marker = "essl-e2e-chromium-";
    let at = text.find(marker).expect("chrome://version shows the profile directory");
    let start = text[..at].rfind(['=', ' ', '\n']).map_or(0, |i| i + 1);
    let end = at + marker.len() + 32;
    let profile = std::path::PathBuf::from(&text[start..end]);
    assert!(profile.is_dir(), "{}", profile.display());
    // What a panicking test does: no close(), only Drop.
    drop(page);
    drop(browser);
    assert!(!profile.exists(), "the profile {} is gone", profile.display());
    let needle = profile.to_string_lossy().into_owned();
    let deadline = Instant::now() + Duration::from_secs(5);
    let survivors = loop {
        let survivors: Vec<String> = std::fs::read_dir("/proc")
            .expect("/proc")
            .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| c.contains(&needle))
            .collect();
        if survivors.is_empty() || Instant::now() > deadline {
            break survivors;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(survivors.is_empty(), "chromium processes outlived the Browser: {survivors:#?}");
}
