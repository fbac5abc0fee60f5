-- Kept in step with postgres/0006_cluster_requests.sql: requests between instances exist only on PostgreSQL.
SELECT 1;
