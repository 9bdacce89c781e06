//! A starting generation's stderr, lent to the front until the generation is ready.
//!
//! A build that fails before it serves (a certificate it cannot read, a missing setting) says
//! why on stderr, and the person who ran `--upgrade` should read it there, not in the journal
//! of another terminal. So the front starts each generation with stderr on a pipe it reads:
//! every byte is passed on to the front's own stderr, and the last lines are kept for the
//! failure report. The pipe must not outlive the start, though: a front killed with `-9` would
//! leave its generations writing into a pipe nobody reads (`EPIPE`, which `eprintln!` turns
//! into a panic). So the front also lends the generation a copy of its own stderr, and the
//! generation puts it back on descriptor 2 once it is ready or has lost the front; from then on
//! its stderr is the service's, as if the front had never been in between.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// The variable that lends a front-spawned generation the front's own stderr:
/// `<front pid>:<descriptor>:<device>:<inode>`, the last two those of the file it must be.
pub(crate) const STDERR_VAR: &str = "RISEFRONT_STDERR";

/// The front's half of a generation's stderr: the pipe to read, and what the child inherits.
pub(crate) struct Lent {
    /// The read end: everything the generation writes to stderr until it is ready.
    reader: OwnedFd,
    /// The write end and the lent copy of the front's stderr, held until the spawn returned.
    _inherited: [OwnedFd; 2],
}

/// Prepares `command` so that the child's stderr is a pipe the front reads, and the child can
/// put the front's own stderr back. `None` when the front has no stderr to lend (closed): the
/// child then inherits the front's as before.
pub(crate) fn lend_stderr(command: &mut tokio::process::Command) -> io::Result<Option<Lent>> {
    let ours = std::io::stderr();
    let Ok(stat) = rustix::fs::fstat(ours.as_fd()) else {
        return Ok(None);
    };
    let (reader, writer) = std::io::pipe()
        .map_err(|e| io::Error::new(e.kind(), format!("risefront: create a stderr pipe: {e}")))?;
    // Not close-on-exec: the child inherits it under the number the variable names. A `dup`
    // rather than a `pre_exec` hook, for the reason `ChildChannel::attach` gives.
    let lent = rustix::io::dup(ours.as_fd()).map_err(|e| {
        let e = io::Error::from(e);
        io::Error::new(
            e.kind(),
            format!("risefront: duplicate stderr for a child: {e}"),
        )
    })?;
    let (dev, ino) = identity(&stat);
    command.env(
        STDERR_VAR,
        format!("{}:{}:{dev}:{ino}", std::process::id(), lent.as_raw_fd()),
    );
    let writer: OwnedFd = writer.into();
    command.stderr(std::process::Stdio::from(writer.try_clone()?));
    Ok(Some(Lent {
        reader: reader.into(),
        _inherited: [writer, lent],
    }))
}

impl Lent {
    /// The read end, for the front's runtime. Call it once the spawn returned: it drops the
    /// front's copies of the child's ends, so that the child's exit reads as end of file.
    /// A copy of the read end, kept so that it can cross a re-exec of the front.
    pub(crate) fn reader_copy(&self) -> io::Result<OwnedFd> {
        self.reader.try_clone()
    }

    pub(crate) fn into_reader(self) -> io::Result<impl tokio::io::AsyncRead + Unpin + Send> {
        tokio::net::unix::pipe::Receiver::from_owned_fd(self.reader)
    }
}

/// A file's device and inode, whose integer types differ between Unixes.
#[allow(clippy::unnecessary_cast)]
fn identity(stat: &rustix::fs::Stat) -> (u64, u64) {
    (stat.st_dev as u64, stat.st_ino as u64)
}

/// The front's stderr, lent to this generation, and the pipe that is its stderr meanwhile.
struct Borrowed {
    front: OwnedFd,
    pipe: (u64, u64),
}

static BORROWED: Mutex<Option<Borrowed>> = Mutex::new(None);

/// In a generation the front spawned: takes the stderr the front lent it, if any, so that
/// [`return_stderr`] can put it back. Called once, at `bind`; a variable meant for another
/// process (our own children inherit it too) or a descriptor the program reused is ignored.
pub(crate) fn borrow_stderr() {
    static TAKEN: AtomicBool = AtomicBool::new(false);
    let Some(value) = std::env::var_os(STDERR_VAR) else {
        return;
    };
    if TAKEN.swap(true, Ordering::AcqRel) {
        return;
    }
    let Some(lent) = value.to_str().and_then(parse) else {
        tracing::debug!("ignoring {STDERR_VAR}={value:?}: not <pid>:<fd>:<dev>:<ino>");
        return;
    };
    let parent = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get());
    if parent != lent.front || lent.fd < 3 {
        return;
    }
    let Ok(ours) = rustix::fs::fstat(std::io::stderr().as_fd()) else {
        return;
    };
    if rustix::fs::FileType::from_raw_mode(ours.st_mode) != rustix::fs::FileType::Fifo {
        // The program moved its stderr elsewhere before bind: that choice stands.
        return;
    }
    // SAFETY: the front that is our parent (checked above) started this process with `fd`
    // open and close-on-exec cleared, for this process to own (see `lend_stderr`); `TAKEN`
    // makes sure it is adopted at most once. Whether the program closed or reused the number
    // before bind is checked next, against the device and inode the front announced, and the
    // descriptor is forgotten, not closed, when they differ.
    let front = unsafe { OwnedFd::from_raw_fd(lent.fd) };
    let same = rustix::fs::fstat(&front).is_ok_and(|s| identity(&s) == (lent.dev, lent.ino));
    if !same {
        std::mem::forget(front);
        return;
    }
    if rustix::io::fcntl_setfd(&front, rustix::io::FdFlags::CLOEXEC).is_err() {
        return;
    }
    if let Ok(mut borrowed) = BORROWED.lock() {
        *borrowed = Some(Borrowed {
            front,
            pipe: identity(&ours),
        });
    }
}

/// Puts the front's stderr back on descriptor 2, once: the generation is ready, or the front is
/// gone. Nothing happens if nothing was borrowed, or if the program has since pointed its stderr
/// elsewhere itself.
pub(crate) fn return_stderr() {
    let Some(borrowed) = BORROWED.lock().ok().and_then(|mut b| b.take()) else {
        return;
    };
    let still_the_pipe =
        rustix::fs::fstat(std::io::stderr().as_fd()).is_ok_and(|s| identity(&s) == borrowed.pipe);
    if still_the_pipe && let Err(e) = rustix::stdio::dup2_stderr(&borrowed.front) {
        tracing::debug!("cannot put the service's stderr back: {e}");
    }
}

struct Announced {
    front: i32,
    fd: RawFd,
    dev: u64,
    ino: u64,
}

fn parse(value: &str) -> Option<Announced> {
    let mut parts = value.split(':');
    let announced = Announced {
        front: parts.next()?.parse().ok()?,
        fd: parts.next()?.parse().ok()?,
        dev: parts.next()?.parse().ok()?,
        ino: parts.next()?.parse().ok()?,
    };
    parts.next().is_none().then_some(announced)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn the_variable_is_four_numbers() {
        let a = parse("12:5:66306:1234").expect("four numbers");
        assert_eq!((a.front, a.fd, a.dev, a.ino), (12, 5, 66306, 1234));
        for bad in [
            "",
            "12:5:1",
            "12:5:1:2:3",
            "a:5:1:2",
            "12:-:1:2",
            "12:5:1:x",
        ] {
            assert!(parse(bad).is_none(), "{bad:?} parsed");
        }
    }
}
