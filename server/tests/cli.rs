//! `essl-server token create` as an operator runs it: the real binary, a real database file.

use essl_server::auth::Auth;
use essl_server::store::Store;
use essl_server::store::model::Role;

const SERVER: &str = env!("CARGO_BIN_EXE_essl-server");

#[tokio::test]
async fn token_create_prints_a_working_token_once() {
    let path = std::env::temp_dir().join(format!("essl-cli-{}.db", uuid::Uuid::new_v4().simple()));
    let url = format!("sqlite://{}", path.display());
    for (role, name) in [("admin", "ops"), ("staff", "front desk")] {
        let out = tokio::process::Command::new(SERVER)
            .args(["token", "create", "--role", role, "--name", name, "--database-url", &url])
            .output()
            .await
            .expect("runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let token = String::from_utf8(out.stdout).expect("utf-8").trim().to_owned();
        assert!(token.starts_with("essls_"), "{token}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("shown this once"));

        let store = Store::connect(&url).await.expect("store");
        let caller = Auth::new(store.clone()).caller(&token).await.expect("the printed token authenticates");
        assert_eq!(caller.name, name);
        assert_eq!(caller.role, if role == "admin" { Role::Admin } else { Role::Staff });
        // Only a hash is stored: the secret part appears nowhere in the database file.
        let secret = token.rsplit('_').next().expect("secret");
        store.close().await;
        let bytes = std::fs::read(&path).expect("db file");
        let wal = std::fs::read(format!("{}-wal", path.display())).unwrap_or_default();
        assert!(!contains(&bytes, secret.as_bytes()) && !contains(&wal, secret.as_bytes()));
    }
    let out = tokio::process::Command::new(SERVER)
        .args(["token", "create", "--role", "root", "--name", "x", "--database-url", &url])
        .output()
        .await
        .expect("runs");
    assert_eq!(out.status.code(), Some(2), "clap refuses an unknown role");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
