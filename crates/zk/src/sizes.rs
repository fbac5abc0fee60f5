//! The `CMD_GET_FREE_SIZES` block (zk-protocol.md §5): counters and capacities as i32 values.

use crate::error::CodecError;

/// Counts and capacities reported by the terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FreeSizes {
    pub users: i32,
    pub fingers: i32,
    pub records: i32,
    pub oplogs: i32,
    /// Int #12: "admins" per the SDK; pyzk calls it cards.
    pub admins: i32,
    pub passwords: i32,
    pub fingers_cap: i32,
    pub users_cap: i32,
    pub records_cap: i32,
    pub fingers_av: i32,
    pub users_av: i32,
    pub records_av: i32,
    /// Present only in the 92-byte form.
    pub faces: Option<i32>,
    pub faces_cap: Option<i32>,
}

impl FreeSizes {
    /// Length of the short form (20 ints).
    pub const SHORT_LEN: usize = 80;
    /// Length of the long form with face counters (23 ints).
    pub const LONG_LEN: usize = 92;

    /// Decodes the 80- or 92-byte block; longer payloads are accepted and the rest ignored.
    pub fn decode(payload: &[u8]) -> Result<FreeSizes, CodecError> {
        if payload.len() < Self::SHORT_LEN {
            return Err(CodecError::Short { len: payload.len(), need: Self::SHORT_LEN });
        }
        let int = |i: usize| {
            let b = &payload[i * 4..i * 4 + 4];
            i32::from_le_bytes([b[0], b[1], b[2], b[3]])
        };
        let long = payload.len() >= Self::LONG_LEN;
        Ok(FreeSizes {
            users: int(4),
            fingers: int(6),
            records: int(8),
            oplogs: int(10),
            admins: int(12),
            passwords: int(13),
            fingers_cap: int(14),
            users_cap: int(15),
            records_cap: int(16),
            fingers_av: int(17),
            users_av: int(18),
            records_av: int(19),
            faces: long.then(|| int(20)),
            faces_cap: long.then(|| int(22)),
        })
    }

    /// Encodes the block: 92 bytes when face counters are present, else 80.
    pub fn encode(&self) -> Vec<u8> {
        let mut ints = [0i32; 23];
        ints[4] = self.users;
        ints[6] = self.fingers;
        ints[8] = self.records;
        ints[10] = self.oplogs;
        ints[12] = self.admins;
        ints[13] = self.passwords;
        ints[14] = self.fingers_cap;
        ints[15] = self.users_cap;
        ints[16] = self.records_cap;
        ints[17] = self.fingers_av;
        ints[18] = self.users_av;
        ints[19] = self.records_av;
        let n = match (self.faces, self.faces_cap) {
            (None, None) => 20,
            (faces, cap) => {
                ints[20] = faces.unwrap_or(0);
                ints[22] = cap.unwrap_or(0);
                23
            }
        };
        ints[..n].iter().flat_map(|i| i.to_le_bytes()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f18_block_from_pyzk_pr_111() {
        let ints: [i32; 23] =
            [0, 0, 0, 0, 3, 0, 3, 0, 58, 0, 90, 0, 2, 2, 3000, 5000, 100000, 2997, 4997, 99942, 0, 0, 0];
        let bytes: Vec<u8> = ints.iter().flat_map(|i| i.to_le_bytes()).collect();
        let s = FreeSizes::decode(&bytes).expect("decodes");
        assert_eq!((s.users, s.fingers, s.records, s.oplogs, s.admins), (3, 3, 58, 90, 2));
        assert_eq!((s.users_cap, s.fingers_cap, s.records_cap), (5000, 3000, 100000));
        assert_eq!(s.records_av, 99942);
        assert_eq!(s.faces, Some(0));
        assert_eq!(s.encode(), bytes);
        assert!(FreeSizes::decode(&bytes[..79]).is_err());
    }
}
