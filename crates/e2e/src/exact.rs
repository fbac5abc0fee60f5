//! "None lost, none doubled": the records of a device in the database against the records on its (simulated)
//! terminal, and a puncher that keeps punches happening on the terminal while a test injects faults.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use essl_server::store::{AttendanceFilter, Store, StoreError};
use essl_zk_sim::Terminal;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A record's identity, as the server's unique key sees it: (user PIN, terminal wall-clock time
/// `YYYY-MM-DDTHH:MM:SS`).
pub type Key = (String, String);

/// The database against the terminal, for one device.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Comparison {
    /// Distinct records on the terminal.
    pub on_terminal: usize,
    /// Rows of the device in the database.
    pub stored_rows: usize,
    /// On the terminal, not in the database (a few, sorted), and how many in all.
    pub lost: Vec<Key>,
    pub lost_count: usize,
    /// In the database, not on the terminal (a few, sorted), and how many in all.
    pub extra: Vec<Key>,
    pub extra_count: usize,
    /// Database rows beyond the first of their key.
    pub doubled: usize,
}

impl Comparison {
    /// The database holds exactly the terminal's records, each once.
    pub fn exact(&self) -> bool {
        self.lost_count == 0 && self.extra_count == 0 && self.doubled == 0 && self.stored_rows == self.on_terminal
    }
}

impl std::fmt::Display for Comparison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "terminal {} records, database {} rows: lost {} {:?}, not on the terminal {} {:?}, doubled {}",
            self.on_terminal, self.stored_rows, self.lost_count, self.lost, self.extra_count, self.extra, self.doubled
        )
    }
}

/// The terminal's records, by key.
pub fn terminal_keys(terminal: &Terminal) -> Vec<Key> {
    terminal.to_fixture().attendance.into_iter().map(|p| (p.user_id, p.timestamp)).collect()
}

/// Every row of the device in the database, by key (repeats kept).
pub async fn stored_keys(store: &Store, device: Uuid) -> Result<Vec<Key>, StoreError> {
    let mut out = Vec::new();
    let mut filter = AttendanceFilter { device_id: Some(device), limit: 5_000, ..AttendanceFilter::default() };
    loop {
        let page = store.list_attendance(&filter).await?;
        out.extend(page.rows.into_iter().map(|r| (r.user_id, r.local_time.strftime("%Y-%m-%dT%H:%M:%S").to_string())));
        match page.next {
            Some(next) => filter.after = Some(next),
            None => return Ok(out),
        }
    }
}

/// Compares the database with the terminal now.
pub async fn compare(store: &Store, device: Uuid, terminal: &Terminal) -> Result<Comparison, StoreError> {
    let stored = stored_keys(store, device).await?;
    let want: HashSet<Key> = terminal_keys(terminal).into_iter().collect();
    let mut seen: HashMap<&Key, usize> = HashMap::with_capacity(stored.len());
    for k in &stored {
        *seen.entry(k).or_default() += 1;
    }
    let doubled = seen.values().map(|n| n - 1).sum();
    let mut lost: Vec<Key> = want.iter().filter(|k| !seen.contains_key(k)).cloned().collect();
    let mut extra: Vec<Key> = seen.keys().filter(|k| !want.contains(**k)).map(|k| (*k).clone()).collect();
    lost.sort();
    extra.sort();
    let (lost_count, extra_count) = (lost.len(), extra.len());
    lost.truncate(5);
    extra.truncate(5);
    Ok(Comparison { on_terminal: want.len(), stored_rows: stored.len(), lost, lost_count, extra, extra_count, doubled })
}

/// Waits until the database holds exactly the terminal's records (checked every 100 ms: first the row count, then
/// the records themselves), at most `within`; returns the last comparison either way.
pub async fn wait_exact(store: &Store, device: Uuid, terminal: &Terminal, within: Duration) -> Comparison {
    let deadline = Instant::now() + within;
    let mut last = Comparison::default();
    loop {
        let want = terminal.record_count();
        let count = store.count_attendance(Some(device)).await.ok().and_then(|c| usize::try_from(c).ok());
        if count == Some(want) || Instant::now() >= deadline {
            match compare(store, device, terminal).await {
                Ok(c) if c.exact() => return c,
                Ok(c) => last = c,
                Err(error) => tracing::warn!(%error, "cannot read the stored records"),
            }
        }
        if Instant::now() >= deadline {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Panics unless the database holds exactly the terminal's records, waiting at most `within` for that.
pub async fn assert_exact(store: &Store, device: Uuid, terminal: &Terminal, within: Duration) -> Comparison {
    let c = wait_exact(store, device, terminal, within).await;
    assert!(c.exact(), "the database does not hold exactly the terminal's records after {within:?}: {c}");
    c
}

/// Punches on a simulated terminal, one every `every`, by users in turn (status and punch kind varying), until
/// stopped. The terminal keeps (user, time) unique, so every punch is a distinct record.
pub struct Puncher {
    made: Arc<AtomicU64>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Puncher {
    pub fn start(terminal: Terminal, every: Duration) -> Puncher {
        Self::start_with(terminal, every, every, 1)
    }

    /// One punch every `min..=max` (uniformly random, from `seed`).
    pub fn start_with(terminal: Terminal, min: Duration, max: Duration, seed: u64) -> Puncher {
        let made = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let (count, signal) = (made.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut user = 0usize;
            loop {
                let gap = if max > min { min + (max - min).mul_f64(rng.f64()) } else { min };
                tokio::select! {
                    _ = signal.cancelled() => return,
                    _ = tokio::time::sleep(gap) => {}
                }
                terminal.punch(user, rng.u8(0..=5), rng.u8(0..=1));
                count.fetch_add(1, Ordering::Relaxed);
                user = user.wrapping_add(1);
            }
        });
        Puncher { made, stop, task }
    }

    /// Punches so far.
    pub fn made(&self) -> u64 {
        self.made.load(Ordering::Relaxed)
    }

    /// Waits until `more` further punches happened (at most `within`; panics after that).
    pub async fn wait_for(&self, more: u64, within: Duration) {
        let target = self.made() + more;
        let deadline = Instant::now() + within;
        while self.made() < target {
            assert!(Instant::now() < deadline, "the puncher made fewer than {more} punches in {within:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops punching; returns how many punches were made.
    pub async fn stop(self) -> u64 {
        self.stop.cancel();
        let _ = self.task.await;
        self.made.load(Ordering::Relaxed)
    }
}
