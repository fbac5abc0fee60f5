//! The shared registry in PostgreSQL: instances and their leases, the agents connected to each, the reachability
//! they report. Presence counts only while its instance's lease holds (`lease_until > now()`), so nothing has to
//! clean up after an instance that died.

use std::time::Duration;

use sqlx::postgres::PgPool;
use sqlx::{Postgres, Row, Transaction};
use uuid::Uuid;

use super::notice::{MAX_NOTICE, MIN_NOTICE, PresenceNotice, ReachNotice};

pub type DbResult<T> = Result<T, sqlx::Error>;

fn lease_ms(lease: Duration) -> i64 {
    i64::try_from(lease.as_millis()).unwrap_or(i64::MAX)
}

/// Takes or renews this instance's lease; `true` when the row was (re)created: another instance swept it away
/// while our heartbeat could not reach the database, so our agents must be written again.
pub async fn renew(pool: &PgPool, id: Uuid, lease: Duration, draining: bool) -> DbResult<bool> {
    let inserted: bool = sqlx::query_scalar(
        "INSERT INTO essl_instances (id, lease_until, draining, min_notice, max_notice, version) \
         VALUES ($1, now() + $2 * interval '1 millisecond', $3, $4, $5, $6) \
         ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), lease_until = excluded.lease_until, \
             draining = excluded.draining \
         RETURNING (xmax = 0)",
    )
    .bind(id)
    .bind(lease_ms(lease))
    .bind(draining)
    .bind(i16::try_from(MIN_NOTICE).unwrap_or(i16::MAX))
    .bind(i16::try_from(MAX_NOTICE).unwrap_or(i16::MAX))
    .bind(env!("CARGO_PKG_VERSION"))
    .fetch_one(pool)
    .await?;
    Ok(inserted)
}

/// Forgets instances whose lease ran out more than `after` ago (their agents and reports go with them) and replies
/// nobody collected.
pub async fn sweep(pool: &PgPool, after: Duration) -> DbResult<u64> {
    let gone = sqlx::query("DELETE FROM essl_instances WHERE lease_until < now() - $1 * interval '1 millisecond'")
        .bind(lease_ms(after))
        .execute(pool)
        .await?
        .rows_affected();
    sqlx::query("DELETE FROM essl_cluster_replies WHERE created_at < now() - interval '10 minutes'")
        .execute(pool)
        .await?;
    sqlx::query("DELETE FROM essl_cluster_requests WHERE expires_at < now() - interval '1 minute'")
        .execute(pool)
        .await?;
    Ok(gone)
}

/// Removes this instance (shutdown): its agents and their reports with it.
pub async fn leave(pool: &PgPool, id: Uuid) -> DbResult<()> {
    sqlx::query("DELETE FROM essl_instances WHERE id = $1").bind(id).execute(pool).await?;
    Ok(())
}

/// Whether `id` is an instance holding its lease now.
pub async fn is_live(pool: &PgPool, id: Uuid) -> DbResult<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM essl_instances WHERE id = $1 AND lease_until > now())")
        .bind(id)
        .fetch_one(pool)
        .await
}

/// Records an agent's connection to instance `id` (replacing whatever instance had it before).
pub async fn agent_up(tx: &mut Transaction<'_, Postgres>, id: Uuid, p: &PresenceNotice) -> DbResult<()> {
    sqlx::query(
        "INSERT INTO essl_agent_presence \
             (agent_id, instance_id, conn_id, site_id, protocol, version, hostname, os, connected_since) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, essl_ts($9)) \
         ON CONFLICT (agent_id) DO UPDATE SET instance_id = excluded.instance_id, conn_id = excluded.conn_id, \
             site_id = excluded.site_id, protocol = excluded.protocol, version = excluded.version, \
             hostname = excluded.hostname, os = excluded.os, connected_since = excluded.connected_since",
    )
    .bind(p.agent_id)
    .bind(id)
    .bind(i64::try_from(p.conn).unwrap_or(i64::MAX))
    .bind(p.site_id)
    .bind(i16::try_from(p.protocol).unwrap_or(i16::MAX))
    .bind(&p.version)
    .bind(&p.hostname)
    .bind(&p.os)
    .bind(p.connected_since_ms)
    .execute(&mut **tx)
    .await?;
    // Reports from the agent's previous connection are stale.
    sqlx::query("DELETE FROM essl_device_reach WHERE agent_id = $1").bind(p.agent_id).execute(&mut **tx).await?;
    Ok(())
}

/// Removes the agent's presence if it is still connection `conn` of instance `id`; `true` if it was.
pub async fn agent_down(tx: &mut Transaction<'_, Postgres>, id: Uuid, agent: Uuid, conn: u64) -> DbResult<bool> {
    let gone = sqlx::query("DELETE FROM essl_agent_presence WHERE agent_id = $1 AND instance_id = $2 AND conn_id = $3")
        .bind(agent)
        .bind(id)
        .bind(i64::try_from(conn).unwrap_or(i64::MAX))
        .execute(&mut **tx)
        .await?
        .rows_affected();
    Ok(gone > 0)
}

/// Stores an agent's probe reports (only while its presence is ours).
pub async fn reach(tx: &mut Transaction<'_, Postgres>, id: Uuid, agent: Uuid, reports: &[ReachNotice]) -> DbResult<()> {
    let devices: Vec<Uuid> = reports.iter().map(|r| r.device_id).collect();
    let reachable: Vec<bool> = reports.iter().map(|r| r.reachable).collect();
    let rtt: Vec<Option<i64>> = reports.iter().map(|r| r.rtt_us.and_then(|v| i64::try_from(v).ok())).collect();
    let checked: Vec<i64> = reports.iter().map(|r| r.checked_at_ms).collect();
    let errors: Vec<Option<String>> = reports.iter().map(|r| r.error.clone()).collect();
    sqlx::query(
        "INSERT INTO essl_device_reach (device_id, agent_id, reachable, rtt_us, checked_at, error) \
         SELECT r.device_id, $1, r.reachable, r.rtt_us, essl_ts(r.checked_ms), r.error \
         FROM unnest($2::uuid[], $3::bool[], $4::int8[], $5::int8[], $6::text[]) \
             AS r(device_id, reachable, rtt_us, checked_ms, error) \
         WHERE EXISTS (SELECT 1 FROM essl_agent_presence p WHERE p.agent_id = $1 AND p.instance_id = $7) \
           AND EXISTS (SELECT 1 FROM essl_devices d WHERE d.id = r.device_id) \
         ON CONFLICT (device_id, agent_id) DO UPDATE SET reachable = excluded.reachable, rtt_us = excluded.rtt_us, \
             checked_at = excluded.checked_at, error = excluded.error",
    )
    .bind(agent)
    .bind(&devices)
    .bind(&reachable)
    .bind(&rtt)
    .bind(&checked)
    .bind(&errors)
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// An agent connected to another live instance, with what it reported.
#[derive(Debug, Clone)]
pub struct RemoteAgent {
    pub instance: Uuid,
    pub heartbeat_ms: i64,
    pub presence: PresenceNotice,
    pub reports: Vec<ReachNotice>,
}

/// Every agent connected to a live instance other than `me`, with its reports.
pub async fn remote_agents(pool: &PgPool, me: Uuid) -> DbResult<Vec<RemoteAgent>> {
    let rows = sqlx::query(
        "SELECT p.agent_id, p.instance_id, p.conn_id, p.site_id, p.protocol, p.version, p.hostname, p.os, \
                essl_ms(p.connected_since) AS since, essl_ms(i.heartbeat_at) AS heartbeat \
         FROM essl_agent_presence p JOIN essl_instances i ON i.id = p.instance_id \
         WHERE i.lease_until > now() AND i.id <> $1",
    )
    .bind(me)
    .fetch_all(pool)
    .await?;
    let mut agents = Vec::with_capacity(rows.len());
    let mut index = std::collections::HashMap::with_capacity(rows.len());
    for row in rows {
        let agent_id: Uuid = row.try_get("agent_id")?;
        index.insert(agent_id, agents.len());
        agents.push(RemoteAgent {
            instance: row.try_get("instance_id")?,
            heartbeat_ms: row.try_get("heartbeat")?,
            presence: PresenceNotice {
                agent_id,
                site_id: row.try_get("site_id")?,
                conn: u64::try_from(row.try_get::<i64, _>("conn_id")?).unwrap_or(0),
                protocol: u16::try_from(row.try_get::<i16, _>("protocol")?).unwrap_or(0),
                version: row.try_get("version")?,
                hostname: row.try_get("hostname")?,
                os: row.try_get("os")?,
                connected_since_ms: row.try_get("since")?,
            },
            reports: Vec::new(),
        });
    }
    if agents.is_empty() {
        return Ok(agents);
    }
    let ids: Vec<Uuid> = agents.iter().map(|a| a.presence.agent_id).collect();
    let rows = sqlx::query(
        "SELECT agent_id, device_id, reachable, rtt_us, essl_ms(checked_at) AS checked, error \
         FROM essl_device_reach WHERE agent_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    for row in rows {
        let agent_id: Uuid = row.try_get("agent_id")?;
        let Some(&i) = index.get(&agent_id) else { continue };
        agents[i].reports.push(ReachNotice {
            device_id: row.try_get("device_id")?,
            reachable: row.try_get("reachable")?,
            rtt_us: row.try_get::<Option<i64>, _>("rtt_us")?.and_then(|v| u64::try_from(v).ok()),
            checked_at_ms: row.try_get("checked")?,
            error: row.try_get("error")?,
        });
    }
    Ok(agents)
}

/// Sends request `id` to instance `to`: kept in `essl_cluster_requests` until it is claimed or withdrawn, and
/// notified on `channel`, in one statement (so the row exists before the notification arrives). Fails when `to` is
/// no longer registered.
pub async fn send_request(
    pool: &PgPool,
    id: Uuid,
    to: Uuid,
    channel: &str,
    payload: &str,
    timeout: Duration,
) -> DbResult<()> {
    sqlx::query(
        "WITH kept AS (INSERT INTO essl_cluster_requests (id, to_instance, body, expires_at) \
                       VALUES ($1, $2, $3, now() + $4 * interval '1 millisecond') RETURNING id) \
         SELECT pg_notify($5, $3) FROM kept",
    )
    .bind(id)
    .bind(to)
    .bind(payload)
    .bind(lease_ms(timeout))
    .bind(channel)
    .execute(pool)
    .await?;
    Ok(())
}

/// Claims request `id` addressed to `me` (deletes its row): `Some(milliseconds left of its deadline)` when it was
/// still waiting, `None` when it was already claimed (its notification and a scan both found it) or withdrawn.
pub async fn claim_request(pool: &PgPool, id: Uuid, me: Uuid) -> DbResult<Option<i64>> {
    sqlx::query_scalar(
        "DELETE FROM essl_cluster_requests WHERE id = $1 AND to_instance = $2 \
         RETURNING essl_ms(expires_at) - essl_ms(now())",
    )
    .bind(id)
    .bind(me)
    .fetch_optional(pool)
    .await
}

/// Withdraws request `id` (its asker stopped waiting): it is never served afterwards.
pub async fn withdraw_request(pool: &PgPool, id: Uuid) -> DbResult<()> {
    sqlx::query("DELETE FROM essl_cluster_requests WHERE id = $1").bind(id).execute(pool).await?;
    Ok(())
}

/// Requests addressed to `me`, sent more than `age` ago and not yet claimed (their notification may have been
/// lost), oldest first, at most `limit`.
pub async fn unclaimed_requests(pool: &PgPool, me: Uuid, age: Duration, limit: i64) -> DbResult<Vec<(Uuid, String)>> {
    sqlx::query_as(
        "SELECT id, body FROM essl_cluster_requests \
         WHERE to_instance = $1 AND expires_at > now() AND sent_at < now() - $2 * interval '1 millisecond' \
         ORDER BY sent_at LIMIT $3",
    )
    .bind(me)
    .bind(lease_ms(age))
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Keeps reply `id` until the asking instance takes it, and notifies `payload` on `channel`, in one statement (the
/// row exists before the notification arrives; a reply kept already is neither kept nor notified again).
pub async fn send_reply(pool: &PgPool, id: Uuid, body: &str, channel: &str, payload: &str) -> DbResult<()> {
    sqlx::query(
        "WITH kept AS (INSERT INTO essl_cluster_replies (id, body) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING \
                       RETURNING id) \
         SELECT pg_notify($3, $4) FROM kept",
    )
    .bind(id)
    .bind(body)
    .bind(channel)
    .bind(payload)
    .execute(pool)
    .await?;
    Ok(())
}

/// Takes (reads and deletes) a stored reply.
pub async fn take_reply(pool: &PgPool, id: Uuid) -> DbResult<Option<String>> {
    sqlx::query_scalar("DELETE FROM essl_cluster_replies WHERE id = $1 RETURNING body")
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// Sends a notification (inside `tx` when given: it is delivered at commit, after the rows it speaks of).
pub async fn notify(tx: &mut Transaction<'_, Postgres>, channel: &str, payload: &str) -> DbResult<()> {
    sqlx::query("SELECT pg_notify($1, $2)").bind(channel).bind(payload).execute(&mut **tx).await?;
    Ok(())
}

/// Sends a notification on its own.
pub async fn notify_now(pool: &PgPool, channel: &str, payload: &str) -> DbResult<()> {
    sqlx::query("SELECT pg_notify($1, $2)").bind(channel).bind(payload).execute(pool).await?;
    Ok(())
}

/// The instances holding a lease now, with how many milliseconds it still holds (by the database's clock, so the
/// instances' clocks need not agree) and their last heartbeat (unix ms).
pub async fn live_instances(pool: &PgPool) -> DbResult<Vec<(Uuid, i64, i64)>> {
    sqlx::query_as(
        "SELECT id, essl_ms(lease_until) - essl_ms(now()), essl_ms(heartbeat_at) FROM essl_instances \
         WHERE lease_until > now()",
    )
    .fetch_all(pool)
    .await
}

/// Claims the sync flight of `device` for this instance unless another live instance holds an unexpired one;
/// `Ok(Some(flight))` when the claim is ours, `Ok(None)` when someone else's flight is on.
pub async fn claim_flight(pool: &PgPool, id: Uuid, device: Uuid, lasts: Duration) -> DbResult<Option<Uuid>> {
    let flight = Uuid::new_v4();
    let claimed: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO essl_sync_flights (device_id, flight_id, instance_id, expires_at) \
         VALUES ($1, $2, $3, now() + $4 * interval '1 millisecond') \
         ON CONFLICT (device_id) DO UPDATE SET flight_id = excluded.flight_id, instance_id = excluded.instance_id, \
             expires_at = excluded.expires_at, done = false, result = NULL \
         WHERE essl_sync_flights.done OR essl_sync_flights.expires_at < now() \
            OR NOT EXISTS (SELECT 1 FROM essl_instances i \
                           WHERE i.id = essl_sync_flights.instance_id AND i.lease_until > now()) \
         RETURNING flight_id",
    )
    .bind(device)
    .bind(flight)
    .bind(id)
    .bind(lease_ms(lasts))
    .fetch_optional(pool)
    .await?;
    Ok(claimed)
}

/// The flight of `device` now: its id, whether it is done (with its result) and whether it still holds (not
/// expired, its instance alive).
pub async fn flight(pool: &PgPool, device: Uuid) -> DbResult<Option<(Uuid, bool, Option<String>, bool)>> {
    sqlx::query_as(
        "SELECT f.flight_id, f.done, f.result, \
                (f.expires_at > now() AND EXISTS (SELECT 1 FROM essl_instances i \
                                                 WHERE i.id = f.instance_id AND i.lease_until > now())) \
         FROM essl_sync_flights f WHERE f.device_id = $1",
    )
    .bind(device)
    .fetch_optional(pool)
    .await
}

/// Ends our flight with its result for the instances waiting on it.
pub async fn finish_flight(pool: &PgPool, device: Uuid, flight: Uuid, result: &str) -> DbResult<()> {
    sqlx::query("UPDATE essl_sync_flights SET done = true, result = $3 WHERE device_id = $1 AND flight_id = $2")
        .bind(device)
        .bind(flight)
        .bind(result)
        .execute(pool)
        .await?;
    Ok(())
}
