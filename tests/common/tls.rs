//! TLS for the end-to-end tests: a test CA and server certificates made at test time (rcgen),
//! the `tls` example built with its feature, a client that trusts the CA, and a connector
//! that lets `load.rs` run its no-retry load over TLS.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SerialNumber,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

use super::{Hello, PATIENCE, Service, Target, Way, read_response};

/// The name the test certificates are for (and 127.0.0.1).
pub const HOST: &str = "localhost";

/// Path of the `tls` example (`example` builds it with the tests' features, `tls` included).
pub fn tls_example() -> PathBuf {
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
    let tcp = async {
        let tcp = TcpStream::connect(addr).await?;
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    };
    handshake(tcp, config).await
}

/// TLS to the Unix socket at `path` as `localhost`, bounded in time.
#[cfg(unix)]
pub async fn connect_unix(
    path: &Path,
    config: &Arc<ClientConfig>,
) -> Result<TlsStream<tokio::net::UnixStream>, String> {
    handshake(tokio::net::UnixStream::connect(path), config).await
}

/// Connects with `connect`, then the TLS handshake as `localhost`, all bounded in time.
async fn handshake<S>(
    connect: impl Future<Output = io::Result<S>>,
    config: &Arc<ClientConfig>,
) -> Result<TlsStream<S>, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let attempt = async {
        let stream = connect.await.map_err(|e| format!("connect: {e}"))?;
        let name = ServerName::try_from(HOST).map_err(|e| e.to_string())?;
        TlsConnector::from(Arc::clone(config))
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))
    };
    tokio::time::timeout(PATIENCE, attempt)
        .await
        .unwrap_or_else(|_| Err("TLS connect timed out".to_owned()))
}

/// The certificate the server showed on `stream`.
pub fn peer_cert<S>(stream: &TlsStream<S>) -> Option<CertificateDer<'static>> {
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
pub async fn get_on<S>(stream: TlsStream<S>, path: &str) -> Result<Got, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
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
        let (status, body) = read_response(response).await?;
        Ok(Got {
            status,
            body,
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
    let get = || async {
        let got = get(service.addr, config, "/").await?;
        Ok((got.status, got.body))
    };
    service.poll_generation_with(n, n == 1, get).await
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
    service.request_upgrade(way).await;
    wait_generation(service, config, n).await
}

/// A TLS stream as hyper-util's pooled client wants it: it says whether ALPN chose `h2`.
pub struct Io(TlsStream<TcpStream>);

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
pub struct Connector {
    pub addr: SocketAddr,
    pub config: Arc<ClientConfig>,
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

/// A load target over TLS to `addr`: new-connection and keep-alive workers offer `http/1.1`
/// only, HTTP/2 workers `h2` only (see `load::start`).
pub fn load_target(addr: SocketAddr, ca: &Ca) -> Target {
    Target::Tls {
        addr,
        http1: ca.client(&[b"http/1.1"]),
        http2: ca.client(&[b"h2"]),
    }
}
