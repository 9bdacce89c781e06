//! A load client that never retries, so no failure can hide: per-request new connections,
//! HTTP/1 keep-alive (hyper-util's pooled client with retries of canceled requests off), and
//! HTTP/2 streams multiplexed on one connection per worker (hyper's own connection API).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;

use super::{Target, parse_hello};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A new TCP connection for every request.
    NewConnection,
    /// HTTP/1.1 keep-alive: one pooled connection reused until the server closes it.
    KeepAlive,
    /// HTTP/2 with prior knowledge: `streams` concurrent requests on one connection.
    Http2 { streams: usize },
}

/// What the load saw. `failed` counts every request that got no 200 with a valid body.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub ok: u64,
    pub failed: u64,
    /// Connections refused outright (a subset of `failed`).
    pub refused: u64,
    pub generations: BTreeSet<u64>,
    /// Responses carrying `Connection: close`.
    pub closes: u64,
    /// HTTP/2 requests the server provably never processed because it had sent GOAWAY, resent
    /// on a new connection as RFC 9113 sections 6.8 and 8.7 allow. Counted, not hidden.
    pub resent: u64,
    /// TCP (or Unix, or TLS) connections the keep-alive and HTTP/2 clients opened: one per
    /// worker at the start, one more each time the server closed theirs.
    pub connects: u64,
    /// The first few failures, for the assertion message.
    pub errors: Vec<String>,
    pub latencies: Vec<Duration>,
}

impl Report {
    fn merge(&mut self, other: Report) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.refused += other.refused;
        self.generations.extend(other.generations);
        self.closes += other.closes;
        self.resent += other.resent;
        self.connects += other.connects;
        for e in other.errors {
            if self.errors.len() < 10 {
                self.errors.push(e);
            }
        }
        self.latencies.extend(other.latencies);
    }

    fn fail(&mut self, error: String) {
        self.failed += 1;
        if error.contains("refused") {
            self.refused += 1;
        }
        if self.errors.len() < 10 {
            self.errors.push(error);
        }
    }

    pub fn total(&self) -> u64 {
        self.ok + self.failed
    }

    pub fn summary(&self, upgrades: usize) -> String {
        format!(
            "failed {} of {} requests over {} upgrades ({} refused, generations seen {:?}, {} Connection: close, {} connects, {} unsent HTTP/2 requests resent){}",
            self.failed,
            self.total(),
            upgrades,
            self.refused,
            self.generations,
            self.closes,
            self.connects,
            self.resent,
            if self.errors.is_empty() {
                String::new()
            } else {
                format!("; first errors: {:?}", self.errors)
            }
        )
    }

    /// The `q`-quantile latency (0.5 = median).
    pub fn quantile(&mut self, q: f64) -> Duration {
        self.latencies.sort();
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let index = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        self.latencies[index]
    }
}

/// Successful responses so far, per generation, as the load runs: what a test waits on
/// instead of sleeping ("the load has reached generation 3").
type Progress = Arc<Mutex<BTreeMap<u64, u64>>>;

/// Load running in the background until `stop` is called.
pub struct Load {
    stop: watch::Sender<bool>,
    workers: Vec<tokio::task::JoinHandle<Report>>,
    progress: Progress,
}

/// Starts, for each `(kind, count, path)`, `count` workers of that kind requesting `path`
/// from `target` (a TCP address, or a Unix socket).
pub fn start(target: impl Into<Target>, mix: &[(Kind, usize, &str)]) -> Load {
    // For a failure to explain itself: the client's side of every HTTP/2 frame.
    if let Some(path) = std::env::var_os("LOAD_H2_LOG") {
        let file = std::fs::File::create(path).unwrap();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("h2=debug,hyper=debug")
            .with_writer(std::sync::Mutex::new(file))
            .with_ansi(false)
            .try_init();
    }
    let target = target.into();
    let (stop, stopped) = watch::channel(false);
    let progress = Progress::default();
    let mut workers = Vec::new();
    for &(kind, count, path) in mix {
        for _ in 0..count {
            let stopped = stopped.clone();
            let path = path.to_owned();
            let progress = Arc::clone(&progress);
            let target = target.clone();
            workers.push(tokio::spawn(async move {
                let (http2, streams) = match kind {
                    Kind::NewConnection => {
                        return new_connection_worker(&target, &path, stopped, progress).await;
                    }
                    Kind::KeepAlive => (false, 1),
                    Kind::Http2 { streams } => (true, streams),
                };
                match target {
                    Target::Tcp(addr) => {
                        let mut connector = HttpConnector::new();
                        connector.set_nodelay(true);
                        let connector = Counting::new(connector);
                        let uri = format!("http://{addr}{path}");
                        client_worker(connector, uri, stopped, http2, streams, progress).await
                    }
                    #[cfg(unix)]
                    Target::Unix(socket) => {
                        let socket = Arc::new(socket);
                        let connector = Counting::new(tower::service_fn(move |_: hyper::Uri| {
                            let socket = Arc::clone(&socket);
                            Box::pin(async move {
                                tokio::net::UnixStream::connect(socket.as_path())
                                    .await
                                    .map(hyper_util::rt::TokioIo::new)
                            })
                        }));
                        let uri = format!("http://localhost{path}");
                        client_worker(connector, uri, stopped, http2, streams, progress).await
                    }
                    Target::Tls {
                        addr,
                        http1,
                        http2: h2,
                    } => {
                        let config = if http2 { h2 } else { http1 };
                        let connector = Counting::new(super::tls::Connector { addr, config });
                        let uri = format!("https://{}:{}{path}", super::tls::HOST, addr.port());
                        client_worker(connector, uri, stopped, http2, streams, progress).await
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
    /// Successful responses from `generation` so far.
    pub fn served(&self, generation: u64) -> u64 {
        self.progress
            .lock()
            .unwrap()
            .get(&generation)
            .copied()
            .unwrap_or(0)
    }

    /// Waits (bounded) until the load has had `count` successful responses from `generation`.
    pub async fn served_by(&self, generation: u64, count: u64) {
        let deadline = Instant::now() + super::PATIENCE;
        loop {
            let seen = self.served(generation);
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
            report.merge(worker.await.expect("load worker panicked"));
        }
        report
    }
}

fn record(
    report: &mut Report,
    progress: &Progress,
    started: Instant,
    result: Result<(u16, bool, String), String>,
) {
    match result {
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
            }
            None => report.fail(format!("unexpected body {body:?}")),
        },
        Ok((status, _, body)) => report.fail(format!("status {status}: {body}")),
        Err(e) => report.fail(e),
    }
}

async fn new_connection_worker(
    target: &Target,
    path: &str,
    stopped: watch::Receiver<bool>,
    progress: Progress,
) -> Report {
    let mut report = Report::default();
    while !*stopped.borrow() {
        let started = Instant::now();
        let result = super::get_from(target, path)
            .await
            .map(|(s, b)| (s, false, b));
        record(&mut report, &progress, started, result);
    }
    report
}

/// A connector that counts the connections it opens.
#[derive(Clone)]
struct Counting<C> {
    inner: C,
    count: Arc<std::sync::atomic::AtomicU64>,
}

impl<C> Counting<C> {
    fn new(inner: C) -> Self {
        Counting {
            inner,
            count: Arc::default(),
        }
    }
}

impl<C> tower::Service<hyper::Uri> for Counting<C>
where
    C: tower::Service<hyper::Uri> + Send + 'static,
    C::Future: Send + 'static,
{
    type Response = C::Response;
    type Error = C::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<C::Response, C::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: hyper::Uri) -> Self::Future {
        self.count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Box::pin(self.inner.call(uri))
    }
}

async fn client_worker<C>(
    connector: Counting<C>,
    uri: String,
    stopped: watch::Receiver<bool>,
    http2: bool,
    streams: usize,
    progress: Progress,
) -> Report
where
    Counting<C>: Connect + Connector + Sync,
{
    let connects = Arc::clone(&connector.count);
    let client = if http2 {
        Sender::Http2(Arc::new(Http2Connection::new(connector)))
    } else {
        Sender::Pooled(Box::new(
            Client::builder(TokioExecutor::new())
                .retry_canceled_requests(false)
                .pool_max_idle_per_host(streams.max(1))
                .build(connector),
        ))
    };
    let report = Arc::new(Mutex::new(Report::default()));
    let mut tasks = Vec::new();
    for _ in 0..streams {
        let client = client.clone();
        let stopped = stopped.clone();
        let report = Arc::clone(&report);
        let progress = Arc::clone(&progress);
        let uri = uri.clone();
        tasks.push(tokio::spawn(async move {
            while !*stopped.borrow() {
                let started = Instant::now();
                let mut result = send(&client, &uri).await;
                // Only HTTP/2, and only a request the server provably never processed (its
                // connection had received GOAWAY). The pool may hand the resend to another
                // connection that is going away too, so allow a few (hyper's own retry has no
                // bound). Anything the server accepted and then lost still fails.
                let mut attempts = 1;
                while http2 && attempts < MAX_ATTEMPTS && matches!(&result, Err(Failure::Unsent(_)))
                {
                    report.lock().unwrap().resent += 1;
                    attempts += 1;
                    result = send(&client, &uri).await;
                }
                let result = result.map_err(|f| match f {
                    Failure::Unsent(e) | Failure::Other(e) => e,
                });
                record(&mut report.lock().unwrap(), &progress, started, result);
            }
        }));
    }
    for task in tasks {
        task.await.expect("load stream panicked");
    }
    let mut report = Arc::try_unwrap(report)
        .map(|m| m.into_inner().unwrap())
        .unwrap_or_default();
    report.connects = connects.load(std::sync::atomic::Ordering::Relaxed);
    report
}

/// Attempts per HTTP/2 request when the server provably did not process the earlier ones.
const MAX_ATTEMPTS: usize = 5;

/// Whether the server provably did not process the request: hyper canceled it before writing
/// it, or the server's GOAWAY (NO_ERROR) excluded its stream (RFC 9113 section 6.8: such
/// streams "can be safely retried").
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

enum Failure {
    /// The server never processed the request (see `unprocessed`).
    Unsent(String),
    Other(String),
}

/// How a worker's streams send: hyper-util's pool for HTTP/1 keep-alive, one connection of
/// the worker's own for HTTP/2.
enum Sender<C> {
    Pooled(Box<Client<Counting<C>, Empty<Bytes>>>),
    Http2(Arc<Http2Connection<C>>),
}

impl<C> Clone for Sender<C>
where
    Counting<C>: Clone,
{
    fn clone(&self) -> Self {
        match self {
            Sender::Pooled(client) => Sender::Pooled(client.clone()),
            Sender::Http2(connection) => Sender::Http2(Arc::clone(connection)),
        }
    }
}

/// One HTTP/2 connection per worker, driven with the `h2` crate as h2load drives its own:
/// opened on first use, replaced once the server closed it or refused a request with GOAWAY.
/// Neither hyper-util's pooled client nor hyper's own HTTP/2 connection: in about one run in
/// 100 of `drain::http2_streams_survive_upgrades` on a busy machine, a few of their requests
/// hung after a GOAWAY without ever being written (captured on loopback: the server had
/// answered every request on every connection), which is hyper's dispatch, not the server.
struct Http2Connection<C> {
    connector: Counting<C>,
    /// The connection in use and its number, so that only the one that refused is replaced.
    current: tokio::sync::Mutex<Option<(u64, h2::client::SendRequest<Bytes>)>>,
    opened: std::sync::atomic::AtomicU64,
}

impl<C> Http2Connection<C>
where
    Counting<C>: Connector,
{
    fn new(connector: Counting<C>) -> Self {
        Http2Connection {
            connector,
            current: tokio::sync::Mutex::new(None),
            opened: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The open connection, or a new one: the streams wait for the one being opened.
    async fn sender(
        &self,
        uri: &hyper::Uri,
    ) -> Result<(u64, h2::client::SendRequest<Bytes>), Failure> {
        let mut current = self.current.lock().await;
        if let Some((number, sender)) = current.as_ref() {
            return Ok((*number, sender.clone()));
        }
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| tower::Service::poll_ready(&mut connector, cx))
            .await
            .map_err(|e| Failure::Other(format!("connect: {e}")))?;
        let io = tower::Service::call(&mut connector, uri.clone())
            .await
            .map_err(|e| Failure::Other(format!("connect: {e}")))?;
        // The connector speaks hyper's IO traits; h2 speaks tokio's.
        let (sender, connection) = h2::client::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| Failure::Other(format!("HTTP/2 handshake: {e}")))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let number = self
            .opened
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *current = Some((number, sender.clone()));
        Ok((number, sender))
    }

    /// Connection `number` ended or refused a request: the next stream opens a new one.
    async fn retire(&self, number: u64) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|(n, _)| *n == number) {
            *current = None;
        }
    }

    /// `GET uri`: the status, no `Connection: close` (HTTP/2 has none) and the body.
    async fn get(&self, uri: hyper::Uri) -> Result<(u16, bool, String), Failure> {
        let (number, sender) = self.sender(&uri).await?;
        let result = async {
            // Fails if the connection received GOAWAY or ended: nothing was sent.
            let mut sender = sender.ready().await.map_err(Sent::No)?;
            let request = hyper::Request::get(uri)
                .body(())
                .map_err(|e| Sent::Maybe(format!("{e}")))?;
            let (response, _) = sender.send_request(request, true).map_err(Sent::No)?;
            let response = response.await.map_err(Sent::from)?;
            let status = response.status().as_u16();
            let mut body = response.into_body();
            let mut bytes = Vec::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.map_err(|e| Sent::Maybe(format!("body: {e}")))?;
                let _ = body.flow_control().release_capacity(chunk.len());
                bytes.extend_from_slice(&chunk);
            }
            Ok((status, false, String::from_utf8_lossy(&bytes).into_owned()))
        }
        .await;
        match result {
            Ok(answer) => Ok(answer),
            Err(Sent::No(e)) => {
                self.retire(number).await;
                Err(Failure::Unsent(format!("request: {e}")))
            }
            Err(Sent::Maybe(e)) => Err(Failure::Other(format!("request: {e}"))),
        }
    }
}

/// What the HTTP/2 load opens its connections with: a tower connector yielding hyper's IO.
trait Connector:
    tower::Service<
        hyper::Uri,
        Response: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
        Error: std::fmt::Display,
        Future: Send,
    > + Clone
    + Send
    + 'static
{
}

impl<T> Connector for T where
    T: tower::Service<
            hyper::Uri,
            Response: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
            Error: std::fmt::Display,
            Future: Send,
        > + Clone
        + Send
        + 'static
{
}

/// Whether a failed HTTP/2 request may have reached the server.
enum Sent {
    /// Provably not: refused before it was written, or excluded by the server's GOAWAY
    /// (NO_ERROR) or REFUSED_STREAM (RFC 9113 section 8.7).
    No(h2::Error),
    Maybe(String),
}

impl From<h2::Error> for Sent {
    fn from(e: h2::Error) -> Self {
        let refused = e.reason() == Some(h2::Reason::REFUSED_STREAM)
            || (e.is_go_away() && e.is_remote() && e.reason() == Some(h2::Reason::NO_ERROR));
        if refused {
            Sent::No(e)
        } else {
            Sent::Maybe(format!("{e}"))
        }
    }
}

async fn send<C>(client: &Sender<C>, uri: &str) -> Result<(u16, bool, String), Failure>
where
    Counting<C>: Connect + Connector + Sync,
{
    let attempt = async {
        let uri: hyper::Uri = uri.parse().map_err(|e| Failure::Other(format!("{e}")))?;
        let response = match client {
            Sender::Pooled(client) => client.get(uri).await.map_err(|e| {
                let unsent = std::error::Error::source(&e)
                    .and_then(|s| s.downcast_ref::<hyper::Error>())
                    .is_some_and(unprocessed);
                let text = format!("request: {e:?}");
                if unsent {
                    Failure::Unsent(text)
                } else {
                    Failure::Other(text)
                }
            })?,
            Sender::Http2(connection) => return connection.get(uri).await,
        };
        let status = response.status().as_u16();
        let close = response
            .headers()
            .get(hyper::header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| Failure::Other(format!("body: {e}")))?
            .to_bytes();
        Ok((status, close, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(super::PATIENCE, attempt)
        .await
        .unwrap_or_else(|_| Err(Failure::Other("timed out".to_owned())))
}
