//! `/openapi.json` against the router: every route the router serves is in the document with exactly its methods,
//! the document is OpenAPI 3.1 JSON, declares its security schemes, and every `$ref` resolves.
//!
//! The router and the document are both built from `http::routes()`; this test derives the router's paths
//! independently (from axum's `Debug` output of the router) and probes every method on each, so a route added
//! beside `routes()`, or a handler registered on the wrong path, fails here.

use std::collections::{BTreeMap, BTreeSet};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use essl_server::app::{AppState, ServerConfig};
use essl_server::http::{self, openapi};
use essl_server::store::Store;
use serde_json::Value;
use tower::ServiceExt as _;

/// Methods probed on every path. HEAD is left out: axum answers it wherever GET is routed.
const METHODS: [Method; 7] =
    [Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE, Method::OPTIONS, Method::TRACE];

/// Routes reachable without a token.
const PUBLIC: [&str; 3] = ["/healthz", "/readyz", "/openapi.json"];
/// The dashboard's page and files: served by the router, deliberately not API operations.
const DASHBOARD: [&str; 4] = ["/", "/assets/app.js", "/assets/app.css", "/assets/icon.svg"];
/// The push terminals' own endpoints (plain-text ADMS protocol, any method): not API operations.
const PUSH: [&str; 2] = ["/iclock/{endpoint}", "/iclock/s/{secret}/{endpoint}"];

fn document() -> Value {
    serde_json::to_value(openapi::document()).expect("the document serializes")
}

/// Path -> methods, as the document has them.
fn documented(doc: &Value) -> BTreeMap<String, BTreeSet<String>> {
    doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .map(|(path, item)| {
            let methods = item
                .as_object()
                .expect("path item")
                .keys()
                .filter(|k| METHODS.iter().any(|m| m.as_str().eq_ignore_ascii_case(k)))
                .map(|k| k.to_ascii_uppercase())
                .collect();
            (path.clone(), methods)
        })
        .collect()
}

/// The paths registered in the router, read from axum's `Debug` output of its path router (the fallback router,
/// which axum fills with its own catch-all paths, is left out).
fn router_paths(router: &axum::Router) -> BTreeSet<String> {
    let debug = format!("{router:?}");
    let start = debug.find("path_router:").expect("axum's Router Debug shows `path_router` (did axum change it?)");
    let end = debug.find("fallback_router:").expect("axum's Router Debug shows `fallback_router`");
    let section = &debug[start..end];
    let paths: BTreeSet<String> =
        section.split('"').skip(1).step_by(2).filter(|s| s.starts_with('/')).map(str::to_owned).collect();
    assert!(!paths.is_empty(), "no paths found in the router's Debug output (did axum change it?): {section}");
    paths
}

/// A concrete URI for a path template: every `{param}` becomes a random UUID.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|seg| if seg.starts_with('{') { uuid::Uuid::new_v4().to_string() } else { seg.to_owned() })
        .collect::<Vec<_>>()
        .join("/")
}

async fn state() -> AppState {
    let store = Store::connect("sqlite::memory:").await.expect("sqlite in memory");
    AppState::new(store, ServerConfig::default())
}

async fn send(router: &axum::Router, method: Method, uri: &str) -> (StatusCode, Vec<u8>) {
    let req = Request::builder().method(method).uri(uri).body(Body::empty()).expect("request");
    let resp = router.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 16 * 1024 * 1024).await.expect("body");
    (status, body.to_vec())
}

fn is_our_route_fallback(status: StatusCode, body: &[u8]) -> bool {
    status == StatusCode::NOT_FOUND
        && serde_json::from_slice::<Value>(body).is_ok_and(|v| v["error"]["message"] == "route not found")
}

#[tokio::test]
async fn every_route_of_the_router_is_documented_with_its_methods() {
    let router = http::router(state().await);
    let doc = document();
    let documented = documented(&doc);

    let mut routed = router_paths(&router);
    for page in DASHBOARD.into_iter().chain(PUSH) {
        assert!(routed.remove(page), "the router serves {page}");
    }
    let in_doc: BTreeSet<String> = documented.keys().cloned().collect();
    assert_eq!(routed, in_doc, "the router's paths and the document's paths differ");

    for (path, methods) in &documented {
        assert!(!methods.is_empty(), "{path} has no operation in the document");
        let uri = concrete(path);
        for method in METHODS {
            let (status, body) = send(&router, method.clone(), &uri).await;
            let routed = status != StatusCode::METHOD_NOT_ALLOWED && !is_our_route_fallback(status, &body);
            let in_doc = methods.contains(method.as_str());
            assert_eq!(
                routed, in_doc,
                "{method} {path}: routed = {routed} ({status}), documented = {in_doc}; documented methods: {methods:?}"
            );
        }
    }
    // And a path that is not a route falls through to our 404.
    let (status, body) = send(&router, Method::GET, "/api/nothing-here").await;
    assert!(is_our_route_fallback(status, &body), "{status}");
}

#[tokio::test]
async fn openapi_json_is_served_publicly_and_is_the_document() {
    let router = http::router(state().await);
    let (status, body) = send(&router, Method::GET, "/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    let served: Value = serde_json::from_slice(&body).expect("/openapi.json is JSON");
    assert_eq!(served, document());
    let version = served["openapi"].as_str().expect("an `openapi` version");
    assert!(version.starts_with("3.1."), "OpenAPI {version}");
    assert!(served["info"]["title"].is_string() && served["info"]["version"].is_string());
}

#[test]
fn security_schemes_are_declared_and_used() {
    let doc = document();
    let schemes = &doc["components"]["securitySchemes"];
    for name in [openapi::BEARER, openapi::AGENT_TOKEN] {
        assert_eq!(schemes[name]["type"], "http", "{name}: {schemes}");
        assert_eq!(schemes[name]["scheme"], "bearer", "{name}: {schemes}");
    }
    assert_eq!(schemes[openapi::SESSION]["type"], "apiKey", "{schemes}");
    assert_eq!(schemes[openapi::SESSION]["in"], "cookie", "{schemes}");
    assert_eq!(schemes[openapi::SESSION]["name"], "essl_session", "{schemes}");
    assert!(doc.get("security").is_none(), "no global security: each operation says its own");
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            // Logging in and asking who is logged in need nothing; logging out is the session's own business.
            let wanted: Option<&[&str]> =
                if PUBLIC.contains(&path.as_str()) || (path == "/api/session" && method != "delete") {
                    None
                } else if path == "/agent/ws" {
                    Some(&[openapi::AGENT_TOKEN])
                } else if path == "/api/session" {
                    Some(&[openapi::SESSION])
                } else {
                    Some(&[openapi::BEARER, openapi::SESSION])
                };
            let got: Vec<String> = op["security"]
                .as_array()
                .map(|reqs| {
                    reqs.iter().flat_map(|r| r.as_object().into_iter().flat_map(|o| o.keys().cloned())).collect()
                })
                .unwrap_or_default();
            match wanted {
                None => assert!(got.is_empty(), "{method} {path} is public but has security {got:?}"),
                Some(w) => assert_eq!(got, w, "{method} {path}"),
            }
            let responses = op["responses"].as_object().expect("responses");
            if wanted.is_some() && path != "/api/session" {
                assert!(responses.contains_key("401"), "{method} {path} needs a token but documents no 401");
            }
        }
    }
}

#[test]
fn operations_document_parameters_bodies_and_errors() {
    let doc = document();
    let mut operation_ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        let templated: BTreeSet<&str> =
            path.split('/').filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}'))).collect();
        for (method, op) in item.as_object().expect("path item") {
            let in_path: BTreeSet<&str> = op["parameters"]
                .as_array()
                .map(|ps| ps.iter().filter(|p| p["in"] == "path").filter_map(|p| p["name"].as_str()).collect())
                .unwrap_or_default();
            assert_eq!(in_path, templated, "{method} {path}: path parameters");
            let id = op["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path} has no operationId"));
            assert!(operation_ids.insert(id.to_owned()), "operationId {id} is used twice");

            let responses = op["responses"].as_object().expect("responses");
            assert!(
                responses.keys().any(|s| s.starts_with('2') || s == "101"),
                "{method} {path} documents no success answer"
            );
            for (status, resp) in responses {
                if !(status.starts_with('4') || status.starts_with('5')) || path == "/readyz" {
                    continue;
                }
                let schema = resp["content"]["application/json"]["schema"]["$ref"].as_str().unwrap_or_default();
                assert!(
                    schema == "#/components/schemas/ErrorBody" || (status == "502" && schema.ends_with("/SyncFailed")),
                    "{method} {path} {status}: error answers use the error shape, got {resp}"
                );
            }
            if ["post", "patch", "put"].contains(&method.as_str()) {
                assert!(op["requestBody"].is_object(), "{method} {path} documents no request body");
            }
        }
    }
    // The attendance query, parameter by parameter.
    let params: BTreeSet<&str> = doc["paths"]["/api/attendance"]["get"]["parameters"]
        .as_array()
        .expect("attendance parameters")
        .iter()
        .filter(|p| p["in"] == "query")
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(params, BTreeSet::from(["deviceId", "userId", "from", "to", "limit", "cursor", "format"]));
    // The seed's bodies are optional; the others are required.
    for path in ["/api/essl/check-device", "/api/essl/sync-attendance"] {
        assert_ne!(doc["paths"][path]["post"]["requestBody"]["required"], true, "{path}");
    }
    assert_eq!(doc["paths"]["/api/devices"]["post"]["requestBody"]["required"], true);
}

/// Every `$ref` points at a schema the document defines.
#[test]
fn every_reference_resolves() {
    fn walk<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                    out.push(r);
                }
                m.values().for_each(|v| walk(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let doc = document();
    let mut refs = Vec::new();
    walk(&doc, &mut refs);
    assert!(!refs.is_empty());
    for r in refs {
        let name = r.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("unexpected $ref {r}"));
        assert!(doc["components"]["schemas"][name].is_object(), "$ref {r} does not resolve");
    }
}

/// The routes issue 3 asks for are all there (the document is derived from the router; this is the contract).
#[test]
fn the_issue_routes_are_all_there() {
    let documented = documented(&document());
    let wanted = [
        ("/api/essl/check-device", "POST"),
        ("/api/essl/sync-attendance", "POST"),
        ("/api/essl/sync-status", "GET"),
        ("/api/devices", "POST"),
        ("/api/devices", "GET"),
        ("/api/devices/{id}", "GET"),
        ("/api/devices/{id}", "PATCH"),
        ("/api/devices/{id}", "DELETE"),
        ("/api/agents", "POST"),
        ("/api/agents", "GET"),
        ("/api/agents/{id}", "DELETE"),
        ("/api/attendance", "GET"),
        ("/agent/ws", "GET"),
        ("/healthz", "GET"),
        ("/readyz", "GET"),
        ("/metrics", "GET"),
        ("/openapi.json", "GET"),
    ];
    for (path, method) in wanted {
        assert!(documented.get(path).is_some_and(|m| m.contains(method)), "{method} {path} is missing");
    }
}

/// The response types serialize to exactly the properties their schemas declare, with the seed's names.
#[test]
fn the_seed_cached_answer_serializes_as_documented() {
    use essl_server::http::seed::{CachedData, SyncStats, SyncUnreachable};
    let answer = SyncUnreachable {
        success: false,
        device_unreachable: true,
        message: "Device unreachable. Using cached data from 5 minutes ago.".to_owned(),
        cached_data: CachedData {
            available: true,
            record_count: 300,
            last_sync_time: Some("2025-11-24T10:30:00Z".to_owned()),
            last_sync_records: Some(300),
            minutes_since_sync: Some(5),
        },
        stats: SyncStats { devices: Vec::new(), records_read: 0, new_records: 0, duplicates: 0 },
    };
    let json = serde_json::to_value(&answer).expect("serializes");
    let doc = document();
    let keys = |v: &Value| v.as_object().expect("object").keys().cloned().collect::<BTreeSet<_>>();
    let schema = &doc["components"]["schemas"];
    assert_eq!(keys(&json), keys(&schema["SyncUnreachable"]["properties"]));
    assert_eq!(keys(&json["cachedData"]), keys(&schema["CachedData"]["properties"]));
    assert_eq!(
        keys(&json["cachedData"]),
        BTreeSet::from(
            ["available", "recordCount", "lastSyncTime", "lastSyncRecords", "minutesSinceSync"].map(String::from)
        )
    );
    assert_eq!(json["deviceUnreachable"], true);
}

/// Issue 5: the confirmed clear, the attendance flags and the agents' outbox fill are in the contract.
#[test]
fn the_clear_route_flags_and_outbox_fill_are_documented() {
    let doc = document();
    let op = &doc["paths"]["/api/devices/{id}/clear-attendance"]["post"];
    assert!(op.is_object(), "the clear route is documented");
    assert_ne!(op["requestBody"]["required"], true, "its body is optional");
    for status in ["200", "403", "404", "409", "502"] {
        assert!(op["responses"][status].is_object(), "clear-attendance documents {status}");
    }
    let refused = op["responses"]["409"]["description"].as_str().unwrap_or_default();
    assert!(refused.contains("not_confirmed"), "{refused}");
    let schemas = &doc["components"]["schemas"];
    let flags = schemas["AttendanceItem"]["properties"]["flags"]["description"].as_str().unwrap_or_default();
    for bit in ["1 ambiguous", "2 nonexistent", "4 future", "8 invalid time", "16 unknown user"] {
        assert!(flags.contains(bit), "the flags description names {bit:?}: {flags}");
    }
    assert!(schemas["AttendanceItem"]["properties"]["rawTime"].is_object());
    assert!(schemas["AgentView"]["properties"]["outbox"].is_object());
    let outbox: BTreeSet<&str> =
        schemas["AgentOutbox"]["properties"].as_object().expect("AgentOutbox").keys().map(String::as_str).collect();
    assert_eq!(outbox, BTreeSet::from(["bytes", "limitBytes", "pendingRecords"]));
}
