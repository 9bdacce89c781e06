//! End-to-end: a hung build is a dead build. A new generation that takes over and then stops
//! answering (SIGSTOP: the whole process frozen, as a deadlocked runtime would be) is found out
//! by the front's liveness check during its predecessor's probation: the predecessor accepts
//! again, the hung one is killed, and the requests that waited meanwhile are answered. And the
//! other side: healthy generations under load are never taken for hung.

mod common;

use std::time::{Duration, Instant};

use common::load::{self, Kind};
use common::{Service, example};

/// The front's debug lines say when a ping was answered, and how fast.
const DEBUG_LOG: (&str, &str) = ("RUST_LOG", "info,risefront::front=debug");

/// Every `pong_us=N` the front logged: how long each ping took to be answered.
fn pong_times(log: &str) -> Vec<Duration> {
    log.split("pong_us=")
        .skip(1)
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok().map(Duration::from_micros)
        })
        .collect()
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_that_hangs_after_taking_over_hands_traffic_back() {
    use rustix::process::Signal;

    let mut service = Service::start_with(
        &example("hello"),
        &[
            // The window is long: only the liveness check can end this probation early.
            ("RISEFRONT_PROBATION", "60s"),
            DEBUG_LOG,
        ],
    )
    .await;
    let first = service.hello().await;
    service.start_again(&[]);
    let second = service.wait_generation(2).await;
    // Generation 2 serves and answers its pings.
    service.wait_log("generation 2 answered a ping").await;

    common::signal_pid(second.pid, Signal::STOP);
    let stopped = Instant::now();
    // Connections made now wait in the shared queue: generation 2 takes none, generation 1 is
    // on probation. Each must be answered, by generation 1 once it is reinstated.
    let requests: Vec<_> = (0..4)
        .map(|_| tokio::spawn(common::get(service.addr, "/")))
        .collect();
    for request in requests {
        let (status, body) = request
            .await
            .expect("task")
            .unwrap_or_else(|e| panic!("a request failed: {e}\n{}", service.log()));
        assert_eq!(status, 200, "{body}");
        let hello = common::parse_hello(&body).expect("hello body");
        assert_eq!(hello.pid, first.pid, "answered by generation 1: {body}");
    }
    let handed_back = stopped.elapsed();
    common::wait_gone(second.pid).await;
    let log = service.log();
    assert!(
        log.contains("hung") && log.contains("generation 1 (pid") && log.contains("reinstated"),
        "{log}"
    );
    assert!(!log.contains("starting (respawn)"), "{log}");
    println!(
        "hung build: traffic back on generation 1 {} ms after the SIGSTOP (ping every {} ms, answer within {} ms)",
        handed_back.as_millis(),
        1000,
        3000
    );

    // The next upgrade works as usual.
    service.start_again(&[]);
    service.wait_generation(3).await;
    let status = service.terminate();
    assert!(status.success(), "{status:?}\n{}", service.log());
}

/// The false-positive side, measured: upgrades under load, each with a probation window in
/// which the new generation is pinged every second; none may be taken for hung, and the slowest
/// answer is printed beside the 3 s the front waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_generations_under_load_are_never_taken_for_hung() {
    const UPGRADES: u64 = 3;
    let mut service = Service::start_with(
        &example("hello"),
        &[("RISEFRONT_PROBATION", "3s"), DEBUG_LOG],
    )
    .await;
    let load = load::start(
        service.addr,
        &[(Kind::NewConnection, 8, "/"), (Kind::KeepAlive, 8, "/")],
    );
    for n in 2..=UPGRADES + 1 {
        service.start_again(&[]);
        service.wait_generation(n).await;
        load.served_by(n, 20).await;
        // The window ends once generation n answered a ping sent after it.
        service
            .wait_log(&format!("generation {} (pid", n - 1))
            .await;
        let deadline = Instant::now() + common::PATIENCE;
        while service.log().matches("ends its probation").count()
            < usize::try_from(n - 1).expect("small")
        {
            assert!(Instant::now() < deadline, "{}", service.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let report = load.stop().await;
    let log = service.log();
    let mut pongs = pong_times(&log);
    pongs.sort_unstable();
    assert!(!pongs.is_empty(), "no ping was answered:\n{log}");
    let slowest = pongs.last().copied().unwrap_or_default();
    let median = pongs[pongs.len() / 2];
    println!(
        "liveness under load: {} pings answered over {UPGRADES} probations, median {} us, slowest {} us (hung after 3,000,000 us); {}",
        pongs.len(),
        median.as_micros(),
        slowest.as_micros(),
        report.summary(usize::try_from(UPGRADES).expect("small"))
    );
    assert!(
        !log.contains("hung"),
        "a healthy generation was taken for hung:\n{log}"
    );
    assert!(!log.contains("reinstated"), "{log}");
    assert_eq!(report.failed, 0, "{}", report.summary(3));
    #[cfg(unix)]
    {
        let status = service.terminate();
        assert!(status.success(), "{status:?}\n{}", service.log());
    }
}
