//! A bare HTTP/1.1 client on one TCP (or Unix) connection, byte by byte: it writes exactly
//! what a test says (half a request, two pipelined ones) and reads responses one at a time,
//! so a test can tell which generation answered on the very same connection.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::PATIENCE;

/// One response: status, headers (lower-cased names) and body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the server said it closes the connection after this response.
    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// A connection to the service that is never reopened: if the server closes it, reads fail.
pub struct RawConn<S> {
    stream: S,
    buf: Vec<u8>,
}

pub type TcpConn = RawConn<tokio::net::TcpStream>;

impl TcpConn {
    pub async fn connect(addr: std::net::SocketAddr) -> TcpConn {
        let stream = tokio::time::timeout(PATIENCE, tokio::net::TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        RawConn::new(stream)
    }

    /// The client's own address: unchanged as long as the connection is the same.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.stream.local_addr().expect("local address")
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> RawConn<S> {
    pub fn new(stream: S) -> Self {
        RawConn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes `bytes` as they are.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.stream
            .write_all(bytes)
            .await
            .map_err(|e| format!("write: {e}"))
    }

    /// A whole `GET path` request, keep-alive.
    pub fn get_request(path: &str) -> Vec<u8> {
        format!("GET {path} HTTP/1.1\r\nHost: risefront.test\r\n\r\n").into_bytes()
    }

    /// Sends `GET path` and reads its response.
    pub async fn get(&mut self, path: &str) -> Result<Response, String> {
        self.send(&Self::get_request(path)).await?;
        self.response().await
    }

    /// Reads the next response (content-length bodies only, which is what the examples send).
    pub async fn response(&mut self) -> Result<Response, String> {
        tokio::time::timeout(PATIENCE, self.read_response())
            .await
            .unwrap_or_else(|_| Err("no response in time".to_owned()))
    }

    /// Whether the server closed the connection within `wait` (nothing else arrives on an
    /// idle connection).
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        let mut byte = [0u8; 1];
        match tokio::time::timeout(wait, self.stream.read(&mut byte)).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(_)) => panic!("unexpected byte {byte:?} on an idle connection"),
            Err(_) => false,
        }
    }

    async fn read_response(&mut self) -> Result<Response, String> {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .ok_or_else(|| format!("no content-length in {head:?}"))?;
        let body_start = head_end + 4;
        while self.buf.len() < body_start + length {
            self.fill().await?;
        }
        let body = String::from_utf8_lossy(&self.buf[body_start..body_start + length]).into_owned();
        self.buf.drain(..body_start + length);
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    async fn fill(&mut self) -> Result<(), String> {
        let mut chunk = [0u8; 4096];
        let n = self
            .stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("the server closed the connection".to_owned());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
