//! A short soak as a correctness test (not a timing test): 15 s of random faults on SQLite, then the database must
//! hold exactly the terminal's records. Runs the real `essl-bench soak` binary and reads its summary.

use std::process::Command;

/// The value of `key=` in the summary line that starts with `line`.
fn field(out: &str, line: &str, key: &str) -> Option<u64> {
    let l = out.lines().find(|l| l.starts_with(line))?;
    l.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

#[test]
fn a_fifteen_second_soak_loses_and_doubles_nothing() {
    let out = Command::new(env!("CARGO_BIN_EXE_essl-bench"))
        // One agent: a second would send everything the first does, and could hide a loss on the first one's path.
        .args(["soak", "--seconds", "15", "--backend", "sqlite", "--seed", "11", "--agents", "1"])
        .output()
        .expect("essl-bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "the soak failed: {}\n{stdout}\n{stderr}", out.status);
    assert_eq!(field(&stdout, "punches", "lost"), Some(0), "{stdout}");
    assert_eq!(field(&stdout, "punches", "doubled"), Some(0), "{stdout}");
    assert_eq!(field(&stdout, "punches", "not_on_terminal"), Some(0), "{stdout}");
    let made = field(&stdout, "punches", "made").expect("punches made");
    assert!(made > 0, "punches kept happening: {stdout}");
    let faults = field(&stdout, "faults", "total").expect("faults");
    assert!(faults >= 2, "faults were injected: {stdout}");
    assert!(field(&stdout, "agents", "bytes").is_some_and(|b| b > 0), "{stdout}");
}
