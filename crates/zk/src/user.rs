//! User records (zk-protocol.md §8): the 28- and 72-byte layouts.

use crate::error::CodecError;
use crate::table::{self, Layout};
use crate::text;

/// One enrolled user.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct User {
    /// Internal index, 1..=65535.
    pub uid: u16,
    /// Privilege byte: bit 0 disabled, bits 1-3 level (0 user, 2 enroller, 6 manager, 14 admin).
    pub privilege: u8,
    pub password: String,
    pub name: String,
    pub card: u32,
    /// Group as text, as pyzk reports it.
    pub group_id: String,
    /// The PIN as text.
    pub user_id: String,
}

/// The user layouts of different firmware generations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UserLayout {
    /// "ZK6" firmware: 8-character names, numeric PIN.
    Short28,
    /// "ZK8" firmware: 24-byte names and PINs.
    Long72,
}

impl Layout for UserLayout {
    const WHAT: &'static str = "user table";
    const PREFERENCE: &'static [Self] = &[UserLayout::Long72, UserLayout::Short28];
    fn size(self) -> usize {
        match self {
            UserLayout::Short28 => 28,
            UserLayout::Long72 => 72,
        }
    }
}

impl UserLayout {
    /// Bytes per record.
    pub fn size(self) -> usize {
        Layout::size(self)
    }
}

/// Decodes one user record.
///
/// Bytes 39..48 of the 72-byte record are read two ways by the sources: the SDK layout has the group number at 39
/// and time-zone words after it; pyzk (and pyzk's writer, whose users then come back from terminals) keeps the
/// group as text at 40. Text there wins when it is printable; otherwise byte 39 is the group.
pub fn decode_record(layout: UserLayout, rec: &[u8]) -> Result<User, CodecError> {
    if rec.len() != layout.size() {
        return Err(CodecError::RecordLength { what: "user record", len: rec.len(), expected: layout.size() });
    }
    let u16_at = |i: usize| u16::from_le_bytes([rec[i], rec[i + 1]]);
    let u32_at = |i: usize| u32::from_le_bytes([rec[i], rec[i + 1], rec[i + 2], rec[i + 3]]);
    Ok(match layout {
        UserLayout::Long72 => {
            let group_text = text::decode(&rec[40..47]);
            let group_id = if !group_text.is_empty() && group_text.chars().all(|c| c.is_ascii_graphic()) {
                group_text
            } else {
                rec[39].to_string()
            };
            User {
                uid: u16_at(0),
                privilege: rec[2],
                password: text::decode(&rec[3..11]),
                name: text::decode(&rec[11..35]),
                card: u32_at(35),
                group_id,
                user_id: text::decode(&rec[48..72]),
            }
        }
        UserLayout::Short28 => User {
            uid: u16_at(0),
            privilege: rec[2],
            password: text::decode(&rec[3..8]),
            name: text::decode(&rec[8..16]),
            card: u32_at(16),
            group_id: rec[21].to_string(),
            user_id: u32_at(24).to_string(),
        },
    })
}

/// Appends one user record. Over-long text is truncated to the field; the 28-byte layout needs a numeric PIN.
pub fn encode_record(layout: UserLayout, u: &User, out: &mut Vec<u8>) {
    let group_num = u.group_id.parse::<u8>().unwrap_or(0);
    match layout {
        UserLayout::Long72 => {
            out.extend_from_slice(&u.uid.to_le_bytes());
            out.push(u.privilege);
            text::encode_into(&u.password, 8, out);
            text::encode_into(&u.name, 24, out);
            out.extend_from_slice(&u.card.to_le_bytes());
            out.push(group_num);
            text::encode_into(&u.group_id, 8, out);
            text::encode_into(&u.user_id, 24, out);
        }
        UserLayout::Short28 => {
            out.extend_from_slice(&u.uid.to_le_bytes());
            out.push(u.privilege);
            text::encode_into(&u.password, 5, out);
            text::encode_into(&u.name, 8, out);
            out.extend_from_slice(&u.card.to_le_bytes());
            out.push(0);
            out.push(group_num);
            out.extend_from_slice(&0i16.to_le_bytes());
            out.extend_from_slice(&u.user_id.parse::<u32>().unwrap_or(u32::from(u.uid)).to_le_bytes());
        }
    }
}

/// Decodes a whole user table (u32 size, then records); `count_hint` is the user count from `CMD_GET_FREE_SIZES`.
pub fn decode_table(buf: &[u8], count_hint: Option<usize>) -> Result<(UserLayout, Vec<User>), CodecError> {
    let (layout, records) = table::split::<UserLayout>(buf, count_hint)?;
    let out = records.map(|rec| decode_record(layout, rec)).collect::<Result<Vec<_>, _>>()?;
    Ok((layout, out))
}

/// Encodes a whole user table.
pub fn encode_table(layout: UserLayout, users: &[User]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + users.len() * layout.size());
    out.extend_from_slice(&((users.len() * layout.size()) as u32).to_le_bytes());
    for u in users {
        encode_record(layout, u, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adro_72_byte_user_ned() {
        let mut rec = vec![0x0D, 0x00, 0x00];
        rec.extend_from_slice(b"444\0\xC6\x9A\x80\x7C");
        rec.extend_from_slice(b"Ned");
        rec.extend_from_slice(&[0; 21]);
        rec.extend_from_slice(&[0xDE, 0, 0, 0, 0x02, 0x01, 0, 0x01, 0, 0x02, 0, 0, 0]);
        rec.extend_from_slice(b"555");
        rec.extend_from_slice(&[0; 21]);
        let u = decode_record(UserLayout::Long72, &rec).expect("decodes");
        assert_eq!(
            u,
            User {
                uid: 13,
                privilege: 0,
                password: "444".into(),
                name: "Ned".into(),
                card: 222,
                group_id: "2".into(),
                user_id: "555".into()
            }
        );
    }

    #[test]
    fn round_trip_both_layouts_with_non_ascii_names() {
        let u = User {
            uid: 3,
            privilege: 14,
            password: "12".into(),
            name: "Renée".into(),
            card: 99,
            group_id: "1".into(),
            user_id: "1003".into(),
        };
        for layout in [UserLayout::Long72, UserLayout::Short28] {
            let t = encode_table(layout, &[u.clone(), u.clone()]);
            let (l, got) = decode_table(&t, Some(2)).expect("decodes");
            assert_eq!(l, layout);
            assert_eq!(got[1], u);
        }
    }
}
