//! One suite for every store backend: each `async fn x(store: Store)` below runs against a SQLite file, an
//! in-memory SQLite and, when `TEST_DATABASE_URL` is set, a fresh PostgreSQL database (see `common/db.rs`).
//! PostgreSQL-only checks (the seed's functions, monitoring queries and RLS) and SQLite-only ones (several
//! processes' worth of stores on one file) follow the shared ones.

mod common;

use std::collections::{BTreeSet, HashSet};

use essl_server::store::*;
use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use uuid::Uuid;

/// SQL metacharacters, quoting, escapes, placeholders and non-ASCII: every string field must round-trip these.
const NASTY: &[&str] = &[
    "'; DROP TABLE essl_devices; --",
    "Robert'); DELETE FROM essl_sites; --",
    "O'Brien \"the quoted\" ''",
    "back\\slash \\\\ \\' \\0 %_ * ?1 $1 :name @p",
    "ユニコード ✓ émoji 🙂 עברית",
    "tab\tnewline\ncr\r",
];

// ---- helpers

fn ts(s: &str) -> Timestamp {
    s.parse().expect("a valid RFC 3339 instant in the test")
}

fn local(s: &str) -> DateTime {
    s.parse().expect("a valid civil datetime in the test")
}

fn hash(b: u8) -> Vec<u8> {
    vec![b; 32]
}

/// A punch at `local_time` on a terminal in `tz`, the instant computed as the hub would (compatible).
fn punch_in(tz: &str, user_id: &str, local_time: &str) -> NewPunch {
    let tz = TimeZone::get(tz).expect("a known time zone in the test");
    let local_time = local(local_time);
    let punched_at = tz.to_ambiguous_timestamp(local_time).compatible().expect("a representable instant");
    NewPunch { user_id: user_id.to_owned(), uid: 1, local_time, punched_at, status: 1, punch: 0, flags: 0 }
}

fn punch(user_id: &str, local_time: &str) -> NewPunch {
    punch_in("Asia/Kolkata", user_id, local_time)
}

/// `n` distinct punches: users u0..u(n/3), a punch per minute from `start`.
fn punches(n: usize, start: &str) -> Vec<NewPunch> {
    let start = local(start);
    (0..n)
        .map(|i| {
            let t = start.checked_add(SignedDuration::from_mins(i as i64)).expect("in range");
            let mut p = punch(&format!("u{}", i % 97), &t.to_string());
            p.uid = (i % 97) as i32;
            p.status = (i % 5) as i16;
            p.punch = (i % 2) as i16;
            p.flags = i as i32;
            p
        })
        .collect()
}

fn new_device(name: &str) -> NewDevice {
    NewDevice {
        name: name.to_owned(),
        kind: DeviceKind::Pull,
        ip_address: "192.168.1.71".to_owned(),
        port: 4370,
        comm_key: 0,
        udp: false,
        serial_number: None,
        timezone: "Asia/Kolkata".to_owned(),
        site_id: None,
        active: true,
    }
}

async fn device(store: &Store, name: &str) -> Device {
    store.create_device(&new_device(name)).await.expect("create a device")
}

fn attempt(device_id: Uuid, at: &str, status: SyncStatus, records: i32) -> NewSyncAttempt {
    NewSyncAttempt {
        device_id,
        last_sync_time: ts(at),
        sync_status: status,
        records_synced: records,
        records_total: None,
        error_message: None,
        error_kind: None,
        synced_by_user_id: None,
        sync_duration_ms: None,
        agent_id: None,
    }
}

fn filter(limit: u32) -> AttendanceFilter {
    AttendanceFilter { limit, ..AttendanceFilter::default() }
}

#[track_caller]
fn assert_invalid<T: std::fmt::Debug>(r: Result<T, StoreError>) {
    assert!(matches!(r, Err(StoreError::Invalid(_))), "expected Invalid, got {r:?}");
}

#[track_caller]
fn assert_conflict<T: std::fmt::Debug>(r: Result<T, StoreError>) {
    assert!(matches!(r, Err(StoreError::Conflict(_))), "expected Conflict, got {r:?}");
}

#[track_caller]
fn assert_not_found<T: std::fmt::Debug>(r: Result<T, StoreError>) {
    assert!(matches!(r, Err(StoreError::NotFound)), "expected NotFound, got {r:?}");
}

// ---- the shared suite

async fn ping_and_backend(store: Store) {
    store.ping().await.expect("ping");
    assert!(["sqlite", "postgres"].contains(&store.backend()));
}

async fn sites(store: Store) {
    assert!(store.list_sites().await.expect("list").is_empty());
    let hq = store.create_site("HQ").await.expect("create");
    assert_eq!(hq.name, "HQ");
    assert_conflict(store.create_site("HQ").await);
    assert_eq!(store.site_by_name("HQ").await.expect("by name"), Some(hq.clone()));
    assert_eq!(store.site_by_name("hq").await.expect("by name"), None, "names are case-sensitive");
    assert_eq!(store.get_site(hq.id).await.expect("get"), Some(hq.clone()));
    assert_eq!(store.get_site(Uuid::new_v4()).await.expect("get"), None);

    // ensure_site: the existing one, or a new one; repeated calls agree.
    assert_eq!(store.ensure_site("HQ").await.expect("ensure"), hq);
    let branch = store.ensure_site("branch").await.expect("ensure new");
    assert_eq!(store.ensure_site("branch").await.expect("ensure again"), branch);
    let (a, b) = tokio::join!(store.ensure_site("race"), store.ensure_site("race"));
    assert_eq!(a.expect("ensure a"), b.expect("ensure b"));

    // By name in byte order on both backends (uppercase before lowercase).
    let names: Vec<_> = store.list_sites().await.expect("list").into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["HQ", "branch", "race"]);

    assert_invalid(store.create_site("").await);
    assert_invalid(store.create_site("   ").await);
    assert_invalid(store.create_site("nul\0byte").await);
    assert_invalid(store.ensure_site("nul\0byte").await);
}

async fn devices(store: Store) {
    let site = store.create_site("office").await.expect("site");
    let mut nd = new_device("Main ESSL Device");
    nd.kind = DeviceKind::Push;
    nd.port = 65535;
    nd.comm_key = u32::MAX;
    nd.udp = true;
    nd.serial_number = Some("CEXJ201260001".into());
    nd.timezone = "America/New_York".into();
    nd.site_id = Some(site.id);
    let d = store.create_device(&nd).await.expect("create");
    assert_eq!(
        (d.name.as_str(), d.kind, d.ip_address.as_str(), d.port, d.comm_key, d.udp),
        ("Main ESSL Device", DeviceKind::Push, "192.168.1.71", 65535, u32::MAX, true)
    );
    assert_eq!(d.serial_number.as_deref(), Some("CEXJ201260001"));
    assert_eq!((d.timezone.as_str(), d.site_id, d.active), ("America/New_York", Some(site.id), true));
    assert_eq!(d.created_at, d.updated_at);
    assert_eq!(store.get_device(d.id).await.expect("get"), Some(d.clone()));
    assert_eq!(store.get_device(Uuid::new_v4()).await.expect("get"), None);

    // Rules: serial numbers are unique; time zones and sites must exist; names must not be blank.
    let mut dup = new_device("other");
    dup.serial_number = Some("CEXJ201260001".into());
    assert_conflict(store.create_device(&dup).await);
    assert_invalid(store.create_device(&NewDevice { timezone: "Mars/Olympus".into(), ..new_device("x") }).await);
    assert_invalid(store.create_device(&NewDevice { site_id: Some(Uuid::new_v4()), ..new_device("x") }).await);
    assert_invalid(store.create_device(&NewDevice { serial_number: Some(String::new()), ..new_device("x") }).await);
    assert_invalid(store.create_device(&new_device(" ")).await);
    assert_invalid(store.create_device(&new_device("a\0b")).await);

    // Listing: by name (byte order), then id; inactive ones only when asked.
    let beta = device(&store, "Beta").await;
    let alpha = device(&store, "alpha").await;
    let off = store.create_device(&NewDevice { active: false, ..new_device("Zulu") }).await.expect("inactive");
    let twin1 = device(&store, "Twin").await;
    let twin2 = device(&store, "Twin").await;
    let (t1, t2) = if twin1.id < twin2.id { (twin1.id, twin2.id) } else { (twin2.id, twin1.id) };
    let ids = |v: Vec<Device>| v.into_iter().map(|d| d.id).collect::<Vec<_>>();
    assert_eq!(ids(store.list_devices(false).await.expect("all")), [beta.id, d.id, t1, t2, off.id, alpha.id]);
    assert_eq!(ids(store.list_devices(true).await.expect("active")), [beta.id, d.id, t1, t2, alpha.id]);

    // A site's devices: active ones only.
    store
        .update_device(off.id, &DevicePatch { site_id: Some(Some(site.id)), ..Default::default() })
        .await
        .expect("move");
    assert_eq!(ids(store.devices_for_site(site.id).await.expect("site devices")), [d.id]);
    assert!(store.devices_for_site(Uuid::new_v4()).await.expect("unknown site").is_empty());

    // Patches: every field, clearing nullable ones, untouched fields kept.
    let patch = DevicePatch {
        name: Some("Renamed".into()),
        ip_address: Some("10.0.0.9".into()),
        port: Some(4371),
        comm_key: Some(1234),
        udp: Some(false),
        serial_number: Some(None),
        timezone: Some("Asia/Kolkata".into()),
        site_id: Some(None),
        active: Some(false),
    };
    let u = store.update_device(d.id, &patch).await.expect("update");
    assert_eq!(
        (u.name.as_str(), u.ip_address.as_str(), u.port, u.comm_key, u.udp, u.serial_number.clone()),
        ("Renamed", "10.0.0.9", 4371, 1234, false, None)
    );
    assert_eq!((u.timezone.as_str(), u.site_id, u.active, u.kind), ("Asia/Kolkata", None, false, DeviceKind::Push));
    assert_eq!(u.created_at, d.created_at);
    assert!(u.updated_at >= d.updated_at);
    assert_eq!(store.get_device(d.id).await.expect("get"), Some(u.clone()));
    let same = store.update_device(d.id, &DevicePatch::default()).await.expect("empty patch");
    assert_eq!((same.name, same.port, same.active), (u.name, u.port, u.active));

    // The serial freed above can be taken; a taken one cannot be patched in.
    let take = DevicePatch { serial_number: Some(Some("CEXJ201260001".into())), ..Default::default() };
    let s = store.update_device(beta.id, &take).await.expect("take freed serial");
    assert_eq!(s.serial_number.as_deref(), Some("CEXJ201260001"));
    assert_conflict(
        store
            .update_device(
                alpha.id,
                &DevicePatch { serial_number: Some(Some("CEXJ201260001".into())), ..Default::default() },
            )
            .await,
    );
    assert_invalid(
        store
            .update_device(alpha.id, &DevicePatch { timezone: Some("Nowhere/Land".into()), ..Default::default() })
            .await,
    );
    assert_invalid(
        store.update_device(alpha.id, &DevicePatch { site_id: Some(Some(Uuid::new_v4())), ..Default::default() }).await,
    );
    assert_invalid(
        store.update_device(alpha.id, &DevicePatch { name: Some(String::new()), ..Default::default() }).await,
    );
    assert_not_found(store.update_device(Uuid::new_v4(), &DevicePatch::default()).await);
    // A failed patch changed nothing.
    assert_eq!(store.get_device(alpha.id).await.expect("get"), Some(alpha.clone()));

    store.delete_device(alpha.id).await.expect("delete");
    assert_eq!(store.get_device(alpha.id).await.expect("get"), None);
    assert_not_found(store.delete_device(alpha.id).await);
}

async fn agents(store: Store) {
    let site = store.create_site("office").await.expect("site");
    let a = store.create_agent("lan-pc", site.id, &hash(1)).await.expect("create");
    assert_eq!((a.name.as_str(), a.site_id, a.revoked_at, a.last_seen), ("lan-pc", site.id, None, None));
    assert_eq!((a.version.clone(), a.hostname.clone()), (None, None));
    let (got, cred) = store.agent_credential(a.id).await.expect("credential").expect("exists");
    assert_eq!(got, a);
    assert_eq!((cred.id, cred.secret_hash.clone(), cred.revoked), (a.id, hash(1), false));
    assert_eq!(store.get_agent(a.id).await.expect("get"), Some(a.clone()));
    assert_eq!(store.get_agent(Uuid::new_v4()).await.expect("get"), None);
    assert!(store.agent_credential(Uuid::new_v4()).await.expect("credential").is_none());

    // Caller-chosen ids (tokens that embed the id) and their collisions.
    let id = Uuid::new_v4();
    let b = store.create_agent_with_id(id, "backup", site.id, &hash(2)).await.expect("with id");
    assert_eq!(b.id, id);
    assert_conflict(store.create_agent_with_id(id, "again", site.id, &hash(3)).await);

    assert_invalid(store.create_agent("x", Uuid::new_v4(), &hash(1)).await);
    assert_invalid(store.create_agent("x", site.id, &[0; 31]).await);
    assert_invalid(store.create_agent("", site.id, &hash(1)).await);

    // touch: last seen, version and hostname; None keeps what is stored.
    let seen = ts("2025-11-24T10:30:00.123Z");
    store.touch_agent(a.id, seen, Some("0.1.0"), Some("office-pc")).await.expect("touch");
    let later = ts("2025-11-24T10:31:00Z");
    store.touch_agent(a.id, later, None, None).await.expect("touch again");
    let t = store.get_agent(a.id).await.expect("get").expect("exists");
    assert_eq!(
        (t.last_seen, t.version.as_deref(), t.hostname.as_deref()),
        (Some(later), Some("0.1.0"), Some("office-pc"))
    );
    assert_not_found(store.touch_agent(Uuid::new_v4(), later, None, None).await);

    let names: Vec<_> = store.list_agents().await.expect("list").into_iter().map(|a| a.name).collect();
    assert_eq!(names, ["backup", "lan-pc"]);

    // Revoking sets revoked_at once; the credential says so; the agent stays listed.
    let r = store.revoke_agent(a.id).await.expect("revoke");
    let at = r.revoked_at.expect("revoked_at set");
    assert!(store.agent_credential(a.id).await.expect("cred").expect("exists").1.revoked);
    let again = store.revoke_agent(a.id).await.expect("revoke again");
    assert_eq!(again.revoked_at, Some(at), "the first revocation time is kept");
    assert_eq!(store.list_agents().await.expect("list").len(), 2);
    assert!(!store.agent_credential(b.id).await.expect("cred").expect("exists").1.revoked);
    assert_not_found(store.revoke_agent(Uuid::new_v4()).await);
}

async fn api_tokens(store: Store) {
    let admin = store.create_api_token("ops", Role::Admin, &hash(7)).await.expect("create");
    let staff = store.create_api_token("front desk", Role::Staff, &hash(8)).await.expect("create");
    assert_eq!((admin.role, staff.role, admin.revoked_at), (Role::Admin, Role::Staff, None));
    let (t, cred) = store.api_token_credential(staff.id).await.expect("cred").expect("exists");
    assert_eq!(t, staff);
    assert_eq!((cred.secret_hash, cred.revoked), (hash(8), false));
    assert!(store.api_token_credential(Uuid::new_v4()).await.expect("cred").is_none());

    let id = Uuid::new_v4();
    assert_eq!(store.create_api_token_with_id(id, "cli", Role::Admin, &hash(9)).await.expect("with id").id, id);
    assert_conflict(store.create_api_token_with_id(id, "cli", Role::Admin, &hash(9)).await);
    assert_invalid(store.create_api_token("short", Role::Admin, &[1, 2, 3]).await);

    let names: Vec<_> = store.list_api_tokens().await.expect("list").into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["cli", "front desk", "ops"]);

    let r = store.revoke_api_token(staff.id).await.expect("revoke");
    assert!(r.revoked_at.is_some());
    assert!(store.api_token_credential(staff.id).await.expect("cred").expect("exists").1.revoked);
    assert_eq!(store.revoke_api_token(staff.id).await.expect("again").revoked_at, r.revoked_at);
    assert!(!store.api_token_credential(admin.id).await.expect("cred").expect("exists").1.revoked);
    assert_not_found(store.revoke_api_token(Uuid::new_v4()).await);
}

async fn punches_round_trip_and_dedup(store: Store) {
    let d = device(&store, "door").await;
    let batch = vec![
        NewPunch { uid: 7, status: 4, punch: 1, flags: -3, ..punch("1001", "2025-11-24T09:01:02") },
        punch("1002", "2025-11-24T09:05:00"),
        punch("1001", "2025-11-24T18:00:59"),
    ];
    assert_eq!(store.insert_punches(d.id, &batch).await.expect("insert"), 3);
    // The same batch again stores nothing and says so.
    assert_eq!(store.insert_punches(d.id, &batch).await.expect("insert again"), 0);
    assert_eq!(store.insert_punches_naive(d.id, &batch).await.expect("naive again"), 0);
    // Overlapping batches count only the new rows; duplicates inside one batch count once.
    let overlap = vec![batch[1].clone(), punch("1003", "2025-11-24T09:06:00"), punch("1003", "2025-11-24T09:06:00")];
    assert_eq!(store.insert_punches(d.id, &overlap).await.expect("overlap"), 1);
    assert_eq!(
        store
            .insert_punches_naive(d.id, &[punch("1004", "2025-11-24T09:07:00"), batch[0].clone()])
            .await
            .expect("naive"),
        1
    );
    assert_eq!(store.count_attendance(Some(d.id)).await.expect("count"), 5);
    assert_eq!(store.insert_punches(d.id, &[]).await.expect("empty batch"), 0);

    // The unique key is (device, user, local time): another instant at the same wall-clock time is a duplicate;
    // another device is not.
    let mut moved = batch[1].clone();
    moved.punched_at = moved.punched_at.checked_add(SignedDuration::from_hours(1)).expect("in range");
    assert_eq!(store.insert_punches(d.id, &[moved]).await.expect("same key"), 0);
    let other = device(&store, "gate").await;
    assert_eq!(store.insert_punches(other.id, &batch).await.expect("other device"), 3);
    assert_eq!(store.count_attendance(None).await.expect("count all"), 8);

    // Every field round-trips.
    let f = AttendanceFilter { device_id: Some(d.id), user_id: Some("1001".into()), ..filter(10) };
    let rows = store.list_attendance(&f).await.expect("list").rows;
    assert_eq!(rows.len(), 2);
    let first = &rows[1];
    assert_eq!(
        (first.device_id, first.user_id.as_str(), first.uid, first.local_time, first.punched_at),
        (d.id, "1001", 7, local("2025-11-24T09:01:02"), ts("2025-11-24T03:31:02Z"))
    );
    assert_eq!((first.status, first.punch, first.flags), (4, 1, -3));
    assert!(first.inserted_at > ts("2025-01-01T00:00:00Z"));

    let latest = store.latest_punch(d.id).await.expect("latest").expect("some");
    assert_eq!((latest.user_id.as_str(), latest.local_time), ("1001", local("2025-11-24T18:00:59")));
    assert_eq!(store.latest_punch(device(&store, "empty").await.id).await.expect("latest"), None);

    // Counting by the terminal's wall clock, both ends included, this device only (what a clear is checked with).
    let between = |a: &str, b: &str| store.count_attendance_between(d.id, local(a), local(b));
    assert_eq!(between("2025-11-24T09:01:02", "2025-11-24T09:07:00").await.expect("count"), 4);
    assert_eq!(between("2025-11-24T09:01:03", "2025-11-24T18:00:58").await.expect("count"), 3);
    assert_eq!(between("2025-11-25T00:00:00", "2025-11-26T00:00:00").await.expect("count"), 0);
    // A record whose time is no date, under its placeholder in year 1018: stored, and counted in its range.
    let (placeholder, at) = essl_server::ingest::invalid_time(583_804_800);
    let invalid = NewPunch { local_time: placeholder, punched_at: at, flags: 8, ..punch("9", "2025-11-24T09:00:00") };
    assert_eq!(store.insert_punches(d.id, std::slice::from_ref(&invalid)).await.expect("insert"), 1);
    assert_eq!(store.insert_punches(d.id, &[invalid]).await.expect("again"), 0, "a re-send hits its row");
    assert_eq!(between("1000-01-01T00:00:00", "2025-11-24T09:01:02").await.expect("count"), 2);
    assert_eq!(store.latest_punch(d.id).await.expect("latest").expect("some").local_time, local("2025-11-24T18:00:59"));

    // Unknown device: NotFound, nothing stored.
    assert_not_found(store.insert_punches(Uuid::new_v4(), &batch).await);
    assert_not_found(store.insert_punches_naive(Uuid::new_v4(), &batch).await);
    assert_eq!(store.count_attendance(Some(Uuid::new_v4())).await.expect("count"), 0);
}

/// Terminals keep wall-clock time: the store keeps it as given next to the instant, across DST changes.
async fn punches_keep_wall_clock_across_dst(store: Store) {
    let d = store
        .create_device(&NewDevice { timezone: "America/New_York".into(), ..new_device("ny") })
        .await
        .expect("device");
    let fold_first = punch_in("America/New_York", "7", "2025-11-02T01:30:00"); // EDT, the earlier 01:30
    let gap = punch_in("America/New_York", "7", "2025-03-09T02:30:00"); // does not exist: 03:30 EDT
    let before_1970 = NewPunch { punched_at: ts("1969-07-20T20:17:40Z"), ..punch("8", "1969-07-20T15:17:40") };
    assert_eq!(
        store.insert_punches(d.id, &[fold_first.clone(), gap.clone(), before_1970.clone()]).await.expect("insert"),
        3
    );
    let rows =
        store.list_attendance(&AttendanceFilter { device_id: Some(d.id), ..filter(10) }).await.expect("list").rows;
    let got: Vec<_> = rows.iter().map(|r| (r.local_time, r.punched_at)).collect();
    assert_eq!(
        got,
        [
            (local("2025-11-02T01:30:00"), ts("2025-11-02T05:30:00Z")),
            (local("2025-03-09T02:30:00"), ts("2025-03-09T07:30:00Z")),
            (local("1969-07-20T15:17:40"), ts("1969-07-20T20:17:40Z")),
        ]
    );
    // Whole seconds and years 1..=9999 only.
    assert_invalid(store.insert_punches(d.id, &[punch("9", "2025-01-01T00:00:00.5")]).await);
}

/// A batch is stored whole or not at all. The real constraint used: `user_id` is at most 64 characters, a CHECK
/// in both schemas, so the failing row reaches the database after earlier chunks of the same batch were
/// inserted. A NUL byte is refused by the store before any SQL (PostgreSQL cannot hold it in text).
async fn bad_batch_stores_nothing(store: Store) {
    let d = device(&store, "door").await;
    let kept = punches(10, "2025-01-01T08:00:00");
    assert_eq!(store.insert_punches(d.id, &kept).await.expect("first batch"), 10);

    // 9,000 good rows (more than one chunk on both backends) then one too long.
    let mut batch = punches(9_000, "2025-02-01T08:00:00");
    for (i, p) in batch.iter_mut().enumerate() {
        p.user_id = format!("b{i}");
    }
    batch.push(punch(&"x".repeat(65), "2025-03-01T08:00:00"));
    assert_invalid(store.insert_punches(d.id, &batch).await);
    assert_eq!(store.count_attendance(Some(d.id)).await.expect("count"), 10, "nothing of the failed batch");
    assert_invalid(store.insert_punches_naive(d.id, &batch[8_990..]).await);
    assert_eq!(store.count_attendance(Some(d.id)).await.expect("count"), 10);

    // 64 characters are fine.
    assert_eq!(store.insert_punches(d.id, &[punch(&"y".repeat(64), "2025-03-01T08:00:00")]).await.expect("64"), 1);

    let mut nul = punches(3, "2025-04-01T08:00:00");
    nul[2].user_id = "10\0".into();
    assert_invalid(store.insert_punches(d.id, &nul).await);
    assert_invalid(store.insert_punches_naive(d.id, &nul).await);
    assert_eq!(store.count_attendance(Some(d.id)).await.expect("count"), 11);
}

/// Large batches cross the chunk boundaries (SQLite 4,000 rows, PostgreSQL 5,000) and both inserts agree.
async fn large_batches(store: Store) {
    let a = device(&store, "a").await;
    let b = device(&store, "b").await;
    let mut batch = punches(12_345, "2024-01-01T00:00:00");
    for (i, p) in batch.iter_mut().enumerate() {
        p.user_id = format!("{}", i % 1000);
    }
    assert_eq!(store.insert_punches(a.id, &batch).await.expect("bulk"), 12_345);
    assert_eq!(store.insert_punches_naive(b.id, &batch[..2_000]).await.expect("naive"), 2_000);
    assert_eq!(store.insert_punches(b.id, &batch).await.expect("bulk over naive"), 10_345);
    assert_eq!(store.count_attendance(None).await.expect("count"), 24_690);
    let newest = store.latest_punch(a.id).await.expect("latest").expect("some");
    assert_eq!(newest.flags, 12_344);
}

async fn attendance_pagination(store: Store) {
    let a = device(&store, "a").await;
    let b = device(&store, "b").await;
    // Ties on purpose: every three punches share an instant, so the id decides.
    let make = |n: usize, user: &str| -> Vec<NewPunch> {
        (0..n)
            .map(|i| {
                let mut p = punch(&format!("{user}{i}"), "2025-11-24T09:00:00");
                p.punched_at =
                    ts("2025-11-24T03:30:00Z").checked_add(SignedDuration::from_mins((i / 3) as i64)).expect("range");
                p
            })
            .collect()
    };
    store.insert_punches(a.id, &make(60, "a")).await.expect("a");
    store.insert_punches(b.id, &make(40, "b")).await.expect("b");

    async fn walk(store: &Store, base: &AttendanceFilter) -> Vec<AttendanceRow> {
        let mut all = Vec::new();
        let mut f = base.clone();
        loop {
            let page = store.list_attendance(&f).await.expect("page");
            assert!(page.rows.len() <= f.limit as usize);
            assert_eq!(page.next.is_some(), page.rows.len() == f.limit as usize, "next iff the page is full");
            all.extend(page.rows);
            match page.next {
                Some(c) => f.after = Some(c),
                None => return all,
            }
        }
    }
    for limit in [1, 7, 10, 100, 1000] {
        let rows = walk(&store, &filter(limit)).await;
        assert_eq!(rows.len(), 100, "limit {limit}");
        let ids: HashSet<_> = rows.iter().map(|r| r.id).collect();
        assert_eq!(ids.len(), 100, "each row exactly once with limit {limit}");
        assert!(rows.windows(2).all(|w| (w[0].punched_at, w[0].id) > (w[1].punched_at, w[1].id)), "order");
    }
    let only_a = walk(&store, &AttendanceFilter { device_id: Some(a.id), ..filter(9) }).await;
    assert_eq!(only_a.len(), 60);
    assert!(only_a.iter().all(|r| r.device_id == a.id));

    // from inclusive, to exclusive: minutes 5..10 = punches 15..30 of each device.
    let from = ts("2025-11-24T03:35:00Z");
    let to = ts("2025-11-24T03:40:00Z");
    let window = walk(&store, &AttendanceFilter { from: Some(from), to: Some(to), ..filter(4) }).await;
    assert_eq!(window.len(), 30);
    assert!(window.iter().all(|r| r.punched_at >= from && r.punched_at < to));
    let one_user =
        store.list_attendance(&AttendanceFilter { user_id: Some("b7".into()), ..filter(5) }).await.expect("user");
    assert_eq!(one_user.rows.len(), 1);
    assert_eq!(one_user.next, None);
    let none = store.list_attendance(&filter(0)).await.expect("limit 0");
    assert_eq!((none.rows.len(), none.next), (0, None));

    // A cursor past the end gives an empty last page.
    let last = walk(&store, &filter(100)).await.pop().expect("rows");
    let after = Cursor { punched_at: last.punched_at, id: last.id };
    let empty = store.list_attendance(&AttendanceFilter { after: Some(after), ..filter(5) }).await.expect("past end");
    assert_eq!((empty.rows.len(), empty.next), (0, None));
}

async fn device_users(store: Store) {
    let d = device(&store, "door").await;
    let row = |uid: i32, user_id: &str, name: &str| DeviceUserRow {
        device_id: d.id,
        uid,
        user_id: user_id.to_owned(),
        name: name.to_owned(),
        privilege: if uid == 1 { 14 } else { 0 },
        card: i64::from(uid) * 1_000_003,
        group_id: "1".to_owned(),
    };
    let first = vec![row(2, "1002", "Bea"), row(1, "1001", "Ann")];
    store.replace_device_users(d.id, &first).await.expect("replace");
    assert_eq!(store.list_device_users(d.id).await.expect("list"), [first[1].clone(), first[0].clone()]);

    let second: Vec<_> = (1..=2500).map(|uid| row(uid, &format!("{uid}"), &format!("user {uid}"))).collect();
    store.replace_device_users(d.id, &second).await.expect("replace with many");
    assert_eq!(store.list_device_users(d.id).await.expect("list"), second);

    // A failing replacement keeps the old list (one transaction).
    assert_conflict(store.replace_device_users(d.id, &[row(5, "a", "A"), row(5, "b", "B")]).await);
    assert_invalid(store.replace_device_users(d.id, &[row(6, &"z".repeat(65), "long")]).await);
    let mut foreign = row(7, "x", "X");
    foreign.device_id = Uuid::new_v4();
    assert_invalid(store.replace_device_users(d.id, &[foreign]).await);
    assert_eq!(store.list_device_users(d.id).await.expect("list").len(), 2500);

    store.replace_device_users(d.id, &[]).await.expect("clear");
    assert!(store.list_device_users(d.id).await.expect("list").is_empty());
    assert_not_found(store.replace_device_users(Uuid::new_v4(), &[]).await);
}

/// A terminal's user list as an agent sends it: entries no terminal can hold are left out (never failing the list,
/// which would hold back the punches after it), and the punches after it are flagged against it.
async fn terminal_user_lists(store: Store) {
    use essl_server::ingest::{FLAG_UNKNOWN_USER, store_punches, store_user_list};
    let d = device(&store, "door").await;
    let user = |uid: u16, user_id: &str| essl_wire::DeviceUser {
        uid,
        user_id: user_id.to_owned(),
        name: format!("user {uid}"),
        privilege: 0,
        card: 0,
        group_id: "1".to_owned(),
    };
    let list = vec![user(1, "1001"), user(2, "1002"), user(2, "dup"), user(3, "a\0b"), user(4, &"9".repeat(65))];
    assert_eq!(store_user_list(&store, &d, &list).await.expect("stored"), 2);
    let ids: Vec<String> = store.list_device_users(d.id).await.expect("list").into_iter().map(|u| u.user_id).collect();
    assert_eq!(ids, ["1001", "1002"]);
    let punch = |user_id: &str, second: u32| essl_wire::Punch {
        uid: 0,
        user_id: user_id.to_owned(),
        local_time: format!("2025-11-24T09:00:{second:02}"),
        status: 1,
        punch: 0,
        raw_time: None,
    };
    let stats = store_punches(&store, &d, &[punch("1001", 1), punch("dup", 2), punch("777", 3)]).await.expect("stored");
    assert_eq!((stats.inserted, stats.unknown_user), (3, 2));
    let rows = store.list_attendance(&AttendanceFilter { device_id: Some(d.id), ..filter(10) }).await;
    let flags: BTreeSet<(String, i32)> = rows.expect("list").rows.into_iter().map(|r| (r.user_id, r.flags)).collect();
    let want = [("1001", 0), ("777", FLAG_UNKNOWN_USER), ("dup", FLAG_UNKNOWN_USER)];
    assert_eq!(flags, want.iter().map(|(u, f)| (u.to_string(), *f)).collect());
    // An empty list: nothing known, nothing flagged from then on.
    assert_eq!(store_user_list(&store, &d, &[]).await.expect("stored"), 0);
    let stats = store_punches(&store, &d, &[punch("888", 4)]).await.expect("stored");
    assert_eq!(stats.unknown_user, 0);
}

async fn sync_attempts(store: Store) {
    let d = device(&store, "door").await;
    let site = store.create_site("office").await.expect("site");
    let agent = store.create_agent("pc", site.id, &hash(1)).await.expect("agent");
    let user = Uuid::new_v4();

    let mut start = attempt(d.id, "2025-11-24T10:30:00.123456Z", SyncStatus::InProgress, 0);
    start.synced_by_user_id = Some(user);
    start.agent_id = Some(agent.id);
    let a = store.record_sync(&start).await.expect("record");
    assert_eq!(a.last_sync_time, ts("2025-11-24T10:30:00.123Z"), "stored at millisecond precision");
    assert_eq!((a.sync_status, a.synced_by_user_id, a.agent_id), (SyncStatus::InProgress, Some(user), Some(agent.id)));
    assert_eq!(store.latest_sync(d.id).await.expect("latest"), Some(a.clone()));
    assert_eq!(store.latest_successful_sync(d.id).await.expect("latest ok"), None);

    let progress =
        store.finish_sync(a.id, SyncStatus::InProgress, 10, Some(42), None, None, None).await.expect("progress");
    assert_eq!((progress.records_synced, progress.records_total), (10, Some(42)));
    let done =
        store.finish_sync(a.id, SyncStatus::Success, 42, Some(42), None, None, Some(1234)).await.expect("finish");
    assert_eq!(
        (done.sync_status, done.records_synced, done.records_total, done.sync_duration_ms),
        (SyncStatus::Success, 42, Some(42), Some(1234))
    );
    assert_eq!(
        (done.last_sync_time, done.synced_by_user_id, done.agent_id),
        (a.last_sync_time, Some(user), Some(agent.id))
    );
    assert_conflict(store.finish_sync(a.id, SyncStatus::Failed, 0, None, None, None, None).await);
    assert_not_found(store.finish_sync(Uuid::new_v4(), SyncStatus::Failed, 0, None, None, None, None).await);

    // A later failure: latest is the failure, latest success stays.
    let mut fail = attempt(d.id, "2025-11-24T10:45:00Z", SyncStatus::InProgress, 0);
    fail.synced_by_user_id = Some(user);
    let f = store.record_sync(&fail).await.expect("record");
    let msg = "connect 192.168.1.71:4370: timed out".to_owned();
    let f = store
        .finish_sync(f.id, SyncStatus::Failed, 0, None, Some(msg.clone()), Some(ErrorKind::Connection), Some(3001))
        .await
        .expect("fail");
    assert_eq!((f.error_message.as_deref(), f.error_kind), (Some(msg.as_str()), Some(ErrorKind::Connection)));
    assert_eq!(store.latest_sync(d.id).await.expect("latest"), Some(f.clone()));
    assert_eq!(store.latest_successful_sync(d.id).await.expect("latest ok"), Some(done.clone()));

    // An older attempt recorded afterwards does not become the latest; a finished one can be recorded directly.
    let old = store.record_sync(&attempt(d.id, "2025-11-20T00:00:00Z", SyncStatus::Success, 5)).await.expect("old");
    assert_eq!(store.latest_sync(d.id).await.expect("latest").map(|s| s.id), Some(f.id));
    assert_eq!(store.latest_successful_sync(d.id).await.expect("latest ok").map(|s| s.id), Some(done.id));

    let other = device(&store, "gate").await;
    let o = store.record_sync(&attempt(other.id, "2025-11-24T11:00:00Z", SyncStatus::Failed, 0)).await.expect("other");

    let ids = |v: Vec<SyncAttempt>| v.into_iter().map(|s| s.id).collect::<Vec<_>>();
    assert_eq!(ids(store.sync_history(Some(d.id), 10).await.expect("history")), [f.id, a.id, old.id]);
    assert_eq!(ids(store.sync_history(Some(d.id), 2).await.expect("history")), [f.id, a.id]);
    assert_eq!(ids(store.sync_history(None, 10).await.expect("all")), [o.id, f.id, a.id, old.id]);
    assert!(store.sync_history(Some(Uuid::new_v4()), 10).await.expect("unknown").is_empty());

    assert_not_found(store.record_sync(&attempt(Uuid::new_v4(), "2025-11-24T10:30:00Z", SyncStatus::Success, 1)).await);
    let mut ghost = attempt(d.id, "2025-11-24T10:30:00Z", SyncStatus::Success, 1);
    ghost.agent_id = Some(Uuid::new_v4());
    assert_invalid(store.record_sync(&ghost).await);
    assert_invalid(
        store
            .record_sync(&NewSyncAttempt {
                error_message: Some("a\0b".into()),
                ..attempt(d.id, "2025-11-24T10:30:00Z", SyncStatus::Failed, 0)
            })
            .await,
    );

    // The sync log.
    store.add_sync_log(d.id, Some(a.id), "info", "started").await.expect("log");
    store.add_sync_log(d.id, Some(a.id), "info", "42 records").await.expect("log");
    store.add_sync_log(d.id, None, "error", &msg).await.expect("log");
    let log = store.sync_log(d.id, 10).await.expect("log");
    let lines: Vec<_> = log.iter().map(|l| (l.level.as_str(), l.message.as_str(), l.sync_id)).collect();
    assert_eq!(
        lines,
        [("error", msg.as_str(), None), ("info", "42 records", Some(a.id)), ("info", "started", Some(a.id))]
    );
    assert!(log.iter().all(|l| l.device_id == d.id && l.at > ts("2025-01-01T00:00:00Z")));
    assert_eq!(store.sync_log(d.id, 1).await.expect("log").len(), 1);
    assert!(store.sync_log(other.id, 10).await.expect("log").is_empty());
    assert_not_found(store.add_sync_log(Uuid::new_v4(), None, "info", "x").await);
    assert_invalid(store.add_sync_log(d.id, Some(Uuid::new_v4()), "info", "x").await);
}

async fn sync_summaries(store: Store) {
    // Names in byte order: "Beta" < "Zeta" < "alpha".
    let alpha = device(&store, "alpha").await;
    let beta = device(&store, "Beta").await;
    let zeta = store
        .create_device(&NewDevice { active: false, ip_address: String::new(), ..new_device("Zeta") })
        .await
        .expect("zeta");

    store.record_sync(&attempt(alpha.id, "2025-11-24T10:00:00Z", SyncStatus::Success, 10)).await.expect("ok");
    store.record_sync(&attempt(alpha.id, "2025-11-24T09:00:00Z", SyncStatus::Success, 99)).await.expect("older ok");
    let mut fail = attempt(alpha.id, "2025-11-24T10:15:00Z", SyncStatus::Failed, 0);
    fail.error_message = Some("boom".into());
    fail.error_kind = Some(ErrorKind::Other);
    store.record_sync(&fail).await.expect("fail");
    store.insert_punches(alpha.id, &punches(3, "2025-11-24T09:00:00")).await.expect("punches");
    store.insert_punches(zeta.id, &punches(2, "2025-11-24T09:00:00")).await.expect("punches");
    store.record_sync(&attempt(zeta.id, "2025-11-24T11:00:00Z", SyncStatus::InProgress, 0)).await.expect("running");

    let s = store.device_sync_summaries().await.expect("summaries");
    assert_eq!(s.iter().map(|x| x.device_id).collect::<Vec<_>>(), [beta.id, zeta.id, alpha.id]);
    assert_eq!(
        s[0],
        DeviceSyncSummary {
            device_id: beta.id,
            device_name: "Beta".into(),
            ip_address: "192.168.1.71".into(),
            last_sync_time: None,
            sync_status: None,
            records_synced: None,
            error_message: None,
            last_success_time: None,
            last_success_records: None,
            attendance_count: 0,
        }
    );
    assert_eq!(
        s[1],
        DeviceSyncSummary {
            device_id: zeta.id,
            device_name: "Zeta".into(),
            ip_address: String::new(),
            last_sync_time: Some(ts("2025-11-24T11:00:00Z")),
            sync_status: Some(SyncStatus::InProgress),
            records_synced: Some(0),
            error_message: None,
            last_success_time: None,
            last_success_records: None,
            attendance_count: 2,
        }
    );
    assert_eq!(
        s[2],
        DeviceSyncSummary {
            device_id: alpha.id,
            device_name: "alpha".into(),
            ip_address: "192.168.1.71".into(),
            last_sync_time: Some(ts("2025-11-24T10:15:00Z")),
            sync_status: Some(SyncStatus::Failed),
            records_synced: Some(0),
            error_message: Some("boom".into()),
            last_success_time: Some(ts("2025-11-24T10:00:00Z")),
            last_success_records: Some(10),
            attendance_count: 3,
        }
    );
}

async fn delete_cascades(store: Store) {
    let site = store.create_site("office").await.expect("site");
    let d = store.create_device(&NewDevice { site_id: Some(site.id), ..new_device("doomed") }).await.expect("device");
    let keep = device(&store, "kept").await;
    for id in [d.id, keep.id] {
        store.insert_punches(id, &punches(5, "2025-11-24T09:00:00")).await.expect("punches");
        let row = DeviceUserRow {
            device_id: id,
            uid: 1,
            user_id: "1".into(),
            name: "A".into(),
            privilege: 0,
            card: 0,
            group_id: "1".into(),
        };
        store.replace_device_users(id, &[row]).await.expect("users");
        let s = store.record_sync(&attempt(id, "2025-11-24T10:00:00Z", SyncStatus::Success, 5)).await.expect("sync");
        store.add_sync_log(id, Some(s.id), "info", "done").await.expect("log");
    }
    store.delete_device(d.id).await.expect("delete");
    assert_eq!(store.count_attendance(Some(d.id)).await.expect("count"), 0);
    assert!(store.list_device_users(d.id).await.expect("users").is_empty());
    assert_eq!(store.latest_sync(d.id).await.expect("sync"), None);
    assert!(store.sync_log(d.id, 10).await.expect("log").is_empty());
    // The other device and the site are untouched.
    assert_eq!(store.count_attendance(None).await.expect("count"), 5);
    assert_eq!(store.list_device_users(keep.id).await.expect("users").len(), 1);
    assert_eq!(store.sync_history(None, 10).await.expect("history").len(), 1);
    assert_eq!(store.sync_log(keep.id, 10).await.expect("log").len(), 1);
    assert!(store.get_site(site.id).await.expect("site").is_some());
    let summaries = store.device_sync_summaries().await.expect("summaries");
    assert_eq!(summaries.iter().map(|s| s.device_id).collect::<Vec<_>>(), [keep.id]);
}

/// Every string field stores and returns SQL metacharacters verbatim, and they never act as SQL.
async fn metacharacters_round_trip(store: Store) {
    for (i, n) in NASTY.iter().copied().enumerate() {
        let site = store.create_site(n).await.expect("site");
        assert_eq!(store.site_by_name(n).await.expect("by name").map(|s| s.id), Some(site.id));
        assert_eq!(store.ensure_site(n).await.expect("ensure").id, site.id);

        let nd = NewDevice {
            ip_address: n.to_owned(),
            serial_number: Some(format!("{n}#{i}")),
            site_id: Some(site.id),
            ..new_device(n)
        };
        let d = store.create_device(&nd).await.expect("device");
        let got = store.get_device(d.id).await.expect("get").expect("exists");
        assert_eq!((got.name.as_str(), got.ip_address.as_str()), (n, n));
        assert_eq!(got.serial_number, Some(format!("{n}#{i}")));
        let renamed = format!("{n} (renamed)");
        let p = DevicePatch { name: Some(renamed.clone()), ip_address: Some(renamed.clone()), ..Default::default() };
        assert_eq!(store.update_device(d.id, &p).await.expect("patch").name, renamed);

        let agent = store.create_agent(n, site.id, &hash(i as u8)).await.expect("agent");
        store.touch_agent(agent.id, ts("2025-11-24T10:00:00Z"), Some(n), Some(n)).await.expect("touch");
        let a = store.get_agent(agent.id).await.expect("get").expect("exists");
        assert_eq!((a.name.as_str(), a.version.as_deref(), a.hostname.as_deref()), (n, Some(n), Some(n)));
        let t = store.create_api_token(n, Role::Staff, &hash(i as u8)).await.expect("token");
        assert_eq!(store.api_token_credential(t.id).await.expect("cred").expect("exists").0.name, n);

        let user_id: String = n.chars().take(64).collect();
        assert_eq!(store.insert_punches(d.id, &[punch(&user_id, "2025-11-24T09:00:00")]).await.expect("punch"), 1);
        assert_eq!(store.insert_punches(d.id, &[punch(&user_id, "2025-11-24T09:00:00")]).await.expect("dup"), 0);
        let f = AttendanceFilter { user_id: Some(user_id.clone()), ..filter(10) };
        let rows = store.list_attendance(&f).await.expect("by user").rows;
        assert_eq!(rows.iter().map(|r| r.user_id.as_str()).collect::<Vec<_>>(), [user_id.as_str()]);

        let u = DeviceUserRow {
            device_id: d.id,
            uid: 1,
            user_id: user_id.clone(),
            name: n.into(),
            privilege: 0,
            card: 1,
            group_id: n.into(),
        };
        store.replace_device_users(d.id, std::slice::from_ref(&u)).await.expect("users");
        assert_eq!(store.list_device_users(d.id).await.expect("users"), [u]);

        let a = NewSyncAttempt {
            error_message: Some(n.into()),
            ..attempt(d.id, "2025-11-24T10:00:00Z", SyncStatus::InProgress, 0)
        };
        let s = store.record_sync(&a).await.expect("sync");
        assert_eq!(s.error_message.as_deref(), Some(n));
        let s = store
            .finish_sync(s.id, SyncStatus::Failed, 0, None, Some(format!("{n}!")), Some(ErrorKind::Other), None)
            .await;
        assert_eq!(s.expect("finish").error_message, Some(format!("{n}!")));
        store.add_sync_log(d.id, Some(s_id(&store, d.id).await), n, n).await.expect("log");
        let log = store.sync_log(d.id, 1).await.expect("log");
        assert_eq!((log[0].level.as_str(), log[0].message.as_str()), (n, n));
        let summary = store.device_sync_summaries().await.expect("summaries");
        assert!(
            summary.iter().any(|x| x.device_name == renamed && x.error_message.as_deref() == Some(&format!("{n}!")))
        );
    }
    // Lookups with metacharacters find nothing rather than everything.
    assert_eq!(store.site_by_name("' OR '1'='1").await.expect("lookup"), None);
    let f = AttendanceFilter { user_id: Some("' OR '1'='1".into()), ..filter(10) };
    assert!(store.list_attendance(&f).await.expect("lookup").rows.is_empty());
    assert_invalid(store.create_device(&NewDevice { timezone: NASTY[0].into(), ..new_device("tz") }).await);
    // Every table is still there, with every row.
    assert_eq!(store.list_devices(false).await.expect("devices").len(), NASTY.len());
    assert_eq!(store.list_sites().await.expect("sites").len(), NASTY.len());
    assert_eq!(store.count_attendance(None).await.expect("count"), NASTY.len() as i64);
}

async fn s_id(store: &Store, device_id: Uuid) -> Uuid {
    store.latest_sync(device_id).await.expect("latest").expect("some").id
}

/// 8 tasks insert overlapping batches into one device at once: all succeed and the union is stored once.
async fn concurrent_overlapping_batches(store: Store) {
    let d = device(&store, "busy").await;
    let expected = concurrent_inserts(vec![store.clone(); 8], d.id).await;
    assert_eq!(store.count_attendance(Some(d.id)).await.expect("count"), expected);
}

/// Task `i` inserts users `i*500 .. i*500+1000` in 4 batches (half of them also sent by task `i+1`), reading
/// between batches; returns the size of the union after checking the new-row counts add up to it.
async fn concurrent_inserts(stores: Vec<Store>, device_id: Uuid) -> i64 {
    let tasks: Vec<_> = stores
        .into_iter()
        .enumerate()
        .map(|(i, store)| {
            tokio::spawn(async move {
                let all: Vec<NewPunch> =
                    (i * 500..i * 500 + 1000).map(|u| punch(&format!("{u}"), "2025-11-24T09:00:00")).collect();
                let mut new = 0;
                for batch in all.chunks(250) {
                    new += store.insert_punches(device_id, batch).await.expect("no SQLITE_BUSY, no error");
                    store.count_attendance(Some(device_id)).await.expect("read while others write");
                }
                new
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("task");
    }
    let union: BTreeSet<usize> = (0..8).flat_map(|i| i * 500..i * 500 + 1000).collect();
    assert_eq!(total, union.len() as u64, "each row counted new exactly once");
    union.len() as i64
}

async fn dashboard_users_and_sessions(store: Store) {
    let u = store.create_user("Ann.Lee@HQ", Role::Admin, "pbkdf2-sha256$1000$AAAA$BBBB").await.expect("user");
    assert_eq!(u.username, "ann.lee@hq", "stored lowercase");
    assert!(matches!(store.create_user("ANN.LEE@hq", Role::Staff, "x").await, Err(StoreError::Conflict(_))));
    for bad in ["", "has space", "semi;colon", NASTY[0], &"x".repeat(65)] {
        assert!(matches!(store.create_user(bad, Role::Staff, "x").await, Err(StoreError::Invalid(_))), "{bad:?}");
    }
    let (found, hash) = store.user_login("ann.LEE@hq").await.expect("read").expect("found");
    assert_eq!((found.id, hash.as_str()), (u.id, "pbkdf2-sha256$1000$AAAA$BBBB"));
    assert!(store.user_login("nobody").await.expect("read").is_none());
    assert!(store.user_login(NASTY[1]).await.expect("a bad name is just not found").is_none());

    let new = |secs: i64| NewSession {
        id: Uuid::new_v4(),
        user_id: u.id,
        secret_hash: hash_of(7),
        csrf_token: "csrf".into(),
        expires_at: Timestamp::now() + SignedDuration::from_secs(secs),
    };
    let live = new(3600);
    let expired = new(-1);
    store.create_session(&live).await.expect("session");
    store.create_session(&expired).await.expect("session");
    let s = store.live_session(live.id).await.expect("read").expect("live");
    assert_eq!((s.user.id, s.csrf_token.as_str(), s.secret_hash.clone()), (u.id, "csrf", hash_of(7)));
    assert!(store.live_session(expired.id).await.expect("read").is_none(), "expired sessions are not live");
    assert_eq!(store.delete_expired_sessions().await.expect("sweep"), 1);
    assert!(matches!(
        store.create_session(&NewSession { user_id: Uuid::new_v4(), ..new(60) }).await,
        Err(StoreError::Invalid(_) | StoreError::NotFound | StoreError::Db(_))
    ));

    // A new password ends every session of that user.
    store.set_password("ANN.LEE@HQ", "pbkdf2-sha256$1000$CCCC$DDDD").await.expect("password");
    assert!(store.live_session(live.id).await.expect("read").is_none());
    assert!(matches!(store.set_password("nobody", "x").await, Err(StoreError::NotFound)));
    let other = new(60);
    store.create_session(&other).await.expect("session");
    store.delete_session(other.id).await.expect("logout");
    store.delete_session(other.id).await.expect("logout twice is fine");
    assert!(store.live_session(other.id).await.expect("read").is_none());
    assert_eq!(store.list_users().await.expect("list").len(), 1);
}

/// Security-PUSH (3.x) registration and sessions: a registration keeps the code and forgets the session; the first
/// session stored is the one every later call gets.
async fn push_sessions(store: Store) {
    assert_not_found(store.register_push("NEVERSEEN01", "code").await);
    let seen = PushSeen {
        serial: "ACC0001".into(),
        at: ts("2026-01-05T08:00:00Z"),
        address: None,
        push_version: Some("3.1.2".into()),
        dialect: Some("acc".into()),
        language: None,
    };
    let t = store.push_seen(&seen).await.expect("seen");
    assert_eq!((t.registry_code, t.session_id), (None, None));
    assert_eq!(store.push_session("ACC0001", "s1").await.expect("session"), None, "not registered: no session");
    assert_eq!(store.register_push("ACC0001", "code1").await.expect("registered"), "code1");
    assert_eq!(store.register_push("ACC0001", "code2").await.expect("registered"), "code1", "the code is kept");
    let first = store.push_session("ACC0001", "s1").await.expect("session");
    assert_eq!(first, Some(("code1".to_owned(), "s1".to_owned())));
    assert_eq!(store.push_session("ACC0001", "s2").await.expect("session"), first, "the stored session is kept");
    let t = store.get_push_terminal("ACC0001").await.expect("read").expect("terminal");
    assert_eq!((t.registry_code.as_deref(), t.session_id.as_deref()), (Some("code1"), Some("s1")));
    assert_eq!(store.register_push("ACC0001", "code3").await.expect("registered"), "code1");
    let t = store.push_seen(&seen).await.expect("seen");
    assert_eq!(t.session_id, None, "a registration forgets the session");
    let renewed = store.push_session("ACC0001", "s3").await.expect("session");
    assert_eq!(renewed, Some(("code1".to_owned(), "s3".to_owned())));
    assert_invalid(store.push_session("ACC0001", "nul\0").await);
}

fn hash_of(b: u8) -> Vec<u8> {
    vec![b; 32]
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite_file {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = crate::common::db::sqlite_file().await;
                    super::$name(db.store.clone()).await;
                }
            )*
        }
        mod sqlite_memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = crate::common::db::sqlite_memory().await;
                    super::$name(db.store.clone()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = crate::common::db::postgres().await else { return };
                    super::$name(db.store.clone()).await;
                }
            )*
        }
    };
}

conformance!(
    ping_and_backend,
    dashboard_users_and_sessions,
    sites,
    devices,
    agents,
    api_tokens,
    punches_round_trip_and_dedup,
    punches_keep_wall_clock_across_dst,
    bad_batch_stores_nothing,
    large_batches,
    attendance_pagination,
    device_users,
    terminal_user_lists,
    sync_attempts,
    sync_summaries,
    delete_cascades,
    metacharacters_round_trip,
    concurrent_overlapping_batches,
    push_sessions,
);

// ---- connecting

#[tokio::test]
async fn connect_rejects_unknown_urls() {
    assert_invalid(Store::connect("mysql://root@localhost/essl").await);
    assert_invalid(Store::connect("essl.db").await);
    assert_invalid(Store::connect("sqlite:").await);
}

#[tokio::test]
async fn connect_reports_an_unreachable_postgres() {
    // Port 1 on loopback: refused at once.
    let r = Store::connect("postgres://postgres@127.0.0.1:1/essl").await;
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "got {r:?}");
}

#[tokio::test]
async fn sqlite_file_is_created_and_reopened() {
    let dir = common::db::temp_dir();
    let path = dir.join("sub-dir-free.db");
    assert!(!path.exists());
    let url = format!("sqlite:{}", path.display());
    let store = Store::connect(&url).await.expect("create");
    assert_eq!(store.backend(), "sqlite");
    assert!(path.exists(), "the file is created on first open");
    let site = store.create_site("HQ").await.expect("site");
    store.close().await;
    assert!(matches!(store.ping().await, Err(StoreError::Unavailable(_))), "closed");
    // Reopening applies no migration twice and keeps the data.
    let again = Store::connect(&format!("sqlite://{}", path.display())).await.expect("reopen");
    assert_eq!(again.site_by_name("HQ").await.expect("read"), Some(site));
    again.close().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// Separate stores (as separate server processes would be) on one SQLite file: writers wait for each other on
/// `BEGIN IMMEDIATE` and the busy timeout instead of failing with SQLITE_BUSY.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_separate_stores_share_one_file() {
    let db = common::db::sqlite_file().await;
    let d = device(&db.store, "shared").await;
    let mut stores = Vec::new();
    for _ in 0..8 {
        stores.push(Store::connect(&db.url).await.expect("open the same file"));
    }
    let expected = concurrent_inserts(stores.clone(), d.id).await;
    assert_eq!(db.store.count_attendance(Some(d.id)).await.expect("count"), expected);
    for s in stores {
        s.close().await;
    }
}

// ---- PostgreSQL only: the seed's schema, functions and monitoring queries

mod seed_postgres {
    use super::*;
    use sqlx::Row;
    use sqlx::postgres::PgPool;

    async fn setup() -> Option<(common::db::TestDb, PgPool)> {
        let db = common::db::postgres().await?;
        let pool = PgPool::connect(&db.url).await.expect("raw connection");
        Some((db, pool))
    }

    /// The seed's setup step, its two monitoring queries and its helper functions, verbatim.
    #[tokio::test]
    async fn seed_queries_run_as_written() {
        let Some((db, pool)) = setup().await else { return };
        let store = &db.store;

        // "Update essl_devices table" from the seed, verbatim: defaults fill the new columns.
        sqlx::query("INSERT INTO essl_devices (device_name, ip_address, port, is_active)\nVALUES ('Main ESSL Device', '192.168.1.71', 4370, true);")
            .execute(&pool)
            .await
            .expect("the seed's device insert");
        let main = store.list_devices(true).await.expect("list").pop().expect("the seed's device");
        assert_eq!(
            (main.name.as_str(), main.ip_address.as_str(), main.port),
            ("Main ESSL Device", "192.168.1.71", 4370)
        );
        assert_eq!((main.kind, main.timezone.as_str(), main.comm_key, main.udp), (DeviceKind::Pull, "UTC", 0, false));
        let idle = device(store, "Idle").await;

        let now = Timestamp::now();
        let at = |mins: i64| now.checked_sub(SignedDuration::from_mins(mins)).expect("range").to_string();
        store.record_sync(&attempt(main.id, &at(40), SyncStatus::Success, 42)).await.expect("ok");
        let mut fail = attempt(main.id, &at(15), SyncStatus::Failed, 0);
        fail.error_message = Some("Device unreachable".into());
        fail.error_kind = Some(ErrorKind::Connection);
        let latest = store.record_sync(&fail).await.expect("fail");

        let rows = sqlx::query("SELECT * FROM get_all_devices_sync_status();").fetch_all(&pool).await.expect("status");
        assert_eq!(rows.len(), 2, "every device is listed");
        let r = rows.iter().find(|r| r.get::<Uuid, _>("device_id") == main.id).expect("main device");
        assert_eq!(r.get::<String, _>("device_name"), "Main ESSL Device");
        assert_eq!(r.get::<Option<String>, _>("ip_address").as_deref(), Some("192.168.1.71"));
        assert_eq!(r.get::<Option<String>, _>("sync_status").as_deref(), Some("failed"));
        assert_eq!(r.get::<Option<i32>, _>("records_synced"), Some(0));
        assert_eq!(r.get::<Option<String>, _>("error_message").as_deref(), Some("Device unreachable"));
        assert_eq!(r.get::<Option<i32>, _>("minutes_since_sync"), Some(15));
        let synced: i64 = sqlx::query_scalar(
            "SELECT essl_ms(last_sync_time) FROM get_all_devices_sync_status() WHERE device_id = $1",
        )
        .bind(main.id)
        .fetch_one(&pool)
        .await
        .expect("time");
        assert_eq!(synced, latest.last_sync_time.as_millisecond());
        let r = rows.iter().find(|r| r.get::<Uuid, _>("device_id") == idle.id).expect("idle device");
        assert_eq!(
            (r.get::<Option<String>, _>("sync_status"), r.get::<Option<i32>, _>("minutes_since_sync")),
            (None, None)
        );

        let history = sqlx::query(
            "SELECT \n  device_id,\n  last_sync_time,\n  sync_status,\n  records_synced,\n  error_message\nFROM essl_sync_status\nORDER BY last_sync_time DESC\nLIMIT 20;",
        )
        .fetch_all(&pool)
        .await
        .expect("the seed's history query");
        let statuses: Vec<(Uuid, String, i32)> =
            history.iter().map(|r| (r.get("device_id"), r.get("sync_status"), r.get("records_synced"))).collect();
        assert_eq!(statuses, [(main.id, "failed".into(), 0), (main.id, "success".into(), 42)]);

        let l = sqlx::query("SELECT * FROM get_latest_sync_status($1)")
            .bind(main.id)
            .fetch_all(&pool)
            .await
            .expect("latest");
        assert_eq!(l.len(), 1);
        assert_eq!((l[0].get::<Uuid, _>("id"), l[0].get::<String, _>("sync_status")), (latest.id, "failed".into()));
        let none =
            sqlx::query("SELECT * FROM get_latest_sync_status($1)").bind(idle.id).fetch_all(&pool).await.expect("none");
        assert!(none.is_empty());
        pool.close().await;
    }

    /// RLS is on; `authenticated` reads devices, sync status and attendance but not tokens; the owner is not
    /// restricted.
    #[tokio::test]
    async fn row_level_security() {
        let Some((db, pool)) = setup().await else { return };
        let d = device(&db.store, "door").await;
        db.store.create_agent("pc", db.store.create_site("s").await.expect("site").id, &hash(1)).await.expect("agent");

        let unprotected: Vec<String> = sqlx::query_scalar(
            "SELECT relname::text FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace \
             AND (relname LIKE 'essl\\_%' OR relname = 'device_sync_logs') AND NOT relrowsecurity",
        )
        .fetch_all(&pool)
        .await
        .expect("pg_class");
        assert!(unprotected.is_empty(), "tables without RLS: {unprotected:?}");

        let mut tx = pool.begin().await.expect("tx");
        sqlx::query("SET LOCAL ROLE authenticated").execute(&mut *tx).await.expect("become authenticated");
        let ids: Vec<Uuid> =
            sqlx::query_scalar("SELECT id FROM essl_devices").fetch_all(&mut *tx).await.expect("devices");
        assert_eq!(ids, [d.id]);
        sqlx::query("SELECT count(*) FROM essl_attendance").execute(&mut *tx).await.expect("attendance");
        sqlx::query("SELECT * FROM get_all_devices_sync_status()").execute(&mut *tx).await.expect("status");
        let denied = sqlx::query("SELECT token_hash FROM essl_agents").fetch_all(&mut *tx).await;
        assert!(denied.is_err(), "authenticated must not read agent token hashes");
        drop(tx);

        let mut tx = pool.begin().await.expect("tx");
        sqlx::query("SET LOCAL ROLE service_role").execute(&mut *tx).await.expect("become service_role");
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM essl_agents").fetch_one(&mut *tx).await.expect("agents");
        assert_eq!(n, 1);
        drop(tx);
        pool.close().await;
    }

    /// Times are timestamptz exactly at the millisecond the store was given; local times are `timestamp`.
    #[tokio::test]
    async fn column_types_follow_the_seed() {
        let Some((db, pool)) = setup().await else { return };
        let types: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT table_name::text, column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = 'public' AND table_name IN ('essl_devices', 'essl_sync_status', 'essl_attendance') \
             ORDER BY table_name, column_name",
        )
        .fetch_all(&pool)
        .await
        .expect("columns");
        let ty = |t: &str, c: &str| {
            types
                .iter()
                .find(|(tt, cc, _)| tt == t && cc == c)
                .map(|x| x.2.clone())
                .unwrap_or_else(|| panic!("{t}.{c} missing"))
        };
        assert_eq!(ty("essl_devices", "id"), "uuid");
        assert_eq!(ty("essl_devices", "port"), "integer");
        assert_eq!(ty("essl_devices", "created_at"), "timestamp with time zone");
        assert_eq!(ty("essl_sync_status", "last_sync_time"), "timestamp with time zone");
        assert_eq!(ty("essl_sync_status", "synced_by_user_id"), "uuid");
        assert_eq!(ty("essl_sync_status", "sync_duration_ms"), "integer");
        assert_eq!(ty("essl_attendance", "local_time"), "timestamp without time zone");
        assert_eq!(ty("essl_attendance", "punched_at"), "timestamp with time zone");

        let d = device(&db.store, "door").await;
        db.store.insert_punches(d.id, &[punch("1", "2025-11-24T09:01:02")]).await.expect("punch");
        let (lt, pa): (String, String) =
            sqlx::query_as("SELECT local_time::text, (punched_at AT TIME ZONE 'UTC')::text FROM essl_attendance")
                .fetch_one(&pool)
                .await
                .expect("row");
        assert_eq!((lt.as_str(), pa.as_str()), ("2025-11-24 09:01:02", "2025-11-24 03:31:02"));
        pool.close().await;
    }
}
