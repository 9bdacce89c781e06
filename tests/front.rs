//! End-to-end: the front's edges. Generations it starts itself that fail before or soon after
//! ready, giving up, stopping while a generation starts, and upgrades under a flood of silent
//! control connections.

mod common;

use std::time::Duration;

use common::{Service, TempDir, example};

/// A service whose generations fail as the file `fail` says, once a test writes it.
struct Failing {
    service: Service,
    file: std::path::PathBuf,
    _dir: TempDir,
}

impl Failing {
    async fn start(env: &[(&str, &str)]) -> Failing {
        let dir = TempDir::new();
        let file = dir.0.join("fail");
        let path = file.to_string_lossy().into_owned();
        let mut env: Vec<(&str, &str)> = env.to_vec();
        env.push(("HELLO_FAIL_FILE", &path));
        let service = Service::start_with(&example("hello"), &env).await;
        Failing {
            service,
            file,
            _dir: dir,
        }
    }

    fn fail_with(&self, mode: &str) {
        std::fs::write(&self.file, mode).expect("write the failure file");
    }

    fn heal(&self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

/// How many generations the front started, from its log.
fn starts(log: &str) -> usize {
    log.matches(") starting (").count()
}

#[tokio::test]
async fn a_generation_the_front_starts_that_fails_before_ready_is_rolled_back() {
    let failing = Failing::start(&[]).await;
    let service = &failing.service;
    let g1 = service.hello().await;

    failing.fail_with("exit");
    let output = service.upgrade_command().await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the failed upgrade succeeded");
    assert!(
        stderr.contains("generation 2 failed before it was ready")
            // "exit status: 3" on Unix, "exit code: 3" on Windows.
            && stderr.contains(": 3")
            && !stderr.contains("pid 0"),
        "{stderr}"
    );
    // Why, where it was asked: what the failing build wrote to stderr, and still in the
    // service's log.
    assert!(
        stderr.contains("its last lines on stderr:\n  | ")
            && stderr.contains("\n  | HELLO_FAIL=exit: exiting before serving"),
        "{stderr}"
    );
    service
        .wait_log("HELLO_FAIL=exit: exiting before serving")
        .await;
    service.wait_log("rollback: generation 2").await;
    assert_eq!(
        service.hello().await,
        g1,
        "the old generation keeps serving"
    );
    assert!(
        !service.log().contains("starting (respawn)"),
        "a rollback respawns nothing:\n{}",
        service.log()
    );

    failing.heal();
    let output = service.upgrade_command().await;
    assert!(output.status.success(), "{output:?}");
    assert_eq!(service.hello().await.generation, 3);
}

#[tokio::test]
async fn a_service_that_never_becomes_ready_gives_up_after_three_starts() {
    let mut service = Service::spawn(&example("hello"), &[("HELLO_FAIL", "exit")]);
    let status = service.wait_front_exit();
    assert_eq!(status.code(), Some(1), "{}", service.log());
    let log = service.log();
    assert_eq!(starts(&log), 3, "{log}");
    assert!(log.contains("the front gives up"), "{log}");
    // The delays between the starts grew: 200 ms, then 400 ms (the line's structured fields).
    assert!(log.contains("respawn_in_ms=200 failures=1"), "{log}");
    assert!(log.contains("respawn_in_ms=400 failures=2"), "{log}");
}

#[tokio::test]
async fn a_build_that_crashes_soon_after_ready_is_restarted_with_growing_delays() {
    let service = Service::spawn(&example("hello"), &[("HELLO_FAIL", "crash:200")]);
    // Wait for the first start, then count the starts in a fixed window.
    service.wait_log(") starting (").await;
    let window = Duration::from_secs(6);
    tokio::time::sleep(window).await;
    let log = service.log();
    let count = starts(&log);
    println!("{count} starts in {window:?} of a build that crashes 200 ms after ready");
    // Back-to-back restarts would be one every ~250 ms (24 in the window); the delays of
    // 200, 400, 800, 1600 and 3200 ms allow 5 or 6 (fewer where processes start slowly).
    assert!((2..=7).contains(&count), "{count} starts:\n{log}");
    assert!(
        log.contains("respawn_in_ms=200") && log.contains("respawn_in_ms=400"),
        "the delay did not grow:\n{log}"
    );
}

#[tokio::test]
async fn timeouts_too_large_for_the_clock_mean_never() {
    // 10^19 s: a valid Duration, far past what an Instant can hold.
    let never = "10000000000000000000";
    let mut service = Service::start_with(
        &example("hello"),
        &[
            ("RISEFRONT_READY_TIMEOUT", never),
            ("RISEFRONT_DRAIN_TIMEOUT", never),
        ],
    )
    .await;
    for n in 2..=3 {
        let way = common::Way::nth(n as usize);
        service.upgrade(way, n).await;
    }
    assert!(!service.log().contains("panicked"), "{}", service.log());
}

#[cfg(unix)]
mod unix {
    use std::time::Instant;

    use super::*;

    /// The pid the front logged when it started generation `n`.
    fn logged_pid(log: &str, n: u64) -> u32 {
        log.split(&format!("generation {n} (pid "))
            .nth(1)
            .and_then(|rest| rest.split(')').next())
            .and_then(|pid| pid.parse().ok())
            .unwrap_or_else(|| panic!("generation {n}'s pid in the log:\n{log}"))
    }
    use common::{alive, wait_gone};
    use rustix::process::Signal;
    use tokio::net::UnixStream;

    #[tokio::test]
    async fn a_stop_while_a_generation_starts_kills_it_before_the_front_exits() {
        let mut failing = Failing::start(&[]).await;
        let g1 = failing.service.hello().await;
        // Generation 2 takes 3 s before it even calls bind: long after the front is gone,
        // if the front did not wait for it.
        failing.fail_with("slow-start:3000");
        failing.service.signal_front(Signal::HUP);
        failing.service.wait_log("generation 2 (pid ").await;
        let g2 = logged_pid(&failing.service.log(), 2);
        let status = failing.service.terminate();
        assert!(
            !alive(g2),
            "the front exited ({status:?}) before generation 2 was gone"
        );
        wait_gone(g1.pid).await;
        // Nothing took the service over: no second front answers, and none will.
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(
            failing.service.get("/").await.is_err(),
            "something serves after the stop:\n{}",
            failing.service.log()
        );
        assert!(!failing.service.any_alive(), "a process outlived the front");
    }

    #[tokio::test]
    async fn a_stop_while_the_first_generation_starts_leaves_nothing_behind() {
        // Every process sleeps 3 s before bind (the front too, before it becomes the front).
        let mut service = Service::spawn(&example("hello"), &[("HELLO_FAIL", "slow-start:3000")]);
        service.wait_log("generation 1 (pid ").await;
        let g1 = logged_pid(&service.log(), 1);
        let status = service.terminate();
        assert!(
            !alive(g1),
            "the front exited ({status:?}) before generation 1 was gone"
        );
        // Generation 1 would have woken up by now, found no front and become one.
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(
            service.get("/").await.is_err(),
            "something serves after the stop:\n{}",
            service.log()
        );
        assert!(!service.any_alive(), "a process outlived the front");
    }

    #[tokio::test]
    async fn two_hundred_silent_control_connections_do_not_delay_an_upgrade() {
        let mut service = Service::start().await;
        let socket = service.control_endpoint().await;
        let mut silent = Vec::new();
        for _ in 0..200 {
            silent.push(UnixStream::connect(&socket).await.expect("connect"));
        }
        // The front has taken them all in (and dropped the oldest to stay within its limit).
        service
            .wait_log("dropped the oldest that had not said hello")
            .await;

        let started = Instant::now();
        service.signal_front(Signal::HUP);
        service.wait_generation(2).await;
        let took = started.elapsed();
        println!("SIGHUP upgrade with 200 silent control connections: {took:?}");
        assert!(took < Duration::from_secs(2), "took {took:?}");

        // A build started by hand competes for a slot on the endpoint: the oldest silent peer
        // makes room for it.
        for _ in 0..200 {
            silent.push(UnixStream::connect(&socket).await.expect("connect"));
        }
        let started = Instant::now();
        service.start_again(&[]);
        service.wait_generation(3).await;
        let took = started.elapsed();
        println!("hand-started upgrade with 400 silent control connections: {took:?}");
        assert!(took < Duration::from_secs(2), "took {took:?}");
        let log = service.log();
        assert!(!log.contains("rollback"), "{log}");
        assert!(
            log.contains("dropped the oldest that had not said hello"),
            "{log}"
        );
        drop(silent);
    }

    #[tokio::test]
    async fn a_generation_turned_away_by_a_full_front_says_why() {
        let mut service = Service::start_with(
            &example("hello"),
            &[
                ("RISEFRONT_CONTROL_HANDSHAKE_TIMEOUT", "10s"),
                // The front logs each Hello it has read at debug level.
                ("RUST_LOG", "info,risefront::front=debug"),
            ],
        )
        .await;
        let socket = service.control_endpoint().await;
        // 64 control clients that introduce themselves and then wait: all slots taken by
        // peers that said hello, none of which may be dropped for a stranger.
        let mut clients = Vec::new();
        for _ in 0..64 {
            let mut client = UnixStream::connect(&socket).await.expect("connect");
            tokio::io::AsyncWriteExt::write_all(&mut client, &control_hello())
                .await
                .expect("hello");
            clients.push(client);
        }
        // Every one of them has been read as a Hello by the front.
        let ours = format!("(pid {}) said hello", std::process::id());
        let deadline = std::time::Instant::now() + common::PATIENCE;
        while service.log().matches(&ours).count() < 64 {
            assert!(std::time::Instant::now() < deadline, "{}", service.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let pid = service.start_again(&[]);
        let status = service.wait_other(pid);
        assert!(!status.success());
        let log = service.log();
        assert!(
            log.contains(&format!(
                "the front at {socket} already serves 64 control connections (its limit)"
            )),
            "{log}"
        );
        assert!(log.contains("refused this generation"), "{log}");
        drop(clients);
    }

    /// The front runs out of descriptors while accepting, and nothing else happens: accepting
    /// must resume by itself once descriptors are available again, not wait for an event.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn control_accepting_resumes_by_itself_after_running_out_of_descriptors() {
        use rustix::process::{Pid, Resource, Rlimit, getrlimit, prlimit};

        let service = Service::start_with(
            &example("hello"),
            &[("RISEFRONT_CONTROL_HANDSHAKE_TIMEOUT", "60s")],
        )
        .await;
        let socket = service.control_endpoint().await;
        let front = Pid::from_raw(service.front_pid() as i32).expect("front pid");
        let open: Vec<u64> = std::fs::read_dir(format!("/proc/{}/fd", service.front_pid()))
            .expect("front's descriptors")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
            .collect();
        // A limit that leaves the front exactly four free descriptor numbers.
        let limit = (0u64..)
            .filter(|fd| !open.contains(fd))
            .nth(3)
            .expect("a free descriptor")
            + 1;
        // The front inherited our limits; lower only the soft one (raising the hard one back
        // would need a capability).
        let tight = Rlimit {
            current: Some(limit),
            maximum: getrlimit(Resource::Nofile).maximum,
        };
        let before = prlimit(Some(front), Resource::Nofile, tight).expect("lower the limit");
        // Connections that never speak: a few are accepted, then accept fails.
        let mut silent = Vec::new();
        for _ in 0..8 {
            silent.push(UnixStream::connect(&socket).await.expect("connect"));
        }
        service.wait_log("accept failed").await;
        prlimit(Some(front), Resource::Nofile, before).expect("restore the limit");

        // No peer leaves for a minute: only the front's own pause deadline can resume accepting.
        let started = Instant::now();
        let output = service.upgrade_command().await;
        let took = started.elapsed();
        println!("upgrade after the front ran out of descriptors: {took:?}");
        assert!(output.status.success(), "{output:?}\n{}", service.log());
        assert!(took < Duration::from_secs(5), "took {took:?}");
        drop(silent);
    }

    /// At a descriptor limit of 64, seventy control connections that never speak take every
    /// descriptor the front has: the oldest must make room for the endpoint's next client and
    /// for a spawn, or every SIGHUP and `--upgrade` fails until their handshake deadline.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn silent_connections_holding_every_descriptor_do_not_lock_out_upgrades() {
        use rustix::process::{Pid, Resource, Rlimit, getrlimit, prlimit};

        // Only making room can help: the silent peers would wait a minute for their Hello.
        let service = Service::start_with(
            &example("hello"),
            &[("RISEFRONT_CONTROL_HANDSHAKE_TIMEOUT", "60s")],
        )
        .await;
        let socket = service.control_endpoint().await;
        let front = Pid::from_raw(service.front_pid() as i32).expect("front pid");
        let limit = Rlimit {
            current: Some(64),
            maximum: getrlimit(Resource::Nofile).maximum,
        };
        prlimit(Some(front), Resource::Nofile, limit).expect("lower the limit");
        let mut silent = Vec::new();
        for _ in 0..70 {
            silent.push(UnixStream::connect(&socket).await.expect("connect"));
        }
        service.wait_log("accept failed").await;

        service.signal_front(Signal::HUP);
        service.wait_generation(2).await;
        let output = service.upgrade_command().await;
        assert!(output.status.success(), "{output:?}\n{}", service.log());
        service.wait_generation(3).await;
        let log = service.log();
        assert!(!log.contains("rollback"), "{log}");
        assert!(
            log.contains("dropped the oldest that had not said hello"),
            "{log}"
        );
        drop(silent);
    }

    /// `Hello { pid: ours, role: control }` in this build's protocol version.
    fn control_hello() -> Vec<u8> {
        common::raw_hello(common::PROTOCOL_VERSION, std::process::id(), 2)
    }

    #[tokio::test]
    async fn failures_are_reported_with_the_real_pid() {
        let failing = Failing::start(&[]).await;
        failing.fail_with("exit");
        failing.service.signal_front(Signal::HUP);
        failing.service.wait_log("rollback: generation 2").await;
        let log = failing.service.log();
        assert!(!log.contains("pid 0)"), "{log}");
    }
}

/// `risefront::upgrade` as a deploy tool calls it: each outcome is its own error variant.
#[tokio::test]
async fn upgrade_errors_say_which_case_it_is() {
    use risefront::UpgradeError;

    let failing = Failing::start(&[("RISEFRONT_READY_TIMEOUT", "5s")]).await;
    let service = &failing.service;
    let client = || {
        let builder =
            risefront::Builder::new().name(format!("hello-127.0.0.1_{}", service.addr.port()));
        #[cfg(unix)]
        let builder = builder.control_dir(service.runtime_dir().join("risefront"));
        builder
    };

    // Nothing to upgrade.
    let nothing = risefront::Builder::new().name("no-such-service");
    #[cfg(unix)]
    let nothing = nothing.control_dir(service.runtime_dir().join("risefront"));
    let none = nothing.upgrade([service.addr]).await;
    assert!(
        matches!(none, Err(UpgradeError::NoFront { .. })),
        "{none:?}"
    );

    assert_eq!(client().upgrade([service.addr]).await.expect("upgrade"), 2);

    // A build that fails: roll back.
    failing.fail_with("exit");
    let failed = client().upgrade([service.addr]).await;
    assert!(
        matches!(&failed, Err(UpgradeError::Failed { reason, .. }) if reason.contains("generation 3")),
        "{failed:?}"
    );
    assert!(
        matches!(&failed, Err(UpgradeError::Failed { stderr, .. }) if stderr.last().is_some_and(|l| l == "HELLO_FAIL=exit: exiting before serving")),
        "{failed:?}"
    );

    // One starting already: retry later.
    failing.fail_with("hang");
    let hanging = tokio::spawn(client().upgrade([service.addr]));
    service.wait_log("generation 4 (pid ").await;
    let busy = client().upgrade([service.addr]).await;
    assert!(matches!(busy, Err(UpgradeError::Busy { .. })), "{busy:?}");
    let as_io = std::io::Error::from(busy.unwrap_err());
    assert_eq!(as_io.kind(), std::io::ErrorKind::ResourceBusy);
    let timed_out = hanging.await.expect("task");
    assert!(
        matches!(timed_out, Err(UpgradeError::Failed { .. })),
        "{timed_out:?}"
    );
    // Killed at its ready timeout: what it said before is returned with the failure.
    assert!(
        matches!(&timed_out, Err(UpgradeError::Failed { stderr, .. }) if stderr.iter().any(|l| l.contains("HELLO_FAIL=hang: never serving"))),
        "{timed_out:?}"
    );
}
