//! WebSocket framing of server frames (unmasked, so one encoding serves every
//! subscriber) and the close codes.

/// WebSocket opcodes the server writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Opcode {
    /// UTF-8 text.
    Text = 0x1,
    /// Binary.
    Binary = 0x2,
    /// Close.
    Close = 0x8,
    /// Ping.
    Ping = 0x9,
    /// Pong.
    Pong = 0xA,
}

/// Appends an unmasked, final server frame header for a payload of `len` bytes.
pub fn frame_header(out: &mut Vec<u8>, opcode: Opcode, len: usize) {
    out.push(0x80 | opcode as u8);
    if len < 126 {
        out.push(len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// Length of the header of a complete unmasked server frame built by [`frame_header`].
pub fn frame_header_len(frame: &[u8]) -> usize {
    match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    }
}

/// A complete unmasked server frame.
pub fn frame(opcode: Opcode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    frame_header(&mut out, opcode, payload.len());
    out.extend_from_slice(payload);
    out
}

/// A close frame with a code and reason (reason truncated to fit a control frame).
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    let mut end = reason.len().min(120);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    frame(Opcode::Close, &payload)
}

/// Close codes the server uses (documented in `docs/PROTOCOL.md`).
pub mod close {
    /// Normal closure (answer to the client's close).
    pub const NORMAL: u16 = 1000;
    /// Server shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// Protocol error in framing.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// Binary or fragmented data frame from the client: only single text frames are accepted.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// Text that is not valid UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Policy violation: inbound message rate far over the limit.
    pub const POLICY: u16 = 1008;
    /// Inbound message larger than `ws_message_bytes_max`.
    pub const TOO_BIG: u16 = 1009;
    /// No pong (or any frame) within the heartbeat timeout.
    pub const HEARTBEAT_TIMEOUT: u16 = 4001;
    /// The connection's session was ended (logout, user removed).
    pub const SESSION_REVOKED: u16 = 4003;
    /// Slow consumer: persistently behind on a trades channel, or writes stalled.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// Refused at the upgrade (a browser's page, which cannot read an HTTP answer to its
    /// WebSocket): the token or session cookie is missing its mark (bad, expired, ended).
    pub const UNAUTHORIZED: u16 = 4401;
    /// Refused at the upgrade: a page on an origin that may not use the session cookie.
    pub const ORIGIN_NOT_ALLOWED: u16 = 4403;
}
