//! The outbox against real files in the temp directory: order, acks, watermarks, the bound, crash recovery.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use essl_wire::Punch;

use super::*;

/// A fresh path under the temp directory, removed (with its WAL and damaged copies) when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str) -> TempFile {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("essl-outbox-{}-{n}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempFile(dir.join("outbox.db"))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn punch(i: usize) -> Punch {
    Punch {
        uid: (i % 40) as u16 + 1,
        user_id: format!("{}", 1000 + i % 40),
        local_time: format!("2025-11-{:02}T{:02}:{:02}:{:02}", 1 + i / 86_400 % 28, i / 3600 % 24, i / 60 % 60, i % 60),
        status: 1,
        punch: (i % 2) as u8,
        raw_time: None,
    }
}

fn read(serial: &str, n: usize) -> TerminalRead {
    TerminalRead { serial: serial.into(), records: (0..n).map(punch).collect(), users: None }
}

async fn open(path: &Path) -> Outbox {
    let (outbox, recovery) = Outbox::open(path, 256 << 20).await.expect("opens");
    assert_eq!(recovery, None);
    outbox
}

/// Every queued batch, in order.
async fn drain(outbox: &Outbox) -> Vec<Queued> {
    let mut out = Vec::new();
    let mut after = 0;
    while let Some(b) = outbox.next_after(after).await.expect("reads") {
        after = b.id;
        out.push(b);
    }
    out
}

async fn ack_all(outbox: &Outbox) {
    for b in drain(outbox).await {
        outbox.ack(b.id).await.expect("acks");
    }
}

#[tokio::test]
async fn batches_leave_in_order_and_only_when_acknowledged() {
    let file = TempFile::new("order");
    let outbox = open(&file.0).await;
    let first = outbox.enqueue_read("dev-a", &read("S1", 12_000), None).await.expect("queued");
    assert_eq!((first.read, first.sent, first.batches.len(), first.reset), (12_000, 12_000, 3, None));
    let live = outbox.enqueue_punches("dev-b", &[punch(99)]).await.expect("queued");
    let queued = drain(&outbox).await;
    let ids: Vec<u64> = queued.iter().map(|b| b.id).collect();
    assert_eq!(ids, [first.batches.clone(), live].concat(), "oldest first");
    let records: Vec<Punch> = queued[..3].iter().flat_map(|b| b.records.clone()).collect();
    assert_eq!(records, read("S1", 12_000).records);

    // The watermark moves only when every batch of the read is acknowledged.
    outbox.ack(first.batches[0]).await.expect("ack");
    outbox.ack(first.batches[0]).await.expect("a second ack is ignored");
    assert_eq!(outbox.watermark("dev-a").await.expect("reads"), None);
    assert_eq!(outbox.still_queued(&first.batches).await.expect("reads"), 2);
    outbox.ack(first.batches[2]).await.expect("ack");
    outbox.ack(first.batches[1]).await.expect("ack");
    let mark = outbox.watermark("dev-a").await.expect("reads").expect("advanced");
    assert_eq!((mark.serial.as_str(), mark.count), ("S1", 12_000));
    assert_eq!(outbox.still_queued(&first.batches).await.expect("reads"), 0);
    let stats = outbox.stats().await.expect("stats");
    assert_eq!((stats.batches, stats.punches), (1, 1), "the realtime punch is still queued");
}

#[tokio::test]
async fn second_read_sends_only_what_is_new_and_a_cleared_log_everything() {
    let file = TempFile::new("incremental");
    let outbox = open(&file.0).await;
    outbox.enqueue_read("d", &read("S1", 100_000), None).await.expect("queued");
    ack_all(&outbox).await;

    let again = outbox.enqueue_read("d", &read("S1", 100_000), None).await.expect("queued");
    assert_eq!((again.read, again.sent, again.batches.len()), (100_000, 0, 0));
    let more = outbox.enqueue_read("d", &read("S1", 100_010), None).await.expect("queued");
    assert_eq!(more.sent, 10);
    assert_eq!(drain(&outbox).await[0].records, (100_000..100_010).map(punch).collect::<Vec<_>>());

    // Not yet acknowledged, but durably queued: a read meanwhile does not queue the same ten again.
    let meanwhile = outbox.enqueue_read("d", &read("S1", 100_012), None).await.expect("queued");
    assert_eq!(meanwhile.sent, 2);
    ack_all(&outbox).await;
    assert_eq!(outbox.watermark("d").await.expect("reads").map(|m| m.count), Some(100_012));

    // Cleared and three new punches: all three, and the watermark starts again from them.
    let cleared = TerminalRead { serial: "S1".into(), records: (500_000..500_003).map(punch).collect(), users: None };
    let after_clear = outbox.enqueue_read("d", &cleared, None).await.expect("queued");
    assert_eq!(after_clear.sent, 3);
    assert!(matches!(after_clear.reset, Some(Reset::CountWentDown { was: 100_012, now: 3 })));
    ack_all(&outbox).await;
    assert_eq!(outbox.enqueue_read("d", &cleared, None).await.expect("queued").sent, 0);
    // Another terminal at the same address.
    let replaced = outbox.enqueue_read("d", &read("S2", 3), None).await.expect("queued");
    assert!(matches!(replaced.reset, Some(Reset::SerialChanged { .. })));
    assert_eq!(replaced.sent, 3);
}

#[tokio::test]
async fn request_tags_ride_with_their_batches() {
    let file = TempFile::new("tags");
    let outbox = open(&file.0).await;
    let tag = Tag { conn: 3, request: 41 };
    let queued = outbox.enqueue_read("d", &read("S", 7), Some(tag)).await.expect("queued");
    outbox.enqueue_punches("d", &[punch(1)]).await.expect("queued");
    let batches = drain(&outbox).await;
    assert_eq!(batches[0].id, queued.batches[0]);
    assert_eq!(batches[0].tag, Some(tag));
    assert_eq!(batches[1].tag, None);
}

#[tokio::test]
async fn queued_batches_survive_a_crash() {
    let file = TempFile::new("crash");
    let outbox = open(&file.0).await;
    let queued = outbox.enqueue_read("d", &read("S", 6_000), None).await.expect("queued");
    // No close: the connection just goes away, as in a crash after the commit.
    drop(outbox);
    let outbox = open(&file.0).await;
    let batches = drain(&outbox).await;
    assert_eq!(batches.iter().map(|b| b.id).collect::<Vec<_>>(), queued.batches);
    assert_eq!(batches.iter().map(|b| b.records.len()).sum::<usize>(), 6_000);
    // Ids are never handed out twice.
    ack_all(&outbox).await;
    let next = outbox.enqueue_punches("d", &[punch(1)]).await.expect("queued");
    assert!(next[0] > queued.batches[1]);
}

#[tokio::test]
async fn above_the_bound_new_reads_are_refused_and_nothing_queued_is_dropped() {
    let file = TempFile::new("bound");
    let (outbox, _) = Outbox::open(&file.0, 200 << 10).await.expect("opens");
    let first = outbox.enqueue_read("d", &read("S", 4_000), None).await.expect("room for the first read");
    let refused = outbox.enqueue_read("d", &read("S", 4_100), None).await;
    assert!(matches!(refused, Err(OutboxError::Full { .. })), "{refused:?}");
    assert!(matches!(outbox.enqueue_punches("d", &[punch(1)]).await, Err(OutboxError::Full { .. })));
    let stats = outbox.stats().await.expect("stats");
    assert_eq!(stats.punches, 4_000, "what was queued stays queued");
    assert!(stats.bytes >= stats.max_bytes);

    for b in first.batches {
        outbox.ack(b).await.expect("ack");
    }
    let after = outbox.enqueue_read("d", &read("S", 4_100), None).await.expect("room again");
    assert_eq!(after.sent, 100, "the refused read left the watermark where it was");
}

/// A file of 40 batches, closed cleanly (everything in the main file).
async fn full_file(path: &Path) -> Vec<u64> {
    let outbox = open(path).await;
    let mut ids = Vec::new();
    for i in 0..40 {
        let punches: Vec<Punch> = (i * 300..(i + 1) * 300).map(punch).collect();
        ids.extend(outbox.enqueue_punches("d", &punches).await.expect("queued"));
    }
    outbox.close().await.expect("closes");
    ids
}

#[tokio::test]
async fn a_truncated_file_is_recovered_as_far_as_it_reads() {
    let file = TempFile::new("truncated");
    let ids = full_file(&file.0).await;
    let len = std::fs::metadata(&file.0).expect("file").len();
    std::fs::OpenOptions::new().write(true).open(&file.0).expect("open").set_len(len / 2).expect("truncate");

    let (outbox, recovery) = Outbox::open(&file.0, 256 << 20).await.expect("the agent keeps running");
    let recovery = recovery.expect("damage detected");
    assert!(recovery.batches > 0 && recovery.batches < 40, "{recovery:?}");
    assert_eq!(recovery.punches, recovery.batches * 300);
    assert!(!recovery.unreadable.is_empty(), "what was lost is reported: {recovery:?}");
    assert!(recovery.damaged_copy.exists(), "the damaged file is kept");

    // The intact batches, in order, with their ids; then the outbox works as ever.
    let batches = drain(&outbox).await;
    assert_eq!(batches.len() as u64, recovery.batches);
    for b in &batches {
        let i = ids.iter().position(|id| *id == b.id).expect("a known id");
        assert_eq!(b.records, (i * 300..(i + 1) * 300).map(punch).collect::<Vec<_>>());
    }
    assert!(batches.windows(2).all(|w| w[0].id < w[1].id));
    let new = outbox.enqueue_read("d", &read("S", 10), None).await.expect("queued");
    assert!(new.batches[0] > *ids.last().expect("ids"), "lost ids are not reused");
    assert_eq!(new.sent, 10);
}

#[tokio::test]
async fn a_file_of_garbage_is_replaced_and_reported() {
    let file = TempFile::new("garbage");
    std::fs::write(&file.0, b"this was never a database, but it is where the outbox should be".repeat(100))
        .expect("write");
    let (outbox, recovery) = Outbox::open(&file.0, 256 << 20).await.expect("the agent keeps running");
    let recovery = recovery.expect("damage detected");
    assert_eq!((recovery.batches, recovery.punches), (0, 0));
    assert!(!recovery.unreadable.is_empty(), "{recovery:?}");
    assert_eq!(outbox.enqueue_punches("d", &[punch(1)]).await.expect("works").len(), 1);
}

#[tokio::test]
async fn a_sound_file_is_not_touched() {
    let file = TempFile::new("sound");
    let ids = full_file(&file.0).await;
    let outbox = open(&file.0).await;
    assert_eq!(drain(&outbox).await.iter().map(|b| b.id).collect::<Vec<_>>(), ids);
}

#[test]
fn the_fill_warning_line_has_a_rearm_gap() {
    assert_eq!(fill_crossing(false, 79, 100), None);
    assert_eq!(fill_crossing(false, 80, 100), Some(true));
    assert_eq!(fill_crossing(true, 95, 100), None, "once per crossing");
    assert_eq!(fill_crossing(true, 75, 100), None, "hovering around the line says nothing");
    assert_eq!(fill_crossing(true, 69, 100), Some(false));
    assert_eq!(fill_crossing(false, u64::MAX, 1), Some(true));
    assert_eq!(fill_crossing(false, 0, 0), None);
}

/// Log lines written while it is the thread's subscriber.
#[derive(Clone, Default)]
struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn count(&self, needle: &str) -> usize {
        let text =
            String::from_utf8_lossy(&self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)).into_owned();
        text.lines().filter(|l| l.contains(needle)).count()
    }
}

#[tokio::test]
async fn crossing_80_percent_of_the_bound_warns_once_per_crossing() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    const WARNED: &str = "the outbox is over 80 % of its bound";
    const REARMED: &str = "the outbox is back under 70 % of its bound";

    let file = TempFile::new("fill");
    let (outbox, _) = Outbox::open(&file.0, 512 << 10).await.expect("opens");
    let mut next = 0;
    // Punches queue up (the server acknowledges nothing) until the fill passes 80 %, and some more after that.
    fill_to(&outbox, &mut next, 70).await;
    assert_eq!(logs.count(WARNED), 0, "not yet");
    fill_to(&outbox, &mut next, 90).await;
    assert_eq!(logs.count(WARNED), 1);
    assert_eq!(logs.count(REARMED), 0);
    let stats = outbox.stats().await.expect("stats");
    assert!(stats.punches > 0 && stats.batches > 0 && stats.max_bytes == 512 << 10, "{stats:?}");

    // The server acknowledges everything: back under the line, and ready to warn again.
    ack_all(&outbox).await;
    assert!(fill_of(&outbox).await < 70);
    assert_eq!(logs.count(REARMED), 1);
    fill_to(&outbox, &mut next, 85).await;
    assert_eq!(logs.count(WARNED), 2, "a second crossing warns again");
}

async fn fill_of(outbox: &Outbox) -> u64 {
    let s = outbox.stats().await.expect("stats");
    s.bytes * 100 / s.max_bytes
}

/// Queues realtime punches, 100 at a time, until the outbox is `percent` full.
async fn fill_to(outbox: &Outbox, next: &mut usize, percent: u64) {
    while fill_of(outbox).await < percent {
        let punches: Vec<Punch> = (*next..*next + 100).map(punch).collect();
        *next += 100;
        outbox.enqueue_punches("d", &punches).await.expect("room");
    }
}

fn users(n: usize, name_len: usize) -> Vec<DeviceUser> {
    (0..n)
        .map(|i| DeviceUser {
            uid: (i % 65_535) as u16 + 1,
            user_id: format!("{}", 1000 + i),
            name: "é".repeat(name_len),
            privilege: 0,
            card: i as u32,
            group_id: "1".into(),
        })
        .collect()
}

fn read_with_users(serial: &str, n: usize, list: Vec<DeviceUser>) -> TerminalRead {
    TerminalRead { users: Some(list), ..read(serial, n) }
}

/// The user list leaves before the records read with it, only when it changed, and holds the watermark back
/// like any batch of its read.
#[tokio::test]
async fn a_changed_user_list_goes_first_and_once() {
    let file = TempFile::new("users");
    let outbox = open(&file.0).await;
    let first = outbox.enqueue_read("d", &read_with_users("S", 10, users(3, 4)), None).await.expect("queued");
    assert_eq!((first.sent, first.batches.len()), (10, 2));
    let queued = drain(&outbox).await;
    assert_eq!(queued[0].users, Some(users(3, 4)), "the list first");
    assert!(queued[0].records.is_empty());
    assert_eq!((queued[1].users.as_ref(), queued[1].records.len()), (None, 10));
    outbox.ack(queued[1].id).await.expect("ack");
    assert_eq!(outbox.watermark("d").await.expect("reads"), None, "the list's batch is not acknowledged yet");
    outbox.ack(queued[0].id).await.expect("ack");
    assert_eq!(outbox.watermark("d").await.expect("reads").map(|m| m.count), Some(10));

    // The same list again: nothing to send, neither from a read nor from the realtime subscription.
    let same = outbox.enqueue_read("d", &read_with_users("S", 12, users(3, 4)), None).await.expect("queued");
    assert_eq!((same.sent, same.batches.len()), (2, 1));
    assert_eq!(outbox.enqueue_users("d", &users(3, 4)).await.expect("checked"), None);
    ack_all(&outbox).await;
    // One more user enrolled: the new list goes, even with no new records.
    let enrolled = outbox.enqueue_users("d", &users(4, 4)).await.expect("queued").expect("a batch");
    let queued = drain(&outbox).await;
    assert_eq!((queued.len(), queued[0].id, queued[0].users.as_ref().map(Vec::len)), (1, enrolled, Some(4)));
    // Other devices have lists of their own; a read without a list leaves the last one alone.
    assert!(outbox.enqueue_users("e", &users(4, 4)).await.expect("queued").is_some());
    ack_all(&outbox).await;
    assert_eq!(outbox.enqueue_read("d", &read("S", 13), None).await.expect("queued").batches.len(), 1);
    assert_eq!(outbox.enqueue_users("d", &users(4, 4)).await.expect("checked"), None);
}

/// A list that cannot travel in one message is not queued; the records still are.
#[tokio::test]
async fn a_user_list_too_big_for_one_message_is_left_out() {
    let file = TempFile::new("users-big");
    let outbox = open(&file.0).await;
    let big = users(essl_wire::MAX_USERS_PER_BATCH, 60);
    let queued = outbox.enqueue_read("d", &read_with_users("S", 5, big), None).await.expect("queued");
    assert_eq!((queued.sent, queued.batches.len()), (5, 1));
    assert_eq!(drain(&outbox).await[0].users, None);
    assert_eq!(outbox.enqueue_users("d", &users(essl_wire::MAX_USERS_PER_BATCH + 1, 1)).await.expect("ok"), None);
    // The largest list the wire allows, with ordinary names, does travel.
    let most =
        users(essl_wire::MAX_USERS_PER_BATCH, 8).into_iter().map(|u| DeviceUser { name: "Anjali K".into(), ..u });
    assert!(outbox.enqueue_users("d", &most.collect::<Vec<_>>()).await.expect("queued").is_some());
}

/// An outbox written before batches could carry a user list opens, keeps its batches and takes lists.
#[tokio::test]
async fn an_outbox_from_before_user_lists_is_upgraded() {
    let file = TempFile::new("users-upgrade");
    {
        let mut conn = options(&file.0).connect().await.expect("creates");
        let old = SCHEMA.replace("    records TEXT NOT NULL,\n    users TEXT\n", "    records TEXT NOT NULL\n");
        assert_ne!(old, SCHEMA);
        sqlx::raw_sql(sqlx::AssertSqlSafe(old)).execute(&mut conn).await.expect("old schema");
        sqlx::query("INSERT INTO batch (device, read_id, punches, created_ms, records) VALUES ('d', NULL, 1, 0, ?)")
            .bind(serde_json::to_string(&[punch(1)]).expect("json"))
            .execute(&mut conn)
            .await
            .expect("old batch");
        conn.close().await.expect("closes");
    }
    let outbox = open(&file.0).await;
    outbox.enqueue_users("d", &users(2, 3)).await.expect("queued").expect("a batch");
    let queued = drain(&outbox).await;
    assert_eq!((queued[0].records.clone(), queued[0].users.clone()), (vec![punch(1)], None));
    assert_eq!(queued[1].users, Some(users(2, 3)));
}
