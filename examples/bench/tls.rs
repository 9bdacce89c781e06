//! `bench tls`: TLS handshakes per second against plain TCP connections, in one run.
//!
//! ```text
//! cargo run --release --features tls --example bench -- tls [--clients 16] [--requests 4000]
//! ```
//!
//! Two servers of this binary, the same risefront hello app, one plain (`serve-risefront`) and
//! one behind `risefront::tls::TlsListener` (`serve-tls`, certificate made at start with
//! rcgen). Each of `--clients` clients connects, handshakes (TLS only), sends `GET /` and closes,
//! until `--requests` are done; once with one client, once with all. The TLS rate growing with
//! the clients as the plain rate does shows the handshakes run in parallel, not in `accept`.
//! The clients' own handshakes run on the same machine, so the ratio is a lower bound.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

use crate::bench::{Server, wait_answering};

/// Where `serve-tls` finds its PEM files: beside the runtime directory the bench made.
fn pem_files() -> std::io::Result<(PathBuf, PathBuf)> {
    let run = std::env::var_os("XDG_RUNTIME_DIR").ok_or_else(|| {
        std::io::Error::other("serve-tls runs under `bench tls`, which sets XDG_RUNTIME_DIR")
    })?;
    let scratch = Path::new(&run)
        .parent()
        .ok_or_else(|| std::io::Error::other("XDG_RUNTIME_DIR has no parent"))?;
    Ok((scratch.join("cert.pem"), scratch.join("key.pem")))
}

/// `bench serve-tls ADDR`: the hello app over TLS, as `examples/tls.rs` serves it.
pub async fn serve(addr: &str) -> std::io::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (cert, key) = pem_files()?;
    let config = risefront::tls::server_config_from_pem(cert, key)?;
    let listener = risefront::bind([addr]).await?;
    let body = format!(
        "hello from generation {} pid {}\n",
        listener.generation(),
        std::process::id()
    );
    let listener = risefront::tls::TlsListener::new(listener, config);
    let app = axum::Router::new().route("/", axum::routing::get(move || async move { body }));
    risefront::GracefulServer::new().serve(listener, app).await;
    Ok(())
}

pub async fn main(args: &[String], scratch: &Path) -> std::io::Result<()> {
    let mut clients = 16usize;
    let mut requests = 4000usize;
    let mut rest = args;
    while let Some((flag, tail)) = rest.split_first() {
        let value = tail.first().and_then(|v| v.parse().ok());
        rest = tail.get(1..).unwrap_or_default();
        match (flag.as_str(), value) {
            ("--clients", Some(v)) => clients = v,
            ("--requests", Some(v)) => requests = v,
            _ => {
                eprintln!("usage: bench tls [--clients N] [--requests N]");
                std::process::exit(2);
            }
        }
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = certificates(scratch)?;
    let mut roots = RootCertStore::empty();
    roots.add(ca).map_err(std::io::Error::other)?;
    let mut config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let config = Arc::new(config);

    let plain = Server::start("serve-risefront", &scratch.join("plain.log"))?;
    let secure = Server::start("serve-tls", &scratch.join("tls.log"))?;
    wait_answering(plain.addr).await?;
    // The TLS server answers plain HTTP with a failed handshake; wait for its TLS answer.
    let deadline = Instant::now() + std::time::Duration::from_secs(20);
    while !get(secure.addr, Some(&config)).await {
        if Instant::now() > deadline {
            return Err(std::io::Error::other("the TLS server never answered"));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    println!(
        "risefront bench tls: connect + (TLS handshake +) GET / + close, {requests} requests, {} cores\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("| clients | plain TCP req/s | TLS req/s | TLS / plain |");
    println!("|---:|---:|---:|---:|");
    for k in [1, clients] {
        let plain_rate = rate(plain.addr, None, k, requests).await?;
        let tls_rate = rate(secure.addr, Some(&config), k, requests).await?;
        println!(
            "| {k} | {plain_rate:.0} | {tls_rate:.0} | {:.2} |",
            tls_rate / plain_rate
        );
    }
    Ok(())
}

/// A CA and a `localhost` certificate signed by it, written where `serve-tls` looks; returns
/// the CA certificate for the clients to trust.
fn certificates(scratch: &Path) -> std::io::Result<CertificateDer<'static>> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let invalid = std::io::Error::other;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(invalid)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().map_err(invalid)?;
    let ca = params.self_signed(&ca_key).map_err(invalid)?;
    let issuer = Issuer::new(params, ca_key);
    let params = CertificateParams::new(vec!["localhost".to_owned()]).map_err(invalid)?;
    let key = KeyPair::generate().map_err(invalid)?;
    let cert = params.signed_by(&key, &issuer).map_err(invalid)?;
    std::fs::write(scratch.join("cert.pem"), cert.pem())?;
    std::fs::write(scratch.join("key.pem"), key.serialize_pem())?;
    Ok(ca.der().clone())
}

/// Requests per second with `k` clients, `total` requests in all.
async fn rate(
    addr: SocketAddr,
    config: Option<&Arc<ClientConfig>>,
    k: usize,
    total: usize,
) -> std::io::Result<f64> {
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..k {
        let (next, failed) = (Arc::clone(&next), Arc::clone(&failed));
        let config = config.cloned();
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < total {
                if !get(addr, config.as_ref()).await {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        task.await.map_err(std::io::Error::other)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let failed = failed.load(Ordering::Relaxed);
    if failed > 0 {
        return Err(std::io::Error::other(format!(
            "{failed} of {total} requests failed"
        )));
    }
    Ok(total as f64 / elapsed)
}

/// One connection, one `GET /`, closed; TLS when `config` is given. A request that takes
/// longer than 10 s counts as failed, so a stuck server fails the bench instead of hanging it.
async fn get(addr: SocketAddr, config: Option<&Arc<ClientConfig>>) -> bool {
    tokio::time::timeout(std::time::Duration::from_secs(10), get_once(addr, config))
        .await
        .unwrap_or(false)
}

async fn get_once(addr: SocketAddr, config: Option<&Arc<ClientConfig>>) -> bool {
    let Ok(tcp) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let _ = tcp.set_nodelay(true);
    match config {
        None => request(tcp).await,
        Some(config) => {
            let Ok(name) = ServerName::try_from("localhost") else {
                return false;
            };
            match tokio_rustls::TlsConnector::from(Arc::clone(config))
                .connect(name, tcp)
                .await
            {
                Ok(stream) => request(stream).await,
                Err(_) => false,
            }
        }
    }
}

async fn request<S>(stream: S) -> bool
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Ok((mut sender, connection)) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    else {
        return false;
    };
    tokio::spawn(connection);
    let Ok(request) = hyper::Request::get("/")
        .header(hyper::header::HOST, "localhost")
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
    else {
        return false;
    };
    match sender.send_request(request).await {
        Ok(response) if response.status() == 200 => response.into_body().collect().await.is_ok(),
        _ => false,
    }
}
