//! Long-lived connections across upgrades: a WebSocket echo and a server-sent event stream
//! that hand their clients over to the new generation at the takeover.
//!
//! ```text
//! websocket [ADDR]...              serve (default 127.0.0.1:8080), like `hello`
//! websocket --upgrade [ADDR]...    ask the running front to start a new generation
//! ```
//!
//! `GET /` and `GET /slow?ms=<n>` answer like `hello`. `GET /ws` is a WebSocket that echoes
//! each text message back unchanged; its handshake response carries `x-generation: <N>`. At
//! the takeover it sends a Close frame with code 1012 (Service Restart), so the client
//! reconnects, to the new generation. `GET /events` streams `data: generation <N> event <K>`
//! every 100 ms and ends at the takeover; EventSource clients reconnect by themselves.

mod support;

use std::convert::Infallible;
use std::process::ExitCode;
use std::time::Duration;

use axum::extract::RawQuery;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::http::HeaderValue;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Router, routing::get};

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

    let generation = listener.generation();
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
            "/ws",
            get(move |upgrade: WebSocketUpgrade| async move { websocket(upgrade, generation) }),
        )
        .route("/events", get(move || async move { events(generation) }))
        // Connection: close after the takeover, but never on a WebSocket handshake.
        .layer(risefront::DrainLayer::new());

    // `axum::serve` with `superseded()` (or GracefulServer with `HELLO_SERVER=graceful`).
    support::serve_axum(listener, app).await?;
    // Upgraded connections are no longer the server's: wait for them (the drain deadline
    // bounds the wait) before returning ends the process.
    risefront::drained().await;
    Ok(())
}

fn websocket(upgrade: WebSocketUpgrade, generation: u64) -> Response {
    let mut response = upgrade.on_upgrade(echo).into_response();
    if let Ok(value) = HeaderValue::from_str(&generation.to_string()) {
        response.headers_mut().insert("x-generation", value);
    }
    response
}

async fn echo(mut socket: WebSocket) {
    let takeover = risefront::draining();
    tokio::pin!(takeover);
    loop {
        tokio::select! {
            message = socket.recv() => match message {
                Some(Ok(Message::Text(text))) => {
                    if socket.send(Message::Text(text)).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
            () = &mut takeover => break,
        }
    }
    // 1012 Service Restart: reconnect now, the new generation serves.
    let close = CloseFrame {
        code: close_code::RESTART,
        reason: "upgrade".into(),
    };
    if socket.send(Message::Close(Some(close))).await.is_err() {
        return;
    }
    // Wait for the client's Close; the drain deadline bounds a client that never sends it.
    while let Some(Ok(message)) = socket.recv().await {
        if matches!(message, Message::Close(_)) {
            return;
        }
    }
}

fn events(generation: u64) -> Sse<impl futures_core::Stream<Item = Result<Event, Infallible>>> {
    let stream = futures_util::stream::unfold(0u64, move |k| async move {
        tokio::select! {
            () = risefront::draining() => None,
            () = tokio::time::sleep(Duration::from_millis(100)) => Some((
                Ok(Event::default().data(format!("generation {generation} event {k}"))),
                k + 1,
            )),
        }
    });
    Sse::new(stream)
}
