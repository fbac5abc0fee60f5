//! Bare ZK packets and the TCP frame stream.
//!
//! The input is decoded as one bare packet, then as a TCP byte stream fed to the client's accumulate-and-decode
//! loop twice: all at once, and in pieces whose size the first byte picks. Both must see the same packets and end
//! the same way.

#![no_main]

use essl_zk::CodecError;
use essl_zk::frame;
use essl_zk::packet::Packet;
use libfuzzer_sys::fuzz_target;

/// Feeds `stream` in pieces of `piece` bytes; returns the packets decoded and how the stream ended (the error that
/// broke it, or the bytes left waiting for more).
fn decode_stream(stream: &[u8], piece: usize) -> (Vec<Packet>, Result<usize, CodecError>) {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    for chunk in stream.chunks(piece) {
        buf.extend_from_slice(chunk);
        loop {
            match frame::decode_tcp_frame(&buf) {
                Ok(Some((packet, used))) => {
                    assert!(used > 0 && used <= buf.len(), "used {used} of {}", buf.len());
                    assert_eq!(packet.encode_tcp(), buf[..used], "a decoded frame re-encodes to its bytes");
                    buf.drain(..used);
                    out.push(packet);
                }
                Ok(None) => break,
                Err(e) => return (out, Err(e)),
            }
        }
    }
    (out, Ok(buf.len()))
}

fuzz_target!(|data: &[u8]| {
    match Packet::decode_unverified(data) {
        Ok(p) => assert_eq!(p.wire_len(), data.len()),
        Err(e) => assert!(data.len() < 8, "{e}"),
    }
    if let Ok(p) = Packet::decode(data) {
        assert_eq!(p.encode(), data, "a verified packet re-encodes to its bytes");
    }
    let _ = frame::frame_len(data);

    let whole = decode_stream(data, data.len().max(1));
    let piece = data.first().map_or(1, |&b| usize::from(b % 32) + 1);
    let pieces = decode_stream(data, piece);
    assert_eq!(whole, pieces, "read boundaries changed the outcome (pieces of {piece})");
});
