-- Requests forwarded between instances are kept here as well as notified: a notification sent while the target's
-- listener was reconnecting is lost, the row is not. The target claims a request by deleting its row (from the
-- notification or from its scan of rows addressed to it), so each is served at most once; a request whose row
-- outlived its deadline is never served and is swept.

CREATE TABLE essl_cluster_requests (
    id uuid PRIMARY KEY,
    -- The instance asked; its requests go with its row when it leaves or is swept.
    to_instance uuid NOT NULL REFERENCES essl_instances (id) ON DELETE CASCADE,
    -- The notice as notified (a versioned envelope naming its sender).
    body text NOT NULL,
    sent_at timestamptz NOT NULL DEFAULT now(),
    -- The asking instance's deadline for the operation itself (without the way back).
    expires_at timestamptz NOT NULL
);

CREATE INDEX essl_cluster_requests_to_idx ON essl_cluster_requests (to_instance);

ALTER TABLE essl_cluster_requests ENABLE ROW LEVEL SECURITY;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
        CREATE POLICY essl_cluster_requests_service_role_all ON essl_cluster_requests
            FOR ALL TO service_role USING (true) WITH CHECK (true);
        GRANT ALL ON essl_cluster_requests TO service_role;
    END IF;
END
$$;
