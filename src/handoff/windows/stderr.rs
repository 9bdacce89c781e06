//! A starting generation's stderr on Windows, lent to the front until the generation is ready,
//! as on Unix (`handoff/unix/stderr.rs` says why): the front starts the generation with stderr
//! on an anonymous pipe it reads, keeping the last lines for a failed upgrade's answer, and
//! names its own stderr handle in `RISEFRONT_STDERR=<front pid>:<handle>`. The generation, once
//! its private control pipe proved the front spawned it, duplicates that handle out of the
//! front's process (`PROCESS_DUP_HANDLE`, same user) and, once ready or when the front is gone,
//! makes it its standard error handle (`SetStdHandle`): Rust's `std::io::stderr`, and so
//! `tracing`, looks the handle up on every write, so from then on nothing goes through the
//! front. Unlike Unix, the pipe's handle stays open in the generation (the C runtime may still
//! hold its value, and a closed value could be reused by another file): the front's reader
//! simply sees nothing more on it until the generation exits.
//!
//! Anonymous pipes cannot be read asynchronously, so a thread of the front reads each one and
//! forwards what it reads to the runtime.

use std::io::{self, Read};
use std::os::windows::io::{AsRawHandle, FromRawHandle, IntoRawHandle, OwnedHandle};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::AsyncWriteExt;
use windows_sys::Win32::Foundation::{
    DUPLICATE_SAME_ACCESS, DuplicateHandle, HANDLE, INVALID_HANDLE_VALUE,
};
use windows_sys::Win32::System::Console::{GetStdHandle, STD_ERROR_HANDLE, SetStdHandle};
use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcess, PROCESS_DUP_HANDLE};

/// The variable that names the front's stderr handle for a generation it spawns.
pub(crate) const STDERR_VAR: &str = "RISEFRONT_STDERR";

/// The front's half of a generation's stderr: the pipe to read.
pub(crate) struct Lent {
    reader: std::io::PipeReader,
}

/// This process's standard error handle, if it has one.
fn std_error() -> Option<HANDLE> {
    // SAFETY: GetStdHandle only reads the process's standard handle table.
    let handle = unsafe { GetStdHandle(STD_ERROR_HANDLE) };
    (!handle.is_null() && handle != INVALID_HANDLE_VALUE).then_some(handle)
}

/// Prepares `command` so that the child's stderr is a pipe the front reads, and the child can
/// take the front's own stderr back. `None` when the front has no stderr: the child then
/// inherits the front's as before.
pub(crate) fn lend_stderr(command: &mut tokio::process::Command) -> io::Result<Option<Lent>> {
    let Some(ours) = std_error() else {
        return Ok(None);
    };
    let (reader, writer) = std::io::pipe()
        .map_err(|e| io::Error::new(e.kind(), format!("risefront: create a stderr pipe: {e}")))?;
    command.env(
        STDERR_VAR,
        format!("{}:{}", std::process::id(), ours as usize),
    );
    // std makes the child's copy of the write end inheritable itself.
    command.stderr(std::process::Stdio::from(writer));
    Ok(Some(Lent { reader }))
}

impl Lent {
    /// The read end, for the front's runtime: a thread reads the pipe and forwards what it
    /// reads, until the generation's end closes or the reader is dropped.
    pub(crate) fn into_reader(self) -> io::Result<impl tokio::io::AsyncRead + Unpin + Send> {
        let runtime = tokio::runtime::Handle::current();
        let (mut forward, read) = tokio::io::duplex(8192);
        let mut pipe = self.reader;
        std::thread::Builder::new()
            .name("risefront-stderr".to_owned())
            .spawn(move || {
                let mut buf = [0u8; 8192];
                loop {
                    let n = match pipe.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if runtime.block_on(forward.write_all(&buf[..n])).is_err() {
                        return;
                    }
                }
            })?;
        Ok(read)
    }
}

/// The front's stderr, taken into this generation, and the pipe that is its stderr meanwhile.
struct Borrowed {
    front: OwnedHandle,
    pipe: usize,
}

static BORROWED: Mutex<Option<Borrowed>> = Mutex::new(None);

/// In a generation the front spawned (its private pipe proved it): duplicates the front's
/// stderr into this process, so that [`return_stderr`] can make it ours. A variable that does
/// not parse, or a handle that cannot be duplicated, leaves stderr as it is.
pub(crate) fn borrow_stderr() {
    static TAKEN: AtomicBool = AtomicBool::new(false);
    let Ok(value) = std::env::var(STDERR_VAR) else {
        return;
    };
    if TAKEN.swap(true, Ordering::AcqRel) {
        return;
    }
    let Some((pid, handle)) = parse(&value) else {
        tracing::debug!("ignoring {STDERR_VAR}={value:?}: not <pid>:<handle>");
        return;
    };
    let Some(pipe) = std_error() else {
        return;
    };
    // SAFETY: OpenProcess takes no pointers; the handle it returns, if any, is ours to own
    // and is closed when `process` drops.
    let raw = unsafe { OpenProcess(PROCESS_DUP_HANDLE, 0, pid) };
    if raw.is_null() {
        tracing::debug!(
            "cannot open the front (pid {pid}) to take its stderr: {}",
            io::Error::last_os_error()
        );
        return;
    }
    // SAFETY: `raw` is a process handle just opened for us and owned by nobody else.
    let process = unsafe { OwnedHandle::from_raw_handle(raw) };
    let mut ours: HANDLE = std::ptr::null_mut();
    // SAFETY: the source handle is a value in the front's handle table, which DuplicateHandle
    // checks there (an invalid value fails, nothing is dereferenced here); the target is this
    // process, and `ours` is a valid place for the new handle.
    let duplicated = unsafe {
        DuplicateHandle(
            process.as_raw_handle(),
            handle as HANDLE,
            GetCurrentProcess(),
            &mut ours,
            0,
            0,
            DUPLICATE_SAME_ACCESS,
        )
    };
    if duplicated == 0 || ours.is_null() {
        tracing::debug!(
            "cannot take the front's stderr: {}",
            io::Error::last_os_error()
        );
        return;
    }
    // SAFETY: DuplicateHandle succeeded, so `ours` is a new handle of this process, owned by
    // nobody else.
    let front = unsafe { OwnedHandle::from_raw_handle(ours) };
    if let Ok(mut borrowed) = BORROWED.lock() {
        *borrowed = Some(Borrowed {
            front,
            pipe: pipe as usize,
        });
    }
}

/// Makes the front's stderr this process's standard error, once: the generation is ready, or
/// the front is gone. Nothing happens if nothing was borrowed, or if the program has since set
/// another standard error itself.
pub(crate) fn return_stderr() {
    let Some(borrowed) = BORROWED.lock().ok().and_then(|mut b| b.take()) else {
        return;
    };
    if std_error().map(|h| h as usize) != Some(borrowed.pipe) {
        return;
    }
    // The standard handle must stay valid for the rest of the process: never closed.
    let front = borrowed.front.into_raw_handle();
    // SAFETY: `front` is a valid handle of this process, kept open for good (above).
    if unsafe { SetStdHandle(STD_ERROR_HANDLE, front) } == 0 {
        tracing::debug!(
            "cannot put the service's stderr back: {}",
            io::Error::last_os_error()
        );
        // SAFETY: not installed, so still ours alone to close.
        drop(unsafe { OwnedHandle::from_raw_handle(front) });
    }
}

fn parse(value: &str) -> Option<(u32, usize)> {
    let (pid, handle) = value.split_once(':')?;
    Some((pid.parse().ok()?, handle.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn the_variable_is_a_pid_and_a_handle() {
        assert_eq!(parse("12:340"), Some((12, 340)));
        for bad in ["", "12", "12:", ":3", "a:3", "12:x", "12:3:4"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
