//! Zero-downtime upgrades for Rust TCP servers: a new build takes over the listening sockets
//! of the running one, and the old one finishes its requests and exits. Clients see no refused
//! connection and no failed request, and keep-alive clients keep their connections: they move
//! to the new build.
//!
//! ```no_run
//! #[tokio::main]
//! async fn main() -> std::io::Result<()> {
//!     // The first process becomes the "front": it binds the sockets and runs generations of
//!     // this same program; every generation gets the sockets back from this call.
//!     let listener = risefront::bind(["127.0.0.1:8080"]).await?;
//!     let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
//!     // Drains at a takeover; idle keep-alive connections move to the new generation.
//!     risefront::GracefulServer::new().serve(listener, app).await;
//!     Ok(())
//! }
//! ```
//!
//! `axum::serve` works too; its keep-alive clients reconnect at each upgrade instead:
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! let listener = risefront::bind(["127.0.0.1:8080"]).await?;
//! let app = axum::Router::new()
//!     .route("/", axum::routing::get(|| async { "hello" }))
//!     .layer(risefront::DrainLayer::new()); // Connection: close once superseded
//! axum::serve(listener, app)
//!     .with_graceful_shutdown(risefront::superseded()) // fires after the idle grace
//!     .await
//! # }
//! ```
//!
//! Upgrade by starting the new binary with the same addresses, by `kill -HUP <front pid>`
//! (the front runs the program at the path it was started from again), or with
//! [`upgrade`](fn@upgrade) from any process of the same user. The new generation takes over
//! only once it is ready (its server polls the listener, or it calls [`ready`]); if it exits or
//! times out first, the old one keeps serving. If it dies within the
//! [probation](Builder::probation) window after taking over (10 s by default), the old one is
//! reinstated and serves again.
//!
//! # How a takeover stays invisible
//!
//! Old and new generation accept on the same kernel sockets, so no connection is refused at
//! any instant. When the new one is ready the old one stops accepting at once, and
//! [`GracefulServer`] hands each idle HTTP/1 keep-alive connection to the new generation, at
//! its next idle point and with the bytes it already read of the next request (see
//! [`Builder::connection_handoff`]): the client keeps its connection and never races a close.
//! The new generation's listener yields such connections from `accept` like new ones.
//!
//! What cannot move (TLS, HTTP/2, upgraded connections, anything `axum::serve` serves) drains:
//! `Connection: close` on the next HTTP/1 response, GOAWAY for HTTP/2. With `axum::serve`,
//! [`superseded`] resolves only after a short idle grace: hyper's graceful shutdown cancels
//! connections it has not read from yet and closes idle keep-alive connections immediately,
//! and both fail requests that are already on the wire. With the grace and [`DrainLayer`]'s
//! `Connection: close`, keep-alive clients leave after their current request instead.
//!
//! # Long-lived connections
//!
//! A WebSocket or an event stream never goes idle: its handler should tell the client to
//! reconnect when [`draining`] resolves (at the takeover), for example with a WebSocket close
//! code 1012; [`drained`] waits for upgraded connections before `main` returns.
//!
//! # hyper and tower
//!
//! [`GracefulServer`] serves HTTP/1 and HTTP/2 on a [`RiseFrontListener`] with any tower
//! service (or hyper service via [`GracefulServer::serve_hyper`]) and drains by itself:
//! HTTP/1 connections move to the new generation (or get `Connection: close` when they
//! cannot), GOAWAY for HTTP/2, everything left closed at the drain deadline.
//!
//! ```no_run
//! # async fn run(router: axum::Router) -> std::io::Result<()> {
//! let listener = risefront::bind(["127.0.0.1:8080"]).await?;
//! let summary = risefront::GracefulServer::new().serve(listener, router).await;
//! # Ok(())
//! # }
//! ```
//!
//! # What fires when
//!
//! Each is a value the app awaits or reads; calling one does nothing by itself.
//!
//! | | at a takeover (a newer generation serves) | at a stop (SIGTERM, Ctrl-C, `systemctl stop`) |
//! | --- | --- | --- |
//! | [`stopping`] (future), [`is_stopping`] (flag) | never: the service goes on | at the signal, before the stop delay: answer 503 on health checks, report `NOT_SERVING` |
//! | [`draining`] (future), [`is_draining`] (flag) | at once, as the listener stops accepting (also when going on probation) | once the stop delay is over, as the listener stops accepting |
//! | [`superseded`] (future) | after the idle grace, or once no connection is left (after the probation window, if any): a server's graceful-shutdown signal | the same, from the end of the stop delay |
//! | [`drained`] (future) | once no connection is left, upgraded ones included: what `main` awaits before it returns | the same |
//!
//! [`ready`] is the other direction: the app tells the front
//! that this generation may take over, when it needs more than a polled listener to say so.
//!
//! # TLS
//!
//! With the `tls` feature, `risefront::tls::TlsListener` wraps the listener with rustls: it
//! accepts at once and each connection handshakes in its own task, so a client that sends
//! nothing stalls nobody. It goes into `GracefulServer` (anything [`Accept`]) and
//! `axum::serve` like the plain listener. Certificates rotate by upgrading: each generation
//! loads the files when it starts.
//!
//! # When the process ends
//!
//! risefront ends some processes itself, with `std::process::exit`, so destructors of what
//! is still alive (a `tracing-appender` guard, say) do not run then:
//!
//! - the front, when the service stops (it never returns from [`bind`]);
//! - a superseded or stopped generation whose server does not poll [`superseded`], once its
//!   last connection closed (after its probation window, if superseded);
//! - any generation at its drain deadline (plus one second for one that did), and on a second
//!   stop signal while draining;
//! - a program run with `RISEFRONT_UPGRADE=1` (or `=front`), after reporting the upgrade's
//!   outcome.
//!
//! To flush before that, await [`drained`] (or your server's end) and flush in `main`, which
//! then returns normally; keep the drain deadline above the time that takes.
//!
//! # Platform support
//!
//! Linux and macOS (sockets passed with `SCM_RIGHTS`), for TCP and Unix domain sockets
//! (`unix:/run/app/http.sock`, see [`bind`] and [`ListenAddr`]). The control socket lives in a private
//! directory (mode 0700; see [`Builder::control_dir`] for which) and only processes of the
//! same user are answered.
//!
//! Windows: the control channel is a named pipe per service and user, with a random name
//! announced in `%LOCALAPPDATA%\risefront`, that only the current user may open, remote
//! clients are rejected, and each peer's process id and user are checked. Sockets are passed
//! with `WSADuplicateSocketW` for the verified process. Ctrl-C, Ctrl-Break and closing the
//! console stop the service; there is no SIGHUP, so upgrades are started by running the binary
//! again or with [`upgrade`](fn@upgrade). Unix domain socket addresses are refused there,
//! with an error that says so.

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod accept;
mod addr;
mod builder;
mod channel;
mod config;
mod error;
mod front;
mod generation;
mod handoff;
mod holder;
mod layer;
mod listener;
mod net;
mod notice;
mod process;
mod protocol;
mod replay;
mod server;
mod signal;
mod socket;
mod systemd;
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub mod tls;
mod transfer;
mod upgrade;

pub use accept::Accept;
pub use addr::{Addr, ListenAddr, ToListenAddr, UnixPeer};
pub use builder::{Builder, bind, reexec_front, reexec_front_pid, upgrade, upgrade_pid};
pub use error::BindError;
pub use holder::Holder;
pub use layer::{DrainFuture, DrainLayer, DrainService};
pub use listener::{Connection, RiseFrontListener};
pub use process::{drained, draining, is_draining, is_stopping, ready, stopping, superseded};
pub use server::{Executor, GracefulServer, ServeSummary};
pub use upgrade::UpgradeError;

/// The control-protocol decoder, for the fuzz targets in `fuzz/` only (`cargo fuzz` builds
/// with `--cfg fuzzing`); not part of the API.
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod __fuzz {
    /// Decodes `bytes` as one frame and, fed in two chunks, as a stream; must never panic.
    pub fn decode(bytes: &[u8]) {
        let _ = crate::protocol::decode(bytes);
        let split = bytes
            .first()
            .map_or(0, |b| usize::from(*b))
            .min(bytes.len());
        let mut decoder = crate::protocol::FrameDecoder::new();
        for chunk in [&bytes[..split], &bytes[split..]] {
            if decoder.push(chunk).is_err() {
                return;
            }
            while let Ok(Some(message)) = decoder.next_message() {
                // Whatever decodes must encode and decode back to itself.
                let mut frame = Vec::new();
                if crate::protocol::encode(&message, &mut frame).is_ok() {
                    let again = crate::protocol::decode(&frame);
                    assert_eq!(again, Ok(Some((message, frame.len()))));
                }
            }
        }
    }
}
