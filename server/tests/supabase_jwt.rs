//! Supabase-issued JWTs: HS256 with the project secret, ES256 and RS256 with keys from a JWKS served on loopback
//! (plain HTTP, and HTTPS with a throwaway certificate), key rotation and the refresh rate limit, the role claim,
//! and whole requests through the real router.
//!
//! `data/rsa2048-test-key.pk8.pem` is a throwaway RSA key made once with
//! `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048`; it signs nothing but these tests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use essl_server::app::{AppState, ServerConfig};
use essl_server::auth::{Auth, SupabaseConfig, fetch, token};
use essl_server::http::extract::Caller;
use essl_server::store::Store;
use essl_server::store::model::Role;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use serde_json::{Value, json};
use uuid::Uuid;

const SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters-long";
const RSA_PEM: &str = include_str!("data/rsa2048-test-key.pk8.pem");

// ---------------------------------------------------------------------------------------------------------------
// Tokens

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> i64 {
    i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs()).expect("fits")
}

/// A JWT with this header and these claims, signed by `sign` over `header.claims`.
fn jwt(header: &Value, claims: &Value, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> String {
    let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
    let signature = sign(input.as_bytes());
    format!("{input}.{}", b64(signature))
}

fn hs256_with(key: &[u8], claims: &Value) -> String {
    jwt(&json!({"alg": "HS256", "typ": "JWT"}), claims, |m| hmac(key, m))
}

fn hs256(claims: &Value) -> String {
    hs256_with(SECRET.as_bytes(), claims)
}

fn hmac(key: &[u8], message: &[u8]) -> Vec<u8> {
    ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), message).as_ref().to_vec()
}

/// Claims as Supabase Auth issues them for a signed-in user.
fn user_claims(issuer: &str, sub: Uuid, email: &str) -> Value {
    json!({
        "iss": issuer,
        "sub": sub.to_string(),
        "aud": "authenticated",
        "exp": now() + 3600,
        "iat": now(),
        "email": email,
        "phone": "",
        "app_metadata": {"provider": "email", "providers": ["email"]},
        "user_metadata": {},
        "role": "authenticated",
        "aal": "aal1",
        "session_id": Uuid::new_v4().to_string(),
        "is_anonymous": false
    })
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn without(mut claims: Value, key: &str) -> Value {
    claims.as_object_mut().expect("an object").remove(key);
    claims
}

/// An EC P-256 signing key and its JWK.
struct EcKey {
    pair: EcdsaKeyPair,
    kid: String,
}

impl EcKey {
    fn generate(kid: &str) -> EcKey {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("keygen");
        let pair = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("own key");
        EcKey { pair, kid: kid.to_owned() }
    }

    fn jwk(&self) -> Value {
        let point = self.pair.public_key().as_ref();
        assert_eq!(point.len(), 65);
        json!({"kty": "EC", "kid": self.kid, "alg": "ES256", "use": "sig", "key_ops": ["verify"], "crv": "P-256",
            "x": b64(&point[1..33]), "y": b64(&point[33..])})
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_as(&self.kid, claims)
    }

    fn sign_as(&self, kid: &str, claims: &Value) -> String {
        jwt(&json!({"alg": "ES256", "typ": "JWT", "kid": kid}), claims, |m| {
            self.pair.sign(&SystemRandom::new(), m).expect("sign").as_ref().to_vec()
        })
    }
}

/// The fixed RSA test key and its JWK.
struct RsaKey {
    pair: RsaKeyPair,
    kid: String,
}

impl RsaKey {
    fn load(kid: &str) -> RsaKey {
        let body: String = RSA_PEM.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = STANDARD.decode(body).expect("PEM body");
        RsaKey { pair: RsaKeyPair::from_pkcs8(&der).expect("PKCS#8 RSA key"), kid: kid.to_owned() }
    }

    fn components(&self) -> signature::RsaPublicKeyComponents<Vec<u8>> {
        self.pair.public().into()
    }

    fn jwk(&self) -> Value {
        let c = self.components();
        json!({"kty": "RSA", "kid": self.kid, "alg": "RS256", "use": "sig", "n": b64(&c.n), "e": b64(&c.e)})
    }

    fn sign(&self, claims: &Value) -> String {
        jwt(&json!({"alg": "RS256", "typ": "JWT", "kid": self.kid}), claims, |m| {
            let mut sig = vec![0; self.pair.public().modulus_len()];
            self.pair.sign(&signature::RSA_PKCS1_SHA256, &SystemRandom::new(), m, &mut sig).expect("sign");
            sig
        })
    }
}

// ---------------------------------------------------------------------------------------------------------------
// A JWKS server on loopback

#[derive(Clone)]
enum Reply {
    Jwks(Value),
    /// A valid JWKS padded past 64 KiB.
    Huge,
    /// Headers, then a body that never ends.
    Hang,
}

#[derive(Clone)]
struct JwksState {
    reply: Arc<Mutex<Reply>>,
    hits: Arc<AtomicUsize>,
}

struct JwksServer {
    /// The "project URL": the JWKS is at `<url>/auth/v1/.well-known/jwks.json`.
    url: String,
    state: JwksState,
}

impl JwksServer {
    async fn start(keys: Vec<Value>) -> JwksServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = JwksState {
            reply: Arc::new(Mutex::new(Reply::Jwks(json!({ "keys": keys })))),
            hits: Arc::new(AtomicUsize::new(0)),
        };
        let app = Router::new().route("/auth/v1/.well-known/jwks.json", get(serve_jwks)).with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        JwksServer { url: format!("http://{addr}"), state }
    }

    /// The same over HTTPS (certificate for 127.0.0.1); returns the certificate (DER) to trust.
    async fn start_tls(keys: Vec<Value>) -> (JwksServer, Vec<u8>) {
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("certificate");
        let config = axum_server::tls_rustls::RustlsConfig::from_pem(
            cert.cert.pem().into_bytes(),
            cert.signing_key.serialize_pem().into_bytes(),
        )
        .await
        .expect("TLS config");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let state = JwksState {
            reply: Arc::new(Mutex::new(Reply::Jwks(json!({ "keys": keys })))),
            hits: Arc::new(AtomicUsize::new(0)),
        };
        let app = Router::new().route("/auth/v1/.well-known/jwks.json", get(serve_jwks)).with_state(state.clone());
        let server = axum_server::from_tcp_rustls(listener, config).expect("server");
        tokio::spawn(async move { server.serve(app.into_make_service()).await });
        (JwksServer { url: format!("https://{addr}"), state }, cert.cert.der().to_vec())
    }

    fn issuer(&self) -> String {
        format!("{}/auth/v1", self.url)
    }

    fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    fn reply(&self, reply: Reply) {
        *self.state.reply.lock().expect("lock") = reply;
    }

    fn publish(&self, keys: Vec<Value>) {
        self.reply(Reply::Jwks(json!({ "keys": keys })));
    }
}

async fn serve_jwks(State(state): State<JwksState>) -> Response {
    state.hits.fetch_add(1, Ordering::SeqCst);
    let reply = state.reply.lock().expect("lock").clone();
    match reply {
        Reply::Jwks(doc) => axum::Json(doc).into_response(),
        Reply::Huge => {
            let padding = "x".repeat(70 * 1024);
            axum::Json(json!({"keys": [], "padding": padding})).into_response()
        }
        Reply::Hang => {
            let body = futures_util::stream::pending::<Result<Bytes, std::io::Error>>();
            ([("content-type", "application/json")], axum::body::Body::from_stream(body)).into_response()
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Set-up

async fn store() -> Store {
    Store::connect("sqlite::memory:").await.expect("sqlite in memory")
}

fn config(secret: Option<&str>, url: Option<&str>) -> SupabaseConfig {
    SupabaseConfig::new(secret.map(str::to_owned), url.map(str::to_owned)).expect("something configured")
}

async fn auth(config: SupabaseConfig) -> Auth {
    Auth::new(store().await).with_supabase(config).expect("valid Supabase settings")
}

async fn refused(auth: &Auth, token: &str, why: &str) {
    match auth.caller(token).await {
        Ok(caller) => panic!("{why}: accepted as {caller:?}"),
        Err(e) => assert_eq!(e.status, StatusCode::UNAUTHORIZED, "{why}: {e:?}"),
    }
}

async fn accepted(auth: &Auth, token: &str, why: &str) -> Caller {
    auth.caller(token).await.unwrap_or_else(|e| panic!("{why}: refused with {e:?}"))
}

// ---------------------------------------------------------------------------------------------------------------
// HS256

#[tokio::test]
async fn hs256_with_the_project_secret() {
    let jwks = JwksServer::start(Vec::new()).await;
    let auth = auth(config(Some(SECRET), Some(&jwks.url))).await;
    let sub = Uuid::new_v4();
    let good = user_claims(&jwks.issuer(), sub, "ana@example.com");

    let caller = accepted(&auth, &hs256(&good), "a good token").await;
    assert_eq!(caller, Caller { id: sub, name: "ana@example.com".into(), role: Role::Staff });
    // Supabase's newer HS256 tokens carry a kid; it changes nothing.
    let with_kid = jwt(&json!({"alg": "HS256", "typ": "JWT", "kid": "legacy"}), &good, |m| hmac(SECRET.as_bytes(), m));
    accepted(&auth, &with_kid, "HS256 with a kid").await;
    let aud_list = with(good.clone(), "aud", json!(["other", "authenticated"]));
    accepted(&auth, &hs256(&aud_list), "aud as a list containing authenticated").await;
    accepted(&auth, &hs256(&with(good.clone(), "exp", json!(now() - 10))), "expired 10 s ago (leeway)").await;
    accepted(&auth, &hs256(&with(good.clone(), "nbf", json!(now() + 10))), "valid in 10 s (leeway)").await;
    accepted(&auth, &hs256(&with(good.clone(), "exp", json!(now() as f64 + 600.5))), "fractional exp").await;

    refused(&auth, &hs256_with(b"another-secret-that-is-at-least-32-bytes-long", &good), "wrong secret").await;
    refused(&auth, &hs256(&with(good.clone(), "exp", json!(now() - 31))), "expired").await;
    refused(&auth, &hs256(&without(good.clone(), "exp")), "no exp").await;
    refused(&auth, &hs256(&with(good.clone(), "exp", json!("tomorrow"))), "exp not a number").await;
    refused(&auth, &hs256(&with(good.clone(), "nbf", json!(now() + 120))), "not valid yet").await;
    refused(&auth, &hs256(&with(good.clone(), "aud", json!("anon"))), "wrong aud").await;
    refused(&auth, &hs256(&with(good.clone(), "aud", json!(["anon", "service_role"]))), "aud list without it").await;
    refused(&auth, &hs256(&without(good.clone(), "aud")), "no aud").await;
    let other_project = with(good.clone(), "iss", json!("https://other.supabase.co/auth/v1"));
    refused(&auth, &hs256(&other_project), "wrong iss").await;
    refused(&auth, &hs256(&without(good.clone(), "iss")), "no iss").await;
    refused(&auth, &hs256(&with(good.clone(), "sub", json!("not-a-uuid"))), "sub not a UUID").await;
    refused(&auth, &hs256(&without(good.clone(), "sub")), "no sub (like the anon key)").await;

    // alg none, with and without a signature; other HMAC sizes; a critical header extension.
    let none = jwt(&json!({"alg": "none", "typ": "JWT"}), &good, |_| Vec::new());
    assert!(none.ends_with('.'));
    refused(&auth, &none, "alg none").await;
    refused(&auth, &jwt(&json!({"alg": "none"}), &good, |m| hmac(SECRET.as_bytes(), m)), "alg none, signed").await;
    refused(&auth, &jwt(&json!({"alg": "None"}), &good, |_| Vec::new()), "alg None").await;
    refused(&auth, &jwt(&json!({"alg": "HS512"}), &good, |m| hmac(SECRET.as_bytes(), m)), "HS512").await;
    let crit = json!({"alg": "HS256", "crit": ["exp"], "exp": 1});
    refused(&auth, &jwt(&crit, &good, |m| hmac(SECRET.as_bytes(), m)), "crit header").await;

    // Tampering: the claims of a good token swapped for an admin's.
    let token = hs256(&good);
    let parts: Vec<&str> = token.split('.').collect();
    let forged_claims = b64(with(good.clone(), "app_metadata", json!({"essl_role": "admin"})).to_string());
    refused(&auth, &format!("{}.{}.{}", parts[0], forged_claims, parts[2]), "tampered claims").await;
    refused(&auth, &format!("{}.{}.{}", parts[0], parts[1], &parts[2][1..]), "truncated signature").await;
    refused(&auth, &format!("{}.{}.{}=", parts[0], parts[1], parts[2]), "padded signature").await;
    refused(&auth, &format!("{}.{}.", parts[0], parts[1]), "no signature").await;
    refused(&auth, &format!("{}.{}", parts[0], parts[1]), "two segments").await;
    refused(&auth, "a.b.c", "garbage").await;
    let header_dup = format!("{}.{}", b64(r#"{"alg":"none","alg":"HS256"}"#), parts[1]);
    let sig = hmac(SECRET.as_bytes(), header_dup.as_bytes());
    refused(&auth, &format!("{header_dup}.{}", b64(sig)), "duplicate alg").await;
    let huge = hs256(&with(good.clone(), "pad", json!("x".repeat(20_000))));
    refused(&auth, &huge, "a 27 KB token").await;

    assert_eq!(jwks.hits(), 0, "HS256 never needs the JWKS");
}

#[tokio::test]
async fn hs256_without_a_url_checks_no_issuer_and_refuses_asymmetric_tokens() {
    let auth = auth(config(Some(SECRET), None)).await;
    let sub = Uuid::new_v4();
    let claims = user_claims("https://whatever.supabase.co/auth/v1", sub, "bo@example.com");
    assert_eq!(accepted(&auth, &hs256(&claims), "any issuer").await.id, sub);
    refused(&auth, &EcKey::generate("k1").sign(&claims), "ES256 with no JWKS configured").await;
    refused(&auth, &RsaKey::load("r1").sign(&claims), "RS256 with no JWKS configured").await;
}

#[tokio::test]
async fn api_tokens_keep_working_beside_supabase() {
    let store = store().await;
    let new = token::generate(token::API_PREFIX).expect("random");
    store.create_api_token_with_id(new.id, "ops script", Role::Admin, &new.hash).await.expect("stored");
    let auth = Auth::new(store).with_supabase(config(Some(SECRET), None)).expect("valid");
    let caller = accepted(&auth, new.token.expose(), "an API token").await;
    assert_eq!((caller.id, caller.name.as_str(), caller.role), (new.id, "ops script", Role::Admin));
    refused(&auth, "essls_00000000000000000000000000000000_00", "a bad API token").await;

    // Without Supabase configured a JWT is just a bad token.
    let plain = Auth::new(self::store().await);
    refused(&plain, &hs256(&user_claims("x", Uuid::new_v4(), "c@example.com")), "no Supabase configured").await;
}

// ---------------------------------------------------------------------------------------------------------------
// Algorithm confusion

#[tokio::test]
async fn tokens_cannot_pick_their_kind_of_key() {
    let rsa = RsaKey::load("rsa-1");
    let ec = EcKey::generate("ec-1");
    let jwks = JwksServer::start(vec![rsa.jwk(), ec.jwk()]).await;
    let auth = auth(config(Some(SECRET), Some(&jwks.url))).await;
    let claims = user_claims(&jwks.issuer(), Uuid::new_v4(), "eve@example.com");
    accepted(&auth, &rsa.sign(&claims), "RS256 as published").await;
    accepted(&auth, &ec.sign(&claims), "ES256 as published").await;

    // HS256 "signed" with the RSA public key, in every encoding an attacker might try, naming the RSA key.
    let c = rsa.components();
    let public_der = rsa.pair.public().as_ref().to_vec();
    let public_pem =
        format!("-----BEGIN RSA PUBLIC KEY-----\n{}\n-----END RSA PUBLIC KEY-----\n", STANDARD.encode(&public_der));
    for key in [public_der.clone(), public_pem.into_bytes(), c.n.clone(), rsa.jwk().to_string().into_bytes()] {
        let header = json!({"alg": "HS256", "typ": "JWT", "kid": rsa.kid});
        refused(&auth, &jwt(&header, &claims, |m| hmac(&key, m)), "HS256 keyed with the RSA public key").await;
    }
    // The same with the EC public point.
    let point = ec.pair.public_key().as_ref().to_vec();
    refused(&auth, &jwt(&json!({"alg": "HS256", "kid": ec.kid}), &claims, |m| hmac(&point, m)), "HS256/EC").await;
    // And with no shared secret configured at all.
    let asym_only = self::auth(config(None, Some(&jwks.url))).await;
    let header = json!({"alg": "HS256", "typ": "JWT", "kid": rsa.kid});
    refused(&asym_only, &jwt(&header, &claims, |m| hmac(&public_der, m)), "HS256 with no secret").await;
    refused(&asym_only, &hs256(&claims), "HS256 with no secret, real secret").await;

    // An ES256 token naming the RSA key, an RS256 token naming the EC key.
    refused(&auth, &ec.sign_as(&rsa.kid, &claims), "ES256 naming an RSA key").await;
    let rs_as_ec = jwt(&json!({"alg": "RS256", "kid": ec.kid}), &claims, |m| {
        let mut sig = vec![0; rsa.pair.public().modulus_len()];
        rsa.pair.sign(&signature::RSA_PKCS1_SHA256, &SystemRandom::new(), m, &mut sig).expect("sign");
        sig
    });
    refused(&auth, &rs_as_ec, "RS256 naming an EC key").await;
    // RS512 / ES384 are not accepted even with the right key.
    let rs512 = jwt(&json!({"alg": "RS512", "kid": rsa.kid}), &claims, |m| {
        let mut sig = vec![0; rsa.pair.public().modulus_len()];
        rsa.pair.sign(&signature::RSA_PKCS1_SHA512, &SystemRandom::new(), m, &mut sig).expect("sign");
        sig
    });
    refused(&auth, &rs512, "RS512").await;
    // No kid: no key.
    let no_kid = jwt(&json!({"alg": "ES256"}), &claims, |m| {
        ec.pair.sign(&SystemRandom::new(), m).expect("sign").as_ref().to_vec()
    });
    refused(&auth, &no_kid, "ES256 without a kid").await;
}

// ---------------------------------------------------------------------------------------------------------------
// ES256 and RS256 through the JWKS

#[tokio::test]
async fn es256_and_rs256_from_the_jwks_fetched_once() {
    let ec = EcKey::generate("ec-1");
    let rsa = RsaKey::load("rsa-1");
    let jwks = JwksServer::start(vec![ec.jwk(), rsa.jwk()]).await;
    let auth = auth(config(None, Some(&jwks.url))).await;
    assert_eq!(jwks.hits(), 0, "fetched lazily, not at start");

    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let ca = user_claims(&jwks.issuer(), a, "a@example.com");
    let cb = user_claims(&jwks.issuer(), b, "b@example.com");
    assert_eq!(accepted(&auth, &ec.sign(&ca), "ES256").await.id, a);
    assert_eq!(accepted(&auth, &rsa.sign(&cb), "RS256").await.id, b);
    // Many concurrent requests: still the one fetch.
    let tokens: Vec<String> = (0..20).map(|i| if i % 2 == 0 { ec.sign(&ca) } else { rsa.sign(&cb) }).collect();
    let results = futures_util::future::join_all(tokens.iter().map(|t| auth.caller(t))).await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(jwks.hits(), 1, "the JWKS is cached");

    // Wrong key under a known kid; tampered signature; checks on claims apply as for HS256.
    let impostor = EcKey::generate("ec-1");
    refused(&auth, &impostor.sign(&ca), "ES256 by another key under the same kid").await;
    let good = ec.sign(&ca);
    let (signed, sig) = good.rsplit_once('.').expect("three parts");
    let mut raw = URL_SAFE_NO_PAD.decode(sig).expect("b64");
    raw[10] ^= 1;
    refused(&auth, &format!("{signed}.{}", b64(&raw)), "flipped signature bit").await;
    refused(&auth, &format!("{signed}.{}", b64(&raw[..63])), "short ES256 signature").await;
    refused(&auth, &rsa.sign(&with(cb.clone(), "exp", json!(now() - 60))), "expired RS256").await;
    refused(&auth, &ec.sign(&with(ca.clone(), "aud", json!("anon"))), "ES256 wrong aud").await;
    refused(&auth, &ec.sign(&with(ca.clone(), "iss", json!("https://x.supabase.co/auth/v1"))), "wrong iss").await;
    assert_eq!(jwks.hits(), 1);
}

#[tokio::test]
async fn an_unknown_kid_fetches_again_at_most_once_per_interval() {
    assert_eq!(config(None, Some("https://p.supabase.co")).jwks_min_refresh, Duration::from_secs(30), "default");
    let interval = Duration::from_millis(500);
    let old = EcKey::generate("old");
    let jwks = JwksServer::start(vec![old.jwk()]).await;
    let mut cfg = config(None, Some(&jwks.url));
    cfg.jwks_min_refresh = interval;
    let auth = auth(cfg).await;
    let claims = user_claims(&jwks.issuer(), Uuid::new_v4(), "r@example.com");
    accepted(&auth, &old.sign(&claims), "known kid").await;
    assert_eq!(jwks.hits(), 1);

    // Right after a fetch, a made-up kid fetches nothing.
    let forger = EcKey::generate("unused");
    refused(&auth, &forger.sign_as("made-up", &claims), "made-up kid").await;
    assert_eq!(jwks.hits(), 1, "the first fetch counts");

    // Past the interval, a flood of made-up kids, concurrently: one fetch for all of them, then none again.
    tokio::time::sleep(interval + Duration::from_millis(50)).await;
    let tokens: Vec<String> = (0..50).map(|i| forger.sign_as(&format!("made-up-{i}"), &claims)).collect();
    let results = futures_util::future::join_all(tokens.iter().map(|t| auth.caller(t))).await;
    for r in &results {
        assert_eq!(r.as_ref().err().map(|e| e.status), Some(StatusCode::UNAUTHORIZED));
    }
    assert_eq!(jwks.hits(), 2, "one refresh for the whole flood");
    for t in &tokens[..5] {
        refused(&auth, t, "made-up kid again").await;
    }
    assert_eq!(jwks.hits(), 2);

    // A real rotation inside the interval: the new key waits for it, the old one keeps working meanwhile.
    let new = EcKey::generate("new");
    jwks.publish(vec![old.jwk(), new.jwk()]);
    refused(&auth, &new.sign(&claims), "new kid within the interval").await;
    accepted(&auth, &old.sign(&claims), "old kid still cached").await;
    assert_eq!(jwks.hits(), 2);
    tokio::time::sleep(interval + Duration::from_millis(50)).await;
    accepted(&auth, &new.sign(&claims), "new kid after the interval").await;
    assert_eq!(jwks.hits(), 3);
}

#[tokio::test]
async fn key_rotation_is_picked_up_by_one_refresh() {
    let old = EcKey::generate("2024-key");
    let jwks = JwksServer::start(vec![old.jwk()]).await;
    let mut cfg = config(None, Some(&jwks.url));
    cfg.jwks_min_refresh = Duration::from_millis(300);
    let auth = auth(cfg).await;
    let claims = user_claims(&jwks.issuer(), Uuid::new_v4(), "rot@example.com");
    accepted(&auth, &old.sign(&claims), "old key").await;
    assert_eq!(jwks.hits(), 1);

    // Supabase rotates: the new RSA key signs, the old one is still published for tokens in flight.
    let new = RsaKey::load("2025-key");
    jwks.publish(vec![new.jwk(), old.jwk()]);
    tokio::time::sleep(Duration::from_millis(350)).await;
    accepted(&auth, &new.sign(&claims), "new kid after one refresh").await;
    assert_eq!(jwks.hits(), 2);
    accepted(&auth, &new.sign(&claims), "new kid, cached").await;
    accepted(&auth, &old.sign(&claims), "old kid, cached").await;
    assert_eq!(jwks.hits(), 2);

    // The old key is revoked: once the cache is older than its max age it is fetched again, and the old key is
    // refused.
    let mut cfg = config(None, Some(&jwks.url));
    cfg.jwks_min_refresh = Duration::from_millis(100);
    cfg.jwks_max_age = Duration::from_millis(200);
    let short_lived = self::auth(cfg).await;
    accepted(&short_lived, &old.sign(&claims), "old key before revocation").await;
    jwks.publish(vec![new.jwk()]);
    tokio::time::sleep(Duration::from_millis(250)).await;
    refused(&short_lived, &old.sign(&claims), "old key after revocation and max age").await;
    accepted(&short_lived, &new.sign(&claims), "new key").await;
}

#[tokio::test]
async fn an_unreachable_or_misbehaving_jwks_is_a_503_and_never_blocks_hs256() {
    // Nothing listens on this port.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let auth = auth(config(Some(SECRET), Some(&url))).await;
    let claims = user_claims(&format!("{url}/auth/v1"), Uuid::new_v4(), "d@example.com");
    let err = auth.caller(&EcKey::generate("k").sign(&claims)).await.expect_err("no keys");
    assert_eq!(err.status, StatusCode::SERVICE_UNAVAILABLE);
    accepted(&auth, &hs256(&claims), "HS256 does not need the JWKS").await;

    // Too large, and a body that never ends (5 s deadline).
    let key = EcKey::generate("k");
    let jwks = JwksServer::start(vec![key.jwk()]).await;
    jwks.reply(Reply::Huge);
    let mut cfg = config(None, Some(&jwks.url));
    cfg.jwks_min_refresh = Duration::from_millis(10);
    let auth = self::auth(cfg).await;
    let claims = user_claims(&jwks.issuer(), Uuid::new_v4(), "d@example.com");
    let err = auth.caller(&key.sign(&claims)).await.expect_err("JWKS too large");
    assert_eq!(err.status, StatusCode::SERVICE_UNAVAILABLE);

    // Why, exactly, at the fetch level.
    let target = fetch::Target::parse(&format!("{}/.well-known/jwks.json", jwks.issuer())).expect("loopback URL");
    let tls = fetch::tls_connector(&[]).expect("TLS on ring");
    let got = fetch::get(&target, &tls, 64 * 1024, Duration::from_secs(5)).await;
    assert!(matches!(got, Err(fetch::FetchError::TooLarge(65536))), "{got:?}");
    jwks.reply(Reply::Hang);
    let got = fetch::get(&target, &tls, 64 * 1024, Duration::from_millis(300)).await;
    assert!(matches!(got, Err(fetch::FetchError::Timeout(_))), "{got:?}");

    tokio::time::sleep(Duration::from_millis(20)).await;
    let started = Instant::now();
    let err = auth.caller(&key.sign(&claims)).await.expect_err("JWKS hangs");
    assert_eq!(err.status, StatusCode::SERVICE_UNAVAILABLE);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(4900) && took < Duration::from_secs(8), "took {took:?}");

    // It recovers once the JWKS does.
    jwks.publish(vec![key.jwk()]);
    tokio::time::sleep(Duration::from_millis(20)).await;
    accepted(&auth, &key.sign(&claims), "JWKS back").await;
}

#[tokio::test]
async fn the_jwks_over_https() {
    let key = EcKey::generate("tls-key");
    let (jwks, ca) = JwksServer::start_tls(vec![key.jwk()]).await;
    let claims = user_claims(&jwks.issuer(), Uuid::new_v4(), "tls@example.com");

    let mut cfg = config(None, Some(&jwks.url));
    cfg.extra_roots = vec![ca];
    let auth = auth(cfg).await;
    accepted(&auth, &key.sign(&claims), "ES256 with the JWKS over HTTPS").await;
    assert_eq!(jwks.hits(), 1);

    // The same server is not trusted without its certificate: the keys cannot be had.
    let untrusting = self::auth(config(None, Some(&jwks.url))).await;
    let err = untrusting.caller(&key.sign(&claims)).await.expect_err("untrusted certificate");
    assert_eq!(err.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(jwks.hits(), 1, "no request got through");
}

// ---------------------------------------------------------------------------------------------------------------
// Roles

#[tokio::test]
async fn role_and_name_from_the_claims() {
    let auth = auth(config(Some(SECRET), None)).await;
    let sub = Uuid::new_v4();
    let base = user_claims("https://p.supabase.co/auth/v1", sub, "role@example.com");
    let role = |meta: Value| hs256(&with(base.clone(), "app_metadata", meta));
    let cases = [
        (json!({"provider": "email", "essl_role": "admin"}), Role::Admin),
        (json!({"essl_role": "staff"}), Role::Staff),
        (json!({"provider": "email"}), Role::Staff),
        (json!({"essl_role": "superuser"}), Role::Staff),
        (json!({"essl_role": "Admin"}), Role::Staff),
        (json!({"essl_role": ["admin"]}), Role::Staff),
        (json!({"essl_role": null}), Role::Staff),
        (json!({}), Role::Staff),
    ];
    for (meta, expected) in cases {
        assert_eq!(accepted(&auth, &role(meta.clone()), "role").await.role, expected, "{meta}");
    }
    assert_eq!(accepted(&auth, &hs256(&without(base.clone(), "app_metadata")), "none").await.role, Role::Staff);
    // user_metadata is the user's own to edit: never a source of roles.
    let self_promoted = with(base.clone(), "user_metadata", json!({"essl_role": "admin"}));
    assert_eq!(accepted(&auth, &hs256(&self_promoted), "user_metadata").await.role, Role::Staff);
    let top_level = with(base.clone(), "essl_role", json!("admin"));
    assert_eq!(accepted(&auth, &hs256(&top_level), "top-level claim").await.role, Role::Staff);

    // Name: the email, or the sub when there is none (phone logins have an empty email).
    assert_eq!(accepted(&auth, &hs256(&base), "email").await.name, "role@example.com");
    assert_eq!(accepted(&auth, &hs256(&with(base.clone(), "email", json!(""))), "empty").await.name, sub.to_string());
    assert_eq!(accepted(&auth, &hs256(&without(base.clone(), "email")), "no email").await.name, sub.to_string());
}

// ---------------------------------------------------------------------------------------------------------------
// Through the real router

struct Running {
    addr: SocketAddr,
    state: AppState,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn serve(config: SupabaseConfig) -> Running {
    let server_config = ServerConfig { grace: Duration::from_secs(1), ..ServerConfig::default() };
    let mut state = AppState::new(store().await, server_config);
    state.auth = state.auth.clone().with_supabase(config).expect("valid Supabase settings");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = state.clone();
    tokio::spawn(async move {
        essl_server::app::run(listener, running, async move {
            let _ = stopped.await;
        })
        .await
    });
    Running { addr, state, stop: Some(stop) }
}

/// One HTTP/1.1 request over a fresh loopback connection.
async fn call(addr: SocketAddr, method: &str, path: &str, token: &str, body: Option<Value>) -> (StatusCode, Value) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await.expect("handshake");
    tokio::spawn(conn);
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("authorization", format!("Bearer {token}"));
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let response =
        sender.send_request(request.body(Full::new(Bytes::from(body))).expect("request")).await.expect("send");
    let status = response.status();
    let bytes = response.into_body().collect().await.expect("body").to_bytes();
    let value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).expect("JSON answer") };
    (status, value)
}

#[tokio::test]
async fn supabase_users_through_the_router() {
    let ec = EcKey::generate("ec-1");
    let jwks = JwksServer::start(vec![ec.jwk()]).await;
    let server = serve(config(Some(SECRET), Some(&jwks.url))).await;
    let (admin_id, staff_id) = (Uuid::new_v4(), Uuid::new_v4());
    let admin_claims = with(
        user_claims(&jwks.issuer(), admin_id, "admin@example.com"),
        "app_metadata",
        json!({"provider": "email", "essl_role": "admin"}),
    );
    let admin = hs256(&admin_claims);
    let staff = ec.sign(&user_claims(&jwks.issuer(), staff_id, "staff@example.com"));
    let device = json!({"name": "Front door", "ipAddress": "10.0.0.20", "timezone": "Asia/Kolkata"});

    let (status, body) = call(server.addr, "GET", "/api/devices", &staff, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["items"], json!([]));
    let (status, body) = call(server.addr, "POST", "/api/devices", &staff, Some(device.clone())).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");

    let (status, body) = call(server.addr, "POST", "/api/devices", &admin, Some(device)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let device_id: Uuid = body["id"].as_str().expect("id").parse().expect("uuid");
    let (status, body) = call(server.addr, "GET", "/api/devices", &admin, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["items"].as_array().map(Vec::len), Some(1));

    // Refused tokens get the usual 401 shape.
    let expired = hs256(&with(admin_claims.clone(), "exp", json!(now() - 3600)));
    let (status, body) = call(server.addr, "GET", "/api/devices", &expired, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(
        body,
        json!({"success": false, "error": {"code": "unauthorized", "message": "log in, or send a valid bearer token"}})
    );
    let none = jwt(&json!({"alg": "none"}), &admin_claims, |_| Vec::new());
    assert_eq!(call(server.addr, "GET", "/api/devices", &none, None).await.0, StatusCode::UNAUTHORIZED);

    // The sync records who asked (no agent: the seed's unreachable answer, but the attempt is logged).
    let (status, body) =
        call(server.addr, "POST", "/api/essl/sync-attendance", &staff, Some(json!({"deviceId": device_id}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let history = server.state.store.sync_history(Some(device_id), 10).await.expect("history");
    assert_eq!(history.first().and_then(|a| a.synced_by_user_id), Some(staff_id), "{history:?}");
    assert_eq!(jwks.hits(), 1);
}
