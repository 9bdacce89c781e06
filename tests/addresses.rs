//! End-to-end: a build's addresses are the service's addresses. A new build that adds a port
//! gets it by an ordinary upgrade (and so do the respawns and reloads after it), one that drops
//! a port lets it go once the generations that used it are gone, one that changes nothing
//! changes nothing, and one that asks for an address the front cannot bind fails before it is
//! ready while the old generation serves on. The builds share a name (`RISEFRONT_NAME`), as
//! builds whose address lists differ must.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Service, example, free_addr, get, parse_hello};

/// A service named `name` (with this test process's pid, so that parallel runs, which on
/// Windows share one control directory, never meet).
async fn start_named(name: &str) -> (Service, String) {
    let name = format!("{name}-{}", std::process::id());
    let service = Service::start_with(&example("hello"), &[("RISEFRONT_NAME", &name)]).await;
    (service, name)
}

/// The generation answering at `addr`.
async fn generation_at(service: &Service, addr: SocketAddr) -> u64 {
    match get(addr, "/").await {
        Ok((200, body)) => parse_hello(&body).expect("hello's answer").generation,
        other => panic!("GET / at {addr}: {other:?}\n{}", service.log()),
    }
}

/// Waits until nothing accepts at `addr` any more.
async fn wait_closed(service: &Service, addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "{addr} still accepts\n{}",
            service.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_port_added_by_a_build_is_served_and_one_it_drops_is_closed() {
    let (mut service, name) = start_named("added-dropped").await;
    let first = service.addr;
    let second = free_addr();

    // A build that adds a port.
    service.addrs = vec![first, second];
    service.start_again(&[]);
    service.wait_generation(2).await;
    service
        .wait_log(&format!("bound {second} for a new build"))
        .await;
    assert_eq!(generation_at(&service, second).await, 2);
    assert_eq!(generation_at(&service, first).await, 2);

    // Changing nothing binds and closes nothing; the reload starts the build that serves now,
    // with its two addresses.
    let before = service.log();
    let client = risefront::Builder::new().name(name);
    #[cfg(unix)]
    let client = client.control_dir(service.runtime_dir().join("risefront"));
    let upgraded = client.upgrade([first, second]).await;
    assert_eq!(upgraded.expect("upgrade"), 3);
    assert_eq!(generation_at(&service, second).await, 3);
    assert_eq!(generation_at(&service, first).await, 3);
    let during = service.log()[before.len()..].to_owned();
    assert!(
        !during.contains("bound ") && !during.contains("closed "),
        "an upgrade that changes nothing bound or closed a socket:\n{during}"
    );

    // A build that drops the first port: it serves the second; the first closes once the
    // generations that had it are gone.
    service.addrs = vec![second];
    service.addr = second;
    service.start_again(&[]);
    service.wait_generation(4).await;
    service
        .wait_log(&format!("closed {first}: no generation uses it any more"))
        .await;
    wait_closed(&service, first).await;
    assert_eq!(generation_at(&service, second).await, 4);
}

#[tokio::test]
async fn a_build_asking_for_an_address_the_front_cannot_bind_fails_before_ready() {
    let (mut service, _) = start_named("unbindable").await;
    let g1 = service.hello().await;
    // Taken by someone else.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr");

    service.addrs = vec![service.addr, taken_addr];
    let build = service.start_again(&[]);
    let status = service.wait_other(build);
    assert!(!status.success(), "the build did not fail: {status:?}");
    service
        .wait_log(&format!(
            "the front cannot bind {taken_addr}, which this build asks for"
        ))
        .await;
    assert_eq!(service.hello().await, g1, "the old generation serves on");
    let log = service.log();
    assert!(!log.contains("generation 2 ready"), "{log}");
    drop(taken);
}
