//! A test that calls `risefront::bind`, as a user's own test suite would. It does nothing unless
//! `BIND_IN_A_TEST_MODE` is set: `tests/usage.rs` runs this binary with it, as a new user's
//! `cargo test` would run theirs, and checks that it finishes and what it says.
//!
//! No tracing subscriber is installed here, on purpose: what the front must say reaches stderr
//! anyway.

use std::io::{Read, Write};

#[tokio::test]
async fn serves_inside_a_test() {
    let Ok(mode) = std::env::var("BIND_IN_A_TEST_MODE") else {
        return;
    };
    // A name per mode: the tests that run this binary run at once, and on Windows the control
    // pipe is per user, not per runtime directory.
    let listener = risefront::Builder::new()
        .name(format!("fixture-{mode}"))
        .bind(["127.0.0.1:0"])
        .await
        .expect("bind");
    if mode == "never-serves" {
        // A build that dies before it serves: the front must give up, and say so.
        std::process::exit(3);
    }
    let addr = listener.local_addrs()[0].tcp().expect("a TCP address");
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello from a test" }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let answer = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            .expect("request");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("response");
        answer
    })
    .await
    .expect("client");
    assert!(answer.ends_with("hello from a test"), "{answer}");
}
