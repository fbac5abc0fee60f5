-- Push (ADMS / iclock) terminals: they call the server over HTTP, identified by the serial number they send.
-- essl_push_journal keeps every request as it arrived (body capped) before anything parses it, so a parser bug
-- loses nothing; essl_push_terminals what each serial told us (known or quarantined: a serial is known when an
-- essl_devices row of kind 'push' carries it); essl_push_commands the per-device command queue (the id is the
-- CmdID on the wire, an int4 as terminals parse it); essl_push_secrets the optional per-site secret path segment
-- (/iclock/s/<secret>/...), as a SHA-256 hash.

CREATE TABLE essl_push_journal (
    id bigserial PRIMARY KEY,
    serial text,
    method text NOT NULL,
    path text NOT NULL,
    query text NOT NULL,
    body bytea NOT NULL,
    -- the body's full length; `body` holds at most the server's journal cap
    body_len bigint NOT NULL,
    remote_addr text,
    received_at timestamptz NOT NULL DEFAULT now(),
    outcome text NOT NULL DEFAULT 'received'
);

CREATE INDEX essl_push_journal_serial_idx ON essl_push_journal (serial, id DESC);
CREATE INDEX essl_push_journal_time_idx ON essl_push_journal (received_at);

CREATE TABLE essl_push_terminals (
    serial text PRIMARY KEY,
    first_seen timestamptz NOT NULL DEFAULT now(),
    last_seen timestamptz NOT NULL DEFAULT now(),
    last_address text,
    push_version text,
    dialect text NOT NULL DEFAULT 'att' CHECK (dialect IN ('att', 'acc')),
    language text,
    -- JSON object: what the terminal reported (INFO, options, registry)
    info text,
    attlog_stamp text,
    operlog_stamp text,
    registry_code text
);

CREATE TABLE essl_push_commands (
    id serial PRIMARY KEY,
    device_id uuid NOT NULL REFERENCES essl_devices (id) ON DELETE CASCADE,
    kind text NOT NULL,
    command text NOT NULL,
    status text NOT NULL CHECK (status IN ('queued', 'sent', 'ok', 'failed', 'expired')),
    attempts integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    sent_at timestamptz,
    finished_at timestamptz,
    return_code integer,
    result text,
    requested_by text
);

CREATE INDEX essl_push_commands_device_idx ON essl_push_commands (device_id, status, id);

CREATE TABLE essl_push_secrets (
    site_id uuid PRIMARY KEY REFERENCES essl_sites (id) ON DELETE CASCADE,
    secret_hash bytea NOT NULL UNIQUE CHECK (length(secret_hash) = 32),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- As 0001: only the service role, no policy for signed-in users (the journal holds raw terminal traffic).
ALTER TABLE essl_push_journal ENABLE ROW LEVEL SECURITY;
ALTER TABLE essl_push_terminals ENABLE ROW LEVEL SECURITY;
ALTER TABLE essl_push_commands ENABLE ROW LEVEL SECURITY;
ALTER TABLE essl_push_secrets ENABLE ROW LEVEL SECURITY;

DO $$
DECLARE
    t text;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
        FOREACH t IN ARRAY ARRAY['essl_push_journal', 'essl_push_terminals', 'essl_push_commands',
                                 'essl_push_secrets'] LOOP
            EXECUTE format('CREATE POLICY %I ON %I FOR ALL TO service_role USING (true) WITH CHECK (true)',
                           t || '_service_role_all', t);
            EXECUTE format('GRANT ALL ON %I TO service_role', t);
        END LOOP;
        GRANT USAGE ON SEQUENCE essl_push_journal_id_seq, essl_push_commands_id_seq TO service_role;
    END IF;
END
$$;
