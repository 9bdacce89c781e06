//! Who is on the other end: the owner-only security descriptor every pipe instance gets, and
//! the user (SID) of a pipe's peer process checked against ours.

use std::ffi::c_void;
use std::io;
use std::mem::size_of;
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle};
use std::ptr;

use windows_sys::Win32::Foundation::{HANDLE, LocalFree};
use windows_sys::Win32::Security::Authorization::{
    ConvertSidToStringSidW, ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1,
};
use windows_sys::Win32::Security::{
    GetTokenInformation, PSECURITY_DESCRIPTOR, PSID, TOKEN_QUERY, TOKEN_USER, TokenUser,
};
use windows_sys::Win32::System::Pipes::{GetNamedPipeClientProcessId, GetNamedPipeServerProcessId};
use windows_sys::Win32::System::Threading::{
    GetCurrentProcess, OpenProcess, OpenProcessToken, PROCESS_QUERY_LIMITED_INFORMATION,
};

use super::Stream;

/// A self-relative security descriptor allocated by `ConvertStringSecurityDescriptor…`.
pub(super) struct SecurityDescriptor(pub(super) PSECURITY_DESCRIPTOR);

impl SecurityDescriptor {
    pub(super) fn from_sddl(sddl: &[u16]) -> io::Result<Self> {
        let mut descriptor: PSECURITY_DESCRIPTOR = ptr::null_mut();
        // SAFETY: `sddl` is NUL-terminated (built in `for_service`), `descriptor` is a valid out
        // pointer, and the size out-parameter is optional.
        let ok = unsafe {
            ConvertStringSecurityDescriptorToSecurityDescriptorW(
                sddl.as_ptr(),
                SDDL_REVISION_1,
                &mut descriptor,
                ptr::null_mut(),
            )
        };
        if ok == 0 || descriptor.is_null() {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("risefront: build the control pipe's security descriptor: {e}"),
            ));
        }
        Ok(SecurityDescriptor(descriptor))
    }
}

impl Drop for SecurityDescriptor {
    fn drop(&mut self) {
        // SAFETY: the descriptor was allocated with LocalAlloc by the conversion above and is
        // freed exactly once, here.
        unsafe { LocalFree(self.0) };
    }
}

/// The verified identity of a control peer.
pub(crate) struct Peer {
    /// Process id of the other end, as the pipe reports it.
    pub(crate) pid: Option<u32>,
}

/// Checks that the other end of the pipe runs as our user and returns its process id.
///
/// The descriptor already keeps other users out of the front's pipe; the check matters on
/// the client side, where another user may have created a pipe of the same name first.
pub(crate) fn check_peer(stream: &Stream) -> io::Result<Peer> {
    let mut pid = 0u32;
    let (handle, what): (HANDLE, &str) = match stream {
        Stream::Server(pipe) => (pipe.as_raw_handle(), "client"),
        Stream::Client(pipe) => (pipe.as_raw_handle(), "server"),
    };
    // SAFETY: `handle` is the open pipe handle borrowed from `stream`, and `pid` is a valid
    // out pointer for the duration of the call.
    let ok = unsafe {
        match stream {
            Stream::Server(_) => GetNamedPipeClientProcessId(handle, &mut pid),
            Stream::Client(_) => GetNamedPipeServerProcessId(handle, &mut pid),
        }
    };
    if ok == 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("risefront: read the control pipe's {what} process id: {e}"),
        ));
    }
    let ours = current_user_sid()?;
    let theirs = process_user_sid(pid).map_err(|e| {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("risefront: cannot verify the user of control pipe {what} pid {pid}: {e}"),
        )
    })?;
    if theirs != ours {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("risefront: control pipe {what} pid {pid} runs as {theirs}, not {ours}"),
        ));
    }
    Ok(Peer { pid: Some(pid) })
}

pub(super) fn current_user_sid() -> io::Result<String> {
    // SAFETY: GetCurrentProcess has no preconditions; it returns a pseudo handle that needs
    // no closing.
    let process = unsafe { GetCurrentProcess() };
    token_user_sid(process)
}

fn process_user_sid(pid: u32) -> io::Result<String> {
    // SAFETY: OpenProcess has no memory-safety preconditions; a null result is handled.
    let raw = unsafe { OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid) };
    if raw.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a process handle we just opened and own; OwnedHandle closes it once.
    let process = unsafe { OwnedHandle::from_raw_handle(raw) };
    token_user_sid(process.as_raw_handle())
}

/// The SID (as `S-1-5-…`) of the user `process` runs as.
fn token_user_sid(process: HANDLE) -> io::Result<String> {
    let mut raw_token: HANDLE = ptr::null_mut();
    // SAFETY: `process` is a valid process handle (or the current-process pseudo handle) and
    // `raw_token` a valid out pointer.
    if unsafe { OpenProcessToken(process, TOKEN_QUERY, &mut raw_token) } == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the call succeeded, so `raw_token` is a token handle we own.
    let token = unsafe { OwnedHandle::from_raw_handle(raw_token) };
    let mut len = 0u32;
    // SAFETY: a null buffer of length 0 asks only for the needed size, written to `len`.
    unsafe {
        GetTokenInformation(
            token.as_raw_handle(),
            TokenUser,
            ptr::null_mut(),
            0,
            &mut len,
        )
    };
    if (len as usize) < size_of::<TOKEN_USER>() {
        return Err(io::Error::last_os_error());
    }
    // u64 elements keep the buffer aligned for TOKEN_USER and the SID behind it.
    let mut buf = vec![0u64; (len as usize).div_ceil(size_of::<u64>())];
    // SAFETY: `buf` is writable for at least `len` bytes and suitably aligned.
    let ok = unsafe {
        GetTokenInformation(
            token.as_raw_handle(),
            TokenUser,
            buf.as_mut_ptr().cast::<c_void>(),
            len,
            &mut len,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: on success the buffer starts with a TOKEN_USER whose SID points into `buf`,
    // which outlives this read and the conversion below.
    let sid = unsafe { (*buf.as_ptr().cast::<TOKEN_USER>()).User.Sid };
    sid_to_string(sid)
}

fn sid_to_string(sid: PSID) -> io::Result<String> {
    let mut text: *mut u16 = ptr::null_mut();
    // SAFETY: `sid` is a valid SID (from a token) and `text` a valid out pointer.
    if unsafe { ConvertSidToStringSidW(sid, &mut text) } == 0 || text.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: on success `text` is a NUL-terminated UTF-16 string allocated with LocalAlloc;
    // we read up to the NUL, copy it, and free it exactly once.
    let out = unsafe {
        let len = (0..).take_while(|&i| *text.add(i) != 0).count();
        let out = String::from_utf16_lossy(std::slice::from_raw_parts(text, len));
        LocalFree(text.cast::<c_void>());
        out
    };
    Ok(out)
}
