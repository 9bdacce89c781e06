//! End-to-end: a generation with manual readiness that loses its front before it said it was
//! ready stops at once, instead of lingering until its drain deadline.

mod common;

#[cfg(unix)]
#[tokio::test]
async fn a_manual_ready_generation_that_loses_its_front_before_ready_stops_at_once() {
    use common::{Service, example};
    use rustix::process::Signal;

    let mut service = Service::start_with(&example("hyper"), &[]).await;
    // A new build that warms up for ten minutes, with a drain deadline far beyond the
    // test's patience: only its listener ending can make it exit in time.
    let pid = service.start_again(&[
        ("HELLO_READY_AFTER_MS", "600000"),
        ("RISEFRONT_DRAIN_TIMEOUT", "120s"),
    ]);
    service
        .wait_log(&format!("(pid {pid}) starting (started by hand)"))
        .await;
    service
        .wait_log("generation 2 received its listeners")
        .await;
    service.signal_front(Signal::KILL);
    let status = service.wait_other(pid);
    let log = service.log();
    assert!(log.contains("lost the front"), "{log}");
    println!("generation 2 exited ({status:?}) after losing its front before it was ready");
}
