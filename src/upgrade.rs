//! The client side of `risefront::upgrade`: asks a running front to start a new generation and
//! waits until it serves (or fails), so a deploy script can rely on the exit status.

use std::io;
use std::time::Duration;

use tokio::time::timeout;

use crate::channel::Channel;
use crate::config::Config;
use crate::handoff::Endpoint;
use crate::protocol::{Message, Role};

pub(crate) async fn request(endpoint: &Endpoint, config: &Config) -> io::Result<u64> {
    let Some(stream) = endpoint.connect().await? else {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "risefront: no front is running for service {:?} (nothing answers at {})",
                config.name, endpoint
            ),
        ));
    };
    let mut channel = Channel::new(stream, false);
    channel
        .send(&Message::Hello {
            pid: std::process::id(),
            role: Role::Control,
            ready_timeout: config.ready_timeout,
            drain_timeout: config.drain_timeout,
        })
        .await?;
    channel.send(&Message::Upgrade).await?;
    // The front answers once the new generation is ready or has failed, which its own ready
    // deadline bounds; the margin covers a build whose ready timeout differs from ours.
    let wait = config
        .ready_timeout
        .saturating_add(config.handshake_timeout)
        .saturating_add(Duration::from_secs(5));
    let answer = timeout(wait, channel.recv()).await.map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("risefront: the front did not report the upgrade's outcome within {wait:?}"),
        )
    })??;
    match answer {
        Some(Message::Upgraded { generation }) => Ok(generation),
        Some(Message::Error { reason }) => Err(io::Error::other(format!(
            "risefront: upgrade failed: {reason}"
        ))),
        Some(other) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("risefront: unexpected answer from the front: {other:?}"),
        )),
        None => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "risefront: the front closed the connection before reporting the upgrade's outcome",
        )),
    }
}
