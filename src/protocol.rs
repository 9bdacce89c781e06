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
//! |      |              | saturated), `u16` len + the program it runs (0: not said; see      |
//! |      |              | `program.rs`), the addresses it asked for (see `targets.rs`)       |
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
//! | 15   | `HandoffTo`  | other generation's pid `u32`, `u16` len, pipe name (UTF-8)         |
//! | 16   | `HandoffFrom` | other generation's pid `u32`, `u16` len, pipe name (UTF-8)        |
//! | 17   | `Connections` | count `u16` (≤ [`MAX_BATCH`]), count × (`u16` len, socket bytes, |
//! |      |              | `u16` len, unread bytes)                                           |
//! | 18   | `Received`   | count `u16` (≤ [`MAX_BATCH`]), count × `u8` (1 taken, 0 refused)   |
//! | 19   | `Ping`       |                                                                    |
//! | 20   | `Pong`       |                                                                    |
//!
//! An `Error` answering `Upgrade` may end with a line [`STDERR_TAIL`] and, after it, the last
//! lines the failed generation wrote to stderr, one per line: plain text, so a client of
//! another release shows it as part of the reason.
//!
//! `HandoffTo` and `HandoffFrom` introduce a superseded generation to the one that took over.
//! On Unix each carries one end of a socket pair the front made (`SCM_RIGHTS`) and an empty
//! pipe name; on Windows they name a private pipe, which the new generation creates and the
//! old one connects to, each checking the other's pid, and the old one duplicates connections
//! for the new one's pid (`WSADuplicateSocketW`).
//! `Connections` and `Received` travel on that pair, never on the control channel: idle
//! HTTP/1 connections move from the old generation to the new one over it (see
//! `src/transfer`).
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

/// The line in an upgrade's `Error` after which come the failed generation's last lines on
/// stderr.
pub(crate) const STDERR_TAIL: &str = "its last lines on stderr:";

/// Protocol revision. Bump it on any change to the layout above.
/// Version 2 added the sender's ready and drain timeouts to `Hello`, so that the front
/// enforces a new build's own deadlines rather than its own, and the `StopRequested` and
/// `Stopping` messages. Version 3 added the sender's probation window to `Hello`, and the
/// `Probation` and `Reinstated` messages. Version 4 added `SteppedAside`, which the front
/// waits for before it reports an upgrade done. Version 5 added the connection handoff:
/// `HandoffTo`, `HandoffFrom`, `Connections` and `Received`, and the liveness check of a
/// generation that took over from one on probation: `Ping` and `Pong`. Version 6 added the
/// program a generation runs to `Hello`, so that the front starts the newest build. Version 7
/// added the addresses a generation asked for to `Hello`, so that it gets exactly those.
/// Version 8 added `ReExec`, with which a control client has the front re-execute itself into
/// another build.
///
/// `RISEFRONT_PROTOCOL_NEXT`, set when the crate is compiled, makes a build one version ahead
/// (laid out as this one): for the tests of a front that re-executes across a protocol change,
/// never for a release.
pub(crate) const VERSION: u8 = match option_env!("RISEFRONT_PROTOCOL_NEXT") {
    Some(_) => 9,
    None => 8,
};

/// The oldest version the front still reads, and answers in: one back, so that the generations
/// and control clients of the previous release (a rollback, an old `--upgrade`, an old
/// `risefrontctl`) keep working with a front of this one, and so does a connection handoff
/// between generations of the two. Only the front's side (and the receiving side of a handoff)
/// reads older frames: a generation or client that meets an older front reports the mismatch.
/// Version 7 differs from 8 only in having no `ReExec`.
pub(crate) const OLDEST_VERSION: u8 = VERSION - 1;

/// The first version with `ReExec`: a front of this version or later can re-execute into a
/// build of the next.
pub(crate) const REEXEC_SINCE: u8 = 8;

/// The first version whose `Hello` carries the addresses.
const HELLO_ADDRESSES_SINCE: u8 = 7;

/// Largest frame body accepted (after the 4-byte length prefix).
pub(crate) const MAX_FRAME: usize = 64 * 1024;

const LEN_PREFIX: usize = 4;

/// `version` and `kind`, which every body starts with.
const BODY_HEADER: usize = 2;

/// The count is read before the blobs, so without a cap a 14-byte frame could
/// make us reserve room for 65535 entries. No real service has this many
/// listeners.
const MAX_SOCKETS: usize = 1024;

/// Longest pipe name a handoff introduction may carry (Windows caps pipe names at 256
/// characters).
const MAX_PIPE_NAME: usize = 512;

/// Most connections one `Connections` frame moves (and so most descriptors it carries): far
/// below the 253 that `SCM_RIGHTS` takes in one message, and what the control channel's
/// receive buffer has room for.
pub(crate) const MAX_BATCH: usize = 64;

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
const KIND_HANDOFF_TO: u8 = 15;
const KIND_HANDOFF_FROM: u8 = 16;
const KIND_CONNECTIONS: u8 = 17;
const KIND_RECEIVED: u8 = 18;
const KIND_PING: u8 = 19;
const KIND_PONG: u8 = 20;
const KIND_REEXEC: u8 = 21;

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
        /// The program a generation runs (none from a control client, or one too large to
        /// describe): what the front starts next while this generation serves.
        program: Option<Program>,
        /// The addresses a generation asked `bind` for, in its order (none from a control
        /// client): the sockets it is handed, bound by the front if they are new.
        addresses: Vec<crate::net::Target>,
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
    /// Front -> a generation about to be told `Probation` or `Superseded` (or still
    /// draining): hand your idle connections to the generation that took over (process `pid`), on the socket
    /// riding on this frame (Unix) or the pipe `pipe` it creates (Windows).
    HandoffTo { pid: u32, pipe: String },
    /// Front -> the generation that took over: connections from the generation `pid` arrive on
    /// the socket riding on this frame (Unix) or on the pipe `pipe`, to create (Windows).
    HandoffFrom { pid: u32, pipe: String },
    /// Old generation -> new, on a handoff socket: connections to serve from now on.
    Connections { moved: Vec<Moved> },
    /// New generation -> old, on a handoff socket: for each connection of the oldest
    /// unanswered `Connections`, in order, whether it was taken (the sender never touches it
    /// again) or refused (the sender goes on serving it).
    Received { taken: Vec<bool> },
    /// Front -> the generation that took over from one on probation: say you are alive.
    /// A build that hangs after taking over (stopped, deadlocked runtime) keeps the traffic
    /// and answers nothing; the front then treats it as dead and reinstates its predecessor.
    Ping,
    /// Generation -> front: the answer to the oldest unanswered `Ping`.
    Pong,
    /// Control client -> front: re-execute yourself into `program` (none: the program the
    /// serving generation runs), keeping your pid, sockets and generations. Answered
    /// `Upgraded` with the serving generation by the new image, or `Busy` or `Error`.
    ReExec { program: Option<Program> },
}

/// One connection in a `Connections` frame.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Moved {
    /// Empty on Unix, where the descriptor rides on the frame (in order, one per connection);
    /// `WSAPROTOCOL_INFOW` bytes on Windows.
    pub(crate) socket: Vec<u8>,
    /// Bytes the old generation read from the connection that no request consumed yet (the
    /// start of the client's next request): the new generation reads them first.
    pub(crate) unread: Vec<u8>,
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
            Message::HandoffTo { .. } => KIND_HANDOFF_TO,
            Message::HandoffFrom { .. } => KIND_HANDOFF_FROM,
            Message::Connections { .. } => KIND_CONNECTIONS,
            Message::Received { .. } => KIND_RECEIVED,
            Message::Ping => KIND_PING,
            Message::Pong => KIND_PONG,
            Message::ReExec { .. } => KIND_REEXEC,
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

/// The protocol version of a peer whose frame `e` could not be read for that reason: a peer
/// of another release, not a broken one.
pub(crate) fn other_version(e: &io::Error) -> Option<u8> {
    match e.get_ref()?.downcast_ref::<ProtocolError>()? {
        ProtocolError::UnsupportedVersion { got } => Some(*got),
        _ => None,
    }
}

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
#[cfg(any(test, fuzzing))]
pub(crate) fn encode(msg: &Message, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
    encode_as(msg, VERSION, out)
}

/// `encode` in protocol `version`, [`OLDEST_VERSION`] or later: how the front answers a peer
/// of the previous release. Fields an older version does not have are left out.
pub(crate) fn encode_as(
    msg: &Message,
    version: u8,
    out: &mut Vec<u8>,
) -> Result<(), ProtocolError> {
    if !(OLDEST_VERSION..=VERSION).contains(&version) {
        return Err(ProtocolError::UnsupportedVersion { got: version });
    }
    let start = out.len();
    let res = write_frame(msg, version, out);
    if res.is_err() {
        // Never leave half a frame behind for the caller to send.
        out.truncate(start);
    }
    res
}

fn write_frame(msg: &Message, version: u8, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
    // Sized up front so an oversized message fails before anything is copied.
    let len = body_len(msg, version)?;
    out.reserve(LEN_PREFIX + len);
    let len = u32::try_from(len).map_err(|_| ProtocolError::TooLarge { len })?;
    out.extend_from_slice(&len.to_be_bytes());
    out.push(version);
    out.push(msg.kind());
    match msg {
        Message::Hello {
            pid,
            role,
            ready_timeout,
            drain_timeout,
            probation,
            program,
            addresses,
        } => {
            out.extend_from_slice(&pid.to_be_bytes());
            out.push(role.to_wire());
            out.extend_from_slice(&millis(*ready_timeout).to_be_bytes());
            out.extend_from_slice(&millis(*drain_timeout).to_be_bytes());
            out.extend_from_slice(&millis(*probation).to_be_bytes());
            let program = program_wire(program.as_ref());
            put_u16_len(out, program.len())?;
            out.extend_from_slice(&program);
            if version >= HELLO_ADDRESSES_SINCE {
                out.extend_from_slice(&targets_wire(addresses));
            }
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
        Message::ReExec { program } => {
            let program = program_wire(program.as_ref());
            put_u16_len(out, program.len())?;
            out.extend_from_slice(&program);
        }
        Message::Error { reason } | Message::Busy { reason } => {
            let reason = truncate_reason(reason);
            put_u16_len(out, reason.len())?;
            out.extend_from_slice(reason.as_bytes());
        }
        Message::Connections { moved } => {
            put_u16_len(out, moved.len())?;
            for m in moved {
                put_u16_len(out, m.socket.len())?;
                out.extend_from_slice(&m.socket);
                put_u16_len(out, m.unread.len())?;
                out.extend_from_slice(&m.unread);
            }
        }
        Message::Received { taken } => {
            put_u16_len(out, taken.len())?;
            out.extend(taken.iter().map(|t| u8::from(*t)));
        }
        Message::HandoffTo { pid, pipe } | Message::HandoffFrom { pid, pipe } => {
            out.extend_from_slice(&pid.to_be_bytes());
            put_u16_len(out, pipe.len())?;
            out.extend_from_slice(pipe.as_bytes());
        }
        Message::Ready
        | Message::Superseded
        | Message::Upgrade
        | Message::Shutdown
        | Message::StopRequested
        | Message::Stopping
        | Message::Probation
        | Message::Reinstated
        | Message::SteppedAside
        | Message::Ping
        | Message::Pong => {}
    }
    Ok(())
}

/// A duration in whole milliseconds, saturated: "no timeout" (`Duration::MAX`) stays huge
/// instead of wrapping.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Length of the frame body `msg` encodes to, if it is one we may send.
fn body_len(msg: &Message, version: u8) -> Result<usize, ProtocolError> {
    let payload = match msg {
        Message::Hello {
            program, addresses, ..
        } => {
            let addresses = if version >= HELLO_ADDRESSES_SINCE {
                targets_wire(addresses).len()
            } else {
                0
            };
            4 + 1 + 8 + 8 + 8 + 2 + program_wire(program.as_ref()).len() + addresses
        }
        Message::Listeners { sockets, .. } => {
            if sockets.len() > MAX_SOCKETS {
                return Err(ProtocolError::Malformed("too many sockets"));
            }
            sockets.iter().fold(8 + 2, |acc: usize, socket| {
                acc.saturating_add(2).saturating_add(socket.len())
            })
        }
        Message::Upgraded { .. } => 8,
        Message::ReExec { program } => {
            if version < REEXEC_SINCE {
                return Err(ProtocolError::UnknownMessage { kind: KIND_REEXEC });
            }
            2 + program_wire(program.as_ref()).len()
        }
        Message::Error { reason } | Message::Busy { reason } => 2 + truncate_reason(reason).len(),
        Message::Connections { moved } => {
            if moved.len() > MAX_BATCH {
                return Err(ProtocolError::Malformed("too many connections"));
            }
            moved.iter().fold(2, |acc: usize, m| {
                acc.saturating_add(4)
                    .saturating_add(m.socket.len())
                    .saturating_add(m.unread.len())
            })
        }
        Message::Received { taken } => {
            if taken.len() > MAX_BATCH {
                return Err(ProtocolError::Malformed("too many connections"));
            }
            2 + taken.len()
        }
        Message::HandoffTo { pipe, .. } | Message::HandoffFrom { pipe, .. } => {
            if pipe.len() > MAX_PIPE_NAME {
                return Err(ProtocolError::Malformed("pipe name too long"));
            }
            4 + 2 + pipe.len()
        }
        Message::Ready
        | Message::Superseded
        | Message::Upgrade
        | Message::Shutdown
        | Message::StopRequested
        | Message::Stopping
        | Message::Probation
        | Message::Reinstated
        | Message::SteppedAside
        | Message::Ping
        | Message::Pong => 0,
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
#[cfg(any(test, fuzzing))]
pub(crate) fn decode(buf: &[u8]) -> Result<Option<(Message, usize)>, ProtocolError> {
    Ok(decode_from(buf, VERSION)?.map(|(msg, consumed, _)| (msg, consumed)))
}

/// `decode`, reading versions `oldest` (at least [`OLDEST_VERSION`]) to [`VERSION`]; also
/// returns the frame's version.
pub(crate) fn decode_from(
    buf: &[u8],
    oldest: u8,
) -> Result<Option<(Message, usize, u8)>, ProtocolError> {
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
    let (msg, version) = decode_body(body, oldest)?;
    Ok(Some((msg, LEN_PREFIX + len, version)))
}

fn decode_body(body: &[u8], oldest: u8) -> Result<(Message, u8), ProtocolError> {
    let mut r = Reader { rest: body };
    let version = u8::from_be_bytes(r.take("frame shorter than its header")?);
    // Before the kind: another release may number its messages differently, so
    // its kind byte tells us nothing.
    if !(oldest.max(OLDEST_VERSION)..=VERSION).contains(&version) {
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
            let len = usize::from(u16::from_be_bytes(r.take("truncated hello")?));
            let program = match r.bytes(len, "truncated hello")? {
                [] => None,
                described => Some(Program::from_wire(described)?),
            };
            let addresses = if version >= HELLO_ADDRESSES_SINCE {
                targets::from_wire(&mut r)?
            } else {
                Vec::new()
            };
            Message::Hello {
                pid,
                role,
                ready_timeout: Duration::from_millis(ready_timeout),
                drain_timeout: Duration::from_millis(drain_timeout),
                probation: Duration::from_millis(probation),
                program,
                addresses,
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
        KIND_HANDOFF_TO | KIND_HANDOFF_FROM => {
            let pid = u32::from_be_bytes(r.take("truncated handoff")?);
            let pipe = read_string(&mut r)?;
            if pipe.len() > MAX_PIPE_NAME {
                return Err(ProtocolError::Malformed("pipe name too long"));
            }
            if kind == KIND_HANDOFF_TO {
                Message::HandoffTo { pid, pipe }
            } else {
                Message::HandoffFrom { pid, pipe }
            }
        }
        KIND_PING => Message::Ping,
        KIND_PONG => Message::Pong,
        KIND_REEXEC if version >= REEXEC_SINCE => {
            let len = usize::from(u16::from_be_bytes(r.take("truncated re-exec")?));
            let program = match r.bytes(len, "truncated re-exec")? {
                [] => None,
                described => Some(Program::from_wire(described)?),
            };
            Message::ReExec { program }
        }
        KIND_CONNECTIONS => {
            let count = usize::from(u16::from_be_bytes(r.take("truncated connections")?));
            if count > MAX_BATCH {
                return Err(ProtocolError::Malformed("too many connections"));
            }
            let mut moved = Vec::with_capacity(count);
            for _ in 0..count {
                let len = usize::from(u16::from_be_bytes(r.take("truncated connection")?));
                let socket = r.bytes(len, "truncated connection")?.to_vec();
                let len = usize::from(u16::from_be_bytes(r.take("truncated connection")?));
                let unread = r.bytes(len, "truncated connection")?.to_vec();
                moved.push(Moved { socket, unread });
            }
            Message::Connections { moved }
        }
        KIND_RECEIVED => {
            let count = usize::from(u16::from_be_bytes(r.take("truncated received")?));
            if count > MAX_BATCH {
                return Err(ProtocolError::Malformed("too many connections"));
            }
            let taken = r
                .bytes(count, "truncated received")?
                .iter()
                .map(|b| match b {
                    0 => Ok(false),
                    1 => Ok(true),
                    _ => Err(ProtocolError::Malformed("bad received flag")),
                })
                .collect::<Result<_, _>>()?;
            Message::Received { taken }
        }
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
    Ok((msg, version))
}

/// A program's wire form; empty when there is none to describe or it is too large to.
fn program_wire(program: Option<&Program>) -> Vec<u8> {
    program.and_then(Program::to_wire).unwrap_or_default()
}

fn targets_wire(addresses: &[crate::net::Target]) -> Vec<u8> {
    targets::to_wire(addresses).unwrap_or_else(|| targets::NOT_SAID.to_vec())
}

/// Addresses in their wire form outside a frame: what a front's re-exec carries.
#[cfg(unix)]
pub(crate) fn targets_to_bytes(addresses: &[crate::net::Target]) -> Option<Vec<u8>> {
    targets::to_wire(addresses)
}

/// Reads what [`targets_to_bytes`] wrote.
#[cfg(unix)]
pub(crate) fn targets_from_bytes(bytes: &[u8]) -> Result<Vec<crate::net::Target>, ProtocolError> {
    let mut r = Reader { rest: bytes };
    let addresses = targets::from_wire(&mut r)?;
    if !r.rest.is_empty() {
        return Err(ProtocolError::Malformed("trailing bytes"));
    }
    Ok(addresses)
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
#[derive(Debug)]
pub(crate) struct FrameDecoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already returned as messages. Advancing this instead of
    /// shifting `buf` keeps draining many small frames linear.
    start: usize,
    /// The oldest version read: [`VERSION`], or [`OLDEST_VERSION`] on the front's side.
    oldest: u8,
    /// The version of the last message returned.
    version: Option<u8>,
}

impl FrameDecoder {
    /// A decoder of this version's frames only.
    pub(crate) fn new() -> Self {
        FrameDecoder {
            buf: Vec::new(),
            start: 0,
            oldest: VERSION,
            version: None,
        }
    }

    /// A decoder that also reads frames one version back ([`OLDEST_VERSION`]).
    pub(crate) fn reading_one_version_back() -> Self {
        FrameDecoder {
            oldest: OLDEST_VERSION,
            ..Self::new()
        }
    }

    /// The version of the last message returned, if any was.
    pub(crate) fn version(&self) -> Option<u8> {
        self.version
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
        let Some((msg, consumed, version)) = decode_from(pending, self.oldest)? else {
            return Ok(None);
        };
        self.version = Some(version);
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

mod program;
mod targets;

pub(crate) use program::Program;

#[cfg(test)]
mod tests;
