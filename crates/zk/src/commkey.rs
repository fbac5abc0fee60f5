//! The comm-key scramble sent with `CMD_AUTH` (zk-protocol.md §4.2, the vendor's `MakeKey`).

/// The ticks byte every known client sends.
pub const DEFAULT_TICKS: u8 = 50;

/// Scrambles `key` with the session id into the 4-byte `CMD_AUTH` payload.
pub fn make_commkey(key: u32, session_id: u16, ticks: u8) -> [u8; 4] {
    let k = key.reverse_bits().wrapping_add(u32::from(session_id));
    let b = k.to_le_bytes();
    let x = [b[0] ^ b'Z', b[1] ^ b'K', b[2] ^ b'S', b[3] ^ b'O'];
    let c = [x[2], x[3], x[0], x[1]];
    [c[0] ^ ticks, c[1] ^ ticks, ticks, c[3] ^ ticks]
}

/// Checks a `CMD_AUTH` payload against the configured key, accepting whatever ticks byte the client chose.
pub fn verify_commkey(payload: &[u8], key: u32, session_id: u16) -> bool {
    match payload {
        [a, b, ticks, d, ..] => make_commkey(key, session_id, *ticks) == [*a, *b, *ticks, *d],
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worked_examples() {
        assert_eq!(make_commkey(0, 0, 50), [0x61, 0x7d, 0x32, 0x79]);
        assert_eq!(make_commkey(0, 0x1234, 50), [0x61, 0x7d, 0x32, 0x6b]);
        assert_eq!(make_commkey(1, 0xFFFF, 50), [0x61, 0xfd, 0x32, 0x86]);
        assert_eq!(make_commkey(123456, 0xC0C5, 50), [0x29, 0x7f, 0x32, 0x39]);
        assert!(verify_commkey(&[0x29, 0x7f, 0x32, 0x39], 123456, 0xC0C5));
        assert!(!verify_commkey(&[0x29, 0x7f, 0x32, 0x39], 123457, 0xC0C5));
        assert!(!verify_commkey(&[0x29], 123456, 0xC0C5));
        // A key whose reversed value plus the session overflows u32 must not panic.
        let _ = make_commkey(131071, 0xFFFF, 50);
    }
}
