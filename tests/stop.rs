//! End-to-end: how the service stops. A generation stopped by anyone but the front is replaced
//! before it stops accepting; a stop delay keeps the service accepting (with its health check
//! failing) before it drains, with a front and standalone alike. Ctrl-C, which reaches the
//! front and its generations at once, drains once; pressed twice, it exits at once.
//!
//! Unix only: these send SIGTERM to one chosen process, which a Windows console program has no
//! equivalent for (Ctrl-C and Ctrl-Break reach a whole console process group).

#![cfg(unix)]

mod common;

use std::time::{Duration, Instant};

use common::load::{self, Kind};
use common::raw::TcpConn;
use common::{PATIENCE, Service, alive, example, signal_pid, wait_gone};
use rustix::process::Signal;

#[tokio::test]
async fn sigterm_to_the_active_generation_replaces_it_before_it_stops_accepting() {
    let service = Service::start().await;
    let g1 = service.hello().await;
    // Requests in flight for 2.5 s on the generation about to be stopped...
    let slow = load::start(service.addr, &[(Kind::KeepAlive, 2, "/slow?ms=2500")]);
    // ...and new connections arriving all the time.
    let fresh = load::start(service.addr, &[(Kind::NewConnection, 4, "/")]);
    service.wait_log("slow request: answering in 2500 ms").await;

    signal_pid(g1.pid, Signal::TERM);
    let g2 = service.wait_generation(2).await;
    assert_ne!(g2.pid, g1.pid);
    // The old generation finishes its slow requests, then exits.
    wait_gone(g1.pid).await;
    fresh.served_by(2, 20).await;

    let mut fresh = fresh.stop().await;
    let slow = slow.stop().await;
    let log = service.log();
    let ready_ms = log
        .split("generation 2 ready after ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or("?");
    let longest = fresh.quantile(1.0);
    println!(
        "SIGTERM to the active generation: longest wait of a new request {longest:?} (replacement ready after {ready_ms} ms, p99 {:?}); {}",
        fresh.quantile(0.99),
        fresh.summary(1)
    );
    assert_eq!(fresh.failed, 0, "{}", fresh.summary(1));
    assert_eq!(slow.failed, 0, "{}", slow.summary(1));
    assert!(
        slow.ok >= 2,
        "the slow requests finished: {}",
        slow.summary(1)
    );
    assert!(
        log.contains("was asked to stop: starting its replacement"),
        "{log}"
    );
    // Before, a new connection waited for the old process to exit: the slow request's
    // remaining time, 2.2 s or more here.
    assert!(
        longest < Duration::from_millis(1500),
        "a new request waited {longest:?}\n{log}"
    );
}

#[tokio::test]
async fn sigterm_to_the_front_with_a_stop_delay_serves_on_then_drains() {
    let mut service =
        Service::start_with(&example("hello"), &[("RISEFRONT_STOP_DELAY", "1500ms")]).await;
    let g1 = service.hello().await;
    assert_eq!(service.get("/healthz").await, Ok((200, "ok\n".to_owned())));

    let stopped_at = Instant::now();
    service.signal_front(Signal::TERM);
    wait_for_health_503(&service).await;
    let flipped = stopped_at.elapsed();
    // New connections are still served during the delay.
    let mut served = 0;
    while stopped_at.elapsed() < Duration::from_millis(1000) {
        assert_eq!(service.hello().await, g1, "served by the same generation");
        served += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "stop delay 1.5 s: health flag flipped after {flipped:?}, {served} requests served during the delay"
    );
    assert!(served > 0);
    // Then everything drains and the front exits cleanly.
    let status = service.wait_front_exit();
    assert!(status.success(), "{status:?}\n{}", service.log());
    assert!(
        stopped_at.elapsed() >= Duration::from_millis(1500),
        "stopped before the delay ended"
    );
    assert!(!alive(g1.pid));
    assert!(service.get("/").await.is_err(), "still answering");
}

#[tokio::test]
async fn a_standalone_process_keeps_the_same_stop_delay() {
    let mut service = Service::spawn(
        &example("hello"),
        &[("RISEFRONT", "off"), ("RISEFRONT_STOP_DELAY", "1500ms")],
    );
    let deadline = Instant::now() + PATIENCE;
    let hello = loop {
        if let Ok((200, body)) = service.get("/").await {
            break common::parse_hello(&body).expect("hello body");
        }
        assert!(
            Instant::now() < deadline,
            "never served:\n{}",
            service.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(hello.generation, 0, "standalone");
    assert_eq!(hello.pid, service.front_pid());

    let stopped_at = Instant::now();
    service.signal_front(Signal::TERM);
    wait_for_health_503(&service).await;
    let mut served = 0;
    while stopped_at.elapsed() < Duration::from_millis(1000) {
        assert_eq!(service.hello().await, hello);
        served += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served > 0);
    let status = service.wait_front_exit();
    assert!(status.success(), "{status:?}\n{}", service.log());
    assert!(stopped_at.elapsed() >= Duration::from_millis(1500));
}

async fn wait_for_health_503(service: &Service) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match service.get("/healthz").await {
            Ok((503, body)) => {
                assert_eq!(body, "stopping\n");
                return;
            }
            Ok((200, _)) => {}
            other => panic!("/healthz answered {other:?}\n{}", service.log()),
        }
        assert!(
            Instant::now() < deadline,
            "the health flag never flipped\n{}",
            service.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn once_stopping_late_clients_are_refused_not_left_waiting() {
    let mut service = Service::start().await;
    // A slow request keeps the generation draining for a while after the stop.
    let slow = tokio::spawn({
        let addr = service.addr;
        async move { common::get(addr, "/slow?ms=3000").await }
    });
    service.wait_log("slow request: answering in 3000 ms").await;
    service.signal_front(Signal::TERM);
    service.wait_log("stopping 1 generation").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let refused_after = loop {
        let attempt = Instant::now();
        match tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(service.addr),
        )
        .await
        {
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                break attempt.elapsed();
            }
            other => assert!(
                Instant::now() < deadline,
                "a late client was not refused: {other:?}\n{}",
                service.log()
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!("a late client was refused in {refused_after:?} while the last request drained");
    let answer = slow.await.expect("slow request task");
    assert!(matches!(answer, Ok((200, _))), "{answer:?}");
    let status = service.wait_front_exit();
    assert!(status.success(), "{status:?}");
}

/// `count` slow requests in flight on their own connections, each answered after `ms`.
async fn slow_requests(service: &Service, count: usize, ms: u64) -> Vec<TcpConn> {
    let mut conns = Vec::new();
    for _ in 0..count {
        let mut conn = TcpConn::connect(service.addr).await;
        conn.send(&TcpConn::get_request(&format!("/slow?ms={ms}")))
            .await
            .expect("send");
        conns.push(conn);
    }
    let started = format!("slow request: answering in {ms} ms");
    let deadline = Instant::now() + PATIENCE;
    while service.log().matches(&started).count() < count {
        assert!(Instant::now() < deadline, "not all slow requests started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    conns
}

/// How many of the slow requests were answered, and the first failure.
async fn answered(conns: Vec<TcpConn>) -> (usize, Option<String>) {
    let mut ok = 0;
    let mut failure = None;
    for mut conn in conns {
        match conn.response().await {
            Ok(response) if response.status == 200 => ok += 1,
            Ok(response) => failure = failure.or(Some(format!("status {}", response.status))),
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    (ok, failure)
}

fn signal_group(service: &Service, signal: Signal) {
    if let Some(pgid) = rustix::process::Pid::from_raw(service.front_pid() as i32) {
        let _ = rustix::process::kill_process_group(pgid, signal);
    }
}

#[tokio::test]
async fn ctrl_c_heard_by_the_generation_after_the_front_stopped_it_drains_once() {
    // The order a busy machine makes likely: the front's stop reaches the generation before
    // the generation's own copy of the same Ctrl-C. That copy is not a second keypress.
    let mut service = Service::start().await;
    let generation = service.hello().await;
    let conns = slow_requests(&service, 40, 1500).await;
    service.signal_front(Signal::INT);
    service.wait_log("was asked to stop by the front").await;
    signal_pid(generation.pid, Signal::INT);
    let (ok, failure) = answered(conns).await;
    assert_eq!(ok, 40, "{failure:?}\n{}", service.log());
    assert!(service.log().contains("draining on"), "{}", service.log());
    let status = service.wait_front_exit();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn ctrl_c_to_the_whole_process_group_cuts_no_request() {
    let mut service = Service::start().await;
    let conns = slow_requests(&service, 40, 1500).await;
    // A terminal's Ctrl-C: the front and the generation get it at once.
    signal_group(&service, Signal::INT);
    let (ok, failure) = answered(conns).await;
    assert_eq!(ok, 40, "{failure:?}\n{}", service.log());
    let status = service.wait_front_exit();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn ctrl_c_pressed_twice_exits_at_once() {
    let service = Service::start().await;
    let generation = service.hello().await;
    let conns = slow_requests(&service, 2, 60_000).await;
    signal_group(&service, Signal::INT);
    service.wait_log("was asked to stop by the front").await;
    // Both copies of the first keypress arrived (in either order) before the second one.
    let deadline = Instant::now() + PATIENCE;
    while !service.log().contains("generation 1 got SIGINT") {
        assert!(Instant::now() < deadline, "{}", service.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal_group(&service, Signal::INT);
    wait_gone(generation.pid).await;
    let (ok, _) = answered(conns).await;
    assert_eq!(ok, 0, "the requests a second Ctrl-C cut were not answered");
}
