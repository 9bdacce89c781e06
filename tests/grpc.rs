//! End-to-end: a tonic gRPC service (`examples/grpc`) across upgrades, with tonic's own client:
//! no unary call fails, a stream ended by the takeover resumes on the new generation, and the
//! standard health service says `SERVING` while a generation drains and `NOT_SERVING` only
//! when the service stops.

mod common;

#[path = "../examples/grpc/proto.rs"]
mod proto;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{PATIENCE, Service, Way, example};
use proto::{GreeterClient, HelloRequest, TicksRequest};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const UPGRADES: u64 = 3;
/// Separate HTTP/2 connections, and calls in flight on each.
const CHANNELS: usize = 4;
const CALLS_PER_CHANNEL: usize = 4;
/// A call that takes longer than this counts as failed (a stuck call is a failure too).
const CALL_LIMIT: Duration = Duration::from_secs(10);

async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("a valid URI")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connected")
}

#[derive(Default)]
struct Tally {
    ok: u64,
    failed: Vec<String>,
    resent: u64,
    generations: BTreeSet<u64>,
}

/// Attempts per call when the earlier ones provably never reached the server.
const MAX_ATTEMPTS: usize = 5;

/// Whether the call provably never reached the server, so that sending it again cannot run it
/// twice: what gRPC calls a transparent retry, which grpc-go and grpc-java make by themselves
/// and tonic leaves to its caller. Either hyper cancelled the request before writing it (its
/// connection closed after a GOAWAY while the request waited in the connection's queue), or
/// the server's GOAWAY (NO_ERROR) or REFUSED_STREAM excluded its stream (RFC 9113 section 8.7).
/// Anything the server may have processed and then lost still fails.
fn never_sent(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(status);
    while let Some(error) = source {
        if error
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled)
        {
            return true;
        }
        if let Some(h2) = error.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (h2.is_go_away()
                    && h2.is_remote()
                    && h2.reason() == Some(h2::Reason::NO_ERROR));
        }
        source = error.source();
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_calls_never_fail_across_upgrades() {
    let mut service = Service::start_with(&example("grpc"), &[]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut callers = Vec::new();
    for _ in 0..CHANNELS {
        let channel = channel(service.addr).await;
        for _ in 0..CALLS_PER_CHANNEL {
            let mut client = GreeterClient::new(channel.clone());
            let stop = Arc::clone(&stop);
            callers.push(tokio::spawn(async move {
                let mut tally = Tally::default();
                while !stop.load(Ordering::Relaxed) {
                    let mut attempts = 1;
                    let result = loop {
                        let call = client.say_hello(HelloRequest {
                            name: "risefront".into(),
                        });
                        match tokio::time::timeout(CALL_LIMIT, call).await {
                            Ok(Err(status)) if attempts < MAX_ATTEMPTS && never_sent(&status) => {
                                tally.resent += 1;
                                attempts += 1;
                            }
                            result => break result,
                        }
                    };
                    match result {
                        Ok(Ok(reply)) => {
                            tally.ok += 1;
                            tally.generations.insert(reply.generation);
                        }
                        Ok(Err(status)) => tally.failed.push(format!("{status:?}")),
                        Err(_) => tally.failed.push(format!("no answer in {CALL_LIMIT:?}")),
                    }
                }
                tally
            }));
        }
    }
    for n in 2..=UPGRADES + 1 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        service.upgrade(Way::nth(n as usize), n).await;
    }
    // The calls reach the last generation: every channel followed the takeovers.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = Tally::default();
    for caller in callers {
        let tally = caller.await.expect("caller task");
        total.ok += tally.ok;
        total.failed.extend(tally.failed);
        total.resent += tally.resent;
        total.generations.extend(tally.generations);
    }
    println!(
        "grpc: {} unary calls over {UPGRADES} upgrades, {} failed, {} never sent and sent again, generations {:?}",
        total.ok + total.failed.len() as u64,
        total.failed.len(),
        total.resent,
        total.generations
    );
    assert!(
        total.failed.is_empty(),
        "{} calls failed, the first: {:?}\n{}",
        total.failed.len(),
        total.failed.first(),
        service.log()
    );
    assert!(total.ok > 0);
    assert!(
        total.generations.contains(&(UPGRADES + 1)),
        "calls never reached generation {}: {:?}",
        UPGRADES + 1,
        total.generations
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ended_by_the_takeover_resumes_on_the_new_generation() {
    let mut service = Service::start_with(&example("grpc"), &[]).await;
    let mut client = GreeterClient::new(channel(service.addr).await);
    let mut ticks = client
        .ticks(TicksRequest {
            interval_ms: 20,
            from: 0,
        })
        .await
        .expect("the stream starts");
    let first = ticks.message().await.expect("a tick").expect("a tick");
    assert_eq!((first.n, first.generation), (0, 1));

    service.request_upgrade(Way::Command).await;
    // Generation 1 streams until it drains, then ends the stream with UNAVAILABLE.
    let mut next = first.n + 1;
    let ended = loop {
        match tokio::time::timeout(CALL_LIMIT, ticks.message()).await {
            Ok(Ok(Some(tick))) => {
                assert_eq!((tick.n, tick.generation), (next, 1), "in order, from 1");
                next += 1;
            }
            Ok(Ok(None)) => panic!("the stream ended without saying why"),
            Ok(Err(status)) => break status,
            Err(_) => panic!("generation 1 neither ticked nor ended the stream"),
        }
    };
    assert_eq!(ended.code(), tonic::Code::Unavailable, "{ended:?}");
    assert!(
        ended.message().contains(&format!("from={next}")),
        "{ended:?}"
    );

    // Calling again resumes where it ended, on generation 2 once the channel has moved there
    // (until the old connection is told to go away, generation 1 sends the caller on at once).
    let deadline = Instant::now() + PATIENCE;
    let resumed = loop {
        assert!(Instant::now() < deadline, "never resumed on generation 2");
        let request = TicksRequest {
            interval_ms: 20,
            from: next,
        };
        if let Ok(mut ticks) = client.ticks(request).await {
            match ticks.message().await {
                Ok(Some(tick)) => break tick,
                Ok(None) => panic!("the resumed stream ended without saying why"),
                Err(status) => assert_eq!(status.code(), tonic::Code::Unavailable),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((resumed.n, resumed.generation), (next, 2));
}

async fn health(client: &mut HealthClient<Channel>) -> ServingStatus {
    let request = HealthCheckRequest::default();
    let response = tokio::time::timeout(CALL_LIMIT, client.check(request))
        .await
        .expect("answered in time")
        .expect("the health service answers");
    ServingStatus::try_from(response.into_inner().status).expect("a known status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_stays_serving_while_a_generation_drains() {
    // The drain deadline ends generation 1's health stream soon after the takeover.
    let env = [
        ("RISEFRONT_DRAIN_TIMEOUT", "2s"),
        ("RISEFRONT_PROBATION", "0"),
    ];
    let mut service = Service::start_with(&example("grpc"), &env).await;
    // A load balancer watching generation 1's health over a connection it keeps.
    let mut watcher = HealthClient::new(channel(service.addr).await);
    let mut watch = watcher
        .watch(HealthCheckRequest::default())
        .await
        .expect("the health service answers")
        .into_inner();
    let status = |response: tonic_health::pb::HealthCheckResponse| {
        ServingStatus::try_from(response.status).expect("a known status")
    };
    let first = watch.message().await.expect("a status").expect("a status");
    assert_eq!(status(first), ServingStatus::Serving);

    service.upgrade(Way::Command, 2).await;
    // Whatever generation 1 says while it drains, until its drain deadline ends the stream,
    // is SERVING: the service goes on, and the host must not be marked down.
    let mut seen = 0;
    loop {
        match tokio::time::timeout(PATIENCE, watch.message()).await {
            Ok(Ok(Some(response))) => {
                assert_eq!(status(response), ServingStatus::Serving);
                seen += 1;
            }
            Ok(Ok(None) | Err(_)) => break,
            Err(_) => panic!("generation 1's drain deadline did not end the stream"),
        }
    }
    println!("generation 1 sent {seen} more statuses while draining, all SERVING");
    service.wait_log("finished draining").await;
    let mut fresh = HealthClient::new(channel(service.addr).await);
    assert_eq!(health(&mut fresh).await, ServingStatus::Serving);
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_not_serving_once_the_service_stops() {
    use rustix::process::Signal;
    let mut service =
        Service::start_with(&example("grpc"), &[("RISEFRONT_STOP_DELAY", "3s")]).await;
    let mut client = HealthClient::new(channel(service.addr).await);
    assert_eq!(health(&mut client).await, ServingStatus::Serving);
    service.signal_front(Signal::TERM);
    let deadline = Instant::now() + PATIENCE;
    while health(&mut client).await != ServingStatus::NotServing {
        assert!(Instant::now() < deadline, "never said NOT_SERVING");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Still answering calls during the stop delay: only the health status changed.
    let mut greeter = GreeterClient::new(channel(service.addr).await);
    let reply = greeter
        .say_hello(HelloRequest::default())
        .await
        .expect("served during the stop delay");
    assert_eq!(reply.generation, 1);
    let status = service.wait_front_exit();
    assert!(status.success(), "{status:?}\n{}", service.log());
}
