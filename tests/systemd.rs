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
async fn the_front_tells_systemd_about_start_reloads_rollbacks_and_stop() {
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
    service.wait_generation(4).await;

    let status = service.terminate();
    assert!(status.success());
    seen.push(notify.expect(&["STOPPING=1"]));
    println!("datagrams, in order:\n{}", seen.join("\n--\n"));
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
