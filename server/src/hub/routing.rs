//! Which agent asks first: a fresh successful probe with the lowest round trip, then agents with no fresh
//! report, then agents whose fresh probe failed (a live attempt may still succeed). Ties keep the order the caller
//! gave (the hub lists agents of this instance before those of other instances).

use std::collections::HashMap;
use std::time::Duration;

use jiff::Timestamp;
use uuid::Uuid;

use super::Reachability;

/// Orders `connected` agents for one device given their latest probe `reports`.
pub(super) fn order(
    connected: &[Uuid],
    reports: Option<&HashMap<Uuid, Reachability>>,
    now: Timestamp,
    fresh: Duration,
) -> Vec<Uuid> {
    let fresh_ms = i64::try_from(fresh.as_millis()).unwrap_or(i64::MAX);
    let mut ranked: Vec<(u8, u64, Uuid)> = connected
        .iter()
        .map(|&agent| {
            let report = reports.and_then(|r| r.get(&agent));
            let is_fresh =
                report.is_some_and(|r| now.as_millisecond().saturating_sub(r.checked_at.as_millisecond()) <= fresh_ms);
            match report {
                Some(r) if is_fresh && r.reachable => (0, r.rtt_us.unwrap_or(u64::MAX), agent),
                Some(r) if is_fresh && !r.reachable => (2, u64::MAX, agent),
                _ => (1, u64::MAX, agent),
            }
        })
        .collect();
    ranked.sort_by_key(|(rank, rtt, _)| (*rank, *rtt));
    ranked.into_iter().map(|(_, _, a)| a).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(agent: Uuid, reachable: bool, rtt_us: u64, age_s: i64, now: Timestamp) -> (Uuid, Reachability) {
        let checked_at = Timestamp::from_second(now.as_second() - age_s).unwrap_or(now);
        (agent, Reachability { agent_id: agent, reachable, rtt_us: Some(rtt_us), checked_at, error: None })
    }

    #[test]
    fn fresh_fast_first_failed_last() {
        let now = Timestamp::now();
        let [a, b, c, d] = [Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3), Uuid::from_u128(4)];
        let reports: HashMap<_, _> = [
            report(a, true, 900, 1, now),
            report(b, true, 300, 1, now),
            report(c, false, 0, 1, now),
            report(d, true, 10, 600, now), // stale: no better than unknown
        ]
        .into_iter()
        .collect();
        let order = order(&[a, b, c, d], Some(&reports), now, Duration::from_secs(65));
        assert_eq!(order, vec![b, a, d, c]);
    }
}
