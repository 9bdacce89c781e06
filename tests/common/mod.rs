//! Shared harness for the end-to-end tests: real processes on loopback, every wait bounded,
//! and every process killed and every file removed when a test ends, even by panic.

#![allow(dead_code)]

pub mod load;
pub mod raw;
pub mod tls;
#[cfg(windows)]
mod windows;

use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
#[cfg(unix)]
use rustix::process::{Pid, Signal};

/// Upper bound for anything a test waits for; generous because CI machines are slow and noisy.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The control protocol version this build speaks (`src/protocol.rs`), for the tests that
/// write raw frames.
pub const PROTOCOL_VERSION: u8 = 8;

/// A raw `Hello` frame as a peer speaking protocol `version` writes it: `pid`, `role` (1
/// generation, 2 control client), ready, drain and probation timeouts of 60 s, 30 s and 10 s,
/// no program described and (from version 7) no addresses. For the tests that write frames by
/// hand, so that a protocol change is made here once.
pub fn raw_hello(version: u8, pid: u32, role: u8) -> Vec<u8> {
    let mut payload = pid.to_be_bytes().to_vec();
    payload.push(role);
    payload.extend(60_000u64.to_be_bytes());
    payload.extend(30_000u64.to_be_bytes());
    payload.extend(10_000u64.to_be_bytes());
    payload.extend(0u16.to_be_bytes());
    if version >= 7 {
        payload.extend(0u16.to_be_bytes());
    }
    let mut frame = u32::try_from(payload.len() + 2)
        .expect("a short frame")
        .to_be_bytes()
        .to_vec();
    frame.extend([version, 1]);
    frame.extend(payload);
    frame
}

/// Path of an example binary, next to the test binaries.
///
/// `cargo test --all-targets` compiles the examples only as test harnesses (with hashed
/// names), so on Unix the first call builds them as plain binaries with the same cargo and
/// profile: a no-op when they are fresh, and never a stale binary after a library change.
/// Under Wine there is no cargo to call; `ci/windows-test.sh` builds them first.
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    #[cfg(unix)]
    build_examples(dir);
    let path = dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is missing: build the examples first (`cargo build --examples`; ci/test does)",
        path.display()
    );
    path
}

#[cfg(unix)]
fn build_examples(profile_dir: &Path) {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let Some(cargo) = std::env::var_os("CARGO") else {
            return;
        };
        let mut command = Command::new(cargo);
        command
            .args(["build", "--examples", "--quiet", "--manifest-path"])
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"));
        // The tests' own features, so the library is not built a second time (and the `tls`
        // example is built at all).
        if cfg!(feature = "tls") {
            command.args(["--features", "tls"]);
        }
        if profile_dir.file_name().is_some_and(|p| p == "release") {
            command.arg("--release");
        }
        let status = command.status().expect("run cargo build --examples");
        assert!(status.success(), "cargo build --examples failed");
    });
}

/// The `hello` example built one control protocol version ahead of this build
/// (`RISEFRONT_PROTOCOL_NEXT`, see `src/protocol.rs`), as a newer risefront release would be: in
/// its own target directory (`target/protocol-next`), so that the examples every other test
/// runs stay this build's. The first call builds it (its dependencies too: a few minutes on a
/// cold cache); `ci/test` builds it before the suite.
#[cfg(unix)]
pub fn next_protocol_hello() -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let target = profile_dir.parent().expect("target").join("protocol-next");
    BUILT.call_once(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--example", "hello", "--quiet", "--manifest-path"])
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .arg("--target-dir")
            .arg(&target)
            .env("RISEFRONT_PROTOCOL_NEXT", "1")
            .status()
            .expect("run cargo build --example hello");
        assert!(status.success(), "building the next-protocol hello failed");
    });
    target.join("debug").join("examples").join("hello")
}

/// A loopback port nobody listens on right now.
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

/// `build` copied to `<dir>/<name>/hello`, as a deploy lays releases out: the same file name in
/// each, so that every release is the same service. Returns the release's directory.
#[allow(dead_code)] // Not every test crate deploys releases.
pub fn release(dir: &TempDir, name: &str, build: &Path) -> PathBuf {
    let release = dir.0.join(name);
    fs::create_dir(&release).expect("release directory");
    fs::copy(build, release.join("hello")).expect("copy the build");
    release
}

/// A private scratch directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "rf-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// What `GET /` says: `hello from generation <N> pid <PID>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    pub generation: u64,
    pub pid: u32,
}

pub fn parse_hello(body: &str) -> Option<Hello> {
    let rest = body.trim_end().strip_prefix("hello from generation ")?;
    let (generation, pid) = rest.split_once(" pid ")?;
    Some(Hello {
        generation: generation.parse().ok()?,
        pid: pid.parse().ok()?,
    })
}

/// A running service: the front started from `exe`, in its own process group, with its own
/// runtime directory and log file.
pub struct Service {
    /// The first address; `addrs` has them all.
    pub addr: SocketAddr,
    pub addrs: Vec<SocketAddr>,
    /// More arguments after the TCP addresses (`unix:` addresses, say), in every command line
    /// of the service, `--upgrade` included.
    pub args: Vec<String>,
    pub exe: PathBuf,
    pub dir: TempDir,
    pub env: Vec<(String, String)>,
    front: Child,
    others: Vec<Child>,
}

impl Service {
    /// Starts `hello` on a free port and waits until it answers.
    pub async fn start() -> Service {
        Self::start_with(&example("hello"), &[]).await
    }

    /// Starts `exe` (which follows hello's contract) with extra environment variables.
    pub async fn start_with(exe: &Path, env: &[(&str, &str)]) -> Service {
        let service = Self::spawn(exe, env);
        service.wait_generation(1).await;
        // Generation 1 answers a moment before the front has heard it is ready; a SIGHUP in
        // between is refused as "an upgrade is already in progress" (seen in CI). Programs
        // that log (all but `minimal`) said "front started" by now; wait for the ready line.
        if service.log().contains("front started for service") {
            service.wait_log("generation 1 ready after").await;
        }
        service
    }

    /// Starts the front without waiting for it to answer.
    pub fn spawn(exe: &Path, env: &[(&str, &str)]) -> Service {
        Self::spawn_on(exe, env, 1)
    }

    /// Starts the front on `count` free addresses, without waiting for it to answer.
    pub fn spawn_on(exe: &Path, env: &[(&str, &str)], count: usize) -> Service {
        let addrs: Vec<SocketAddr> = (0..count).map(|_| free_addr()).collect();
        Self::spawn_on_addrs(exe, env, addrs)
    }

    /// Starts the front on `addr` (which may be taken), without waiting for it to answer.
    pub fn spawn_at(exe: &Path, env: &[(&str, &str)], addr: SocketAddr) -> Service {
        Self::spawn_on_addrs(exe, env, vec![addr])
    }

    fn spawn_on_addrs(exe: &Path, env: &[(&str, &str)], addrs: Vec<SocketAddr>) -> Service {
        Self::spawn_wrapped(&[], exe, env, addrs, Vec::new())
    }

    /// Starts the front on a free TCP address followed by `args`, without waiting for it to
    /// answer.
    pub fn spawn_with_args(exe: &Path, env: &[(&str, &str)], args: &[String]) -> Service {
        Self::spawn_wrapped(&[], exe, env, vec![free_addr()], args.to_vec())
    }

    /// Starts the front as `wrapper... exe ADDR` (a program that sets up the environment and
    /// execs `exe`, like `systemd-socket-activate`).
    pub fn spawn_via(
        wrapper: &[String],
        exe: &Path,
        env: &[(&str, &str)],
        addr: SocketAddr,
    ) -> Service {
        Self::spawn_wrapped(wrapper, exe, env, vec![addr], Vec::new())
    }

    /// `spawn_via` with more arguments after the address.
    pub fn spawn_via_with_args(
        wrapper: &[String],
        exe: &Path,
        env: &[(&str, &str)],
        addr: SocketAddr,
        args: &[String],
    ) -> Service {
        Self::spawn_wrapped(wrapper, exe, env, vec![addr], args.to_vec())
    }

    fn spawn_wrapped(
        wrapper: &[String],
        exe: &Path,
        env: &[(&str, &str)],
        addrs: Vec<SocketAddr>,
        args: Vec<String>,
    ) -> Service {
        let dir = TempDir::new();
        let run = dir.0.join("run");
        fs::create_dir_all(&run).expect("runtime dir");
        #[cfg(unix)]
        set_mode(&run, 0o700);
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut command = command_for(exe, &addrs, &args, &dir.0, &env, &[]);
        if let Some((program, args)) = wrapper.split_first() {
            let mut wrapped = Command::new(program);
            wrapped.args(args).arg(command.get_program());
            wrapped.args(command.get_args());
            for (key, value) in command.get_envs() {
                match value {
                    Some(value) => wrapped.env(key, value),
                    None => wrapped.env_remove(key),
                };
            }
            let log = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.0.join("service.log"))
                .expect("log file");
            wrapped
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log file"))
                .stderr(log);
            command = wrapped;
        }
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let front = spawn_retrying(&mut command).expect("start the front");
        Service {
            addr: addrs[0],
            addrs,
            args,
            exe: exe.to_owned(),
            dir,
            env,
            front,
            others: Vec::new(),
        }
    }

    pub fn runtime_dir(&self) -> PathBuf {
        self.dir.0.join("run")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.0.join("service.log")
    }

    /// Everything the front and its generations logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The service's binary with its address, environment and log, not yet started.
    pub fn command(&self, extra_env: &[(&str, &str)]) -> Command {
        command_for(
            &self.exe,
            &self.addrs,
            &self.args,
            &self.dir.0,
            &self.env,
            extra_env,
        )
    }

    pub fn front_pid(&self) -> u32 {
        self.front.id()
    }

    /// Starts the binary a second time, as an operator deploying a new build by hand would.
    pub fn start_again(&mut self, extra_env: &[(&str, &str)]) -> u32 {
        let mut command = self.command(extra_env);
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut command, self.front.id() as i32);
        let child = spawn_retrying(&mut command).expect("start again");
        let pid = child.id();
        self.others.push(child);
        pid
    }

    /// Starts another program (not the service's) with the service's addresses, environment
    /// and log, as a process started by hand; returns its pid.
    pub fn start_program(&mut self, exe: &Path, extra_env: &[(&str, &str)]) -> u32 {
        self.start_program_in(exe, None, extra_env)
    }

    /// [`start_program`](Self::start_program), in the working directory `cwd`.
    pub fn start_program_in(
        &mut self,
        exe: &Path,
        cwd: Option<&Path>,
        extra_env: &[(&str, &str)],
    ) -> u32 {
        let mut command = command_for(
            exe,
            &self.addrs,
            &self.args,
            &self.dir.0,
            &self.env,
            extra_env,
        );
        if let Some(cwd) = cwd {
            command.current_dir(cwd);
        }
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut command, self.front.id() as i32);
        let child = spawn_retrying(&mut command).expect("start a program");
        let pid = child.id();
        self.others.push(child);
        pid
    }

    /// Waits (bounded) for the front to exit by itself.
    pub fn wait_front_exit(&mut self) -> ExitStatus {
        wait_child(&mut self.front, PATIENCE)
            .unwrap_or_else(|| panic!("the front did not exit:\n{}", self.log()))
    }

    /// Waits for a process this harness started by hand (not the front) to exit.
    pub fn wait_other(&mut self, pid: u32) -> ExitStatus {
        let child = self
            .others
            .iter_mut()
            .find(|c| c.id() == pid)
            .expect("a process started by this harness");
        wait_child(child, PATIENCE).expect("process did not exit in time")
    }

    #[cfg(unix)]
    pub fn signal_front(&self, signal: Signal) {
        signal_pid(self.front.id(), signal);
    }

    /// The control endpoint the front announced in its start-up log line (`control=...`): the
    /// socket path on Unix, the pipe name on Windows.
    pub async fn control_endpoint(&self) -> String {
        self.wait_log("control=").await;
        let log = self.log();
        log.split("control=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .map(|endpoint| endpoint.trim_matches('"').to_owned())
            .unwrap_or_else(|| panic!("no control endpoint in the log:\n{log}"))
    }

    /// `hello --upgrade ADDR`: asks the front for a new generation and waits for the outcome.
    /// Async, so that load running on the same runtime keeps going during the takeover.
    pub async fn upgrade_command(&self) -> Output {
        let mut command = tokio::process::Command::new(&self.exe);
        command
            .arg("--upgrade")
            .args(self.addrs.iter().map(ToString::to_string))
            .args(&self.args)
            .env("XDG_RUNTIME_DIR", self.runtime_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // Wine's occasional ERROR_INTERNAL_ERROR on process creation, as in `spawn_retrying`.
        let mut attempts = 0;
        let child = loop {
            match command.spawn() {
                Err(e) if cfg!(windows) && e.raw_os_error() == Some(1359) && attempts < 5 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => break other.expect("spawn --upgrade"),
            }
        };
        tokio::time::timeout(PATIENCE, child.wait_with_output())
            .await
            .expect("--upgrade did not finish in time")
            .expect("--upgrade output")
    }

    /// `GET path` on a new connection.
    pub async fn get(&self, path: &str) -> Result<(u16, String), String> {
        get(self.addr, path).await
    }

    /// `GET /`, which must succeed.
    pub async fn hello(&self) -> Hello {
        let (status, body) = self.get("/").await.expect("GET /");
        assert_eq!(status, 200, "GET / answered {status}: {body}");
        parse_hello(&body).unwrap_or_else(|| panic!("unexpected body {body:?}"))
    }

    /// Polls `GET /` until generation `n` answers; every request must succeed meanwhile
    /// (except, for generation 1, while the front is still binding).
    pub async fn wait_generation(&self, n: u64) -> Hello {
        self.poll_generation(n, n == 1).await
    }

    /// Like `wait_generation`, tolerating failed requests (after a generation was killed).
    pub async fn wait_generation_allowing_errors(&self, n: u64) -> Hello {
        self.poll_generation(n, true).await
    }

    pub async fn poll_generation(&self, n: u64, tolerate_errors: bool) -> Hello {
        self.poll_generation_with(n, tolerate_errors, || self.get("/"))
            .await
    }

    /// `poll_generation`, with `get` making each `GET /` (over TLS, say).
    pub async fn poll_generation_with<F, R>(&self, n: u64, tolerate_errors: bool, get: F) -> Hello
    where
        F: Fn() -> R,
        R: std::future::Future<Output = Result<(u16, String), String>>,
    {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let last = get().await;
            match &last {
                Ok((200, body)) => {
                    let hello =
                        parse_hello(body).unwrap_or_else(|| panic!("unexpected body {body:?}"));
                    if hello.generation == n {
                        return hello;
                    }
                    assert!(
                        hello.generation < n,
                        "expected generation {n}, got {hello:?}\n{}",
                        self.log()
                    );
                }
                Ok((status, body)) => panic!("GET / answered {status}: {body}"),
                Err(e) => assert!(
                    tolerate_errors,
                    "request failed while waiting for generation {n}: {e}\n{}",
                    self.log()
                ),
            }
            assert!(
                Instant::now() < deadline,
                "generation {n} never answered (last: {last:?})\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls the log until it contains `needle`.
    pub async fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "log never said {needle:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM to the front, then waits (bounded) for it to exit.
    #[cfg(unix)]
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal_front(Signal::TERM);
        wait_child(&mut self.front, PATIENCE).expect("front did not exit after SIGTERM")
    }

    /// Whether any process of the service (front, generations, hand-started ones) is alive.
    #[cfg(unix)]
    pub fn any_alive(&mut self) -> bool {
        for child in &mut self.others {
            let _ = child.try_wait();
        }
        let _ = self.front.try_wait();
        Pid::from_raw(self.front.id() as i32)
            .is_some_and(|pgid| rustix::process::test_kill_process_group(pgid).is_ok())
    }
}

/// Starts `command`. Under Wine, process creation now and then fails with
/// `ERROR_INTERNAL_ERROR` (1359) while many processes come and go; that is Wine's, not the
/// crate's, so it is retried a few times there.
fn spawn_retrying(command: &mut Command) -> std::io::Result<Child> {
    let mut attempts = 0;
    loop {
        match command.spawn() {
            Err(e) if cfg!(windows) && e.raw_os_error() == Some(1359) && attempts < 5 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
            other => return other,
        }
    }
}

fn command_for(
    exe: &Path,
    addrs: &[SocketAddr],
    args: &[String],
    dir: &Path,
    env: &[(String, String)],
    extra_env: &[(&str, &str)],
) -> Command {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("service.log"))
        .expect("log file");
    let mut command = Command::new(exe);
    command
        .args(addrs.iter().map(ToString::to_string))
        .args(args)
        .env("XDG_RUNTIME_DIR", dir.join("run"))
        .env("RUST_LOG", "info")
        .env_remove("RISEFRONT")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log);
    for (k, v) in env {
        command.env(k, v);
    }
    for (k, v) in extra_env {
        command.env(k, v);
    }
    command
}

#[cfg(unix)]
impl Drop for Service {
    fn drop(&mut self) {
        let pgid = self.front.id();
        if matches!(self.front.try_wait(), Ok(None)) {
            signal_pid(pgid, Signal::TERM);
            let _ = wait_child(&mut self.front, Duration::from_secs(5));
        }
        if let Some(pgid) = Pid::from_raw(pgid as i32) {
            let _ = rustix::process::kill_process_group(pgid, Signal::KILL);
        }
        let _ = self.front.kill();
        let _ = self.front.wait();
        for child in &mut self.others {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Windows has no process groups to kill at once: kill the front, the processes started by
/// hand, and every generation the front logged (checked by image name, so a reused pid of an
/// unrelated process is left alone).
#[cfg(windows)]
impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.front.kill();
        let _ = self.front.wait();
        for child in &mut self.others {
            let _ = child.kill();
            let _ = child.wait();
        }
        let image = self
            .exe
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        for pid in logged_pids(&self.log()) {
            windows::kill_if_image(pid, &image);
        }
    }
}

/// Every `(pid N)` the front logged.
pub fn logged_pids(log: &str) -> Vec<u32> {
    let mut pids: Vec<u32> = log
        .split("(pid ")
        .skip(1)
        .filter_map(|rest| rest.split(')').next()?.parse().ok())
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

#[cfg(unix)]
pub fn signal_pid(pid: u32, signal: Signal) {
    if let Some(pid) = Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// Kills `pid` at once: SIGKILL on Unix, `TerminateProcess` on Windows.
pub fn kill_pid(pid: u32) {
    #[cfg(unix)]
    signal_pid(pid, Signal::KILL);
    #[cfg(windows)]
    windows::kill_if_image(pid, "");
}

/// Whether `pid` still runs.
#[cfg(windows)]
pub fn alive(pid: u32) -> bool {
    windows::alive(pid)
}

/// Whether `pid` still runs. A zombie (exited, not yet reaped: hand-started generations are
/// the test's own children) counts as gone.
#[cfg(unix)]
pub fn alive(pid: u32) -> bool {
    if let Some(stat) = proc_stat(pid) {
        return stat
            .first()
            .is_some_and(|state| state != "Z" && state != "X");
    }
    Pid::from_raw(pid as i32).is_some_and(|p| rustix::process::test_kill_process(p).is_ok())
}

/// The fields of `/proc/<pid>/stat` after the command name (Linux), starting with the state
/// (field 3 in `proc(5)`'s numbering); `None` where there is no such file.
#[cfg(unix)]
pub fn proc_stat(pid: u32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is parenthesised and may itself contain spaces or parentheses.
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Polls until `pid` is gone.
pub async fn wait_gone(pid: u32) {
    let deadline = Instant::now() + PATIENCE;
    while alive(pid) {
        assert!(Instant::now() < deadline, "pid {pid} still alive");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn wait_child(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command to completion, killing it if it takes longer than `limit`.
pub fn run_bounded(mut command: Command, limit: Duration) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    if wait_child(&mut child, limit).is_none() {
        let _ = child.kill();
    }
    child.wait_with_output().expect("collect output")
}

#[cfg(unix)]
pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Where a test sends requests: a TCP address, a Unix domain socket, or TLS over TCP (with
/// the client configurations for HTTP/1.1 and HTTP/2, see `tls::load_target`).
#[derive(Debug, Clone)]
pub enum Target {
    Tcp(SocketAddr),
    #[cfg(unix)]
    Unix(PathBuf),
    Tls {
        addr: SocketAddr,
        http1: std::sync::Arc<tokio_rustls::rustls::ClientConfig>,
        http2: std::sync::Arc<tokio_rustls::rustls::ClientConfig>,
    },
}

impl From<SocketAddr> for Target {
    fn from(addr: SocketAddr) -> Target {
        Target::Tcp(addr)
    }
}

/// One `GET` on a fresh connection with hyper's client, no retries, bounded in time.
pub async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    get_from(&Target::Tcp(addr), path).await
}

/// `get` for any target.
pub async fn get_from(target: &Target, path: &str) -> Result<(u16, String), String> {
    let attempt = async {
        match target {
            Target::Tcp(addr) => {
                let stream = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                get_over(stream, &addr.to_string(), path).await
            }
            #[cfg(unix)]
            Target::Unix(socket) => {
                let stream = tokio::net::UnixStream::connect(socket)
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                get_over(stream, "localhost", path).await
            }
            Target::Tls { addr, http1, .. } => {
                let got = tls::get(*addr, http1, path).await?;
                Ok((got.status, got.body))
            }
        }
    };
    tokio::time::timeout(PATIENCE, attempt)
        .await
        .unwrap_or_else(|_| Err("timed out".to_owned()))
}

/// One HTTP/1.1 `GET` on an open connection.
async fn get_over<S>(stream: S, host: &str, path: &str) -> Result<(u16, String), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, host)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    read_response(response).await
}

/// A response's status and whole body (as text).
pub async fn read_response(
    response: hyper::Response<hyper::body::Incoming>,
) -> Result<(u16, String), String> {
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The ways to ask for a new generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// Start the binary again with the same addresses.
    StartAgain,
    /// `kill -HUP <front>`.
    #[cfg(unix)]
    Hangup,
    /// `hello --upgrade`.
    Command,
}

impl Way {
    /// The three ways in turn, for the `i`-th upgrade.
    #[cfg(unix)]
    pub fn nth(i: usize) -> Way {
        [Way::StartAgain, Way::Hangup, Way::Command][i % 3]
    }

    /// The two ways Windows has (no SIGHUP) in turn, for the `i`-th upgrade.
    #[cfg(windows)]
    pub fn nth(i: usize) -> Way {
        [Way::StartAgain, Way::Command][i % 2]
    }
}

impl Service {
    /// Asks for generation `n` in the given way and waits until it answers.
    pub async fn upgrade(&mut self, way: Way, n: u64) -> Hello {
        self.request_upgrade(way).await;
        self.wait_generation(n).await
    }

    /// Asks for a new generation in the given way; `--upgrade` must report success (it
    /// returns once the new generation is ready).
    pub async fn request_upgrade(&mut self, way: Way) {
        match way {
            Way::StartAgain => {
                self.start_again(&[]);
            }
            #[cfg(unix)]
            Way::Hangup => self.signal_front(Signal::HUP),
            Way::Command => {
                let output = self.upgrade_command().await;
                assert!(output.status.success(), "--upgrade failed: {output:?}");
            }
        }
    }

    /// Open descriptors and resident memory (KiB) of the front, from /proc.
    pub fn front_resources(&self) -> (usize, u64) {
        let pid = self.front_pid();
        let fds = fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0);
        let rss = fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0);
        (fds, rss)
    }
}
