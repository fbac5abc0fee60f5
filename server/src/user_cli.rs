//! `essl-server user create|password|list`: the people who log in to the dashboard.

use std::io::BufRead;

use anyhow::Context;
use essl_server::auth::{password, token::Secret};
use essl_server::store::Store;
use essl_server::store::model::Role;

/// Where a new password comes from.
pub enum NewPassword {
    /// The first line of standard input (for scripts and password managers).
    Stdin,
    /// A random one, printed once.
    Generated,
}

/// Adds a dashboard login.
pub async fn create(store: &Store, name: &str, role: Role, source: NewPassword) -> anyhow::Result<()> {
    let (secret, generated) = obtain(source).await?;
    let hash = hash(secret.clone()).await?;
    let user = store.create_user(name, role, &hash).await.with_context(|| format!("creating the user {name:?}"))?;
    if generated {
        println!("{}", secret.expose());
    }
    eprintln!(
        "Dashboard user {:?} ({}) created.{}",
        user.username,
        user.role,
        if generated { " The password above is shown this once." } else { "" }
    );
    Ok(())
}

/// Replaces a login's password (and ends that user's sessions).
pub async fn set_password(store: &Store, name: &str, source: NewPassword) -> anyhow::Result<()> {
    let (secret, generated) = obtain(source).await?;
    let hash = hash(secret.clone()).await?;
    let user = store.set_password(name, &hash).await.with_context(|| format!("changing the password of {name:?}"))?;
    if generated {
        println!("{}", secret.expose());
    }
    eprintln!("Password of {:?} changed; their sessions are ended.", user.username);
    Ok(())
}

/// Lists the logins.
pub async fn list(store: &Store) -> anyhow::Result<()> {
    for u in store.list_users().await? {
        let state = if u.disabled_at.is_some() { "disabled" } else { "active" };
        println!("{}\t{}\t{}\tcreated {}", u.username, u.role, state, u.created_at);
    }
    Ok(())
}

async fn obtain(source: NewPassword) -> anyhow::Result<(Secret, bool)> {
    match source {
        NewPassword::Generated => Ok((password::generate().context("no random source")?, true)),
        NewPassword::Stdin => {
            let line = tokio::task::spawn_blocking(|| {
                let mut line = String::new();
                std::io::stdin().lock().read_line(&mut line).map(|_| line)
            })
            .await?
            .context("reading the password from standard input")?;
            Ok((Secret::new(line.trim_end_matches(['\r', '\n'])), false))
        }
    }
}

async fn hash(secret: Secret) -> anyhow::Result<String> {
    Ok(tokio::task::spawn_blocking(move || password::hash(&secret)).await??)
}
