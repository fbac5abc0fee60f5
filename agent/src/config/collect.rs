//! Settings of the agent's own collection of records: the outbox file and its bound, and how often each terminal
//! is synced without being asked (`outbox`, `outbox_max_mb`, `sync_interval_secs` in `agent.toml`, `--outbox`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{FileConfig, Origin, Problem};

/// The outbox file name when none is configured: beside the config file, or in the working directory.
pub const DEFAULT_OUTBOX: &str = "essl-agent-outbox.db";
/// Default bound of the outbox, in MiB.
pub const DEFAULT_OUTBOX_MAX_MB: u64 = 256;
/// Default period of the scheduled sync.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(300);
const SYNC_INTERVAL_SECS: std::ops::RangeInclusive<u64> = 10..=86_400;
const OUTBOX_MAX_MB: std::ops::RangeInclusive<u64> = 1..=1_048_576;

/// How the agent collects records on its own. The defaults are the production values; tests shorten the timings.
#[derive(Debug, Clone)]
pub struct Collect {
    /// The outbox file (SQLite).
    pub outbox: PathBuf,
    /// Above this many bytes of queued data, new reads are refused (queued records are never dropped).
    pub outbox_max_bytes: u64,
    /// Every terminal is synced this often without anyone asking.
    pub sync_interval: Duration,
    /// While a terminal's realtime events are not flowing, it is synced (polled) this often instead.
    pub poll_interval: Duration,
    /// A realtime session silent this long is asked the time, so a dead one is noticed.
    pub keepalive: Duration,
    /// Delays before subscribing again after the event stream broke (exponential with jitter, min to max).
    pub resubscribe_min: Duration,
    pub resubscribe_max: Duration,
}

impl Collect {
    /// Production values with the outbox at `outbox`.
    pub fn new(outbox: PathBuf) -> Collect {
        Collect {
            outbox,
            outbox_max_bytes: DEFAULT_OUTBOX_MAX_MB << 20,
            sync_interval: DEFAULT_SYNC_INTERVAL,
            poll_interval: Duration::from_secs(60),
            keepalive: Duration::from_secs(30),
            resubscribe_min: Duration::from_secs(1),
            resubscribe_max: Duration::from_secs(60),
        }
    }
}

impl Default for Collect {
    fn default() -> Collect {
        Collect::new(PathBuf::from(DEFAULT_OUTBOX))
    }
}

/// The flag over the file over the default; a relative path in the file is relative to the file.
pub(super) fn merge(
    flag: Option<&Path>,
    file: &FileConfig,
    config_file: Option<&Path>,
    problems: &mut Vec<Problem>,
) -> Collect {
    let in_file =
        |key: &str| Origin::File { path: config_file.map(Path::to_path_buf).unwrap_or_default(), key: key.into() };
    let outbox = match (flag, &file.outbox) {
        (Some(p), _) => p.to_path_buf(),
        (None, Some(p)) => super::relative_to(config_file, p),
        (None, None) => super::relative_to(config_file, Path::new(DEFAULT_OUTBOX)),
    };
    let mut collect = Collect::new(outbox);
    if collect.outbox.as_os_str().is_empty() || collect.outbox.is_dir() {
        let origin = if flag.is_some() { Origin::Flag("outbox") } else { in_file("outbox") };
        problems.push(Problem { origin, message: "must name a file (the outbox database)".into() });
    }
    if let Some(mb) = file.outbox_max_mb {
        if OUTBOX_MAX_MB.contains(&mb) {
            collect.outbox_max_bytes = mb << 20;
        } else {
            let message = format!("{mb} is out of range {}..={} (MiB)", OUTBOX_MAX_MB.start(), OUTBOX_MAX_MB.end());
            problems.push(Problem { origin: in_file("outbox_max_mb"), message });
        }
    }
    if let Some(secs) = file.sync_interval_secs {
        if SYNC_INTERVAL_SECS.contains(&secs) {
            collect.sync_interval = Duration::from_secs(secs);
        } else {
            let (lo, hi) = (SYNC_INTERVAL_SECS.start(), SYNC_INTERVAL_SECS.end());
            problems.push(Problem {
                origin: in_file("sync_interval_secs"),
                message: format!("{secs} is out of range {lo}..={hi}"),
            });
        }
    }
    collect
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> FileConfig {
        toml::from_str(text).expect("parses")
    }

    #[test]
    fn defaults_beside_the_config_file() {
        let mut problems = Vec::new();
        let c = merge(None, &file(""), Some(Path::new("/etc/essl/agent.toml")), &mut problems);
        assert_eq!(c.outbox, Path::new("/etc/essl").join(DEFAULT_OUTBOX));
        assert_eq!((c.outbox_max_bytes, c.sync_interval), (256 << 20, Duration::from_secs(300)));
        let c = merge(None, &file(""), None, &mut problems);
        assert_eq!(c.outbox, Path::new(DEFAULT_OUTBOX));
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn flag_over_file_and_bounds_checked() {
        let f = file("outbox = \"q/outbox.db\"\noutbox_max_mb = 16\nsync_interval_secs = 60\n");
        let mut problems = Vec::new();
        let c = merge(None, &f, Some(Path::new("/etc/essl/agent.toml")), &mut problems);
        assert_eq!(c.outbox, Path::new("/etc/essl/q/outbox.db"));
        assert_eq!((c.outbox_max_bytes, c.sync_interval), (16 << 20, Duration::from_secs(60)));
        let c = merge(Some(Path::new("/var/lib/x.db")), &f, None, &mut problems);
        assert_eq!(c.outbox, Path::new("/var/lib/x.db"));
        assert!(problems.is_empty(), "{problems:?}");

        let bad = file("outbox_max_mb = 0\nsync_interval_secs = 1\n");
        merge(None, &bad, Some(Path::new("agent.toml")), &mut problems);
        let keys: Vec<String> = problems.iter().map(|p| p.origin.to_string()).collect();
        assert_eq!(keys, ["`outbox_max_mb` in agent.toml", "`sync_interval_secs` in agent.toml"]);
    }
}
