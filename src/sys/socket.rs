//! A connected socket registered with the runtime for chosen readiness, and read straight into a
//! caller's buffer.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;

use tokio::io::unix::AsyncFd;
use tokio::io::{Interest, ReadBuf};

/// Registers `stream` (non-blocking) with the current runtime for `interest` only.
pub fn register(stream: UnixStream, interest: Interest) -> io::Result<AsyncFd<UnixStream>> {
    // SAFETY: a `UnixStream` owns its descriptor: it stays open, and `as_raw_fd` returns that same
    // descriptor, for as long as the `AsyncFd` owns the stream.
    unsafe { AsyncFd::register_with_interest(stream, interest) }.map_err(|e| e.into_parts().1)
}

/// One `read` of `fd` into the unfilled part of `buf`, which it then counts as filled; returns how
/// many bytes were read (0: the peer closed its end, or `buf` has no room). `WouldBlock` when a
/// non-blocking socket has nothing to read. The unfilled part need not be initialised: the kernel
/// writes it, and only what it wrote is marked filled.
pub fn read_into(fd: BorrowedFd<'_>, buf: &mut ReadBuf<'_>) -> io::Result<usize> {
    // SAFETY: nothing is read from the slice; the kernel only writes into it, and only the bytes
    // `read` reports are marked initialised below.
    let unfilled = unsafe { buf.unfilled_mut() };
    // SAFETY: `fd` is open for as long as it is borrowed, and the pointer and length describe
    // writable memory owned by `buf`.
    let n = unsafe { libc::read(fd.as_raw_fd(), unfilled.as_mut_ptr().cast(), unfilled.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n.unsigned_abs();
    // SAFETY: the kernel wrote the first `n` bytes of the unfilled part.
    unsafe { buf.assume_init(n) };
    buf.advance(n);
    Ok(n)
}

/// Connects a blocking Unix stream socket to `path`, waiting up to `wait` in the kernel's queue of
/// connectors when the listener's queue is full (woken as the listener accepts), as a blocking
/// `connect` does; `WouldBlock` once `wait` has passed. Every other error is returned at once.
pub fn connect_waiting(
    path: &std::path::Path,
    wait: std::time::Duration,
) -> io::Result<UnixStream> {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: plain zeroed C struct.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "socket path {} is longer than {} bytes or contains NUL",
                path.display(),
                addr.sun_path.len() - 1
            ),
        ));
    }
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: creates a new descriptor, owned below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let timeout = libc::timeval {
        tv_sec: libc::time_t::try_from(wait.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_usec: libc::suseconds_t::from(wait.subsec_micros()),
    };
    // SAFETY: `fd` is open; the option value is a `timeval` of the size given.
    let set = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&raw const timeout).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if set < 0 {
        return Err(io::Error::last_os_error());
    }
    loop {
        // SAFETY: `fd` is open; `addr` is a valid `sockaddr_un` of the size given.
        let r = unsafe {
            libc::connect(
                fd,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            )
        };
        if r == 0 {
            return Ok(UnixStream::from(owned));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::mem::MaybeUninit;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    /// A full listen queue: waited in until the listener accepts, or `WouldBlock` after the wait.
    #[test]
    fn connect_waiting_waits_for_room_in_a_full_queue() {
        use std::os::fd::AsRawFd;
        use std::time::{Duration, Instant};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let missing = connect_waiting(&dir.path().join("none"), Duration::from_secs(1));
        assert_eq!(missing.unwrap_err().kind(), io::ErrorKind::NotFound);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        // SAFETY: the listener's own descriptor; a backlog of 0 queues one connection.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
        let _queued = UnixStream::connect(&path).unwrap();
        let start = Instant::now();
        let full = connect_waiting(&path, Duration::from_millis(200)).unwrap_err();
        assert_eq!(full.kind(), io::ErrorKind::WouldBlock, "{full}");
        assert!(start.elapsed() >= Duration::from_millis(150));
        let accepter = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let accepted = listener.accept().unwrap();
            // Kept open until the waiting connect is done (a closed listener refuses it).
            (listener, accepted)
        });
        connect_waiting(&path, Duration::from_secs(5)).unwrap();
        accepter.join().unwrap();
    }

    #[test]
    fn reads_what_was_sent_and_reports_would_block_and_end() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut storage = [MaybeUninit::<u8>::uninit(); 16];
        let mut buf = ReadBuf::uninit(&mut storage);
        let e = read_into(a.as_fd(), &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        b.write_all(b"hello").unwrap();
        assert_eq!(read_into(a.as_fd(), &mut buf).unwrap(), 5);
        b.write_all(b" world").unwrap();
        assert_eq!(read_into(a.as_fd(), &mut buf).unwrap(), 6);
        assert_eq!(buf.filled(), b"hello world");
        assert_eq!(buf.initialized().len(), 11);
        // Only the room left is read into; then the end of the stream reads as 0.
        b.write_all(b"0123456789").unwrap();
        assert_eq!(read_into(a.as_fd(), &mut buf).unwrap(), 5);
        assert_eq!(buf.remaining(), 0);
        drop(b);
        let mut more = [MaybeUninit::<u8>::uninit(); 16];
        let mut next = ReadBuf::uninit(&mut more);
        assert_eq!(read_into(a.as_fd(), &mut next).unwrap(), 5);
        assert_eq!(next.filled(), b"56789");
        assert_eq!(read_into(a.as_fd(), &mut next).unwrap(), 0);
    }
}
