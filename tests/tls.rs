//! TLS end to end, with the `tls` example and certificates made at test time: no request fails
//! across upgrades over HTTP/1.1 and HTTP/2 (ALPN), the drain deadline cuts only what
//! outlives it, a client that sends nothing does not stall accepting, certificates rotate by
//! upgrade, and the handshake rate is measured against plain TCP.

mod common;

use std::time::{Duration, Instant};

use common::load::{self, Kind};
use common::tls::{self as tls, Ca};
use common::{PATIENCE, Service, TempDir, Way, parse_hello};
use tokio::io::AsyncReadExt;

const UPGRADES: usize = 10;
/// Responses from a generation that show the load has reached it.
const SETTLED: u64 = 30;

/// `UPGRADES` upgrades, alternating the ways there are, under `mix`; nothing may fail.
async fn upgrades_under_load(mix: &[(Kind, usize, &str)]) -> load::Report {
    let ca = Ca::new();
    let dir = TempDir::new();
    let (cert, key) = tls::service_env(&dir.0, &ca.server_cert(1));
    let client = ca.client(&[b"h2", b"http/1.1"]);
    let mut service = tls::start(&cert, &key, &[], &client).await;
    let load = load::start(tls::load_target(service.addr, &ca), mix);
    for i in 0..UPGRADES {
        load.served_by(i as u64 + 1, SETTLED).await;
        tls::upgrade(&mut service, &client, Way::nth(i), i as u64 + 2).await;
    }
    load.served_by(UPGRADES as u64 + 1, SETTLED).await;
    let report = load.stop().await;
    println!("{}", report.summary(UPGRADES));
    if report.failed > 0 {
        // Shown with the failure: what the service did around the failed requests.
        println!("the service's log:\n{}", service.log());
    }
    assert_eq!(report.failed, 0, "{}", report.summary(UPGRADES));
    let expected: Vec<u64> = (1..=UPGRADES as u64 + 1).collect();
    assert_eq!(
        report.generations.iter().copied().collect::<Vec<_>>(),
        expected,
        "every generation served"
    );
    report
}

/// TLS and a Unix socket compose: the `tls` example on `unix:PATH` answers HTTPS (HTTP/2 by
/// ALPN) through the socket, before and after an upgrade.
#[cfg(unix)]
#[tokio::test]
async fn tls_over_a_unix_socket_through_an_upgrade() {
    let ca = Ca::new();
    let dir = TempDir::new();
    let (cert, key) = tls::service_env(&dir.0, &ca.server_cert(1));
    let socket = dir.0.join("https.sock");
    let client = ca.client(&[b"h2", b"http/1.1"]);
    let args = [
        "--cert".to_owned(),
        cert.display().to_string(),
        "--key".to_owned(),
        key.display().to_string(),
        format!("unix:{}", socket.display()),
    ];
    let mut service = Service::spawn_with_args(&tls::tls_example(), &[], &args);
    tls::wait_generation(&service, &client, 1).await;
    for n in [1, 2] {
        if n == 2 {
            tls::upgrade(&mut service, &client, Way::Command, 2).await;
        }
        let stream = tls::connect_unix(&socket, &client)
            .await
            .expect("TLS over the socket");
        let got = tls::get_on(stream, "/").await.expect("GET over the socket");
        assert_eq!(got.status, 200, "{got:?}");
        assert_eq!(got.alpn.as_deref(), Some(&b"h2"[..]));
        let hello = parse_hello(&got.body).expect("hello body");
        assert_eq!(hello.generation, n);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_across_10_upgrades_over_tls_http1() {
    let report = upgrades_under_load(&[
        (Kind::NewConnection, 8, "/"),
        (Kind::KeepAlive, 6, "/"),
        (Kind::KeepAlive, 2, "/slow?ms=200"),
    ])
    .await;
    // A TLS session cannot move to another process: its keep-alive clients are told to
    // close, the old way, at each takeover (8 of them, 10 takeovers).
    assert!(
        report.closes >= 8 * UPGRADES as u64 / 2,
        "{}",
        report.summary(UPGRADES)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_across_10_upgrades_over_tls_http2() {
    let _ = upgrades_under_load(&[
        (Kind::Http2 { streams: 4 }, 6, "/"),
        (Kind::Http2 { streams: 2 }, 2, "/slow?ms=200"),
    ])
    .await;
}

/// Clients that connect and send nothing hold no one up: the handshake runs in each
/// connection's task, and the handshake timeout closes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_do_not_stall_accepting() {
    const SILENT: usize = 64;
    const TIMEOUT_MS: u64 = 3000;
    let ca = Ca::new();
    let dir = TempDir::new();
    let (cert, key) = tls::service_env(&dir.0, &ca.server_cert(1));
    let client = ca.client(&[b"h2", b"http/1.1"]);
    let timeout = TIMEOUT_MS.to_string();
    let service = tls::start(
        &cert,
        &key,
        &[("HELLO_TLS_HANDSHAKE_TIMEOUT_MS", &timeout)],
        &client,
    )
    .await;

    let opened = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..SILENT {
        silent.push(
            tokio::net::TcpStream::connect(service.addr)
                .await
                .expect("connect"),
        );
    }
    // Queued behind all the silent ones: answered at once if nothing waits for them.
    let started = Instant::now();
    let got = tls::get(service.addr, &client, "/")
        .await
        .expect("HTTPS GET while silent clients are connected");
    let answered = started.elapsed();
    assert_eq!(got.status, 200, "{got:?}");
    eprintln!(
        "silent clients: {SILENT} connected and silent; an HTTPS GET behind them took {} ms (handshake timeout {TIMEOUT_MS} ms)",
        answered.as_millis()
    );
    assert!(
        answered < Duration::from_millis(TIMEOUT_MS),
        "the GET waited for a silent client's handshake timeout: {answered:?}"
    );

    // Each silent connection is closed by the server at its handshake timeout, not before.
    let mut closed_after = Vec::new();
    for mut stream in silent {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(PATIENCE, stream.read(&mut byte)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "a silent client was not closed: {read:?}"
        );
        closed_after.push(opened.elapsed());
    }
    let (first, last) = (closed_after[0], closed_after[closed_after.len() - 1]);
    eprintln!(
        "silent clients: closed by the server {} ms to {} ms after connecting",
        first.as_millis(),
        last.as_millis()
    );
    assert!(
        first >= Duration::from_millis(TIMEOUT_MS - 100),
        "a silent client was closed before its handshake timeout: {first:?}"
    );
    assert_eq!(
        tls::get(service.addr, &client, "/").await.map(|g| g.status),
        Ok(200)
    );
}

/// `RISEFRONT_TLS_HANDSHAKE_TIMEOUT` beats the value set in code, as `Builder`'s variables do:
/// the example sets 60 s, the variable 500 ms, and a silent client is closed in about 500 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tls_handshake_variable_beats_the_code() {
    let ca = Ca::new();
    let dir = TempDir::new();
    let (cert, key) = tls::service_env(&dir.0, &ca.server_cert(1));
    let client = ca.client(&[b"http/1.1"]);
    let env = [
        ("HELLO_TLS_HANDSHAKE_TIMEOUT_MS", "60000"),
        ("RISEFRONT_TLS_HANDSHAKE_TIMEOUT", "500ms"),
    ];
    let service = tls::start(&cert, &key, &env, &client).await;
    let opened = Instant::now();
    let mut silent = tokio::net::TcpStream::connect(service.addr)
        .await
        .expect("connect");
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(20), silent.read(&mut byte)).await;
    let closed = opened.elapsed();
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the silent client was not closed within 20 s: {read:?}"
    );
    assert!(
        closed >= Duration::from_millis(400) && closed < Duration::from_secs(20),
        "closed after {closed:?}"
    );
    let log = service.log();
    assert!(!log.contains("is not a risefront setting"), "{log}");
}

/// The drain rules over TLS and HTTP/2, two streams on one connection: at the takeover the
/// stream that ends within the drain timeout completes on generation 1, the one that outlives
/// it is cut at the deadline, and GracefulServer's summary counts one connection forced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_deadline_cuts_what_outlives_it_over_tls_http2() {
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let ca = Ca::new();
    let dir = TempDir::new();
    let (cert, key) = tls::service_env(&dir.0, &ca.server_cert(1));
    let http2 = ca.client(&[b"h2"]);
    // Probation off: the deadline runs from the takeover.
    let env = [
        ("RISEFRONT_DRAIN_TIMEOUT", "1s"),
        ("RISEFRONT_PROBATION", "0"),
    ];
    let service = tls::start(&cert, &key, &env, &http2).await;
    let g1 = tls::wait_generation(&service, &http2, 1).await;
    let stream = tls::connect(service.addr, &http2).await.expect("connect");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(connection);
    let send = |path: &'static str| {
        let mut sender = sender.clone();
        tokio::spawn(async move {
            let request = hyper::Request::get(format!("https://{}{path}", tls::HOST))
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .map_err(|e| e.to_string())?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| e.to_string())?;
            common::read_response(response).await
        })
    };
    let short = send("/slow?ms=400");
    let long = send("/slow?ms=8000");
    service.wait_log("slow request: answering in 400 ms").await;
    service.wait_log("slow request: answering in 8000 ms").await;

    let output = service.upgrade_command().await;
    assert!(output.status.success(), "{output:?}");
    let (status, body) = short
        .await
        .expect("task")
        .expect("the short stream completes");
    assert_eq!((status, parse_hello(&body)), (200, Some(g1)));
    assert!(
        long.await.expect("task").is_err(),
        "the long stream is cut at the deadline"
    );
    common::wait_gone(g1.pid).await;
    service.wait_log("forced=1").await;
}

/// New certificate files plus an upgrade: new connections get the new certificate, a request
/// in flight on a connection opened before finishes on the old one; files that cannot be
/// loaded make the upgrade fail and the current generation keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_by_upgrade() {
    let ca = Ca::new();
    let dir = TempDir::new();
    let (a, b) = (ca.server_cert(0xA), ca.server_cert(0xB));
    let (cert, key) = tls::service_env(&dir.0, &a);
    let http1 = ca.client(&[b"http/1.1"]);
    let http2 = ca.client(&[b"h2"]);
    let mut service = tls::start(&cert, &key, &[], &http1).await;

    // A connection on certificate A with a slow request in flight across the upgrade.
    let old = tls::connect(service.addr, &http1).await.expect("connect");
    assert_eq!(
        tls::peer_cert(&old).as_ref(),
        Some(&a.der),
        "certificate A first"
    );
    let slow = tokio::spawn(tls::get_on(old, "/slow?ms=4000"));
    service.wait_log("slow request").await;

    b.write(&cert, &key);
    tls::upgrade(&mut service, &http1, Way::StartAgain, 2).await;
    for client in [&http1, &http2] {
        let got = tls::get(service.addr, client, "/")
            .await
            .expect("GET after rotation");
        assert_eq!(
            got.cert.as_ref(),
            Some(&b.der),
            "new connections get certificate B"
        );
        let hello = parse_hello(&got.body).expect("hello");
        assert_eq!(hello.generation, 2);
    }
    eprintln!("rotation: new connections (HTTP/1.1 and h2) see certificate B from generation 2");

    let got = slow
        .await
        .expect("slow task")
        .expect("the request in flight finished");
    assert_eq!(got.status, 200);
    assert_eq!(got.cert.as_ref(), Some(&a.der));
    let hello = parse_hello(&got.body).expect("hello");
    assert_eq!(hello.generation, 1, "answered by the old generation");
    eprintln!("rotation: the request in flight on certificate A finished on generation 1");

    // Broken files: the new generation exits before it is ready; generation 2 keeps serving B.
    std::fs::write(&cert, "not a certificate").expect("write");
    let output = service.upgrade_command().await;
    assert!(
        !output.status.success(),
        "upgrade with a broken certificate: {output:?}"
    );
    let got = tls::get(service.addr, &http1, "/").await.expect("GET");
    assert_eq!(got.cert.as_ref(), Some(&b.der));
    assert_eq!(parse_hello(&got.body).map(|h| h.generation), Some(2));
    let log = service.log();
    assert!(log.contains("cert.pem"), "the error names the file:\n{log}");
}

/// `K` clients, each connecting, (handshaking,) `GET /` and closing in a loop, `COUNT`
/// requests in all; requests per second.
async fn rate(
    service: &Service,
    client: Option<&std::sync::Arc<tokio_rustls::rustls::ClientConfig>>,
    k: usize,
) -> f64 {
    const COUNT: usize = 400;
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..k {
        let next = std::sync::Arc::clone(&next);
        let client = client.cloned();
        let addr = service.addr;
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < COUNT {
                let status = match &client {
                    Some(client) => tls::get(addr, client, "/").await.map(|g| g.status),
                    None => common::get(addr, "/").await.map(|(status, _)| status),
                };
                assert_eq!(status, Ok(200));
            }
        }));
    }
    for task in tasks {
        task.await.expect("client");
    }
    COUNT as f64 / started.elapsed().as_secs_f64()
}

/// Not a timed assertion: prints how many connect + handshake + GET + close per second the
/// TLS example sustains against `hello` over plain TCP, alone and with 16 concurrent
/// clients; TLS scaling with concurrency like plain TCP shows handshakes are not serialised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshake_rate_against_plain_tcp() {
    let ca = Ca::new();
    let dir = TempDir::new();
    let (cert, key) = tls::service_env(&dir.0, &ca.server_cert(1));
    let client = ca.client(&[b"http/1.1"]);
    let secure = tls::start(&cert, &key, &[], &client).await;
    let plain = Service::start().await;
    for k in [1, 16] {
        let plain_rate = rate(&plain, None, k).await;
        let tls_rate = rate(&secure, Some(&client), k).await;
        eprintln!(
            "handshake rate, {k} concurrent clients: TLS {tls_rate:.0}/s, plain TCP {plain_rate:.0}/s, ratio {:.2}",
            tls_rate / plain_rate
        );
    }
}

/// A clear error, naming the file, when a certificate file is missing.
#[test]
fn a_missing_certificate_file_is_a_clear_error() {
    let mut command = std::process::Command::new(tls::tls_example());
    command
        .args([
            "127.0.0.1:0",
            "--cert",
            "/nonexistent/cert.pem",
            "--key",
            "/nonexistent/key.pem",
        ])
        .env("RISEFRONT", "off");
    let output = common::run_bounded(command, PATIENCE);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{output:?}");
    assert!(stderr.contains("/nonexistent/cert.pem"), "{stderr}");
}

/// A TLS connection cannot move to another process. Idle at a takeover, it is not closed under
/// its client, who may be sending on it right then: its next request, even long after the
/// takeover, is answered by the old generation, with `Connection: close`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tls_connection_is_closed_only_after_its_next_request() {
    let ca = Ca::new();
    let dir = TempDir::new();
    let (cert, key) = tls::service_env(&dir.0, &ca.server_cert(1));
    let client = ca.client(&[b"http/1.1"]);
    let mut service = tls::start(&cert, &key, &[], &client).await;
    let stream = tls::connect(service.addr, &client)
        .await
        .expect("TLS connect");
    let mut conn = common::raw::RawConn::new(stream);
    let first = conn.get("/").await.expect("answered");
    assert_eq!(
        common::parse_hello(&first.body).map(|h| h.generation),
        Some(1)
    );
    tls::upgrade(&mut service, &client, Way::Command, 2).await;
    // Well past the idle grace that used to close it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = conn
        .get("/")
        .await
        .expect("answered, not closed under the client");
    assert_eq!(
        common::parse_hello(&second.body).map(|h| h.generation),
        Some(1)
    );
    assert!(second.closes(), "{second:?}");
}
