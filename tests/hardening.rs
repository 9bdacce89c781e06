//! End-to-end: nothing a local process sends the front, and no resource exhaustion in a
//! generation, takes the service down. Unix-only mechanisms (uids, file modes, rlimits); the
//! Windows counterparts live in `control.rs`.

#![cfg(unix)]

mod common;

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Service, example, run_bounded, set_mode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Raw frame: `len | version | kind | payload`.
fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = ((payload.len() + 2) as u32).to_be_bytes().to_vec();
    out.extend([common::PROTOCOL_VERSION, kind]);
    out.extend_from_slice(payload);
    out
}

/// `Hello { pid, role, ready, drain, probation }`; role 1 = generation, 2 = control client.
fn hello(pid: u32, role: u8) -> Vec<u8> {
    common::raw_hello(common::PROTOCOL_VERSION, pid, role)
}

/// Writes `bytes` with `fds` attached to them (`SCM_RIGHTS`).
fn send_with_fds(stream: &UnixStream, bytes: &[u8], fds: &[std::net::TcpListener]) {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    use std::io::IoSlice;
    use std::mem::MaybeUninit;
    use std::os::fd::AsFd;
    let borrowed: Vec<_> = fds.iter().map(|l| l.as_fd()).collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    assert!(control.push(SendAncillaryMessage::ScmRights(&borrowed)));
    let sent = rustix::net::sendmsg(
        stream,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::empty(),
    )
    .expect("sendmsg with descriptors");
    assert_eq!(sent, bytes.len());
}

/// Waits until the front hangs up on `stream`; returns how long that took.
async fn time_until_dropped(stream: &mut UnixStream) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 512];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the front kept a misbehaving peer for 10 s");
    started.elapsed()
}

#[tokio::test]
async fn slow_silent_and_flooding_peers_are_dropped_at_the_handshake_deadline() {
    let service = Service::start_with(
        &example("hello"),
        &[("RISEFRONT_CONTROL_HANDSHAKE_TIMEOUT", "1s")],
    )
    .await;
    let g1 = service.hello().await;
    let socket = service.control_endpoint().await;
    let (_, rss_before) = service.front_resources();

    // Slowloris: a valid Hello, one byte every 300 ms (3 s in all).
    let mut slow = UnixStream::connect(&socket).await.unwrap();
    let bytes = hello(std::process::id(), 2);
    // Returns how long until the front hung up on it, if it did.
    let dripping = tokio::spawn(async move {
        let started = Instant::now();
        for byte in bytes {
            if slow.write_all(&[byte]).await.is_err() {
                return Some(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let mut rest = [0u8; 64];
        match tokio::time::timeout(Duration::from_secs(10), slow.read(&mut rest)).await {
            Ok(Ok(0)) | Ok(Err(_)) => Some(started.elapsed()),
            _ => None,
        }
    });

    // A control client that says hello and then nothing.
    let mut silent = UnixStream::connect(&socket).await.unwrap();
    silent
        .write_all(&hello(std::process::id(), 2))
        .await
        .unwrap();
    let took = time_until_dropped(&mut silent).await;
    assert!(took < Duration::from_secs(3), "silent peer kept {took:?}");

    // A peer claiming Ready without any handshake.
    let mut liar = UnixStream::connect(&socket).await.unwrap();
    liar.write_all(&frame(3, &[])).await.unwrap();
    let took = time_until_dropped(&mut liar).await;
    assert!(
        took < Duration::from_secs(2),
        "unintroduced Ready kept {took:?}"
    );

    // A thousand connections at once, none saying anything.
    raise_fd_limit(4096);
    let mut flood = Vec::new();
    let mut refused = 0;
    for _ in 0..1000 {
        match UnixStream::connect(&socket).await {
            Ok(stream) => flood.push(stream),
            Err(_) => refused += 1,
        }
    }
    assert_eq!(
        service.hello().await,
        g1,
        "serving goes on during the flood"
    );
    let started = Instant::now();
    for stream in &mut flood {
        let mut buf = [0u8; 16];
        let done = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await;
        assert!(
            matches!(done, Ok(Ok(0)) | Ok(Err(_))),
            "a flood connection is still open"
        );
    }
    println!(
        "{} flood connections dropped within {:?} ({refused} not even accepted by the kernel)",
        flood.len(),
        started.elapsed()
    );
    drop(flood);
    // The Hello takes 7 s to drip in; the handshake deadline is 1 s.
    let dropped = dripping.await.unwrap();
    assert!(
        dropped.is_some_and(|after| after < Duration::from_secs(4)),
        "the dripping peer was not dropped at the handshake deadline: {dropped:?}"
    );

    let (_, rss_after) = service.front_resources();
    assert!(
        rss_after < rss_before + 8 * 1024,
        "front memory grew from {rss_before} KiB to {rss_after} KiB"
    );
    assert_eq!(service.hello().await, g1);
    let output = service.upgrade_command().await;
    assert!(
        output.status.success(),
        "a real upgrade right after: {output:?}"
    );
    assert_eq!(service.hello().await.generation, 2);
}

fn raise_fd_limit(wanted: u64) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    let hard = limit.maximum.unwrap_or(wanted);
    if limit.current.is_some_and(|c| c < wanted.min(hard)) {
        limit.current = Some(wanted.min(hard));
        let _ = setrlimit(Resource::Nofile, limit);
    }
}

/// Runs `command` as `nobody` (CI runs as root; elsewhere this test needs root to switch).
fn as_nobody(command: &mut std::process::Command) -> &mut std::process::Command {
    command.uid(65534).gid(65534)
}

#[tokio::test]
async fn another_user_cannot_reach_or_talk_to_the_front() {
    if !rustix::process::getuid().is_root() {
        eprintln!("skipped: switching to another uid needs root (CI runs as root)");
        return;
    }
    let service = Service::start().await;
    let g1 = service.hello().await;
    let socket = service.control_endpoint().await;
    let run = service.runtime_dir();

    // A private runtime directory of nobody's own, where the service's socket path leads to
    // the real socket: the client gets past its own directory checks and reaches the front.
    let theirs = service.dir.0.join("nobody-run");
    fs::create_dir_all(theirs.join("risefront")).unwrap();
    let link = theirs
        .join("risefront")
        .join(Path::new(&socket).file_name().unwrap());
    std::os::unix::fs::symlink(&socket, &link).unwrap();
    for dir in [&theirs, &theirs.join("risefront")] {
        rustix::fs::chown(dir, Some(uid(65534)), Some(gid(65534))).unwrap();
        set_mode(dir, 0o700);
    }
    let mut upgrade = std::process::Command::new(example("hello"));
    upgrade
        .arg("--upgrade")
        .arg(service.addr.to_string())
        .env("XDG_RUNTIME_DIR", &theirs);
    as_nobody(&mut upgrade);

    // 1. The front's directory is 0700: nobody cannot even reach the socket.
    let output = run_bounded(clone_command(&upgrade), common::PATIENCE);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Permission denied"), "{stderr}");

    // 2. Even if the directory and socket were opened up by mistake, the front checks the
    //    peer's uid on every connection and refuses.
    set_mode(&service.dir.0, 0o755);
    set_mode(&run, 0o711);
    set_mode(&run.join("risefront"), 0o711);
    set_mode(Path::new(&socket), 0o777);
    let output = run_bounded(clone_command(&upgrade), common::PATIENCE);
    set_mode(&run, 0o700);
    set_mode(&run.join("risefront"), 0o700);
    assert!(
        !output.status.success(),
        "nobody upgraded the service: {output:?}"
    );
    service.wait_log("runs as uid 65534").await;

    assert_eq!(service.hello().await, g1, "serving goes on");
    let output = service.upgrade_command().await;
    assert!(
        output.status.success(),
        "the owner still upgrades: {output:?}"
    );
}

fn uid(raw: u32) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw(raw)
}

fn gid(raw: u32) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(raw)
}

fn clone_command(command: &std::process::Command) -> std::process::Command {
    let mut copy = std::process::Command::new(command.get_program());
    copy.args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => copy.env(key, value),
            None => copy.env_remove(key),
        };
    }
    as_nobody(&mut copy);
    copy
}

#[tokio::test]
async fn a_front_directory_owned_by_someone_else_is_refused() {
    let dir = common::TempDir::new();
    let run = dir.0.join("run");
    fs::create_dir_all(run.join("risefront")).unwrap();
    set_mode(&run, 0o700);
    set_mode(&run.join("risefront"), 0o755);
    let mut command = std::process::Command::new(example("hello"));
    command
        .arg(common::free_addr().to_string())
        .env("XDG_RUNTIME_DIR", &run);
    let output = run_bounded(command, common::PATIENCE);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("refusing to use control directory") && stderr.contains("0700"),
        "{stderr}"
    );
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn accept_backs_off_on_emfile_and_recovers() {
    let mut service = Service::start().await;
    let g1 = service.hello().await;
    // Lower the running generation's descriptor limit to something a test can exhaust.
    let pid = rustix::process::Pid::from_raw(g1.pid as i32).unwrap();
    let low = rustix::process::Rlimit {
        current: Some(64),
        maximum: Some(64),
    };
    rustix::process::prlimit(Some(pid), rustix::process::Resource::Nofile, low).unwrap();

    // Hold many connections open (hyper waits for their requests): the generation runs out of
    // descriptors and the rest wait in the kernel's queue.
    let mut held = Vec::new();
    for _ in 0..100 {
        held.push(tokio::net::TcpStream::connect(service.addr).await.unwrap());
    }
    service.wait_log("accept failed").await;
    let cpu_before = cpu_ticks(g1.pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let busy = cpu_ticks(g1.pid) - cpu_before;
    // 2 s of a spinning accept loop would be ~200 ticks; backing off costs next to nothing.
    assert!(
        busy < 50,
        "the generation spun on EMFILE: {busy} ticks in 2 s"
    );
    let warnings = service.log().matches("accept failed").count();
    assert!(
        warnings < 30,
        "{warnings} accept warnings in ~2 s: no backoff"
    );

    drop(held);
    // Descriptors free up: the same generation accepts again.
    let deadline = Instant::now() + common::PATIENCE;
    loop {
        match service.get("/").await {
            Ok((200, body)) => {
                assert_eq!(common::parse_hello(&body), Some(g1));
                break;
            }
            other => assert!(Instant::now() < deadline, "never recovered: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    service.terminate();
}

/// utime + stime of `pid`, in clock ticks.
#[cfg(target_os = "linux")]
fn cpu_ticks(pid: u32) -> u64 {
    let fields = common::proc_stat(pid).unwrap_or_default();
    // proc(5) numbers utime 14 and stime 15; `proc_stat` starts at the state, field 3.
    let field = |n: usize| {
        fields
            .get(n - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(14) + field(15)
}

#[tokio::test]
async fn two_processes_starting_at_once_make_one_front() {
    let first = Service::spawn(&example("hello"), &[]);
    let mut second = first.command(&[]);
    second.process_group(first.front_pid() as i32);
    let second = second.spawn().unwrap();
    let pids = [first.front_pid(), second.id()];
    let _guard = KillOnDrop(second);

    // Either may win the race; whichever logged "front started" is the front.
    first.wait_log("front started").await;
    let log = first.log();
    let front: u32 = log
        .split("front started")
        .nth(1)
        .and_then(|rest| rest.split("pid=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no front pid in the log:\n{log}"));
    assert!(
        pids.contains(&front),
        "the front is one of the two: {front} vs {pids:?}"
    );
    let other = if front == pids[0] { pids[1] } else { pids[0] };

    // The other one joins as a generation, or is refused and exits with a clear message.
    let deadline = Instant::now() + common::PATIENCE;
    loop {
        let log = first.log();
        let joined = log.contains(&format!("pid {other}) starting (started by hand)"));
        let refused = log.contains("refused a new generation");
        if joined || refused || !common::alive(other) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the other process neither joined nor left\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + common::PATIENCE;
    while first.get("/").await.is_err() {
        assert!(Instant::now() < deadline, "the service never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = first.log();
    assert_eq!(
        log.matches("front started").count(),
        1,
        "exactly one front:\n{log}"
    );
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn no_message_lets_a_peer_redirect_traffic() {
    let service = Service::start_with(
        &example("hello"),
        &[("RISEFRONT_CONTROL_HANDSHAKE_TIMEOUT", "2s")],
    )
    .await;
    let g1 = service.hello().await;
    let socket = service.control_endpoint().await;
    let (fds_before, _) = service.front_resources();

    // After a valid hello, every message only the front may send is a protocol violation:
    // Listeners (with a blob that could name anything), Superseded, Upgraded, Shutdown, Error.
    let mut listeners = 1u64.to_be_bytes().to_vec();
    listeners.extend(1u16.to_be_bytes());
    let path = b"/tmp/evil.sock";
    listeners.extend((path.len() as u16).to_be_bytes());
    listeners.extend_from_slice(path);
    let evil_listeners: Vec<std::net::TcpListener> = (0..8)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let upgraded = 7u64.to_be_bytes().to_vec();
    let mut error = (4u16).to_be_bytes().to_vec();
    error.extend_from_slice(b"evil");
    for (kind, payload) in [
        (2u8, listeners),
        (4, Vec::new()),
        (6, upgraded),
        (7, Vec::new()),
        (8, error),
        (12, Vec::new()),
        (13, Vec::new()),
    ] {
        // As a control client: introducing ourselves as a generation would make the front
        // treat this test process as one, and kill it for misbehaving.
        let mut peer = UnixStream::connect(&socket).await.unwrap();
        let mut bytes = hello(std::process::id(), 2);
        bytes.extend(frame(kind, &payload));
        // With descriptors attached (SCM_RIGHTS), as a generation receives its listeners: a
        // listening socket of our own, which the front must neither keep nor use.
        send_with_fds(&peer, &bytes, &evil_listeners);
        let took = time_until_dropped(&mut peer).await;
        assert!(took < Duration::from_secs(5), "kind {kind}: kept {took:?}");
    }
    service.wait_log("unexpected Listeners").await;
    // Traffic never moved: the same generation answers on the same address.
    assert_eq!(service.hello().await, g1);
    let (fds_after, _) = service.front_resources();
    assert!(
        fds_after <= fds_before + 1,
        "the front opened something: {fds_before} -> {fds_after} descriptors"
    );
    let output = service.upgrade_command().await;
    assert!(output.status.success(), "{output:?}");
    assert_eq!(service.hello().await.generation, 2);
}
