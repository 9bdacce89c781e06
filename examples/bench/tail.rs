//! `bench tail`: tail latency across upgrades with many keep-alive connections.
//!
//! ```text
//! cargo run --release --example bench -- tail [--connections 1000] [--seconds 12]
//!     [--every-ms 1000] [--peers] [--svg FILE] [--csv FILE]
//! ```
//!
//! Phases in one run, with the same client: a plain `tokio::net::TcpListener`; risefront with
//! `axum::serve` (`DrainLayer` + `superseded()`, the old path: clients reconnect at each
//! takeover) without and with an upgrade every `--every-ms`; and risefront with
//! `GracefulServer` (the connection handoff: idle connections move) without and with upgrades.
//! With `--peers`, nginx (`nginx -s reload` as the upgrade) and HAProxy (hitless reload in
//! master-worker mode with `expose-fd listeners` and `close-spread-time`), both in front of the
//! plain server, without and with a reload every `--every-ms`.
//!
//! Every connection is HTTP/1.1 keep-alive and reconnects when the server says
//! `Connection: close` or closes it, as browsers and pooled clients do; latencies include that
//! reconnect. Prints req/s, p50/p99/p99.9, failed requests and reconnects with their ratios,
//! and per 100 ms the requests completed, p99 and errors, with each takeover marked; `--svg`
//! draws that timeline for the two risefront paths.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;

use crate::bench::{Sender, Server, connect, wait_answering};
use crate::peers::Peer;

struct Options {
    connections: usize,
    seconds: u64,
    every: Duration,
    peers: bool,
    svg: Option<PathBuf>,
    csv: Option<PathBuf>,
}

/// One completed (or failed) request: when it ended, relative to the phase's start, how long
/// it took, and whether it needed a new connection.
#[derive(Clone, Copy)]
struct Sample {
    at: f64,
    latency: Duration,
    ok: bool,
    reconnected: bool,
}

pub(crate) struct Phase {
    name: String,
    samples: Vec<Sample>,
    seconds: f64,
    /// When each takeover happened (the upgrade call returned), relative to the phase's start.
    upgrades: Vec<f64>,
}

/// How a phase upgrades its server, if it does.
enum Upgrade<'a> {
    None,
    /// `risefront::upgrade`, which returns once the new generation serves.
    Risefront,
    /// A peer's own reload.
    Peer(&'a Peer),
}

/// Requests whose end falls in the first second are warm-up (1,000 connects at once) and left
/// out of every figure.
const WARM_UP: f64 = 1.0;
const BUCKET: f64 = 0.1;

pub async fn main(args: &[String], scratch: &Path) -> std::io::Result<()> {
    let mut options = Options {
        connections: 1000,
        seconds: 12,
        every: Duration::from_secs(1),
        peers: false,
        svg: None,
        csv: None,
    };
    let mut rest = args;
    while let Some((flag, tail)) = rest.split_first() {
        if flag == "--peers" {
            options.peers = true;
            rest = tail;
            continue;
        }
        let value = tail.first().cloned().unwrap_or_default();
        rest = tail.get(1..).unwrap_or_default();
        match flag.as_str() {
            "--connections" => options.connections = value.parse().unwrap_or(1000),
            "--seconds" => options.seconds = value.parse().unwrap_or(12),
            "--every-ms" => options.every = Duration::from_millis(value.parse().unwrap_or(1000)),
            "--svg" => options.svg = Some(PathBuf::from(value)),
            "--csv" => options.csv = Some(PathBuf::from(value)),
            _ => {
                eprintln!(
                    "usage: bench tail [--connections N] [--seconds N] [--every-ms N] [--peers] [--svg FILE] [--csv FILE]"
                );
                std::process::exit(2);
            }
        }
    }
    let plain = Server::start("serve-plain", &scratch.join("tail-plain.log"))?;
    let axum = Server::start("serve-risefront", &scratch.join("tail-axum.log"))?;
    let graceful = Server::start("serve-graceful", &scratch.join("tail-graceful.log"))?;
    for server in [&plain, &axum, &graceful] {
        wait_answering(server.addr).await?;
    }
    println!(
        "risefront bench tail: {} keep-alive connections, {} s per phase ({} s warm-up left out), an upgrade every {} ms in the phases with upgrades, {} cores\n",
        options.connections,
        options.seconds,
        WARM_UP,
        options.every.as_millis(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut phases = vec![
        run_phase("plain tokio", plain.addr, &options, Upgrade::None).await,
        run_phase(
            "axum::serve, no upgrade",
            axum.addr,
            &options,
            Upgrade::None,
        )
        .await,
        run_phase(
            "axum::serve, upgrades",
            axum.addr,
            &options,
            Upgrade::Risefront,
        )
        .await,
        run_phase(
            "GracefulServer, no upgrade",
            graceful.addr,
            &options,
            Upgrade::None,
        )
        .await,
        run_phase(
            "GracefulServer, upgrades",
            graceful.addr,
            &options,
            Upgrade::Risefront,
        )
        .await,
    ];
    if options.peers {
        for kind in ["nginx", "haproxy"] {
            let peer = match Peer::start(kind, plain.addr, scratch, options.connections) {
                Ok(peer) => peer,
                Err(e) => {
                    eprintln!("{kind} left out: {e}");
                    continue;
                }
            };
            wait_answering(peer.addr).await?;
            phases.push(
                run_phase(
                    &format!("{kind}, no reload"),
                    peer.addr,
                    &options,
                    Upgrade::None,
                )
                .await,
            );
            phases.push(
                run_phase(
                    &format!("{kind}, reloads"),
                    peer.addr,
                    &options,
                    Upgrade::Peer(&peer),
                )
                .await,
            );
        }
    }
    report(&phases, options.connections);
    if let Some(path) = &options.csv {
        std::fs::write(path, csv(&phases[1..5]))?;
        println!("timeline written to {}", path.display());
    }
    if let Some(path) = &options.svg {
        std::fs::write(
            path,
            svg(
                &phases[3],
                &[(&phases[2], "#e07b00"), (&phases[4], "#1f6fd1")],
            ),
        )?;
        println!("chart written to {}", path.display());
    }
    Ok(())
}

async fn run_phase(name: &str, addr: SocketAddr, options: &Options, upgrade: Upgrade<'_>) -> Phase {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(options.seconds);
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::with_capacity(options.connections);
    for _ in 0..options.connections {
        let stop = Arc::clone(&stop);
        workers.push(tokio::spawn(worker(addr, started, stop)));
    }
    let mut upgrades = Vec::new();
    if !matches!(upgrade, Upgrade::None) {
        // The first upgrade after the warm-up, then one every `every`.
        let mut next = started + Duration::from_secs_f64(WARM_UP) + options.every / 2;
        while next < deadline {
            tokio::time::sleep_until(next.into()).await;
            let done = match &upgrade {
                Upgrade::Risefront => risefront::upgrade([addr])
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string()),
                Upgrade::Peer(peer) => peer.reload().await.map_err(|e| e.to_string()),
                Upgrade::None => Ok(()),
            };
            match done {
                Ok(()) => upgrades.push(started.elapsed().as_secs_f64()),
                Err(e) => eprintln!("upgrade failed: {e}"),
            }
            next += options.every;
        }
    }
    tokio::time::sleep_until(deadline.into()).await;
    stop.store(true, Ordering::Relaxed);
    let mut samples = Vec::new();
    for worker in workers {
        if let Ok(mut mine) = worker.await {
            samples.append(&mut mine);
        }
    }
    // Let the servers settle (old generations drain) before the next phase.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Phase {
        name: name.to_owned(),
        samples,
        seconds: options.seconds as f64,
        upgrades,
    }
}

/// One keep-alive connection's client: a request as soon as the previous answer is in;
/// a new connection when the server closes this one.
async fn worker(addr: SocketAddr, started: Instant, stop: Arc<AtomicBool>) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut sender: Option<Sender> = None;
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let (ok, reconnected) = next_request(addr, &mut sender, true).await;
        samples.push(Sample {
            at: started.elapsed().as_secs_f64(),
            latency: t.elapsed(),
            ok,
            reconnected,
        });
        if !ok {
            // A refused or reset connection: do not spin.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    samples
}

/// One request as a well-behaved client makes it: on `sender`'s connection if `keep_alive`
/// and it is still open, else on a new one, which is dropped when the server says
/// `Connection: close`. Whether it was answered 200, and whether it opened a connection.
pub(crate) async fn next_request(
    addr: SocketAddr,
    sender: &mut Option<Sender>,
    keep_alive: bool,
) -> (bool, bool) {
    let mut reconnected = false;
    if !keep_alive || sender.as_ref().is_none_or(|s| s.is_closed()) {
        *sender = connect(addr).await.ok();
        reconnected = true;
    }
    let (ok, close) = match sender.as_mut() {
        Some(s) => request(s).await,
        None => (false, true),
    };
    if close {
        *sender = None;
    }
    (ok, reconnected)
}

/// (answered 200, the connection must not be reused).
pub(crate) async fn request(sender: &mut Sender) -> (bool, bool) {
    if sender.ready().await.is_err() {
        return (false, true);
    }
    let Ok(request) = hyper::Request::get("/")
        .header(hyper::header::HOST, "localhost")
        .body(http_body_util::Empty::new())
    else {
        return (false, true);
    };
    match sender.send_request(request).await {
        Ok(response) => {
            let close = response
                .headers()
                .get(hyper::header::CONNECTION)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
            let ok = response.status() == 200 && response.into_body().collect().await.is_ok();
            (ok, close || !ok)
        }
        Err(_) => (false, true),
    }
}

struct Figures {
    rate: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    failed: usize,
    reconnects: usize,
}

fn figures(phase: &Phase) -> Figures {
    let measured: Vec<&Sample> = phase.samples.iter().filter(|s| s.at >= WARM_UP).collect();
    let mut latencies: Vec<f64> = measured
        .iter()
        .filter(|s| s.ok)
        .map(|s| s.latency.as_secs_f64() * 1000.0)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let ok = latencies.len();
    Figures {
        rate: ok as f64 / (phase.seconds - WARM_UP),
        p50: quantile(&latencies, 0.50),
        p99: quantile(&latencies, 0.99),
        p999: quantile(&latencies, 0.999),
        failed: measured.len() - ok,
        reconnects: measured.iter().filter(|s| s.reconnected).count(),
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn report(phases: &[Phase], connections: usize) {
    println!(
        "| phase | upgrades | req/s | p50 | p99 | p99.9 | failed | reconnects | reconnects per upgrade |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let all: Vec<Figures> = phases.iter().map(figures).collect();
    for (phase, f) in phases.iter().zip(&all) {
        let per_upgrade = if phase.upgrades.is_empty() {
            "–".to_owned()
        } else {
            let per = f.reconnects as f64 / phase.upgrades.len() as f64;
            format!("{per:.0} ({:.1}%)", per * 100.0 / connections as f64)
        };
        println!(
            "| {} | {} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {} | {} | {per_upgrade} |",
            phase.name,
            phase.upgrades.len(),
            f.rate,
            f.p50,
            f.p99,
            f.p999,
            f.failed,
            f.reconnects,
        );
    }
    println!();
    let ratios = |what: &str, a: &Figures, b: &Figures| {
        println!(
            "{what}: req/s {:.3}, p50 {:.2}, p99 {:.2}, p99.9 {:.2}",
            a.rate / b.rate,
            a.p50 / b.p50,
            a.p99 / b.p99,
            a.p999 / b.p999
        );
    };
    let plain = &all[0];
    // Each phase with upgrades against the same server without, and against plain tokio.
    for i in (2..all.len()).step_by(2) {
        let base = i - 1;
        ratios(
            &format!("{} / {}", phases[i].name, phases[base].name),
            &all[i],
            &all[base],
        );
        ratios(&format!("{} / plain", phases[i].name), &all[i], plain);
    }
    for i in 1..all.len() {
        if phases[i].upgrades.is_empty() {
            ratios(&format!("{} / plain", phases[i].name), &all[i], plain);
        }
    }
}
/// A bucket's start (s), requests completed, p99 (ms), errors, and whether a takeover fell in
/// it.
type Bucket = (f64, usize, f64, usize, bool);

/// Per 100 ms bucket after the warm-up: requests completed, p99 (ms), errors, and whether a
/// takeover happened in it.
fn buckets(phase: &Phase) -> Vec<Bucket> {
    let count = ((phase.seconds - WARM_UP) / BUCKET).round() as usize;
    let mut latencies: Vec<Vec<f64>> = vec![Vec::new(); count];
    let mut errors = vec![0usize; count];
    for s in &phase.samples {
        if s.at < WARM_UP {
            continue;
        }
        let i = ((s.at - WARM_UP) / BUCKET) as usize;
        if i >= count {
            continue;
        }
        if s.ok {
            latencies[i].push(s.latency.as_secs_f64() * 1000.0);
        } else {
            errors[i] += 1;
        }
    }
    latencies
        .into_iter()
        .zip(errors)
        .enumerate()
        .map(|(i, (mut l, e))| {
            l.sort_by(f64::total_cmp);
            let start = WARM_UP + i as f64 * BUCKET;
            let takeover = phase
                .upgrades
                .iter()
                .any(|u| *u >= start && *u < start + BUCKET);
            (start, l.len(), quantile(&l, 0.99), e, takeover)
        })
        .collect()
}

fn csv(phases: &[Phase]) -> String {
    let mut out = String::from("phase,t_s,completed,p99_ms,errors,takeover\n");
    for phase in phases {
        for (t, n, p99, e, takeover) in buckets(phase) {
            let _ = writeln!(
                out,
                "\"{}\",{t:.1},{n},{p99:.3},{e},{}",
                phase.name,
                u8::from(takeover)
            );
        }
    }
    out
}

/// Two panels, requests per 100 ms and p99 per 100 ms: the baseline in grey and each run with
/// upgrades in its colour, each of the last run's takeovers a red line. Hand-written SVG: no
/// plotting dependency.
fn svg(baseline: &Phase, runs: &[(&Phase, &str)]) -> String {
    let b = buckets(baseline);
    let rows: Vec<(Vec<Bucket>, &str)> = runs
        .iter()
        .map(|(phase, colour)| (buckets(phase), *colour))
        .collect();
    let (width, panel, margin) = (960.0, 200.0, 50.0);
    let legend_lines = (runs.len() + 2) as f64;
    let height = panel * 2.0 + margin * 2.5 + 16.0 * legend_lines;
    let span = (baseline.seconds - WARM_UP).max(BUCKET);
    let x = |t: f64| margin + (t - WARM_UP) / span * (width - 2.0 * margin);
    let all = || b.iter().chain(rows.iter().flat_map(|(r, _)| r.iter()));
    let max_n = all().map(|r| r.1).max().unwrap_or(1).max(1) as f64;
    let max_p = all().map(|r| r.2).fold(1.0_f64, f64::max).ceil();
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (row, title, max, unit) in [
        (0.0, "requests completed per 100 ms", max_n, ""),
        (1.0, "p99 latency per 100 ms", max_p, " ms"),
    ] {
        let top = margin + row * (panel + margin);
        let _ = writeln!(
            out,
            r#"<text x="{margin}" y="{}" font-weight="bold">{title}</text>"#,
            top - 8.0
        );
        let _ = writeln!(
            out,
            r##"<rect x="{margin}" y="{top}" width="{}" height="{panel}" fill="none" stroke="#999"/>"##,
            width - 2.0 * margin
        );
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="end">{max:.0}{unit}</text>"#,
            margin - 4.0,
            top + 10.0
        );
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="end">0</text>"#,
            margin - 4.0,
            top + panel
        );
        if let Some((last, _)) = runs.last() {
            for u in &last.upgrades {
                let _ = writeln!(
                    out,
                    r##"<line x1="{0:.1}" x2="{0:.1}" y1="{top}" y2="{1}" stroke="#d33" stroke-dasharray="3,3"/>"##,
                    x(*u),
                    top + panel
                );
            }
        }
        for (series, colour) in
            std::iter::once((&b, "#999")).chain(rows.iter().map(|(r, c)| (r, *c)))
        {
            let points: Vec<String> = series
                .iter()
                .map(|r| {
                    let value = if row == 0.0 { r.1 as f64 } else { r.2 };
                    format!(
                        "{:.1},{:.1}",
                        x(r.0 + BUCKET / 2.0),
                        top + panel - value / max * panel
                    )
                })
                .collect();
            let _ = writeln!(
                out,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
                points.join(" ")
            );
        }
    }
    let mut line = panel * 2.0 + margin * 2.5;
    let mut legend = |text: String| {
        let _ = writeln!(out, r#"<text x="{margin}" y="{line}">{text}</text>"#);
        line += 16.0;
    };
    legend(format!(
        r##"<tspan fill="#999">grey: {}</tspan>"##,
        baseline.name
    ));
    for (phase, colour) in runs {
        legend(format!(
            r#"<tspan fill="{colour}">{} ({} takeovers)</tspan>"#,
            phase.name,
            phase.upgrades.len()
        ));
    }
    legend(format!(
        "red dashes: the last run's takeovers (the upgrade call returned); time axis {span:.0} s"
    ));
    out.push_str("</svg>\n");
    out
}
