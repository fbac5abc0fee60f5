//! `essl-agent service install|uninstall|status|start|stop`: the agent as a system service. On Linux a systemd unit
//! (`systemd.rs`; the unit is `deploy/systemd/essl-agent.service`, embedded); on Windows the Service Control
//! Manager (`windows.rs`), which starts the hidden `essl-agent service run`. Every command takes `--dry-run`, which
//! prints what would be done and changes nothing.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use essl_agent::config::{ServerUrl, TOKEN_ENV};

#[cfg(not(windows))]
mod systemd;
#[cfg(windows)]
mod windows;

/// The service's name (systemd unit, Windows service) and, on Linux, its system user.
pub const SERVICE_NAME: &str = "essl-agent";

#[derive(Debug, Args)]
pub struct ServiceArgs {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, Subcommand)]
enum What {
    /// Install the service and start it. Linux: a system user `essl-agent`, /etc/essl-agent/agent.toml, a systemd
    /// unit (restart always, logs in the journal). Windows: a service under the Service Control Manager running as
    /// `NT SERVICE\essl-agent`, %ProgramData%\essl-agent\agent.toml, logs in %ProgramData%\essl-agent\logs.
    Install(InstallArgs),
    /// Stop and remove the service. The configuration, the outbox and the logs are kept.
    Uninstall(DryRun),
    /// Show whether the service is installed and running.
    Status(DryRun),
    /// Start the installed service.
    Start(DryRun),
    /// Stop the installed service.
    Stop(DryRun),
    /// What the Windows Service Control Manager starts; not for people.
    #[command(hide = true)]
    Run,
}

#[derive(Debug, Args)]
pub struct DryRun {
    /// Print what would be done; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Write the config file with this server (wss://HOST/agent/ws) and the token. Without it an existing config
    /// file is kept, or a template is written to be filled in.
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// The agent token (essla_...), with --server. Prefer the ESSL_AGENT_TOKEN environment variable: other local
    /// users can read command lines.
    #[arg(long)]
    token: Option<String>,
    /// Replace an existing config file when --server is given.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    dry: DryRun,
}

/// What `install` was asked to write into the config file.
#[derive(Debug)]
pub struct NewConfig {
    pub server: String,
    pub token: String,
    pub force: bool,
}

impl NewConfig {
    /// The file's text; with `mask`, the token is shown as `***` (for printing).
    pub fn text(&self, mask: bool) -> String {
        let token = if mask { "***".to_owned() } else { toml_string(&self.token) };
        let token = if mask { format!("\"{token}\"") } else { token };
        format!(
            "# essl-agent configuration, written by `essl-agent service install`. It holds the agent token: keep it\n\
             # readable by administrators and the service only. Check it with `essl-agent config check`.\n\
             server = {}\n\
             token = {token}\n\
             \n\
             # Terminals for `essl-agent config check` to probe (the agent gets its terminals from the server):\n\
             # [[devices]]\n\
             # name = \"Front door\"\n\
             # addr = \"192.0.2.10\"        # port 4370 unless given; udp = true, comm_key = 1234 if needed\n",
            toml_string(&self.server)
        )
    }
}

/// The config file written when there is none and no --server was given: the loader refuses it until the server
/// and the token are filled in, so the service is not started with it.
pub const TEMPLATE: &str = "# essl-agent configuration. Fill in the server and the token (uncomment both lines), check it\n\
# with `essl-agent config check`, then start the service with `essl-agent service start`.\n\
# server = \"wss://relay.example.com/agent/ws\"\n\
# token = \"essla_...\"              # the token the server gave for this agent; keep this file private\n\
\n\
# Terminals for `essl-agent config check` to probe (the agent gets its terminals from the server):\n\
# [[devices]]\n\
# name = \"Front door\"\n\
# addr = \"192.0.2.10\"\n";

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Where the service's configuration lives, and what `config check` reads by default.
pub fn default_config_path() -> PathBuf {
    #[cfg(windows)]
    {
        windows::config_path()
    }
    #[cfg(not(windows))]
    {
        PathBuf::from("/etc/essl-agent/agent.toml")
    }
}

pub fn main(args: ServiceArgs) -> ExitCode {
    match args.what {
        What::Install(install) => {
            let dry_run = install.dry.dry_run;
            let new_config = match new_config(install) {
                Ok(c) => c,
                Err(message) => {
                    eprintln!("essl-agent: {message}");
                    return ExitCode::from(2);
                }
            };
            platform::install(new_config, dry_run)
        }
        What::Uninstall(d) => platform::uninstall(d.dry_run),
        What::Status(d) => platform::status(d.dry_run),
        What::Start(d) => platform::start(d.dry_run),
        What::Stop(d) => platform::stop(d.dry_run),
        What::Run => platform::run(),
    }
}

fn new_config(args: InstallArgs) -> Result<Option<NewConfig>, String> {
    let token = args.token.or_else(|| std::env::var(TOKEN_ENV).ok()).filter(|t| !t.is_empty());
    match (args.server, token) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err("a token needs --server wss://HOST/agent/ws too".into()),
        (Some(_), None) => Err(format!("--server needs the agent token too: --token or {TOKEN_ENV}")),
        (Some(server), Some(token)) => {
            ServerUrl::parse(&server).map_err(|e| format!("--server: {e}"))?;
            if !token.chars().all(|c| c.is_ascii_graphic()) {
                // Never echo it.
                return Err("the token may only hold printable ASCII characters without spaces".into());
            }
            Ok(Some(NewConfig { server, token, force: args.force }))
        }
    }
}

#[cfg(not(windows))]
use systemd as platform;
#[cfg(windows)]
use windows as platform;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_config_loads_and_masks_the_token() {
        let c = NewConfig {
            server: "wss://relay.example.com/agent/ws".into(),
            token: "essla_a\"b\\c".into(),
            force: false,
        };
        assert!(!c.text(true).contains("essla_"));
        let dir = std::env::temp_dir().join(format!("essl-service-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("agent.toml");
        std::fs::write(&path, c.text(false)).expect("write");
        let sources =
            essl_agent::config::Sources { config_file: Some(path.clone()), ..essl_agent::config::Sources::default() };
        let loaded = essl_agent::config::load(sources).expect("the written file is valid");
        assert_eq!(loaded.config.token.expose(), "essla_a\"b\\c");
        assert_eq!(loaded.config.server.as_str(), "wss://relay.example.com/agent/ws");

        std::fs::write(&path, TEMPLATE).expect("write");
        let sources = essl_agent::config::Sources { config_file: Some(path), ..essl_agent::config::Sources::default() };
        let err = essl_agent::config::load(sources).expect_err("the template is refused until filled in");
        assert!(err.to_string().contains("--server") && err.to_string().contains(TOKEN_ENV), "{err}");
    }
}
