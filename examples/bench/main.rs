//! Side-by-side figures: the same axum hello app behind a plain `tokio::net::TcpListener` and
//! behind risefront (after 10 upgrades), measured interleaved in one run with the same load
//! client, then takeover latency over 20 upgrades and the front's footprint.
//!
//! ```text
//! cargo run --release --example bench [-- --seconds 3 --rounds 6 --connections 32] [--aa]
//! cargo run --release --example bench -- tail [--connections 1000] [--every-ms 1000] [--peers] [--svg F]
//! cargo run --release --example bench -- idle [--connections 5000] [--upgrades 10]
//! cargo run --release --example bench -- soak [--upgrades 1000] [--workers 8]
//! cargo run --release --features tls --example bench -- tls [--clients 16] [--requests 4000]
//! ```
//!
//! `tail` measures tail latency at many keep-alive connections with an upgrade every second
//! against a same-run baseline, with and without the connection handoff, and beside nginx and
//! HAProxy (`tail.rs`, `peers.rs`); `idle` counts the requests an idle keep-alive pool loses
//! across upgrades (`idle.rs`); `soak` upgrades back to back under light load and
//! watches the front for leaks (`soak.rs`); `tls` compares TLS handshakes per second with plain
//! TCP connections (`tls.rs`).
//!
//! Every server runs as a separate process of this binary (`bench serve-plain ADDR`,
//! `bench serve-risefront ADDR`, `bench serve-risefront-oneliner ADDR`, `bench serve-graceful
//! ADDR`), so they get the same
//! build, runtime and app; the load client runs in this process. Figures are
//! printed as a Markdown table; BENCHMARKS.md holds a run of it.

#[cfg(unix)]
fn main() -> std::io::Result<()> {
    bench::main()
}

#[cfg(not(unix))]
fn main() {
    eprintln!("the bench reads /proc and uses signals: run it on Linux");
}

#[cfg(unix)]
mod idle;
#[cfg(unix)]
mod peers;
#[cfg(unix)]
mod soak;
#[cfg(unix)]
mod tail;
#[cfg(all(unix, feature = "tls"))]
mod tls;

#[cfg(unix)]
mod bench {
    use std::net::SocketAddr;
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use axum::{Router, routing::get};
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::TokioIo;

    #[derive(Clone, Copy)]
    struct Options {
        seconds: u64,
        rounds: usize,
        connections: usize,
        aa: bool,
    }

    pub fn main() -> std::io::Result<()> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        match args.first().map(String::as_str) {
            Some("serve-plain") => return runtime().block_on(serve_plain(&args[1])),
            Some("serve-risefront") => return runtime().block_on(serve_risefront(&args[1], true)),
            Some("serve-risefront-oneliner") => {
                return runtime().block_on(serve_risefront(&args[1], false));
            }
            Some("serve-graceful") => return runtime().block_on(serve_graceful(&args[1])),
            Some("idle") => {
                return with_scratch(|scratch| async move {
                    crate::idle::main(&args[1..], &scratch).await
                });
            }
            Some("soak") => {
                return with_scratch(|scratch| async move {
                    crate::soak::main(&args[1..], &scratch).await
                });
            }
            Some("tail") => {
                return with_scratch(|scratch| async move {
                    crate::tail::main(&args[1..], &scratch).await
                });
            }
            #[cfg(feature = "tls")]
            Some("serve-tls") => return runtime().block_on(crate::tls::serve(&args[1])),
            #[cfg(feature = "tls")]
            Some("tls") => {
                return with_scratch(|scratch| async move {
                    crate::tls::main(&args[1..], &scratch).await
                });
            }
            #[cfg(not(feature = "tls"))]
            Some("tls") => {
                eprintln!(
                    "bench tls needs the tls feature: cargo run --release --features tls --example bench -- tls"
                );
                std::process::exit(2);
            }
            _ => {}
        }
        let mut options = Options {
            seconds: 3,
            rounds: 6,
            connections: 32,
            aa: false,
        };
        let mut rest = args.as_slice();
        while let Some((flag, tail)) = rest.split_first() {
            rest = tail;
            if flag == "--aa" {
                options.aa = true;
                continue;
            }
            let value = rest.first().and_then(|v| v.parse().ok());
            rest = rest.get(1..).unwrap_or_default();
            match (flag.as_str(), value) {
                ("--seconds", Some(v)) => options.seconds = v,
                ("--rounds", Some(v)) => options.rounds = v as usize,
                ("--connections", Some(v)) => options.connections = v as usize,
                _ => {
                    eprintln!("usage: bench [--seconds N] [--rounds N] [--connections N] [--aa]");
                    std::process::exit(2);
                }
            }
        }
        with_scratch(|scratch| async move { bench(options, &scratch).await })
    }

    /// Runs `scenario` on a fresh runtime with a private scratch directory (logs, and the
    /// runtime directory the servers and the bench's own `risefront::upgrade` calls share).
    fn with_scratch<F, Fut>(scenario: F) -> std::io::Result<()>
    where
        F: FnOnce(std::path::PathBuf) -> Fut,
        Fut: std::future::Future<Output = std::io::Result<()>>,
    {
        let scratch = std::env::temp_dir().join(format!("risefront-bench-{}", std::process::id()));
        std::fs::create_dir_all(scratch.join("run"))?;
        std::fs::set_permissions(
            scratch.join("run"),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )?;
        // SAFETY: no other thread exists yet (the runtime is built below), so nothing can read
        // the environment concurrently.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", scratch.join("run")) };
        let result = runtime().block_on(scenario(scratch.clone()));
        let _ = std::fs::remove_dir_all(&scratch);
        result
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    }

    fn app(body: String) -> Router {
        Router::new().route("/", get(move || async move { body }))
    }

    async fn serve_plain(addr: &str) -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let body = format!("hello from generation 0 pid {}\n", std::process::id());
        axum::serve(listener, app(body)).await
    }

    /// Logs to stderr and binds; the app's answer names the generation, as `hello`'s does.
    async fn bind_risefront(addr: &str) -> std::io::Result<(risefront::RiseFrontListener, Router)> {
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .init();
        let listener = risefront::bind([addr]).await?;
        let body = format!(
            "hello from generation {} pid {}\n",
            listener.generation(),
            std::process::id()
        );
        Ok((listener, app(body)))
    }

    /// `hello_setup`: `DrainLayer` + `superseded()`, as the `hello` example and the README
    /// recommend; otherwise the bare one-liner.
    async fn serve_risefront(addr: &str, hello_setup: bool) -> std::io::Result<()> {
        let (listener, app) = bind_risefront(addr).await?;
        if !hello_setup {
            return axum::serve(listener, app).await;
        }
        axum::serve(listener, app.layer(risefront::DrainLayer::new()))
            .with_graceful_shutdown(risefront::superseded())
            .await
    }

    /// risefront with `GracefulServer`: the same app, and idle connections move at a takeover.
    async fn serve_graceful(addr: &str) -> std::io::Result<()> {
        let (listener, app) = bind_risefront(addr).await?;
        risefront::GracefulServer::new().serve(listener, app).await;
        Ok(())
    }

    /// A server process of this binary, killed (with its process group) on drop.
    pub(crate) struct Server {
        child: Child,
        pub(crate) addr: SocketAddr,
    }

    impl Server {
        pub(crate) fn pid(&self) -> u32 {
            self.child.id()
        }

        pub(crate) fn start(mode: &str, log: &Path) -> std::io::Result<Server> {
            let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
            let log = std::fs::File::create(log)?;
            let mut command = Command::new(std::env::current_exe()?);
            command
                .args([mode, &addr.to_string()])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            std::os::unix::process::CommandExt::process_group(&mut command, 0);
            Ok(Server {
                child: command.spawn()?,
                addr,
            })
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            // SIGTERM lets the risefront front drain its generations and remove its socket.
            let pid = rustix::process::Pid::from_raw(self.child.id() as i32);
            if let Some(pid) = pid {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Some(pid) = pid {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
            let _ = self.child.wait();
        }
    }

    async fn bench(options: Options, scratch: &Path) -> std::io::Result<()> {
        // The baseline, risefront as `hello` runs it (DrainLayer + superseded()), and the bare
        // one-liner, which isolates the listener's own cost. An A/A run (`--aa`) puts plain
        // servers in risefront's places: the ratios it prints are this machine's noise floor.
        let modes: [(&str, &str); 3] = if options.aa {
            [
                ("plain tokio", "serve-plain"),
                ("plain tokio (B)", "serve-plain"),
                ("plain tokio (C)", "serve-plain"),
            ]
        } else {
            [
                ("plain tokio", "serve-plain"),
                ("risefront, hello setup", "serve-risefront"),
                ("risefront, one-liner", "serve-risefront-oneliner"),
            ]
        };
        let mut servers = Vec::new();
        for (i, (_, mode)) in modes.iter().enumerate() {
            servers.push(Server::start(
                mode,
                &scratch.join(format!("server-{i}.log")),
            )?);
        }
        for server in &servers {
            wait_answering(server.addr).await?;
        }
        if !options.aa {
            for server in &servers[1..] {
                for _ in 0..10 {
                    risefront::upgrade([server.addr]).await?;
                }
            }
        }
        println!(
            "risefront bench{}: {} rounds x {} s per figure, {} concurrent connections, {} cores\n",
            if options.aa {
                " (A/A: plain everywhere)"
            } else {
                ""
            },
            options.rounds,
            options.seconds,
            options.connections,
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );

        let mut figures: Vec<(&str, &str, Figures)> = Vec::new();
        for keep_alive in [true, false] {
            let kind = if keep_alive {
                "keep-alive"
            } else {
                "new connection"
            };
            let mut runs: Vec<Figures> = modes.iter().map(|_| Figures::default()).collect();
            // Interleaved, and in alternating order (ABC CBA ...), so drift in machine load and
            // any advantage of going first hit every server alike.
            for round in 0..options.rounds {
                let order: Vec<usize> = if round % 2 == 0 {
                    (0..modes.len()).collect()
                } else {
                    (0..modes.len()).rev().collect()
                };
                for i in order {
                    runs[i].add(measure(servers[i].addr, keep_alive, options).await);
                }
            }
            for ((name, _), run) in modes.iter().zip(runs) {
                figures.push((kind, name, run));
            }
        }
        println!("| load | server | req/s (median of rounds) | p50 | p99 | failed |");
        println!("| --- | --- | ---: | ---: | ---: | ---: |");
        for (kind, server, f) in &mut figures {
            println!(
                "| {kind} | {server} | {:.0} | {} | {} | {} |",
                f.median_rate(),
                micros(f.quantile(0.50)),
                micros(f.quantile(0.99)),
                f.failed
            );
        }
        println!();
        for group in figures.chunks_mut(modes.len()) {
            let Some(((kind, _, plain), others)) = group.split_first_mut() else {
                continue;
            };
            let (rate, p99) = (plain.median_rate(), plain.quantile(0.99).as_secs_f64());
            for (_, name, f) in others {
                println!(
                    "{kind}: {name} / plain: req/s ratio {:.3}, p99 ratio {:.3}",
                    f.median_rate() / rate,
                    f.quantile(0.99).as_secs_f64() / p99
                );
            }
        }
        let risefront = &servers[1];
        let rf_log = scratch.join("server-1.log");

        if options.aa {
            return Ok(());
        }
        let front = risefront.child.id();
        let (fds_before, _) = footprint(front);
        let mut upgrade_ms = Vec::new();
        for _ in 0..20 {
            let started = Instant::now();
            risefront::upgrade([risefront.addr]).await?;
            upgrade_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        // Let the last superseded generation log its stop before reading the log.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let takeovers = takeover_latencies(&std::fs::read_to_string(&rf_log)?);
        let (fds_after, rss) = footprint(front);
        println!();
        print_spread(
            "upgrade request -> new generation serving (incl. process start)",
            &mut upgrade_ms,
            "ms",
        );
        let mut takeover_us: Vec<f64> = takeovers.iter().map(|d| d * 1e6).collect();
        print_spread(
            "new generation ready -> old generation stopped accepting",
            &mut takeover_us,
            "us",
        );
        println!(
            "front: {:.1} MiB resident, {fds_before} -> {fds_after} open descriptors over 20 upgrades",
            rss as f64 / 1024.0
        );
        Ok(())
    }

    fn print_spread(what: &str, values: &mut [f64], unit: &str) {
        values.sort_by(f64::total_cmp);
        if values.is_empty() {
            println!("{what}: no samples");
            return;
        }
        println!(
            "{what}: median {:.1} {unit}, max {:.1} {unit} ({} samples)",
            values[values.len() / 2],
            values[values.len() - 1],
            values.len()
        );
    }

    fn micros(d: Duration) -> String {
        format!("{} us", d.as_micros())
    }

    #[derive(Default)]
    struct Figures {
        rates: Vec<f64>,
        latencies: Vec<Duration>,
        failed: u64,
    }

    impl Figures {
        fn add(&mut self, run: Run) {
            self.rates.push(run.ok as f64 / run.elapsed.as_secs_f64());
            self.latencies.extend(run.latencies);
            self.failed += run.failed;
        }

        fn median_rate(&mut self) -> f64 {
            self.rates.sort_by(f64::total_cmp);
            self.rates.get(self.rates.len() / 2).copied().unwrap_or(0.0)
        }

        fn quantile(&mut self, q: f64) -> Duration {
            self.latencies.sort();
            let last = self.latencies.len().saturating_sub(1);
            self.latencies
                .get((last as f64 * q).round() as usize)
                .copied()
                .unwrap_or_default()
        }
    }

    struct Run {
        ok: u64,
        failed: u64,
        elapsed: Duration,
        latencies: Vec<Duration>,
    }

    /// `options.connections` workers for `options.seconds`: each reuses one HTTP/1.1 connection
    /// (keep-alive) or opens a new one per request.
    async fn measure(addr: SocketAddr, keep_alive: bool, options: Options) -> Run {
        let deadline = Instant::now() + Duration::from_secs(options.seconds);
        let started = Instant::now();
        let mut workers = Vec::new();
        for _ in 0..options.connections {
            workers.push(tokio::spawn(async move {
                let mut run = Run {
                    ok: 0,
                    failed: 0,
                    elapsed: Duration::ZERO,
                    latencies: Vec::new(),
                };
                let mut sender = None;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    if sender.is_none() || !keep_alive {
                        sender = connect(addr).await.ok();
                    }
                    let ok = match sender.as_mut() {
                        Some(s) => request(s).await,
                        None => false,
                    };
                    if ok {
                        run.ok += 1;
                        run.latencies.push(t.elapsed());
                    } else {
                        run.failed += 1;
                        sender = None;
                    }
                }
                run
            }));
        }
        let mut total = Run {
            ok: 0,
            failed: 0,
            elapsed: Duration::ZERO,
            latencies: Vec::new(),
        };
        for worker in workers {
            if let Ok(run) = worker.await {
                total.ok += run.ok;
                total.failed += run.failed;
                total.latencies.extend(run.latencies);
            }
        }
        total.elapsed = started.elapsed();
        total
    }

    pub(crate) type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

    pub(crate) async fn connect(addr: SocketAddr) -> Result<Sender, ()> {
        let stream = tokio::net::TcpStream::connect(addr).await.map_err(drop)?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(drop)?;
        tokio::spawn(connection);
        Ok(sender)
    }

    async fn request(sender: &mut Sender) -> bool {
        let Ok(request) = hyper::Request::get("/")
            .header(hyper::header::HOST, "localhost")
            .body(Empty::new())
        else {
            return false;
        };
        match sender.send_request(request).await {
            Ok(response) if response.status() == 200 => {
                response.into_body().collect().await.is_ok()
            }
            _ => false,
        }
    }

    pub(crate) async fn wait_answering(addr: SocketAddr) -> std::io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut sender) = connect(addr).await
                && request(&mut sender).await
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no server answered on {addr}"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Seconds between the front logging "generation N ready" and generation N-1 logging that it
    /// stopped accepting, from the timestamps in the shared log.
    fn takeover_latencies(log: &str) -> Vec<f64> {
        let mut ready = std::collections::HashMap::new();
        let mut stopped = std::collections::HashMap::new();
        for line in log.lines() {
            let Some(time) = line.get(11..26).and_then(seconds_of_day) else {
                continue;
            };
            if let Some(n) = number_after(line, "generation ", " ready after") {
                ready.insert(n, time);
            } else if (line.contains("on probation: stopped accepting")
                || line.contains("superseded by a newer generation: stopped accepting"))
                && let Some(n) = number_after(line, "generation ", " was superseded")
            {
                // With probation it stops accepting at the takeover and drains at the end of
                // the window: the first line is the takeover.
                stopped.entry(n + 1).or_insert(time);
            }
        }
        let mut out: Vec<f64> = ready
            .iter()
            .filter_map(|(n, r)| stopped.get(n).map(|s| s - r))
            .collect();
        out.sort_by(f64::total_cmp);
        // Only the last 20: the first ten upgrades ran before the throughput figures.
        out.split_off(out.len().saturating_sub(20))
    }

    fn number_after(line: &str, before: &str, after: &str) -> Option<u64> {
        let end = line.find(after)?;
        let start = line[..end].rfind(before)? + before.len();
        line[start..end].parse().ok()
    }

    /// `HH:MM:SS.ffffff` to seconds.
    fn seconds_of_day(t: &str) -> Option<f64> {
        let mut parts = t.split(':');
        let h: f64 = parts.next()?.parse().ok()?;
        let m: f64 = parts.next()?.parse().ok()?;
        let s: f64 = parts.next()?.parse().ok()?;
        Some(h * 3600.0 + m * 60.0 + s)
    }

    /// Open descriptors and resident KiB of `pid`, from /proc (Linux).
    pub(crate) fn footprint(pid: u32) -> (usize, u64) {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
        let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0);
        (fds, rss)
    }
}
