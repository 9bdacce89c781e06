//! [`Replay`]: bytes already read from a connection that its reader has not seen yet, given
//! to it before anything more is read from the socket. What a handed-over connection carries
//! from its old generation, and what telling HTTP/1 from HTTP/2 read ahead.

use tokio::io::ReadBuf;

/// Bytes to hand out before the socket's own, in order, each once.
#[derive(Debug, Default)]
pub(crate) struct Replay {
    bytes: Vec<u8>,
    given: usize,
}

impl Replay {
    pub(crate) fn new(bytes: Vec<u8>) -> Self {
        Replay { bytes, given: 0 }
    }

    /// The bytes not handed out yet.
    pub(crate) fn rest(&self) -> &[u8] {
        self.bytes.get(self.given..).unwrap_or_default()
    }

    /// Appends bytes read from the socket behind the ones not handed out yet.
    pub(crate) fn push(&mut self, more: &[u8]) {
        self.bytes.extend_from_slice(more);
    }

    /// Fills `buf` from what is left; false if nothing is (read the socket then).
    pub(crate) fn read_into(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        let rest = self.rest();
        if rest.is_empty() || buf.remaining() == 0 {
            return false;
        }
        let n = rest.len().min(buf.remaining());
        buf.put_slice(&rest[..n]);
        self.given += n;
        if self.given == self.bytes.len() {
            // Handed out: the memory goes.
            *self = Replay::default();
        }
        true
    }

    /// Takes what is left, leaving nothing to replay.
    pub(crate) fn take(&mut self) -> Vec<u8> {
        let rest = self.bytes.split_off(self.given.min(self.bytes.len()));
        *self = Replay::default();
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_handed_out_once_in_order_in_pieces_of_any_size() {
        let mut replay = Replay::new(b"GET / HTTP/1.1".to_vec());
        let mut out = Vec::new();
        let mut space = [0u8; 4];
        loop {
            let mut buf = ReadBuf::new(&mut space);
            if !replay.read_into(&mut buf) {
                break;
            }
            out.extend_from_slice(buf.filled());
        }
        assert_eq!(out, b"GET / HTTP/1.1");
        assert!(replay.rest().is_empty());
        assert!(replay.take().is_empty());
    }

    #[test]
    fn what_is_left_can_be_taken_or_grown() {
        let mut replay = Replay::new(b"abc".to_vec());
        let mut space = [0u8; 1];
        assert!(replay.read_into(&mut ReadBuf::new(&mut space)));
        replay.push(b"de");
        assert_eq!(replay.rest(), b"bcde");
        assert_eq!(replay.take(), b"bcde");
        assert!(!replay.read_into(&mut ReadBuf::new(&mut space)));
        // A full buffer takes nothing and loses nothing.
        let mut replay = Replay::new(b"x".to_vec());
        assert!(!replay.read_into(&mut ReadBuf::new(&mut [])));
        assert_eq!(replay.rest(), b"x");
    }
}
