//! The front re-executing itself across a change of the control protocol: a build of the next
//! protocol version (`common::next_protocol_hello`, as a newer risefront release would be) joins
//! a running service with no restart, and a build of the previous one still joins after.
#![cfg(target_os = "linux")]

mod common;

use std::fs;
use std::time::Duration;

use common::{Service, alive, load};

/// The executable a process runs.
fn exe_of(pid: u32) -> std::path::PathBuf {
    fs::read_link(format!("/proc/{pid}/exe")).expect("read /proc/PID/exe")
}

/// One worker requesting on a new connection each time, never retrying.
fn no_retry_load(service: &Service) -> load::Load {
    load::start(service.addr, &[(load::Kind::NewConnection, 1, "/")])
}

/// Stops the load: none of its requests may have failed, and some must have been answered.
async fn none_failed(load: load::Load, service: &Service) {
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{report:?}\n{}", service.log());
    assert!(report.ok > 0);
}

/// A build of the next protocol version started by hand asks the front (one version older) to
/// re-execute into it, then joins: the front keeps its pid and now runs the new build, no
/// request fails; a build of the previous version, started after, joins the new front too.
#[tokio::test]
async fn a_build_of_the_next_protocol_joins_by_having_the_front_re_execute_into_it() {
    let next = common::next_protocol_hello();
    let dir = common::TempDir::new();
    let old = common::release(&dir, "old", &common::example("hello"));
    let new = common::release(&dir, "new", &next);
    let mut service =
        Service::start_with(&old.join("hello"), &[("RISEFRONT_PROBATION", "0")]).await;
    let front = service.front_pid();
    let g1 = service.hello().await;
    let load = no_retry_load(&service);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let pid = service.start_program_in(&new.join("hello"), Some(&new), &[]);
    let g2 = service.wait_generation(2).await;
    assert_eq!(g2.pid, pid, "{}", service.log());
    service.wait_log("generation 2 ready after").await;
    assert!(alive(front), "the front lives on\n{}", service.log());
    assert_eq!(exe_of(front), new.join("hello"), "{}", service.log());
    let log = service.log();
    assert!(
        log.contains("asking it to re-execute into this build")
            && log.contains("front re-executed into")
            && log.contains("(protocol 9)"),
        "{log}"
    );
    assert!(!alive(g1.pid) || common::proc_stat(g1.pid).is_some());

    // Back: a build of the previous protocol joins the new front, which reads it.
    let pid = service.start_program_in(&old.join("hello"), Some(&old), &[]);
    let g3 = service.wait_generation(3).await;
    assert_eq!(g3.pid, pid, "{}", service.log());
    tokio::time::sleep(Duration::from_millis(300)).await;
    none_failed(load, &service).await;
    assert_eq!(exe_of(front), new.join("hello"));
    assert!(service.terminate().success(), "{}", service.log());
}

/// An ordinary upgrade after the serving build's file was replaced in place by a build of the
/// next protocol (a package upgrade): that build cannot join the old front, so the front
/// re-executes into it and starts it again; the client that asked (`upgrade_pid`, as
/// `risefrontctl upgrade $MAINPID` is) hears the outcome from the new front, in its own
/// version. Same front pid, no request failed; then a reload as usual.
#[tokio::test]
async fn an_upgrade_onto_a_build_of_the_next_protocol_re_executes_the_front_first() {
    let next = common::next_protocol_hello();
    let dir = common::TempDir::new();
    let app = common::release(&dir, "app", &common::example("hello"));
    let mut service =
        Service::start_with(&app.join("hello"), &[("RISEFRONT_PROBATION", "0")]).await;
    let front = service.front_pid();
    let load = no_retry_load(&service);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The package manager's way: the new file beside, then renamed over the old one.
    fs::copy(&next, app.join("hello.new")).expect("copy the next build");
    fs::rename(app.join("hello.new"), app.join("hello")).expect("replace the build");
    let generation = tokio::time::timeout(Duration::from_secs(60), risefront::upgrade_pid(front))
        .await
        .expect("the upgrade's outcome in time");
    let generation = generation.unwrap_or_else(|e| panic!("{e}\n{}", service.log()));
    let g = service.wait_generation(generation).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    none_failed(load, &service).await;
    assert!(alive(front));
    assert_eq!(exe_of(front), app.join("hello"), "{}", service.log());
    assert_eq!(exe_of(g.pid), app.join("hello"));
    let log = service.log();
    assert!(
        log.contains("speaks the next control protocol version")
            && log.contains("front re-executed into")
            && log.contains("(protocol 9)"),
        "{log}"
    );

    // The new front goes on as any: a reload starts the same build again.
    service
        .wait_log(&format!("generation {generation} ready after"))
        .await;
    service.signal_front(rustix::process::Signal::HUP);
    service.wait_generation(generation + 1).await;
    assert!(service.terminate().success(), "{}", service.log());
}
