//! The receiving side: connections handed over by a superseded generation join the listener
//! whose address they were accepted on, and come out of its `accept` like new ones.

use std::future::Future;
use std::io;
use std::time::Duration;

use tokio::time::timeout;

use crate::addr::Addr;
use crate::channel::Channel;
use crate::process::process;
use crate::protocol::{Message, Moved};
use crate::socket::Stream;

/// Takes the connections that arrive over `pair` (the end that came with `HandoffFrom`, once
/// usable) for as long as the superseded generation sends any.
pub(crate) fn receive_from(
    pair: impl Future<Output = io::Result<crate::handoff::Stream>> + Send + 'static,
) {
    tokio::spawn(async move {
        match pair.await {
            Ok(pair) => run(Channel::new(pair, true).reading_one_version_back()).await,
            Err(e) => {
                tracing::warn!("connection handoff from a superseded generation unavailable: {e}")
            }
        }
    });
}

async fn run(mut channel: Channel) {
    let generation = process().generation();
    // Taken and refused since the last log line: one line per burst (a takeover), not per
    // frame.
    let (mut taken_since, mut refused_since) = (0u64, 0u64);
    let broken = loop {
        let next = if taken_since + refused_since > 0 {
            match timeout(QUIET, channel.recv()).await {
                Ok(next) => next,
                Err(_) => {
                    log_taken(generation, taken_since, refused_since);
                    (taken_since, refused_since) = (0, 0);
                    continue;
                }
            }
        } else {
            channel.recv().await
        };
        let moved = match next {
            Ok(Some(Message::Connections { moved })) => moved,
            Ok(None) => break None,
            Ok(Some(other)) => break Some(format!("unexpected {other:?}")),
            Err(e) => break Some(e.to_string()),
        };
        let sockets = match sockets(&mut channel, &moved) {
            Ok(sockets) => sockets,
            Err(e) => break Some(e.to_string()),
        };
        let taken: Vec<bool> = moved
            .into_iter()
            .zip(sockets)
            .map(|(moved, socket)| take(socket, moved.unread))
            .collect();
        let count = taken.iter().filter(|t| **t).count() as u64;
        taken_since += count;
        refused_since += taken.len() as u64 - count;
        // Bounded like every wait: a sender that stops reading is dropped.
        let answer = Message::Received { taken };
        match timeout(ANSWER_WRITE, channel.send(&answer)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => break Some(e.to_string()),
            Err(_) => break Some(format!("it read no answer for {ANSWER_WRITE:?}")),
        }
    };
    log_taken(generation, taken_since, refused_since);
    if let Some(why) = broken {
        tracing::warn!(
            generation,
            "connection handoff to generation {generation} ended: {why}"
        );
    }
}

/// One line per burst of handed-over connections.
fn log_taken(generation: u64, taken: u64, refused: u64) {
    if taken + refused > 0 {
        tracing::info!(
            generation,
            taken,
            refused,
            "generation {generation} took {taken} connections from its predecessor ({refused} refused)"
        );
    }
}

/// A burst of handed-over connections is over (and logged) after this long without another.
const QUIET: Duration = Duration::from_millis(50);

/// How long the sender may take to read an answer.
const ANSWER_WRITE: Duration = Duration::from_secs(5);

/// Each connection of a `Connections` frame as this process's own: the descriptors that rode
/// on it (Unix), in order.
#[cfg(unix)]
fn sockets(channel: &mut Channel, moved: &[Moved]) -> io::Result<Vec<io::Result<(Stream, Addr)>>> {
    Ok(channel
        .take_fds(moved.len())?
        .into_iter()
        .map(Stream::from_moved)
        .collect())
}

/// Each connection of a `Connections` frame as this process's own: opened from the protocol
/// info in it (Windows). Every one is opened, even one about to be refused, so that no
/// duplicate made for this process is left unclaimed.
#[cfg(windows)]
fn sockets(_channel: &mut Channel, moved: &[Moved]) -> io::Result<Vec<io::Result<(Stream, Addr)>>> {
    Ok(moved
        .iter()
        .map(|moved| {
            crate::handoff::stream_from_protocol_info(&moved.socket)
                .and_then(Stream::from_duplicate)
        })
        .collect())
}

/// Takes one connection: false if it is not a usable connection or nothing here serves it now
/// (this generation was superseded meanwhile, or does not listen on its address); the sender
/// keeps it then, and our copy of the socket is closed.
fn take(socket: io::Result<(Stream, Addr)>, unread: Vec<u8>) -> bool {
    match socket {
        Ok((stream, peer)) => process().adopt(stream, peer, unread),
        Err(e) => {
            tracing::warn!("refused a handed-over connection: {e}");
            false
        }
    }
}
