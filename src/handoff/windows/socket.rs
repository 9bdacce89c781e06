//! Sockets across processes: listening ones from the front to a generation, connected ones
//! from a superseded generation to its successor, each duplicated for a verified process id
//! (`WSADuplicateSocketW`) and opened again from the protocol info sent over the pipe.

use std::io;
use std::mem::{MaybeUninit, size_of};
use std::net::{TcpListener, TcpStream};
use std::os::windows::io::{AsRawSocket, FromRawSocket};
use std::ptr;
use std::sync::OnceLock;

use windows_sys::Win32::Networking::WinSock::{
    FROM_PROTOCOL_INFO, INVALID_SOCKET, SOCKET, WSA_FLAG_NO_HANDLE_INHERIT, WSA_FLAG_OVERLAPPED,
    WSADATA, WSADuplicateSocketW, WSAGetLastError, WSAPROTOCOL_INFOW, WSASocketW, WSAStartup,
};

/// Winsock must be started before `WSASocketW`; std starts it only when it creates a socket
/// itself, which a generation never does before receiving its listeners. Never cleaned up:
/// the sockets live as long as the process.
fn winsock_started() -> io::Result<()> {
    static STARTED: OnceLock<i32> = OnceLock::new();
    let code = *STARTED.get_or_init(|| {
        let mut data = MaybeUninit::<WSADATA>::zeroed();
        // SAFETY: `data` is a writable WSADATA; the result is an error code, not errno.
        unsafe { WSAStartup(0x0202, data.as_mut_ptr()) }
    });
    if code == 0 {
        Ok(())
    } else {
        Err(io::Error::new(
            io::Error::from_raw_os_error(code).kind(),
            format!(
                "risefront: start Winsock: {}",
                io::Error::from_raw_os_error(code)
            ),
        ))
    }
}

/// Duplicates `socket` (a listening or a connected one) for process `pid` and returns the
/// protocol info that lets that process open its copy. The copy counts as an open handle on
/// the socket until that process opens and closes it (or exits).
pub(crate) fn duplicate_socket(socket: &impl AsRawSocket, pid: u32) -> io::Result<Vec<u8>> {
    let mut info = WSAPROTOCOL_INFOW::default();
    // SAFETY: the socket belongs to `socket`, borrowed for the call, and `info` is a writable
    // WSAPROTOCOL_INFOW.
    let failed =
        unsafe { WSADuplicateSocketW(socket.as_raw_socket() as SOCKET, pid, &mut info) } != 0;
    if failed {
        // SAFETY: WSAGetLastError has no preconditions.
        let e = io::Error::from_raw_os_error(unsafe { WSAGetLastError() });
        return Err(io::Error::new(
            e.kind(),
            format!("risefront: duplicate a socket for pid {pid}: {e}"),
        ));
    }
    // SAFETY: WSAPROTOCOL_INFOW is plain integers and arrays of them with no padding (its
    // size is a multiple of its 4-byte alignment and every field is 2 or 4 bytes), fully
    // initialised by `default()`; reading it as bytes for its exact size is sound.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (&raw const info).cast::<u8>(),
            size_of::<WSAPROTOCOL_INFOW>(),
        )
    };
    Ok(bytes.to_vec())
}

/// Opens this process's copy of a listening socket from the protocol info the front sent.
pub(crate) fn listener_from_protocol_info(blob: &[u8]) -> io::Result<TcpListener> {
    let socket = open_from_protocol_info(blob, "a listening socket passed by the front")?;
    // SAFETY: `socket` was just created for this process and nothing else owns it.
    Ok(unsafe { TcpListener::from_raw_socket(socket as _) })
}

/// Opens this process's copy of a connection a superseded generation handed over.
pub(crate) fn stream_from_protocol_info(blob: &[u8]) -> io::Result<TcpStream> {
    let socket = open_from_protocol_info(blob, "a connection handed over")?;
    // SAFETY: `socket` was just created for this process and nothing else owns it.
    Ok(unsafe { TcpStream::from_raw_socket(socket as _) })
}

/// `WSASocketW(FROM_PROTOCOL_INFO)`: the socket `blob` describes, as a new handle of this
/// process that the caller must own.
fn open_from_protocol_info(blob: &[u8], what: &str) -> io::Result<SOCKET> {
    if blob.len() != size_of::<WSAPROTOCOL_INFOW>() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "risefront: {what} came as {} bytes of socket protocol info; WSAPROTOCOL_INFOW has {}",
                blob.len(),
                size_of::<WSAPROTOCOL_INFOW>()
            ),
        ));
    }
    winsock_started()?;
    let mut info = WSAPROTOCOL_INFOW::default();
    // SAFETY: `blob` has exactly the struct's size (checked above), the destination is a
    // distinct local, and every bit pattern is a valid WSAPROTOCOL_INFOW (integers only).
    unsafe {
        ptr::copy_nonoverlapping(
            blob.as_ptr(),
            (&raw mut info).cast::<u8>(),
            size_of::<WSAPROTOCOL_INFOW>(),
        );
    }
    // SAFETY: `info` is a valid WSAPROTOCOL_INFOW for the duration of the call; the other
    // arguments are plain values.
    let socket = unsafe {
        WSASocketW(
            FROM_PROTOCOL_INFO,
            FROM_PROTOCOL_INFO,
            FROM_PROTOCOL_INFO,
            &info,
            0,
            WSA_FLAG_OVERLAPPED | WSA_FLAG_NO_HANDLE_INHERIT,
        )
    };
    if socket == INVALID_SOCKET {
        // SAFETY: WSAGetLastError has no preconditions.
        let e = io::Error::from_raw_os_error(unsafe { WSAGetLastError() });
        return Err(io::Error::new(
            e.kind(),
            format!("risefront: open {what}: {e}"),
        ));
    }
    Ok(socket)
}

/// Socket activation is systemd's: nothing is ever passed on Windows.
pub(crate) fn activated_listeners() -> io::Result<Vec<(crate::socket::Socket, String)>> {
    Ok(Vec::new())
}
