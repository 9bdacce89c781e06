//! The control protocol spoken between the front and its generations.
//!
//! The front owns the listening sockets and outlives every generation; each
//! generation (and each control client such as `--upgrade`) talks to it over a
//! local channel. Everything on that channel is a sequence of frames:
//!
//! | field     | bytes     | contents                                             |
//! |-----------|-----------|------------------------------------------------------|
//! | `len`     | 4, BE     | length of everything after it, at most [`MAX_FRAME`] |
//! | `version` | 1         | [`VERSION`]                                          |
//! | `kind`    | 1         | which [`Message`], see below                         |
//! | payload   | `len - 2` | the message's fields, big-endian, nothing after them |
//!
//! | kind | message      | payload                                                            |
//! |------|--------------|--------------------------------------------------------------------|
//! | 1    | `Hello`      | pid `u32`, role `u8` (1 generation, 2 control), ready and drain    |
//! |      |              | timeouts and probation window in ms `u64` each (the sender's own,  |
//! |      |              | saturated)                                                         |
//! | 2    | `Listeners`  | generation `u64`, count `u16` (≤ 1024), count × (`u16` len, bytes) |
//! | 3    | `Ready`      |                                                                    |
//! | 4    | `Superseded` |                                                                    |
//! | 5    | `Upgrade`    |                                                                    |
//! | 6    | `Upgraded`   | generation `u64`                                                   |
//! | 7    | `Shutdown`   |                                                                    |
//! | 8    | `Error`      | `u16` len, UTF-8 bytes                                             |
//! | 9    | `StopRequested` |                                                                 |
//! | 10   | `Stopping`   |                                                                    |
//! | 11   | `Busy`       | `u16` len, UTF-8 bytes                                             |
//! | 12   | `Probation`  |                                                                    |
//! | 13   | `Reinstated` |                                                                    |
//! | 14   | `SteppedAside` |                                                                  |
//!
//! Why it is shaped this way:
//!
//! - **Versioned.** The front keeps running across upgrades while generations
//!   are whatever was just built, so the two ends routinely come from different
//!   releases. Every frame carries the version, and it is checked before
//!   anything else, so a mismatch surfaces as a clear
//!   [`ProtocolError::UnsupportedVersion`] on the first frame instead of as
//!   misread fields or a hang.
//! - **Bounded.** Anything local that can open the control channel is a peer,
//!   and the front must survive a hostile or confused one. The length prefix is
//!   judged against [`MAX_FRAME`] before any of the body is buffered, counts are
//!   capped before anything is reserved for them, and [`FrameDecoder`] holds a
//!   fixed amount at most, so no peer can make the front allocate at will.
//! - **Pure.** Encoding and decoding only ever see byte slices; reading,
//!   writing and descriptor passing live elsewhere. That keeps every edge case
//!   testable without sockets and lets the decoder be fuzzed with arbitrary
//!   input.

use std::time::Duration;
use std::{error, fmt, io, str};

/// Protocol revision. Bump it on any change to the layout above.
/// Version 2 added the sender's ready and drain timeouts to `Hello`, so that the front
/// enforces a new build's own deadlines rather than its own, and the `StopRequested` and
/// `Stopping` messages. Version 3 added the sender's probation window to `Hello`, and the
/// `Probation` and `Reinstated` messages. Version 4 added `SteppedAside`, which the front
/// waits for before it reports an upgrade done.
pub(crate) const VERSION: u8 = 4;

/// Largest frame body accepted (after the 4-byte length prefix).
pub(crate) const MAX_FRAME: usize = 64 * 1024;

const LEN_PREFIX: usize = 4;

/// `version` and `kind`, which every body starts with.
const BODY_HEADER: usize = 2;

/// The count is read before the blobs, so without a cap a 14-byte frame could
/// make us reserve room for 65535 entries. No real service has this many
/// listeners.
const MAX_SOCKETS: usize = 1024;

/// Longest `Error` reason that fits both its `u16` length and one frame.
const MAX_REASON: usize = {
    let in_frame = MAX_FRAME - BODY_HEADER - 2;
    let in_u16 = u16::MAX as usize;
    if in_frame < in_u16 { in_frame } else { in_u16 }
};

/// What a [`FrameDecoder`] may hold: one partial frame, plus up to one frame's
/// worth of freshly read input on top of it. A single frame's worth would be a
/// tighter bound, but it would reject a perfectly valid stream whenever a read
/// completing a large frame also carries the start of the next one.
const DECODER_CAPACITY: usize = 2 * (LEN_PREFIX + MAX_FRAME);

const KIND_HELLO: u8 = 1;
const KIND_LISTENERS: u8 = 2;
const KIND_READY: u8 = 3;
const KIND_SUPERSEDED: u8 = 4;
const KIND_UPGRADE: u8 = 5;
const KIND_UPGRADED: u8 = 6;
const KIND_SHUTDOWN: u8 = 7;
const KIND_ERROR: u8 = 8;
const KIND_STOP_REQUESTED: u8 = 9;
const KIND_STOPPING: u8 = 10;
const KIND_BUSY: u8 = 11;
const KIND_PROBATION: u8 = 12;
const KIND_REINSTATED: u8 = 13;
const KIND_STEPPED_ASIDE: u8 = 14;

/// Who is on the other end of a control connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// A server process asking for the listeners.
    Generation,
    /// A client like `--upgrade`, which only sends commands.
    Control,
}

impl Role {
    fn to_wire(self) -> u8 {
        match self {
            Role::Generation => 1,
            Role::Control => 2,
        }
    }

    fn from_wire(byte: u8) -> Result<Self, ProtocolError> {
        match byte {
            1 => Ok(Role::Generation),
            2 => Ok(Role::Control),
            _ => Err(ProtocolError::Malformed("bad role")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Message {
    /// First frame of every peer: who it is, and the deadlines the front should hold a
    /// generation to (a control client sends its own, which the front ignores).
    Hello {
        pid: u32,
        role: Role,
        ready_timeout: Duration,
        drain_timeout: Duration,
        probation: Duration,
    },
    /// Front -> generation: your generation number and one opaque blob per
    /// listening socket (empty on Unix, where the descriptors ride on this
    /// frame as `SCM_RIGHTS`; `WSAPROTOCOL_INFOW` bytes on Windows).
    Listeners {
        generation: u64,
        sockets: Vec<Vec<u8>>,
    },
    /// Generation -> front: my server loop is accepting; take over.
    Ready,
    /// Front -> generation: a newer generation took over; stop accepting and
    /// drain.
    Superseded,
    /// Control client -> front: start a new generation.
    Upgrade,
    /// Front -> control client: generation N is now serving.
    Upgraded { generation: u64 },
    /// Front -> generation: the service is stopping; drain and exit.
    Shutdown,
    /// Either direction: a refusal or failure, human-readable.
    Error { reason: String },
    /// Generation -> front: I was told to stop (SIGTERM/SIGINT from outside); replace me, and
    /// supersede me once the replacement is ready.
    StopRequested,
    /// Front -> generation: the service is stopping after its stop delay; keep accepting
    /// meanwhile, and report stopping to health checks. `Shutdown` follows.
    Stopping,
    /// Front -> control client: the upgrade cannot start now (one is already starting, or
    /// the service is stopping); asking again later may work. Human-readable.
    Busy { reason: String },
    /// Front -> generation: a newer generation took over; stop accepting and tell clients to
    /// leave, but keep the listening sockets and do not finish draining: `Reinstated` or
    /// `Superseded` follows once the newcomer has died or survived its probation window.
    Probation,
    /// Front -> generation on probation: the generation that took over died; accept again.
    Reinstated,
    /// Generation -> front, after `Probation` or `Superseded`: I accept no new connection
    /// from now on. The front reports an upgrade done only after this (or a short timeout),
    /// so whoever hears "upgraded" can count on new connections reaching the new generation.
    SteppedAside,
}

impl Message {
    fn kind(&self) -> u8 {
        match self {
            Message::Hello { .. } => KIND_HELLO,
            Message::Listeners { .. } => KIND_LISTENERS,
            Message::Ready => KIND_READY,
            Message::Superseded => KIND_SUPERSEDED,
            Message::Upgrade => KIND_UPGRADE,
            Message::Upgraded { .. } => KIND_UPGRADED,
            Message::Shutdown => KIND_SHUTDOWN,
            Message::StopRequested => KIND_STOP_REQUESTED,
            Message::Stopping => KIND_STOPPING,
            Message::Busy { .. } => KIND_BUSY,
            Message::Probation => KIND_PROBATION,
            Message::Reinstated => KIND_REINSTATED,
            Message::SteppedAside => KIND_STEPPED_ASIDE,
            Message::Error { .. } => KIND_ERROR,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ProtocolError {
    /// `len` is the frame length the peer announced (or that a message would
    /// need), or, from [`FrameDecoder::push`], how much it was asked to hold.
    TooLarge {
        len: usize,
    },
    UnsupportedVersion {
        got: u8,
    },
    UnknownMessage {
        kind: u8,
    },
    /// What was wrong with an otherwise well-delimited frame.
    Malformed(&'static str),
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::TooLarge { len } => write!(
                f,
                "control frame of {len} bytes exceeds the {MAX_FRAME}-byte limit"
            ),
            ProtocolError::UnsupportedVersion { got } => write!(
                f,
                "peer speaks risefront protocol version {got}, this build speaks {VERSION}"
            ),
            ProtocolError::UnknownMessage { kind } => {
                write!(f, "unknown control message kind {kind}")
            }
            ProtocolError::Malformed(what) => write!(f, "malformed control frame: {what}"),
        }
    }
}

impl error::Error for ProtocolError {}

impl From<ProtocolError> for io::Error {
    fn from(err: ProtocolError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, err)
    }
}

/// Appends one complete frame for `msg` to `out`.
///
/// An `Error` reason too long for one frame is truncated at a char boundary
/// (it is diagnostic text, and a shortened explanation beats none), so such a
/// frame never exceeds [`MAX_FRAME`]. Listeners are never truncated, since
/// dropping a socket would silently serve less than was configured: if they do
/// not fit, this fails with [`ProtocolError::TooLarge`], or with `Malformed`
/// past the 1024-socket limit the decoder enforces. On error `out` is left as
/// it was.
pub(crate) fn encode(msg: &Message, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
    let start = out.len();
    let res = write_frame(msg, out);
    if res.is_err() {
        // Never leave half a frame behind for the caller to send.
        out.truncate(start);
    }
    res
}

fn write_frame(msg: &Message, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
    // Sized up front so an oversized message fails before anything is copied.
    let len = body_len(msg)?;
    out.reserve(LEN_PREFIX + len);
    let len = u32::try_from(len).map_err(|_| ProtocolError::TooLarge { len })?;
    out.extend_from_slice(&len.to_be_bytes());
    out.push(VERSION);
    out.push(msg.kind());
    match msg {
        Message::Hello {
            pid,
            role,
            ready_timeout,
            drain_timeout,
            probation,
        } => {
            out.extend_from_slice(&pid.to_be_bytes());
            out.push(role.to_wire());
            out.extend_from_slice(&millis(*ready_timeout).to_be_bytes());
            out.extend_from_slice(&millis(*drain_timeout).to_be_bytes());
            out.extend_from_slice(&millis(*probation).to_be_bytes());
        }
        Message::Listeners {
            generation,
            sockets,
        } => {
            out.extend_from_slice(&generation.to_be_bytes());
            put_u16_len(out, sockets.len())?;
            for socket in sockets {
                put_u16_len(out, socket.len())?;
                out.extend_from_slice(socket);
            }
        }
        Message::Upgraded { generation } => out.extend_from_slice(&generation.to_be_bytes()),
        Message::Error { reason } | Message::Busy { reason } => {
            let reason = truncate_reason(reason);
            put_u16_len(out, reason.len())?;
            out.extend_from_slice(reason.as_bytes());
        }
        Message::Ready
        | Message::Superseded
        | Message::Upgrade
        | Message::Shutdown
        | Message::StopRequested
        | Message::Stopping
        | Message::Probation
        | Message::Reinstated
        | Message::SteppedAside => {}
    }
    Ok(())
}

/// A duration in whole milliseconds, saturated: "no timeout" (`Duration::MAX`) stays huge
/// instead of wrapping.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Length of the frame body `msg` encodes to, if it is one we may send.
fn body_len(msg: &Message) -> Result<usize, ProtocolError> {
    let payload = match msg {
        Message::Hello { .. } => 4 + 1 + 8 + 8 + 8,
        Message::Listeners { sockets, .. } => {
            if sockets.len() > MAX_SOCKETS {
                return Err(ProtocolError::Malformed("too many sockets"));
            }
            sockets.iter().fold(8 + 2, |acc: usize, socket| {
                acc.saturating_add(2).saturating_add(socket.len())
            })
        }
        Message::Upgraded { .. } => 8,
        Message::Error { reason } | Message::Busy { reason } => 2 + truncate_reason(reason).len(),
        Message::Ready
        | Message::Superseded
        | Message::Upgrade
        | Message::Shutdown
        | Message::StopRequested
        | Message::Stopping
        | Message::Probation
        | Message::Reinstated
        | Message::SteppedAside => 0,
    };
    let len = payload.saturating_add(BODY_HEADER);
    if len > MAX_FRAME {
        return Err(ProtocolError::TooLarge { len });
    }
    Ok(len)
}

fn put_u16_len(out: &mut Vec<u8>, len: usize) -> Result<(), ProtocolError> {
    // `body_len` already rules this out; failing beats writing a wrapped length.
    let len = u16::try_from(len).map_err(|_| ProtocolError::TooLarge { len })?;
    out.extend_from_slice(&len.to_be_bytes());
    Ok(())
}

fn truncate_reason(reason: &str) -> &str {
    if reason.len() <= MAX_REASON {
        return reason;
    }
    // A boundary is at most 3 bytes back, and 0 always is one.
    let end = (0..=MAX_REASON)
        .rev()
        .find(|&i| reason.is_char_boundary(i))
        .unwrap_or(0);
    reason.get(..end).unwrap_or_default()
}

/// Decodes the first frame in `buf`.
///
/// Returns `Ok(None)` while the frame is incomplete, and
/// `Ok(Some((message, consumed)))` once it is whole. A length prefix that
/// announces more than [`MAX_FRAME`] is rejected as soon as the prefix itself
/// is in, without waiting for a body that would have to be buffered.
pub(crate) fn decode(buf: &[u8]) -> Result<Option<(Message, usize)>, ProtocolError> {
    let Some((prefix, rest)) = buf.split_first_chunk::<LEN_PREFIX>() else {
        return Ok(None);
    };
    let len = usize::try_from(u32::from_be_bytes(*prefix)).unwrap_or(usize::MAX);
    if len > MAX_FRAME {
        return Err(ProtocolError::TooLarge { len });
    }
    if len < BODY_HEADER {
        return Err(ProtocolError::Malformed("frame shorter than its header"));
    }
    let Some(body) = rest.get(..len) else {
        return Ok(None);
    };
    Ok(Some((decode_body(body)?, LEN_PREFIX + len)))
}

fn decode_body(body: &[u8]) -> Result<Message, ProtocolError> {
    let mut r = Reader { rest: body };
    let version = u8::from_be_bytes(r.take("frame shorter than its header")?);
    // Before the kind: another release may number its messages differently, so
    // its kind byte tells us nothing.
    if version != VERSION {
        return Err(ProtocolError::UnsupportedVersion { got: version });
    }
    let kind = u8::from_be_bytes(r.take("frame shorter than its header")?);
    let msg = match kind {
        KIND_HELLO => {
            let pid = u32::from_be_bytes(r.take("truncated hello")?);
            let role = Role::from_wire(u8::from_be_bytes(r.take("truncated hello")?))?;
            let ready_timeout = u64::from_be_bytes(r.take("truncated hello")?);
            let drain_timeout = u64::from_be_bytes(r.take("truncated hello")?);
            let probation = u64::from_be_bytes(r.take("truncated hello")?);
            Message::Hello {
                pid,
                role,
                ready_timeout: Duration::from_millis(ready_timeout),
                drain_timeout: Duration::from_millis(drain_timeout),
                probation: Duration::from_millis(probation),
            }
        }
        KIND_LISTENERS => {
            let generation = u64::from_be_bytes(r.take("truncated listeners")?);
            let count = usize::from(u16::from_be_bytes(r.take("truncated listeners")?));
            if count > MAX_SOCKETS {
                return Err(ProtocolError::Malformed("too many sockets"));
            }
            let mut sockets = Vec::with_capacity(count);
            for _ in 0..count {
                let len = usize::from(u16::from_be_bytes(r.take("truncated socket")?));
                sockets.push(r.bytes(len, "truncated socket")?.to_vec());
            }
            Message::Listeners {
                generation,
                sockets,
            }
        }
        KIND_READY => Message::Ready,
        KIND_SUPERSEDED => Message::Superseded,
        KIND_UPGRADE => Message::Upgrade,
        KIND_UPGRADED => Message::Upgraded {
            generation: u64::from_be_bytes(r.take("truncated upgraded")?),
        },
        KIND_SHUTDOWN => Message::Shutdown,
        KIND_STOP_REQUESTED => Message::StopRequested,
        KIND_STOPPING => Message::Stopping,
        KIND_PROBATION => Message::Probation,
        KIND_REINSTATED => Message::Reinstated,
        KIND_STEPPED_ASIDE => Message::SteppedAside,
        KIND_BUSY => Message::Busy {
            reason: read_string(&mut r)?,
        },
        KIND_ERROR => Message::Error {
            reason: read_string(&mut r)?,
        },
        kind => return Err(ProtocolError::UnknownMessage { kind }),
    };
    // Leftovers mean the peer's idea of this message differs from ours; better
    // to say so than to guess.
    if !r.rest.is_empty() {
        return Err(ProtocolError::Malformed("trailing bytes"));
    }
    Ok(msg)
}

/// A `u16`-length-prefixed UTF-8 string.
fn read_string(r: &mut Reader<'_>) -> Result<String, ProtocolError> {
    let len = usize::from(u16::from_be_bytes(r.take("truncated string")?));
    let bytes = r.bytes(len, "truncated string")?;
    let text = str::from_utf8(bytes).map_err(|_| ProtocolError::Malformed("invalid utf-8"))?;
    Ok(text.to_owned())
}

/// Cursor over a frame body whose reads fail, rather than panic, past the end.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], ProtocolError> {
        let (head, rest) = self
            .rest
            .split_first_chunk::<N>()
            .ok_or(ProtocolError::Malformed(what))?;
        self.rest = rest;
        Ok(*head)
    }

    fn bytes(&mut self, len: usize, what: &'static str) -> Result<&'a [u8], ProtocolError> {
        let (head, rest) = self
            .rest
            .split_at_checked(len)
            .ok_or(ProtocolError::Malformed(what))?;
        self.rest = rest;
        Ok(head)
    }
}

/// Incremental decoder for a byte stream: push what was read, pop messages.
///
/// Memory is bounded: at most one partial frame plus one frame's worth of new
/// input (about 128 KiB) is ever held, and [`push`](Self::push) refuses more.
/// A reader that drains [`next_message`](Self::next_message) after every push
/// and reads at most [`MAX_FRAME`] + 4 bytes at a time never hits that limit
/// on a valid stream.
///
/// Errors are not recoverable: the offending bytes stay put and the same error
/// comes back on every call, since a peer that sent them is out of sync or
/// incompatible and the connection should be dropped.
#[derive(Debug, Default)]
pub(crate) struct FrameDecoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already returned as messages. Advancing this instead of
    /// shifting `buf` keeps draining many small frames linear.
    start: usize,
}

impl FrameDecoder {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn push(&mut self, bytes: &[u8]) -> Result<(), ProtocolError> {
        // Drop what was already returned, so the bound covers unread data only.
        let consumed = self.start.min(self.buf.len());
        self.buf.drain(..consumed);
        self.start = 0;

        let len = self.buf.len().saturating_add(bytes.len());
        if len > DECODER_CAPACITY {
            return Err(ProtocolError::TooLarge { len });
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    pub(crate) fn next_message(&mut self) -> Result<Option<Message>, ProtocolError> {
        let pending = self.buf.get(self.start..).unwrap_or_default();
        let Some((msg, consumed)) = decode(pending)? else {
            return Ok(None);
        };
        self.start = self.start.saturating_add(consumed);
        if self.start >= self.buf.len() {
            // The common case: everything read has been handed out, so the
            // next push need not move anything.
            self.buf.clear();
            self.start = 0;
        }
        Ok(Some(msg))
    }

    /// No partial frame buffered: everything pushed has been returned as a
    /// message. At end of stream, `false` means the peer hung up mid-frame.
    pub(crate) fn is_empty(&self) -> bool {
        self.start >= self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    fn frame(msg: &Message) -> Vec<u8> {
        let mut out = Vec::new();
        encode(msg, &mut out).unwrap();
        out
    }

    /// A correctly delimited frame with arbitrary contents.
    fn raw(version: u8, kind: u8, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(BODY_HEADER + payload.len()).unwrap();
        let mut out = len.to_be_bytes().to_vec();
        out.push(version);
        out.push(kind);
        out.extend_from_slice(payload);
        out
    }

    fn every_variant() -> Vec<Message> {
        vec![
            Message::Hello {
                pid: 4242,
                role: Role::Generation,
                ready_timeout: Duration::from_secs(60),
                drain_timeout: Duration::from_millis(1500),
                probation: Duration::from_secs(10),
            },
            Message::Hello {
                pid: u32::MAX,
                role: Role::Control,
                ready_timeout: Duration::ZERO,
                drain_timeout: Duration::from_millis(u64::MAX),
                probation: Duration::ZERO,
            },
            Message::Listeners {
                generation: 0,
                sockets: vec![],
            },
            Message::Listeners {
                generation: 3,
                sockets: vec![vec![], vec![], vec![]],
            },
            Message::Listeners {
                generation: u64::MAX,
                sockets: vec![vec![1, 2, 3], vec![], vec![0xff; 628]],
            },
            Message::Ready,
            Message::Superseded,
            Message::Upgrade,
            Message::Upgraded { generation: 7 },
            Message::Shutdown,
            Message::StopRequested,
            Message::Stopping,
            Message::Probation,
            Message::Reinstated,
            Message::SteppedAside,
            Message::Busy {
                reason: "generation 3 is starting".to_owned(),
            },
            Message::Error {
                reason: String::new(),
            },
            Message::Error {
                reason: "bind: адрес уже используется 🔥 — 端口".to_owned(),
            },
        ]
    }

    fn drain(dec: &mut FrameDecoder, into: &mut Vec<Message>) {
        while let Some(msg) = dec.next_message().unwrap() {
            into.push(msg);
        }
    }

    #[test]
    fn round_trips_every_variant() {
        for msg in every_variant() {
            let bytes = frame(&msg);
            assert_eq!(decode(&bytes), Ok(Some((msg, bytes.len()))));
        }
    }

    #[test]
    fn wire_format_is_fixed() {
        let cases: [(Message, &[u8]); 6] = [
            (
                Message::Hello {
                    pid: 0x0102_0304,
                    role: Role::Generation,
                    ready_timeout: Duration::from_millis(0x0506),
                    drain_timeout: Duration::from_millis(7),
                    probation: Duration::from_millis(0x0809),
                },
                &[
                    0, 0, 0, 31, 4, 1, 1, 2, 3, 4, 1, 0, 0, 0, 0, 0, 0, 5, 6, 0, 0, 0, 0, 0, 0, 0,
                    7, 0, 0, 0, 0, 0, 0, 8, 9,
                ],
            ),
            (
                Message::Hello {
                    pid: 9,
                    role: Role::Control,
                    ready_timeout: Duration::MAX,
                    drain_timeout: Duration::ZERO,
                    probation: Duration::ZERO,
                },
                &[
                    0, 0, 0, 31, 4, 1, 0, 0, 0, 9, 2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                    0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                ],
            ),
            (
                Message::Listeners {
                    generation: 5,
                    sockets: vec![vec![0xaa], vec![]],
                },
                &[
                    0, 0, 0, 17, 4, 2, 0, 0, 0, 0, 0, 0, 0, 5, 0, 2, 0, 1, 0xaa, 0, 0,
                ],
            ),
            (
                Message::Upgraded {
                    generation: 0x0102_0304_0506_0708,
                },
                &[0, 0, 0, 10, 4, 6, 1, 2, 3, 4, 5, 6, 7, 8],
            ),
            (
                Message::Error {
                    reason: "hé".to_owned(),
                },
                &[0, 0, 0, 7, 4, 8, 0, 3, b'h', 0xc3, 0xa9],
            ),
            (Message::Ready, &[0, 0, 0, 2, 4, 3]),
        ];
        for (msg, bytes) in cases {
            assert_eq!(frame(&msg), bytes, "{msg:?}");
        }
        let bare = [
            (Message::Superseded, 4),
            (Message::Upgrade, 5),
            (Message::Shutdown, 7),
            (Message::StopRequested, 9),
            (Message::Stopping, 10),
            (Message::Probation, 12),
            (Message::Reinstated, 13),
            (Message::SteppedAside, 14),
        ];
        for (msg, kind) in bare {
            assert_eq!(frame(&msg), [0, 0, 0, 2, VERSION, kind]);
        }
    }

    #[test]
    fn oversized_prefix_is_refused_before_the_body() {
        assert_eq!(
            decode(&[0xff, 0xff, 0xff, 0xff]),
            Err(ProtocolError::TooLarge { len: 0xffff_ffff })
        );
        let just_over = u32::try_from(MAX_FRAME + 1).unwrap().to_be_bytes();
        assert_eq!(
            decode(&just_over),
            Err(ProtocolError::TooLarge { len: MAX_FRAME + 1 })
        );
        let at_limit = u32::try_from(MAX_FRAME).unwrap().to_be_bytes();
        assert_eq!(decode(&at_limit), Ok(None));
    }

    #[test]
    fn largest_frame_fits_and_one_more_byte_does_not() {
        // Body: version, kind, generation, count, one blob length, the blob.
        let room = MAX_FRAME - (2 + 8 + 2 + 2);
        let msg = Message::Listeners {
            generation: 1,
            sockets: vec![vec![7; room]],
        };
        let bytes = frame(&msg);
        assert_eq!(bytes.len(), LEN_PREFIX + MAX_FRAME);
        assert_eq!(decode(&bytes), Ok(Some((msg, bytes.len()))));

        let mut out = vec![0xee];
        let too_big = Message::Listeners {
            generation: 1,
            sockets: vec![vec![7; room + 1]],
        };
        assert_eq!(
            encode(&too_big, &mut out),
            Err(ProtocolError::TooLarge { len: MAX_FRAME + 1 })
        );
        assert_eq!(out, [0xee], "a failed encode must leave `out` alone");
    }

    #[test]
    fn listeners_too_large_are_refused_not_truncated() {
        let mut out = Vec::new();
        let huge_blob = Message::Listeners {
            generation: 1,
            sockets: vec![vec![0; 100_000]],
        };
        assert!(matches!(
            encode(&huge_blob, &mut out),
            Err(ProtocolError::TooLarge { .. })
        ));
        let many_blobs = Message::Listeners {
            generation: 1,
            sockets: vec![vec![0; 1000]; 100],
        };
        assert!(matches!(
            encode(&many_blobs, &mut out),
            Err(ProtocolError::TooLarge { .. })
        ));
        let too_many = Message::Listeners {
            generation: 1,
            sockets: vec![vec![]; MAX_SOCKETS + 1],
        };
        assert_eq!(
            encode(&too_many, &mut out),
            Err(ProtocolError::Malformed("too many sockets"))
        );
        assert!(out.is_empty());

        let most = Message::Listeners {
            generation: 1,
            sockets: vec![vec![]; MAX_SOCKETS],
        };
        let bytes = frame(&most);
        assert_eq!(decode(&bytes), Ok(Some((most, bytes.len()))));
    }

    #[test]
    fn long_reason_is_truncated_at_a_char_boundary() {
        // "a" then 3-byte chars: the byte limit lands inside a char.
        let reason = format!("a{}", "€".repeat(30_000));
        assert!(!reason.is_char_boundary(MAX_REASON));
        let bytes = frame(&Message::Error {
            reason: reason.clone(),
        });
        assert!(bytes.len() <= LEN_PREFIX + MAX_FRAME);
        let Ok(Some((Message::Error { reason: got }, used))) = decode(&bytes) else {
            panic!("truncated reason did not decode");
        };
        assert_eq!(used, bytes.len());
        assert!(reason.starts_with(&got));
        assert!(got.len() <= MAX_REASON && got.len() > MAX_REASON - 4);

        let exact = "x".repeat(MAX_REASON);
        let bytes = frame(&Message::Error {
            reason: exact.clone(),
        });
        assert_eq!(bytes.len(), LEN_PREFIX + MAX_FRAME);
        assert_eq!(
            decode(&bytes).unwrap().unwrap().0,
            Message::Error { reason: exact }
        );
    }

    #[test]
    fn wrong_version_is_reported_before_kind() {
        assert_eq!(
            decode(&raw(7, KIND_HELLO, &[0, 0, 0, 1, 1])),
            Err(ProtocolError::UnsupportedVersion { got: 7 })
        );
        assert_eq!(
            decode(&raw(0, 200, &[])),
            Err(ProtocolError::UnsupportedVersion { got: 0 })
        );
    }

    #[test]
    fn unknown_kind() {
        for kind in [0, 15, 255] {
            assert_eq!(
                decode(&raw(VERSION, kind, &[])),
                Err(ProtocolError::UnknownMessage { kind })
            );
        }
    }

    #[test]
    fn truncated_payload_inside_a_complete_frame() {
        let cases: [(u8, &[u8], &str); 6] = [
            (KIND_HELLO, &[0, 0, 0, 1], "truncated hello"),
            (
                KIND_LISTENERS,
                &[0, 0, 0, 0, 0, 0, 0, 1, 0],
                "truncated listeners",
            ),
            (
                KIND_LISTENERS,
                &[0, 0, 0, 0, 0, 0, 0, 1, 0, 1],
                "truncated socket",
            ),
            (
                KIND_LISTENERS,
                &[0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 4, 1, 2, 3],
                "truncated socket",
            ),
            (KIND_UPGRADED, &[0, 0, 0, 0, 0, 0, 0], "truncated upgraded"),
            (KIND_ERROR, &[0, 5, b'a', b'b'], "truncated string"),
        ];
        for (kind, payload, what) in cases {
            assert_eq!(
                decode(&raw(VERSION, kind, payload)),
                Err(ProtocolError::Malformed(what)),
                "kind {kind}"
            );
        }
    }

    #[test]
    fn trailing_bytes() {
        let cases: [(u8, &[u8]); 4] = [
            (KIND_READY, &[0]),
            (
                KIND_HELLO,
                &[
                    0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0,
                    0, 0, 1, 9,
                ],
            ),
            (KIND_UPGRADED, &[0, 0, 0, 0, 0, 0, 0, 1, 0]),
            (KIND_ERROR, &[0, 1, b'a', b'b']),
        ];
        for (kind, payload) in cases {
            assert_eq!(
                decode(&raw(VERSION, kind, payload)),
                Err(ProtocolError::Malformed("trailing bytes")),
                "kind {kind}"
            );
        }
    }

    #[test]
    fn a_version_1_hello_is_refused_by_version_not_misread() {
        // What a generation built against risefront's first protocol sends.
        assert_eq!(
            decode(&raw(1, KIND_HELLO, &[0, 0, 0, 9, 1])),
            Err(ProtocolError::UnsupportedVersion { got: 1 })
        );
    }

    #[test]
    fn bad_role() {
        for role in [0, 3, 255] {
            assert_eq!(
                decode(&raw(VERSION, KIND_HELLO, &[0, 0, 0, 1, role])),
                Err(ProtocolError::Malformed("bad role"))
            );
        }
    }

    #[test]
    fn invalid_utf8() {
        assert_eq!(
            decode(&raw(VERSION, KIND_ERROR, &[0, 2, 0xc3, 0x28])),
            Err(ProtocolError::Malformed("invalid utf-8"))
        );
    }

    #[test]
    fn too_many_sockets_on_the_wire() {
        let mut payload = vec![0; 8];
        payload.extend_from_slice(&u16::try_from(MAX_SOCKETS + 1).unwrap().to_be_bytes());
        payload.extend(std::iter::repeat_n(0, 2 * (MAX_SOCKETS + 1)));
        assert_eq!(
            decode(&raw(VERSION, KIND_LISTENERS, &payload)),
            Err(ProtocolError::Malformed("too many sockets"))
        );
    }

    #[test]
    fn frames_shorter_than_their_header() {
        let short = Err(ProtocolError::Malformed("frame shorter than its header"));
        assert_eq!(decode(&[0, 0, 0, 0]), short);
        assert_eq!(decode(&[0, 0, 0, 1]), short, "known from the prefix alone");
        assert_eq!(decode(&[0, 0, 0, 1, VERSION]), short);
    }

    #[test]
    fn every_prefix_of_a_frame_is_incomplete() {
        for msg in every_variant() {
            let bytes = frame(&msg);
            for end in 0..bytes.len() {
                assert_eq!(decode(&bytes[..end]), Ok(None), "{msg:?} cut at {end}");
            }
        }
    }

    #[test]
    fn decode_takes_only_the_first_frame() {
        let first = frame(&Message::Ready);
        let mut bytes = first.clone();
        bytes.extend(frame(&Message::Upgraded { generation: 2 }));
        assert_eq!(decode(&bytes), Ok(Some((Message::Ready, first.len()))));
    }

    #[test]
    fn decoder_byte_at_a_time_matches_all_at_once() {
        let msgs = every_variant();
        let mut stream = Vec::new();
        for msg in &msgs {
            encode(msg, &mut stream).unwrap();
        }

        let mut whole = FrameDecoder::new();
        whole.push(&stream).unwrap();
        let mut at_once = Vec::new();
        drain(&mut whole, &mut at_once);
        assert!(whole.is_empty());

        let mut trickle = FrameDecoder::default();
        let mut one_by_one = Vec::new();
        for byte in &stream {
            trickle.push(std::slice::from_ref(byte)).unwrap();
            drain(&mut trickle, &mut one_by_one);
        }
        assert!(trickle.is_empty());

        assert_eq!(at_once, msgs);
        assert_eq!(one_by_one, msgs);
    }

    #[test]
    fn decoder_reports_a_partial_frame() {
        let mut dec = FrameDecoder::new();
        assert!(dec.is_empty());
        let bytes = frame(&Message::Shutdown);
        dec.push(&bytes[..3]).unwrap();
        assert!(!dec.is_empty());
        assert_eq!(dec.next_message(), Ok(None));
        dec.push(&bytes[3..]).unwrap();
        assert!(!dec.is_empty(), "a whole frame not yet returned counts");
        assert_eq!(dec.next_message(), Ok(Some(Message::Shutdown)));
        assert!(dec.is_empty());
    }

    #[test]
    fn decoder_refuses_to_buffer_beyond_its_bound() {
        let mut dec = FrameDecoder::new();
        assert_eq!(
            dec.push(&vec![0; DECODER_CAPACITY + 1]),
            Err(ProtocolError::TooLarge {
                len: DECODER_CAPACITY + 1
            })
        );
        assert!(dec.is_empty(), "a refused push buffers nothing");

        dec.push(&vec![0; DECODER_CAPACITY - 1]).unwrap();
        dec.push(&[0]).unwrap();
        assert_eq!(
            dec.push(&[0]),
            Err(ProtocolError::TooLarge {
                len: DECODER_CAPACITY + 1
            })
        );
    }

    #[test]
    fn decoder_bound_admits_a_valid_stream_read_in_big_chunks() {
        // Worst case for the bound: a maximal frame missing its last byte is
        // pending when a maximal read arrives.
        let big = Message::Error {
            reason: "z".repeat(MAX_REASON),
        };
        let mut stream = Vec::new();
        for _ in 0..5 {
            encode(&big, &mut stream).unwrap();
            encode(&Message::Ready, &mut stream).unwrap();
        }
        let mut dec = FrameDecoder::new();
        let mut got = Vec::new();
        let (first, rest) = stream.split_at(LEN_PREFIX + MAX_FRAME - 1);
        dec.push(first).unwrap();
        drain(&mut dec, &mut got);
        for chunk in rest.chunks(LEN_PREFIX + MAX_FRAME) {
            dec.push(chunk).unwrap();
            drain(&mut dec, &mut got);
        }
        assert!(dec.is_empty());
        assert_eq!(got.len(), 10);
        assert!(
            got.chunks(2)
                .all(|pair| pair == [big.clone(), Message::Ready])
        );
    }

    #[test]
    fn decoder_refuses_a_hostile_prefix_at_once_and_keeps_refusing() {
        let mut dec = FrameDecoder::new();
        dec.push(&[0xff, 0xff, 0xff, 0xff]).unwrap();
        let err = Err(ProtocolError::TooLarge { len: 0xffff_ffff });
        assert_eq!(dec.next_message(), err);
        assert_eq!(dec.next_message(), err);
    }

    #[test]
    fn error_messages_say_what_failed() {
        assert_eq!(
            ProtocolError::TooLarge { len: 0xffff_ffff }.to_string(),
            "control frame of 4294967295 bytes exceeds the 65536-byte limit"
        );
        assert_eq!(
            ProtocolError::UnsupportedVersion { got: 7 }.to_string(),
            "peer speaks risefront protocol version 7, this build speaks 4"
        );
        assert_eq!(
            ProtocolError::UnknownMessage { kind: 42 }.to_string(),
            "unknown control message kind 42"
        );
        assert_eq!(
            ProtocolError::Malformed("bad role").to_string(),
            "malformed control frame: bad role"
        );
    }

    #[test]
    fn converts_to_invalid_data_io_error() {
        let err = io::Error::from(ProtocolError::UnsupportedVersion { got: 1 });
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(
            err.to_string(),
            "peer speaks risefront protocol version 1, this build speaks 4"
        );
        let inner = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<ProtocolError>());
        assert_eq!(inner, Some(&ProtocolError::UnsupportedVersion { got: 1 }));
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        let role = prop_oneof![Just(Role::Generation), Just(Role::Control)];
        prop_oneof![
            (any::<u32>(), role, any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
                |(pid, role, ready, drain, probation)| {
                    Message::Hello {
                        pid,
                        role,
                        ready_timeout: Duration::from_millis(ready),
                        drain_timeout: Duration::from_millis(drain),
                        probation: Duration::from_millis(probation),
                    }
                }
            ),
            (any::<u64>(), vec(vec(any::<u8>(), 0..64), 0..8)).prop_map(|(generation, sockets)| {
                Message::Listeners {
                    generation,
                    sockets,
                }
            }),
            Just(Message::Ready),
            Just(Message::Superseded),
            Just(Message::Upgrade),
            any::<u64>().prop_map(|generation| Message::Upgraded { generation }),
            Just(Message::Shutdown),
            Just(Message::StopRequested),
            Just(Message::Stopping),
            Just(Message::Probation),
            Just(Message::Reinstated),
            Just(Message::SteppedAside),
            any::<String>().prop_map(|reason| Message::Busy { reason }),
            any::<String>().prop_map(|reason| Message::Error { reason }),
        ]
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in vec(any::<u8>(), 0..4096)) {
            if let Ok(Some((_, used))) = decode(&bytes) {
                prop_assert!(used <= bytes.len());
            }
        }

        /// Random bytes almost always die at the length check; this reaches
        /// the payload parsers.
        #[test]
        fn decode_never_panics_on_well_delimited_garbage(
            version in prop_oneof![Just(VERSION), any::<u8>()],
            kind in 0u8..10,
            payload in vec(any::<u8>(), 0..512),
        ) {
            let bytes = raw(version, kind, &payload);
            if let Ok(Some((_, used))) = decode(&bytes) {
                prop_assert_eq!(used, bytes.len());
            }
        }

        #[test]
        fn encode_then_decode_round_trips(msg in arb_message()) {
            let bytes = frame(&msg);
            prop_assert!(bytes.len() <= LEN_PREFIX + MAX_FRAME);
            prop_assert_eq!(decode(&bytes), Ok(Some((msg, bytes.len()))));
        }

        #[test]
        fn decoder_yields_the_same_messages_under_any_chunking(
            msgs in vec(arb_message(), 1..8),
            sizes in vec(1usize..64, 1..16),
        ) {
            let mut stream = Vec::new();
            for msg in &msgs {
                encode(msg, &mut stream).unwrap();
            }
            let mut dec = FrameDecoder::new();
            let mut got = Vec::new();
            let mut rest = stream.as_slice();
            for size in sizes.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (chunk, tail) = rest.split_at((*size).min(rest.len()));
                rest = tail;
                dec.push(chunk).unwrap();
                drain(&mut dec, &mut got);
            }
            prop_assert!(dec.is_empty());
            prop_assert_eq!(got, msgs);
        }

        #[test]
        fn decoder_never_panics(chunks in vec(vec(any::<u8>(), 0..512), 0..8)) {
            let mut dec = FrameDecoder::new();
            for chunk in &chunks {
                if dec.push(chunk).is_err() {
                    break;
                }
                while let Ok(Some(_)) = dec.next_message() {}
            }
        }
    }
}
