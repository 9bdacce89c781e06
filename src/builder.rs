//! [`Builder`] and [`bind`]: every option in one place, and the decision every process makes
//! at start-up: join the running front as a new generation, or become the front.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::ToSocketAddrs;
use tokio::time::Instant;

use crate::handoff::Endpoint;
use crate::listener::RiseFrontListener;
use crate::{front, generation};

/// Binds `addrs` with the default [`Builder`]: the first process becomes the front and never
/// returns from here; every later one returns a listener holding the front's sockets.
///
/// # Example
///
/// ```no_run
/// # async fn run() -> std::io::Result<()> {
/// let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
/// axum::serve(risefront::bind(["127.0.0.1:8080"]).await?, app).await
/// # }
/// ```
pub async fn bind<I, A>(addrs: I) -> io::Result<RiseFrontListener>
where
    I: IntoIterator<Item = A>,
    A: ToSocketAddrs,
{
    Builder::new().bind(addrs).await
}

/// Asks the running front for `addrs` to start a new generation, and waits until it serves.
///
/// Returns the new generation's number. Fails with a clear error when no front runs for these
/// addresses, when an upgrade is already in progress, or when the new generation fails before
/// it is ready (the old one then keeps serving).
///
/// # Example
///
/// ```no_run
/// # async fn run() -> std::io::Result<()> {
/// let generation = risefront::upgrade(["127.0.0.1:8080"]).await?;
/// println!("generation {generation} is serving");
/// # Ok(())
/// # }
/// ```
pub async fn upgrade<I, A>(addrs: I) -> io::Result<u64>
where
    I: IntoIterator<Item = A>,
    A: ToSocketAddrs,
{
    Builder::new().upgrade(addrs).await
}

/// Options for [`bind`]; every timeout has a default suitable for HTTP services.
///
/// Timeouts can be overridden at run time without rebuilding, which is what an operator
/// reaches for during an incident: `RISEFRONT_READY_TIMEOUT`, `RISEFRONT_DRAIN_TIMEOUT`,
/// `RISEFRONT_HANDSHAKE_TIMEOUT` and `RISEFRONT_IDLE_GRACE` take values such as `500ms`, `30s`,
/// `2m` or a plain number of seconds, and `RISEFRONT=off` means [`standalone`](Self::standalone).
///
/// # Example
///
/// ```no_run
/// use std::time::Duration;
///
/// # async fn run() -> std::io::Result<()> {
/// let listener = risefront::Builder::new()
///     .name("api")
///     .ready_timeout(Duration::from_secs(120)) // the app loads a large cache first
///     .drain_timeout(Duration::from_secs(60))
///     .bind(["0.0.0.0:8080", "[::]:8080"])
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Builder {
    name: Option<String>,
    ready_timeout: Duration,
    drain_timeout: Duration,
    handshake_timeout: Duration,
    idle_grace: Duration,
    standalone: bool,
    manual_ready: bool,
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

/// What every process of a service agrees on, after environment overrides.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) name: String,
    pub(crate) ready_timeout: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) handshake_timeout: Duration,
    pub(crate) idle_grace: Duration,
    pub(crate) standalone: bool,
    pub(crate) manual_ready: bool,
}

impl Builder {
    /// A builder with the defaults: name derived from the addresses, 60 s ready timeout,
    /// 30 s drain timeout, 5 s handshake timeout, 500 ms idle grace.
    pub fn new() -> Self {
        Builder {
            name: None,
            ready_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(5),
            idle_grace: Duration::from_millis(500),
            standalone: false,
            manual_ready: false,
        }
    }

    /// Names the service. Processes with the same name share one front; the default is derived
    /// from the sorted addresses, so two services on one machine never collide.
    ///
    /// Letters, digits, `.`, `_` and `-` only (the name becomes a file name).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// How long a new generation may take from start to ready before the front kills it and
    /// keeps the old one serving.
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// How long a superseded generation may take to finish its requests before it exits anyway.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// How long a control peer has to introduce itself before it is dropped.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// How long after a takeover [`superseded`](crate::superseded) waits before it resolves
    /// (unless the generation has no connection left sooner).
    ///
    /// hyper closes idle keep-alive connections the instant graceful shutdown starts, racing
    /// clients that are sending on them right now; the grace lets those requests land first.
    pub fn idle_grace(mut self, grace: Duration) -> Self {
        self.idle_grace = grace;
        self
    }

    /// Binds the addresses plainly in this process: no front, no handoff. For tests and
    /// debugging; `RISEFRONT=off` in the environment does the same.
    pub fn standalone(mut self) -> Self {
        self.standalone = true;
        self
    }

    /// Reports readiness only when [`RiseFrontListener::ready`] or [`crate::ready`] is called,
    /// instead of when the server first polls the listener; until then the listener accepts
    /// nothing and the previous generation keeps serving. For apps whose server loop starts
    /// before they are warm (caches, connection pools).
    pub fn manual_ready(mut self) -> Self {
        self.manual_ready = true;
        self
    }

    /// Binds `addrs`: joins the running front as a new generation, or becomes the front.
    ///
    /// The front (the first process for this service) binds the addresses, starts the first
    /// generation by running this program again with the same arguments, and never returns
    /// from this call: it exits when told to stop (SIGTERM, SIGINT, Ctrl-C). Errors are
    /// returned only before that point, for example when an address is already in use.
    pub async fn bind<I, A>(self, addrs: I) -> io::Result<RiseFrontListener>
    where
        I: IntoIterator<Item = A>,
        A: ToSocketAddrs,
    {
        let addrs = resolve(addrs).await?;
        let config = self.config(&addrs)?;
        if config.standalone {
            return RiseFrontListener::standalone(&addrs, &config).await;
        }
        generation::claim()?;
        let endpoint = Endpoint::for_service(&config.name)?;
        let deadline = Instant::now() + config.handshake_timeout;
        loop {
            if let Some(stream) = endpoint.connect().await? {
                return generation::join(stream, &config).await;
            }
            if let Some(lock) = endpoint.try_lock()? {
                match front::run(config, addrs, endpoint, lock).await? {}
            }
            // Another process holds the lock: a front that is starting up right now.
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "risefront: the front of service {:?} holds its lock but did not open {} within {:?}",
                        config.name, endpoint, config.handshake_timeout
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asks the running front for `addrs` to start a new generation; see [`upgrade`](crate::upgrade).
    pub async fn upgrade<I, A>(self, addrs: I) -> io::Result<u64>
    where
        I: IntoIterator<Item = A>,
        A: ToSocketAddrs,
    {
        let addrs = resolve(addrs).await?;
        let config = self.config(&addrs)?;
        let endpoint = Endpoint::for_service(&config.name)?;
        crate::upgrade::request(&endpoint, &config).await
    }

    fn config(&self, addrs: &[Vec<SocketAddr>]) -> io::Result<Config> {
        let name = match &self.name {
            Some(name) => validate_name(name)?,
            None => derive_name(addrs),
        };
        Ok(Config {
            name,
            ready_timeout: env_duration("RISEFRONT_READY_TIMEOUT")?.unwrap_or(self.ready_timeout),
            drain_timeout: env_duration("RISEFRONT_DRAIN_TIMEOUT")?.unwrap_or(self.drain_timeout),
            handshake_timeout: env_duration("RISEFRONT_HANDSHAKE_TIMEOUT")?
                .unwrap_or(self.handshake_timeout),
            idle_grace: env_duration("RISEFRONT_IDLE_GRACE")?.unwrap_or(self.idle_grace),
            standalone: self.standalone || env_off()?,
            manual_ready: self.manual_ready,
        })
    }
}

/// Resolves each address to its candidates; the front binds the first candidate that works,
/// as `tokio::net::TcpListener::bind` does.
async fn resolve<I, A>(addrs: I) -> io::Result<Vec<Vec<SocketAddr>>>
where
    I: IntoIterator<Item = A>,
    A: ToSocketAddrs,
{
    let mut out = Vec::new();
    for addr in addrs {
        let candidates: Vec<SocketAddr> = tokio::net::lookup_host(addr).await?.collect();
        if candidates.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "risefront: an address resolved to nothing",
            ));
        }
        if !out.contains(&candidates) {
            out.push(candidates);
        }
    }
    if out.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "risefront: bind needs at least one address",
        ));
    }
    Ok(out)
}

const MAX_NAME: usize = 64;

fn validate_name(name: &str) -> io::Result<String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(name.to_owned())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "risefront: invalid service name {name:?}: use 1 to {MAX_NAME} letters, digits, '.', '_' or '-', not starting with '.'"
            ),
        ))
    }
}

/// `127.0.0.1:8080` becomes `127.0.0.1_8080` and `[::1]:80` becomes `v6_0-0-0-0-0-0-0-1_80`;
/// long lists are shortened with a hash so the socket path stays under the platform's limit
/// (about 100 bytes on Unix).
fn derive_name(addrs: &[Vec<SocketAddr>]) -> String {
    let mut parts: Vec<String> = addrs
        .iter()
        .map(|candidates| match candidates[0] {
            SocketAddr::V4(a) => format!("{}_{}", a.ip(), a.port()),
            SocketAddr::V6(a) => {
                let segments: Vec<String> =
                    a.ip().segments().iter().map(|s| format!("{s:x}")).collect();
                format!("v6_{}_{}", segments.join("-"), a.port())
            }
        })
        .collect();
    parts.sort();
    let joined = parts.join("+");
    if joined.len() <= 40 {
        return joined.replace('+', "_and_");
    }
    // FNV-1a: stable across builds and platforms, unlike std's randomly seeded hasher.
    let hash = joined.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let prefix: String = joined
        .chars()
        .take(23)
        .map(|c| if c == '+' { '_' } else { c })
        .collect();
    format!("{prefix}-{hash:016x}")
}

fn env_off() -> io::Result<bool> {
    match std::env::var("RISEFRONT") {
        Ok(v) => match v.to_ascii_lowercase().as_str() {
            "off" | "0" | "false" | "no" | "standalone" => Ok(true),
            "on" | "1" | "true" | "yes" | "" => Ok(false),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "risefront: RISEFRONT={v:?} is not understood; use RISEFRONT=off to bind plainly"
                ),
            )),
        },
        Err(_) => Ok(false),
    }
}

fn env_duration(var: &str) -> io::Result<Option<Duration>> {
    let Ok(value) = std::env::var(var) else {
        return Ok(None);
    };
    parse_duration(&value).map(Some).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("risefront: {var}={value:?} is not a duration (examples: 500ms, 30s, 2m, 1.5)"),
        )
    })
}

pub(crate) fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = number.trim().parse().ok()?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<Vec<SocketAddr>> {
        list.iter().map(|a| vec![a.parse().unwrap()]).collect()
    }

    #[test]
    fn derived_names_are_sorted_and_file_safe() {
        assert_eq!(derive_name(&addrs(&["127.0.0.1:8080"])), "127.0.0.1_8080");
        assert_eq!(
            derive_name(&addrs(&["127.0.0.2:1", "127.0.0.1:2"])),
            derive_name(&addrs(&["127.0.0.1:2", "127.0.0.2:1"]))
        );
        assert_eq!(derive_name(&addrs(&["[::1]:80"])), "v6_0-0-0-0-0-0-0-1_80");
        let long = derive_name(&addrs(&[
            "[2001:db8::1]:8080",
            "[2001:db8::2]:8080",
            "10.0.0.1:1",
        ]));
        assert!(long.len() <= MAX_NAME, "{long}");
        assert!(validate_name(&long).is_ok());
    }

    #[test]
    fn names_are_validated() {
        assert!(validate_name("api-v2.internal_1").is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "sp ace", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        for bad in ["", "x", "-1", "5h", "1e400"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }
}
