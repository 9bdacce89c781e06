//! The handle on a generation started by hand, held from the moment its identity was verified.

use std::io;
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle};

use windows_sys::Win32::System::Threading::{OpenProcess, PROCESS_TERMINATE, TerminateProcess};

/// A generation process the front did not spawn (one started by hand), held open from the
/// moment its identity was verified: while the handle is open, Windows does not reuse its id,
/// so a kill can only ever reach that process.
pub(crate) struct ProcessHandle {
    process: OwnedHandle,
}

impl ProcessHandle {
    /// Opens process `pid`, which the caller just verified, with the right to terminate it.
    pub(crate) fn open(pid: u32) -> io::Result<Self> {
        // SAFETY: OpenProcess has no memory-safety preconditions; a null result is handled.
        let raw = unsafe { OpenProcess(PROCESS_TERMINATE, 0, pid) };
        if raw.is_null() {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("risefront: open process {pid}: {e}"),
            ));
        }
        // SAFETY: `raw` is a process handle we just opened and own; OwnedHandle closes it once.
        let process = unsafe { OwnedHandle::from_raw_handle(raw) };
        Ok(ProcessHandle { process })
    }

    /// The program the process runs; not read on Windows (the log names the pid only).
    pub(crate) fn executable(&self) -> Option<std::path::PathBuf> {
        None
    }

    /// Terminates the process (exit code 1).
    pub(crate) fn kill(&self) -> io::Result<()> {
        // SAFETY: `process` is a valid handle opened with PROCESS_TERMINATE access.
        if unsafe { TerminateProcess(self.process.as_raw_handle(), 1) } == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
