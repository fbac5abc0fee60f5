-- Push (ADMS / iclock) terminals: they call the server over HTTP, identified by the serial number they send.
-- essl_push_journal keeps every request as it arrived (body capped) before anything parses it, so a parser bug
-- loses nothing; essl_push_terminals what each serial told us (known or quarantined: a serial is known when an
-- essl_devices row of kind 'push' carries it); essl_push_commands the per-device command queue (the id is the
-- CmdID on the wire); essl_push_secrets the optional per-site secret path segment (/iclock/s/<secret>/...), as a
-- SHA-256 hash.

CREATE TABLE essl_push_journal (
    id INTEGER PRIMARY KEY,
    serial TEXT,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    query TEXT NOT NULL,
    body BLOB NOT NULL,
    -- the body's full length; `body` holds at most the server's journal cap
    body_len INTEGER NOT NULL,
    remote_addr TEXT,
    received_at INTEGER NOT NULL,
    outcome TEXT NOT NULL DEFAULT 'received'
) STRICT;

CREATE INDEX essl_push_journal_serial_idx ON essl_push_journal (serial, id DESC);
CREATE INDEX essl_push_journal_time_idx ON essl_push_journal (received_at);

CREATE TABLE essl_push_terminals (
    serial TEXT PRIMARY KEY NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    last_address TEXT,
    push_version TEXT,
    dialect TEXT NOT NULL DEFAULT 'att' CHECK (dialect IN ('att', 'acc')),
    language TEXT,
    -- JSON object: what the terminal reported (INFO, options, registry)
    info TEXT,
    attlog_stamp TEXT,
    operlog_stamp TEXT,
    registry_code TEXT
) STRICT;

CREATE TABLE essl_push_commands (
    id INTEGER PRIMARY KEY,
    device_id TEXT NOT NULL REFERENCES essl_devices (id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    command TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued', 'sent', 'ok', 'failed', 'expired')),
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    sent_at INTEGER,
    finished_at INTEGER,
    return_code INTEGER,
    result TEXT,
    requested_by TEXT
) STRICT;

CREATE INDEX essl_push_commands_device_idx ON essl_push_commands (device_id, status, id);

CREATE TABLE essl_push_secrets (
    site_id TEXT PRIMARY KEY NOT NULL REFERENCES essl_sites (id) ON DELETE CASCADE,
    secret_hash BLOB NOT NULL UNIQUE CHECK (length(secret_hash) = 32),
    created_at INTEGER NOT NULL
) STRICT;
