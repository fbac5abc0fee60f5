//! The agent as a systemd service: a system user, /etc/essl-agent/agent.toml, the unit from
//! `deploy/systemd/essl-agent.service` (embedded, written byte for byte), `systemctl`.
//!
//! Each command is a list of steps, printed as the shell commands they are; `--dry-run` stops there. Steps that
//! depend on the machine (does the user exist, is there a config file) say so and are decided when run.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use super::{NewConfig, SERVICE_NAME, TEMPLATE};

/// The unit, as shipped in `deploy/systemd/`.
pub const UNIT: &str = include_str!("../../../deploy/systemd/essl-agent.service");
pub const UNIT_PATH: &str = "/etc/systemd/system/essl-agent.service";
pub const CONFIG_DIR: &str = "/etc/essl-agent";
pub const CONFIG_PATH: &str = "/etc/essl-agent/agent.toml";
pub const STATE_DIR: &str = "/var/lib/essl-agent";
/// Where the unit runs the agent from (`ExecStart`).
pub const BINARY: &str = "/usr/local/bin/essl-agent";
pub const USER: &str = SERVICE_NAME;

/// When a step applies; decided when the step runs (a dry run prints the condition).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum When {
    Always,
    UserMissing,
    ConfigMissing,
    ConfigValid,
}

#[derive(Debug)]
enum Action {
    Run(Vec<String>),
    /// Write a file with a mode; `group`: owned by root and the service's group.
    Write {
        path: PathBuf,
        text: String,
        shown: String,
        mode: u32,
        group: bool,
    },
    Remove(PathBuf),
}

#[derive(Debug)]
struct Step {
    when: When,
    action: Action,
}

fn cmd(args: &[&str]) -> Step {
    Step { when: When::Always, action: Action::Run(args.iter().map(|s| (*s).to_owned()).collect()) }
}

fn install_steps(new_config: Option<&NewConfig>, exe: &Path) -> Vec<Step> {
    let mut steps = vec![Step {
        when: When::UserMissing,
        action: Action::Run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--home-dir",
                STATE_DIR,
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                USER,
            ]
            .map(String::from)
            .to_vec(),
        ),
    }];
    if exe != Path::new(BINARY) {
        steps.push(Step {
            when: When::Always,
            action: Action::Run(vec![
                "install".into(),
                "-m".into(),
                "0755".into(),
                exe.display().to_string(),
                BINARY.into(),
            ]),
        });
    }
    steps.push(cmd(&["install", "-d", "-m", "0750", "-o", "root", "-g", USER, CONFIG_DIR]));
    let config = match new_config {
        Some(c) => Step {
            when: When::Always,
            action: Action::Write {
                path: CONFIG_PATH.into(),
                text: c.text(false),
                shown: c.text(true),
                mode: 0o640,
                group: true,
            },
        },
        None => Step {
            when: When::ConfigMissing,
            action: Action::Write {
                path: CONFIG_PATH.into(),
                text: TEMPLATE.into(),
                shown: TEMPLATE.into(),
                mode: 0o640,
                group: true,
            },
        },
    };
    steps.push(config);
    steps.push(Step {
        when: When::Always,
        action: Action::Write {
            path: UNIT_PATH.into(),
            text: UNIT.into(),
            shown: UNIT.into(),
            mode: 0o644,
            group: false,
        },
    });
    steps.push(cmd(&["systemctl", "daemon-reload"]));
    // `enable` then `restart`: `enable --now`, and a reinstall (a new binary) takes effect too.
    steps.push(cmd(&["systemctl", "enable", SERVICE_NAME]));
    steps.push(Step {
        when: When::ConfigValid,
        action: Action::Run(["systemctl", "restart", SERVICE_NAME].map(String::from).to_vec()),
    });
    steps
}

fn uninstall_steps() -> Vec<Step> {
    vec![
        cmd(&["systemctl", "disable", "--now", SERVICE_NAME]),
        Step { when: When::Always, action: Action::Remove(UNIT_PATH.into()) },
        cmd(&["systemctl", "daemon-reload"]),
    ]
}

/// How a step reads in a dry run.
fn describe(step: &Step) -> String {
    let condition = match step.when {
        When::Always => "",
        When::UserMissing => "    # unless the user essl-agent exists",
        When::ConfigMissing => "    # only if there is no config file yet",
        When::ConfigValid => "    # once the config file is valid (`essl-agent config check`)",
    };
    match &step.action {
        Action::Run(args) => format!("{}{condition}", args.join(" ")),
        Action::Write { path, shown, mode, group, .. } => {
            let owner = if *group { format!("root:{USER}") } else { "root:root".into() };
            format!("# write {} (mode {mode:04o}, owner {owner}){condition}:\n{shown}", path.display())
        }
        Action::Remove(path) => format!("rm -f {}{condition}", path.display()),
    }
}

pub fn install(new_config: Option<NewConfig>, dry_run: bool) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("essl-agent: cannot tell where this program is: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(c) = &new_config
        && !c.force
        && !dry_run
        && Path::new(CONFIG_PATH).exists()
    {
        eprintln!("essl-agent: {CONFIG_PATH} exists; edit it, or add --force to replace it");
        return ExitCode::from(2);
    }
    let steps = install_steps(new_config.as_ref(), &exe);
    if dry_run {
        println!("# essl-agent service install --dry-run: nothing is changed. As root, it would run:");
        print_steps(&steps);
        return ExitCode::SUCCESS;
    }
    if let Err(code) = need_root() {
        return code;
    }
    if let Err(e) = execute(&steps) {
        eprintln!("essl-agent: {e}");
        return ExitCode::FAILURE;
    }
    if config_problems().is_none() {
        println!("essl-agent is installed and running; logs: journalctl -u {SERVICE_NAME} -f");
    } else {
        println!(
            "essl-agent is installed but not started: fill in {CONFIG_PATH}, check it with `essl-agent config check`,\n\
             then `sudo essl-agent service start`."
        );
    }
    ExitCode::SUCCESS
}

pub fn uninstall(dry_run: bool) -> ExitCode {
    let steps = uninstall_steps();
    if dry_run {
        println!("# essl-agent service uninstall --dry-run: nothing is changed. As root, it would run:");
        print_steps(&steps);
        return ExitCode::SUCCESS;
    }
    if let Err(code) = need_root() {
        return code;
    }
    if let Err(e) = execute(&steps) {
        eprintln!("essl-agent: {e}");
        return ExitCode::FAILURE;
    }
    println!(
        "essl-agent service removed. Kept: {CONFIG_DIR} (configuration), {STATE_DIR} (outbox), the user {USER}, \
         {BINARY}.\nTo remove them too: sudo rm -r {CONFIG_DIR} {STATE_DIR} {BINARY} && sudo userdel {USER}"
    );
    ExitCode::SUCCESS
}

pub fn status(dry_run: bool) -> ExitCode {
    systemctl(&["status", SERVICE_NAME, "--no-pager"], dry_run)
}

pub fn start(dry_run: bool) -> ExitCode {
    systemctl(&["start", SERVICE_NAME], dry_run)
}

pub fn stop(dry_run: bool) -> ExitCode {
    systemctl(&["stop", SERVICE_NAME], dry_run)
}

pub fn run() -> ExitCode {
    eprintln!(
        "essl-agent: `service run` is for the Windows Service Control Manager; systemd runs `{BINARY} run --config \
         {CONFIG_PATH}` (see `essl-agent service install --dry-run`)"
    );
    ExitCode::from(2)
}

/// `systemctl ARGS`, its exit code passed on (`status`: 3 = not running, 4 = not installed).
fn systemctl(args: &[&str], dry_run: bool) -> ExitCode {
    if dry_run {
        println!("systemctl {}", args.join(" "));
        return ExitCode::SUCCESS;
    }
    match Command::new("systemctl").args(args).status() {
        Ok(status) => ExitCode::from(status.code().and_then(|c| u8::try_from(c).ok()).unwrap_or(1)),
        Err(e) => {
            eprintln!("essl-agent: cannot run systemctl: {e} (is this a systemd system?)");
            ExitCode::FAILURE
        }
    }
}

fn print_steps(steps: &[Step]) {
    for step in steps {
        println!("{}", describe(step));
    }
}

fn execute(steps: &[Step]) -> Result<(), String> {
    for step in steps {
        let applies = match step.when {
            When::Always => true,
            When::UserMissing => !user_exists(),
            When::ConfigMissing => !Path::new(CONFIG_PATH).exists(),
            When::ConfigValid => match config_problems() {
                None => true,
                Some(problems) => {
                    println!("not starting: {CONFIG_PATH} is not ready:\n{problems}");
                    false
                }
            },
        };
        if !applies {
            continue;
        }
        match &step.action {
            Action::Run(args) => {
                println!("+ {}", args.join(" "));
                let status = Command::new(&args[0])
                    .args(&args[1..])
                    .status()
                    .map_err(|e| format!("cannot run {}: {e}", args[0]))?;
                if !status.success() {
                    return Err(format!("`{}` failed ({status})", args.join(" ")));
                }
            }
            Action::Write { path, text, mode, group, .. } => {
                println!("+ write {} (mode {mode:04o})", path.display());
                write_file(path, text, *mode).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                if *group {
                    let owner = format!("root:{USER}");
                    let status = Command::new("chown")
                        .args([owner.as_str()])
                        .arg(path)
                        .status()
                        .map_err(|e| format!("cannot run chown: {e}"))?;
                    if !status.success() {
                        return Err(format!("`chown {owner} {}` failed ({status})", path.display()));
                    }
                }
            }
            Action::Remove(path) => {
                println!("+ rm -f {}", path.display());
                match std::fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(format!("cannot remove {}: {e}", path.display())),
                }
            }
        }
    }
    Ok(())
}

/// Writes `text` with `mode` from the first byte on (the config file holds the token: never world-readable, not
/// even for a moment).
fn write_file(path: &Path, text: &str, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

fn user_exists() -> bool {
    Command::new("id")
        .args(["-u", USER])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `None` when the installed config file would let the service start; the problems otherwise.
fn config_problems() -> Option<String> {
    let sources =
        essl_agent::config::Sources { config_file: Some(CONFIG_PATH.into()), ..essl_agent::config::Sources::default() };
    essl_agent::config::load(sources).err().map(|e| e.to_string())
}

/// The effective user id from /proc (no libc: the workspace forbids unsafe code).
fn need_root() -> Result<(), ExitCode> {
    let euid = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1)?.parse::<u32>().ok())
    });
    match euid {
        Some(0) | None => Ok(()),
        Some(_) => {
            eprintln!("essl-agent: this needs root; run it with sudo (or add --dry-run to see what it would do)");
            Err(ExitCode::FAILURE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_is_the_shipped_file() {
        let shipped =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/systemd/essl-agent.service"))
                .expect("deploy/systemd/essl-agent.service");
        assert_eq!(UNIT, shipped);
        let steps = install_steps(None, Path::new("/tmp/essl-agent"));
        let unit = steps
            .iter()
            .find_map(|s| match &s.action {
                Action::Write { path, text, .. } if path == Path::new(UNIT_PATH) => Some(text.clone()),
                _ => None,
            })
            .expect("install writes the unit");
        assert_eq!(unit.as_bytes(), shipped.as_bytes());
    }

    #[test]
    fn the_unit_says_what_the_service_needs() {
        let lines: Vec<&str> = UNIT.lines().map(str::trim).collect();
        for directive in [
            "Restart=always",
            "User=essl-agent",
            "Group=essl-agent",
            "NoNewPrivileges=true",
            "ProtectSystem=strict",
            "PrivateTmp=true",
            "StateDirectory=essl-agent",
            "StandardError=journal",
            "WantedBy=multi-user.target",
        ] {
            assert!(lines.contains(&directive), "missing {directive}");
        }
        let exec = lines.iter().find_map(|l| l.strip_prefix("ExecStart=")).expect("ExecStart");
        assert!(exec.starts_with(&format!("{BINARY} run --config {CONFIG_PATH}")), "{exec}");
        // The outbox lives in the one writable directory ProtectSystem=strict leaves.
        assert!(exec.contains(&format!("--outbox {STATE_DIR}/")), "{exec}");
    }

    #[test]
    fn the_token_is_never_printed() {
        let c = NewConfig { server: "wss://r.example/agent/ws".into(), token: "essla_secret".into(), force: false };
        let text: Vec<String> = install_steps(Some(&c), Path::new("/tmp/x")).iter().map(describe).collect();
        let text = text.join("\n");
        assert!(!text.contains("essla_secret") && text.contains("token = \"***\""), "{text}");
    }
}
