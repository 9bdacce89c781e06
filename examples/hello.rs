//! The example every test and benchmark uses.
//!
//! ```text
//! hello [ADDR]...              serve (default 127.0.0.1:8080); the first run becomes the front
//! hello --upgrade [ADDR]...    ask the running front to start a new generation
//! ```
//!
//! `GET /` answers `hello from generation <N> pid <PID>`; `GET /slow?ms=<n>` answers the same
//! after `n` milliseconds. Try it: run it, `curl localhost:8080`, run it again in another
//! terminal (or `kill -HUP <front pid>`, or `hello --upgrade`), and `curl` again.

use std::process::ExitCode;
use std::time::Duration;

use axum::{Router, extract::Query, routing::get};
use serde::Deserialize;

#[derive(Deserialize)]
struct Slow {
    ms: Option<u64>,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let upgrade = args.first().is_some_and(|a| a == "--upgrade");
    if upgrade {
        args.remove(0);
    }
    if args.is_empty() {
        args.push("127.0.0.1:8080".to_owned());
    }

    if upgrade {
        return match risefront::upgrade(&args).await {
            Ok(generation) => {
                println!("upgraded: generation {generation} is serving");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        };
    }

    match serve(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hello: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(addrs: &[String]) -> std::io::Result<()> {
    let listener = risefront::bind(addrs).await?;
    failure_hook();

    let body = format!(
        "hello from generation {} pid {}\n",
        listener.generation(),
        std::process::id()
    );
    let slow_body = body.clone();
    let app = Router::new()
        .route("/", get(move || async move { body }))
        .route(
            "/slow",
            get(move |Query(slow): Query<Slow>| async move {
                let ms = slow.ms.unwrap_or(1000).min(60_000);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                slow_body
            }),
        )
        .layer(risefront::DrainLayer::new());

    axum::serve(listener, app)
        .with_graceful_shutdown(risefront::superseded())
        .await
}

/// Lets the end-to-end tests make a new generation fail before it is ready.
fn failure_hook() {
    match std::env::var("HELLO_FAIL").as_deref() {
        Ok("exit") => {
            eprintln!("hello: HELLO_FAIL=exit: exiting before serving");
            std::process::exit(3);
        }
        Ok("hang") => {
            eprintln!("hello: HELLO_FAIL=hang: never serving");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        _ => {}
    }
}
