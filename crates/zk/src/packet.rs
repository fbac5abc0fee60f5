//! The 8-byte ZK header plus payload (zk-protocol.md §1), and its checksum.

use crate::error::CodecError;

/// Size of the ZK header: command, checksum, session id, reply id.
pub const HEADER_LEN: usize = 8;

/// One ZK packet as it travels in a UDP datagram or inside a TCP frame.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Packet {
    /// Command (client to terminal), reply code (terminal to client) or `CMD_REG_EVENT` for events.
    pub command: u16,
    /// Session id; in event packets it carries the event flag instead.
    pub session_id: u16,
    /// Request counter echoed by the terminal in every packet of its reply.
    pub reply_id: u16,
    /// Command-specific bytes.
    pub payload: Vec<u8>,
}

/// The ones'-complement sum of little-endian u16 words (§1.1), computed as if bytes 2..4 were zero.
pub fn checksum(bytes: &[u8]) -> u16 {
    let mut acc: u32 = 0;
    let mut chunks = bytes.chunks_exact(2);
    for (i, pair) in chunks.by_ref().enumerate() {
        if i == 1 {
            continue; // the checksum field itself
        }
        acc += u32::from(u16::from_le_bytes([pair[0], pair[1]]));
        if acc > 0xFFFF {
            acc -= 0xFFFF;
        }
    }
    // A lone last byte at offset 2 would be part of the checksum field itself (only in packets too short to be
    // real, but the function is total).
    if let [last] = chunks.remainder()
        && bytes.len() != 3
    {
        acc += u32::from(*last);
        while acc > 0xFFFF {
            acc -= 0xFFFF;
        }
    }
    !(acc as u16)
}

impl Packet {
    /// A packet with an empty payload.
    pub fn new(command: u16, session_id: u16, reply_id: u16) -> Self {
        Packet { command, session_id, reply_id, payload: Vec::new() }
    }

    /// Builder-style payload.
    pub fn with_payload(mut self, payload: impl Into<Vec<u8>>) -> Self {
        self.payload = payload.into();
        self
    }

    /// Length of the encoded packet (header plus payload).
    pub fn wire_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }

    /// Appends the bare packet (no TCP prefix) with its checksum to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&self.command.to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.session_id.to_le_bytes());
        out.extend_from_slice(&self.reply_id.to_le_bytes());
        out.extend_from_slice(&self.payload);
        let sum = checksum(&out[start..]);
        out[start + 2..start + 4].copy_from_slice(&sum.to_le_bytes());
    }

    /// The bare packet, as sent in a UDP datagram.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.wire_len());
        self.encode_into(&mut out);
        out
    }

    /// The packet inside its TCP frame (magic and length prefix).
    pub fn encode_tcp(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(crate::frame::PREFIX_LEN + self.wire_len());
        crate::frame::encode_tcp_into(self, &mut out);
        out
    }

    /// Decodes a bare packet and verifies its checksum.
    pub fn decode(buf: &[u8]) -> Result<Packet, CodecError> {
        let packet = Self::decode_unverified(buf)?;
        let found = u16::from_le_bytes([buf[2], buf[3]]);
        let computed = checksum(buf);
        if found != computed {
            return Err(CodecError::Checksum { found, computed });
        }
        Ok(packet)
    }

    /// Decodes a bare packet without looking at its checksum.
    pub fn decode_unverified(buf: &[u8]) -> Result<Packet, CodecError> {
        if buf.len() < HEADER_LEN {
            return Err(CodecError::Short { len: buf.len(), need: HEADER_LEN });
        }
        Ok(Packet {
            command: u16::from_le_bytes([buf[0], buf[1]]),
            session_id: u16::from_le_bytes([buf[4], buf[5]]),
            reply_id: u16::from_le_bytes([buf[6], buf[7]]),
            payload: buf[HEADER_LEN..].to_vec(),
        })
    }
}

/// The successor of a reply id: 0..=65534, wrapping to 0 (§1.3).
pub fn next_reply_id(id: u16) -> u16 {
    if id >= 65534 { 0 } else { id + 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace().map(|b| u8::from_str_radix(b, 16).unwrap_or_default()).collect()
    }

    #[test]
    fn checksum_vectors_from_the_protocol_notes() {
        let mut long = hex("f4 01 ac 12 01 00 00 00");
        long.extend_from_slice(b"999111333");
        long.extend_from_slice(&[0; 15]);
        long.extend_from_slice(&hex("01 00 12 06 19 11 29 05"));
        let mut face = hex("0b 00 5a 17 f3 8d 03 00");
        face.extend_from_slice(b"ZKFaceVersion\0");
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (hex("e8 03 17 fc 00 00 00 00"), 0xFC17),
            (hex("0b 00 58 ef c5 c0 05 00 7e 4f 53 00"), 0xEF58),
            (face, 0x175A),
            (hex("d0 07 29 6a f3 8d 0a 00 09"), 0x6A29),
            (hex("f4 01 a7 fc 00 01 00 00 64"), 0xFCA7),
            (long, 0x12AC),
        ];
        for (bytes, want) in cases {
            assert_eq!(checksum(&bytes), want, "{bytes:02x?}");
            let p = Packet::decode(&bytes).expect("valid packet");
            assert_eq!(p.encode(), bytes);
        }
    }

    #[test]
    fn reply_id_wraps_before_65535() {
        assert_eq!(next_reply_id(0), 1);
        assert_eq!(next_reply_id(65533), 65534);
        assert_eq!(next_reply_id(65534), 0);
    }

    #[test]
    fn corrupted_checksum_is_rejected() {
        let mut bytes = Packet::new(1000, 0, 0).encode();
        bytes[2] ^= 1;
        assert!(matches!(Packet::decode(&bytes), Err(CodecError::Checksum { .. })));
    }
}
