//! End-to-end: probation. A build that dies right after it took over hands the traffic back to
//! the generation it replaced, which accepts again at once, under load; the failed build is not
//! started again, and the next upgrade to a good build works.

mod common;

use std::time::Duration;

use common::load::{self, Kind};
use common::{Service, TempDir, Way, example};

/// Load workers: each has at most one request in flight, so at most this many requests can be
/// caught on a process when it dies.
const NEW_CONNECTION_WORKERS: usize = 8;
const KEEP_ALIVE_WORKERS: usize = 8;

/// Seconds since midnight of a log line's timestamp (`2026-11-25T22:50:01.123456Z ...`).
fn timestamp(line: &str) -> Option<f64> {
    let stamp = line.split_whitespace().next()?;
    let time = stamp.split_once('T')?.1.trim_end_matches('Z');
    let mut parts = time.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// For each crash, milliseconds from the dying build's last log line to the reinstated
/// generation's "accepting again".
fn handback_times(log: &str) -> Vec<f64> {
    let mut crashed = None;
    let mut times = Vec::new();
    for line in log.lines() {
        if line.contains("HELLO_FAIL=crash:") {
            crashed = timestamp(line);
        } else if line.contains("was reinstated")
            && let (Some(from), Some(to)) = (crashed.take(), timestamp(line))
        {
            times.push((to - from) * 1000.0);
        }
    }
    times
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_dying_right_after_taking_over_hands_traffic_back() {
    let dir = TempDir::new();
    let fail = dir.0.join("fail");
    let fail_path = fail.to_string_lossy().into_owned();
    let mut service = Service::start_with(
        &example("hello"),
        &[
            ("HELLO_FAIL_FILE", &fail_path),
            // Long enough that a slow machine cannot let the window pass before the crash.
            ("RISEFRONT_PROBATION", "60s"),
        ],
    )
    .await;
    let first = service.hello().await;
    let load = load::start(
        service.addr,
        &[
            (Kind::NewConnection, NEW_CONNECTION_WORKERS, "/"),
            (Kind::KeepAlive, KEEP_ALIVE_WORKERS, "/"),
        ],
    );

    // Every way of upgrading, each to a build that exits 300 ms after it took over.
    #[cfg(unix)]
    let bad_ways = [Way::StartAgain, Way::Hangup, Way::Command];
    #[cfg(windows)]
    let bad_ways = [Way::StartAgain, Way::Command];
    std::fs::write(&fail, "crash:300").expect("write the failure file");
    for (i, way) in bad_ways.iter().enumerate() {
        let n = i as u64 + 2;
        // `--upgrade` answers once the new build is ready, which it is, for 300 ms.
        service.request_upgrade(*way).await;
        service.wait_log(&format!("generation={n} ready_ms=")).await;
        let deadline = std::time::Instant::now() + common::PATIENCE;
        while service.log().matches("was reinstated").count() < i + 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "generation 1 was not reinstated after generation {n} died ({way:?}):\n{}",
                service.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The same process as before the takeover serves again, and at once.
        let back = service.hello().await;
        assert_eq!(back, first, "after generation {n} died ({way:?})");
    }

    // A good build: the next upgrade works normally, and its number shows that no generation
    // was started in between (the failed build was not respawned).
    std::fs::remove_file(&fail).expect("remove the failure file");
    let good = bad_ways.len() as u64 + 2;
    let output = service.upgrade_command().await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains(&format!("generation {good} is serving")),
        "--upgrade to the good build: {output:?}\n{}",
        service.log()
    );
    let hello = service.wait_generation(good).await;
    assert_ne!(hello.pid, first.pid);
    load.served_by(good, 20).await;
    let report = load.stop().await;
    let log = service.log();
    let crashes = log.matches("HELLO_FAIL=crash:").count();
    let times = handback_times(&log);
    println!(
        "probation: {} ({} failed builds); hand-back after exit: {:?} ms",
        report.summary(bad_ways.len() + 1),
        crashes,
        times.iter().map(|t| format!("{t:.1}")).collect::<Vec<_>>()
    );

    assert_eq!(
        crashes,
        bad_ways.len(),
        "each failed build started once:\n{log}"
    );
    assert!(!log.contains("starting (respawn)"), "{log}");
    assert_eq!(times.len(), bad_ways.len(), "{log}");
    assert_eq!(report.refused, 0, "{}", report.summary(bad_ways.len()));
    // Only requests caught on a dying process may fail: one per worker per crash at most.
    let in_flight = (NEW_CONNECTION_WORKERS + KEEP_ALIVE_WORKERS) * bad_ways.len();
    assert!(
        report.failed <= in_flight as u64,
        "{} failed, more than the {in_flight} that can have been in flight on the dying builds: {:?}",
        report.failed,
        report.errors
    );
    #[cfg(unix)]
    {
        let status = service.terminate();
        assert!(
            status.success(),
            "front exit: {status:?}\n{}",
            service.log()
        );
    }
}

#[tokio::test]
async fn after_the_window_the_superseded_generation_drains_and_exits() {
    let mut service =
        Service::start_with(&example("hello"), &[("RISEFRONT_PROBATION", "5s")]).await;
    let g1 = service.hello().await;
    let started = std::time::Instant::now();
    service.start_again(&[]);
    service.wait_generation(2).await;
    // On probation generation 1 is alive but accepts nothing: the shared queue is all 2's.
    assert!(
        common::alive(g1.pid),
        "generation 1 exited during its probation"
    );
    for _ in 0..20 {
        assert_eq!(service.hello().await.generation, 2);
    }
    service.wait_log("ends its probation").await;
    common::wait_gone(g1.pid).await;
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "generation 1 exited {:?} after the takeover, inside its 5 s window",
        started.elapsed()
    );
    assert_eq!(service.hello().await.generation, 2);
}
