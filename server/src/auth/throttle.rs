//! Failed-login throttling: per user name and per client address, a fixed window of failures. The same answer
//! (429 with the wait) comes whether or not the name exists, so the throttle reveals nothing about accounts.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures allowed per user name in a window: enough for typos, too few for guessing.
pub const MAX_PER_USER: u32 = 5;
/// Failures allowed per client address in a window (an office behind one NAT shares it).
pub const MAX_PER_ADDRESS: u32 = 30;
pub const WINDOW: Duration = Duration::from_secs(15 * 60);
/// Entries kept at most; past it, expired windows are dropped and then the oldest (memory stays bounded under a
/// flood of made-up names).
const MAX_ENTRIES: usize = 50_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    User(String),
    Address(IpAddr),
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

/// Counts failed logins; cheap to share behind an `Arc`.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    windows: Mutex<HashMap<Key, Window>>,
}

impl LoginThrottle {
    /// `Err(wait)` if this name or address has failed too often and must wait.
    pub fn check(&self, username: &str, address: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let windows = self.lock();
        let over = |key: Key, max: u32| {
            windows.get(&key).and_then(|w| {
                let age = now.saturating_duration_since(w.started);
                (age < WINDOW && w.failures >= max).then(|| WINDOW - age)
            })
        };
        match (over(Key::User(username.to_lowercase()), MAX_PER_USER), over(Key::Address(address), MAX_PER_ADDRESS)) {
            (None, None) => Ok(()),
            (a, b) => Err(a.into_iter().chain(b).max().unwrap_or(WINDOW)),
        }
    }

    /// Records a failed attempt.
    pub fn failed(&self, username: &str, address: IpAddr) {
        let now = Instant::now();
        let mut windows = self.lock();
        if windows.len() >= MAX_ENTRIES {
            windows.retain(|_, w| now.saturating_duration_since(w.started) < WINDOW);
            if windows.len() >= MAX_ENTRIES {
                let oldest = windows.iter().min_by_key(|(_, w)| w.started).map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    windows.remove(&k);
                }
            }
        }
        for key in [Key::User(username.to_lowercase()), Key::Address(address)] {
            let w = windows.entry(key).or_insert(Window { started: now, failures: 0 });
            if now.saturating_duration_since(w.started) >= WINDOW {
                *w = Window { started: now, failures: 0 };
            }
            w.failures = w.failures.saturating_add(1);
        }
    }

    /// A successful login clears the name's failures (not the address's: one right password must not reset a
    /// guessing campaign against other names).
    pub fn succeeded(&self, username: &str) {
        self.lock().remove(&Key::User(username.to_lowercase()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Window>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts/removes).
        self.windows.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_blocked_after_its_failures_and_others_are_not() {
        let t = LoginThrottle::default();
        let ip: IpAddr = "127.0.0.1".parse().expect("ip");
        for _ in 0..MAX_PER_USER {
            assert!(t.check("Alice", ip).is_ok());
            t.failed("alice", ip);
        }
        let wait = t.check("ALICE", ip).expect_err("blocked");
        assert!(wait <= WINDOW && wait > WINDOW - Duration::from_secs(60));
        assert!(t.check("bob", ip).is_ok(), "another name from the same address still may try");
        t.succeeded("bob");
        assert!(t.check("alice", ip).is_err(), "bob's success does not unblock alice");
    }

    #[test]
    fn an_address_is_blocked_across_names() {
        let t = LoginThrottle::default();
        let ip: IpAddr = "127.0.0.2".parse().expect("ip");
        for i in 0..MAX_PER_ADDRESS {
            t.failed(&format!("user{i}"), ip);
        }
        assert!(t.check("someone-new", ip).is_err());
        assert!(t.check("someone-new", "127.0.0.3".parse().expect("ip")).is_ok());
    }
}
