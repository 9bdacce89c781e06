//! End-to-end: long-lived connections across upgrades, with real WebSocket clients and
//! server-sent event streams on the `websocket` example.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use common::{PATIENCE, Service, Way, example, wait_gone};

const UPGRADES: u64 = 5;

/// What one client saw.
#[derive(Debug, Default)]
struct Seen {
    generations: BTreeSet<u64>,
    current: u64,
    acked: u64,
    restarts: u64,
    problems: Vec<String>,
}

type Shared = Arc<Mutex<Seen>>;

fn note(seen: &Shared, problem: String) {
    let mut seen = seen.lock().unwrap();
    if seen.problems.len() < 5 {
        seen.problems.push(problem);
    }
}

/// Echoes messages until stopped, reconnecting whenever the server closes with 1012.
async fn websocket_client(addr: SocketAddr, id: usize, seen: Shared, stop: watch::Receiver<bool>) {
    let mut k = 0u64;
    while !*stop.borrow() {
        let (mut socket, response) =
            match tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await {
                Ok(connected) => connected,
                Err(e) => {
                    note(&seen, format!("handshake failed: {e}"));
                    return;
                }
            };
        let generation: u64 = response
            .headers()
            .get("x-generation")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0);
        {
            let mut seen = seen.lock().unwrap();
            seen.generations.insert(generation);
            seen.current = generation;
        }
        loop {
            if *stop.borrow() {
                let _ = socket.close(None).await;
                return;
            }
            let text = format!("client {id} message {k}");
            if let Err(e) = socket.send(Message::text(text.clone())).await {
                note(&seen, format!("send on generation {generation}: {e}"));
                return;
            }
            match socket.next().await {
                Some(Ok(Message::Text(echo))) => {
                    if echo.as_str() != text {
                        note(&seen, format!("echo {echo:?} for {text:?}"));
                    }
                    seen.lock().unwrap().acked += 1;
                    k += 1;
                }
                Some(Ok(Message::Close(frame))) => {
                    if frame.as_ref().map(|f| f.code) != Some(CloseCode::Restart) {
                        note(&seen, format!("closed with {frame:?}"));
                    }
                    seen.lock().unwrap().restarts += 1;
                    // Answer the close, then reconnect.
                    while let Some(Ok(_)) = socket.next().await {}
                    break;
                }
                other => {
                    note(
                        &seen,
                        format!("generation {generation} ended without a close frame: {other:?}"),
                    );
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Waits until every client is connected to generation `n`.
async fn wait_all_on(clients: &[Shared], n: u64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let behind = clients
            .iter()
            .filter(|c| {
                let c = c.lock().unwrap();
                c.current < n && c.problems.is_empty()
            })
            .count();
        if behind == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{behind} clients never reached generation {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Stops the clients and waits for them (a client still running at the deadline is
/// aborted), then checks that none had a problem and each saw every generation.
async fn stop_clients(
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    clients: &[Shared],
) {
    let _ = stop.send(true);
    for task in tasks {
        let abort = task.abort_handle();
        if tokio::time::timeout(PATIENCE, task).await.is_err() {
            abort.abort();
        }
    }
    assert_eq!(problems(clients), Vec::<String>::new());
    for (id, client) in clients.iter().enumerate() {
        let client = client.lock().unwrap();
        assert_eq!(
            client.generations,
            (1..=UPGRADES + 1).collect(),
            "client {id}: {client:?}"
        );
    }
}

fn problems(clients: &[Shared]) -> Vec<String> {
    clients
        .iter()
        .flat_map(|c| c.lock().unwrap().problems.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_are_handed_to_each_new_generation_with_1012() {
    // Fewer under Wine, whose sockets are slow; the behaviour is the same.
    let count = if cfg!(windows) { 40 } else { 200 };
    // A 1 s probation: the WebSockets move at the takeover (`draining()` fires then), and the
    // old generation exits once the window has passed and they are gone, long before its drain
    // deadline.
    let mut service =
        Service::start_with(&example("websocket"), &[("RISEFRONT_PROBATION", "1s")]).await;
    let (stop_tx, stop) = watch::channel(false);
    let clients: Vec<Shared> = (0..count).map(|_| Shared::default()).collect();
    let tasks: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(id, seen)| {
            tokio::spawn(websocket_client(
                service.addr,
                id,
                Arc::clone(seen),
                stop.clone(),
            ))
        })
        .collect();
    wait_all_on(&clients, 1).await;

    let mut exits = Vec::new();
    for n in 2..=UPGRADES + 1 {
        let old = service.hello().await;
        service.upgrade(Way::nth(n as usize), n).await;
        let takeover = Instant::now();
        wait_all_on(&clients, n).await;
        let moved = takeover.elapsed();
        wait_gone(old.pid).await;
        let exited = takeover.elapsed();
        println!(
            "upgrade to generation {n}: {count} WebSockets moved within {moved:?}, old generation exited {exited:?} after the takeover"
        );
        exits.push(exited);
    }
    stop_clients(stop_tx, tasks, &clients).await;
    for (id, client) in clients.iter().enumerate() {
        let client = client.lock().unwrap();
        assert_eq!(client.restarts, UPGRADES, "client {id}: {client:?}");
        assert!(client.acked > 0);
    }
    // Long before the 30 s drain deadline.
    assert!(
        exits.iter().all(|e| *e < Duration::from_secs(10)),
        "{exits:?}"
    );
}

/// Reads event streams until stopped; each must end cleanly, and the next comes from the new
/// generation.
async fn events_client(addr: SocketAddr, seen: Shared, stop: watch::Receiver<bool>) {
    while !*stop.borrow() {
        let attempt = async {
            let stream = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(connection);
            let request = hyper::Request::get("/events")
                .header(hyper::header::HOST, addr.to_string())
                .body(Empty::<Bytes>::new())
                .map_err(|e| e.to_string())?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| format!("request: {e}"))?;
            let mut body = response.into_body();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| format!("stream cut: {e}"))?;
                let Some(data) = frame.data_ref() else {
                    continue;
                };
                let text = String::from_utf8_lossy(data);
                if let Some(generation) = text
                    .strip_prefix("data: generation ")
                    .and_then(|rest| rest.split(' ').next()?.parse::<u64>().ok())
                {
                    let mut seen = seen.lock().unwrap();
                    seen.generations.insert(generation);
                    seen.current = generation;
                    seen.acked += 1;
                }
                if *stop.borrow() {
                    return Ok(());
                }
            }
            seen.lock().unwrap().restarts += 1;
            Ok::<(), String>(())
        };
        if let Err(e) = attempt.await {
            note(&seen, e);
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_end_cleanly_and_resume_on_each_new_generation() {
    let count = if cfg!(windows) { 20 } else { 100 };
    let mut service = Service::start_with(&example("websocket"), &[]).await;
    let (stop_tx, stop) = watch::channel(false);
    let clients: Vec<Shared> = (0..count).map(|_| Shared::default()).collect();
    let tasks: Vec<_> = clients
        .iter()
        .map(|seen| tokio::spawn(events_client(service.addr, Arc::clone(seen), stop.clone())))
        .collect();
    wait_all_on(&clients, 1).await;
    for n in 2..=UPGRADES + 1 {
        service.upgrade(Way::nth(n as usize), n).await;
        wait_all_on(&clients, n).await;
    }
    stop_clients(stop_tx, tasks, &clients).await;
    for (id, client) in clients.iter().enumerate() {
        let client = client.lock().unwrap();
        assert!(client.restarts >= UPGRADES, "client {id}: {client:?}");
    }
}

#[tokio::test]
async fn a_websocket_that_ignores_the_close_is_cut_at_the_drain_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut service =
        Service::start_with(&example("websocket"), &[("RISEFRONT_DRAIN_TIMEOUT", "2s")]).await;
    let g1 = service.hello().await;
    // A handshake by hand, and then nothing: this client never reads or answers the close.
    let mut stream = tokio::net::TcpStream::connect(service.addr)
        .await
        .expect("connect");
    stream
        .write_all(
            format!(
                "GET /ws HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
                service.addr
            )
            .as_bytes(),
        )
        .await
        .expect("handshake");
    let mut head = [0u8; 512];
    let n = stream.read(&mut head).await.expect("handshake answer");
    let answer = String::from_utf8_lossy(&head[..n]);
    assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: upgrade"),
        "{answer}"
    );

    let started = Instant::now();
    service.upgrade(Way::nth(1), 2).await;
    wait_gone(g1.pid).await;
    let took = started.elapsed();
    println!("old generation held by a WebSocket that ignores the close exited after {took:?}");
    assert!(
        took >= Duration::from_millis(1500),
        "cut too early: {took:?}"
    );
    service
        .wait_log("still had connections at the drain deadline")
        .await;
    drop(stream);
}

#[tokio::test]
async fn a_websocket_handshake_during_the_idle_grace_succeeds() {
    // A long grace: the old generation keeps its connections while the new one serves.
    let mut service =
        Service::start_with(&example("websocket"), &[("RISEFRONT_IDLE_GRACE", "5s")]).await;
    // A keep-alive connection to generation 1, opened before the takeover.
    let stream = tokio::net::TcpStream::connect(service.addr)
        .await
        .expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection.with_upgrades());
    service.upgrade(Way::nth(1), 2).await;
    // On it, during the grace, a WebSocket handshake: 101 with `Connection: upgrade`.
    let request = hyper::Request::get("/ws")
        .header(hyper::header::HOST, service.addr.to_string())
        .header(hyper::header::CONNECTION, "upgrade")
        .header(hyper::header::UPGRADE, "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    assert_eq!(response.status(), 101);
    assert_eq!(
        response
            .headers()
            .get(hyper::header::CONNECTION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_ascii_lowercase),
        Some("upgrade".to_owned())
    );
    assert_eq!(
        response
            .headers()
            .get("x-generation")
            .and_then(|v| v.to_str().ok()),
        Some("1"),
        "answered by the old generation, during its grace"
    );
}

/// Under `GracefulServer`, which moves idle HTTP/1 connections at a takeover, an upgraded
/// connection is never moved: the WebSocket stays with its generation, which closes it with
/// 1012, while a plain keep-alive connection of the same service moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_graceful_server_a_websocket_stays_and_is_closed_with_1012() {
    let mut service =
        Service::start_with(&example("websocket"), &[("HELLO_SERVER", "graceful")]).await;
    let (mut socket, response) =
        tokio_tungstenite::connect_async(format!("ws://{}/ws", service.addr))
            .await
            .expect("WebSocket handshake");
    assert_eq!(
        response
            .headers()
            .get("x-generation")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    socket
        .send(Message::Text("before".into()))
        .await
        .expect("send");
    let echo = tokio::time::timeout(PATIENCE, socket.next()).await;
    assert!(
        matches!(&echo, Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "before"),
        "{echo:?}"
    );
    let mut plain = common::raw::TcpConn::connect(service.addr).await;
    plain.get("/").await.expect("answered by generation 1");

    service.upgrade(Way::Command, 2).await;
    let close = loop {
        match tokio::time::timeout(PATIENCE, socket.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame,
            Ok(Some(Ok(_))) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Restart));
    // The plain connection went to generation 2 (after at most one more answer from 1, if
    // that request beat the move).
    let mut generation = 0;
    for _ in 0..2 {
        let response = plain
            .get("/")
            .await
            .expect("answered on the same connection");
        generation = common::parse_hello(&response.body)
            .expect("hello")
            .generation;
        if generation == 2 {
            break;
        }
    }
    assert_eq!(generation, 2);
    // Answer the close, as a client does, so that generation 1 can go.
    let _ = socket.close(None).await;
}
