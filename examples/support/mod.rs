//! What every example shares: the command line (`[--upgrade] [ADDR]...`), logging, and the
//! failure hook the end-to-end tests use. Not part of the crate's API.

use std::process::ExitCode;
use std::time::Duration;

/// Parses `[--upgrade | --upgrade-front] [ADDR]...`. With `--upgrade`, asks the running
/// front for a new generation (with `--upgrade-front`, to re-execute itself into the serving
/// build), prints the outcome and returns the exit code; otherwise returns the addresses.
pub async fn command_line() -> Result<Vec<String>, ExitCode> {
    init_logging();

    let mut request = None;
    let mut args = Vec::new();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--upgrade" => request = Some(Request::Generation),
            "--upgrade-front" => request = Some(Request::Front),
            _ => args.push(arg),
        }
    }
    if args.is_empty() {
        args.push("127.0.0.1:8080".to_owned());
    }
    match request {
        None => {
            start_hook();
            Ok(args)
        }
        Some(request) => Err(request_upgrade(request, &args).await),
    }
}

/// What `--upgrade` and `--upgrade-front` ask the running front for.
#[derive(Clone, Copy)]
enum Request {
    Generation,
    Front,
}

/// Logs to stderr, at `RUST_LOG` or `info`.
fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// `--upgrade`: asks the running front for a new generation (`--upgrade-front`: to
/// re-execute itself into the serving build) and says how it went.
async fn request_upgrade(request: Request, addrs: &[String]) -> ExitCode {
    let outcome = match request {
        Request::Generation => risefront::upgrade(addrs)
            .await
            .map(|generation| format!("upgraded: generation {generation} is serving")),
        Request::Front => risefront::reexec_front(addrs).await.map(|generation| {
            format!(
                "the front re-executed into the serving build; generation {generation} is serving"
            )
        }),
    };
    match outcome {
        Ok(said) => {
            println!("{said}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// `hello from generation <N> pid <PID>`: the body every example answers `GET /` with.
pub fn greeting(listener: &risefront::RiseFrontListener) -> String {
    format!(
        "hello from generation {} pid {}\n",
        listener.generation(),
        std::process::id()
    )
}

/// The delay asked for by `GET /slow?ms=<n>` (default 1 s, at most 60 s). Logs that the
/// request arrived, so a test can wait for that instead of sleeping.
pub fn slow_delay(query: Option<&str>) -> Duration {
    let delay = parse_slow_delay(query);
    tracing::info!("slow request: answering in {} ms", delay.as_millis());
    delay
}

fn parse_slow_delay(query: Option<&str>) -> Duration {
    let ms = query
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("ms="))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(1000);
    Duration::from_millis(ms.min(60_000))
}

/// The failure the end-to-end tests ask for: `HELLO_FAIL`, or else the contents of the file
/// named by `HELLO_FAIL_FILE` if it exists, which lets a test make only the processes started
/// from some point on fail, including those the front starts itself.
fn failure_mode() -> Option<String> {
    if let Ok(mode) = std::env::var("HELLO_FAIL") {
        return Some(mode);
    }
    let file = std::env::var_os("HELLO_FAIL_FILE")?;
    let mode = std::fs::read_to_string(file).ok()?;
    Some(mode.trim().to_owned())
}

/// Runs before `bind`: `slow-start:<ms>` sleeps that long first, like an app loading its
/// configuration before it binds.
fn start_hook() {
    if let Some(ms) = failure_mode()
        .as_deref()
        .and_then(|m| m.strip_prefix("slow-start:"))
        .and_then(|ms| ms.parse::<u64>().ok())
    {
        eprintln!("HELLO_FAIL=slow-start:{ms}: sleeping before bind");
        std::thread::sleep(Duration::from_millis(ms));
    }
}

/// Runs after `bind`, to make a generation fail: `exit` exits with status 3 before serving,
/// `hang` never serves, `crash:<ms>` serves and exits with status 4 `ms` later (a build that
/// dies soon after it took over).
pub fn failure_hook() {
    let Some(mode) = failure_mode() else {
        return;
    };
    match mode.as_str() {
        "exit" => {
            eprintln!("HELLO_FAIL=exit: exiting before serving");
            std::process::exit(3);
        }
        "hang" => {
            eprintln!("HELLO_FAIL=hang: never serving");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        other => {
            if let Some(ms) = other
                .strip_prefix("crash:")
                .and_then(|ms| ms.parse::<u64>().ok())
            {
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(ms));
                    // Through the log, with its timestamp: the probation test measures
                    // from here to the previous generation accepting again.
                    tracing::error!("HELLO_FAIL=crash:{ms}: exiting after serving {ms} ms");
                    std::process::exit(4);
                });
            }
        }
    }
}

/// `risefront::bind`, except that `HELLO_READY_AFTER_MS=<n>` (used by the end-to-end tests)
/// turns on manual readiness and reports ready `n` ms later, like an app warming a cache.
#[allow(dead_code)] // Only the hyper example uses it; the others show `risefront::bind` itself.
pub async fn bind(addrs: &[String]) -> std::io::Result<risefront::RiseFrontListener> {
    let Some(ms) = std::env::var("HELLO_READY_AFTER_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return risefront::bind(addrs).await;
    };
    let listener = risefront::Builder::new().manual_ready().bind(addrs).await?;
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        risefront::ready();
    });
    Ok(listener)
}

/// Serves an axum app as the README's first snippet does (`axum::serve`, `DrainLayer` in the
/// app, `superseded()`), or, with `HELLO_SERVER=graceful`, with `risefront::GracefulServer`,
/// which moves idle keep-alive connections to the new generation at a takeover instead of
/// closing them. The end-to-end tests run both.
#[cfg(feature = "axum")]
#[allow(dead_code)] // The axum examples use it; `hyper` and `gateway` always use GracefulServer.
pub async fn serve_axum(
    listener: risefront::RiseFrontListener,
    app: axum::Router,
) -> std::io::Result<()> {
    match std::env::var("HELLO_SERVER").as_deref() {
        Ok("graceful") => {
            risefront::GracefulServer::new().serve(listener, app).await;
            Ok(())
        }
        Ok("axum") | Err(_) => {
            axum::serve(listener, app)
                .with_graceful_shutdown(risefront::superseded())
                .await
        }
        Ok(other) => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("HELLO_SERVER={other:?}: use graceful or axum"),
        )),
    }
}

/// Prints a server error and turns it into an exit code.
pub fn exit(result: std::io::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// What the TLS example is asked to serve: addresses and the PEM files of its certificate.
#[allow(dead_code)] // Only the TLS example uses it.
pub struct TlsCommandLine {
    pub addrs: Vec<String>,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

/// Parses `[--upgrade] [ADDR]... --cert FILE --key FILE` (default address `127.0.0.1:8443`),
/// as [`command_line`] does the plain examples' command line; `--upgrade` ignores the files.
#[allow(dead_code)] // Only the TLS example uses it.
pub async fn tls_command_line() -> Result<TlsCommandLine, ExitCode> {
    init_logging();

    let usage = "usage: tls [--upgrade | --upgrade-front] [ADDR]... --cert FILE --key FILE";
    let mut request = None;
    let mut addrs = Vec::new();
    let (mut cert, mut key): (Option<std::path::PathBuf>, Option<std::path::PathBuf>) =
        (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--upgrade" => request = Some(Request::Generation),
            "--upgrade-front" => request = Some(Request::Front),
            "--cert" | "--key" => {
                let Some(file) = args.next() else {
                    eprintln!("{arg} needs a file name\n{usage}");
                    return Err(ExitCode::from(2));
                };
                let slot = if arg == "--cert" { &mut cert } else { &mut key };
                *slot = Some(file.into());
            }
            _ => addrs.push(arg),
        }
    }
    if addrs.is_empty() {
        addrs.push("127.0.0.1:8443".to_owned());
    }
    if let Some(request) = request {
        return Err(request_upgrade(request, &addrs).await);
    }
    let (Some(cert), Some(key)) = (cert, key) else {
        eprintln!("--cert and --key are required\n{usage}");
        return Err(ExitCode::from(2));
    };
    start_hook();
    Ok(TlsCommandLine { addrs, cert, key })
}
