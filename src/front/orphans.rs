//! A front that is PID 1 (a container's entrypoint, `unshare --pid --fork`) inherits every
//! orphaned process of its PID namespace: whatever a health-check script or an exec'd shell
//! left running when its parent exited. Nobody else will reap them, and their zombies would
//! pile up until the namespace runs out of pids, so the front reaps them, as `tini` would.
//! Its own generations are not touched: their waiters collect their exit statuses.
//!
//! Linux only (it reads `/proc`); elsewhere, and when the front is not PID 1, this does
//! nothing.

/// Reaps orphaned children when the front is PID 1.
pub(super) struct Orphans {
    #[cfg(target_os = "linux")]
    children: Option<tokio::signal::unix::Signal>,
}

impl Orphans {
    pub(super) fn new() -> Self {
        #[cfg(target_os = "linux")]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let children = if std::process::id() == 1 {
                match signal(SignalKind::child()) {
                    Ok(children) => {
                        tracing::info!("the front is PID 1: it reaps orphaned processes");
                        Some(children)
                    }
                    Err(e) => {
                        tracing::warn!(
                            "the front is PID 1 but cannot watch SIGCHLD ({e}): orphaned processes stay zombies"
                        );
                        None
                    }
                }
            } else {
                None
            };
            Orphans { children }
        }
        #[cfg(not(target_os = "linux"))]
        Orphans {}
    }

    /// Resolves when a child of the front changed state (never unless the front is PID 1).
    pub(super) async fn changed(&mut self) {
        #[cfg(target_os = "linux")]
        if let Some(children) = self.children.as_mut() {
            children.recv().await;
            return;
        }
        std::future::pending::<()>().await;
    }

    /// Reaps every zombie child of ours that `ours` does not claim.
    pub(super) fn reap(&self, ours: impl Fn(u32) -> bool) {
        #[cfg(target_os = "linux")]
        for pid in zombie_children() {
            if ours(pid) {
                continue;
            }
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::NOHANG);
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = ours;
    }
}

/// The pids of this process's children that have exited and wait to be reaped.
#[cfg(target_os = "linux")]
fn zombie_children() -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| parse_stat(&stat))
                .is_some_and(|(state, parent)| state == 'Z' && parent == me)
        })
        .collect()
}

/// State and parent pid from a `/proc/<pid>/stat` line. The command name is in parentheses
/// and may itself contain spaces and parentheses: the fields start after its last `)`.
#[cfg(target_os = "linux")]
fn parse_stat(stat: &str) -> Option<(char, u32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    Some((state, parent))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn the_state_and_parent_are_read_after_the_command_name() {
        assert_eq!(parse_stat("42 (sleep) Z 1 42 42 0"), Some(('Z', 1)));
        assert_eq!(parse_stat("7 (a) b) (c) S 3 7 7 0"), Some(('S', 3)));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) R notanumber"), None);
    }

    #[test]
    fn a_zombie_child_is_found() {
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = child.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !zombie_children().contains(&pid) {
            assert!(std::time::Instant::now() < deadline, "no zombie seen");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = child.wait();
        assert!(!zombie_children().contains(&pid));
    }
}
