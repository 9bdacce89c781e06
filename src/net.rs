//! Resolving the addresses given to `bind` and binding them, as tokio's `TcpListener::bind`
//! does: each address may resolve to several candidates and the first that binds wins.

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket, ToSocketAddrs};

/// Resolves each address to its candidates; the front binds the first candidate that works,
/// as `tokio::net::TcpListener::bind` does.
pub(crate) async fn resolve<I, A>(addrs: I) -> io::Result<Vec<Vec<SocketAddr>>>
where
    I: IntoIterator<Item = A>,
    A: ToSocketAddrs + std::fmt::Debug,
{
    let mut out = Vec::new();
    for addr in addrs {
        let shown = format!("{addr:?}");
        let candidates: Vec<SocketAddr> = tokio::net::lookup_host(addr)
            .await
            .map_err(|e| bad_address(&shown, &e.to_string()))?
            .collect();
        if candidates.is_empty() {
            return Err(bad_address(&shown, "it resolves to nothing"));
        }
        if !out.contains(&candidates) {
            out.push(candidates);
        }
    }
    if out.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "risefront: bind needs at least one address",
        ));
    }
    Ok(out)
}

fn bad_address(shown: &str, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "risefront: cannot use address {shown}: {why} (expected HOST:PORT, for example 127.0.0.1:8080, 0.0.0.0:8080, [::1]:8080 or localhost:8080)"
        ),
    )
}

/// The listen backlog asked for (Linux caps it at `net.core.somaxconn`, 4096 by default since
/// 5.4). tokio's `TcpListener::bind` asks for 1024: at a takeover, up to every keep-alive
/// client of the old generation reconnects within a few hundred milliseconds, and connections
/// beyond the backlog wait for a SYN retransmit, a full second.
const BACKLOG: u32 = 4096;

/// Binds the first candidate that works, like `tokio::net::TcpListener::bind` (with
/// `SO_REUSEADDR` on Unix, as it does) but with a deeper backlog.
pub(crate) async fn bind_first(candidates: &[SocketAddr]) -> io::Result<TcpListener> {
    let mut last = None;
    for addr in candidates {
        match bind(*addr) {
            Ok(listener) => return Ok(listener),
            Err(e) => {
                last = Some(io::Error::new(
                    e.kind(),
                    format!("risefront: bind {addr}: {e}"),
                ))
            }
        }
    }
    Err(last
        .unwrap_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "risefront: no address")))
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // Restarting the front right after a stop must not fail on connections in TIME_WAIT. Not
    // on Windows, where the flag would let another socket take the port.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}
