//! [`Builder`] and [`bind`]: every option in one place, and the decision every process makes
//! at start-up: join the running front as a new generation, or become the front.

use std::io;
use std::time::Duration;

use tokio::time::Instant;

use crate::addr::ToListenAddr;
use crate::config::{
    Config, DRAIN_TIMEOUT_VAR, NAME_VAR, READY_TIMEOUT_VAR, UpgradeRequest, control_handshake_var,
    deadline_after, derive_name, env_duration, env_handoff, env_off, env_tls_handshake_timeout,
    env_unix_mode, env_upgrade, nonzero_timeout, program_name, validate_name, warn_unknown_vars,
};
use crate::handoff::{self, Endpoint};
use crate::listener::RiseFrontListener;
use crate::net::{Target, resolve};
use crate::upgrade::UpgradeError;
use crate::{front, generation, process};

/// Binds `addrs` with the default [`Builder`]: the first process becomes the front and never
/// returns from here; every later one returns a listener holding the front's sockets.
///
/// With `RISEFRONT_UPGRADE=1` in its environment, the program instead asks the running front
/// for an upgrade, waits for the outcome, prints it and exits (0 once the new generation
/// serves, 1 if it failed): any program built on risefront is its own `ExecReload=` command,
/// `ExecReload=/usr/bin/env RISEFRONT_UPGRADE=1 /usr/bin/app ARGS`. With
/// `RISEFRONT_UPGRADE=front` it asks the front to re-execute itself into the serving build
/// instead (see [`reexec_front`]).
///
/// Code before `bind` runs in every process, the front included. In tests, set
/// `RISEFRONT=off` (or use [`Builder::standalone`]) to get a plain listener in the test
/// process; otherwise the test binary becomes a front and runs itself again as generation 1
/// (which ends the service when it exits with status 0, so the test still finishes). A
/// generation that exits with status 0 by itself, not superseded and not asked to stop, ends
/// the service: respawning is for failures.
///
/// The default service name is the program's file name and the sorted addresses: a new build
/// of the same program joins from any path, and another program on a taken address gets an
/// error naming the service that holds it.
///
/// Addresses are TCP addresses as tokio's `ToSocketAddrs` takes them, or Unix domain sockets
/// (Linux and macOS) as `unix:PATH` or [`ListenAddr::Unix`](crate::ListenAddr::Unix); see
/// [`ToListenAddr`].
///
/// # Example
///
/// ```no_run
/// # async fn run() -> std::io::Result<()> {
/// let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
/// axum::serve(risefront::bind(["127.0.0.1:8080"]).await?, app).await
/// # }
/// ```
///
/// Behind nginx or HAProxy on the same host, a Unix socket, next to a TCP port for health
/// checks:
///
/// ```no_run
/// # async fn run(app: axum::Router) -> std::io::Result<()> {
/// let listener = risefront::bind(["unix:/run/app/http.sock", "127.0.0.1:9090"]).await?;
/// axum::serve(listener, app).await
/// # }
/// ```
pub async fn bind<I, A>(addrs: I) -> io::Result<RiseFrontListener>
where
    I: IntoIterator<Item = A>,
    A: ToListenAddr,
{
    Builder::new().bind(addrs).await
}

/// Asks the running front for `addrs` to start a new generation, and waits until it serves.
///
/// It returns once the new generation is ready and the generations it replaced have stopped
/// accepting, so every connection opened after it returns reaches the new build: a deploy
/// script can check the new version right away. (A replaced generation stuck for more than
/// 2 s does not hold it up longer; the front's log then says so.)
///
/// Returns the new generation's number. Fails with an [`UpgradeError`] that says which case it
/// is: no front runs for these addresses ([`NoFront`](UpgradeError::NoFront)), an upgrade is
/// already in progress ([`Busy`](UpgradeError::Busy): retry later), or the new generation
/// failed before it was ready ([`Failed`](UpgradeError::Failed): the old one keeps serving).
/// It converts into `io::Error`, so `?` works in `io::Result` functions.
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
pub async fn upgrade<I, A>(addrs: I) -> Result<u64, UpgradeError>
where
    I: IntoIterator<Item = A>,
    A: ToListenAddr,
{
    Builder::new().upgrade(addrs).await
}

/// Asks the running front for `addrs` to re-execute itself into the build that serves (what
/// upgrades start), and waits until it did: same process id, listening sockets, control
/// socket and serving generation, no connection refused. For a front's own fixes in a newer
/// risefront with the same control protocol (one with a newer protocol is re-executed into by
/// an ordinary upgrade). `RISEFRONT_UPGRADE=front` makes `bind` do this and exit, as
/// `RISEFRONT_UPGRADE=1` does an upgrade.
///
/// Returns the serving generation's number. Only at a quiet point (one generation serving,
/// nothing under way): otherwise [`UpgradeError::Busy`], and asking again later works. Unix:
/// a Windows front answers [`UpgradeError::Failed`], saying it cannot.
///
/// ```no_run
/// # async fn run() -> std::io::Result<()> {
/// let generation = risefront::reexec_front(["127.0.0.1:8080"]).await?;
/// println!("the front runs the serving build; generation {generation} serves");
/// # Ok(())
/// # }
/// ```
pub async fn reexec_front<I, A>(addrs: I) -> Result<u64, UpgradeError>
where
    I: IntoIterator<Item = A>,
    A: ToListenAddr,
{
    Builder::new().reexec_front(addrs).await
}

/// Asks the front whose process id is `pid` for a new generation and waits for the outcome,
/// as [`upgrade`] does, finding the front's control socket from the process itself instead of
/// from the program's name and addresses. For a reload that runs none of the app's code: the
/// crate's `risefront` command (`risefront upgrade PID`) calls it, for systemd's
/// `ExecReload=/usr/local/bin/risefront upgrade $MAINPID`. Run it as the service's user (the
/// front talks to no one else). The wait for the new generation is bounded by the ready
/// timeout of this process (`RISEFRONT_READY_TIMEOUT`, 60 s by default) plus a margin.
///
/// Linux only (the control socket is found in `/proc`); elsewhere it returns
/// [`UpgradeError::Io`] of kind `Unsupported`.
///
/// ```no_run
/// # async fn run() {
/// match risefront::upgrade_pid(812).await {
///     Ok(generation) => println!("generation {generation} is serving"),
///     Err(e) => eprintln!("{e}"),
/// }
/// # }
/// ```
pub async fn upgrade_pid(pid: u32) -> Result<u64, UpgradeError> {
    let (endpoint, config) = front_of_pid(pid).map_err(|e| *e)?;
    crate::upgrade::request(&endpoint, &config).await
}

/// Asks the front whose process id is `pid` to re-execute itself into the build that serves
/// (what upgrades start), keeping its process id, its listening sockets, its control socket
/// and the serving generation: how a front gets a newer risefront's fixes without a restart.
/// Returns the generation serving once the new front image answered; the serving generation
/// is not touched, and no connection is refused meanwhile.
///
/// The front re-executes only at a quiet point (one generation serving, no upgrade, probation
/// or stop under way); otherwise it answers [`UpgradeError::Busy`], and asking again later
/// works. Unix only: Windows has no `exec` that keeps handles, and a front there answers
/// [`UpgradeError::Failed`] saying so. Finding the front by pid needs Linux (as
/// [`upgrade_pid`]). The crate's `risefrontctl reexec PID` calls this.
///
/// ```no_run
/// # async fn run() {
/// match risefront::reexec_front_pid(812).await {
///     Ok(generation) => println!("the front runs the newest build; generation {generation} serves"),
///     Err(e) => eprintln!("{e}"),
/// }
/// # }
/// ```
pub async fn reexec_front_pid(pid: u32) -> Result<u64, UpgradeError> {
    let (endpoint, config) = front_of_pid(pid).map_err(|e| *e)?;
    crate::upgrade::reexec(&endpoint, &config).await
}

/// The control endpoint of the front with process id `pid`, and a configuration to talk to
/// it with.
fn front_of_pid(pid: u32) -> Result<(Endpoint, Config), Box<UpgradeError>> {
    if !cfg!(target_os = "linux") {
        return Err(Box::new(UpgradeError::Io(io::Error::new(
            io::ErrorKind::Unsupported,
            "risefront: finding a front by its process id needs Linux's /proc: use upgrade(addrs)",
        ))));
    }
    let Some(socket) = crate::holder::control_socket_of(pid) else {
        return Err(Box::new(UpgradeError::NoFront {
            service: format!("of process {pid}"),
            endpoint: format!(
                "process {pid} (no risefront control socket this user may see: not a front, gone, or another user's)"
            ),
            holder: None,
        }));
    };
    let name = socket
        .file_stem()
        .and_then(|stem| stem.to_str())
        .unwrap_or_default()
        .to_owned();
    let mut builder = Builder::new().name(name);
    if let Some(dir) = socket.parent() {
        builder = builder.control_dir(dir);
    }
    let config = builder
        .config(&[])
        .map_err(|e| Box::new(UpgradeError::from(e)))?;
    let endpoint = Endpoint::for_service(&config.name, config.control_dir.as_deref())
        .map_err(|e| Box::new(UpgradeError::from(e)))?;
    Ok((endpoint, config))
}

/// Whether `e` says the front speaks the protocol version just before ours, from a release
/// that can re-execute into a build of ours.
fn front_can_reexec_into_us(e: &io::Error) -> bool {
    let front = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<crate::error::BindError>())
        .and_then(|bind| match bind {
            crate::error::BindError::ProtocolMismatch { front, .. } => Some(*front),
            _ => None,
        });
    front.is_some_and(|front| {
        front == crate::protocol::OLDEST_VERSION && front >= crate::protocol::REEXEC_SINCE
    })
}

/// A build started by hand meets a front one protocol version older: it asks the front to
/// re-execute into this build (same pid, sockets and serving generation), after which it
/// joins as usual.
async fn reexec_front_into_this(endpoint: &Endpoint, config: &Config) -> io::Result<()> {
    let front = crate::protocol::OLDEST_VERSION;
    tracing::info!(
        "the front of service {:?} speaks protocol {front}, this build {}: asking it to re-execute into this build",
        config.name,
        crate::protocol::VERSION
    );
    let program = crate::protocol::Program::of_this_process()?;
    crate::upgrade::reexec_into(endpoint, config, front, program)
        .await
        .map(|_| ())
        .map_err(|e| {
            io::Error::other(
                format!(
                    "risefront: the front of service {:?} speaks protocol {front} and could not re-execute into this build (protocol {}): {e}",
                    config.name,
                    crate::protocol::VERSION
                ),
            )
        })
}

/// Options for [`bind`]; every timeout has a default suitable for HTTP services.
///
/// Timeouts can be overridden at run time without rebuilding, which is what an operator
/// reaches for during an incident: `RISEFRONT_READY_TIMEOUT`, `RISEFRONT_DRAIN_TIMEOUT`,
/// `RISEFRONT_CONTROL_HANDSHAKE_TIMEOUT`, `RISEFRONT_IDLE_GRACE`, `RISEFRONT_STOP_DELAY`,
/// `RISEFRONT_PROBATION` and `RISEFRONT_CLOSE_SPREAD` take values
/// such as `500ms`, `30s`, `2m` or a plain number of seconds, `RISEFRONT_UNIX_MODE` an octal
/// mode such as `660` (see [`unix_mode`](Self::unix_mode)), `RISEFRONT_HANDOFF=off` turns off
/// the [connection handoff](Self::connection_handoff), `RISEFRONT_DIR` sets the
/// [control directory](Self::control_dir), and `RISEFRONT=off` means
/// [`standalone`](Self::standalone). `RISEFRONT_TLS_HANDSHAKE_TIMEOUT` sets the TLS listener's
/// handshake timeout (the `tls` feature). `RISEFRONT_HANDSHAKE_TIMEOUT`, the control
/// handshake's former name, is still read, with a warning.
///
/// `bind` checks them all: a value that does not parse, or a ready, drain or handshake
/// timeout of zero (set here or in a variable), is an error naming the setting
/// ([`BindError::InvalidSetting`](crate::BindError::InvalidSetting)), and any other
/// `RISEFRONT_*` variable is logged as a warning (with the known name it is probably a typo
/// of), since it would be ignored.
///
/// An environment variable beats the value set in code. Each process reads its own
/// environment: a generation the front starts inherits the front's, while a build started by
/// hand has the environment of the shell that started it. The deadlines a generation is held
/// to are its own (it tells the front in its Hello), so a new build can raise them.
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
    control_handshake_timeout: Duration,
    idle_grace: Duration,
    stop_delay: Duration,
    probation: Duration,
    close_spread: Duration,
    control_dir: Option<std::path::PathBuf>,
    standalone: bool,
    manual_ready: bool,
    unix_mode: Option<u32>,
    handoff: bool,
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

impl Builder {
    /// A builder with the defaults: name derived from the program and the addresses (see
    /// [`name`](Self::name)), 60 s ready timeout, 30 s drain timeout, 5 s control handshake
    /// timeout, 500 ms idle grace, no stop delay, 10 s
    /// probation, 250 ms close spread.
    #[must_use]
    pub fn new() -> Self {
        Builder {
            name: None,
            ready_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(30),
            control_handshake_timeout: Duration::from_secs(5),
            idle_grace: Duration::from_millis(500),
            stop_delay: Duration::ZERO,
            probation: Duration::from_secs(10),
            close_spread: Duration::from_millis(250),
            control_dir: None,
            standalone: false,
            manual_ready: false,
            unix_mode: None,
            handoff: true,
        }
    }

    /// Names the service. Processes with the same name share one front.
    ///
    /// The default is the program's whole file name (from `argv[0]`, so a symlink's own name,
    /// extension included but for Windows' `.exe`), a `-`, and the sorted addresses: `hello` on `127.0.0.1:8080` is
    /// `hello-127.0.0.1_8080`. It is exact: `app.old` and `app-canary` are other services than
    /// `app`, and a name that cannot be written as is (characters other than letters, digits,
    /// `.`, `_` and `-`, or over 64 in all) becomes a readable prefix and a hash of the exact
    /// name and addresses, never a truncation. With port 0 among the addresses (any free port),
    /// the name carries the front's pid: two services asking for port 0 are two services. So a
    /// new build of the same program joins from any path, while another program on a taken
    /// address is refused ([`BindError::InUseByService`](crate::BindError::InUseByService))
    /// instead of taking it over. Set a name to let programs of different file names share one
    /// service.
    ///
    /// A name also keeps a service's identity when a new build changes its address list: the
    /// derived name includes the addresses, so a build that adds or drops one is another
    /// service unless both builds share a name. With a name, the new build's addresses are
    /// the service's from the upgrade on (the front binds the new ones and closes those no
    /// generation uses any more).
    ///
    /// Letters, digits, `.`, `_` and `-` only, at most 64, not starting with `.` (the name
    /// becomes a file name); [`bind`](Self::bind) refuses others with
    /// [`BindError::InvalidServiceName`](crate::BindError::InvalidServiceName).
    /// `RISEFRONT_NAME` overrides it.
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// How long a new generation may take from start to ready before the front kills it and
    /// keeps the old one serving.
    /// Default 60 s; zero is refused at [`bind`](Self::bind).
    /// `RISEFRONT_READY_TIMEOUT` overrides it.
    #[must_use]
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// How long a superseded generation may take to finish its requests before it exits anyway.
    /// Default 30 s; zero is refused at [`bind`](Self::bind). `RISEFRONT_DRAIN_TIMEOUT`
    /// overrides it.
    #[must_use]
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// How long a peer of the control channel (a new generation, an [`upgrade`] client) has
    /// to introduce itself before it is dropped, and how long a new process waits for the
    /// front's answer. Default 5 s; zero is refused at `bind`.
    /// `RISEFRONT_CONTROL_HANDSHAKE_TIMEOUT` overrides it.
    ///
    /// Not the TLS handshake: that is `TlsListener::tls_handshake_timeout` (the `tls` feature),
    /// `RISEFRONT_TLS_HANDSHAKE_TIMEOUT`.
    #[must_use]
    pub fn control_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.control_handshake_timeout = timeout;
        self
    }

    /// The former name of [`control_handshake_timeout`](Self::control_handshake_timeout).
    #[doc(hidden)] // Still compiles for old code; the docs show each item once.
    #[deprecated(
        since = "0.1.0",
        note = "renamed `control_handshake_timeout` (the TLS one is `TlsListener::tls_handshake_timeout`)"
    )]
    #[must_use]
    pub fn handshake_timeout(self, timeout: Duration) -> Self {
        self.control_handshake_timeout(timeout)
    }

    /// How long after a takeover [`superseded`](crate::superseded) waits before it resolves
    /// (unless the generation has no connection left sooner).
    ///
    /// hyper closes idle keep-alive connections the instant graceful shutdown starts, racing
    /// clients that are sending on them right now; the grace lets those requests land first.
    /// [`GracefulServer`](crate::GracefulServer) does not close idle connections under their
    /// clients at all, and has no grace unless [`GracefulServer::idle_grace`](crate::GracefulServer::idle_grace)
    /// sets one.
    ///
    /// By design, with a server that uses hyper's graceful shutdown (`axum::serve` with
    /// [`superseded`](crate::superseded)): a connection accepted before the takeover whose
    /// first request comes only after the grace is closed unanswered, since hyper cancels
    /// connections it has not read from when its shutdown starts. Clients that open
    /// connections ahead of their requests (pre-connecting pools) see that request fail. A
    /// longer grace moves the line; `GracefulServer` has none: it moves such a connection to
    /// the new generation (plain TCP, with connection handoff) or answers its first request.
    ///
    /// Default 500 ms; `RISEFRONT_IDLE_GRACE` overrides it.
    #[must_use]
    pub fn idle_grace(mut self, grace: Duration) -> Self {
        self.idle_grace = grace;
        self
    }

    /// How long the service keeps accepting after it is told to stop (SIGTERM, SIGINT, Ctrl-C
    /// to the front, or to a standalone process) before it drains. Default 0.
    ///
    /// Behind a load balancer or in Kubernetes, endpoint removal propagates only after the
    /// stop signal: for a few seconds new connections keep coming, and a listener closed at
    /// once refuses them. During the delay [`is_stopping`](crate::is_stopping) is true, so a
    /// health check can answer 503 and hasten the balancer.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// # async fn run() -> std::io::Result<()> {
    /// let listener = risefront::Builder::new()
    ///     .stop_delay(Duration::from_secs(5)) // the balancer's health-check interval
    ///     .bind(["0.0.0.0:8080"])
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn stop_delay(mut self, delay: Duration) -> Self {
        self.stop_delay = delay;
        self
    }

    /// How long a superseded generation stays on probation after a takeover. Default 10 s;
    /// zero turns probation off. `RISEFRONT_PROBATION` overrides it.
    ///
    /// During the window the superseded generation stops accepting and tells its clients to
    /// leave, exactly as when draining, but it keeps its copies of the listening sockets and
    /// does not exit. If the generation that took over dies inside the window (a panic on the
    /// first real request, an out-of-memory kill), the front reinstates this one: it accepts
    /// again within milliseconds, [`is_draining`](crate::is_draining) turns false, and the
    /// failed build is not started again until the next upgrade. A generation that hangs
    /// instead (stopped, a deadlocked runtime) counts as dead: during the window the front
    /// asks it every second whether it is alive, and one that leaves a question unanswered
    /// for 3 s is killed once this one is reinstated. After the window, and once the new
    /// generation answered a question asked after it, this one finishes draining and exits as
    /// usual; its [`superseded`](crate::superseded) and
    /// [`drained`](crate::drained) resolve only then. The cost is one idle process for the
    /// window. The value that counts is the superseded generation's own.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// # async fn run() -> std::io::Result<()> {
    /// let listener = risefront::Builder::new()
    ///     .probation(Duration::from_secs(30)) // the new build loads its config lazily
    ///     .bind(["0.0.0.0:8080"])
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn probation(mut self, window: Duration) -> Self {
        self.probation = window;
        self
    }

    /// Over how long a draining generation spreads the `Connection: close` answers that send
    /// its keep-alive clients to the new generation, HAProxy's `close-spread-time`. Default
    /// 250 ms; zero closes every connection on its next response. `RISEFRONT_CLOSE_SPREAD`
    /// overrides it.
    ///
    /// With a thousand busy keep-alive connections, closing them all on their next response
    /// makes all of them reconnect to the new generation within a millisecond or two, and the
    /// requests queued behind that burst are the run's slowest. Spread, the generation answers
    /// `Connection: close` to as many responses as the time elapsed allows (connections open at
    /// the takeover × elapsed / window) and keeps the others alive a little longer. Keep it
    /// well below the [idle grace](Self::idle_grace) when probation is off: connections still
    /// open when the grace ends are closed by the server's graceful shutdown, and an idle one
    /// closed that way may race a request the client is sending. Applies to [`DrainLayer`]
    /// and [`GracefulServer`](crate::GracefulServer).
    ///
    /// [`DrainLayer`]: crate::DrainLayer
    #[must_use]
    pub fn close_spread(mut self, window: Duration) -> Self {
        self.close_spread = window;
        self
    }

    /// Whether idle HTTP/1 keep-alive connections move to the generation that takes over
    /// (default: yes). `RISEFRONT_HANDOFF=off` (or `on`) overrides it.
    ///
    /// At a takeover, a [`GracefulServer`](crate::GracefulServer) hands each plain HTTP/1
    /// connection, at its next idle point (between requests, never in the middle of one), to
    /// the new generation with the bytes it already read of the next request: the client keeps
    /// its connection and never sees the upgrade. What cannot move is closed as before
    /// (`Connection: close` on its next response, GOAWAY for HTTP/2): TLS, HTTP/2, upgraded
    /// connections (WebSocket), and every connection served by `axum::serve` or another
    /// server. The new generation takes handed-over connections from its listener's `accept`
    /// like new ones, whatever server it runs. Turned off, this generation neither sends nor
    /// takes any. On Windows, too: connections travel as `WSADuplicateSocketW` protocol info
    /// over a private pipe between the two generations.
    #[must_use]
    pub fn connection_handoff(mut self, enabled: bool) -> Self {
        self.handoff = enabled;
        self
    }

    /// The private directory for the control endpoint: the socket on Unix, the file that
    /// names the pipe on Windows. `RISEFRONT_DIR` overrides it.
    ///
    /// By default it is `$RUNTIME_DIRECTORY/risefront` under systemd's `RuntimeDirectory=`,
    /// else `$XDG_RUNTIME_DIR/risefront`, else `risefront-<uid>` in the temporary directory
    /// (on Windows: `%LOCALAPPDATA%\risefront`). Whatever the choice, it must belong to the
    /// user and be closed to others (mode 0700), or `bind` refuses it: a directory someone else
    /// controls could hand this service their sockets. The `/tmp` fallback can be taken first
    /// by another local user; set this, `RISEFRONT_DIR` or `RuntimeDirectory=` for services.
    #[must_use]
    pub fn control_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.control_dir = Some(dir.into());
        self
    }

    /// Binds the addresses plainly in this process: no front, no handoff. For tests and
    /// debugging; `RISEFRONT=off` in the environment does the same.
    #[must_use]
    pub fn standalone(mut self) -> Self {
        self.standalone = true;
        self
    }

    /// Reports readiness only when [`crate::ready`] is called,
    /// instead of when the server first polls the listener; until then the listener accepts
    /// nothing and the previous generation keeps serving. For apps whose server loop starts
    /// before they are warm (caches, connection pools).
    #[must_use]
    pub fn manual_ready(mut self) -> Self {
        self.manual_ready = true;
        self
    }

    /// The file mode of the Unix domain sockets the front creates for `unix:` addresses, for
    /// example `0o660` to let a reverse proxy in the same group connect. Without it the mode
    /// is what the process's umask gives (commonly `0o755`; connecting needs write
    /// permission). The mode is set right after the socket is bound; to have no instant with
    /// a wider mode, set a umask, or put the socket in a directory only the intended clients
    /// can enter. Sockets systemd passes keep the mode systemd gave them (`SocketMode=`).
    /// Ignored for TCP addresses. `RISEFRONT_UNIX_MODE=660` (octal) overrides it at run time.
    ///
    /// ```no_run
    /// # async fn run() -> std::io::Result<()> {
    /// let listener = risefront::Builder::new()
    ///     .unix_mode(0o660)
    ///     .bind(["unix:/run/app/http.sock"])
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn unix_mode(mut self, mode: u32) -> Self {
        self.unix_mode = Some(mode);
        self
    }

    /// Binds `addrs`: joins the running front as a new generation, or becomes the front.
    ///
    /// The front (the first process for this service) binds the addresses, starts the first
    /// generation by running this program again with the same arguments, and never returns
    /// from this call: it exits when told to stop (SIGTERM, SIGINT, Ctrl-C). Errors are
    /// returned only before that point, for example when an address is already in use.
    ///
    /// # Errors
    ///
    /// For the causes a program may handle (an address in use, a refused control directory,
    /// a bad address or setting, `bind` called twice, a front of another release) the
    /// `io::Error` carries a [`BindError`](crate::BindError) saying which, with what it is
    /// about; other failures (a system call, a timeout) are plain `io::Error`s with context.
    pub async fn bind<I, A>(self, addrs: I) -> io::Result<RiseFrontListener>
    where
        I: IntoIterator<Item = A>,
        A: ToListenAddr,
    {
        let addrs = resolve(addrs).await?;
        let config = self.config(&addrs)?;
        // A front that re-executed itself into this build goes on here, as the front.
        front::resume_if_reexecuted(&config).await?;
        if let Some(request) = env_upgrade()? {
            // `ExecReload=` for any program: ask the running front, report, exit.
            let endpoint = Endpoint::for_service(&config.name, config.control_dir.as_deref())?;
            let outcome = match request {
                UpgradeRequest::Generation => crate::upgrade::request(&endpoint, &config)
                    .await
                    .map(|generation| format!("upgraded: generation {generation} is serving")),
                UpgradeRequest::Front => {
                    crate::upgrade::reexec(&endpoint, &config)
                        .await
                        .map(|generation| {
                            format!(
                                "the front re-executed into the serving build; generation {generation} is serving"
                            )
                        })
                }
            };
            let code = match outcome {
                Ok(said) => {
                    println!("risefront: {said}");
                    0
                }
                Err(e) => {
                    eprintln!("{e}");
                    1
                }
            };
            std::process::exit(code);
        }
        if config.standalone {
            return RiseFrontListener::standalone(&addrs, &config).await;
        }
        process::claim()?;
        // Spawned by the front: the channel is already connected, whoever crowds the endpoint.
        if let Some(stream) = handoff::inherited_channel()? {
            // Its stderr is a pipe the front reads until it is ready (`front/tail.rs`).
            handoff::borrow_stderr();
            return generation::join(stream, &config, &addrs).await;
        }
        let endpoint = Endpoint::for_service(&config.name, config.control_dir.as_deref())?;
        let deadline = deadline_after(Instant::now(), config.handshake_timeout);
        let mut asked_to_reexec = false;
        loop {
            if let Some(stream) = endpoint.connect().await? {
                match generation::join(stream, &config, &addrs).await {
                    Err(e) if !asked_to_reexec && front_can_reexec_into_us(&e) => {
                        asked_to_reexec = true;
                        reexec_front_into_this(&endpoint, &config).await?;
                        continue;
                    }
                    joined => return joined,
                }
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

    /// Asks the running front for `addrs` to re-execute into the serving build; see
    /// [`risefront::reexec_front`](crate::reexec_front).
    pub async fn reexec_front<I, A>(self, addrs: I) -> Result<u64, UpgradeError>
    where
        I: IntoIterator<Item = A>,
        A: ToListenAddr,
    {
        let (_, config, endpoint) = self.front_for(addrs).await?;
        crate::upgrade::reexec(&endpoint, &config).await
    }

    /// Where a control client finds the running front for `addrs`.
    async fn front_for<I, A>(
        self,
        addrs: I,
    ) -> Result<(Vec<Target>, Config, Endpoint), UpgradeError>
    where
        I: IntoIterator<Item = A>,
        A: ToListenAddr,
    {
        let addrs = resolve(addrs).await?;
        let config = self.config(&addrs)?;
        let endpoint = Endpoint::for_service(&config.name, config.control_dir.as_deref())?;
        Ok((addrs, config, endpoint))
    }

    /// Asks the running front for `addrs` to start a new generation; see [`upgrade`](fn@crate::upgrade).
    pub async fn upgrade<I, A>(self, addrs: I) -> Result<u64, UpgradeError>
    where
        I: IntoIterator<Item = A>,
        A: ToListenAddr,
    {
        let (addrs, config, endpoint) = self.front_for(addrs).await?;
        match crate::upgrade::request(&endpoint, &config).await {
            Err(UpgradeError::NoFront {
                service,
                endpoint: path,
                holder: None,
            }) => {
                // Nothing answers where we looked: whoever holds the address may say where to.
                let port = addrs.iter().find_map(Target::tcp_port);
                let ours = std::path::PathBuf::from(&path);
                Err(UpgradeError::NoFront {
                    holder: port.and_then(|port| crate::holder::of_port(port, Some(&ours))),
                    service,
                    endpoint: path,
                })
            }
            other => other,
        }
    }

    fn config(&self, addrs: &[Target]) -> io::Result<Config> {
        warn_unknown_vars();
        // Read by `TlsListener`, after `bind`: a bad value must stop the start here.
        env_tls_handshake_timeout()?;
        let from_env = std::env::var(NAME_VAR).ok().filter(|n| !n.is_empty());
        let name = match from_env.as_ref().or(self.name.as_ref()) {
            Some(name) => validate_name(name)?,
            None => {
                let named: Vec<_> = addrs.iter().map(Target::named).collect();
                derive_name(&program_name(), &named)
            }
        };
        Ok(Config {
            name,
            ready_timeout: nonzero_timeout(
                READY_TIMEOUT_VAR,
                "Builder::ready_timeout",
                self.ready_timeout,
                "every new generation would fail its start",
            )?,
            drain_timeout: nonzero_timeout(
                DRAIN_TIMEOUT_VAR,
                "Builder::drain_timeout",
                self.drain_timeout,
                "every superseded generation would be cut off with its requests",
            )?,
            handshake_timeout: nonzero_timeout(
                control_handshake_var(),
                "Builder::control_handshake_timeout",
                self.control_handshake_timeout,
                "every control peer would be dropped before it says hello",
            )?,
            idle_grace: env_duration("RISEFRONT_IDLE_GRACE")?.unwrap_or(self.idle_grace),
            stop_delay: env_duration("RISEFRONT_STOP_DELAY")?.unwrap_or(self.stop_delay),
            probation: env_duration("RISEFRONT_PROBATION")?.unwrap_or(self.probation),
            close_spread: env_duration("RISEFRONT_CLOSE_SPREAD")?.unwrap_or(self.close_spread),
            control_dir: std::env::var_os("RISEFRONT_DIR")
                .filter(|d| !d.is_empty())
                .map(std::path::PathBuf::from)
                .or_else(|| self.control_dir.clone()),
            standalone: self.standalone || env_off()?,
            manual_ready: self.manual_ready,
            unix_mode: env_unix_mode()?.or(self.unix_mode),
            handoff: env_handoff()?.unwrap_or(self.handoff),
        })
    }
}
