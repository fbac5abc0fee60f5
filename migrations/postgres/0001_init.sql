-- essl-relay schema for PostgreSQL / Supabase.
-- essl_devices and essl_sync_status keep the seed's columns, types and functions (get_latest_sync_status,
-- get_all_devices_sync_status) so its monitoring queries run as written; the rest is new.
-- Times are TIMESTAMPTZ; the server binds and reads them as unix milliseconds through essl_ts / essl_ms.

-- Unix milliseconds <-> timestamptz, exact at millisecond precision.
CREATE FUNCTION essl_ts(ms bigint) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT to_timestamp(ms::float8 / 1000.0) $$;

CREATE FUNCTION essl_ms(t timestamptz) RETURNS bigint
    LANGUAGE sql STABLE STRICT PARALLEL SAFE
    AS $$ SELECT (extract(epoch FROM t) * 1000)::int8 $$;

CREATE TABLE essl_sites (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE essl_devices (
    -- the seed's columns
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    device_name text NOT NULL,
    ip_address text,
    port integer NOT NULL DEFAULT 4370 CHECK (port BETWEEN 0 AND 65535),
    is_active boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    -- essl-relay's
    kind text NOT NULL DEFAULT 'pull' CHECK (kind IN ('pull', 'push')),
    comm_key bigint NOT NULL DEFAULT 0 CHECK (comm_key BETWEEN 0 AND 4294967295),
    udp boolean NOT NULL DEFAULT false,
    serial_number text UNIQUE,
    timezone text NOT NULL DEFAULT 'UTC',
    site_id uuid REFERENCES essl_sites (id) ON DELETE SET NULL
);

CREATE INDEX essl_devices_site_idx ON essl_devices (site_id);

CREATE TABLE essl_agents (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name text NOT NULL,
    site_id uuid NOT NULL REFERENCES essl_sites (id),
    token_hash bytea NOT NULL CHECK (length(token_hash) = 32),
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz,
    last_seen timestamptz,
    version text,
    hostname text
);

CREATE TABLE essl_api_tokens (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name text NOT NULL,
    role text NOT NULL CHECK (role IN ('admin', 'staff')),
    token_hash bytea NOT NULL CHECK (length(token_hash) = 32),
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

CREATE TABLE essl_sync_status (
    -- the seed's columns
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    device_id uuid NOT NULL REFERENCES essl_devices (id) ON DELETE CASCADE,
    last_sync_time timestamptz NOT NULL DEFAULT now(),
    sync_status text NOT NULL CHECK (sync_status IN ('success', 'failed', 'in_progress')),
    records_synced integer NOT NULL DEFAULT 0,
    error_message text,
    synced_by_user_id uuid,
    sync_duration_ms integer,
    -- essl-relay's
    error_kind text CHECK (error_kind IN ('connection', 'other')),
    records_total integer,
    agent_id uuid REFERENCES essl_agents (id) ON DELETE SET NULL
);

CREATE INDEX essl_sync_status_device_time_idx ON essl_sync_status (device_id, last_sync_time DESC, id DESC);
CREATE INDEX essl_sync_status_time_idx ON essl_sync_status (last_sync_time DESC);
CREATE INDEX essl_sync_status_agent_idx ON essl_sync_status (agent_id);

CREATE TABLE device_sync_logs (
    id bigserial PRIMARY KEY,
    device_id uuid NOT NULL REFERENCES essl_devices (id) ON DELETE CASCADE,
    sync_id uuid REFERENCES essl_sync_status (id) ON DELETE SET NULL,
    at timestamptz NOT NULL DEFAULT now(),
    level text NOT NULL,
    message text NOT NULL
);

CREATE INDEX device_sync_logs_device_idx ON device_sync_logs (device_id, at DESC, id DESC);
CREATE INDEX device_sync_logs_sync_idx ON device_sync_logs (sync_id);

CREATE TABLE essl_attendance (
    id bigserial PRIMARY KEY,
    device_id uuid NOT NULL REFERENCES essl_devices (id) ON DELETE CASCADE,
    -- the user's PIN on the terminal; terminals allow at most 24 characters
    user_id text NOT NULL CHECK (length(user_id) <= 64),
    uid integer NOT NULL,
    -- the terminal's wall clock, no zone
    local_time timestamp NOT NULL,
    -- the instant local_time denotes in the device's time zone
    punched_at timestamptz NOT NULL,
    status smallint NOT NULL,
    punch smallint NOT NULL,
    flags integer NOT NULL DEFAULT 0,
    inserted_at timestamptz NOT NULL DEFAULT now(),
    -- The key is (device, user id, punch time); its columns are ordered by time so that batches, which arrive
    -- in time order, append to the index instead of touching one place per user (3x faster ingest at 100k rows).
    UNIQUE (device_id, local_time, user_id)
);

-- the listing order (punched_at DESC, id DESC), with and without a device filter
CREATE INDEX essl_attendance_device_order_idx ON essl_attendance (device_id, punched_at DESC, id DESC);
CREATE INDEX essl_attendance_order_idx ON essl_attendance (punched_at DESC, id DESC);

CREATE TABLE essl_device_users (
    device_id uuid NOT NULL REFERENCES essl_devices (id) ON DELETE CASCADE,
    uid integer NOT NULL,
    user_id text NOT NULL CHECK (length(user_id) <= 64),
    name text NOT NULL,
    privilege smallint NOT NULL,
    card bigint NOT NULL,
    group_id text NOT NULL,
    PRIMARY KEY (device_id, uid)
);

-- The seed's helpers.
CREATE FUNCTION get_latest_sync_status(p_device_id uuid) RETURNS SETOF essl_sync_status
    LANGUAGE sql STABLE
    AS $$
        SELECT s.*
        FROM essl_sync_status s
        WHERE s.device_id = p_device_id
        ORDER BY s.last_sync_time DESC, s.id DESC
        LIMIT 1
    $$;

CREATE FUNCTION get_all_devices_sync_status()
    RETURNS TABLE (
        device_id uuid,
        device_name text,
        ip_address text,
        last_sync_time timestamptz,
        sync_status text,
        records_synced integer,
        error_message text,
        minutes_since_sync integer
    )
    LANGUAGE sql STABLE
    AS $$
        SELECT d.id,
               d.device_name,
               d.ip_address,
               s.last_sync_time,
               s.sync_status,
               s.records_synced,
               s.error_message,
               floor(extract(epoch FROM (now() - s.last_sync_time)) / 60)::integer
        FROM essl_devices d
        LEFT JOIN LATERAL (
            SELECT x.last_sync_time, x.sync_status, x.records_synced, x.error_message
            FROM essl_sync_status x
            WHERE x.device_id = d.id
            ORDER BY x.last_sync_time DESC, x.id DESC
            LIMIT 1
        ) s ON true
        ORDER BY d.device_name, d.id
    $$;

-- Row level security, as on Supabase: signed-in users read devices, sync status and attendance; the service role
-- does everything. The server connects as the tables' owner, which RLS does not restrict. The roles exist on
-- Supabase; on plain PostgreSQL they are created here (NOLOGIN) when this user may, and skipped otherwise.
ALTER TABLE essl_sites ENABLE ROW LEVEL SECURITY;
ALTER TABLE essl_devices ENABLE ROW LEVEL SECURITY;
ALTER TABLE essl_agents ENABLE ROW LEVEL SECURITY;
ALTER TABLE essl_api_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE essl_sync_status ENABLE ROW LEVEL SECURITY;
ALTER TABLE device_sync_logs ENABLE ROW LEVEL SECURITY;
ALTER TABLE essl_attendance ENABLE ROW LEVEL SECURITY;
ALTER TABLE essl_device_users ENABLE ROW LEVEL SECURITY;

DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['authenticated', 'service_role'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION
                -- another database of this cluster created it concurrently
                WHEN duplicate_object OR unique_violation THEN NULL;
                WHEN insufficient_privilege THEN
                    RAISE NOTICE 'essl-relay: role % is missing and cannot be created; its policies are skipped', r;
            END;
        END IF;
    END LOOP;
END
$$;

DO $$
DECLARE
    t text;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
        FOREACH t IN ARRAY ARRAY['essl_devices', 'essl_sync_status', 'essl_attendance'] LOOP
            EXECUTE format('CREATE POLICY %I ON %I FOR SELECT TO authenticated USING (true)',
                           t || '_authenticated_select', t);
            EXECUTE format('GRANT SELECT ON %I TO authenticated', t);
        END LOOP;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
        FOREACH t IN ARRAY ARRAY['essl_sites', 'essl_devices', 'essl_agents', 'essl_api_tokens', 'essl_sync_status',
                                 'device_sync_logs', 'essl_attendance', 'essl_device_users'] LOOP
            EXECUTE format('CREATE POLICY %I ON %I FOR ALL TO service_role USING (true) WITH CHECK (true)',
                           t || '_service_role_all', t);
            EXECUTE format('GRANT ALL ON %I TO service_role', t);
        END LOOP;
        GRANT USAGE ON SEQUENCE device_sync_logs_id_seq, essl_attendance_id_seq TO service_role;
    END IF;
END
$$;
