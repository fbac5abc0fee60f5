//! The commands the server may send to a push terminal: an allow-list, each rendered from checked values.
//!
//! Nothing destructive or dangerous can be expressed (no `SHELL`, `GetFile`/`PutFile`, `UPGRADE`, `CLEAR ...`,
//! `AC_UNLOCK`, `REBOOT`): only what is below. Every value put into a command is refused when it holds a TAB, CR,
//! LF or any other control character, which would add fields or whole commands to the wire format (§4.5 item 7 of
//! the protocol notes).

use jiff::civil::DateTime;

/// A command, before it is queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `SET OPTION DateTime=<n>`, the time in ZKTeco's encoding (firmware dependent; the handshake's `Date` +
    /// `TimeZone` is the primary clock source).
    SetClock { local: DateTime },
    /// `DATA QUERY ATTLOG StartTime=...⇥EndTime=...`: the terminal uploads that window again as `ATTLOG` posts.
    Reupload { start: DateTime, end: DateTime },
    /// `INFO`: the terminal reports its inventory.
    Info,
    /// `CHECK`: re-read options, upload per stamps.
    Check,
    /// `DATA UPDATE USERINFO PIN=...⇥Name=...⇥Pri=...⇥Passwd=...⇥Card=...⇥Grp=...`
    UpsertUser(UserSpec),
    /// `DATA DELETE USERINFO PIN=...`
    DeleteUser { pin: String },
}

/// A user to add or change on a terminal.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserSpec {
    pub pin: String,
    pub name: String,
    /// 0 user, 2 enroller, 6 admin, 14 super-admin.
    pub privilege: u8,
    pub password: String,
    pub card: u64,
    pub group: String,
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("{field} must not contain control characters (TAB, CR, LF, ...)")]
    Control { field: &'static str },
    #[error("{field}: {why}")]
    Invalid { field: &'static str, why: &'static str },
}

fn clean(field: &'static str, v: &str, max: usize) -> Result<(), CommandError> {
    if v.chars().any(char::is_control) {
        return Err(CommandError::Control { field });
    }
    if v.chars().count() > max {
        return Err(CommandError::Invalid { field, why: "too long" });
    }
    Ok(())
}

/// A PIN: 1 to 24 letters or digits.
pub fn check_pin(pin: &str) -> Result<(), CommandError> {
    clean("pin", pin, 24)?;
    if pin.is_empty() || !pin.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(CommandError::Invalid { field: "pin", why: "1 to 24 letters or digits" });
    }
    Ok(())
}

fn time(t: DateTime) -> String {
    t.strftime("%Y-%m-%d %H:%M:%S").to_string()
}

/// ZKTeco's legacy time encoding: ((Y-2000)*372 + (M-1)*31 + (D-1))*86400 + h*3600 + m*60 + s.
pub fn zk_time(t: DateTime) -> i64 {
    let days = (i64::from(t.year()) - 2000) * 372 + (i64::from(t.month()) - 1) * 31 + (i64::from(t.day()) - 1);
    days * 86_400 + i64::from(t.hour()) * 3600 + i64::from(t.minute()) * 60 + i64::from(t.second())
}

impl Command {
    /// Short name stored with the command.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::SetClock { .. } => "set_clock",
            Command::Reupload { .. } => "reupload",
            Command::Info => "info",
            Command::Check => "check",
            Command::UpsertUser(_) => "upsert_user",
            Command::DeleteUser { .. } => "delete_user",
        }
    }

    /// The wire text (what follows `C:<id>:`), every value checked.
    pub fn render(&self) -> Result<String, CommandError> {
        Ok(match self {
            Command::SetClock { local } => {
                if !(2000..=2099).contains(&local.year()) {
                    return Err(CommandError::Invalid { field: "time", why: "terminals keep years 2000 to 2099" });
                }
                format!("SET OPTION DateTime={}", zk_time(*local))
            }
            Command::Reupload { start, end } => {
                if start > end {
                    return Err(CommandError::Invalid { field: "window", why: "start is after end" });
                }
                format!("DATA QUERY ATTLOG StartTime={}\tEndTime={}", time(*start), time(*end))
            }
            Command::Info => "INFO".to_owned(),
            Command::Check => "CHECK".to_owned(),
            Command::UpsertUser(u) => {
                check_pin(&u.pin)?;
                clean("name", &u.name, 24)?;
                clean("password", &u.password, 8)?;
                if !u.password.chars().all(|c| c.is_ascii_digit()) {
                    return Err(CommandError::Invalid { field: "password", why: "digits only" });
                }
                clean("group", &u.group, 3)?;
                if !u.group.chars().all(|c| c.is_ascii_digit()) {
                    return Err(CommandError::Invalid { field: "group", why: "digits only" });
                }
                if !matches!(u.privilege, 0 | 2 | 6 | 14) {
                    return Err(CommandError::Invalid { field: "privilege", why: "0, 2, 6 or 14" });
                }
                if u.card > u64::from(u32::MAX) {
                    return Err(CommandError::Invalid { field: "card", why: "at most 4294967295" });
                }
                let card = if u.card == 0 { String::new() } else { u.card.to_string() };
                let group = if u.group.is_empty() { "1" } else { u.group.as_str() };
                format!(
                    "DATA UPDATE USERINFO PIN={}\tName={}\tPri={}\tPasswd={}\tCard={}\tGrp={}",
                    u.pin, u.name, u.privilege, u.password, card, group
                )
            }
            Command::DeleteUser { pin } => {
                check_pin(pin)?;
                format!("DATA DELETE USERINFO PIN={pin}")
            }
        })
    }
}

/// The verb of a command line, for the allow-list check of what is already queued (defence in depth: nothing else
/// is ever sent, even if a row was written by other means).
pub fn allowed(line: &str) -> bool {
    if line.chars().any(|c| c.is_control() && c != '\t') {
        return false;
    }
    matches!(line, "INFO" | "CHECK")
        || ["SET OPTION DateTime=", "DATA QUERY ATTLOG ", "DATA UPDATE USERINFO ", "DATA DELETE USERINFO "]
            .iter()
            .any(|p| line.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    #[test]
    fn renders_and_refuses_injection() {
        let u = UserSpec {
            pin: "1003".into(),
            name: "Bo".into(),
            card: 12_345_678,
            group: "1".into(),
            ..Default::default()
        };
        assert_eq!(
            Command::UpsertUser(u.clone()).render().expect("valid"),
            "DATA UPDATE USERINFO PIN=1003\tName=Bo\tPri=0\tPasswd=\tCard=12345678\tGrp=1"
        );
        for bad in ["Bo\tPri=14", "Bo\nC:9:CLEAR DATA", "Bo\r", "Bo\u{0}", "Bo\u{85}"] {
            let r = Command::UpsertUser(UserSpec { name: bad.into(), ..u.clone() }).render();
            assert_eq!(r, Err(CommandError::Control { field: "name" }), "{bad:?}");
        }
        assert!(Command::DeleteUser { pin: "12\n".into() }.render().is_err());
        assert!(Command::DeleteUser { pin: "1 2".into() }.render().is_err());
        let w = Command::Reupload { start: date(2026, 3, 1).at(0, 0, 0, 0), end: date(2026, 3, 1).at(23, 59, 59, 0) };
        assert_eq!(
            w.render().expect("window"),
            "DATA QUERY ATTLOG StartTime=2026-03-01 00:00:00\tEndTime=2026-03-01 23:59:59"
        );
        assert!(allowed(&w.render().expect("window")));
        assert!(!allowed("SHELL rm -rf /"));
        assert!(!allowed("CLEAR DATA"));
        assert!(!allowed("INFO\nC:1:REBOOT"));
    }

    #[test]
    fn zk_time_encoding() {
        // 2000-01-01 00:00:00 is 0; one month is 31 days.
        assert_eq!(zk_time(date(2000, 1, 1).at(0, 0, 0, 0)), 0);
        assert_eq!(zk_time(date(2000, 2, 1).at(0, 0, 1, 0)), 31 * 86_400 + 1);
        assert_eq!(zk_time(date(2001, 1, 1).at(0, 0, 0, 0)), 372 * 86_400);
    }
}
