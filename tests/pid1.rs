//! End-to-end: the front as PID 1 of its PID namespace, as a container's entrypoint is (or
//! `unshare --pid --fork`): it serves and upgrades as anywhere else, reaps the orphaned
//! processes the namespace hands it, and stops cleanly on SIGTERM.
//!
//! Linux only (PID namespaces). As root it runs `unshare` directly; otherwise in a user
//! namespace of its own.

#![cfg(target_os = "linux")]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{PATIENCE, Service, example, free_addr, signal_pid};
use rustix::process::Signal;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The only child of `pid` (the front, under `unshare --fork`).
fn only_child(pid: u32) -> u32 {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        if let Some(child) = children.split_whitespace().next() {
            return child.parse().expect("a pid");
        }
        assert!(Instant::now() < deadline, "{pid} has no child");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Children of `pid` (host pids) that exited and were not reaped.
fn zombies_of(pid: u32) -> Vec<u32> {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    children
        .split_whitespace()
        .filter_map(|child| child.parse::<u32>().ok())
        .filter(|child| {
            common::proc_stat(*child)
                .and_then(|stat| stat.first().cloned())
                .is_some_and(|state| state == "Z")
        })
        .collect()
}

#[tokio::test]
async fn as_pid_1_the_front_reaps_orphans_upgrades_and_stops_cleanly() {
    let mut wrapper: Vec<String> = vec!["unshare".into()];
    if !is_root() {
        wrapper.extend(["--user".into(), "--map-root-user".into()]);
    }
    wrapper.extend(["--pid", "--fork", "--mount-proc", "--kill-child"].map(String::from));
    let mut service = Service::spawn_via(&wrapper, &example("hello"), &[], free_addr());
    service.wait_generation(1).await;
    let front = only_child(service.front_pid());
    let status = std::fs::read_to_string(format!("/proc/{front}/status")).expect("status");
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("NSpid:") && l.ends_with("\t1")),
        "the front is not PID 1 in its namespace:\n{status}"
    );

    // A process whose parent exits at once: the namespace reparents it to the front.
    let mut nsenter = Command::new("nsenter");
    if !is_root() {
        nsenter.args(["-U", "--preserve-credentials"]);
    }
    let orphaned = nsenter
        .args(["-t", &front.to_string(), "-p", "-m", "sh", "-c"])
        .arg("(sleep 0.2 &); true")
        .status()
        .expect("run nsenter");
    assert!(orphaned.success(), "nsenter: {orphaned:?}");
    // The orphan exits 0.2 s later; a second after that it must be gone, not a zombie.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(zombies_of(front), Vec::<u32>::new(), "{}", service.log());
    assert!(service.log().contains("it reaps orphaned processes"));

    signal_pid(front, Signal::HUP);
    service.wait_generation(2).await;
    signal_pid(front, Signal::TERM);
    let exit = service.wait_front_exit();
    assert!(exit.success(), "{exit:?}\n{}", service.log());
}
