-- Several server instances on one database (PostgreSQL only; SQLite serves one instance).
-- An instance holds a lease it renews every heartbeat; the agents connected to it and the reachability they
-- reported count only while that lease holds, so an instance that dies takes its agents with it within two
-- heartbeats, without anyone having to clean up after it. Requests cross instances by LISTEN/NOTIFY; replies too
-- large for a notification wait in essl_cluster_replies until the asking instance reads them.

CREATE TABLE essl_instances (
    id uuid PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    lease_until timestamptz NOT NULL,
    -- Shutting down: finishes what it holds, takes no new forwarded work.
    draining boolean NOT NULL DEFAULT false,
    -- The cluster message versions it speaks (see server/src/cluster/notice.rs).
    min_notice smallint NOT NULL,
    max_notice smallint NOT NULL,
    version text NOT NULL
);

CREATE TABLE essl_agent_presence (
    agent_id uuid PRIMARY KEY REFERENCES essl_agents (id) ON DELETE CASCADE,
    instance_id uuid NOT NULL REFERENCES essl_instances (id) ON DELETE CASCADE,
    -- The connection within that instance: a late goodbye of an older connection never removes a newer one.
    conn_id bigint NOT NULL,
    site_id uuid NOT NULL REFERENCES essl_sites (id) ON DELETE CASCADE,
    protocol smallint NOT NULL,
    version text NOT NULL,
    hostname text NOT NULL,
    os text NOT NULL,
    connected_since timestamptz NOT NULL
);

CREATE INDEX essl_agent_presence_instance_idx ON essl_agent_presence (instance_id);
CREATE INDEX essl_agent_presence_site_idx ON essl_agent_presence (site_id);

CREATE TABLE essl_device_reach (
    device_id uuid NOT NULL REFERENCES essl_devices (id) ON DELETE CASCADE,
    agent_id uuid NOT NULL REFERENCES essl_agent_presence (agent_id) ON DELETE CASCADE,
    reachable boolean NOT NULL,
    rtt_us bigint,
    checked_at timestamptz NOT NULL,
    error text,
    PRIMARY KEY (device_id, agent_id)
);

CREATE INDEX essl_device_reach_agent_idx ON essl_device_reach (agent_id);

CREATE TABLE essl_cluster_replies (
    id uuid PRIMARY KEY,
    body text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Single flight of a device's sync across instances: the instance that claims the row reads the terminal; the
-- others wait for its result here. A claim lapses when it expires or its instance loses its lease.
CREATE TABLE essl_sync_flights (
    device_id uuid PRIMARY KEY REFERENCES essl_devices (id) ON DELETE CASCADE,
    flight_id uuid NOT NULL,
    instance_id uuid NOT NULL,
    expires_at timestamptz NOT NULL,
    done boolean NOT NULL DEFAULT false,
    result text
);

-- As 0001: only the service role, no policy for signed-in users.
ALTER TABLE essl_instances ENABLE ROW LEVEL SECURITY;
ALTER TABLE essl_agent_presence ENABLE ROW LEVEL SECURITY;
ALTER TABLE essl_device_reach ENABLE ROW LEVEL SECURITY;
ALTER TABLE essl_cluster_replies ENABLE ROW LEVEL SECURITY;
ALTER TABLE essl_sync_flights ENABLE ROW LEVEL SECURITY;

DO $$
DECLARE
    t text;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
        FOREACH t IN ARRAY ARRAY['essl_instances', 'essl_agent_presence', 'essl_device_reach',
                                 'essl_cluster_replies', 'essl_sync_flights'] LOOP
            EXECUTE format('CREATE POLICY %I ON %I FOR ALL TO service_role USING (true) WITH CHECK (true)',
                           t || '_service_role_all', t);
            EXECUTE format('GRANT ALL ON %I TO service_role', t);
        END LOOP;
    END IF;
END
$$;
