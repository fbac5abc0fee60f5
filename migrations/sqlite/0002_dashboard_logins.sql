-- Dashboard logins: people (not scripts: those use API tokens) with a user name and a password, and their cookie
-- sessions. Only hashes are stored: PBKDF2 for passwords (people choose them), SHA-256 for the random session
-- secrets. Sessions live in the database so that they survive a restart and work on every server instance.

CREATE TABLE essl_users (
    id TEXT PRIMARY KEY NOT NULL CHECK (length(id) = 36),
    -- Compared as typed after lowercasing (the server lowercases before storing and looking up).
    username TEXT NOT NULL UNIQUE CHECK (length(username) BETWEEN 1 AND 64),
    role TEXT NOT NULL CHECK (role IN ('admin', 'staff')),
    password_hash TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    disabled_at INTEGER
) STRICT;

CREATE TABLE essl_sessions (
    id TEXT PRIMARY KEY NOT NULL CHECK (length(id) = 36),
    user_id TEXT NOT NULL REFERENCES essl_users (id) ON DELETE CASCADE,
    secret_hash BLOB NOT NULL CHECK (length(secret_hash) = 32),
    csrf_token TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) STRICT;

CREATE INDEX essl_sessions_user_idx ON essl_sessions (user_id);
CREATE INDEX essl_sessions_expiry_idx ON essl_sessions (expires_at);
