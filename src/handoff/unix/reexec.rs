//! The system calls of a front re-executing itself (see `front/reexec.rs`): descriptors kept
//! open across `exec`, the signals the front handles held pending while no handler is
//! installed, and the new image adopting the descriptors by number.
//!
//! Between `exec` and the new image installing its handlers (which runs the program's `main`
//! up to `bind`), SIGHUP, SIGTERM and SIGINT would have their default action, which ends the
//! front: a `systemctl reload` at that moment would kill the service. They are blocked across
//! `exec` instead (the mask survives it), so they wait and are handled once the new front
//! listens for them.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;

/// The signals the front handles.
const HANDLED: [libc::c_int; 3] = [libc::SIGHUP, libc::SIGTERM, libc::SIGINT];

/// Lets `fd` cross `exec`, or (`keep = false`) not: close-on-exec cleared or set again.
pub(crate) fn keep_across_exec(fd: BorrowedFd<'_>, keep: bool) -> io::Result<()> {
    let flags = if keep {
        rustix::io::FdFlags::empty()
    } else {
        rustix::io::FdFlags::CLOEXEC
    };
    rustix::io::fcntl_setfd(fd, flags).map_err(io::Error::from)
}

/// Replaces this process's image with `exe` (pid, descriptors without close-on-exec, and
/// children kept), the handled signals blocked for the new image to unblock. Returns only if
/// that failed, with the signals as they were.
pub(crate) fn exec(exe: &Path, args: &[OsString], cwd: &Path, env: (&str, &str)) -> io::Error {
    let mut command = std::process::Command::new(exe);
    command.args(args).env(env.0, env.1);
    if cwd.is_dir() {
        command.current_dir(cwd);
    }
    // The activated sockets were taken already; the new image gets them from `env`.
    for var in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"] {
        command.env_remove(var);
    }
    // SAFETY: the closure runs in this process right before `execve` (there is no fork for
    // `exec`), after std reset the signal mask; it only changes the calling thread's mask,
    // which `execve` hands to the new image. Nothing it touches is shared with another thread.
    unsafe {
        command.pre_exec(|| mask(libc::SIG_BLOCK));
    }
    let before = std::env::current_dir();
    let e = command.exec();
    // Back in the old image, which std prepared for a new one in place: the directory it
    // entered, SIGPIPE's default action (a write to a closed connection would kill the front),
    // and the mask, all undone.
    if let Ok(dir) = before {
        let _ = std::env::set_current_dir(dir);
    }
    // SAFETY: setting a signal's disposition to "ignore" is what the Rust runtime did at start
    // (std's exec undid it); it involves no handler code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let _ = mask(libc::SIG_UNBLOCK);
    e
}

/// Unblocks the handled signals in the calling thread, once the new image handles them: any
/// that came during the `exec` is delivered now.
pub(crate) fn unblock_signals() -> io::Result<()> {
    mask(libc::SIG_UNBLOCK)
}

fn mask(how: libc::c_int) -> io::Result<()> {
    // SAFETY: `set` is initialised by `sigemptyset` before use, every pointer is to a local
    // that outlives the calls, and `pthread_sigmask` only changes this thread's mask.
    let result = unsafe {
        let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(set.as_mut_ptr());
        for signal in HANDLED {
            libc::sigaddset(set.as_mut_ptr(), signal);
        }
        libc::pthread_sigmask(how, set.as_ptr(), std::ptr::null_mut())
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(result))
    }
}

/// Waits for child `pid`, which a front's previous image spawned (`exec` keeps children, but
/// not the handles that waited for them), killing it once `kill` fires; returns its status as
/// std shows it (`exit status: 0`, `signal: 9 (SIGKILL)`) and whether it is success.
pub(crate) async fn wait_adopted(
    pid: u32,
    mut kill: tokio::sync::oneshot::Receiver<()>,
) -> (String, bool) {
    use std::os::unix::process::ExitStatusExt;
    use tokio::signal::unix::{SignalKind, signal};
    let Some(target) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return (format!("unknown status (bad pid {pid})"), false);
    };
    // SIGCHLD says when to look; a slow poll covers a handler that could not be installed.
    let mut changed = signal(SignalKind::child()).ok();
    // A oneshot must not be polled once it gave its answer.
    let mut armed = true;
    loop {
        match rustix::process::waitpid(Some(target), rustix::process::WaitOptions::NOHANG) {
            Ok(Some((_, status))) => {
                let status = std::process::ExitStatus::from_raw(status.as_raw());
                return (status.to_string(), status.success());
            }
            Ok(None) => {}
            Err(e) => return (format!("unknown status ({e})"), false),
        }
        let poll = tokio::time::sleep(std::time::Duration::from_secs(1));
        tokio::select! {
            () = poll => {}
            Some(()) = async { changed.as_mut()?.recv().await } => {}
            asked = &mut kill, if armed => {
                armed = false;
                if asked.is_ok() {
                    // Unreaped until the wait above returns, so the pid is still this child's.
                    let _ = rustix::process::kill_process(target, rustix::process::Signal::KILL);
                }
            }
        }
    }
}

/// Adopts descriptor `fd`, which the front's previous image left open across `exec` for this
/// one, after checking that it is open. Each number must be adopted once: the caller checks
/// that the state naming them was written by this very process (its pid) and is read once.
pub(crate) fn adopt(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 3 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("risefront: descriptor {fd} cannot be a carried one"),
        ));
    }
    // SAFETY: `fd` was named by the state this process's previous image wrote (its pid is
    // checked by the caller), which kept it open across `exec` for this image alone; nothing
    // else in this image knows the number, and the state is read once (`take_state`). It is
    // checked to be open before it is used; if it is not, it is forgotten, not closed.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    if rustix::fs::fstat(&owned).is_err() {
        std::mem::forget(owned);
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("risefront: carried descriptor {fd} is not open"),
        ));
    }
    keep_across_exec(owned.as_fd(), false)?;
    Ok(owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[tokio::test]
    async fn an_adopted_child_is_waited_for_and_killed_when_asked() {
        let mut quick = std::process::Command::new("sh")
            .args(["-c", "exit 3"])
            .spawn()
            .expect("spawn");
        let (_keep, idle) = tokio::sync::oneshot::channel();
        let status = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            wait_adopted(quick.id(), idle),
        )
        .await
        .expect("its exit is seen");
        assert_eq!(status, ("exit status: 3".to_owned(), false));
        assert!(quick.wait().is_err(), "reaped already");

        let mut slow = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .expect("spawn");
        let (kill, killed) = tokio::sync::oneshot::channel();
        let waiting = tokio::spawn(wait_adopted(slow.id(), killed));
        kill.send(()).expect("armed");
        let status = tokio::time::timeout(std::time::Duration::from_secs(20), waiting)
            .await
            .expect("killed in time")
            .expect("no panic");
        assert_eq!(status, ("signal: 9 (SIGKILL)".to_owned(), false));
        assert!(slow.wait().is_err(), "reaped already");
    }

    #[test]
    fn close_on_exec_is_cleared_and_set_again() {
        let file = std::fs::File::open("/dev/null").expect("open");
        let flags = || rustix::io::fcntl_getfd(&file).expect("flags");
        assert!(flags().contains(rustix::io::FdFlags::CLOEXEC));
        keep_across_exec(file.as_fd(), true).expect("cleared");
        assert!(!flags().contains(rustix::io::FdFlags::CLOEXEC));
        keep_across_exec(file.as_fd(), false).expect("set");
        assert!(flags().contains(rustix::io::FdFlags::CLOEXEC));
    }

    #[test]
    fn only_open_descriptors_past_stdio_are_adopted() {
        assert!(adopt(2).is_err());
        let file = std::fs::File::open("/dev/null").expect("open");
        let fd = file.as_raw_fd();
        std::mem::forget(file);
        let owned = adopt(fd).expect("open descriptor adopted");
        assert_eq!(owned.as_raw_fd(), fd);
        drop(owned);
        assert!(adopt(fd).is_err(), "a closed descriptor is refused");
    }

    #[test]
    fn a_failed_exec_leaves_the_signals_as_they_were() {
        let e = exec(
            Path::new("/nonexistent/risefront-test"),
            &[],
            Path::new("/"),
            ("RISEFRONT_TEST", "1"),
        );
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        // SAFETY: reads this thread's mask into an initialised local.
        let blocked = unsafe {
            let mut old = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
            libc::sigemptyset(old.as_mut_ptr());
            libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), old.as_mut_ptr());
            libc::sigismember(old.as_ptr(), libc::SIGHUP)
        };
        assert_eq!(blocked, 0, "SIGHUP still blocked after a failed exec");
        // SAFETY: reads SIGPIPE's disposition (and puts it back) with no handler involved.
        let sigpipe = unsafe {
            let old = libc::signal(libc::SIGPIPE, libc::SIG_IGN);
            libc::signal(libc::SIGPIPE, old);
            old
        };
        assert_eq!(sigpipe, libc::SIG_IGN, "SIGPIPE must stay ignored");
    }
}
