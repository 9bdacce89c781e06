//! End-to-end: no other local user can keep a service from starting by taking its control
//! directory first. Unix: the directories; the Windows counterpart (an unpredictable pipe
//! name) is in `control.rs`.

#![cfg(unix)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{Service, TempDir, example, set_mode};
use rustix::fs::{Gid, Uid, chown};
use rustix::process::Signal;

/// `<tmp>/risefront-<uid>`, the fallback, created first by `nobody` in a private temporary
/// directory given to the service as `TMPDIR`. Needs root to create a directory for another
/// user (CI runs as root).
fn squatted_tmp(dir: &TempDir) -> Option<std::path::PathBuf> {
    if !rustix::process::getuid().is_root() {
        eprintln!("skipped: creating a directory for another user needs root (CI runs as root)");
        return None;
    }
    let tmp = dir.0.join("tmp");
    std::fs::create_dir_all(&tmp).expect("tmp");
    let squat = tmp.join(format!("risefront-{}", rustix::process::getuid().as_raw()));
    std::fs::create_dir(&squat).expect("squat");
    set_mode(&squat, 0o700);
    // 65534 is nobody on every Linux distribution.
    chown(
        &squat,
        Some(Uid::from_raw(65534)),
        Some(Gid::from_raw(65534)),
    )
    .expect("chown to nobody");
    Some(tmp)
}

fn entries(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_squatted_fallback_changes_nothing_when_systemd_gives_a_runtime_directory() {
    let scratch = TempDir::new();
    let Some(tmp) = squatted_tmp(&scratch) else {
        return;
    };
    let runtime = scratch.0.join("systemd-run");
    std::fs::create_dir(&runtime).expect("runtime directory");
    // What systemd creates for RuntimeDirectory=: the service's own, mode 0755.
    set_mode(&runtime, 0o755);
    let tmp = tmp.to_string_lossy().into_owned();
    let runtime_dir = runtime.to_string_lossy().into_owned();
    let mut service = Service::start_with(
        &example("hello"),
        &[
            ("XDG_RUNTIME_DIR", ""),
            ("TMPDIR", &tmp),
            ("RUNTIME_DIRECTORY", &runtime_dir),
        ],
    )
    .await;
    assert!(
        service.control_endpoint().await.starts_with(&runtime_dir),
        "{}",
        service.log()
    );
    service.signal_front(Signal::HUP);
    service.wait_generation(2).await;
    service.start_again(&[]);
    service.wait_generation(3).await;
    let status = service.terminate();
    assert!(status.success(), "{status:?}\n{}", service.log());
}

#[tokio::test]
async fn risefront_dir_works_around_a_squatted_fallback() {
    let scratch = TempDir::new();
    let Some(tmp) = squatted_tmp(&scratch) else {
        return;
    };
    let private = scratch.0.join("private");
    std::fs::create_dir(&private).expect("private dir");
    set_mode(&private, 0o700);
    let tmp = tmp.to_string_lossy().into_owned();
    let private_dir = private.to_string_lossy().into_owned();
    let mut service = Service::start_with(
        &example("hello"),
        &[
            ("XDG_RUNTIME_DIR", ""),
            ("TMPDIR", &tmp),
            ("RISEFRONT_DIR", &private_dir),
        ],
    )
    .await;
    assert!(
        service.control_endpoint().await.starts_with(&private_dir),
        "{}",
        service.log()
    );
    service.signal_front(Signal::HUP);
    service.wait_generation(2).await;
    let status = service.terminate();
    assert!(status.success(), "{status:?}\n{}", service.log());
    assert!(entries(&private).is_empty(), "{:?}", entries(&private));
}

#[tokio::test]
async fn a_squatted_fallback_is_refused_with_the_fix() {
    let scratch = TempDir::new();
    let Some(tmp) = squatted_tmp(&scratch) else {
        return;
    };
    let tmp_dir = tmp.to_string_lossy().into_owned();
    let mut service = Service::spawn(
        &example("hello"),
        &[("XDG_RUNTIME_DIR", ""), ("TMPDIR", &tmp_dir)],
    );
    let status = service.wait_front_exit();
    assert!(!status.success());
    let log = service.log();
    assert!(
        log.contains("refusing to use control directory")
            && log.contains("owned by uid 65534")
            && log.contains("RISEFRONT_DIR")
            && log.contains("RuntimeDirectory="),
        "{log}"
    );
    // Nothing created anywhere: the squatted directory is as it was.
    assert_eq!(entries(&tmp).len(), 1, "{:?}", entries(&tmp));
    let squat = &entries(&tmp)[0];
    assert!(entries(squat).is_empty());
}

#[tokio::test]
async fn a_risefront_dir_others_can_enter_is_refused() {
    let scratch = TempDir::new();
    let open = scratch.0.join("open");
    std::fs::create_dir(&open).expect("dir");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let open_dir = open.to_string_lossy().into_owned();
    let mut service = Service::spawn(&example("hello"), &[("RISEFRONT_DIR", &open_dir)]);
    let status = service.wait_front_exit();
    assert!(!status.success());
    let log = service.log();
    assert!(
        log.contains("refusing to use control directory")
            && log.contains("its mode is 755")
            && log.contains("RISEFRONT_DIR"),
        "{log}"
    );
    assert!(entries(&open).is_empty());
}
