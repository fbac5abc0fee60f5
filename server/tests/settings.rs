//! `essl-server serve --config server.toml` as an operator runs it: bad settings exit with code 2 and name the key
//! and the file (or the variable); the environment wins over the file.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const SERVER: &str = env!("CARGO_BIN_EXE_essl-server");

/// The ESSL_* variables a developer's shell might hold, cleared so each test says exactly what it sets.
const VARS: &[&str] = &[
    "ESSL_CONFIG",
    "ESSL_LISTEN",
    "ESSL_DATABASE_URL",
    "ESSL_TLS_CERT",
    "ESSL_TLS_KEY",
    "ESSL_SUPABASE_URL",
    "ESSL_SUPABASE_JWT_SECRET",
];

fn tempdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("essl-settings-{tag}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

fn server(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(SERVER);
    c.args(args).env("RUST_LOG", "info");
    for v in VARS {
        c.env_remove(v);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

async fn refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = tokio::time::timeout(Duration::from_secs(30), server(args, env).output())
        .await
        .expect("exits at once")
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("invalid configuration") && !stderr.contains("panicked"), "{stderr}");
    stderr
}

#[tokio::test]
async fn bad_settings_exit_2_naming_key_and_file() {
    let dir = tempdir("bad");
    let f = write(&dir, "server.toml", "listen = 8080\n");
    let file = f.to_str().expect("utf-8");
    let err = refused(&["serve", "--config", file], &[]).await;
    assert!(err.contains(&format!("`listen` in {file}")) && err.contains("line 1"), "{err}");

    let f = write(&dir, "unknown.toml", "listen = \"127.0.0.1:0\"\ndatabase = \"sqlite://x.db\"\n");
    let file = f.to_str().expect("utf-8");
    let err = refused(&["serve", "--config", file], &[]).await;
    assert!(err.contains(file) && err.contains("database") && err.contains("line 2"), "{err}");

    let f = write(
        &dir,
        "values.toml",
        "database_url = \"mysql://root:hunter2@db/essl\"\nsupabase_jwt_secret = \"too-short\"\ntls_key = \"key.pem\"\n",
    );
    let file = f.to_str().expect("utf-8");
    let err = refused(&["serve", "--config", file], &[]).await;
    for key in ["database_url", "supabase_jwt_secret", "tls_key"] {
        assert!(err.contains(&format!("`{key}` in {file}")), "{key}: {err}");
    }
    assert!(!err.contains("hunter2") && !err.contains("too-short"), "a secret leaked: {err}");

    // The file given through the environment, and a bad value from the environment, named as such.
    let err = refused(&["serve"], &[("ESSL_CONFIG", file)]).await;
    assert!(err.contains(&format!("`database_url` in {file}")), "{err}");
    let err = refused(&["serve"], &[("ESSL_LISTEN", "everywhere")]).await;
    assert!(err.contains("environment variable ESSL_LISTEN"), "{err}");
    let err = refused(&["serve", "--listen", "everywhere"], &[]).await;
    assert!(err.contains("--listen"), "{err}");
    let err = refused(&["serve", "--config", dir.join("missing.toml").to_str().expect("utf-8")], &[]).await;
    assert!(err.contains("missing.toml"), "{err}");

    // `token create` reads the same file.
    let err = refused(&["token", "create", "--role", "admin", "--name", "ops", "--config", file], &[]).await;
    assert!(err.contains("`database_url` in"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn environment_wins_over_the_file() {
    let dir = tempdir("env");
    let db = dir.join("essl.db");
    let f = write(
        &dir,
        "server.toml",
        &format!("listen = \"not an address\"\ndatabase_url = \"sqlite://{}\"\n", db.display()),
    );
    // An empty variable counts as unset.
    let env = [
        ("ESSL_LISTEN", "127.0.0.1:0"),
        ("ESSL_SUPABASE_URL", ""),
        ("ESSL_SUPABASE_JWT_SECRET", ""),
        ("ESSL_TLS_CERT", ""),
        ("ESSL_TLS_KEY", ""),
    ];
    let mut child = server(&["serve", "--config", f.to_str().expect("utf-8")], &env)
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starts");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let serving = tokio::time::timeout(Duration::from_secs(30), async {
        let mut seen = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("serving HTTP") {
                return Ok(line);
            }
            seen.push(line);
        }
        Err(seen.join("\n"))
    })
    .await
    .expect("starts within 30 s");
    let _ = child.kill().await;
    let line = serving.unwrap_or_else(|log| panic!("did not start:\n{log}"));
    assert!(line.contains("127.0.0.1:") && line.contains("sqlite"), "{line}");
    assert!(db.exists(), "the database of the file was used");
    let _ = std::fs::remove_dir_all(dir);
}
