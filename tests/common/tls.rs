//! TLS for the end-to-end tests: a test CA and server certificates made at test time (rcgen),
//! the `tls` example built with its feature, a client that trusts the CA, and the same
//! no-retry load as `load.rs` over TLS.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SerialNumber,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

use super::load::{Kind, Report};
use super::{Hello, PATIENCE, Service, Way, parse_hello};

/// The name the test certificates are for (and 127.0.0.1).
pub const HOST: &str = "localhost";

/// Path of the `tls` example, built with the `tls` feature (as `example` builds the others).
pub fn tls_example() -> PathBuf {
    #[cfg(unix)]
    {
        static BUILT: std::sync::Once = std::sync::Once::new();
        BUILT.call_once(|| {
            let Some(cargo) = std::env::var_os("CARGO") else {
                return;
            };
            let mut command = std::process::Command::new(cargo);
            command
                .args([
                    "build",
                    "--example",
                    "tls",
                    "--features",
                    "tls",
                    "--quiet",
                    "--manifest-path",
                ])
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"));
            let profile = std::env::current_exe().expect("test binary path");
            if profile.components().any(|c| c.as_os_str() == "release") {
                command.arg("--release");
            }
            let status = command.status().expect("run cargo build --example tls");
            assert!(status.success(), "cargo build --example tls failed");
        });
    }
    super::example("tls")
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A test certificate authority.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
}

/// A server certificate's files and DER, to compare with what a client was shown.
pub struct ServerCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl Ca {
    pub fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(DnType::CommonName, "risefront test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        Ca {
            issuer: Issuer::new(params, key),
            der: cert.der().clone(),
        }
    }

    /// A certificate for `localhost` and 127.0.0.1 with the given serial number.
    pub fn server_cert(&self, serial: u64) -> ServerCert {
        let mut params = CertificateParams::new(vec![HOST.to_owned(), "127.0.0.1".to_owned()])
            .expect("server params");
        params.distinguished_name.push(DnType::CommonName, HOST);
        params.serial_number = Some(SerialNumber::from(serial));
        let key = KeyPair::generate().expect("server key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        ServerCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A client that trusts this CA only and offers `alpn` (`h2`, `http/1.1`).
    pub fn client(&self, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).expect("trust the test CA");
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

impl ServerCert {
    /// Writes the PEM files, replacing what is there by renaming (as a deploy would), so that
    /// a process starting meanwhile never reads half a file.
    pub fn write(&self, cert: &Path, key: &Path) {
        for (path, pem) in [(cert, &self.cert_pem), (key, &self.key_pem)] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, pem).expect("write PEM");
            std::fs::rename(&tmp, path).expect("rename PEM");
        }
    }
}

/// The `tls` example's environment for certificate files in `dir`, written from `cert`.
pub fn service_env(dir: &Path, cert: &ServerCert) -> (PathBuf, PathBuf) {
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    cert.write(&cert_file, &key_file);
    (cert_file, key_file)
}

/// TCP connect and TLS handshake to `addr` as `localhost`, bounded in time.
pub async fn connect(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
) -> Result<TlsStream<TcpStream>, String> {
    let attempt = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(HOST).map_err(|e| e.to_string())?;
        TlsConnector::from(Arc::clone(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))
    };
    tokio::time::timeout(PATIENCE, attempt)
        .await
        .unwrap_or_else(|_| Err("TLS connect timed out".to_owned()))
}

/// The certificate the server showed on `stream`.
pub fn peer_cert(stream: &TlsStream<TcpStream>) -> Option<CertificateDer<'static>> {
    stream
        .get_ref()
        .1
        .peer_certificates()?
        .first()
        .map(|c| c.clone().into_owned())
}

/// What one HTTPS `GET` saw.
#[derive(Debug)]
pub struct Got {
    pub status: u16,
    pub body: String,
    pub alpn: Option<Vec<u8>>,
    pub cert: Option<CertificateDer<'static>>,
}

/// Sends `GET path` on an established TLS stream, as HTTP/2 if ALPN chose it, and closes.
pub async fn get_on(stream: TlsStream<TcpStream>, path: &str) -> Result<Got, String> {
    let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let cert = peer_cert(&stream);
    let attempt = async {
        let response = if alpn.as_deref() == Some(b"h2") {
            // HTTP/2 carries the scheme and authority in the request itself.
            let request = hyper::Request::get(format!("https://{HOST}{path}"))
                .body(Empty::<Bytes>::new())
                .map_err(|e| e.to_string())?;
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await
                    .map_err(|e| format!("h2 handshake: {e}"))?;
            tokio::spawn(connection);
            sender.send_request(request).await
        } else {
            let request = hyper::Request::get(path)
                .header(hyper::header::HOST, HOST)
                .body(Empty::<Bytes>::new())
                .map_err(|e| e.to_string())?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(connection);
            sender.send_request(request).await
        }
        .map_err(|e| format!("request: {e}"))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok(Got {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
            alpn,
            cert,
        })
    };
    tokio::time::timeout(PATIENCE, attempt)
        .await
        .unwrap_or_else(|_| Err("timed out".to_owned()))
}

/// One HTTPS `GET` on a fresh connection, no retries.
pub async fn get(addr: SocketAddr, config: &Arc<ClientConfig>, path: &str) -> Result<Got, String> {
    get_on(connect(addr, config).await?, path).await
}

/// Polls `GET /` over TLS until generation `n` answers; after generation 1 is up, every
/// request must succeed.
pub async fn wait_generation(service: &Service, config: &Arc<ClientConfig>, n: u64) -> Hello {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let last = get(service.addr, config, "/").await;
        match &last {
            Ok(got) if got.status == 200 => {
                let hello = parse_hello(&got.body)
                    .unwrap_or_else(|| panic!("unexpected body {:?}", got.body));
                if hello.generation == n {
                    return hello;
                }
                assert!(
                    hello.generation < n,
                    "expected generation {n}, got {hello:?}"
                );
            }
            Ok(got) => panic!("GET / answered {}: {}", got.status, got.body),
            Err(e) => assert!(
                n == 1,
                "request failed while waiting for generation {n}: {e}\n{}",
                service.log()
            ),
        }
        assert!(
            Instant::now() < deadline,
            "generation {n} never answered over TLS (last: {last:?})\n{}",
            service.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts `tls ADDR --cert FILE --key FILE` on a free port with extra environment, and waits
/// until it answers over TLS.
pub async fn start(
    cert: &Path,
    key: &Path,
    env: &[(&str, &str)],
    config: &Arc<ClientConfig>,
) -> Service {
    let args = [
        "--cert".to_owned(),
        cert.to_string_lossy().into_owned(),
        "--key".to_owned(),
        key.to_string_lossy().into_owned(),
    ];
    let service = Service::spawn_with_args(&tls_example(), env, &args);
    wait_generation(&service, config, 1).await;
    service
}

/// Asks for generation `n` in the given way and waits until it answers over TLS.
pub async fn upgrade(service: &mut Service, config: &Arc<ClientConfig>, way: Way, n: u64) -> Hello {
    match way {
        Way::StartAgain => {
            service.start_again(&[]);
        }
        #[cfg(unix)]
        Way::Hangup => service.signal_front(rustix::process::Signal::HUP),
        Way::Command => {
            let output = service.upgrade_command().await;
            assert!(output.status.success(), "--upgrade failed: {output:?}");
        }
    }
    wait_generation(service, config, n).await
}

/// A TLS stream as hyper-util's pooled client wants it: it says whether ALPN chose `h2`.
struct Io(TlsStream<TcpStream>);

impl Connection for Io {
    fn connected(&self) -> Connected {
        if self.0.get_ref().1.alpn_protocol() == Some(b"h2") {
            Connected::new().negotiated_h2()
        } else {
            Connected::new()
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// hyper-util's connector interface: TCP to the service's address, then TLS as `localhost`.
#[derive(Clone)]
struct Connector {
    addr: SocketAddr,
    config: Arc<ClientConfig>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower::Service<hyper::Uri> for Connector {
    type Response = TokioIo<Io>;
    type Error = io::Error;
    type Future = BoxFuture<io::Result<TokioIo<Io>>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: hyper::Uri) -> Self::Future {
        let (addr, config) = (self.addr, Arc::clone(&self.config));
        Box::pin(async move {
            connect(addr, &config)
                .await
                .map(|stream| TokioIo::new(Io(stream)))
                .map_err(io::Error::other)
        })
    }
}

type Progress = Arc<Mutex<BTreeMap<u64, u64>>>;

/// `load::Load` over TLS: the same kinds of workers, never retrying (HTTP/2 requests the
/// server provably never processed are resent and counted, as in `load.rs`).
pub struct Load {
    stop: watch::Sender<bool>,
    workers: Vec<tokio::task::JoinHandle<Report>>,
    progress: Progress,
}

/// Starts, for each `(kind, count, path)`, `count` workers of that kind requesting `path`.
/// New-connection and keep-alive workers offer `http/1.1` only, HTTP/2 workers `h2` only.
pub fn start_load(addr: SocketAddr, ca: &Ca, mix: &[(Kind, usize, &str)]) -> Load {
    let (stop, stopped) = watch::channel(false);
    let progress = Progress::default();
    let http1 = ca.client(&[b"http/1.1"]);
    let http2 = ca.client(&[b"h2"]);
    let mut workers = Vec::new();
    for &(kind, count, path) in mix {
        for _ in 0..count {
            let stopped = stopped.clone();
            let path = path.to_owned();
            let progress = Arc::clone(&progress);
            let (http1, http2) = (Arc::clone(&http1), Arc::clone(&http2));
            workers.push(tokio::spawn(async move {
                match kind {
                    Kind::NewConnection => {
                        let mut report = Report::default();
                        while !*stopped.borrow() {
                            let started = Instant::now();
                            let result = get(addr, &http1, &path)
                                .await
                                .map(|got| (got.status, false, got.body));
                            record(&mut report, &progress, started, result);
                        }
                        report
                    }
                    Kind::KeepAlive => {
                        client_worker(addr, http1, &path, stopped, false, 1, progress).await
                    }
                    Kind::Http2 { streams } => {
                        client_worker(addr, http2, &path, stopped, true, streams, progress).await
                    }
                }
            }));
        }
    }
    Load {
        stop,
        workers,
        progress,
    }
}

impl Load {
    /// Waits (bounded) until the load has had `count` successful responses from `generation`.
    pub async fn served_by(&self, generation: u64, count: u64) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let seen = self
                .progress
                .lock()
                .unwrap()
                .get(&generation)
                .copied()
                .unwrap_or(0);
            if seen >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the load got {seen} responses from generation {generation}, not {count}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops every worker after its current request and adds up what they saw.
    pub async fn stop(self) -> Report {
        let _ = self.stop.send(true);
        let mut report = Report::default();
        for worker in self.workers {
            merge(&mut report, worker.await.expect("load worker panicked"));
        }
        report
    }
}

fn merge(report: &mut Report, other: Report) {
    report.ok += other.ok;
    report.failed += other.failed;
    report.refused += other.refused;
    report.generations.extend(other.generations);
    report.closes += other.closes;
    report.resent += other.resent;
    for e in other.errors {
        if report.errors.len() < 10 {
            report.errors.push(e);
        }
    }
    report.latencies.extend(other.latencies);
}

fn record(
    report: &mut Report,
    progress: &Progress,
    started: Instant,
    result: Result<(u16, bool, String), String>,
) {
    let error = match result {
        Ok((200, close, body)) => match parse_hello(&body) {
            Some(hello) => {
                *progress
                    .lock()
                    .unwrap()
                    .entry(hello.generation)
                    .or_default() += 1;
                report.ok += 1;
                report.generations.insert(hello.generation);
                report.closes += u64::from(close);
                report.latencies.push(started.elapsed());
                return;
            }
            None => format!("unexpected body {body:?}"),
        },
        Ok((status, _, body)) => format!("status {status}: {body}"),
        Err(e) => e,
    };
    report.failed += 1;
    if error.contains("refused") {
        report.refused += 1;
    }
    if report.errors.len() < 10 {
        report.errors.push(error);
    }
}

async fn client_worker(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    path: &str,
    stopped: watch::Receiver<bool>,
    http2: bool,
    streams: usize,
    progress: Progress,
) -> Report {
    let client: Client<Connector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .retry_canceled_requests(false)
        .pool_max_idle_per_host(streams.max(1))
        .http2_only(http2)
        .build(Connector { addr, config });
    let report = Arc::new(Mutex::new(Report::default()));
    let mut tasks = Vec::new();
    for _ in 0..streams {
        let client = client.clone();
        let stopped = stopped.clone();
        let report = Arc::clone(&report);
        let progress = Arc::clone(&progress);
        let uri = format!("https://{HOST}:{}{path}", addr.port());
        tasks.push(tokio::spawn(async move {
            while !*stopped.borrow() {
                let started = Instant::now();
                let mut result = send(&client, &uri).await;
                // As in load.rs: only HTTP/2 requests the server provably never processed.
                let mut attempts = 1;
                while http2 && attempts < 5 && matches!(&result, Err((true, _))) {
                    report.lock().unwrap().resent += 1;
                    attempts += 1;
                    result = send(&client, &uri).await;
                }
                let result = result.map_err(|(_, e)| e);
                record(&mut report.lock().unwrap(), &progress, started, result);
            }
        }));
    }
    for task in tasks {
        task.await.expect("load stream panicked");
    }
    Arc::try_unwrap(report)
        .map(|m| m.into_inner().unwrap())
        .unwrap_or_default()
}

/// Whether the server provably did not process the request (see `load.rs`).
fn unprocessed(e: &hyper::Error) -> bool {
    if e.is_canceled() {
        return true;
    }
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<h2::Error>())
        .is_some_and(|h2| {
            h2.is_go_away() && h2.is_remote() && h2.reason() == Some(h2::Reason::NO_ERROR)
        })
}

/// One request; on failure, whether it was provably unprocessed, and the error.
async fn send(
    client: &Client<Connector, Empty<Bytes>>,
    uri: &str,
) -> Result<(u16, bool, String), (bool, String)> {
    let attempt = async {
        let uri: hyper::Uri = uri.parse().map_err(|e| (false, format!("{e}")))?;
        let response = client.get(uri).await.map_err(|e| {
            let unsent = std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<hyper::Error>())
                .is_some_and(unprocessed);
            (unsent, format!("request: {e:?}"))
        })?;
        let status = response.status().as_u16();
        let close = response
            .headers()
            .get(hyper::header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| (false, format!("body: {e}")))?
            .to_bytes();
        Ok((status, close, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(PATIENCE, attempt)
        .await
        .unwrap_or_else(|_| Err((false, "timed out".to_owned())))
}
