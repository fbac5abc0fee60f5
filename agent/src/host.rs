//! What the agent says about the computer it runs on, in `Hello`.

/// The computer's name, or `unknown`.
pub fn hostname() -> String {
    let name = read_hostname().map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    let name = name.unwrap_or_else(|| "unknown".to_string());
    name.chars().filter(|c| !c.is_control()).take(255).collect()
}

#[cfg(windows)]
fn read_hostname() -> Option<String> {
    std::env::var("COMPUTERNAME").ok()
}

#[cfg(unix)]
fn read_hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
}

#[cfg(not(any(unix, windows)))]
fn read_hostname() -> Option<String> {
    None
}

/// Operating system and architecture, e.g. `linux x86_64`, `windows x86_64`.
pub fn os() -> String {
    format!("{} {}", std::env::consts::OS, std::env::consts::ARCH)
}
