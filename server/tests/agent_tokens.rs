//! `essl-server token create-agents` as an operator runs it: the real binary, a real SQLite file. The tokens go to
//! a file only its owner may read (or to standard output), each one opens its own agent of the site, and none of
//! them reaches the log or the database.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use essl_server::auth::Auth;
use essl_server::store::Store;

const SERVER: &str = env!("CARGO_BIN_EXE_essl-server");

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("essl-agent-tokens-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

async fn run(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(SERVER)
        .args(args)
        .env("RUST_LOG", "debug")
        .env_remove("ESSL_CONFIG")
        .env_remove("ESSL_DATABASE_URL")
        .output()
        .await
        .expect("runs")
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn db_bytes(path: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(path).expect("db file");
    bytes.extend(std::fs::read(format!("{}-wal", path.display())).unwrap_or_default());
    bytes
}

#[tokio::test]
async fn create_agents_writes_working_tokens_to_a_private_file() {
    let dir = tempdir();
    let db = dir.join("essl.db");
    let url = format!("sqlite://{}", db.display());
    let out = dir.join("tokens");
    let out_arg = out.to_string_lossy().into_owned();
    let args = ["token", "create-agents", "--count", "120", "--site", "Load test", "--name-prefix", "idle"];
    let done = run(&[&args[..], &["--out", &out_arg, "--database-url", &url]].concat()).await;
    let stderr = String::from_utf8_lossy(&done.stderr).into_owned();
    assert!(done.status.success(), "{stderr}");
    assert!(done.stdout.is_empty(), "tokens go to the file only");
    assert!(stderr.contains("120 agent tokens"), "{stderr}");

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out).expect("tokens file").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "only the owner may read the tokens");
    }
    let text = std::fs::read_to_string(&out).expect("tokens");
    let tokens: Vec<&str> = text.lines().collect();
    assert_eq!(tokens.len(), 120);
    assert_eq!(tokens.iter().collect::<HashSet<_>>().len(), 120, "every token differs");

    let store = Store::connect(&url).await.expect("store");
    let auth = Auth::new(store.clone());
    let site = store.site_by_name("Load test").await.expect("read").expect("the site was made");
    let mut names = HashSet::new();
    for token in &tokens {
        let agent = auth.agent(token).await.expect("read").expect("each token opens an agent");
        assert_eq!(agent.site_id, site.id);
        names.insert(agent.name);
    }
    assert_eq!(names.len(), 120, "one agent per token");
    assert!(names.contains("idle-00001") && names.contains("idle-00120"), "{names:?}");
    assert_eq!(store.list_agents().await.expect("list").len(), 120);
    store.close().await;

    // Only hashes are stored and nothing is logged, even at debug level.
    let bytes = db_bytes(&db);
    for token in &tokens {
        let secret = token.rsplit('_').next().expect("secret");
        assert!(!contains(&bytes, secret.as_bytes()), "a secret is in the database");
        assert!(!stderr.contains(secret), "a secret is in the log");
    }

    // An existing file is never overwritten: it may hold live tokens.
    let again = run(&[&args[..], &["--out", &out_arg, "--database-url", &url]].concat()).await;
    assert!(!again.status.success());
    assert_eq!(std::fs::read_to_string(&out).expect("tokens"), text, "the file is untouched");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn create_agents_prints_to_stdout_and_refuses_bad_counts() {
    let dir = tempdir();
    let url = format!("sqlite://{}", dir.join("essl.db").display());
    let done = run(&["token", "create-agents", "--count", "3", "--site", "HQ", "--database-url", &url]).await;
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    let stdout = String::from_utf8(done.stdout).expect("utf-8");
    assert_eq!(stdout.lines().count(), 3, "{stdout}");
    assert!(stdout.lines().all(|l| l.starts_with("essla_")), "{stdout}");

    for count in ["0", "-1", "100001", "many"] {
        let refused = run(&["token", "create-agents", "--count", count, "--site", "HQ", "--database-url", &url]).await;
        assert_eq!(refused.status.code(), Some(2), "--count {count} is refused by the argument parser");
    }
    let long = "x".repeat(100);
    let refused = run(&[
        "token",
        "create-agents",
        "--count",
        "1",
        "--site",
        "HQ",
        "--name-prefix",
        &long,
        "--database-url",
        &url,
    ])
    .await;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--name-prefix"));
    let _ = std::fs::remove_dir_all(&dir);
}
