//! TCP framing (zk-protocol.md §2.1): `50 50 82 7D`, u32 length, then one ZK packet.
//!
//! The stream is not aligned with reads, so decoding works on a growing buffer and reports how many bytes a
//! complete frame used. Lengths come from the terminal and are checked before anything is allocated.

use crate::error::CodecError;
use crate::packet::{HEADER_LEN, Packet};

/// The four magic bytes that open every TCP frame.
pub const MAGIC: [u8; 4] = [0x50, 0x50, 0x82, 0x7D];
/// Magic plus the u32 length.
pub const PREFIX_LEN: usize = 8;
/// The largest ZK packet we accept in one frame. Real terminals send at most a 65,472-byte chunk (plus header)
/// in one frame; a little headroom, and a hard cap so a hostile length cannot make us allocate.
pub const MAX_PACKET_LEN: usize = 128 * 1024;

/// Appends `packet` in its TCP frame to `out`.
pub fn encode_tcp_into(packet: &Packet, out: &mut Vec<u8>) {
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(packet.wire_len() as u32).to_le_bytes());
    packet.encode_into(out);
}

/// Reads the frame header at the start of `buf`: `Ok(None)` if fewer than 8 bytes are present, else the length of
/// the ZK packet that follows, validated against [`MAX_PACKET_LEN`].
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, CodecError> {
    if buf.len() < PREFIX_LEN {
        return Ok(None);
    }
    let magic = [buf[0], buf[1], buf[2], buf[3]];
    if magic != MAGIC {
        return Err(CodecError::BadMagic(magic));
    }
    let len = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
    if len > MAX_PACKET_LEN {
        return Err(CodecError::FrameTooLarge { len, max: MAX_PACKET_LEN });
    }
    if len < HEADER_LEN {
        return Err(CodecError::FrameTooSmall(len));
    }
    Ok(Some(len))
}

/// Decodes one frame from the start of `buf`. `Ok(None)` means more bytes are needed; otherwise the packet and
/// the number of bytes it used. The checksum is verified.
pub fn decode_tcp_frame(buf: &[u8]) -> Result<Option<(Packet, usize)>, CodecError> {
    let Some(len) = frame_len(buf)? else {
        return Ok(None);
    };
    let total = PREFIX_LEN + len;
    if buf.len() < total {
        return Ok(None);
    }
    let packet = Packet::decode(&buf[PREFIX_LEN..total])?;
    Ok(Some((packet, total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adro_options_frame() {
        // zk-protocol.md §2.1 example.
        let bytes = [
            0x50, 0x50, 0x82, 0x7D, 0x0C, 0, 0, 0, 0x0B, 0x00, 0x58, 0xEF, 0xC5, 0xC0, 0x05, 0x00, 0x7E, 0x4F, 0x53,
            0x00,
        ];
        let (p, used) = decode_tcp_frame(&bytes).expect("valid").expect("complete");
        assert_eq!(used, bytes.len());
        assert_eq!((p.command, p.session_id, p.reply_id), (11, 0xC0C5, 5));
        assert_eq!(p.payload, b"~OS\0");
        assert_eq!(p.encode_tcp(), bytes);
        for cut in 0..bytes.len() {
            assert_eq!(decode_tcp_frame(&bytes[..cut]), Ok(None));
        }
    }

    #[test]
    fn hostile_lengths_are_refused_before_allocation() {
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode_tcp_frame(&b), Err(CodecError::FrameTooLarge { .. })));
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        assert_eq!(decode_tcp_frame(&b), Err(CodecError::FrameTooSmall(3)));
        assert!(matches!(decode_tcp_frame(b"GET / HTTP/1.1\r\n"), Err(CodecError::BadMagic(_))));
    }
}
