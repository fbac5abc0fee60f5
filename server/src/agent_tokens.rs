//! `essl-server token create-agents`: many agents of one site at once, for load tests and mass roll-outs. Each
//! agent is made exactly as `POST /api/agents` makes one (a generated token, only its hash stored); the tokens go
//! to a file only its owner can read, or to standard output, one per line, and never to the log.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use essl_server::auth::token;
use essl_server::store::Store;
use futures_util::{StreamExt, stream};
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};

/// What to create.
#[derive(Debug)]
pub struct Bulk {
    pub count: u32,
    pub site: String,
    pub name_prefix: String,
    pub out: Option<PathBuf>,
}

/// Inserts in flight at once: PostgreSQL's pool spreads them over its connections (one round trip each instead
/// of one after the other); SQLite's single writer takes them in turn either way.
const IN_FLIGHT: usize = 16;

pub async fn create(store: &Store, bulk: &Bulk) -> anyhow::Result<()> {
    let width = bulk.count.to_string().len().max(5);
    let longest = format!("{}-{:0width$}", bulk.name_prefix, bulk.count);
    anyhow::ensure!(
        !bulk.name_prefix.trim().is_empty() && longest.len() <= 100,
        "--name-prefix must be 1 to {} characters",
        100 - 1 - width
    );
    let site = store.ensure_site(&bulk.site).await.context("the site")?;
    let started = Instant::now();
    match &bulk.out {
        Some(path) => {
            let mut options = tokio::fs::OpenOptions::new();
            // Never overwrite (a file of live tokens may be there), and only the owner may read what is written.
            options.write(true).create_new(true);
            #[cfg(unix)]
            options.mode(0o600);
            let file = options.open(path).await.with_context(|| format!("creating {}", path.display()))?;
            write_all(store, bulk, site.id, width, file).await?;
        }
        None => {
            // Collected, then written at once: 20,000 tokens are about 2 MB.
            let mut tokens = Vec::new();
            write_all(store, bulk, site.id, width, &mut tokens).await?;
            tokio::task::spawn_blocking(move || {
                use std::io::Write;
                let mut stdout = std::io::stdout().lock();
                stdout.write_all(&tokens)?;
                stdout.flush()
            })
            .await??;
        }
    }
    let elapsed = started.elapsed();
    tracing::info!(count = bulk.count, site = %bulk.site, elapsed_ms = elapsed.as_millis() as u64, "agent tokens created");
    eprintln!(
        "{} agent tokens for site {:?} created in {:.1} s{}. They are shown this once; only their hashes are stored.",
        bulk.count,
        bulk.site,
        elapsed.as_secs_f64(),
        bulk.out.as_ref().map(|p| format!(" and written to {}", p.display())).unwrap_or_default()
    );
    Ok(())
}

/// Creates the agents, writing each token once its agent is stored, in the order of their numbers. A failure stops
/// the run; the tokens written until then belong to agents that exist.
async fn write_all(
    store: &Store,
    bulk: &Bulk,
    site_id: uuid::Uuid,
    width: usize,
    out: impl AsyncWrite + Unpin,
) -> anyhow::Result<()> {
    let mut out = BufWriter::new(out);
    let mut made = stream::iter(1..=bulk.count)
        .map(|i| async move {
            let name = format!("{}-{i:0width$}", bulk.name_prefix);
            let new = token::generate(token::AGENT_PREFIX).context("no random source")?;
            store
                .create_agent_with_id(new.id, &name, site_id, &new.hash)
                .await
                .with_context(|| format!("agent {name}"))?;
            anyhow::Ok(new.token)
        })
        .buffered(IN_FLIGHT);
    while let Some(secret) = made.next().await {
        let secret = secret?;
        out.write_all(secret.expose().as_bytes()).await?;
        out.write_all(b"\n").await?;
    }
    out.flush().await?;
    Ok(())
}
