//! What push (ADMS / iclock) terminals send: bodies through the server's tolerant parsers (`ATTLOG` and `rtlog`
//! lines, `OPERLOG`/`USERINFO` lines, command results, `INFO`, `key=value` lists) and the raw query string.
//!
//! The first byte picks the fallback encoding (odd: GB18030, as for a Chinese-language terminal; even:
//! Windows-1252); the rest is the body, and also the query. Nothing may panic, every record obeys the rules the
//! ingest relies on, and a parsed attendance line written back the way terminals write it parses to the same record.

#![no_main]

use essl_server::push::parse::{self, OperLine};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let text = parse::decode_text(rest, first & 1 == 1);
    assert!(!text.contains('\0'));

    for line in parse::lines(&text) {
        assert!(!line.contains(['\n', '\r']) && !line.trim().is_empty());
        if let Ok(r) = parse::att_line(line) {
            assert!(!r.pin.is_empty() && r.pin.chars().count() <= 64 && !r.pin.chars().any(char::is_control));
            assert_eq!(r.pin, r.pin.trim());
            assert!((1..=9999).contains(&r.time.year()));
            let again = format!("{}\t{}\t{}\t{}\t0", r.pin, r.time.strftime("%Y-%m-%d %H:%M:%S"), r.state, r.verify);
            assert_eq!(parse::att_line(&again).as_ref(), Ok(&r), "{again:?}");
        }
        if let Ok(r) = parse::rtlog_line(line) {
            assert!(!r.pin.is_empty() && r.pin != "0" && r.pin.chars().count() <= 64);
            assert!((1..=9999).contains(&r.time.year()));
        }
        if let OperLine::User(u) = parse::oper_line(line) {
            assert!(!u.pin.is_empty() && u.pin.chars().count() <= 64 && !u.pin.chars().any(char::is_control));
            assert!(u.card >= 0);
            assert!(u.name.chars().count() <= 100 && !u.name.chars().any(char::is_control));
            assert!(u.group.chars().count() <= 16 && !u.group.chars().any(char::is_control));
        }
        for (k, _) in parse::key_values(line, '\t') {
            assert!(!k.is_empty() && k == k.to_ascii_lowercase());
        }
    }
    for r in parse::cmd_results(&text) {
        assert!(r.extras.len() <= text.len());
    }
    assert!(parse::poll_info(&text).len() <= 13);
    let _ = parse::key_values(&text, ',');
    let _ = parse::chinese_language(Some(&text));

    // The query string as the HTTP layer hands it over (text), and the values the server reads from it.
    let raw = String::from_utf8_lossy(rest);
    let q = parse::Query::parse(&raw);
    for key in ["SN", "table", "Stamp", "options", "pushver", "language", "INFO", "tablename"] {
        if let Some(v) = q.value(key) {
            assert!(!v.is_empty() && v == v.trim());
        }
    }
    if let Some(sn) = q.value("sn")
        && parse::valid_serial(sn)
    {
        assert!(sn.len() <= 64 && sn.bytes().all(|b| b.is_ascii_graphic()));
    }
    let _ = parse::percent_decode(&raw);
    let _ = parse::card(&raw);
    if let Some(t) = parse::local_time(&raw) {
        assert!((1..=9999).contains(&t.year()));
    }
});
