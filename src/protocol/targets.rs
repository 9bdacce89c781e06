//! The addresses a generation asked `bind` for, as it resolved them: carried in its `Hello`, so
//! that the front hands it exactly those sockets, binding the new ones, whatever the first
//! build asked for.
//!
//! On the wire: `u16` count (at most [`MAX_TARGETS`]; 0: not said, as from a control client)
//! × (`u8` kind, `u16` len, bytes). Kind 1 is a TCP address: its candidates as text, comma
//! separated (`127.0.0.1:8080` or `[::1]:8080,127.0.0.1:8080`); kind 2 a Unix socket path, in
//! the platform's own bytes (Unix only).

use std::net::SocketAddr;

use super::{ProtocolError, Reader};
use crate::net::Target;

/// Most addresses one `Hello` may name: as many sockets as one frame may carry.
pub(crate) const MAX_TARGETS: usize = crate::handoff::MAX_FDS;

const KIND_TCP: u8 = 1;
#[cfg(unix)]
const KIND_UNIX: u8 = 2;

/// The wire form of `targets`, or `None` if it cannot be said (too many, or too long): the
/// front then hands over what it has, as before it was told.
pub(crate) fn to_wire(targets: &[Target]) -> Option<Vec<u8>> {
    if targets.len() > MAX_TARGETS {
        return None;
    }
    let mut out = Vec::new();
    out.extend_from_slice(&u16::try_from(targets.len()).ok()?.to_be_bytes());
    for target in targets {
        let (kind, bytes) = match target {
            Target::Tcp(candidates) => {
                let text: Vec<String> = candidates.iter().map(ToString::to_string).collect();
                (KIND_TCP, text.join(",").into_bytes())
            }
            #[cfg(unix)]
            Target::Unix(path) => (
                KIND_UNIX,
                std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()).to_vec(),
            ),
        };
        out.push(kind);
        out.extend_from_slice(&u16::try_from(bytes.len()).ok()?.to_be_bytes());
        out.extend_from_slice(&bytes);
    }
    Some(out)
}

/// The wire form of "not said".
pub(crate) const NOT_SAID: [u8; 2] = [0, 0];

/// Reads what [`to_wire`] wrote, from the rest of a `Hello`.
pub(crate) fn from_wire(r: &mut Reader<'_>) -> Result<Vec<Target>, ProtocolError> {
    let count = usize::from(u16::from_be_bytes(r.take("truncated addresses")?));
    if count > MAX_TARGETS {
        return Err(ProtocolError::Malformed("too many addresses"));
    }
    let mut targets = Vec::with_capacity(count);
    for _ in 0..count {
        let kind = u8::from_be_bytes(r.take("truncated addresses")?);
        let len = usize::from(u16::from_be_bytes(r.take("truncated addresses")?));
        let bytes = r.bytes(len, "truncated addresses")?;
        targets.push(match kind {
            KIND_TCP => tcp(bytes)?,
            #[cfg(unix)]
            KIND_UNIX if !bytes.is_empty() => Target::Unix(std::path::PathBuf::from(
                <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(bytes),
            )),
            _ => return Err(ProtocolError::Malformed("unknown address kind")),
        });
    }
    Ok(targets)
}

fn tcp(bytes: &[u8]) -> Result<Target, ProtocolError> {
    let bad = || ProtocolError::Malformed("bad TCP address");
    let text = std::str::from_utf8(bytes).map_err(|_| bad())?;
    let candidates = text
        .split(',')
        .map(|c| c.parse::<SocketAddr>().map_err(|_| bad()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Target::Tcp(candidates))
}

#[cfg(test)]
mod tests {
    use super::{MAX_TARGETS, from_wire, to_wire};
    use crate::net::Target;
    use crate::protocol::{ProtocolError, Reader};

    fn read(bytes: &[u8]) -> Result<Vec<Target>, ProtocolError> {
        let mut r = Reader { rest: bytes };
        let targets = from_wire(&mut r)?;
        assert!(r.rest.is_empty(), "left over: {:?}", r.rest);
        Ok(targets)
    }

    #[test]
    fn tcp_candidates_are_text() {
        let target = Target::Tcp(vec![
            "[::1]:8080".parse().expect("v6"),
            "127.0.0.1:8080".parse().expect("v4"),
        ]);
        let wire = to_wire(std::slice::from_ref(&target)).expect("fits");
        let text = b"[::1]:8080,127.0.0.1:8080";
        let mut expected = vec![0, 1, 1, 0, u8::try_from(text.len()).expect("short")];
        expected.extend_from_slice(text);
        assert_eq!(wire, expected);
        assert_eq!(read(&wire).expect("reads"), [target]);
        assert_eq!(read(&[0, 0]).expect("none"), []);
    }

    #[test]
    fn bad_addresses_are_refused_not_guessed() {
        for bad in [
            &[0, 1, 1, 0, 3, b'x', b':', b'1'][..],
            &[0, 1, 9, 0, 0],
            &[0, 1, 1, 0, 5, b'1'],
            &[0, 1],
            &[0],
        ] {
            assert!(read(bad).is_err(), "{bad:?} read");
        }
        // An empty Unix path is not an address.
        #[cfg(unix)]
        assert!(read(&[0, 1, 2, 0, 0]).is_err());
    }

    #[test]
    fn as_many_addresses_as_sockets_fit_and_no_more() {
        let one = Target::Tcp(vec!["127.0.0.1:1".parse().expect("addr")]);
        let most = vec![one.clone(); MAX_TARGETS];
        let wire = to_wire(&most).expect("the most there may be");
        assert_eq!(read(&wire).expect("reads"), most);
        assert_eq!(to_wire(&vec![one.clone(); MAX_TARGETS + 1]), None);
        // Well formed, one too many: refused for the count, not for lack of bytes.
        let mut too_many = u16::try_from(MAX_TARGETS + 1)
            .expect("small")
            .to_be_bytes()
            .to_vec();
        let each = to_wire(std::slice::from_ref(&one)).expect("one");
        too_many.extend_from_slice(&each[2..].repeat(MAX_TARGETS + 1));
        assert!(read(&too_many).is_err());
    }
}
