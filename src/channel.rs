//! A control connection carrying framed [`Message`]s, and on Unix the listening sockets that
//! ride along with a `Listeners` frame.

use std::io;

#[cfg(unix)]
use std::os::fd::{AsFd, OwnedFd};

use crate::handoff::{self, Stream};
use crate::protocol::{self, FrameDecoder, Message};
use crate::socket::Socket;

pub(crate) struct Channel {
    stream: Stream,
    decoder: FrameDecoder,
    /// The peer's version, from its first message: ours, or the previous one for a peer of the
    /// previous release (when one version back is read). Ours until it has said anything.
    version: Option<u8>,
    /// Descriptors received and not yet claimed by a `Listeners` frame.
    #[cfg(unix)]
    fds: Vec<OwnedFd>,
    /// Only a generation expects descriptors; the front drops any a peer sends it.
    #[cfg(unix)]
    accept_fds: bool,
    buf: Box<[u8]>,
}

impl Channel {
    pub(crate) fn new(stream: Stream, accept_fds: bool) -> Self {
        // On Windows sockets arrive as bytes inside the frame, so there is nothing to refuse.
        #[cfg(not(unix))]
        let _ = accept_fds;
        Channel {
            stream,
            decoder: FrameDecoder::new(),
            version: None,
            #[cfg(unix)]
            fds: Vec::new(),
            #[cfg(unix)]
            accept_fds,
            buf: vec![0; 8 * 1024].into_boxed_slice(),
        }
    }

    /// Also reads a peer of the previous release, and answers it in its version
    /// ([`protocol::OLDEST_VERSION`]): the front's side of a control connection, and the
    /// receiving side of a connection handoff.
    pub(crate) fn reading_one_version_back(mut self) -> Self {
        self.decoder = FrameDecoder::reading_one_version_back();
        self
    }

    /// A connection whose peer already spoke, in `version`: the front's side of a control
    /// connection that crossed a re-exec of the front (see [`Channel::into_parts`]).
    #[cfg(unix)]
    pub(crate) fn resumed(stream: Stream, version: Option<u8>) -> Self {
        let mut channel = Channel::new(stream, false).reading_one_version_back();
        channel.version = version;
        channel
    }

    /// The connection and the version its peer speaks, if nothing of a frame is waiting to be
    /// read (else the channel back, unchanged): what crosses a re-exec of the front.
    #[cfg(unix)]
    pub(crate) fn into_parts(self) -> Result<(Stream, Option<u8>), Box<Self>> {
        if !self.decoder.is_empty() || !self.fds.is_empty() {
            return Err(Box::new(self));
        }
        Ok((self.stream, self.version))
    }

    /// A connection to a front of the previous release, spoken in its `version` (one back):
    /// how a build of a newer protocol asks such a front to re-execute into it.
    pub(crate) fn speaking(mut self, version: u8) -> Self {
        self.decoder = FrameDecoder::reading_one_version_back();
        self.version = Some(version);
        self
    }

    /// The version this channel writes in: the peer's.
    fn speaks(&self) -> u8 {
        self.version.unwrap_or(protocol::VERSION)
    }

    /// Reads the next message; `Ok(None)` at a clean end of stream.
    ///
    /// Cancel-safe: bytes already read stay in the decoder, so this can sit in a `select!`.
    pub(crate) async fn recv(&mut self) -> io::Result<Option<Message>> {
        loop {
            if let Some(msg) = self.decoder.next_message()? {
                // A peer speaks one version for the whole connection: its first message's.
                match (self.version, self.decoder.version()) {
                    (Some(first), Some(now)) if now != first => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "risefront: control peer switched from protocol version {first} to {now}"
                            ),
                        ));
                    }
                    (None, now) => self.version = now,
                    _ => {}
                }
                return Ok(Some(msg));
            }
            let n = self.read_some().await?;
            if n == 0 {
                return if self.decoder.is_empty() {
                    Ok(None)
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "risefront: control peer closed the connection in the middle of a frame",
                    ))
                };
            }
            self.decoder.push(&self.buf[..n])?;
        }
    }

    #[cfg(unix)]
    async fn read_some(&mut self) -> io::Result<usize> {
        let n = handoff::recv_with_fds(&self.stream, &mut self.buf, &mut self.fds).await?;
        if !self.accept_fds || self.fds.len() > handoff::MAX_FDS {
            let count = self.fds.len();
            self.fds.clear();
            if self.accept_fds {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("risefront: control peer sent {count} descriptors, more than expected"),
                ));
            }
        }
        Ok(n)
    }

    #[cfg(windows)]
    async fn read_some(&mut self) -> io::Result<usize> {
        use tokio::io::AsyncReadExt;
        self.stream.read(&mut self.buf).await
    }

    pub(crate) async fn send(&mut self, msg: &Message) -> io::Result<()> {
        let mut frame = Vec::new();
        protocol::encode_as(msg, self.speaks(), &mut frame)?;
        #[cfg(unix)]
        return self.write_frame(&frame, &[]).await;
        #[cfg(windows)]
        return self.write_frame(&frame).await;
    }

    #[cfg(windows)]
    async fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(frame).await?;
        self.stream.flush().await
    }

    #[cfg(unix)]
    async fn write_frame(
        &mut self,
        frame: &[u8],
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> io::Result<()> {
        handoff::send_with_fds(&self.stream, frame, fds).await
    }

    /// Sends the generation number and the listening sockets (as `SCM_RIGHTS` on Unix) to the
    /// verified process `_pid` (Windows duplicates sockets for a given process).
    #[cfg(unix)]
    pub(crate) async fn send_listeners(
        &mut self,
        generation: u64,
        listeners: &[Socket],
        _pid: u32,
    ) -> io::Result<()> {
        let msg = Message::Listeners {
            generation,
            sockets: vec![Vec::new(); listeners.len()],
        };
        let fds: Vec<_> = listeners.iter().map(|l| l.as_fd()).collect();
        self.send_with_fds(&msg, &fds).await
    }

    /// Sends `msg` with `fds` riding on it (`SCM_RIGHTS`); the receiver claims them with
    /// [`take_fds`](Self::take_fds) once it has read the message.
    #[cfg(unix)]
    pub(crate) async fn send_with_fds(
        &mut self,
        msg: &Message,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> io::Result<()> {
        let mut frame = Vec::new();
        protocol::encode_as(msg, self.speaks(), &mut frame)?;
        self.write_frame(&frame, fds).await
    }

    /// Claims the first `count` descriptors received and not claimed yet: those that rode on
    /// the message just read. Descriptors arrive in the order their frames were sent, and
    /// with the first byte of their frame, so a whole frame's are always in by the time the
    /// frame is decoded (those of the next frame may be in too).
    #[cfg(unix)]
    pub(crate) fn take_fds(&mut self, count: usize) -> io::Result<Vec<OwnedFd>> {
        if self.fds.len() < count {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "risefront: control peer announced {count} descriptors but passed {}",
                    self.fds.len()
                ),
            ));
        }
        Ok(self.fds.drain(..count).collect())
    }

    /// Claims the sockets announced by a `Listeners` frame: on Unix the descriptors that
    /// arrived with it, one per (empty) blob.
    #[cfg(unix)]
    pub(crate) fn take_listeners(&mut self, sockets: Vec<Vec<u8>>) -> io::Result<Vec<Socket>> {
        let count = sockets.len();
        if self.fds.len() != count {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "risefront: front announced {count} listening sockets but passed {}",
                    self.fds.len()
                ),
            ));
        }
        self.take_fds(count)?
            .into_iter()
            .map(Socket::try_from)
            .collect()
    }

    /// Sends the generation number and, as the frame's blobs, each listening socket duplicated
    /// for the verified process `pid` (`WSADuplicateSocketW` protocol info).
    #[cfg(windows)]
    pub(crate) async fn send_listeners(
        &mut self,
        generation: u64,
        listeners: &[Socket],
        pid: u32,
    ) -> io::Result<()> {
        let sockets = listeners
            .iter()
            .map(|Socket::Tcp(l)| handoff::duplicate_socket(l, pid))
            .collect::<io::Result<Vec<_>>>()?;
        self.send(&Message::Listeners {
            generation,
            sockets,
        })
        .await
    }

    /// Opens the sockets announced by a `Listeners` frame from their protocol info blobs.
    #[cfg(windows)]
    pub(crate) fn take_listeners(&mut self, sockets: Vec<Vec<u8>>) -> io::Result<Vec<Socket>> {
        if sockets.len() > handoff::MAX_FDS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "risefront: front announced {} listening sockets, more than expected",
                    sockets.len()
                ),
            ));
        }
        sockets
            .iter()
            .map(|blob| handoff::listener_from_protocol_info(blob).map(Socket::Tcp))
            .collect()
    }
}
