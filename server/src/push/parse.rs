//! Tolerant parsers for what push terminals send. Pure functions over bytes and text: they never panic and never
//! refuse a whole body for one bad line (property tests in `tests/push_parse.rs`).
//!
//! What the notes (`shared/protocol/adms-push.md`, §5.2) say terminals do, and what is accepted here: query keys in
//! any case (`SN`/`sn`), LF or CRLF line ends, trailing TABs, empty and extra fields, NUL padding, names that are not
//! UTF-8 (GBK on Chinese-language firmware, a Windows code page elsewhere), any or no `Content-Type`.

use jiff::civil::DateTime;

/// A query string with case-insensitive keys; values percent-decoded (`+` is a space), invalid UTF-8 replaced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    pub fn parse(raw: &str) -> Query {
        let pairs = raw
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (percent_decode(k).to_ascii_lowercase(), percent_decode(v))
            })
            .collect();
        Query { pairs }
    }

    /// The first value of `key` (compared without regard to case).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.as_str())
    }

    /// The first non-blank value of `key`, trimmed.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.get(key).map(str::trim).filter(|v| !v.is_empty())
    }
}

/// `%XX` and `+` decoding; malformed escapes are kept as they are.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Whether a serial number is one we accept: 1 to 64 printable ASCII characters (real ones are 13 to 19
/// alphanumerics).
pub fn valid_serial(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_graphic())
}

/// Body text: NULs dropped; UTF-8 if it is; otherwise GB18030 (a superset of GBK) when the terminal's language is
/// Chinese, Windows-1252 (a superset of Latin-1) when not. Never fails.
pub fn decode_text(bytes: &[u8], chinese: bool) -> String {
    let cleaned: Vec<u8>;
    let bytes = if bytes.contains(&0) {
        cleaned = bytes.iter().copied().filter(|b| *b != 0).collect();
        &cleaned[..]
    } else {
        bytes
    };
    if let Ok(s) = std::str::from_utf8(bytes) {
        return s.to_owned();
    }
    let encoding = if chinese { encoding_rs::GB18030 } else { encoding_rs::WINDOWS_1252 };
    encoding.decode_without_bom_handling(bytes).0.into_owned()
}

/// Whether a `language` code of the handshake is a Chinese one (83 Simplified, 84 Traditional).
pub fn chinese_language(language: Option<&str>) -> bool {
    matches!(language.map(str::trim), Some("83" | "84"))
}

/// The non-blank lines of a body: LF or CRLF (or a lone CR), surrounding whitespace other than TAB kept out.
pub fn lines(text: &str) -> impl Iterator<Item = &str> {
    text.split(['\n', '\r'])
        .map(|l| l.trim_matches(|c: char| c == ' ' || c == '\u{feff}'))
        .filter(|l| !l.trim().is_empty())
}

/// A terminal's wall-clock time: `YYYY-MM-DD HH:MM:SS` (or with a `T`), years 1..=9999.
pub fn local_time(s: &str) -> Option<DateTime> {
    let s = s.trim();
    let t = DateTime::strptime("%Y-%m-%d %H:%M:%S", s).or_else(|_| DateTime::strptime("%Y-%m-%dT%H:%M:%S", s)).ok()?;
    (1..=9999).contains(&t.year()).then_some(t)
}

/// One attendance record of an `ATTLOG` upload (or a 3.x `rtlog` line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttLine {
    /// The user's PIN on the terminal.
    pub pin: String,
    pub time: DateTime,
    /// Punch state (field 3): 0 check-in, 1 check-out, ... 255 none.
    pub state: i16,
    /// Verify method (field 4): 1 fingerprint, 15 face, ...
    pub verify: i16,
}

/// Why a line is not a record (it is still counted as received, and kept in the journal).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("no PIN")]
    NoPin,
    #[error("PIN longer than 64 characters")]
    PinTooLong,
    #[error("PIN holds control characters")]
    PinControl,
    #[error("unreadable time {0:?}")]
    BadTime(String),
}

fn small_int(s: Option<&str>) -> i16 {
    s.and_then(|v| v.trim().parse::<i64>().ok()).map_or(0, |v| v.clamp(i64::from(i16::MIN), i64::from(i16::MAX)) as i16)
}

fn pin(raw: &str) -> Result<String, LineError> {
    let p = raw.trim();
    if p.is_empty() {
        return Err(LineError::NoPin);
    }
    if p.chars().count() > 64 {
        return Err(LineError::PinTooLong);
    }
    if p.chars().any(char::is_control) {
        return Err(LineError::PinControl);
    }
    Ok(p.to_owned())
}

/// `PIN⇥YYYY-MM-DD HH:MM:SS⇥state⇥verify⇥workcode⇥...`: positional, TAB-separated, extra fields ignored (they stay
/// in the journal).
pub fn att_line(line: &str) -> Result<AttLine, LineError> {
    let mut fields = line.split('\t');
    let pin = pin(fields.next().unwrap_or_default())?;
    let raw_time = fields.next().unwrap_or_default();
    let time = local_time(raw_time).ok_or_else(|| LineError::BadTime(raw_time.chars().take(40).collect()))?;
    let state = small_int(fields.next());
    let verify = small_int(fields.next());
    Ok(AttLine { pin, time, state, verify })
}

/// `key=value` fields separated by TAB (or `sep`), keys lowercased, values trimmed; a field without `=` is skipped.
pub fn key_values(s: &str, sep: char) -> Vec<(String, String)> {
    s.split(sep)
        .filter_map(|f| {
            let (k, v) = f.split_once('=')?;
            let k = k.trim().trim_start_matches('~').to_ascii_lowercase();
            (!k.is_empty()).then(|| (k, v.trim().to_owned()))
        })
        .collect()
}

fn kv<'a>(fields: &'a [(String, String)], key: &str) -> Option<&'a str> {
    fields.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// A 3.x `rtlog` line: TAB-separated `time=`, `pin=`, `verifytype=`, `inoutstatus=`, `event=` ... Only lines with
/// a PIN (not `0`: no user) and a time are records.
pub fn rtlog_line(line: &str) -> Result<AttLine, LineError> {
    let fields = key_values(line, '\t');
    let pin = pin(kv(&fields, "pin").unwrap_or_default())?;
    if pin == "0" {
        return Err(LineError::NoPin);
    }
    let raw_time = kv(&fields, "time").unwrap_or_default();
    let time = local_time(raw_time).ok_or_else(|| LineError::BadTime(raw_time.chars().take(40).collect()))?;
    Ok(AttLine {
        pin,
        time,
        state: small_int(kv(&fields, "inoutstatus")),
        verify: small_int(kv(&fields, "verifytype")),
    })
}

/// A user as `OPERLOG` `USER` lines and `USERINFO` uploads carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserLine {
    pub pin: String,
    pub name: String,
    pub privilege: i16,
    pub card: i64,
    pub group: String,
}

/// What a line of an `OPERLOG` (or `USERINFO`) upload is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperLine {
    User(UserLine),
    /// `OPLOG`, `FP`, `FACE`, ...: counted and journaled, not stored.
    Other(String),
}

/// `USER PIN=⇥Name=⇥Pri=⇥Passwd=⇥Card=⇥Grp=...` (also with a TAB after `USER`, or without the word at all).
pub fn oper_line(line: &str) -> OperLine {
    let trimmed = line.trim_start();
    let (word, rest) = match trimmed.find([' ', '\t']) {
        Some(i) if !trimmed[..i].contains('=') => (&trimmed[..i], &trimmed[i + 1..]),
        _ => ("", trimmed),
    };
    let is_user =
        word.eq_ignore_ascii_case("USER") || (word.is_empty() && rest.to_ascii_uppercase().starts_with("PIN="));
    if !is_user {
        return OperLine::Other(word.to_ascii_uppercase());
    }
    let fields = key_values(rest, '\t');
    let Ok(pin) = pin(kv(&fields, "pin").unwrap_or_default()) else {
        return OperLine::Other("USER".into());
    };
    let name: String = kv(&fields, "name").unwrap_or_default().chars().filter(|c| !c.is_control()).take(100).collect();
    let group: String = kv(&fields, "grp").unwrap_or_default().chars().filter(|c| !c.is_control()).take(16).collect();
    OperLine::User(UserLine {
        pin,
        name,
        privilege: small_int(kv(&fields, "pri")),
        card: card(kv(&fields, "card").unwrap_or_default()),
        group,
    })
}

/// A card number: decimal, or four hex bytes in brackets, least significant first (`[15CD5B07]` = 123456789).
pub fn card(s: &str) -> i64 {
    let s = s.trim();
    if let Some(hexes) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        let bytes: Option<Vec<u8>> = (0..hexes.len() / 2)
            .map(|i| hexes.get(i * 2..i * 2 + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
            .collect();
        return match bytes {
            Some(b) if !b.is_empty() && b.len() <= 8 && hexes.len() % 2 == 0 => {
                b.iter().rev().fold(0i64, |acc, x| acc.wrapping_shl(8) | i64::from(*x)).max(0)
            }
            _ => 0,
        };
    }
    s.parse::<i64>().unwrap_or(0).max(0)
}

/// One command result of a `devicecmd` body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CmdResult {
    pub id: Option<i64>,
    pub ret: Option<i32>,
    /// The `CMD=` echo (not reliable across firmware; results are matched by id).
    pub cmd: String,
    /// Further `Key=Value` lines (INFO's inventory) and `&`-fields other than ID, Return, CMD.
    pub extras: Vec<(String, String)>,
}

/// `ID=<n>&Return=<r>&CMD=<c>` lines, several per body; lines that do not start with `ID=` belong to the result
/// before them (`Key=Value` each). A `Content=` line takes the rest of the body. A body with no `ID=` at all gives
/// no results.
pub fn cmd_results(text: &str) -> Vec<CmdResult> {
    let mut out: Vec<CmdResult> = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (line, next) = match rest.find('\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let line = line.trim_end_matches('\r');
        let trimmed = line.trim();
        if trimmed.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("ID=")) {
            let mut r = CmdResult::default();
            for part in trimmed.split('&') {
                let (k, v) = part.split_once('=').unwrap_or((part, ""));
                match k.trim().to_ascii_lowercase().as_str() {
                    "id" => r.id = v.trim().parse().ok(),
                    "return" => r.ret = v.trim().parse().ok(),
                    "cmd" => r.cmd = v.trim().to_owned(),
                    other => r.extras.push((other.to_owned(), v.trim().to_owned())),
                }
            }
            out.push(r);
        } else if let Some(current) = out.last_mut() {
            if trimmed.get(..8).is_some_and(|p| p.eq_ignore_ascii_case("content=")) {
                let content = &line[line.find('=').map_or(0, |i| i + 1)..];
                let mut all = content.to_owned();
                if !next.is_empty() {
                    all.push('\n');
                    all.push_str(next);
                }
                current.extras.push(("content".into(), all));
                break;
            }
            if let Some((k, v)) = trimmed.split_once('=') {
                current.extras.push((k.trim().trim_start_matches('~').to_owned(), v.trim().to_owned()));
            }
        }
        rest = next;
    }
    out
}

/// The positional `INFO=` of a poll: firmware, users, fingerprints, records, IP, FP algorithm, face algorithm,
/// faces per enrolment, faces, capabilities (then cards, user photos, attendance photos on newer firmware).
pub fn poll_info(info: &str) -> Vec<(String, String)> {
    const NAMES: [&str; 13] = [
        "FWVersion",
        "UserCount",
        "FPCount",
        "TransactionCount",
        "IPAddress",
        "FPVersion",
        "FaceVersion",
        "FaceEnrollCount",
        "FaceCount",
        "FunctionBits",
        "CardCount",
        "UserPhotoCount",
        "AttPhotoCount",
    ];
    info.split(',').zip(NAMES).map(|(v, k)| (k.to_owned(), v.trim().to_owned())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_keys_any_case_and_escapes() {
        let q = Query::parse("sn=ABC&Table=ATTLOG&STAMP=9999&INFO=Ver%208.0.4.2%2C12&x");
        assert_eq!(q.get("SN"), Some("ABC"));
        assert_eq!(q.get("table"), Some("ATTLOG"));
        assert_eq!(q.get("stamp"), Some("9999"));
        assert_eq!(q.get("info"), Some("Ver 8.0.4.2,12"));
        assert_eq!(q.get("x"), Some(""));
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("a%zz+b"), "a%zz b");
    }

    #[test]
    fn attlog_lines_as_terminals_send_them() {
        let l = att_line("1452\t2015-07-30 15:16:28\t0\t1\t0\t0\t0").expect("spec line");
        assert_eq!((l.pin.as_str(), l.state, l.verify), ("1452", 0, 1));
        assert_eq!(l.time.to_string(), "2015-07-30T15:16:28");
        // MB560-VL: empty workcode, extra trailing fields.
        let l = att_line("2\t2022-07-12 16:00:20\t1\t15\t\t0\t0\t\t\t43").expect("real line");
        assert_eq!((l.state, l.verify), (1, 15));
        assert_eq!(att_line("7\t2025-01-01 08:00:00\t255\t\t").expect("trailing tabs").state, 255);
        assert_eq!(att_line("\t2025-01-01 08:00:00"), Err(LineError::NoPin));
        assert!(matches!(att_line("7\tyesterday"), Err(LineError::BadTime(_))));
        let body = "1\t2025-01-01 08:00:00\t0\t1\r\n\r\n2\t2025-01-01 08:00:01\t0\t1\n\t\n";
        assert_eq!(lines(body).count(), 2);
    }

    #[test]
    fn users_and_cards() {
        let OperLine::User(u) = oper_line("USER PIN=1002\tName=Ana\tPri=0\tPasswd=\tCard=[15CD5B07]\tGrp=1\tTZ=0")
        else {
            panic!("a user line")
        };
        assert_eq!((u.pin.as_str(), u.name.as_str(), u.card, u.group.as_str()), ("1002", "Ana", 123_456_789, "1"));
        assert!(matches!(oper_line("PIN=3\tName=Bo"), OperLine::User(UserLine { ref pin, .. }) if pin == "3"));
        assert!(matches!(oper_line("USER\tPIN=4\tName=Cy"), OperLine::User(_)));
        assert_eq!(oper_line("OPLOG 4\t14\t2015-07-30 10:22:34\t0\t0\t0\t0"), OperLine::Other("OPLOG".into()));
        assert_eq!(card("123456789"), 123_456_789);
        assert_eq!(card("[zz]"), 0);
    }

    #[test]
    fn command_results_batched_and_multiline() {
        let r = cmd_results(
            "ID=101&Return=0&CMD=INFO\n~DeviceName=MB360/ID\nUserCount=12\r\nID=102&Return=-1002&CMD=DATA\n",
        );
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].id, r[0].ret, r[0].cmd.as_str()), (Some(101), Some(0), "INFO"));
        assert_eq!(r[0].extras, vec![("DeviceName".into(), "MB360/ID".into()), ("UserCount".into(), "12".into())]);
        assert_eq!((r[1].id, r[1].ret), (Some(102), Some(-1002)));
        let r = cmd_results("ID=5&Return=0&CMD=Shell\nContent=a\nb=c\n");
        assert_eq!(r[0].extras, vec![("content".into(), "a\nb=c\n".into())]);
        assert!(cmd_results("garbage\n=\n").is_empty());
    }

    #[test]
    fn names_in_other_encodings() {
        // "李娜" in GBK, "Zoë" in Windows-1252.
        assert_eq!(decode_text(&[0xC0, 0xEE, 0xC4, 0xC8], true), "李娜");
        assert_eq!(decode_text(b"Zo\xEB", false), "Zoë");
        assert_eq!(decode_text("Zoë\0\0".as_bytes(), true), "Zoë");
    }
}
