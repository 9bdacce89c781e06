//! The example every test and benchmark uses: axum with `axum::serve`.
//!
//! ```text
//! hello [ADDR]...              serve (default 127.0.0.1:8080); the first run becomes the front
//!                              (ADDR is HOST:PORT, or unix:PATH for a Unix domain socket)
//! hello --upgrade [ADDR]...    ask the running front to start a new generation
//! hello --upgrade-front [ADDR]...
//!                              ask the running front to re-execute itself into the serving
//!                              build (same pid, Unix), for the front's own fixes
//! ```
//!
//! `GET /` answers `hello from generation <N> pid <PID>`; `GET /slow?ms=<n>` answers the same
//! after `n` milliseconds; `GET /healthz` answers `ok` (200), or `stopping` (503) once the
//! service is stopping ([`risefront::is_stopping`]), for load balancers. Try it: run it, `curl localhost:8080`, run it again in another
//! terminal (or `kill -HUP <front pid>`, or `hello --upgrade`), and `curl` again.
//!
//! It serves with `axum::serve`, as the README's first snippet; `HELLO_SERVER=graceful` serves
//! the same app with `risefront::GracefulServer`, whose keep-alive connections move to the new
//! generation at a takeover instead of reconnecting (`curl localhost:8080 localhost:8080`
//! across an upgrade shows two generations on one connection).

mod support;

use std::process::ExitCode;

use axum::{Router, extract::RawQuery, http::StatusCode, routing::get};

#[tokio::main]
async fn main() -> ExitCode {
    match support::command_line().await {
        Ok(addrs) => support::exit(serve(&addrs).await),
        Err(code) => code,
    }
}

async fn serve(addrs: &[String]) -> std::io::Result<()> {
    let listener = risefront::bind(addrs).await?;
    support::failure_hook();

    let body = support::greeting(&listener);
    let slow_body = body.clone();
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
        )
        // Connection: close on responses written after the takeover...
        .layer(risefront::DrainLayer::new());

    if std::env::var_os("HELLO_SERVER").is_some() {
        return support::serve_axum(listener, app).await;
    }
    axum::serve(listener, app)
        // ...and hyper's graceful shutdown only after the idle grace.
        .with_graceful_shutdown(risefront::superseded())
        .await
}
