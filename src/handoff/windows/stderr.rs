//! A starting generation's stderr on Windows: passed through unchanged. The front does not
//! read it, so a failed upgrade reports the build's exit status without its last lines; those
//! are where the front's own stderr goes. (Unix lends the front's stderr to the generation and
//! reads a pipe meanwhile; see `handoff/unix/stderr.rs`.)

use std::io;

/// Never made on Windows: [`lend_stderr`] lends nothing.
pub(crate) enum Lent {}

/// The child inherits the front's stderr, as before.
pub(crate) fn lend_stderr(_command: &mut tokio::process::Command) -> io::Result<Option<Lent>> {
    Ok(None)
}

impl Lent {
    /// Unreachable: no `Lent` exists.
    pub(crate) fn into_reader(self) -> io::Result<tokio::io::Empty> {
        match self {}
    }
}

/// Nothing was lent.
pub(crate) fn borrow_stderr() {}

/// Nothing was lent.
pub(crate) fn return_stderr() {}
