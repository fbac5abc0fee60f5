-- Kept in step with postgres/0005_cluster.sql: several instances on one database need PostgreSQL (its leases and
-- LISTEN/NOTIFY). SQLite serves one instance, whose registry lives in memory; nothing to add here.
SELECT 1;
