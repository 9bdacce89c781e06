//! Process control for the Windows end-to-end tests, which have no signals or process groups.

use windows_sys::Win32::Foundation::{CloseHandle, HANDLE, STILL_ACTIVE};
use windows_sys::Win32::System::Threading::{
    GetExitCodeProcess, OpenProcess, PROCESS_NAME_WIN32, PROCESS_QUERY_LIMITED_INFORMATION,
    PROCESS_TERMINATE, QueryFullProcessImageNameW, TerminateProcess,
};

/// An open process handle, closed on drop.
struct Process(HANDLE);

impl Process {
    fn open(pid: u32, access: u32) -> Option<Process> {
        // SAFETY: no memory-safety preconditions; a null result means no such process.
        let handle = unsafe { OpenProcess(access, 0, pid) };
        (!handle.is_null()).then_some(Process(handle))
    }

    /// The file name of the process's executable, lowercase.
    fn image(&self) -> Option<String> {
        let mut buf = [0u16; 1024];
        let mut len = buf.len() as u32;
        // SAFETY: `buf` is writable for `len` UTF-16 units and the handle has query access.
        let ok = unsafe {
            QueryFullProcessImageNameW(self.0, PROCESS_NAME_WIN32, buf.as_mut_ptr(), &mut len)
        };
        if ok == 0 {
            return None;
        }
        let path = String::from_utf16_lossy(&buf[..len as usize]);
        let name = path.rsplit(['\\', '/']).next().unwrap_or_default();
        Some(name.to_lowercase())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // SAFETY: the handle was opened by `open` and is closed once.
        unsafe { CloseHandle(self.0) };
    }
}

/// Terminates `pid` if its executable's file name is `image` (any process if `image` is empty).
pub fn kill_if_image(pid: u32, image: &str) {
    let Some(process) = Process::open(pid, PROCESS_TERMINATE | PROCESS_QUERY_LIMITED_INFORMATION)
    else {
        return;
    };
    if !image.is_empty() && process.image().as_deref() != Some(image) {
        return;
    }
    // SAFETY: the handle has PROCESS_TERMINATE access.
    unsafe { TerminateProcess(process.0, 1) };
}

/// Whether `pid` is a running process.
pub fn alive(pid: u32) -> bool {
    let Some(process) = Process::open(pid, PROCESS_QUERY_LIMITED_INFORMATION) else {
        return false;
    };
    let mut code = 0u32;
    // SAFETY: the handle has query access and `code` is a valid out pointer.
    let ok = unsafe { GetExitCodeProcess(process.0, &mut code) };
    ok != 0 && code == STILL_ACTIVE as u32
}
