//! The smallest risefront server: the one-liner, with no graceful shutdown at all. Once
//! superseded, the generation exits by itself when its last connection closes, or at the
//! drain deadline. (Prefer `hello.rs`'s `DrainLayer` + `superseded()` under keep-alive load.)
//!
//! `minimal [ADDR]...` answers `GET /` like `hello`.

use axum::{Router, routing::get};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut addrs: Vec<String> = std::env::args().skip(1).collect();
    if addrs.is_empty() {
        addrs.push("127.0.0.1:8080".to_owned());
    }
    let listener = risefront::bind(&addrs).await?;
    let body = format!(
        "hello from generation {} pid {}\n",
        listener.generation(),
        std::process::id()
    );
    let app = Router::new().route("/", get(move || async move { body }));
    axum::serve(listener, app).await
}
