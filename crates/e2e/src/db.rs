//! A fresh database per test: a temporary SQLite file, or a PostgreSQL database created for the test and dropped
//! after it (from `TEST_DATABASE_URL`; skipped with a `SKIPPED` line when unset, failed when
//! `ESSL_REQUIRE_POSTGRES=1`).

use sqlx::Connection;

/// Which store to test against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database for one test.
pub struct TestDb {
    pub url: String,
    pub backend: Backend,
    cleanup: Cleanup,
}

enum Cleanup {
    File(std::path::PathBuf),
    Database {
        admin_url: String,
        name: String,
    },
    /// Another way to a database some other `TestDb` owns: nothing to clean up.
    Borrowed,
}

impl TestDb {
    /// `None` when the backend is not available here (PostgreSQL without `TEST_DATABASE_URL`).
    pub async fn new(backend: Backend) -> Option<TestDb> {
        let tag = uuid::Uuid::new_v4().simple().to_string();
        match backend {
            Backend::Sqlite => {
                let path = std::env::temp_dir().join(format!("essl-e2e-{tag}.db"));
                Some(TestDb { url: format!("sqlite://{}", path.display()), backend, cleanup: Cleanup::File(path) })
            }
            Backend::Postgres => {
                let Ok(admin_url) = std::env::var("TEST_DATABASE_URL") else {
                    if std::env::var_os("ESSL_REQUIRE_POSTGRES").is_some() {
                        panic!("ESSL_REQUIRE_POSTGRES is set but TEST_DATABASE_URL is not");
                    }
                    println!("SKIPPED postgres e2e test: set TEST_DATABASE_URL");
                    return None;
                };
                Some(TestDb::postgres_at(&admin_url).await)
            }
        }
    }

    /// A fresh PostgreSQL database on the server of `admin_url` (a database the user may create others from),
    /// dropped with the `TestDb`. Panics if the server cannot be reached: tests and benchmarks asked for it.
    pub async fn postgres_at(admin_url: &str) -> TestDb {
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("essl_e2e_{}", &tag[..16]);
        let mut conn = sqlx::PgConnection::connect(admin_url).await.expect("the PostgreSQL admin URL connects");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create database");
        let url = replace_db(admin_url, &name);
        TestDb { url, backend: Backend::Postgres, cleanup: Cleanup::Database { admin_url: admin_url.to_owned(), name } }
    }
}

impl TestDb {
    /// For PostgreSQL: the URL of the server's maintenance database (`TEST_DATABASE_URL`) and this test's database
    /// name, so a test can act on the server's connections from outside (e.g. `pg_terminate_backend`).
    pub fn postgres_admin(&self) -> Option<(&str, &str)> {
        match &self.cleanup {
            Cleanup::Database { admin_url, name } => Some((admin_url, name)),
            Cleanup::File(_) | Cleanup::Borrowed => None,
        }
    }

    /// For PostgreSQL: the address of the database server, as this test's URL names it.
    pub fn postgres_addr(&self) -> Option<std::net::SocketAddr> {
        use std::net::ToSocketAddrs;
        let (_, authority) = authority(&self.url)?;
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let host_port = if host_port.contains(':') { host_port.to_owned() } else { format!("{host_port}:5432") };
        host_port.to_socket_addrs().ok()?.next()
    }

    /// The same PostgreSQL database reached through `addr` (a fault proxy in front of the server); the returned
    /// `TestDb` drops nothing, `self` still owns the database.
    pub fn via(&self, addr: std::net::SocketAddr) -> Option<TestDb> {
        let (start, authority) = authority(&self.url)?;
        let host_start = start + authority.rfind('@').map_or(0, |i| i + 1);
        let end = start + authority.len();
        let url = format!("{}{addr}{}", &self.url[..host_start], &self.url[end..]);
        Some(TestDb { url, backend: self.backend, cleanup: Cleanup::Borrowed })
    }
}

/// Where the authority (`user@host:port`) of a `postgres://` URL starts, and the authority itself.
fn authority(url: &str) -> Option<(usize, &str)> {
    let start = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .map(|rest| url.len() - rest.len())?;
    let rest = &url[start..];
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    Some((start, &rest[..end]))
}

/// The trigger that makes the database refuse punches (see [`TestDb::refuse_punches`]).
const REFUSE_SQLITE: &str = "CREATE TRIGGER IF NOT EXISTS essl_test_refuse BEFORE INSERT ON essl_attendance \
    BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;";
const ACCEPT_SQLITE: &str = "DROP TRIGGER IF EXISTS essl_test_refuse;";
const REFUSE_POSTGRES: &str = "CREATE OR REPLACE FUNCTION essl_test_refuse() RETURNS trigger LANGUAGE plpgsql AS \
    $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$; \
    DROP TRIGGER IF EXISTS essl_test_refuse ON essl_attendance; \
    CREATE TRIGGER essl_test_refuse BEFORE INSERT ON essl_attendance \
    FOR EACH STATEMENT EXECUTE FUNCTION essl_test_refuse();";
const ACCEPT_POSTGRES: &str = "DROP TRIGGER IF EXISTS essl_test_refuse ON essl_attendance;";

impl TestDb {
    /// Makes the database refuse new attendance rows (`true`), as a database that fails writes would: every batch
    /// of punches then fails to commit, and the server acknowledges none. `false` accepts them again. The schema
    /// must exist (a server has started on this database).
    pub async fn refuse_punches(&self, refuse: bool) {
        let sql = match (self.backend, refuse) {
            (Backend::Sqlite, true) => REFUSE_SQLITE,
            (Backend::Sqlite, false) => ACCEPT_SQLITE,
            (Backend::Postgres, true) => REFUSE_POSTGRES,
            (Backend::Postgres, false) => ACCEPT_POSTGRES,
        };
        self.execute(sql).await;
    }

    /// Runs SQL on the test database behind the server's back (e.g. rows lost, as in a restore from an old
    /// backup). Statements separated by `;`.
    pub async fn execute(&self, sql: &'static str) {
        match self.backend {
            Backend::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&self.url).await.expect("the test database opens");
                sqlx::raw_sql(sql).execute(&mut conn).await.expect("SQL runs");
            }
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.url).await.expect("the test database connects");
                sqlx::raw_sql(sql).execute(&mut conn).await.expect("SQL runs");
            }
        }
    }
}

/// The same server URL with another database name.
fn replace_db(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = base[scheme_end..].find('/').map(|i| i + scheme_end).unwrap_or(base.len());
    let mut out = format!("{}/{name}", &base[..path_start]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

impl Drop for TestDb {
    fn drop(&mut self) {
        match &self.cleanup {
            Cleanup::File(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
            }
            Cleanup::Database { admin_url, name } => {
                let (admin_url, name) = (admin_url.clone(), name.clone());
                // Drop runs outside async; a short-lived thread with its own runtime does the cleanup.
                let _ = std::thread::spawn(move || {
                    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
                    rt.block_on(async {
                        if let Ok(mut conn) = sqlx::PgConnection::connect(&admin_url).await {
                            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                            )))
                            .execute(&mut conn)
                            .await;
                        }
                    });
                })
                .join();
            }
            Cleanup::Borrowed => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Backend, Cleanup, TestDb, replace_db};

    #[test]
    fn a_database_is_reached_through_another_address() {
        let db = TestDb {
            url: "postgres://u:p@127.0.0.1:5432/essl_x?sslmode=disable".into(),
            backend: Backend::Postgres,
            cleanup: Cleanup::Borrowed,
        };
        assert_eq!(db.postgres_addr(), Some("127.0.0.1:5432".parse().expect("addr")));
        let via = db.via("127.0.0.9:40000".parse().expect("addr")).expect("a postgres URL");
        assert_eq!(via.url, "postgres://u:p@127.0.0.9:40000/essl_x?sslmode=disable");
        let bare =
            TestDb { url: "postgresql://127.0.0.1/t".into(), backend: Backend::Postgres, cleanup: Cleanup::Borrowed };
        assert_eq!(bare.postgres_addr(), Some("127.0.0.1:5432".parse().expect("addr")));
        assert_eq!(bare.via("127.0.0.2:1".parse().expect("addr")).expect("url").url, "postgresql://127.0.0.2:1/t");
        let sqlite = TestDb { url: "sqlite:///tmp/x.db".into(), backend: Backend::Sqlite, cleanup: Cleanup::Borrowed };
        assert!(sqlite.via("127.0.0.2:1".parse().expect("addr")).is_none());
    }

    #[test]
    fn database_name_is_replaced() {
        assert_eq!(replace_db("postgres://postgres@127.0.0.1:5432/test", "x"), "postgres://postgres@127.0.0.1:5432/x");
        assert_eq!(replace_db("postgres://u:p@h/test?sslmode=disable", "x"), "postgres://u:p@h/x?sslmode=disable");
        assert_eq!(replace_db("postgres://h:5432", "x"), "postgres://h:5432/x");
    }
}
