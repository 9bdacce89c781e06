//! `bench tail`: tail latency across upgrades with many keep-alive connections.
//!
//! ```text
//! cargo run --release --example bench -- tail [--connections 1000] [--seconds 12]
//!     [--every-ms 1000] [--svg FILE] [--csv FILE]
//! ```
//!
//! Three phases in one run, with the same client: a plain `tokio::net::TcpListener`, risefront
//! with no upgrade (the baseline), and risefront upgraded every `--every-ms`. Every connection
//! is HTTP/1.1 keep-alive and reconnects when the server says `Connection: close`, as browsers
//! and pooled clients do; latencies include that reconnect. Prints req/s and p50/p99/p99.9
//! with their ratios, and per 100 ms the requests completed, p99 and errors, with each takeover
//! marked; `--svg` draws that timeline.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;

use crate::bench::{Sender, Server, connect, wait_answering};

struct Options {
    connections: usize,
    seconds: u64,
    every: Duration,
    svg: Option<PathBuf>,
    csv: Option<PathBuf>,
}

/// One completed (or failed) request: when it ended, relative to the phase's start, and how
/// long it took.
#[derive(Clone, Copy)]
struct Sample {
    at: f64,
    latency: Duration,
    ok: bool,
}

struct Phase {
    name: &'static str,
    samples: Vec<Sample>,
    seconds: f64,
    /// When each takeover happened (the upgrade call returned), relative to the phase's start.
    upgrades: Vec<f64>,
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
        svg: None,
        csv: None,
    };
    let mut rest = args;
    while let Some((flag, tail)) = rest.split_first() {
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
                    "usage: bench tail [--connections N] [--seconds N] [--every-ms N] [--svg FILE] [--csv FILE]"
                );
                std::process::exit(2);
            }
        }
    }
    let plain = Server::start("serve-plain", &scratch.join("tail-plain.log"))?;
    let risefront = Server::start("serve-risefront", &scratch.join("tail-risefront.log"))?;
    wait_answering(plain.addr).await?;
    wait_answering(risefront.addr).await?;
    println!(
        "risefront bench tail: {} keep-alive connections, {} s per phase ({} s warm-up left out), an upgrade every {} ms in the last phase, {} cores\n",
        options.connections,
        options.seconds,
        WARM_UP,
        options.every.as_millis(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let phases = vec![
        run_phase("plain tokio", plain.addr, &options, false).await,
        run_phase("risefront, no upgrade", risefront.addr, &options, false).await,
        run_phase("risefront, upgrades", risefront.addr, &options, true).await,
    ];
    report(&phases);
    if let Some(path) = &options.csv {
        std::fs::write(path, csv(&phases[1..]))?;
        println!("timeline written to {}", path.display());
    }
    if let Some(path) = &options.svg {
        std::fs::write(path, svg(&phases[1], &phases[2]))?;
        println!("chart written to {}", path.display());
    }
    Ok(())
}

async fn run_phase(
    name: &'static str,
    addr: SocketAddr,
    options: &Options,
    upgrade: bool,
) -> Phase {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(options.seconds);
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::with_capacity(options.connections);
    for _ in 0..options.connections {
        let stop = Arc::clone(&stop);
        workers.push(tokio::spawn(worker(addr, started, stop)));
    }
    let mut upgrades = Vec::new();
    if upgrade {
        // The first upgrade after the warm-up, then one every `every`.
        let mut next = started + Duration::from_secs_f64(WARM_UP) + options.every / 2;
        while next < deadline {
            tokio::time::sleep_until(next.into()).await;
            match risefront::upgrade([addr]).await {
                Ok(_) => upgrades.push(started.elapsed().as_secs_f64()),
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
    Phase {
        name,
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
        let ok = next_request(addr, &mut sender, true).await;
        samples.push(Sample {
            at: started.elapsed().as_secs_f64(),
            latency: t.elapsed(),
            ok,
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
/// `Connection: close`. Whether it was answered 200.
pub(crate) async fn next_request(
    addr: SocketAddr,
    sender: &mut Option<Sender>,
    keep_alive: bool,
) -> bool {
    if !keep_alive || sender.as_ref().is_none_or(|s| s.is_closed()) {
        *sender = connect(addr).await.ok();
    }
    let (ok, close) = match sender.as_mut() {
        Some(s) => request(s).await,
        None => (false, true),
    };
    if close {
        *sender = None;
    }
    ok
}

/// (answered 200, the connection must not be reused).
async fn request(sender: &mut Sender) -> (bool, bool) {
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
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn report(phases: &[Phase]) {
    println!("| phase | upgrades | req/s | p50 | p99 | p99.9 | failed |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    let all: Vec<Figures> = phases.iter().map(figures).collect();
    for (phase, f) in phases.iter().zip(&all) {
        println!(
            "| {} | {} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {} |",
            phase.name,
            phase.upgrades.len(),
            f.rate,
            f.p50,
            f.p99,
            f.p999,
            f.failed
        );
    }
    if let [plain, baseline, upgrades] = all.as_slice() {
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
        ratios("risefront, no upgrade / plain", baseline, plain);
        ratios(
            "risefront, upgrades / risefront, no upgrade",
            upgrades,
            baseline,
        );
        ratios("risefront, upgrades / plain", upgrades, plain);
    }
}

/// Per 100 ms bucket after the warm-up: requests completed, p99 (ms), errors, and whether a
/// takeover happened in it.
fn buckets(phase: &Phase) -> Vec<(f64, usize, f64, usize, bool)> {
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
                "{},{t:.1},{n},{p99:.3},{e},{}",
                phase.name,
                u8::from(takeover)
            );
        }
    }
    out
}

/// Two panels, requests per 100 ms and p99 per 100 ms, the baseline in grey and the run with
/// upgrades in blue, each takeover a red line. Hand-written SVG: no plotting dependency.
fn svg(baseline: &Phase, upgrades: &Phase) -> String {
    let (b, u) = (buckets(baseline), buckets(upgrades));
    let (width, panel, margin) = (960.0, 200.0, 50.0);
    let height = panel * 2.0 + margin * 3.0;
    let span = (baseline.seconds - WARM_UP).max(BUCKET);
    let x = |t: f64| margin + (t - WARM_UP) / span * (width - 2.0 * margin);
    let max_n = b.iter().chain(&u).map(|r| r.1).max().unwrap_or(1).max(1) as f64;
    let max_p = b
        .iter()
        .chain(&u)
        .map(|r| r.2)
        .fold(1.0_f64, f64::max)
        .ceil();
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
        for u in &upgrades.upgrades {
            let _ = writeln!(
                out,
                r##"<line x1="{0:.1}" x2="{0:.1}" y1="{top}" y2="{1}" stroke="#d33" stroke-dasharray="3,3"/>"##,
                x(*u),
                top + panel
            );
        }
        for (rows, colour) in [(&b, "#999"), (&u, "#1f6fd1")] {
            let points: Vec<String> = rows
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
    let bottom = height - margin / 2.0;
    let _ = writeln!(
        out,
        r##"<text x="{margin}" y="{bottom}"><tspan fill="#999">grey: {}</tspan>  <tspan fill="#1f6fd1">blue: {} ({} takeovers, red dashes)</tspan>  time axis {span:.0} s</text>"##,
        baseline.name,
        upgrades.name,
        upgrades.upgrades.len()
    );
    out.push_str("</svg>\n");
    out
}
