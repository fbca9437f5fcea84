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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::mem::MaybeUninit;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

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
