//! The agent as a Windows service: registered with the Service Control Manager (automatic start, restarted 5 s
//! after any failure, running as the virtual account `NT SERVICE\essl-agent`), configuration in
//! `%ProgramData%\essl-agent\agent.toml` (readable by SYSTEM, Administrators and the service only), logs in daily
//! files under `%ProgramData%\essl-agent\logs` (14 kept). The SCM starts `essl-agent service run`.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use essl_agent::config::{self, Secret, Sources, TOKEN_ENV};
use tokio_util::sync::CancellationToken;
use windows_service::service::{
    Service, ServiceAccess, ServiceAction, ServiceActionType, ServiceControl, ServiceControlAccept,
    ServiceErrorControl, ServiceExitCode, ServiceFailureActions, ServiceFailureResetPeriod, ServiceInfo,
    ServiceStartType, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
use windows_service::{define_windows_service, service_dispatcher};

use super::{NewConfig, SERVICE_NAME, TEMPLATE};

const DISPLAY_NAME: &str = "essl-relay agent";
const DESCRIPTION: &str = "Relays the office's eSSL / ZKTeco attendance terminals to essl-server.";
/// The service's virtual account: a dedicated identity without a password, created by Windows with the service.
const ACCOUNT: &str = r"NT SERVICE\essl-agent";

fn data_dir() -> PathBuf {
    std::env::var_os("ProgramData").map_or_else(|| PathBuf::from(r"C:\ProgramData"), PathBuf::from).join(SERVICE_NAME)
}

pub fn config_path() -> PathBuf {
    data_dir().join("agent.toml")
}

fn log_dir() -> PathBuf {
    data_dir().join("logs")
}

/// `icacls` arguments: no inherited access (Users could read the token), full control for SYSTEM and
/// Administrators, modify for the service (its outbox lives beside the config file).
fn acl_args(dir: &Path) -> Vec<OsString> {
    let mut args = vec![dir.as_os_str().to_owned()];
    for a in ["/inheritance:r", "/grant:r", "*S-1-5-18:(OI)(CI)F", "*S-1-5-32-544:(OI)(CI)F"] {
        args.push(a.into());
    }
    args.push(format!("{ACCOUNT}:(OI)(CI)M").into());
    args
}

fn fail(what: &str) -> impl Fn(windows_service::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

pub fn install(new_config: Option<NewConfig>, dry_run: bool) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("essl-agent: cannot tell where this program is: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = config_path();
    if let Some(c) = &new_config
        && !c.force
        && !dry_run
        && config.exists()
    {
        eprintln!("essl-agent: {} exists; edit it, or add --force to replace it", config.display());
        return ExitCode::from(2);
    }
    if dry_run {
        println!("# essl-agent service install --dry-run: nothing is changed. As an administrator, it would:");
        println!("create the directories {} and {}", data_dir().display(), log_dir().display());
        println!(
            "create the service {SERVICE_NAME} ({DISPLAY_NAME:?}): \"{}\" service run; automatic start; account \
             {ACCOUNT}; restart 5 s after any failure",
            exe.display()
        );
        let acl: Vec<String> = acl_args(&data_dir()).iter().map(|a| a.to_string_lossy().into_owned()).collect();
        println!("icacls {}", acl.join(" "));
        match &new_config {
            Some(c) => println!("# write {}:\n{}", config.display(), c.text(true)),
            None => println!("# write {} (only if there is no config file yet):\n{TEMPLATE}", config.display()),
        }
        println!("start the service    # once the config file is valid (`essl-agent config check`)");
        return ExitCode::SUCCESS;
    }
    match do_install(&exe, new_config.as_ref()) {
        Ok(true) => {
            println!("essl-agent is installed and running; logs: {}", log_dir().display());
            ExitCode::SUCCESS
        }
        Ok(false) => {
            println!(
                "essl-agent is installed but not started: fill in {}, check it with `essl-agent config check`, then \
                 `essl-agent service start`.",
                config.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("essl-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Returns whether the service was started.
fn do_install(exe: &Path, new_config: Option<&NewConfig>) -> Result<bool, String> {
    std::fs::create_dir_all(log_dir()).map_err(|e| format!("cannot create {}: {e}", log_dir().display()))?;
    let manager = ServiceManager::local_computer(
        None::<&str>,
        ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE,
    )
    .map_err(fail("cannot open the Service Control Manager (run as administrator)"))?;
    let info = ServiceInfo {
        name: SERVICE_NAME.into(),
        display_name: DISPLAY_NAME.into(),
        service_type: ServiceType::OWN_PROCESS,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path: exe.to_path_buf(),
        launch_arguments: vec!["service".into(), "run".into()],
        dependencies: Vec::new(),
        account_name: Some(ACCOUNT.into()),
        account_password: None,
    };
    let access =
        ServiceAccess::CHANGE_CONFIG | ServiceAccess::START | ServiceAccess::STOP | ServiceAccess::QUERY_STATUS;
    let service = match manager.open_service(SERVICE_NAME, access) {
        Ok(service) => {
            println!("+ update the service {SERVICE_NAME}");
            service.change_config(&info).map_err(fail("cannot update the service"))?;
            service
        }
        Err(_) => {
            println!("+ create the service {SERVICE_NAME}");
            manager.create_service(&info, access).map_err(fail("cannot create the service"))?
        }
    };
    service.set_description(DESCRIPTION).map_err(fail("cannot describe the service"))?;
    let restart = ServiceAction { action_type: ServiceActionType::Restart, delay: Duration::from_secs(5) };
    service
        .update_failure_actions(ServiceFailureActions {
            reset_period: ServiceFailureResetPeriod::After(Duration::from_secs(86_400)),
            reboot_msg: None,
            command: None,
            actions: Some(vec![restart.clone(), restart.clone(), restart]),
        })
        .map_err(fail("cannot set the restart policy"))?;
    service.set_failure_actions_on_non_crash_failures(true).map_err(fail("cannot set the restart policy"))?;

    let acl = acl_args(&data_dir());
    println!("+ icacls {}", acl.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" "));
    let status = Command::new("icacls").args(&acl).status().map_err(|e| format!("cannot run icacls: {e}"))?;
    if !status.success() {
        return Err(format!("icacls failed ({status})"));
    }
    let config = config_path();
    let text = match new_config {
        Some(c) => Some(c.text(false)),
        None if !config.exists() => Some(TEMPLATE.to_owned()),
        None => None,
    };
    if let Some(text) = text {
        println!("+ write {}", config.display());
        std::fs::write(&config, text).map_err(|e| format!("cannot write {}: {e}", config.display()))?;
    }
    let sources = Sources { config_file: Some(config.clone()), ..Sources::default() };
    if let Err(problems) = config::load(sources) {
        println!("not starting: {} is not ready:\n{problems}", config.display());
        return Ok(false);
    }
    // A reinstall (a new binary) takes effect: stop the old one first.
    stop_and_wait(&service)?;
    println!("+ start the service {SERVICE_NAME}");
    service.start(&[] as &[&OsStr]).map_err(fail("cannot start the service"))?;
    Ok(true)
}

fn stop_and_wait(service: &Service) -> Result<(), String> {
    let state = service.query_status().map_err(fail("cannot query the service"))?.current_state;
    if state == ServiceState::Stopped {
        return Ok(());
    }
    println!("+ stop the service {SERVICE_NAME}");
    if state != ServiceState::StopPending {
        service.stop().map_err(fail("cannot stop the service"))?;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if service.query_status().map_err(fail("cannot query the service"))?.current_state == ServiceState::Stopped {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Err("the service did not stop within 30 s".into())
}

fn open(access: ServiceAccess) -> Result<Service, String> {
    let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
        .map_err(fail("cannot open the Service Control Manager"))?;
    manager
        .open_service(SERVICE_NAME, access)
        .map_err(|e| format!("the service {SERVICE_NAME} is not installed, or needs an administrator ({e})"))
}

fn finish(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("essl-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

pub fn uninstall(dry_run: bool) -> ExitCode {
    if dry_run {
        println!("# essl-agent service uninstall --dry-run: nothing is changed. As an administrator, it would:");
        println!("stop the service {SERVICE_NAME} and delete it");
        return ExitCode::SUCCESS;
    }
    finish((|| {
        let service = open(ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE)?;
        stop_and_wait(&service)?;
        println!("+ delete the service {SERVICE_NAME}");
        service.delete().map_err(fail("cannot delete the service"))?;
        println!("essl-agent service removed. Kept: {} (configuration, outbox, logs).", data_dir().display());
        Ok(())
    })())
}

pub fn status(dry_run: bool) -> ExitCode {
    if dry_run {
        println!("query the service {SERVICE_NAME}");
        return ExitCode::SUCCESS;
    }
    match open(ServiceAccess::QUERY_STATUS).and_then(|s| s.query_status().map_err(fail("cannot query the service"))) {
        Ok(status) => {
            println!(
                "{SERVICE_NAME}: {:?}; configuration {}; logs {}",
                status.current_state,
                config_path().display(),
                log_dir().display()
            );
            // As systemctl: 0 running, 3 not running.
            if status.current_state == ServiceState::Running { ExitCode::SUCCESS } else { ExitCode::from(3) }
        }
        Err(e) => {
            eprintln!("essl-agent: {e}");
            ExitCode::from(4)
        }
    }
}

pub fn start(dry_run: bool) -> ExitCode {
    if dry_run {
        println!("start the service {SERVICE_NAME}");
        return ExitCode::SUCCESS;
    }
    finish(open(ServiceAccess::START).and_then(|s| s.start(&[] as &[&OsStr]).map_err(fail("cannot start the service"))))
}

pub fn stop(dry_run: bool) -> ExitCode {
    if dry_run {
        println!("stop the service {SERVICE_NAME}");
        return ExitCode::SUCCESS;
    }
    finish(open(ServiceAccess::STOP | ServiceAccess::QUERY_STATUS).and_then(|s| stop_and_wait(&s)))
}

define_windows_service!(ffi_service_main, service_main);

/// `essl-agent service run`: hands the thread to the SCM, which calls `service_main`.
pub fn run() -> ExitCode {
    match service_dispatcher::start(SERVICE_NAME, ffi_service_main) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "essl-agent: `service run` is for the Service Control Manager ({e}); in a console use `essl-agent run`"
            );
            ExitCode::from(2)
        }
    }
}

fn service_main(_arguments: Vec<OsString>) {
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let Ok(handle) = service_control_handler::register(SERVICE_NAME, move |control| match control {
        ServiceControl::Stop | ServiceControl::Shutdown | ServiceControl::Preshutdown => {
            stop.cancel();
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    }) else {
        return;
    };
    let status = |state: ServiceState, exit_code: u32| ServiceStatus {
        service_type: ServiceType::OWN_PROCESS,
        current_state: state,
        controls_accepted: if state == ServiceState::Running {
            ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN
        } else {
            ServiceControlAccept::empty()
        },
        exit_code: if exit_code == 0 { ServiceExitCode::NO_ERROR } else { ServiceExitCode::ServiceSpecific(exit_code) },
        checkpoint: 0,
        wait_hint: Duration::from_secs(30),
        process_id: None,
    };
    let _ = handle.set_service_status(status(ServiceState::Running, 0));
    let code = serve(shutdown);
    // A non-zero exit is a failure: the SCM restarts the service (failure actions apply to it too).
    let _ = handle.set_service_status(status(ServiceState::Stopped, code));
}

/// The relay until the SCM says stop. Returns the service-specific exit code (0 ok, 2 bad configuration, 1 other).
fn serve(shutdown: CancellationToken) -> u32 {
    let sources = Sources {
        config_file: Some(config_path()),
        token_env: std::env::var_os(TOKEN_ENV).map(|v| Secret::new(v.to_string_lossy())),
        ..Sources::default()
    };
    let loaded = config::load(sources);
    let level = loaded.as_ref().ok().and_then(|l| l.log_level.clone()).unwrap_or_else(|| "info".into());
    let _flush = init_file_logging(&level);
    let loaded = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            tracing::error!("invalid configuration; fix it and the service restarts by itself:\n{e}");
            return 2;
        }
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(error) => {
            tracing::error!(%error, "cannot start the runtime");
            return 1;
        }
    };
    tracing::info!(server = %loaded.config.server, version = env!("CARGO_PKG_VERSION"), "essl-agent service starting");
    match runtime.block_on(essl_agent::relay::run(loaded.config, shutdown)) {
        Ok(()) => {
            tracing::info!("essl-agent service stopped");
            0
        }
        Err(error) => {
            tracing::error!(%error, "essl-agent cannot run");
            1
        }
    }
}

/// Daily log files `essl-agent.YYYY-MM-DD.log` under %ProgramData%\essl-agent\logs, 14 kept. The guard flushes them.
fn init_file_logging(level: &str) -> Option<tracing_appender::non_blocking::WorkerGuard> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let appender = tracing_appender::rolling::Builder::new()
        .rotation(tracing_appender::rolling::Rotation::DAILY)
        .filename_prefix(SERVICE_NAME)
        .filename_suffix("log")
        .max_log_files(14)
        .build(log_dir())
        .ok()?;
    let (writer, guard) = tracing_appender::non_blocking(appender);
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).with_writer(writer).init();
    Some(guard)
}
