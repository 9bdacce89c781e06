//! `bench idle`: an idle keep-alive pool across upgrades, as a load balancer's connections to
//! its backends look: many connections, each sending a request only every few seconds.
//!
//! ```text
//! cargo run --release --example bench -- idle [--connections 5000] [--upgrades 10]
//!     [--every-ms 3000] [--min-ms 5000] [--max-ms 15000]
//! ```
//!
//! Each connection sends a request after a random pause of `--min-ms` to `--max-ms`, on its
//! connection unless it has seen the server close it (as hyper's client pool and nginx's
//! upstream keep-alive do), and never retries. The same run against risefront with
//! `axum::serve` (connections closed after the idle grace at each takeover) and with
//! `GracefulServer` (connections moved). A request fails when it was sent on a connection the
//! server was closing at that moment: the race the handoff removes.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::bench::{Sender, Server, connect, wait_answering};
use crate::tail::request;

struct Options {
    connections: usize,
    upgrades: usize,
    every: Duration,
    min: Duration,
    max: Duration,
}

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
    reconnects: AtomicU64,
}

pub async fn main(args: &[String], scratch: &Path) -> std::io::Result<()> {
    let mut options = Options {
        connections: 5000,
        upgrades: 10,
        every: Duration::from_secs(3),
        min: Duration::from_secs(5),
        max: Duration::from_secs(15),
    };
    let mut rest = args;
    while let Some((flag, tail)) = rest.split_first() {
        let value: Option<u64> = tail.first().and_then(|v| v.parse().ok());
        rest = tail.get(1..).unwrap_or_default();
        match (flag.as_str(), value) {
            ("--connections", Some(v)) => options.connections = v as usize,
            ("--upgrades", Some(v)) => options.upgrades = v as usize,
            ("--every-ms", Some(v)) => options.every = Duration::from_millis(v),
            ("--min-ms", Some(v)) => options.min = Duration::from_millis(v),
            ("--max-ms", Some(v)) => options.max = Duration::from_millis(v.max(1)),
            _ => {
                eprintln!(
                    "usage: bench idle [--connections N] [--upgrades N] [--every-ms N] [--min-ms N] [--max-ms N]"
                );
                std::process::exit(2);
            }
        }
    }
    println!(
        "risefront bench idle: {} keep-alive connections, a request on each every {}-{} ms, {} upgrades {} ms apart, {} cores\n",
        options.connections,
        options.min.as_millis(),
        options.max.as_millis(),
        options.upgrades,
        options.every.as_millis(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("| server | connections | upgrades | requests | failed | reconnects |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for (name, mode) in [
        ("axum::serve", "serve-risefront"),
        ("GracefulServer", "serve-graceful"),
    ] {
        let server = Server::start(mode, &scratch.join(format!("idle-{mode}.log")))?;
        wait_answering(server.addr).await?;
        let (counts, upgrades) = run(server.addr, &options).await;
        println!(
            "| {name} | {} | {upgrades} | {} | {} | {} |",
            options.connections,
            counts.ok.load(Ordering::Relaxed) + counts.failed.load(Ordering::Relaxed),
            counts.failed.load(Ordering::Relaxed),
            counts.reconnects.load(Ordering::Relaxed)
        );
    }
    Ok(())
}

async fn run(addr: SocketAddr, options: &Options) -> (Arc<Counts>, usize) {
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut workers = Vec::with_capacity(options.connections);
    for i in 0..options.connections {
        let counts = Arc::clone(&counts);
        let stop = Arc::clone(&stop);
        // Connects spread over the first second; each connection its own pause sequence.
        let start_after =
            Duration::from_micros((i as u64 * 1_000_000) / options.connections as u64);
        let seed = 0x9e37_79b9_7f4a_7c15_u64 ^ (i as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        let (min, max) = (options.min, options.max);
        workers.push(tokio::spawn(async move {
            tokio::time::sleep(start_after).await;
            worker(addr, seed, min, max, counts, stop).await;
        }));
    }
    // Everyone connected and sent a first request before the first upgrade.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_connects = counts.reconnects.load(Ordering::Relaxed);
    let mut upgrades = 0;
    for _ in 0..options.upgrades {
        match risefront::upgrade([addr]).await {
            Ok(_) => upgrades += 1,
            Err(e) => eprintln!("upgrade failed: {e}"),
        }
        tokio::time::sleep(options.every).await;
    }
    // Every connection's next request after the last takeover, then stop.
    tokio::time::sleep(options.max).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let _ = worker.await;
    }
    let _ = started;
    counts
        .reconnects
        .fetch_sub(after_connects, Ordering::Relaxed);
    (counts, upgrades)
}

async fn worker(
    addr: SocketAddr,
    mut seed: u64,
    min: Duration,
    max: Duration,
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
) {
    let mut sender: Option<Sender> = None;
    let mut first = true;
    while !stop.load(Ordering::Relaxed) {
        if !first {
            // xorshift64*: a fixed, reproducible pause sequence per connection.
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            let r = seed.wrapping_mul(0x2545_f491_4f6c_dd1d);
            let span = (max.saturating_sub(min)).as_millis().max(1) as u64;
            let pause = min + Duration::from_millis(r % span);
            let wake = Instant::now() + pause;
            while Instant::now() < wake {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                tokio::time::sleep((wake - Instant::now()).min(Duration::from_millis(500))).await;
            }
        }
        first = false;
        // A pooled client's rule: reuse the connection unless it was seen closed.
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            counts.reconnects.fetch_add(1, Ordering::Relaxed);
            sender = connect(addr).await.ok();
        }
        let (ok, close) = match sender.as_mut() {
            Some(s) => request(s).await,
            None => (false, true),
        };
        if close {
            sender = None;
        }
        let counter = if ok { &counts.ok } else { &counts.failed };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
