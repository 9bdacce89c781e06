//! `bind`'s errors are values: each cause a caller may handle is a `BindError` variant inside
//! the `io::Error`, with the kind and the words it had when it was prose.
//!
//! Everything here runs in the test process. The calls that are not standalone fail after
//! `bind` claimed the process and before anything could become a front, so this process never
//! turns into one; they are in one test because the claim is once per process.

use std::io;
use std::time::Duration;

use risefront::{BindError, Builder};

fn bind_error(e: &io::Error) -> &BindError {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<BindError>())
        .unwrap_or_else(|| panic!("no BindError in {e:?}"))
}

#[tokio::test]
async fn bad_addresses_are_invalid_address_or_no_address() {
    let e = Builder::new()
        .standalone()
        .bind(["unix:"])
        .await
        .expect_err("unix: with no path");
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    assert!(
        matches!(bind_error(&e), BindError::InvalidAddress { address, .. } if address == "unix:"),
        "{e:?}"
    );
    assert!(e.to_string().contains("no path after \"unix:\""), "{e}");

    let e = Builder::new()
        .standalone()
        .bind(["localhost8080"])
        .await
        .expect_err("no port");
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    assert!(
        matches!(bind_error(&e), BindError::InvalidAddress { address, reason }
            if address == "localhost8080" && reason.contains("HOST:PORT")),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .contains("cannot use address \"localhost8080\""),
        "{e}"
    );

    let e = Builder::new()
        .standalone()
        .bind(Vec::<std::net::SocketAddr>::new())
        .await
        .expect_err("no address");
    assert!(matches!(bind_error(&e), BindError::NoAddress), "{e:?}");

    let e = "not an address"
        .parse::<risefront::ListenAddr>()
        .expect_err("not an address");
    assert!(
        matches!(bind_error(&e), BindError::InvalidAddress { address, .. } if address == "not an address"),
        "{e:?}"
    );
}

#[cfg(windows)]
#[tokio::test]
async fn unix_addresses_are_unsupported_on_windows() {
    let e = Builder::new()
        .standalone()
        .bind(["unix:C:\\app.sock"])
        .await
        .expect_err("unix: on Windows");
    assert_eq!(e.kind(), io::ErrorKind::Unsupported);
    assert!(
        matches!(bind_error(&e), BindError::UnsupportedAddress { address, .. } if address.starts_with("unix:")),
        "{e:?}"
    );
}

#[tokio::test]
async fn an_address_another_program_holds_is_address_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("take a port");
    let addr = taken.local_addr().expect("address");
    let e = Builder::new()
        .standalone()
        .bind([addr])
        .await
        .expect_err("the port is taken");
    assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
    let BindError::AddressInUse { address, source } = bind_error(&e) else {
        panic!("{e:?}");
    };
    assert_eq!(address, &addr.to_string());
    assert_eq!(source.kind(), io::ErrorKind::AddrInUse);
    assert!(
        e.to_string().contains("is in use by another program"),
        "{e}"
    );
    drop(taken);
}

#[tokio::test]
async fn a_zero_ready_timeout_is_an_invalid_setting() {
    let e = Builder::new()
        .standalone()
        .ready_timeout(Duration::ZERO)
        .bind(["127.0.0.1:0"])
        .await
        .expect_err("a zero ready timeout");
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    assert!(
        matches!(bind_error(&e), BindError::InvalidSetting { setting, .. } if setting == "Builder::ready_timeout"),
        "{e:?}"
    );
}

#[tokio::test]
async fn an_invalid_service_name_is_named() {
    let e = Builder::new()
        .standalone()
        .name("../etc")
        .bind(["127.0.0.1:0"])
        .await
        .expect_err("a name with a slash");
    assert!(
        matches!(bind_error(&e), BindError::InvalidServiceName { name } if name == "../etc"),
        "{e:?}"
    );
}

/// The first call is refused for its control directory (after it claimed the process), the
/// second because `bind` was already called.
#[tokio::test]
async fn a_refused_control_dir_then_a_second_bind() {
    let scratch = std::env::temp_dir().join(format!("risefront-errors-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    #[cfg(unix)]
    let dir = {
        use std::os::unix::fs::PermissionsExt;
        let open = scratch.join("open");
        std::fs::create_dir_all(&open).expect("dir");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        open
    };
    // Windows refuses no directory for its mode; a file where the directory should be fails
    // as surely, after the claim.
    #[cfg(windows)]
    let dir = {
        let file = scratch.join("file");
        std::fs::write(&file, b"").expect("file");
        file
    };
    let first = Builder::new()
        .name("errors-test")
        .control_dir(&dir)
        .bind(["127.0.0.1:0"])
        .await
        .expect_err("the control directory is refused");
    #[cfg(unix)]
    {
        assert_eq!(first.kind(), io::ErrorKind::PermissionDenied);
        let BindError::ControlDirRefused { path, reason, .. } = bind_error(&first) else {
            panic!("{first:?}");
        };
        assert_eq!(path, &dir);
        assert!(reason.contains("755"), "{reason}");
        assert!(
            first
                .to_string()
                .contains("refusing to use control directory"),
            "{first}"
        );
    }
    #[cfg(windows)]
    let _ = first;

    let second = Builder::new()
        .name("errors-test")
        .bind(["127.0.0.1:0"])
        .await
        .expect_err("bind twice");
    assert_eq!(second.kind(), io::ErrorKind::AlreadyExists);
    assert!(
        matches!(bind_error(&second), BindError::AlreadyBound),
        "{second:?}"
    );
    assert!(
        second.to_string().contains("bind was already called"),
        "{second}"
    );
    let _ = std::fs::remove_dir_all(&scratch);
}
