//! `hello` over HTTPS: rustls, ALPN `h2` and `http/1.1`, certificates rotated by upgrading.
//!
//! ```text
//! tls [ADDR]... --cert FILE --key FILE   serve (default 127.0.0.1:8443); PEM files
//! tls --upgrade [ADDR]...                ask the running front to start a new generation
//! ```
//!
//! `GET /`, `GET /slow?ms=<n>` and `GET /healthz` answer as in `hello`. Every generation reads
//! the certificate files when it starts: replace them, upgrade, and new connections get the
//! new certificate while open ones finish on the old.
//!
//! Try it with a self-signed certificate:
//!
//! ```text
//! openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
//!     -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
//!     -keyout key.pem -out cert.pem
//! cargo run --features tls --example tls -- --cert cert.pem --key key.pem
//! curl --cacert cert.pem https://localhost:8443/
//! ```
//!
//! `HELLO_TLS_HANDSHAKE_TIMEOUT_MS` sets the handshake timeout (default 10 s), for the tests.

// This example parses its own command line, not `support::command_line`.
#[allow(dead_code)]
mod support;

use std::process::ExitCode;
use std::time::Duration;

use axum::{Router, extract::RawQuery, http::StatusCode, routing::get};
use risefront::tls::{DEFAULT_TLS_HANDSHAKE_TIMEOUT, TlsListener};
use tokio_rustls::rustls;

#[tokio::main]
async fn main() -> ExitCode {
    match support::tls_command_line().await {
        Ok(command_line) => support::exit(serve(command_line).await),
        Err(code) => code,
    }
}

async fn serve(command_line: support::TlsCommandLine) -> std::io::Result<()> {
    // rustls leaves the choice of crypto to the application; this one uses ring. Installing
    // twice is harmless, hence the ignored result.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Before `bind`, in every process: the front refuses to start on a bad file, and each
    // generation serves the files as they are when it starts (rotation by upgrade). A
    // generation whose files are bad exits before it is ready, so the old one keeps serving.
    let config = risefront::tls::server_config_from_pem(&command_line.cert, &command_line.key)?;
    let listener = risefront::bind(&command_line.addrs).await?;
    support::failure_hook();

    let body = support::greeting(&listener);
    let slow_body = body.clone();
    let handshake_timeout = std::env::var("HELLO_TLS_HANDSHAKE_TIMEOUT_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(DEFAULT_TLS_HANDSHAKE_TIMEOUT, Duration::from_millis);
    let listener = TlsListener::new(listener, config).tls_handshake_timeout(handshake_timeout);
    let app = Router::new()
        .route("/", get(move || async move { body }))
        .route(
            "/slow",
            get(move |RawQuery(query): RawQuery| async move {
                tokio::time::sleep(support::slow_delay(query.as_deref())).await;
                slow_body
            }),
        )
        .route(
            "/healthz",
            get(|| async {
                if risefront::is_stopping() {
                    (StatusCode::SERVICE_UNAVAILABLE, "stopping\n")
                } else {
                    (StatusCode::OK, "ok\n")
                }
            }),
        );

    // GracefulServer rather than `axum::serve` + `DrainLayer`: with ALPN most clients speak
    // HTTP/2 here, and GracefulServer sends them GOAWAY the moment the generation is
    // superseded (axum::serve only once `superseded()` fires, after the idle grace), adds
    // `Connection: close` for HTTP/1 by itself, and bounds the drain with its deadline.
    // It logs its own summary when drained.
    risefront::GracefulServer::new().serve(listener, app).await;
    Ok(())
}
