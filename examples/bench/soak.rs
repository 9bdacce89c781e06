//! `bench soak`: many upgrades in a row under light load, watching the front for leaks.
//!
//! ```text
//! cargo run --release --example bench -- soak [--upgrades 1000] [--workers 8]
//! ```
//!
//! The `hello` setup (DrainLayer + `superseded()`) upgraded back to back with
//! `risefront::upgrade`, while `--workers` clients (half keep-alive, half a new connection per
//! request, no retries) keep requesting. Every 100 upgrades it prints the front's open
//! descriptors and resident memory and how many processes of the service are alive; at the
//! end, that every superseded generation is gone and how many requests failed.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;

use crate::bench::{Sender, Server, connect, footprint, wait_answering};
use crate::tail::next_request;

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
}

pub async fn main(args: &[String], scratch: &Path) -> std::io::Result<()> {
    let mut upgrades = 1000usize;
    let mut workers = 8usize;
    let mut rest = args;
    while let Some((flag, tail)) = rest.split_first() {
        let value = tail.first().and_then(|v| v.parse().ok());
        rest = tail.get(1..).unwrap_or_default();
        match (flag.as_str(), value) {
            ("--upgrades", Some(v)) => upgrades = v,
            ("--workers", Some(v)) => workers = v,
            _ => {
                eprintln!("usage: bench soak [--upgrades N] [--workers N]");
                std::process::exit(2);
            }
        }
    }
    let server = Server::start("serve-risefront", &scratch.join("soak.log"))?;
    wait_answering(server.addr).await?;
    let front = server.pid();
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..workers {
        let (counts, stop) = (Arc::clone(&counts), Arc::clone(&stop));
        tasks.push(tokio::spawn(client(server.addr, i % 2 == 0, counts, stop)));
    }
    println!(
        "risefront bench soak: {upgrades} upgrades back to back, {workers} clients (half keep-alive), {} cores\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "| upgrades | front descriptors | front resident | processes alive | requests ok | failed |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
    let row = |done: usize| {
        let (fds, rss) = footprint(front);
        println!(
            "| {done} | {fds} | {:.1} MiB | {} | {} | {} |",
            rss as f64 / 1024.0,
            processes_in_group(front),
            counts.ok.load(Ordering::Relaxed),
            counts.failed.load(Ordering::Relaxed)
        );
        (fds, rss)
    };
    let first = row(0);
    let started = Instant::now();
    let mut pids = Vec::with_capacity(upgrades + 1);
    pids.push(generation_pid(server.addr).await);
    let mut peak = first;
    for done in 1..=upgrades {
        if let Err(e) = risefront::upgrade([server.addr]).await {
            eprintln!("upgrade {done} failed: {e}");
        }
        pids.push(generation_pid(server.addr).await);
        if done % 100 == 0 || done == upgrades {
            let now = row(done);
            peak = (peak.0.max(now.0), peak.1.max(now.1));
        }
    }
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    // The last superseded generation is on probation for up to 10 s, then drains.
    let current = pids.last().copied().flatten();
    let deadline = Instant::now() + Duration::from_secs(60);
    let left = loop {
        let left: Vec<u32> = pids
            .iter()
            .flatten()
            .copied()
            .filter(|p| Some(*p) != current && alive(*p))
            .collect();
        if left.is_empty() || Instant::now() > deadline {
            break left;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let last = row(upgrades);
    println!();
    println!(
        "{upgrades} upgrades in {:.1} s ({:.1} ms each); front descriptors {} -> {} (peak {}), resident {:.1} -> {:.1} MiB (peak {:.1}); superseded generations still alive: {}; requests: {} ok, {} failed",
        took.as_secs_f64(),
        took.as_secs_f64() * 1000.0 / upgrades.max(1) as f64,
        first.0,
        last.0,
        peak.0,
        first.1 as f64 / 1024.0,
        last.1 as f64 / 1024.0,
        peak.1 as f64 / 1024.0,
        left.len(),
        counts.ok.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed)
    );
    Ok(())
}

/// Requests until stopped, without retries: keep-alive (reconnecting when told to close) or
/// a new connection every time.
async fn client(addr: SocketAddr, keep_alive: bool, counts: Arc<Counts>, stop: Arc<AtomicBool>) {
    let mut sender: Option<Sender> = None;
    while !stop.load(Ordering::Relaxed) {
        let (ok, _) = next_request(addr, &mut sender, keep_alive).await;
        let counter = if ok { &counts.ok } else { &counts.failed };
        counter.fetch_add(1, Ordering::Relaxed);
        if !ok {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// The pid in `hello from generation N pid P`, from a request of our own.
async fn generation_pid(addr: SocketAddr) -> Option<u32> {
    let mut sender = connect(addr).await.ok()?;
    let request = hyper::Request::get("/")
        .header(hyper::header::HOST, "localhost")
        .body(http_body_util::Empty::new())
        .ok()?;
    let body = sender
        .send_request(request)
        .await
        .ok()?
        .into_body()
        .collect()
        .await
        .ok()?
        .to_bytes();
    String::from_utf8_lossy(&body)
        .trim_end()
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

fn alive(pid: u32) -> bool {
    // A zombie is gone for our purposes: it holds no sockets.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .map(|rest| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Processes in the front's process group (the front, its generations): from /proc.
fn processes_in_group(front: u32) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = s.rsplit(')').next()?.to_owned();
                    let fields: Vec<&str> = rest.split_whitespace().collect();
                    // state ppid pgrp ...
                    Some(
                        fields.first() != Some(&"Z")
                            && fields.get(2)?.parse::<u32>().ok()? == front,
                    )
                })
                .unwrap_or(false)
        })
        .count()
}
