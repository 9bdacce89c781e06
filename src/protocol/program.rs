//! The program a generation runs, as it was started: carried in its `Hello`, so that the
//! front starts what the serving generation runs (the newest build) rather than what the
//! front itself was started as.
//!
//! On the wire: `u16` len + executable path, `u16` len + working directory, `u16` count (at
//! most [`MAX_ARGS`]) × (`u16` len + argument), each as the platform's own bytes (Unix:
//! the bytes of the `OsStr`; Windows: its UTF-16 units, little-endian), since the front and
//! its generations run on the same system. A program too large to describe within
//! [`MAX_PROGRAM`] bytes is not described at all: the front then starts its own.

use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};

use super::{ProtocolError, Reader};

/// Most arguments a described program may have.
pub(crate) const MAX_ARGS: usize = 1024;

/// Largest description sent, so that a `Hello` always fits in a frame.
pub(crate) const MAX_PROGRAM: usize = 32 * 1024;

/// An executable, its arguments (without `argv[0]`) and the directory it was started in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Program {
    pub(crate) exe: PathBuf,
    pub(crate) args: Vec<OsString>,
    pub(crate) cwd: PathBuf,
}

impl Program {
    /// This process's program, to start again: `argv[0]` made absolute now rather than read
    /// from `/proc/self/exe` later, so that a binary rebuilt or replaced at that path is what
    /// runs next.
    pub(crate) fn of_this_process() -> io::Result<Program> {
        let mut args = std::env::args_os();
        let argv0 = PathBuf::from(args.next().unwrap_or_default());
        let exe = if argv0.components().count() > 1 {
            std::path::absolute(&argv0)?
        } else {
            find_in_path(&argv0).map_or_else(std::env::current_exe, Ok)?
        };
        Ok(Program {
            exe,
            args: args.collect(),
            cwd: std::env::current_dir()?,
        })
    }

    /// The wire form, or `None` if it would not fit in [`MAX_PROGRAM`] bytes.
    pub(crate) fn to_wire(&self) -> Option<Vec<u8>> {
        if self.args.len() > MAX_ARGS {
            return None;
        }
        let mut out = Vec::new();
        put(&mut out, self.exe.as_os_str())?;
        put(&mut out, self.cwd.as_os_str())?;
        out.extend_from_slice(&u16::try_from(self.args.len()).ok()?.to_be_bytes());
        for arg in &self.args {
            put(&mut out, arg)?;
        }
        (out.len() <= MAX_PROGRAM).then_some(out)
    }

    pub(crate) fn from_wire(bytes: &[u8]) -> Result<Program, ProtocolError> {
        let mut r = Reader { rest: bytes };
        let exe = PathBuf::from(get(&mut r)?);
        let cwd = PathBuf::from(get(&mut r)?);
        let count = usize::from(u16::from_be_bytes(r.take("truncated program")?));
        if count > MAX_ARGS {
            return Err(ProtocolError::Malformed("too many arguments"));
        }
        let mut args = Vec::with_capacity(count);
        for _ in 0..count {
            args.push(get(&mut r)?);
        }
        if !r.rest.is_empty() {
            return Err(ProtocolError::Malformed("trailing bytes in program"));
        }
        Ok(Program { exe, args, cwd })
    }
}

fn find_in_path(program: &Path) -> Option<PathBuf> {
    if program.as_os_str().is_empty() {
        return None;
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .and_then(|found| std::path::absolute(found).ok())
}

fn put(out: &mut Vec<u8>, s: &OsStr) -> Option<()> {
    let bytes = os_bytes(s);
    out.extend_from_slice(&u16::try_from(bytes.len()).ok()?.to_be_bytes());
    out.extend_from_slice(&bytes);
    Some(())
}

fn get(r: &mut Reader<'_>) -> Result<OsString, ProtocolError> {
    let len = usize::from(u16::from_be_bytes(r.take("truncated program")?));
    os_string(r.bytes(len, "truncated program")?)
}

#[cfg(unix)]
fn os_bytes(s: &OsStr) -> Vec<u8> {
    std::os::unix::ffi::OsStrExt::as_bytes(s).to_vec()
}

#[cfg(unix)]
fn os_string(bytes: &[u8]) -> Result<OsString, ProtocolError> {
    Ok(<OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(bytes).to_owned())
}

#[cfg(windows)]
fn os_bytes(s: &OsStr) -> Vec<u8> {
    std::os::windows::ffi::OsStrExt::encode_wide(s)
        .flat_map(u16::to_le_bytes)
        .collect()
}

#[cfg(windows)]
fn os_string(bytes: &[u8]) -> Result<OsString, ProtocolError> {
    let (pairs, odd) = bytes.as_chunks::<2>();
    if !odd.is_empty() {
        return Err(ProtocolError::Malformed("odd-length UTF-16"));
    }
    let units: Vec<u16> = pairs.iter().map(|pair| u16::from_le_bytes(*pair)).collect();
    Ok(<OsString as std::os::windows::ffi::OsStringExt>::from_wide(
        &units,
    ))
}
