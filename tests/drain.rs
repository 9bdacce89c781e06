//! End-to-end: draining is invisible to clients — HTTP/1 keep-alive, HTTP/2 streams, the drain
//! deadline, and the drain layer on plain `axum::serve`.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::load::{self, Kind, Report};
use common::{Service, example, wait_gone};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

/// Runs `mix` against `name` while upgrading it `upgrades` times with `--upgrade`.
async fn upgrades_under_load(
    name: &str,
    env: &[(&str, &str)],
    mix: &[(Kind, usize, &str)],
    upgrades: u64,
) -> Report {
    let service = Service::start_with(&example(name), env).await;
    let load = load::start(service.addr, mix);
    for n in 2..=upgrades + 1 {
        // The load has reached the current generation before it is replaced.
        load.served_by(n - 1, 20).await;
        let output = service.upgrade_command().await;
        assert!(output.status.success(), "upgrade to {n} failed: {output:?}");
        service.wait_generation(n).await;
    }
    load.served_by(upgrades + 1, 20).await;
    let report = load.stop().await;
    println!("{name}: {}", report.summary(upgrades as usize));
    if report.failed > 0 {
        // Shown with the failure: what the service did around the failed requests.
        println!("{name}: the service's log:\n{}", service.log());
    }
    report
}

fn assert_clean(name: &str, report: &Report, upgrades: u64) {
    assert_eq!(
        report.failed,
        0,
        "{name}: {}",
        report.summary(upgrades as usize)
    );
    let expected: Vec<u64> = (1..=upgrades + 1).collect();
    assert_eq!(
        report.generations.iter().copied().collect::<Vec<_>>(),
        expected,
        "{name}: every generation served the load"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_client_sees_every_takeover_as_connection_close_on_axum_serve() {
    let report = upgrades_under_load("hello", &[], &[(Kind::KeepAlive, 1, "/")], 10).await;
    assert_clean("hello", &report, 10);
    assert!(
        report.closes >= 10,
        "hello: the keep-alive client saw {} Connection: close for 10 takeovers",
        report.closes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_client_keeps_its_connection_across_takeovers_with_graceful_server() {
    for name in ["hyper", "gateway"] {
        let report = upgrades_under_load(name, &[], &[(Kind::KeepAlive, 1, "/")], 10).await;
        assert_clean(name, &report, 10);
        // Every generation answered on the one connection, which moved at each takeover.
        assert_eq!(report.closes, 0, "{name}: {}", report.summary(10));
        assert_eq!(report.connects, 1, "{name}: {}", report.summary(10));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_survive_upgrades() {
    for name in ["hyper", "gateway"] {
        let report =
            upgrades_under_load(name, &[], &[(Kind::Http2 { streams: 16 }, 2, "/")], 5).await;
        assert_clean(name, &report, 5);
    }
}

#[tokio::test]
async fn drain_deadline_cuts_what_outlives_it() {
    // Probation off: the deadline is timed from the takeover (with probation it runs from the
    // end of the window; tests/probation.rs covers that).
    let service = Service::start_with(
        &example("hyper"),
        &[
            ("RISEFRONT_DRAIN_TIMEOUT", "1s"),
            ("RISEFRONT_PROBATION", "0"),
        ],
    )
    .await;
    let g1 = service.hello().await;
    let addr = service.addr;
    let short = tokio::spawn(async move { common::get(addr, "/slow?ms=400").await });
    let long = tokio::spawn(async move { common::get(addr, "/slow?ms=8000").await });
    // Both requests reached generation 1.
    service.wait_log("slow request: answering in 400 ms").await;
    service.wait_log("slow request: answering in 8000 ms").await;

    let output = service.upgrade_command().await;
    assert!(output.status.success(), "{output:?}");

    let (status, body) = short.await.unwrap().expect("the short request completes");
    assert_eq!((status, common::parse_hello(&body)), (200, Some(g1)));
    assert!(
        long.await.unwrap().is_err(),
        "the long request is cut at the deadline"
    );
    wait_gone(g1.pid).await;
    // GracefulServer's summary, as its structured fields: one connection forced closed at the
    // deadline, the short one drained. (Had the generation waited for the 8 s request, that
    // request would have completed instead of being cut.)
    service.wait_log("forced=1").await;
}

#[tokio::test]
async fn drain_layer_closes_keep_alive_on_plain_axum_serve() {
    // A long idle grace keeps the kept-alive connection open long enough to use it once more.
    let service = Service::start_with(&example("hello"), &[("RISEFRONT_IDLE_GRACE", "10s")]).await;
    let stream = tokio::net::TcpStream::connect(service.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let send = async |sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>| {
        let request = hyper::Request::get("/")
            .header(hyper::header::HOST, "localhost")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.expect("request");
        let close = response.headers().get(hyper::header::CONNECTION).cloned();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (close, String::from_utf8_lossy(&body).into_owned())
    };

    let (close, body) = send(&mut sender).await;
    assert_eq!(close, None, "no Connection: close before the takeover");
    let g1 = common::parse_hello(&body).unwrap();

    let output = service.upgrade_command().await;
    assert!(output.status.success(), "{output:?}");
    // `--upgrade` returns once the new generation serves; the old one hears of it over its own
    // control channel, so a request sent right now could still be answered before it knows.
    service
        .wait_log(&format!(
            "generation {} was superseded and is on probation",
            g1.generation
        ))
        .await;
    sender
        .ready()
        .await
        .expect("the idle connection is still open during the grace");
    let (close, body) = send(&mut sender).await;
    assert_eq!(close.as_ref().map(|v| v.as_bytes()), Some(&b"close"[..]));
    assert_eq!(
        common::parse_hello(&body),
        Some(g1),
        "answered by the superseded generation"
    );
}

#[tokio::test]
async fn the_plain_one_liner_exits_by_itself_once_superseded() {
    // Probation off: this times the exit from the takeover.
    let mut service = Service::start_with(
        &example("minimal"),
        &[
            ("RISEFRONT_DRAIN_TIMEOUT", "2s"),
            ("RISEFRONT_PROBATION", "0"),
        ],
    )
    .await;
    let g1 = service.hello().await;
    service.start_again(&[]);
    service.wait_generation(2).await;
    // No connection left: the superseded generation exits at once.
    wait_gone(g1.pid).await;

    // A client that keeps its connection open holds the next one until the drain deadline.
    let g2 = service.hello().await;
    let held = tokio::net::TcpStream::connect(service.addr).await.unwrap();
    let (mut held, connection) = hyper::client::conn::http1::handshake(TokioIo::new(held))
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    // One request on it, answered by generation 2: it was accepted there (no waiting for it to
    // surely have been), and stays open, idle, afterwards.
    let request = hyper::Request::get("/")
        .header(hyper::header::HOST, "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = held.send_request(request).await.expect("request");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        common::parse_hello(&String::from_utf8_lossy(&body)),
        Some(g2)
    );
    let started = Instant::now();
    service.start_again(&[]);
    service.wait_generation(3).await;
    wait_gone(g2.pid).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "held until the 2 s drain deadline, not {took:?}"
    );
    // And it was the deadline that ended it, not the client: the server closed the connection
    // we still hold.
    let closed = tokio::time::timeout(common::PATIENCE, connection).await;
    assert!(
        matches!(closed, Ok(Ok(Ok(())))),
        "the held connection ended with {closed:?}"
    );
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_first_used_after_the_idle_grace() {
    use common::raw::TcpConn;
    // Probation off: the idle grace runs from the takeover.
    let env = [("RISEFRONT_PROBATION", "0")];
    for (name, answered) in [("hello", false), ("hyper", true)] {
        let service = Service::start_with(&example(name), &env).await;
        let mut early = TcpConn::connect(service.addr).await;
        let output = service.upgrade_command().await;
        assert!(output.status.success(), "{name}: {output:?}");
        service.wait_generation(2).await;
        // Well past the 500 ms grace before the first request.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let response = early.get("/").await;
        if answered {
            // GracefulServer moved it (it had not said anything yet) and generation 2 answers.
            let response = response.expect("answered");
            assert_eq!(
                common::parse_hello(&response.body).map(|h| h.generation),
                Some(2),
                "{name}"
            );
        } else {
            // By design with hyper's graceful shutdown (documented at `Builder::idle_grace`):
            // the unread connection was cancelled when the grace ended.
            assert!(response.is_err(), "{name}: {response:?}");
        }
    }
}
