//! The promise, measured: no request fails and no connection is refused across many
//! upgrades under load, and the front does not leak across a hundred of them.

mod common;

#[cfg(unix)]
use std::time::Duration;

use common::load::{self, Kind};
use common::{Service, Way, alive, wait_gone};

const UPGRADES: usize = 20;
/// Responses from a generation that show the load has reached it.
const SETTLED: u64 = 50;

/// 32 workers (16 opening a new connection per request, 16 keep-alive), 20 upgrades
/// alternating the three ways, waiting for each to take over.
async fn run(keep_alive_path: &str) {
    let mut service = Service::start().await;
    let load = load::start(
        service.addr,
        &[
            (Kind::NewConnection, 16, "/"),
            (Kind::KeepAlive, 8, "/"),
            (Kind::KeepAlive, 8, keep_alive_path),
        ],
    );
    let mut pids = vec![service.hello().await.pid];
    for i in 0..UPGRADES {
        // The load has reached the current generation before it is replaced.
        load.served_by(i as u64 + 1, SETTLED).await;
        let hello = service.upgrade(Way::nth(i), i as u64 + 2).await;
        pids.push(hello.pid);
    }
    load.served_by(UPGRADES as u64 + 1, SETTLED).await;
    let report = load.stop().await;
    println!("{}", report.summary(UPGRADES));

    assert_eq!(report.failed, 0, "{}", report.summary(UPGRADES));
    assert_eq!(report.refused, 0);
    let expected: Vec<u64> = (1..=UPGRADES as u64 + 1).collect();
    assert_eq!(
        report.generations.iter().copied().collect::<Vec<_>>(),
        expected,
        "every generation served"
    );
    let (last, old) = pids.split_last().unwrap();
    for pid in old {
        wait_gone(*pid).await;
    }
    assert!(alive(*last));
    // Windows has no SIGTERM to send; the harness kills what is left there.
    #[cfg(unix)]
    {
        let status = service.terminate();
        assert!(
            status.success(),
            "front exit: {status:?}\n{}",
            service.log()
        );
        // No generation, hand-started or spawned, outlives the front.
        let deadline = std::time::Instant::now() + common::PATIENCE;
        while service.any_alive() {
            assert!(
                std::time::Instant::now() < deadline,
                "a process of the service outlived the front"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_across_20_upgrades_under_load() {
    run("/").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_when_drains_overlap_upgrades() {
    // Slow requests keep superseded generations draining while the next upgrades happen.
    run("/slow?ms=300").await;
}

/// Unix only: it reads the front's descriptors and memory from `/proc`.
#[cfg(unix)]
#[tokio::test]
async fn front_does_not_leak_across_100_upgrades() {
    let service = Service::start().await;
    // Warm up: the first upgrades allocate the front's steady-state buffers.
    for n in 2..=6 {
        let output = service.upgrade_command().await;
        assert!(output.status.success(), "{output:?}");
        service.wait_generation(n).await;
    }
    let (fds_before, rss_before) = service.front_resources();
    for n in 7..=106 {
        let output = service.upgrade_command().await;
        assert!(output.status.success(), "upgrade to {n}: {output:?}");
    }
    service.wait_generation(106).await;
    // Superseded generations are reaped asynchronously; give the last ones a moment.
    let deadline = std::time::Instant::now() + common::PATIENCE;
    let (fds_after, rss_after) = loop {
        let (fds, rss) = service.front_resources();
        if fds <= fds_before + 2 || std::time::Instant::now() > deadline {
            break (fds, rss);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!(
        "front after 100 upgrades: {fds_before} -> {fds_after} descriptors, {rss_before} -> {rss_after} KiB resident"
    );
    assert!(
        fds_after <= fds_before + 2,
        "descriptors grew from {fds_before} to {fds_after}"
    );
    assert!(
        rss_after <= rss_before + 2048,
        "resident memory grew from {rss_before} KiB to {rss_after} KiB"
    );
}
