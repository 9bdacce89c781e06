//! End-to-end: the ways a generation is upgraded, rolled back, respawned and stopped, each with
//! real processes on loopback.
//!
//! Windows runs every test that does not need a Unix mechanism (SIGHUP, SIGTERM, a shell
//! script as the replaced binary, the stale socket file).

mod common;

#[cfg(unix)]
use std::fs;
use std::time::Duration;

use common::{Service, alive, wait_gone};
#[cfg(unix)]
use rustix::process::Signal;

#[tokio::test]
async fn three_ways_to_upgrade_keep_the_front() {
    let mut service = Service::start().await;
    let front = service.front_pid();
    let g1 = service.hello().await;
    assert_eq!(g1.generation, 1);
    assert_ne!(g1.pid, front, "the front runs no handlers");

    // 1. Start the binary again, by hand.
    service.start_again(&[]);
    let g2 = service.wait_generation(2).await;

    let mut pids = vec![g1.pid, g2.pid];

    // 2. SIGHUP to the front (Windows has no SIGHUP).
    #[cfg(unix)]
    {
        service.signal_front(Signal::HUP);
        pids.push(service.wait_generation(3).await.pid);
    }

    // 3. `hello --upgrade`, which waits for the outcome.
    let last = pids.len() as u64 + 1;
    let output = service.upgrade_command().await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "--upgrade failed: {output:?}");
    assert!(
        stdout.contains(&format!("generation {last} is serving")),
        "{stdout}"
    );
    let newest = service.hello().await;
    assert_eq!(newest.generation, last);
    pids.push(newest.pid);

    for (i, a) in pids.iter().enumerate() {
        for b in &pids[i + 1..] {
            assert_ne!(a, b, "every generation is a new process: {pids:?}");
        }
    }
    assert!(alive(front), "the front stays up across upgrades");
    for old in &pids[..pids.len() - 1] {
        wait_gone(*old).await;
    }
    let previous = last - 1;
    service
        .wait_log(&format!("generation {previous} (pid"))
        .await;
    assert!(
        service.log().contains(&format!("superseded=[{previous}]")),
        "{}",
        service.log()
    );
}

#[tokio::test]
async fn slow_request_started_before_an_upgrade_completes_after_it() {
    let service = Service::start().await;
    let addr = service.addr;
    let slow = tokio::spawn(async move { common::get(addr, "/slow?ms=2000").await });
    // The request reached generation 1 before the upgrade starts.
    service.wait_log("slow request: answering in 2000 ms").await;
    let output = service.upgrade_command().await;
    assert!(output.status.success(), "--upgrade failed: {output:?}");
    assert_eq!(service.hello().await.generation, 2);
    let (status, body) = slow.await.unwrap().expect("slow request");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        common::parse_hello(&body).map(|h| h.generation),
        Some(1),
        "answered by the superseded generation: {body}"
    );
}

#[tokio::test]
async fn generation_exiting_before_ready_is_rolled_back() {
    let mut service = Service::start().await;
    let g1 = service.hello().await;
    let failing = service.start_again(&[("HELLO_FAIL", "exit")]);
    let status = service.wait_other(failing);
    assert_eq!(status.code(), Some(3));
    service.wait_log("rollback: generation 2").await;
    assert_eq!(
        service.hello().await,
        g1,
        "the old generation keeps serving"
    );
    // The next real upgrade still works.
    #[cfg(unix)]
    service.signal_front(Signal::HUP);
    #[cfg(windows)]
    {
        let output = service.upgrade_command().await;
        assert!(output.status.success(), "--upgrade failed: {output:?}");
    }
    service.wait_generation(3).await;
}

#[tokio::test]
async fn generation_never_ready_is_killed_at_the_ready_timeout() {
    let mut service = Service::start_with(
        &common::example("hello"),
        &[("RISEFRONT_READY_TIMEOUT", "1s")],
    )
    .await;
    let g1 = service.hello().await;
    let hanging = service.start_again(&[("HELLO_FAIL", "hang")]);
    service.wait_log("not ready within 1s").await;
    let status = service.wait_other(hanging);
    assert!(!status.success(), "killed, not exited: {status:?}");
    let log = service.log();
    assert!(log.contains("rollback: generation 2"), "{log}");
    // The build said so itself, where the person who started it looks, before it was killed.
    let warned = log
        .find("generation 2 is still not ready after 900ms: unless it is within 100ms")
        .unwrap_or_else(|| panic!("the build did not say why it is stopped:\n{log}"));
    let killed = log.find("not ready within 1s").expect("the front's line");
    assert!(warned < killed, "the warning came after the kill:\n{log}");
    assert_eq!(service.hello().await, g1);
    // An upgrade request while nothing is starting works again.
    let output = service.upgrade_command().await;
    assert!(output.status.success(), "--upgrade failed: {output:?}");
}

#[tokio::test]
async fn a_second_upgrade_while_one_is_starting_is_refused() {
    let mut service = Service::start_with(
        &common::example("hello"),
        &[("RISEFRONT_READY_TIMEOUT", "3s")],
    )
    .await;
    let g1 = service.hello().await;
    let hanging = service.start_again(&[("HELLO_FAIL", "hang")]);
    service.wait_log(&format!("(pid {hanging}) starting")).await;

    let output = service.upgrade_command().await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a second upgrade was accepted");
    assert!(stderr.contains("already in progress"), "{stderr}");

    let another = service.start_again(&[]);
    let status = service.wait_other(another);
    assert!(
        !status.success(),
        "a second hand-started generation was accepted"
    );
    service.wait_log("refused a new generation").await;

    assert_eq!(
        service.hello().await,
        g1,
        "the active generation keeps serving"
    );
    service.wait_other(hanging);
    let output = service.upgrade_command().await;
    assert!(output.status.success(), "once the slot is free: {output:?}");
}

#[tokio::test]
async fn killed_active_generation_is_respawned() {
    let service = Service::start().await;
    let g1 = service.hello().await;
    common::kill_pid(g1.pid);
    let g2 = service.wait_generation_allowing_errors(2).await;
    assert_ne!(g2.pid, g1.pid);
    for _ in 0..20 {
        assert_eq!(service.hello().await, g2);
    }
    assert!(
        service.log().contains("active generation 1"),
        "{}",
        service.log()
    );
}

#[cfg(unix)]
#[tokio::test]
async fn sigterm_stops_everything_and_leaves_nothing_behind() {
    let mut service = Service::start().await;
    service.signal_front(Signal::HUP);
    service.wait_generation(2).await;
    let status = service.terminate();
    assert_eq!(status.code(), Some(0), "{}", service.log());
    let deadline = std::time::Instant::now() + common::PATIENCE;
    while service.any_alive() {
        assert!(
            std::time::Instant::now() < deadline,
            "a process outlived the front"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let leftovers: Vec<_> = fs::read_dir(service.runtime_dir().join("risefront"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    assert!(
        common::get(service.addr, "/").await.is_err(),
        "nothing listens any more"
    );
}

#[cfg(unix)]
#[tokio::test]
async fn sighup_runs_the_binary_now_at_the_started_path() {
    let dir = common::TempDir::new();
    let bin = dir.0.join("hello");
    fs::copy(common::example("hello"), &bin).unwrap();
    let service = Service::start_with(&bin, &[]).await;

    // Deploy a "new build": a wrapper that leaves a mark and runs the real binary.
    let marker = dir.0.join("new-build-ran");
    let staged = dir.0.join("hello.new");
    fs::write(
        &staged,
        format!(
            "#!/bin/sh\ntouch '{}'\nexec '{}' \"$@\"\n",
            marker.display(),
            common::example("hello").display()
        ),
    )
    .unwrap();
    common::set_mode(&staged, 0o755);
    fs::rename(&staged, &bin).unwrap();

    service.signal_front(Signal::HUP);
    service.wait_generation(2).await;
    assert!(
        marker.exists(),
        "SIGHUP ran the old binary\n{}",
        service.log()
    );
}

#[cfg(unix)]
#[tokio::test]
async fn stale_socket_of_a_killed_front_does_not_block_the_next_start() {
    let service = Service::start().await;
    let g1 = service.hello().await;
    service.signal_front(Signal::KILL);
    // The orphaned generation notices its front is gone, drains and exits.
    wait_gone(g1.pid).await;
    let socket = service
        .runtime_dir()
        .join("risefront")
        .join(format!("hello-127.0.0.1_{}.sock", service.addr.port()));
    assert!(socket.exists(), "the killed front left its socket file");

    let mut again = service.command(&[]);
    std::os::unix::process::CommandExt::process_group(&mut again, 0);
    let mut front = again.spawn().unwrap();
    let guard = KillOnDrop(front.id());
    let hello = service.wait_generation(1).await;
    assert_ne!(hello.pid, g1.pid);
    drop(guard);
    let _ = front.wait();
}

/// Kills a process group when dropped, for fronts started outside `Service`.
#[cfg(unix)]
struct KillOnDrop(u32);

#[cfg(unix)]
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        common::signal_pid(self.0, Signal::TERM);
        std::thread::sleep(Duration::from_millis(500));
        if let Some(pgid) = rustix::process::Pid::from_raw(self.0 as i32) {
            let _ = rustix::process::kill_process_group(pgid, Signal::KILL);
        }
    }
}

#[tokio::test]
async fn standalone_binds_plainly() {
    let service = Service::spawn(&common::example("hello"), &[("RISEFRONT", "off")]);
    let hello = service.poll_generation(0, true).await;
    assert_eq!(hello.generation, 0, "no front in standalone mode");
    assert_eq!(hello.pid, service.front_pid(), "the process serves itself");
    assert!(
        !service.runtime_dir().join("risefront").exists(),
        "standalone mode creates no control socket"
    );
}

#[tokio::test]
async fn every_address_moves_to_the_new_generation() {
    let service = Service::spawn_on(&common::example("hello"), &[], 3);
    service.poll_generation(1, true).await;
    for addr in &service.addrs {
        let (status, body) = common::get(*addr, "/").await.expect("GET /");
        assert_eq!(
            (status, common::parse_hello(&body).map(|h| h.generation)),
            (200, Some(1))
        );
    }
    let output = service.upgrade_command().await;
    assert!(
        output.status.success(),
        "--upgrade with every address: {output:?}"
    );
    for addr in &service.addrs {
        // Many connections on each address: every one is accepted by the new generation.
        for _ in 0..20 {
            let (status, body) = common::get(*addr, "/").await.expect("GET /");
            assert_eq!(
                (status, common::parse_hello(&body).map(|h| h.generation)),
                (200, Some(2))
            );
        }
    }
}

#[cfg(unix)]
#[tokio::test]
async fn sighup_to_a_generation_is_ignored() {
    let service = Service::start().await;
    let g1 = service.hello().await;
    common::signal_pid(g1.pid, Signal::HUP);
    service.wait_log("got SIGHUP and ignores it").await;
    assert_eq!(service.hello().await, g1, "still serving, same process");
}

#[tokio::test]
async fn manual_readiness_keeps_the_old_generation_serving_until_ready() {
    let mut service = Service::start_with(&common::example("hyper"), &[]).await;
    let g1 = service.hello().await;
    let started = std::time::Instant::now();
    service.start_again(&[("HELLO_READY_AFTER_MS", "1500")]);
    // The new generation has the sockets and its server loop runs, but it accepts nothing
    // until it says it is ready: every request meanwhile is answered by generation 1.
    while started.elapsed() < Duration::from_millis(1000) {
        assert_eq!(service.hello().await, g1);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    service.wait_generation(2).await;
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "took over after {:?}, before it was ready",
        started.elapsed()
    );
}

/// Sends SIGCONT when dropped, so that a failing test leaves no stopped process behind.
#[cfg(unix)]
struct Resume(u32);

#[cfg(unix)]
impl Drop for Resume {
    fn drop(&mut self) {
        common::signal_pid(self.0, Signal::CONT);
    }
}

/// A service whose generation 1 is held by SIGSTOP (until the `Resume` is dropped): it can
/// neither accept nor read what the front tells it.
#[cfg(unix)]
async fn with_generation_1_stopped() -> (Service, Resume) {
    let service = Service::start().await;
    let g1 = service.hello().await;
    common::signal_pid(g1.pid, Signal::STOP);
    (service, Resume(g1.pid))
}

#[cfg(unix)]
#[tokio::test]
async fn upgrade_returns_once_the_old_generation_stopped_accepting() {
    // A deploy script that checks the new build right after `--upgrade` must never reach the
    // old one. Generation 1, stopped with SIGSTOP, cannot say it stepped aside: `--upgrade`
    // must wait for it (a front that answered at once would let it accept again on SIGCONT).
    let (service, resume) = with_generation_1_stopped().await;
    let upgrade = service.upgrade_command();
    tokio::pin!(upgrade);
    tokio::select! {
        output = &mut upgrade => panic!("--upgrade returned before generation 2 was ready: {output:?}"),
        () = service.wait_log("generation 2 ready after") => {}
    }
    tokio::select! {
        output = &mut upgrade => panic!(
            "--upgrade returned while generation 1 could still accept: {output:?}\n{}",
            service.log()
        ),
        () = tokio::time::sleep(Duration::from_millis(300)) => {}
    }
    drop(resume);
    let output = upgrade.await;
    assert!(output.status.success(), "{output:?}");
    for _ in 0..20 {
        assert_eq!(service.hello().await.generation, 2);
    }
    assert!(
        !service.log().contains("did not confirm"),
        "{}",
        service.log()
    );
}

#[cfg(unix)]
#[tokio::test]
async fn upgrade_is_reported_anyway_when_the_old_generation_stays_stuck() {
    let (service, _resume) = with_generation_1_stopped().await;
    let output = service.upgrade_command().await;
    assert!(output.status.success(), "{output:?}");
    service
        .wait_log("generation 1 did not confirm within 2s that it stopped accepting")
        .await;
    assert_eq!(service.hello().await.generation, 2);
}

/// Where `pid`'s executable and working directory are (Linux's `/proc`).
#[cfg(target_os = "linux")]
fn runs(pid: u32) -> (std::path::PathBuf, std::path::PathBuf) {
    let link = |what: &str| fs::read_link(format!("/proc/{pid}/{what}")).expect("read /proc");
    (link("exe"), link("cwd"))
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_newest_build_is_what_reloads_and_respawns_start() {
    let dir = common::TempDir::new();
    let v1 = common::release(&dir, "v1", &common::example("hello"));
    let v2 = common::release(&dir, "v2", &common::example("hello"));
    // Probation off: a crash is respawned, not answered by reinstating the previous build.
    let mut service = Service::start_with(&v1.join("hello"), &[("RISEFRONT_PROBATION", "0")]).await;
    let g1 = service.hello().await;
    assert_eq!(runs(g1.pid).0, v1.join("hello"));

    // v2 deployed by starting it by hand, from its own directory.
    let pid = service.start_program_in(&v2.join("hello"), Some(&v2), &[]);
    assert_eq!(service.wait_generation(2).await.pid, pid);
    // A generation answers a moment before the front has heard it is ready, and a SIGHUP in
    // between is refused as "an upgrade is already in progress" (seen in CI).
    service.wait_log("generation 2 ready after").await;

    // A reload, then a crash: both start v2 again, in v2's directory, not the front's v1.
    service.signal_front(Signal::HUP);
    let g3 = service.wait_generation(3).await;
    assert_eq!(
        runs(g3.pid),
        (v2.join("hello"), v2.clone()),
        "{}",
        service.log()
    );
    common::kill_pid(g3.pid);
    let g4 = service.wait_generation_allowing_errors(4).await;
    assert_eq!(
        runs(g4.pid),
        (v2.join("hello"), v2.clone()),
        "{}",
        service.log()
    );

    service.wait_log("generation 4 ready after").await;

    // v2's file gone: the front's own program, and the log says why.
    fs::remove_file(v2.join("hello")).expect("remove v2");
    service.signal_front(Signal::HUP);
    let g5 = service.wait_generation(5).await;
    assert_eq!(runs(g5.pid).0, v1.join("hello"));
    assert!(
        service.log().contains("is gone; starting"),
        "{}",
        service.log()
    );
}

/// `risefrontctl upgrade PID` (systemd: `ExecReload=risefrontctl upgrade $MAINPID`) upgrades
/// the service by its front's process id, running none of the app's code; a process that is
/// no front, or a bad command line, is an error that says so.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn risefrontctl_upgrades_the_service_whose_front_has_that_pid() {
    let service = Service::start().await;
    let ctl = |args: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_risefrontctl"));
        command.args(args);
        common::run_bounded(command, common::PATIENCE)
    };
    let front = service.front_pid().to_string();
    let output = ctl(&["upgrade", &front]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(stdout.contains("generation 2 is serving"), "{stdout}");
    assert_eq!(service.hello().await.generation, 2);
    // Again: the front's pid stays the service's address.
    let output = ctl(&["upgrade", &front]);
    assert!(output.status.success(), "{output:?}");
    service.wait_generation(3).await;

    let me = std::process::id().to_string();
    let output = ctl(&["upgrade", &me]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(stderr.contains("no risefront control socket"), "{stderr}");

    for bad in [&["upgrade", "front"][..], &["upgrade"], &["reload", &front]] {
        let output = ctl(bad);
        assert_eq!(output.status.code(), Some(2), "{bad:?}: {output:?}");
        assert!(String::from_utf8_lossy(&output.stderr).contains("usage: risefrontctl"));
    }
    assert_eq!(service.hello().await.generation, 3, "nothing else changed");
}

/// Until it is ready, a generation the front starts writes to a pipe the front reads (so that a
/// failed upgrade can report its last lines); once ready, its stderr is the service's own again,
/// so that nothing it writes depends on the front: killed at once, the front takes no line with
/// it. (Linux also compares the files behind descriptor 2.)
#[tokio::test]
async fn a_ready_generation_writes_to_the_services_stderr_not_through_the_front() {
    #[cfg(target_os = "linux")]
    let stderr_of = |pid: u32| fs::read_link(format!("/proc/{pid}/fd/2")).expect("fd 2");
    let service = Service::start().await;
    let front = service.front_pid();
    let g1 = service.hello().await;
    #[cfg(target_os = "linux")]
    assert_eq!(stderr_of(g1.pid), stderr_of(front), "generation 1");
    let output = service.upgrade_command().await;
    assert!(output.status.success(), "--upgrade failed: {output:?}");
    let g2 = service.wait_generation(2).await;
    #[cfg(target_os = "linux")]
    assert_eq!(stderr_of(g2.pid), stderr_of(front), "generation 2");
    assert_ne!(g1.pid, g2.pid);

    common::kill_pid(front);
    service.wait_log("generation 2 lost the front").await;
}

/// The front re-executes itself into the build that serves (`risefrontctl reexec PID`, after a
/// deploy of a newer risefront): the same pid, its executable the new build's, the serving
/// generation untouched and still in touch, no request failed under load; then a reload, the
/// old generation's exit (reaped by the new image, which adopted it) and a crash go as before.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_front_re_executes_into_the_serving_build_keeping_its_pid_and_generation() {
    let dir = common::TempDir::new();
    let v1 = common::release(&dir, "v1", &common::example("hello"));
    let v2 = common::release(&dir, "v2", &common::example("hello"));
    let mut service = Service::start_with(&v1.join("hello"), &[("RISEFRONT_PROBATION", "0")]).await;
    let front = service.front_pid();
    assert_eq!(runs(front).0, v1.join("hello"));
    let pid = service.start_program_in(&v2.join("hello"), Some(&v2), &[]);
    let g2 = service.wait_generation(2).await;
    assert_eq!(g2.pid, pid);
    service.wait_log("generation 2 ready after").await;

    // A load that never retries, across the re-exec.
    let load = common::load::start(service.addr, &[(common::load::Kind::NewConnection, 1, "/")]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ctl = |args: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_risefrontctl"));
        command.args(args);
        common::run_bounded(command, common::PATIENCE)
    };
    let output = ctl(&["reexec", &front.to_string()]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}\n{}", service.log());
    assert!(stdout.contains("generation 2 is serving"), "{stdout}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{report:?}\n{}", service.log());
    assert!(report.ok > 0);
    assert!(alive(front), "the front lives on");
    assert_eq!(runs(front).0, v2.join("hello"), "{}", service.log());
    assert_eq!(service.hello().await, g2, "generation 2 serves on");
    assert!(
        service.log().contains("front re-executed into"),
        "{}",
        service.log()
    );

    // The new image upgrades as the old one did.
    service.signal_front(Signal::HUP);
    let g3 = service.wait_generation(3).await;
    assert_eq!(runs(g3.pid).0, v2.join("hello"));
    service.wait_log("generation 3 ready after").await;
    // Again, now with a generation the front spawned: the next image adopts it as its child,
    // so it reaps it when it ends (nobody else can: the front is its parent).
    let output = ctl(&["reexec", &front.to_string()]);
    assert!(output.status.success(), "{output:?}\n{}", service.log());
    assert_eq!(service.hello().await, g3);
    service.signal_front(Signal::HUP);
    service.wait_generation(4).await;
    let deadline = std::time::Instant::now() + common::PATIENCE;
    while common::proc_stat(g3.pid).is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "generation 3 not reaped: {:?}\n{}",
            common::proc_stat(g3.pid),
            service.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        service.log().contains("generation 3 (pid"),
        "{}",
        service.log()
    );
    // A crash of a generation the new image started is respawned.
    service.wait_log("generation 4 ready after").await;
    let g4 = service.hello().await;
    common::kill_pid(g4.pid);
    service.wait_generation_allowing_errors(5).await;
    assert!(service.terminate().success(), "{}", service.log());
}
