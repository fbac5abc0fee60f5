-- Dashboard logins: people (not scripts: those use API tokens) with a user name and a password, and their cookie
-- sessions. Only hashes are stored: PBKDF2 for passwords (people choose them), SHA-256 for the random session
-- secrets. Sessions live in the database so that they survive a restart and work on every server instance.

CREATE TABLE essl_users (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- Compared as typed after lowercasing (the server lowercases before storing and looking up).
    username text NOT NULL UNIQUE CHECK (length(username) BETWEEN 1 AND 64),
    role text NOT NULL CHECK (role IN ('admin', 'staff')),
    password_hash text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    disabled_at timestamptz
);

CREATE TABLE essl_sessions (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id uuid NOT NULL REFERENCES essl_users (id) ON DELETE CASCADE,
    secret_hash bytea NOT NULL CHECK (length(secret_hash) = 32),
    csrf_token text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);

CREATE INDEX essl_sessions_user_idx ON essl_sessions (user_id);
CREATE INDEX essl_sessions_expiry_idx ON essl_sessions (expires_at);

-- Credentials: no policy for signed-in Supabase users at all; the service role does everything.
ALTER TABLE essl_users ENABLE ROW LEVEL SECURITY;
ALTER TABLE essl_sessions ENABLE ROW LEVEL SECURITY;

DO $$
DECLARE
    t text;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
        FOREACH t IN ARRAY ARRAY['essl_users', 'essl_sessions'] LOOP
            EXECUTE format('CREATE POLICY %I ON %I FOR ALL TO service_role USING (true) WITH CHECK (true)',
                           t || '_service_role_all', t);
            EXECUTE format('GRANT ALL ON %I TO service_role', t);
        END LOOP;
    END IF;
END
$$;
