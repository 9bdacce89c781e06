//! End-to-end: what a new user runs into in the first hour. A test that calls `bind` finishes;
//! a program with no log subscriber still says why it stopped; another program on a taken
//! address is refused and changes nothing; bad addresses are named; a failed start leaves no
//! file behind.

mod common;

use std::process::Command;

use common::{PATIENCE, Service, TempDir, example, run_bounded};

/// The `bind_in_a_test` test binary cargo built beside this one (the newest, if several).
#[cfg(feature = "axum")]
fn fixture() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let deps = exe.parent().expect("deps directory");
    std::fs::read_dir(deps)
        .expect("read deps")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with("bind_in_a_test-")
                && (p.extension().is_none() || p.extension().is_some_and(|e| e == "exe"))
        })
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .expect("the bind_in_a_test binary (cargo test --all-targets builds it)")
}

/// The fixture run as `cargo test` would run it, in a private runtime directory.
#[cfg(feature = "axum")]
fn run_fixture(mode: &str, dir: &std::path::Path) -> std::process::Output {
    let run = dir.join("run");
    std::fs::create_dir_all(&run).expect("runtime dir");
    #[cfg(unix)]
    common::set_mode(&run, 0o700);
    let mut command = Command::new(fixture());
    command
        .arg("--test-threads=1")
        .env("BIND_IN_A_TEST_MODE", mode)
        .env("XDG_RUNTIME_DIR", &run)
        .env_remove("RUST_LOG")
        .env_remove("RISEFRONT");
    run_bounded(command, PATIENCE)
}

// The fixture serves with axum.
#[cfg(feature = "axum")]
#[test]
fn a_test_that_calls_bind_finishes() {
    let dir = TempDir::new();
    let started = std::time::Instant::now();
    let output = run_fixture("serve", &dir.0);
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("a test calling bind finished in {took:?}");
    assert!(
        output.status.success(),
        "{:?}\n{stdout}\n{stderr}",
        output.status
    );
    let passes = stdout.matches("test result: ok. 1 passed").count();
    assert_eq!(
        passes, 1,
        "the test ran {passes} times:\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("exited with status 0 by itself"),
        "the service ending is said on stderr:\n{stderr}"
    );
}

#[cfg(feature = "axum")]
#[test]
fn a_program_without_a_log_subscriber_that_never_serves_says_why() {
    let dir = TempDir::new();
    let output = run_fixture("never-serves", &dir.0);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stderr}\n{stdout}");
    assert!(stderr.contains("risefront: "), "{stderr}");
    assert!(stderr.contains("the front gives up"), "{stderr}");
    // "exit status: 3" on Unix, "exit code: 3" on Windows.
    assert!(stderr.contains(": 3"), "{stderr}");
}

#[tokio::test]
async fn another_program_on_a_taken_address_is_refused_and_changes_nothing() {
    let mut service = Service::start().await;
    let g1 = service.hello().await;
    let pid = service.start_program(&example("minimal"), &[]);
    let status = service.wait_other(pid);
    assert!(!status.success(), "the other program started");
    let log = service.log();
    #[cfg(unix)]
    assert!(
        log.contains("is in use by risefront service")
            && log.contains(&format!("hello-127.0.0.1_{}", service.addr.port())),
        "{log}"
    );
    #[cfg(windows)]
    assert!(log.contains("is in use"), "{log}");
    assert_eq!(service.hello().await, g1, "the service was not touched");

    // A build of the same program from another path is an upgrade, as before.
    let elsewhere = TempDir::new();
    let copy = elsewhere.0.join(
        example("hello")
            .file_name()
            .expect("the example's file name"),
    );
    std::fs::copy(example("hello"), &copy).expect("copy hello");
    service.start_program(&copy, &[]);
    service.wait_generation(2).await;
    #[cfg(target_os = "linux")]
    assert!(
        service.log().contains(&copy.display().to_string()),
        "the front says which executable the new generation runs:\n{}",
        service.log()
    );
}

#[test]
fn bad_addresses_are_named_with_the_expected_form() {
    // (":8080" is taken as localhost by Windows' resolver.)
    #[cfg(unix)]
    let bad_ones = ["localhost8080", "0.0.0.0", ":8080", ""];
    #[cfg(windows)]
    let bad_ones = ["localhost8080", "0.0.0.0", ""];
    for bad in bad_ones {
        let mut command = Command::new(example("hello"));
        command.arg(bad).env_remove("RISEFRONT");
        let output = run_bounded(command, PATIENCE);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{bad:?} was accepted");
        assert!(
            stderr.contains(&format!("cannot use address {bad:?}")) && stderr.contains("HOST:PORT"),
            "{bad:?}: {stderr}"
        );
    }
    let mut command = Command::new(example("hello"));
    command.arg("unix:").env_remove("RISEFRONT");
    let output = run_bounded(command, PATIENCE);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "\"unix:\" was accepted");
    assert!(stderr.contains("no path after \"unix:\""), "{stderr}");
}

#[cfg(unix)]
#[tokio::test]
async fn a_start_that_fails_leaves_no_file_behind() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("take a port");
    let addr = taken.local_addr().expect("address");
    let mut service = Service::spawn_at(&example("hello"), &[], addr);
    let status = service.wait_front_exit();
    assert!(!status.success());
    let log = service.log();
    assert!(log.contains("is in use by another program"), "{log}");
    let leftovers: Vec<_> = std::fs::read_dir(service.runtime_dir().join("risefront"))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    drop(taken);
}

/// A zero ready timeout would fail every start: refused before anything starts, naming the
/// variable.
#[test]
fn a_zero_ready_timeout_is_refused_naming_the_variable() {
    let mut command = Command::new(example("hello"));
    command
        .arg("127.0.0.1:0")
        .env_remove("RISEFRONT")
        .env("RISEFRONT_READY_TIMEOUT", "0");
    let output = run_bounded(command, PATIENCE);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "started: {stderr}");
    assert!(
        stderr.contains("RISEFRONT_READY_TIMEOUT=\"0\" is zero"),
        "{stderr}"
    );
}

/// A misspelt variable would be ignored: the log says so and names the one it resembles;
/// the deprecated name of the control handshake timeout still works, with a warning.
#[tokio::test]
async fn unknown_and_deprecated_variables_are_logged() {
    let service = Service::start_with(
        &example("hello"),
        &[
            ("RISEFRONT_REDY_TIMEOUT", "5s"),
            ("RISEFRONT_HANDSHAKE_TIMEOUT", "3s"),
        ],
    )
    .await;
    let log = service.log();
    assert!(
        log.contains("RISEFRONT_REDY_TIMEOUT is not a risefront setting")
            && log.contains("did you mean RISEFRONT_READY_TIMEOUT?"),
        "{log}"
    );
    assert!(
        log.contains("RISEFRONT_HANDSHAKE_TIMEOUT is deprecated")
            && log.contains("RISEFRONT_CONTROL_HANDSHAKE_TIMEOUT"),
        "{log}"
    );
}

#[tokio::test]
async fn two_services_on_port_0_are_two_services() {
    // Same program, same control directory, both asking for any free port: before, the second
    // joined the first as its generation 2 and served on the first one's port.
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().expect("address");
    let mut service = Service::spawn_via(&[], &example("hello"), &[], any);
    service.wait_log("generation 1 ready").await;
    let second = service.start_program(&example("hello"), &[]);
    let deadline = std::time::Instant::now() + PATIENCE;
    while service.log().matches("front started for service").count() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the second did not start a service of its own:\n{}",
            service.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let log = service.log();
    assert!(!log.contains("started by hand"), "{log}");
    assert!(common::alive(second), "{log}");
}

#[cfg(unix)]
#[tokio::test]
async fn the_same_program_on_an_overlapping_address_is_told_what_differs() {
    let service = Service::start().await;
    let port = service.addr.port();
    // 0.0.0.0:PORT overlaps the service's 127.0.0.1:PORT: the same program, another address
    // list, so another service name; the system says "in use".
    let output = Command::new(example("hello"))
        .arg(format!("0.0.0.0:{port}"))
        .env("XDG_RUNTIME_DIR", service.runtime_dir())
        .env_remove("RISEFRONT")
        .output()
        .expect("run hello");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("risefront service \"hello-127.0.0.1_{port}\""))
            && stderr.contains("the same program with another address list")
            && stderr.contains(&format!("RISEFRONT_NAME=hello-127.0.0.1_{port}")),
        "{stderr}"
    );
    assert!(
        !stderr.contains("start a program of the same file name"),
        "{stderr}"
    );
}

/// A build that looks for its front in another control directory than the service's (a shell
/// upgrading a systemd service that has `RuntimeDirectory=`, say) is told where the front is,
/// both when started and with `--upgrade`; and the advice works.
#[cfg(all(target_os = "linux", feature = "axum"))]
#[tokio::test]
async fn a_build_looking_in_another_control_directory_is_told_where_the_front_is() {
    let service = Service::start().await;
    let elsewhere = TempDir::new();
    let elsewhere = elsewhere.0.to_str().expect("a UTF-8 path").to_owned();
    let dir = service.runtime_dir().join("risefront");
    let advice = format!("RISEFRONT_DIR={}", dir.display());

    let started = run_bounded(
        service.command(&[("XDG_RUNTIME_DIR", &elsewhere)]),
        PATIENCE,
    );
    let stderr = String::from_utf8_lossy(&started.stderr);
    assert!(!started.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("pid {}", service.front_pid())) && stderr.contains(&advice),
        "the error names the front and its control directory:\n{stderr}"
    );

    let upgrade = |env: &[(&str, &str)]| {
        let mut command = Command::new(example("hello"));
        command
            .arg("--upgrade")
            .arg(service.addr.to_string())
            .env_remove("RISEFRONT_DIR");
        for (k, v) in env {
            command.env(k, v);
        }
        run_bounded(command, PATIENCE)
    };
    let refused = upgrade(&[("XDG_RUNTIME_DIR", &elsewhere)]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("no front of service") && stderr.contains(&advice),
        "--upgrade says where the front is:\n{stderr}"
    );

    let dir = dir.display().to_string();
    let followed = upgrade(&[("XDG_RUNTIME_DIR", &elsewhere), ("RISEFRONT_DIR", &dir)]);
    assert!(followed.status.success(), "the advice works: {followed:?}");
    service.wait_generation(2).await;
}
