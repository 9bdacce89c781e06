//! Several tests of one test binary (one process) that each bind, as a user's suite has them:
//! standalone listeners, any number per process (the README's "Testing your app").

async fn answers(listener: risefront::RiseFrontListener) {
    let addr = listener.local_addrs()[0].tcp().expect("a TCP address");
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "hi" }));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let (status, body) = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut stream = std::net::TcpStream::connect(addr).expect("connect");
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .expect("request");
            let mut answer = String::new();
            stream.read_to_string(&mut answer).expect("response");
            (answer.starts_with("HTTP/1.1 200"), answer)
        }),
    )
    .await
    .expect("answered in time")
    .expect("client");
    assert!(status && body.ends_with("hi"), "{body}");
    server.abort();
}

async fn standalone() -> risefront::RiseFrontListener {
    risefront::Builder::new()
        .standalone()
        .bind(["127.0.0.1:0"])
        .await
        .expect("bind")
}

#[tokio::test]
async fn one_test_binds() {
    answers(standalone().await).await;
}

#[tokio::test]
async fn another_test_binds_too() {
    answers(standalone().await).await;
}

#[tokio::test]
async fn and_a_third_binds_twice() {
    for _ in 0..2 {
        answers(standalone().await).await;
    }
}
