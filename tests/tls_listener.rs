//! `risefront::tls` in one process (standalone, no front): `accept` returns before any
//! handshake, a silent client's first read fails with the handshake timeout, a failed
//! handshake names the client, ALPN and SNI are exposed, and `server_config_from_pem`'s errors
//! name the file. One test, because `bind` sets up process-wide state.

mod common;

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use common::TempDir;
use common::tls::{Ca, HOST};
use risefront::tls::{TlsListener, server_config_from_pem};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

const TIMEOUT: Duration = Duration::from_millis(300);

#[tokio::test]
async fn tls_listener_in_one_process() {
    let ca = Ca::new();
    let dir = TempDir::new();
    let (cert, key) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
    ca.server_cert(1).write(&cert, &key);

    let error = server_config_from_pem(&cert, &key).expect_err("no crypto provider yet");
    assert!(error.to_string().contains("crypto provider"), "{error}");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let error = server_config_from_pem(dir.0.join("missing.pem"), &key).expect_err("missing");
    assert!(error.to_string().contains("missing.pem"), "{error}");
    let other = ca.server_cert(2);
    std::fs::write(dir.0.join("other-key.pem"), &other.key_pem).expect("write");
    let error = server_config_from_pem(&cert, dir.0.join("other-key.pem")).expect_err("mismatch");
    assert!(error.to_string().contains("other-key.pem"), "{error}");

    let config = server_config_from_pem(&cert, &key).expect("config");
    assert_eq!(
        config.alpn_protocols,
        [b"h2".to_vec(), b"http/1.1".to_vec()]
    );
    let listener = risefront::Builder::new()
        .standalone()
        .bind(["127.0.0.1:0"])
        .await
        .expect("bind");
    let addr = listener.local_addrs()[0].tcp().expect("a TCP address");
    let mut listener = TlsListener::new(listener, config).tls_handshake_timeout(TIMEOUT);

    // A client that sends nothing is accepted at once; its first read times out.
    let _silent = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut connection, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
        .await
        .expect("accept returns without a handshake")
        .expect("a connection");
    let started = Instant::now();
    let error = connection
        .read(&mut [0u8; 1])
        .await
        .expect_err("the handshake times out");
    assert_eq!(error.kind(), ErrorKind::TimedOut, "{error}");
    assert!(
        error.to_string().contains("timed out after 300 ms"),
        "{error}"
    );
    assert!(started.elapsed() >= TIMEOUT - Duration::from_millis(50));

    // A client that trusts another CA: the handshake fails, and the error says with whom.
    let stranger = Ca::new().client(&[b"http/1.1"]);
    let client = tokio::spawn(async move { common::tls::connect(addr, &stranger).await });
    let (mut connection, peer) = listener.accept().await.expect("a connection");
    let error = connection
        .read(&mut [0u8; 1])
        .await
        .expect_err("the handshake fails");
    assert!(
        error
            .to_string()
            .contains(&format!("TLS handshake with {peer} failed")),
        "{error}"
    );
    assert!(client.await.expect("client").is_err());

    // A good client: ALPN h2 and SNI once the handshake is done, then data both ways.
    let trusted = ca.client(&[b"h2", b"http/1.1"]);
    let client = tokio::spawn(async move {
        let mut stream = common::tls::connect(addr, &trusted).await?;
        stream.write_all(b"ping").await.map_err(|e| e.to_string())?;
        let mut answer = [0u8; 4];
        stream
            .read_exact(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(answer)
    });
    let (mut connection, _) = listener.accept().await.expect("a connection");
    assert!(connection.alpn_protocol().is_none(), "no handshake yet");
    let mut ping = [0u8; 4];
    connection.read_exact(&mut ping).await.expect("read");
    assert_eq!(&ping, b"ping");
    assert_eq!(connection.alpn_protocol(), Some(b"h2".as_slice()));
    assert_eq!(connection.server_name(), Some(HOST));
    connection.write_all(b"pong").await.expect("write");
    connection.flush().await.expect("flush");
    assert_eq!(client.await.expect("client"), Ok(*b"pong"));
    connection.shutdown().await.expect("close_notify and close");
}
