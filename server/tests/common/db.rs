//! Throw-away databases for the store conformance suite: a SQLite file in its own temporary directory, an
//! in-memory SQLite, and a fresh PostgreSQL database per test (created through `TEST_DATABASE_URL`, dropped when
//! the [`TestDb`] is dropped, even after a failed assertion) so tests run in parallel.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Once;

use essl_server::store::Store;
use sqlx::Connection as _;
use sqlx::postgres::PgConnection;

/// A store on a database that disappears with this value.
pub struct TestDb {
    pub store: Store,
    /// The URL the store was opened with.
    pub url: String,
    /// Dropped after `store` (fields drop in order).
    #[allow(dead_code)]
    cleanup: Cleanup,
}

enum Cleanup {
    Nothing,
    Dir(PathBuf),
    Postgres { admin_url: String, name: String },
}

/// A fresh empty directory under the system temp dir (removed by the caller).
pub fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("essl-store-test-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("create a temp dir");
    dir
}

/// SQLite in a new file (WAL, separate reader and writer pools).
pub async fn sqlite_file() -> TestDb {
    let dir = temp_dir();
    let url = format!("sqlite://{}", dir.join("essl.db").display());
    let store = Store::connect(&url).await.expect("open a sqlite file");
    TestDb { store, url, cleanup: Cleanup::Dir(dir) }
}

/// SQLite in memory (one connection).
pub async fn sqlite_memory() -> TestDb {
    let url = "sqlite::memory:".to_owned();
    let store = Store::connect(&url).await.expect("open sqlite in memory");
    TestDb { store, url, cleanup: Cleanup::Nothing }
}

/// A new PostgreSQL database on the server of `TEST_DATABASE_URL`, or `None` (the test is skipped) when it is
/// unset. With `ESSL_REQUIRE_POSTGRES=1` a missing URL fails the test instead.
pub async fn postgres() -> Option<TestDb> {
    let Some(base) = std::env::var("TEST_DATABASE_URL").ok().filter(|u| !u.is_empty()) else {
        if std::env::var("ESSL_REQUIRE_POSTGRES").is_ok_and(|v| v == "1") {
            panic!("ESSL_REQUIRE_POSTGRES=1 but TEST_DATABASE_URL is not set");
        }
        static SAID: Once = Once::new();
        SAID.call_once(|| {
            // Straight to stderr, past the test harness's capture, so CI logs show it.
            let _ = writeln!(
                std::io::stderr(),
                "\nSKIPPED postgres store tests: set TEST_DATABASE_URL (e.g. postgres://postgres@127.0.0.1:5432/test)"
            );
        });
        return None;
    };
    let admin_url = admin_url(&base).await;
    let name = format!("essl_t_{}", uuid::Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&admin_url).await.expect("connect to the admin database");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("create a test database");
    let _ = admin.close().await;
    let url = with_database(&base, &name);
    // From here on the database is dropped however the test ends.
    let cleanup = Cleanup::Postgres { admin_url, name };
    let store = Store::connect(&url).await.expect("open the postgres test database");
    Some(TestDb { store, url, cleanup })
}

/// The URL as given if it connects, else the same server's `postgres` database.
async fn admin_url(base: &str) -> String {
    if let Ok(c) = PgConnection::connect(base).await {
        let _ = c.close().await;
        return base.to_owned();
    }
    with_database(base, "postgres")
}

/// `base` with its database name replaced (query string kept).
pub fn with_database(base: &str, name: &str) -> String {
    let (head, query) = base.split_once('?').map_or((base, None), |(h, q)| (h, Some(q)));
    let authority_start = head.find("://").map_or(0, |i| i + 3);
    let path_start = head[authority_start..].find('/').map_or(head.len(), |i| authority_start + i);
    let mut url = format!("{}/{name}", &head[..path_start]);
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    url
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        match self {
            Cleanup::Nothing => {}
            Cleanup::Dir(dir) => {
                let _ = std::fs::remove_dir_all(&*dir);
            }
            Cleanup::Postgres { admin_url, name } => {
                let (admin_url, name) = (admin_url.clone(), name.clone());
                // Drop runs inside the test's runtime: do the async work on a thread with its own.
                let dropped = std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
                    rt.block_on(async {
                        let mut admin = PgConnection::connect(&admin_url).await?;
                        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
                            .execute(&mut admin)
                            .await?;
                        admin.close().await
                    })
                })
                .join();
                if !matches!(dropped, Ok(Ok(()))) {
                    let _ = writeln!(std::io::stderr(), "warning: could not drop test database");
                }
            }
        }
    }
}

#[test]
fn database_names_are_replaced() {
    assert_eq!(with_database("postgres://u@h:5432/test", "x"), "postgres://u@h:5432/x");
    assert_eq!(with_database("postgres://u@h/test?sslmode=disable", "x"), "postgres://u@h/x?sslmode=disable");
    assert_eq!(with_database("postgresql://h", "x"), "postgresql://h/x");
}
