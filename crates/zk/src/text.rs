//! Text fields of records: NUL-terminated, encoding chosen by the terminal's locale (zk-protocol.md §8.3).

/// Cuts at the first NUL and decodes: UTF-8 when valid, otherwise Windows-1252 (which also covers Latin-1).
pub fn decode(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    let bytes = &field[..end];
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => bytes.iter().map(|&b| cp1252(b)).collect(),
    }
}

/// Writes `s` as UTF-8 into a fixed field of `width` bytes, NUL-padded, truncated at a character boundary so that a
/// terminating NUL always remains.
pub fn encode_into(s: &str, width: usize, out: &mut Vec<u8>) {
    let max = width.saturating_sub(1);
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&s.as_bytes()[..end]);
    out.resize(out.len() + (width - end), 0);
}

fn cp1252(b: u8) -> char {
    const HIGH: [char; 32] = [
        '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8d}', 'Ž', '\u{8f}', '\u{90}', '‘',
        '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9d}', 'ž', 'Ÿ',
    ];
    match b {
        0x80..=0x9F => HIGH[usize::from(b - 0x80)],
        _ => char::from(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_at_first_nul_and_falls_back() {
        assert_eq!(decode(b"444\0\xC6\x9A\x80\x7C"), "444");
        assert_eq!(decode("Zoë".as_bytes()), "Zoë");
        assert_eq!(decode(b"Zo\xEB\0"), "Zoë");
        assert_eq!(decode(b"\x80"), "€");
    }

    #[test]
    fn encode_keeps_a_terminator_and_char_boundaries() {
        let mut out = Vec::new();
        encode_into("Émilie Éléonore", 8, &mut out);
        assert_eq!(out.len(), 8);
        assert_eq!(out[7], 0);
        assert_eq!(decode(&out), "Émilie");
    }
}
