//! End-to-end: what reaches the control socket cannot stop serving or upgrading.

mod common;

use std::time::Duration;

use common::Service;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

fn socket_path(service: &Service) -> std::path::PathBuf {
    service
        .runtime_dir()
        .join("risefront")
        .join(format!("127.0.0.1_{}.sock", service.addr.port()))
}

/// Sends `bytes` and expects the front to hang up on us within the handshake deadline.
async fn expect_dropped(service: &Service, bytes: &[u8]) {
    let mut stream = UnixStream::connect(socket_path(service)).await.unwrap();
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
        &[("RISEFRONT_HANDSHAKE_TIMEOUT", "2s")],
    )
    .await;
    let g1 = service.hello().await;

    expect_dropped(&service, b"GET / HTTP/1.1\r\nHost: evil\r\n\r\n").await;
    expect_dropped(&service, &[0xff, 0xff, 0xff, 0xff]).await;
    // A valid frame of the wrong kind: Ready before any Hello.
    expect_dropped(&service, &[0, 0, 0, 2, 1, 3]).await;
    // Silence: dropped at the handshake deadline.
    expect_dropped(&service, &[]).await;

    assert_eq!(service.hello().await, g1, "serving goes on");
    let output = service.upgrade_command();
    assert!(
        output.status.success(),
        "upgrade after garbage failed: {output:?}"
    );
    assert_eq!(service.hello().await.generation, 2);
}
