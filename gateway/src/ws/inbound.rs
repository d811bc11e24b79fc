//! Client-to-server WebSocket frames (RFC 6455 section 5), parsed from a buffer that holds
//! nothing while the connection is idle.
//!
//! Why not fastwebsockets here: its reader keeps a fixed 8 KiB buffer per connection and
//! needs a task of its own, which together put an idle connection at ~25 KB. Clients send
//! only small control messages, so this parser keeps a buffer that is empty (no heap) between
//! messages and runs inside the connection's one task. fastwebsockets still does the
//! upgrade handshake, and our test and tool clients.

use crate::protocol::close;

/// One complete client frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    /// A text message (single frame, valid UTF-8, unmasked).
    Text(Vec<u8>),
    /// A ping with its payload.
    Ping(Vec<u8>),
    /// A pong, with its payload.
    Pong(Vec<u8>),
    /// The client's close.
    Close,
}

/// A frame the server does not accept: close with this code and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    /// Close code.
    pub code: u16,
    /// Close reason.
    pub reason: &'static str,
}

const fn violation(code: u16, reason: &'static str) -> Violation {
    Violation { code, reason }
}

/// Parses frames out of `buf`, removing what it consumed. Returns `Ok(None)` when more
/// bytes are needed. Never reads the payload of a frame it refuses.
pub fn parse(buf: &mut Vec<u8>, max_message_bytes: usize) -> Result<Option<Inbound>, Violation> {
    let Some(&[b0, b1]) = buf.get(..2) else { return Ok(None) };
    if b0 & 0x70 != 0 {
        return Err(violation(close::PROTOCOL_ERROR, "reserved bits set"));
    }
    if b1 & 0x80 == 0 {
        return Err(violation(close::PROTOCOL_ERROR, "client frames must be masked"));
    }
    let (fin, opcode) = (b0 & 0x80 != 0, b0 & 0x0f);
    let (len, header) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            // RFC 6455 5.2: the most significant bit of a 64-bit length must be 0.
            Some(b) if b[0] & 0x80 != 0 => {
                return Err(violation(close::PROTOCOL_ERROR, "payload length's top bit set"))
            }
            Some(b) => (u64::from_be_bytes(b.try_into().expect("8 bytes")), 10),
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    let is_control = opcode & 0x08 != 0;
    if is_control && (!fin || len > 125) {
        return Err(violation(close::PROTOCOL_ERROR, "invalid control frame"));
    }
    if len > max_message_bytes as u64 {
        return Err(violation(close::TOO_BIG, "message too big"));
    }
    match opcode {
        0x1 if !fin => {
            return Err(violation(close::UNSUPPORTED_DATA, "fragmented messages are not accepted"))
        }
        // No fragmented message is ever started here (see above): a continuation never
        // continues anything (RFC 6455 5.4: a protocol error).
        0x0 => {
            return Err(violation(
                close::PROTOCOL_ERROR,
                "a continuation frame without a message started",
            ))
        }
        0x2 => {
            return Err(violation(
                close::UNSUPPORTED_DATA,
                "only text control messages are accepted",
            ))
        }
        0x1 | 0x8 | 0x9 | 0xA => {}
        _ => return Err(violation(close::PROTOCOL_ERROR, "unknown opcode")),
    }
    let len = len as usize; // <= max_message_bytes
    let total = header + 4 + len;
    if buf.len() < total {
        return Ok(None);
    }
    let mask: [u8; 4] = buf[header..header + 4].try_into().expect("4 bytes");
    let mut payload = buf[header + 4..total].to_vec();
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
    buf.drain(..total);
    Ok(Some(match opcode {
        0x1 => {
            if std::str::from_utf8(&payload).is_err() {
                return Err(violation(close::INVALID_PAYLOAD, "invalid utf-8"));
            }
            Inbound::Text(payload)
        }
        0x9 => Inbound::Ping(payload),
        0xA => Inbound::Pong(payload),
        _ => {
            // RFC 6455 5.5.1 and 7.4: empty, or a code a peer may send, then UTF-8.
            match payload.as_slice() {
                [] => {}
                [a, b, reason @ ..] if sendable_close_code(u16::from_be_bytes([*a, *b])) => {
                    if std::str::from_utf8(reason).is_err() {
                        return Err(violation(close::INVALID_PAYLOAD, "invalid utf-8"));
                    }
                }
                _ => return Err(violation(close::PROTOCOL_ERROR, "invalid close frame")),
            }
            Inbound::Close
        }
    }))
}

/// Whether a peer may put `code` in a close frame (RFC 6455 7.4: the defined codes but
/// 1004, 1005, 1006 and 1015, which are never sent; the IANA-registered 1012 to 1014;
/// 3000 to 4999 for libraries and applications).
fn sendable_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x11, 0x22, 0x33, 0x44];
        let mut out = vec![b0];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    #[test]
    fn parses_frames_across_partial_reads_and_back_to_back() {
        let mut wire = masked(0x81, br#"{"op":"ping"}"#);
        wire.extend(masked(0x89, b"hb"));
        wire.extend(masked(0x8A, b""));
        wire.extend(masked(0x88, &[0x03, 0xe8]));
        let mut buf = Vec::new();
        let mut got = Vec::new();
        for byte in wire {
            buf.push(byte); // one byte at a time: every prefix must be "need more"
            while let Some(frame) = parse(&mut buf, 4096).expect("valid") {
                got.push(frame);
            }
        }
        assert_eq!(
            got,
            vec![
                Inbound::Text(br#"{"op":"ping"}"#.to_vec()),
                Inbound::Ping(b"hb".to_vec()),
                Inbound::Pong(Vec::new()),
                Inbound::Close
            ]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn extended_lengths() {
        let text = vec![b'a'; 300];
        let mut buf = masked(0x81, &text);
        assert_eq!(parse(&mut buf, 4096), Ok(Some(Inbound::Text(text))));
        let mut buf = masked(0x81, &vec![b'a'; 70_000]);
        assert_eq!(parse(&mut buf, 4096).map_err(|v| v.code), Err(close::TOO_BIG));
    }

    #[test]
    fn refuses_what_the_protocol_forbids_before_reading_the_payload() {
        let code = |bytes: Vec<u8>| parse(&mut bytes.clone(), 4096).map_err(|v| v.code);
        assert_eq!(code(masked(0x82, b"bin")), Err(close::UNSUPPORTED_DATA));
        assert_eq!(code(masked(0x01, b"frag")), Err(close::UNSUPPORTED_DATA));
        assert_eq!(code(masked(0x80, b"cont")), Err(close::PROTOCOL_ERROR), "continues nothing");
        assert_eq!(code(masked(0xC1, b"rsv")), Err(close::PROTOCOL_ERROR));
        assert_eq!(code(masked(0x83, b"op3")), Err(close::PROTOCOL_ERROR));
        assert_eq!(code(masked(0x09, b"frag ping")), Err(close::PROTOCOL_ERROR));
        assert_eq!(code(masked(0x89, &[0; 126])), Err(close::PROTOCOL_ERROR));
        assert_eq!(code(vec![0x81, 0x02, b'h', b'i']), Err(close::PROTOCOL_ERROR), "unmasked");
        assert_eq!(code(masked(0x81, &[0xff, 0xfe])), Err(close::INVALID_PAYLOAD));
        // The header alone is enough to refuse an oversized frame.
        assert_eq!(code(vec![0x81, 0x80 | 127, 0, 0, 0, 1, 0, 0, 0, 0]), Err(close::TOO_BIG));
        let top_bit = vec![0x81, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 5];
        assert_eq!(code(top_bit), Err(close::PROTOCOL_ERROR), "a 64-bit length's top bit");
        assert_eq!(parse(&mut vec![0x81], 4096), Ok(None));
    }

    #[test]
    fn a_close_frame_must_carry_nothing_or_a_sendable_code_and_utf8() {
        let close_with = |payload: &[u8]| parse(&mut masked(0x88, payload), 4096);
        assert_eq!(close_with(b""), Ok(Some(Inbound::Close)));
        for code in [1000u16, 1001, 1003, 1007, 1011, 1014, 3000, 4999] {
            let mut payload = code.to_be_bytes().to_vec();
            payload.extend_from_slice("bye \u{e9}".as_bytes());
            assert_eq!(close_with(&payload), Ok(Some(Inbound::Close)), "{code}");
        }
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
            let refused = close_with(&code.to_be_bytes()).map_err(|v| v.code);
            assert_eq!(refused, Err(close::PROTOCOL_ERROR), "{code}");
        }
        assert_eq!(close_with(&[0x03]).map_err(|v| v.code), Err(close::PROTOCOL_ERROR), "1 byte");
        let bad_reason = close_with(&[0x03, 0xe8, 0xff, 0xfe]).map_err(|v| v.code);
        assert_eq!(bad_reason, Err(close::INVALID_PAYLOAD));
    }
}
