//! End-to-end: what systemd hears from the front (`NOTIFY_SOCKET`), recorded by a listener of
//! our own that follows sd_notify(3): one datagram per call, `KEY=VALUE` lines.

#![cfg(target_os = "linux")]

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::{PATIENCE, Service, TempDir, example};
use rustix::process::Signal;

/// The notification socket systemd would hold.
struct Notifications {
    socket: UnixDatagram,
    _dir: TempDir,
    path: String,
}

impl Notifications {
    fn new() -> Self {
        let dir = TempDir::new();
        let path = dir.0.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        Notifications {
            socket,
            path: path.to_string_lossy().into_owned(),
            _dir: dir,
        }
    }

    /// The next datagram, within the harness's patience.
    fn next(&self) -> String {
        let deadline = Instant::now() + PATIENCE;
        let mut buf = [0u8; 4096];
        loop {
            match self.socket.recv(&mut buf) {
                Ok(n) => return String::from_utf8_lossy(&buf[..n]).into_owned(),
                Err(_) => assert!(Instant::now() < deadline, "no notification came"),
            }
        }
    }

    /// The next datagram and the descriptors that came with it (`SCM_RIGHTS`).
    fn next_with_fds(&self) -> (String, Vec<std::os::fd::OwnedFd>) {
        use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
        use std::io::IoSliceMut;
        use std::mem::MaybeUninit;
        let deadline = Instant::now() + PATIENCE;
        let mut buf = [0u8; 4096];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
        loop {
            let mut control = RecvAncillaryBuffer::new(&mut space);
            match rustix::net::recvmsg(
                &self.socket,
                &mut [IoSliceMut::new(&mut buf)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            ) {
                Ok(message) => {
                    let mut fds = Vec::new();
                    for part in control.drain() {
                        if let RecvAncillaryMessage::ScmRights(received) = part {
                            fds.extend(received);
                        }
                    }
                    let text = String::from_utf8_lossy(&buf[..message.bytes]).into_owned();
                    return (text, fds);
                }
                Err(_) => assert!(Instant::now() < deadline, "no notification came"),
            }
        }
    }

    /// The next datagram, which must contain every one of `lines`' prefixes.
    fn expect(&self, lines: &[&str]) -> String {
        let datagram = self.next();
        for line in lines {
            assert!(
                datagram.lines().any(|l| l.starts_with(line)),
                "expected {line:?} in {datagram:?}"
            );
        }
        datagram
    }
}

#[tokio::test]
async fn the_front_tells_systemd_about_start_reloads_rollbacks_reinstatements_and_stop() {
    let notify = Notifications::new();
    let fail = TempDir::new();
    let fail_file = fail.0.join("fail");
    let fail_path = fail_file.to_string_lossy().into_owned();
    let mut service = Service::start_with(
        &example("hello"),
        &[
            ("NOTIFY_SOCKET", &notify.path),
            ("HELLO_FAIL_FILE", &fail_path),
        ],
    )
    .await;
    let mut seen = Vec::new();
    seen.push(notify.expect(&["READY=1", "STATUS=generation 1 (pid "]));
    // It names the build that serves, so `systemctl status` shows which one runs.
    let build = seen[0]
        .lines()
        .find_map(|line| line.strip_prefix("STATUS="))
        .and_then(|status| status.split("; runs ").nth(1))
        .map(std::path::PathBuf::from);
    assert!(
        build
            .as_ref()
            .is_some_and(|b| b.is_absolute() && b.ends_with("hello")),
        "no build in {:?}",
        seen[0]
    );

    // SIGHUP: RELOADING=1 and MONOTONIC_USEC= in one datagram, then READY=1.
    service.signal_front(Signal::HUP);
    seen.push(notify.expect(&["RELOADING=1", "MONOTONIC_USEC="]));
    seen.push(notify.expect(&["READY=1", "STATUS=generation 2"]));
    let g2 = service.wait_generation(2).await;
    // A generation the front starts never sees NOTIFY_SOCKET: only the front talks to systemd
    // (`NotifyAccess=main`).
    let environ = std::fs::read(format!("/proc/{}/environ", g2.pid)).unwrap_or_default();
    assert!(
        !environ.is_empty(),
        "generation 2's environment is readable"
    );
    assert!(
        !String::from_utf8_lossy(&environ).contains("NOTIFY_SOCKET="),
        "a generation inherited NOTIFY_SOCKET"
    );

    // A rollback: READY=1 all the same (the service is up), with the failure in STATUS=.
    std::fs::write(&fail_file, "exit").expect("fail file");
    service.signal_front(Signal::HUP);
    seen.push(notify.expect(&["RELOADING=1", "MONOTONIC_USEC="]));
    let rollback = notify.expect(&["READY=1", "STATUS=generation 2"]);
    assert!(
        rollback.contains("last upgrade failed: generation 3"),
        "{rollback}"
    );
    seen.push(rollback);
    std::fs::remove_file(&fail_file).expect("heal");

    // An upgrade started by hand sends the same pair.
    service.start_again(&[]);
    seen.push(notify.expect(&["RELOADING=1", "MONOTONIC_USEC="]));
    seen.push(notify.expect(&["READY=1", "STATUS=generation 4"]));
    let g4 = service.wait_generation(4).await;

    // A build that dies right after taking over, inside the probation window: generation 4 is
    // reinstated, and STATUS= says so (READY=1 stays as it was).
    std::fs::write(&fail_file, "crash:300").expect("fail file");
    service.signal_front(Signal::HUP);
    seen.push(notify.expect(&["RELOADING=1", "MONOTONIC_USEC="]));
    seen.push(notify.expect(&["READY=1", "STATUS=generation 5"]));
    let reinstated = notify.expect(&["STATUS=generation 4"]);
    assert!(
        reinstated.contains("reinstated") && reinstated.contains("generation 5 died"),
        "{reinstated}"
    );
    assert!(!reinstated.contains("READY=1"), "{reinstated}");
    seen.push(reinstated);
    std::fs::remove_file(&fail_file).expect("heal");
    assert_eq!(service.hello().await, g4);

    let status = service.terminate();
    assert!(status.success());
    seen.push(notify.expect(&["STOPPING=1"]));
    println!("datagrams, in order:\n{}", seen.join("\n--\n"));
}

/// The build `STATUS=` names: what serves, and the front's own build while it is another one.
fn builds_in(status: &str) -> Option<&str> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("STATUS="))
        .and_then(|status| status.split("; runs ").nth(1))
}

#[tokio::test]
async fn status_names_the_serving_build_and_the_front_s_own_until_it_re_executes() {
    let notify = Notifications::new();
    let dir = TempDir::new();
    let v1 = common::release(&dir, "v1", &example("hello"));
    let v2 = common::release(&dir, "v2", &example("hello"));
    let mut service =
        Service::start_with(&v1.join("hello"), &[("NOTIFY_SOCKET", &notify.path)]).await;
    let first = notify.expect(&["READY=1", "STATUS=generation 1 (pid "]);
    let v1_runs = format!("{}", v1.join("hello").display());
    assert_eq!(builds_in(&first), Some(v1_runs.as_str()), "{first}");

    // v2 deployed by hand: it serves, and the front is still v1's.
    service.start_program_in(&v2.join("hello"), Some(&v2), &[]);
    let until = |wanted: &str| loop {
        let datagram = notify.next();
        if datagram.contains(wanted) {
            return datagram;
        }
    };
    let second = until("STATUS=generation 2");
    let both = format!("{} (the front runs {v1_runs})", v2.join("hello").display());
    assert_eq!(builds_in(&second), Some(both.as_str()), "{second}");

    // The front re-executes into v2 (`RISEFRONT_UPGRADE=front`) once the service is quiet
    // (generation 1 gone): one build again.
    service.wait_log("finished draining").await;
    service.start_program_in(
        &v2.join("hello"),
        Some(&v2),
        &[("RISEFRONT_UPGRADE", "front")],
    );
    let third = until("the front re-executed");
    // The outcome of the last upgrade is not forgotten by the new image.
    assert!(
        third.contains("the front re-executed; last upgrade: generation 2 ready in"),
        "{third}"
    );
    let v2_runs = format!("{}", v2.join("hello").display());
    assert_eq!(
        builds_in(&third),
        Some(v2_runs.as_str()),
        "{third}\n{}",
        service.log()
    );
}

#[tokio::test]
async fn an_unreachable_notify_socket_is_a_warning_and_serving_goes_on() {
    let mut service = Service::start_with(
        &example("hello"),
        &[("NOTIFY_SOCKET", "/nonexistent/notify")],
    )
    .await;
    service.wait_log("cannot notify systemd").await;
    service.signal_front(Signal::HUP);
    service.wait_generation(2).await;
    let status = service.terminate();
    assert!(status.success());
}

#[tokio::test]
async fn risefront_upgrade_makes_any_program_an_exec_reload_command() {
    // `minimal` has no --upgrade of its own: RISEFRONT_UPGRADE=1 turns its bind into one.
    let service = Service::start_with(&example("minimal"), &[]).await;
    let output = common::run_bounded(service.command(&[("RISEFRONT_UPGRADE", "1")]), PATIENCE);
    assert!(output.status.success(), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("generation 2 is serving"),
        "{output:?}"
    );
    assert_eq!(service.hello().await.generation, 2);

    // A failing build makes the reload fail: a non-zero status and the reason.
    let fail = TempDir::new();
    let fail_file = fail.0.join("fail");
    let fail_path = fail_file.to_string_lossy().into_owned();
    let service = Service::start_with(&example("hello"), &[("HELLO_FAIL_FILE", &fail_path)]).await;
    std::fs::write(&fail_file, "exit").expect("fail file");
    let output = common::run_bounded(service.command(&[("RISEFRONT_UPGRADE", "1")]), PATIENCE);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("failed before it was ready"),
        "{output:?}"
    );
}

/// `systemd-socket-activate`, from the systemd package: it binds the address, then execs the
/// program with `LISTEN_FDS`, `LISTEN_PID` and `LISTEN_FDNAMES` as systemd does, passing on
/// only the variables named with `-E`.
fn socket_activate() -> Option<String> {
    let found = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join("systemd-socket-activate"))
        .find(|candidate| candidate.is_file());
    if found.is_none() && std::env::var_os("CI").is_some() {
        panic!("systemd-socket-activate is missing: .ci/run installs the systemd package");
    }
    found.map(|p| p.to_string_lossy().into_owned())
}

#[tokio::test]
async fn a_socket_activated_front_serves_and_upgrades_three_ways_under_load() {
    use common::Way;
    use common::load::{self, Kind};

    let Some(activate) = socket_activate() else {
        eprintln!("skipped: systemd-socket-activate is not installed");
        return;
    };
    let addr = common::free_addr();
    // Variables named without a value are passed on from the harness's environment.
    let wrapper = vec![
        activate,
        format!("--listen={addr}"),
        "--fdname=http".to_owned(),
        "--setenv=XDG_RUNTIME_DIR".to_owned(),
        "--setenv=RUST_LOG".to_owned(),
    ];
    // The harness runs `hello ADDR` behind the wrapper; the wrapper binds ADDR first.
    let mut service = Service::spawn_via(&wrapper, &example("hello"), &[], addr);
    service.wait_generation(1).await;
    service.wait_log("using the socket systemd passed").await;
    // The generations never see the activation variables.
    let g1 = service.hello().await;
    let environ = std::fs::read(format!("/proc/{}/environ", g1.pid)).unwrap_or_default();
    assert!(!String::from_utf8_lossy(&environ).contains("LISTEN_FDS="));

    let load = load::start(
        addr,
        &[(Kind::NewConnection, 8, "/"), (Kind::KeepAlive, 8, "/")],
    );
    for (i, n) in (2..=4).enumerate() {
        load.served_by(n - 1, 50).await;
        service.upgrade(Way::nth(i), n).await;
    }
    load.served_by(4, 50).await;
    let report = load.stop().await;
    println!("socket-activated: {}", report.summary(3));
    assert_eq!(report.failed, 0, "{}", report.summary(3));
    let status = service.terminate();
    assert!(status.success(), "{status:?}\n{}", service.log());
}

/// A Unix socket systemd passed (`ListenStream=/run/app/http.sock`) is used for the matching
/// `unix:` address, upgrades over it lose nothing, and its file outlives the service: it is
/// systemd's.
#[tokio::test]
async fn a_socket_activated_unix_socket_serves_upgrades_and_stays() {
    use common::load::{self, Kind};
    use common::{Target, TempDir, Way};

    let Some(activate) = socket_activate() else {
        eprintln!("skipped: systemd-socket-activate is not installed");
        return;
    };
    let scratch = TempDir::new();
    let socket = scratch.0.join("http.sock");
    let addr = common::free_addr();
    let wrapper = vec![
        activate,
        format!("--listen={addr}"),
        format!("--listen={}", socket.display()),
        "--setenv=XDG_RUNTIME_DIR".to_owned(),
        "--setenv=RUST_LOG".to_owned(),
    ];
    let unix = format!("unix:{}", socket.display());
    let mut service = Service::spawn_via_with_args(
        &wrapper,
        &example("hello"),
        &[],
        addr,
        std::slice::from_ref(&unix),
    );
    service.wait_generation(1).await;
    service
        .wait_log(&format!("using the socket systemd passed for {unix}"))
        .await;
    let load = load::start(
        Target::Unix(socket.clone()),
        &[(Kind::NewConnection, 8, "/"), (Kind::KeepAlive, 8, "/")],
    );
    for (i, n) in (2..=4).enumerate() {
        load.served_by(n - 1, 30).await;
        service.upgrade(Way::nth(i), n).await;
    }
    load.served_by(4, 30).await;
    let report = load.stop().await;
    println!("socket-activated Unix socket: {}", report.summary(3));
    assert_eq!(report.failed, 0, "{}", report.summary(3));
    let status = service.terminate();
    assert!(status.success(), "{status:?}\n{}", service.log());
    assert!(socket.exists(), "the front removed systemd's socket file");
}

#[tokio::test]
async fn activation_variables_for_another_process_are_ignored() {
    // LISTEN_PID of another process: the front binds as usual.
    let service = Service::start_with(
        &example("hello"),
        &[("LISTEN_PID", "1"), ("LISTEN_FDS", "1")],
    )
    .await;
    assert_eq!(service.hello().await.generation, 1);
    assert!(!service.log().contains("systemd passed"));
}

#[tokio::test]
async fn a_passed_descriptor_that_is_not_a_listening_socket_is_named() {
    // A shell that claims to pass a socket but hands /dev/null as descriptor 3.
    let wrapper = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        "export LISTEN_PID=$$ LISTEN_FDS=1; exec \"$@\" 3</dev/null".to_owned(),
        "sh".to_owned(),
    ];
    let mut service = Service::spawn_via(&wrapper, &example("hello"), &[], common::free_addr());
    let status = service.wait_front_exit();
    assert!(!status.success());
    let log = service.log();
    assert!(
        log.contains("systemd passed descriptor 3")
            && log.contains("not a listening TCP or Unix socket"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_fd_store_a_front_killed_under_load_refuses_no_connection() {
    use common::load::{self, Kind};
    use std::os::fd::AsRawFd;

    let notify = Notifications::new();
    // systemd announces FileDescriptorStoreMax= as $FDSTORE.
    let service = Service::start_with(
        &example("hello"),
        &[("NOTIFY_SOCKET", &notify.path), ("FDSTORE", "4")],
    )
    .await;
    let addr = service.addr;
    let (stored, fds) = notify.next_with_fds();
    assert!(
        stored.contains("FDSTORE=1")
            && stored.contains(&format!("FDNAME=risefront-127.0.0.1_{}", addr.port())),
        "{stored}"
    );
    let [stored_fd]: [std::os::fd::OwnedFd; 1] = fds.try_into().expect("one stored socket");
    let g1 = service.hello().await;

    let load = load::start(
        addr,
        &[(Kind::NewConnection, 8, "/"), (Kind::KeepAlive, 8, "/")],
    );
    load.served_by(1, 50).await;
    // The front dies; its generation drains and closes its copy of the socket. Only the
    // store (this test, standing in for systemd) keeps the listen queue open.
    service.signal_front(Signal::KILL);
    common::wait_gone(g1.pid).await;
    // A while with nothing serving at all: the load's connections wait in the backlog (this
    // is the outage being measured, not a synchronisation).
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Restarted as systemd does it: the stored socket as descriptor 3, LISTEN_PID its pid.
    rustix::io::fcntl_setfd(&stored_fd, rustix::io::FdFlags::empty()).expect("inheritable");
    // bash, not sh: dash redirects single-digit descriptors only.
    let wrapper = vec![
        "bash".to_owned(),
        "-c".to_owned(),
        format!(
            "export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=stored; exec \"$@\" 3<&{}",
            stored_fd.as_raw_fd()
        ),
        "bash".to_owned(),
    ];
    let restarted_at = Instant::now();
    let restarted = Service::spawn_via(&wrapper, &example("hello"), &[], addr);
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok((200, body)) = restarted.get("/").await
            && common::parse_hello(&body).is_some_and(|h| h.pid != g1.pid)
        {
            break;
        }
        assert!(Instant::now() < deadline, "{}", restarted.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let gap = restarted_at.elapsed();
    // The restarted front's first generation is number 1 again: 50 more of them.
    load.served_by(1, load.served(1) + 50).await;
    let report = load.stop().await;
    println!(
        "front killed under load, restarted with the stored socket (serving again {gap:?} after the restart): {}",
        report.summary(0)
    );
    assert!(restarted.log().contains("using the socket systemd passed"));
    assert_eq!(report.refused, 0, "{}", report.summary(0));
    drop(service);
}

#[tokio::test]
async fn risefront_fdstore_stores_the_sockets_where_systemd_does_not_announce_its_store() {
    // systemd 252 and 253 keep an fd store (`FileDescriptorStoreMax=`) but do not set
    // $FDSTORE: the unit says so with RISEFRONT_FDSTORE=1. Without either, nothing is stored.
    for (opt_in, stored) in [(Some("1"), true), (None, false)] {
        let notify = Notifications::new();
        let mut env = vec![("NOTIFY_SOCKET", notify.path.as_str())];
        if let Some(value) = opt_in {
            env.push(("RISEFRONT_FDSTORE", value));
        }
        let _service = Service::start_with(&example("hello"), &env).await;
        let (first, fds) = notify.next_with_fds();
        assert_eq!(first.contains("FDSTORE=1"), stored, "{opt_in:?}: {first}");
        assert_eq!(fds.len(), usize::from(stored), "{opt_in:?}: {first}");
    }
}
