//! End-to-end: what reaches the control socket cannot stop serving or upgrading.

mod common;

use std::time::Duration;

use common::Service;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[cfg(unix)]
fn socket_path(service: &Service) -> std::path::PathBuf {
    service
        .runtime_dir()
        .join("risefront")
        .join(format!("hello-127.0.0.1_{}.sock", service.addr.port()))
}

/// A raw connection to the front's control endpoint, as any local process could open.
#[cfg(unix)]
async fn connect(service: &Service) -> tokio::net::UnixStream {
    tokio::net::UnixStream::connect(socket_path(service))
        .await
        .unwrap()
}

/// A raw connection to the front's control pipe, as any process of the user could open.
#[cfg(windows)]
async fn connect(service: &Service) -> tokio::net::windows::named_pipe::NamedPipeClient {
    let pipe = service.control_endpoint().await;
    let deadline = std::time::Instant::now() + common::PATIENCE;
    loop {
        match tokio::net::windows::named_pipe::ClientOptions::new().open(&pipe) {
            Ok(client) => return client,
            // Every instance busy for a moment: the front creates the next one right away.
            Err(e) if e.raw_os_error() == Some(231) && std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("open {pipe}: {e}"),
        }
    }
}

/// Sends `bytes` and reads everything the front answers until it hangs up; `None` if it has
/// not hung up within `limit`.
async fn exchange(service: &Service, bytes: &[u8], limit: Duration) -> Option<Vec<u8>> {
    let mut stream = connect(service).await;
    stream.write_all(bytes).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 256];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.is_ok().then_some(answer)
}

/// Sends `bytes` and expects the front to hang up on us within the handshake deadline.
async fn expect_dropped(service: &Service, bytes: &[u8]) {
    let mut stream = connect(service).await;
    let _ = stream.write_all(bytes).await;
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                // An error frame may come first; the close must follow.
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the front kept a misbehaving peer connected");
}

#[tokio::test]
async fn garbage_and_oversized_frames_are_dropped() {
    let service = Service::start_with(
        &common::example("hello"),
        &[("RISEFRONT_CONTROL_HANDSHAKE_TIMEOUT", "2s")],
    )
    .await;
    let g1 = service.hello().await;

    expect_dropped(&service, b"GET / HTTP/1.1\r\nHost: evil\r\n\r\n").await;
    expect_dropped(&service, &[0xff, 0xff, 0xff, 0xff]).await;
    // A valid frame of the wrong kind: Ready before any Hello.
    expect_dropped(&service, &[0, 0, 0, 2, 2, 3]).await;
    // A Hello from a build that speaks the first protocol version.
    expect_dropped(&service, &[0, 0, 0, 7, 1, 1, 0, 0, 0, 9, 1]).await;
    // Silence: dropped at the handshake deadline.
    expect_dropped(&service, &[]).await;

    assert_eq!(service.hello().await, g1, "serving goes on");
    let output = service.upgrade_command().await;
    assert!(
        output.status.success(),
        "upgrade after garbage failed: {output:?}"
    );
    service.wait_generation(2).await;
}

#[tokio::test]
async fn a_peer_claiming_another_process_id_is_refused() {
    let service = Service::start().await;
    let g1 = service.hello().await;

    // A Hello that claims to be the active generation (role 1, its pid), in our version.
    let hello = common::raw_hello(common::PROTOCOL_VERSION, g1.pid, 1);
    let answer = exchange(&service, &hello, Duration::from_secs(10)).await;
    let answer = answer.expect("the front kept an impostor connected");
    // An Error frame (kind 8), and no Listeners frame (kind 2) handed to the impostor.
    assert_eq!(
        answer.get(5),
        Some(&8),
        "expected an error frame: {answer:?}"
    );
    let reason = String::from_utf8_lossy(&answer);
    assert!(
        reason.contains(&format!("claims pid {}", g1.pid)),
        "{reason}"
    );

    assert_eq!(service.hello().await, g1, "serving goes on");
    let output = service.upgrade_command().await;
    assert!(
        output.status.success(),
        "upgrade after an impostor failed: {output:?}"
    );
    service.wait_generation(2).await;
}

/// Another user could create a pipe under a predictable name before the front does. The name
/// is random, announced in a file of the user's own: a pipe squatting the name earlier
/// releases used (`\\.\pipe\risefront-<SID>-<service>`) changes nothing.
#[cfg(windows)]
#[tokio::test]
async fn a_pipe_squatting_the_predictable_name_changes_nothing() {
    use tokio::net::windows::named_pipe::ServerOptions;

    // Learn this user's pipe prefix from a service of our own.
    let probe = Service::start().await;
    let endpoint = probe.control_endpoint().await;
    let prefix = endpoint
        .split("-hello-")
        .next()
        .expect("a risefront pipe name")
        .to_owned();
    drop(probe);

    let addr = common::free_addr();
    let squatted = format!("{prefix}-hello-127.0.0.1_{}", addr.port());
    let _squat = ServerOptions::new()
        .first_pipe_instance(true)
        .create(&squatted)
        .expect("create the squatting pipe");
    let service = common::Service::spawn_at(&common::example("hello"), &[], addr);
    let g1 = service.wait_generation(1).await;
    assert_ne!(service.control_endpoint().await, squatted);
    let output = service.upgrade_command().await;
    assert!(output.status.success(), "{output:?}");
    assert_ne!(service.hello().await, g1);
}

/// A control client of the previous release (protocol one version back, as an old
/// `app --upgrade` or `risefrontctl` speaks it) still upgrades the service, and is answered in
/// its own version.
#[tokio::test]
async fn a_control_client_of_the_previous_protocol_version_is_answered_in_it() {
    let service = Service::start().await;
    let old = common::PROTOCOL_VERSION - 1;
    // Version 7's Hello (role 2, control), then Upgrade (kind 5).
    let mut frames = common::raw_hello(old, std::process::id(), 2);
    assert_eq!(
        &frames[..4],
        &[0, 0, 0, 35],
        "version 7's Hello is 35 bytes long"
    );
    frames.extend([0, 0, 0, 2, old, 5]);
    let answer = exchange(&service, &frames, common::PATIENCE)
        .await
        .unwrap_or_else(|| panic!("no answer to the upgrade:\n{}", service.log()));
    // Upgraded (kind 6) to generation 2, in version 7.
    let mut upgraded = vec![0, 0, 0, 10, old, 6];
    upgraded.extend(2u64.to_be_bytes());
    assert_eq!(answer, upgraded, "{}", service.log());
    assert_eq!(service.hello().await.generation, 2);
}

/// `RISEFRONT_UPGRADE=front` (for any program, as `RISEFRONT_UPGRADE=1` is `ExecReload=`'s
/// upgrade) and `hello --upgrade-front`: the front re-executes into the serving build, keeping
/// its pid and the serving generation (Unix), or says it cannot (Windows, which has no `exec`
/// that keeps handles); either way generation 1 serves on.
#[tokio::test]
async fn an_upgrade_of_the_front_itself_re_executes_it_or_says_why_not() {
    let service = Service::start().await;
    let g1 = service.hello().await;
    let by_env = service.command(&[("RISEFRONT_UPGRADE", "front")]);
    let mut by_flag = service.command(&[]);
    by_flag.arg("--upgrade-front");
    for (how, command) in [
        ("RISEFRONT_UPGRADE=front", by_env),
        ("--upgrade-front", by_flag),
    ] {
        let output = common::run_bounded(command, common::PATIENCE);
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let log = service.log();
        if cfg!(windows) {
            assert_eq!(output.status.code(), Some(1), "{how}: {said}\n{log}");
            assert!(
                said.contains("cannot re-execute itself"),
                "{how}: {said}\n{log}"
            );
        } else {
            assert!(output.status.success(), "{how}: {said}\n{log}");
            assert!(
                said.contains("re-executed into the serving build; generation 1 is serving"),
                "{how}: {said}\n{log}"
            );
            assert!(common::alive(service.front_pid()));
        }
        assert_eq!(service.hello().await, g1, "{how}: {}", service.log());
    }
    if !cfg!(windows) {
        let log = service.log();
        assert_eq!(log.matches("front re-executed into").count(), 2, "{log}");
    }
}
