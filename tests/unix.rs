//! Unix domain socket listeners, end to end: upgrades under load over the socket lose
//! nothing, the socket file is bound once and never replaced during upgrades, a stale file is
//! replaced, a live one that belongs to something else is refused, and `ConnectInfo` says
//! what a Unix client is.

#![cfg(unix)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use common::load::{self, Kind};
use common::{Service, Target, TempDir, Way, example, get_from, parse_hello, wait_gone};

const UPGRADES: usize = 20;
/// Responses from a generation that show the load has reached it.
const SETTLED: u64 = 30;

fn inode(path: &Path) -> (u64, u64) {
    let meta = std::fs::symlink_metadata(path).expect("socket file");
    (meta.dev(), meta.ino())
}

/// `exe unix:PATH` next to the harness's TCP address (which the harness polls).
fn spawn_on_socket(exe: &Path, socket: &Path) -> Service {
    Service::spawn_with_args(exe, &[], &[format!("unix:{}", socket.display())])
}

/// Load over the Unix socket only, through 20 upgrades alternating the three ways; the TCP
/// address is only for the harness to see which generation serves.
async fn upgrades_under_load(exe: &Path, mix: &[(Kind, usize, &str)]) {
    let scratch = TempDir::new();
    let socket = scratch.0.join("http.sock");
    let mut service = spawn_on_socket(exe, &socket);
    service.wait_generation(1).await;
    let bound = inode(&socket);
    let load = load::start(Target::Unix(socket.clone()), mix);
    let mut pids = vec![service.hello().await.pid];
    for i in 0..UPGRADES {
        load.served_by(i as u64 + 1, SETTLED).await;
        pids.push(service.upgrade(Way::nth(i), i as u64 + 2).await.pid);
    }
    load.served_by(UPGRADES as u64 + 1, SETTLED).await;
    let report = load.stop().await;
    println!("over a Unix socket: {}", report.summary(UPGRADES));
    if report.failed > 0 {
        // Shown with the failure: what the service did around the failed requests.
        println!("the service's log:\n{}", service.log());
    }

    assert_eq!(report.failed, 0, "{}", report.summary(UPGRADES));
    assert_eq!(report.refused, 0);
    assert_eq!(
        report.generations.iter().copied().collect::<Vec<_>>(),
        (1..=UPGRADES as u64 + 1).collect::<Vec<_>>(),
        "every generation served over the socket"
    );
    // Bound once by the front: never unlinked and bound again by a generation.
    assert_eq!(inode(&socket), bound, "the socket file was replaced");
    for pid in &pids[..pids.len() - 1] {
        wait_gone(*pid).await;
    }
    let status = service.terminate();
    assert!(
        status.success(),
        "front exit: {status:?}\n{}",
        service.log()
    );
    assert!(
        !socket.exists(),
        "a stopped service leaves its socket file behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_across_20_upgrades_over_a_unix_socket() {
    upgrades_under_load(
        &example("hello"),
        &[
            (Kind::NewConnection, 16, "/"),
            (Kind::KeepAlive, 8, "/"),
            (Kind::KeepAlive, 8, "/slow?ms=50"),
        ],
    )
    .await;
}

/// `GracefulServer` drains the same over a Unix socket: HTTP/2 streams get GOAWAY, HTTP/1
/// keep-alive gets `Connection: close`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_server_drains_http2_over_a_unix_socket() {
    upgrades_under_load(
        &example("hyper"),
        &[
            (Kind::NewConnection, 8, "/"),
            (Kind::KeepAlive, 8, "/"),
            (Kind::Http2 { streams: 8 }, 2, "/"),
        ],
    )
    .await;
}

#[tokio::test]
async fn a_stale_socket_file_is_replaced() {
    let scratch = TempDir::new();
    let socket = scratch.0.join("http.sock");
    // What a killed server leaves: the file, and nothing listening on it.
    drop(UnixListener::bind(&socket).expect("bind"));
    // The operator's mode for the new file, from the environment.
    let service = Service::spawn_with_args(
        &example("hello"),
        &[("RISEFRONT_UNIX_MODE", "0600")],
        &[format!("unix:{}", socket.display())],
    );
    service.wait_generation(1).await;
    let (status, body) = get_from(&Target::Unix(socket.clone()), "/")
        .await
        .expect("GET / over the socket");
    assert_eq!(status, 200);
    assert_eq!(parse_hello(&body).map(|h| h.generation), Some(1), "{body}");
    service.wait_log("replacing the stale socket file").await;
    let mode = std::fs::metadata(&socket).expect("socket").mode() & 0o777;
    assert_eq!(mode, 0o600, "RISEFRONT_UNIX_MODE=0600 gave {mode:o}");
}

#[tokio::test]
async fn a_live_socket_of_another_program_is_refused() {
    let scratch = TempDir::new();
    let socket = scratch.0.join("http.sock");
    let theirs = UnixListener::bind(&socket).expect("bind");
    let mut service = spawn_on_socket(&example("hello"), &socket);
    let status = service.wait_front_exit();
    assert!(!status.success(), "started on a live socket: {status:?}");
    let log = service.log();
    assert!(
        log.contains("is in use: another process accepts connections on it"),
        "{log}"
    );
    // Their socket is untouched: the probe's connection, then a new one, are theirs.
    theirs.set_nonblocking(false).expect("blocking");
    theirs.accept().expect("the probe");
    let _client = UnixStream::connect(&socket).expect("connect to theirs");
    theirs.accept().expect("still accepting");
}

#[tokio::test]
async fn a_path_that_is_not_a_socket_is_refused() {
    let scratch = TempDir::new();
    let path: PathBuf = scratch.0.join("http.sock");
    std::fs::write(&path, "not a socket").expect("write");
    let mut service = spawn_on_socket(&example("hello"), &path);
    let status = service.wait_front_exit();
    assert!(!status.success());
    assert!(
        service.log().contains("is not a socket"),
        "{}",
        service.log()
    );
    assert_eq!(
        std::fs::read_to_string(&path).expect("read"),
        "not a socket"
    );
}

#[tokio::test]
async fn a_front_that_fails_to_start_leaves_no_socket_file() {
    let scratch = TempDir::new();
    let socket = scratch.0.join("http.sock");
    // Bound after the socket, so the front fails with the socket file already made.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = taken.local_addr().expect("address");
    let args = [format!("unix:{}", socket.display()), taken.to_string()];
    let mut service = Service::spawn_with_args(&example("hello"), &[], &args);
    let status = service.wait_front_exit();
    assert!(!status.success());
    assert!(service.log().contains("in use"), "{}", service.log());
    assert!(!socket.exists(), "the failed front left {socket:?} behind");
}

/// In this process: `ConnectInfo<risefront::Addr>` is `Addr::Unix` with the client's
/// credentials over the socket and the client's address over TCP, from one listener bound on
/// both.
#[cfg(feature = "axum")]
#[tokio::test]
async fn connect_info_says_unix_or_the_client_address() {
    use axum::extract::ConnectInfo;

    let scratch = TempDir::new();
    let socket = scratch.0.join("info.sock");
    let listener = risefront::Builder::new()
        .standalone()
        .unix_mode(0o600)
        .bind([
            format!("unix:{}", socket.display()),
            "127.0.0.1:0".to_owned(),
        ])
        .await
        .expect("bind");
    let local = listener.local_addrs().to_vec();
    assert_eq!(local[0], risefront::ListenAddr::unix(&socket));
    let tcp = local[1].tcp().expect("a TCP address");
    let mode = std::fs::metadata(&socket).expect("socket").mode() & 0o777;
    assert_eq!(mode, 0o600);
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(
            |ConnectInfo(client): ConnectInfo<risefront::Addr>| async move {
                let peer = match client {
                    risefront::Addr::Unix(peer) => format!("{:?} {:?}", peer.uid(), peer.pid()),
                    _ => "-".to_owned(),
                };
                format!("{client} {:?} {peer}", client.ip())
            },
        ),
    );
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<risefront::Addr>(),
        )
        .await
    });
    let (_, over_unix) = get_from(&Target::Unix(socket.clone()), "/")
        .await
        .expect("GET over the socket");
    // The client is this very process.
    let uid = rustix::process::getuid().as_raw();
    let pid = std::process::id();
    assert_eq!(over_unix, format!("unix None Some({uid}) Some({pid})"));
    let (_, over_tcp) = get_from(&Target::Tcp(tcp), "/")
        .await
        .expect("GET over TCP");
    assert!(over_tcp.starts_with("127.0.0.1:"), "{over_tcp}");
    assert!(over_tcp.ends_with("Some(127.0.0.1) -"), "{over_tcp}");
}
