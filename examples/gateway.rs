//! A tower-based gateway: a `ServiceBuilder` stack (tracing, overload shedding, concurrency
//! limit, timeout) in front of a small axum router, served by `risefront::GracefulServer`.
//!
//! Same command line and answers as the `hello` example, and `GET /peer`: the client's address,
//! as an axum handler extracts it (`ConnectInfo<risefront::Addr>`).

mod support;

use std::process::ExitCode;
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::extract::{ConnectInfo, RawQuery};
use axum::http::StatusCode;
use axum::{BoxError, Router, routing::get};
use tower::ServiceBuilder;
use tower_http::trace::TraceLayer;

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
    let router =
        Router::new()
            .route("/", get(move || async move { body }))
            .route(
                "/slow",
                get(move |RawQuery(query): RawQuery| async move {
                    tokio::time::sleep(support::slow_delay(query.as_deref())).await;
                    slow_body
                }),
            )
            .route(
                "/peer",
                get(
                    |ConnectInfo(client): ConnectInfo<risefront::Addr>| async move {
                        format!("{client}\n")
                    },
                ),
            );

    let gateway = ServiceBuilder::new()
        .layer(TraceLayer::new_for_http())
        // Turns the middleware's errors into responses instead of dropped connections.
        .layer(HandleErrorLayer::new(overloaded))
        .load_shed()
        .concurrency_limit(1024)
        .timeout(Duration::from_secs(30))
        .service(router);

    // Returns once drained; the summary is logged by risefront.
    risefront::GracefulServer::new()
        .serve(listener, gateway)
        .await;
    Ok(())
}

async fn overloaded(error: BoxError) -> (StatusCode, String) {
    if error.is::<tower::timeout::error::Elapsed>() {
        (StatusCode::GATEWAY_TIMEOUT, "timed out\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("overloaded: {error}\n"),
        )
    }
}
