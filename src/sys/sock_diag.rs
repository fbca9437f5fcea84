//! Who holds the other end of a Unix socket: `NETLINK_SOCK_DIAG` with `UDIAG_SHOW_PEER` gives the
//! peer's inode, and the process's `fd` directory says whether it holds a descriptor of that socket.
//!
//! Used on kernels without `SO_PEERPIDFD` (< 6.5), where the caller's pidfd can only be opened by
//! PID: a process that took over the PID holds no descriptor of the connection, so it is refused.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::proc::ProcDir;
use super::{Error, check};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const UDIAG_SHOW_PEER: u32 = 0x0000_0004;
const UNIX_DIAG_PEER: u16 = 2;
const NLMSG_ERROR: u16 = 2;

/// `struct unix_diag_req` (linux/unix_diag.h).
#[repr(C)]
struct UnixDiagReq {
    family: u8,
    protocol: u8,
    pad: u16,
    states: u32,
    ino: u32,
    show: u32,
    cookie: [u32; 2],
}

/// `struct nlmsghdr` followed by the request.
#[repr(C)]
struct Request {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
    req: UnixDiagReq,
}

/// Whether the process of `dir` holds a descriptor of the peer of the connected socket `fd`.
pub fn holds_peer_of(fd: BorrowedFd<'_>, dir: &ProcDir) -> Result<bool, Error> {
    let own = socket_inode(fd)?;
    let peer = peer_inode(own)?;
    dir.holds_socket(peer)
}

/// The inode of a socket descriptor.
fn socket_inode(fd: BorrowedFd<'_>) -> Result<u64, Error> {
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open and `st` writable for one `stat`.
    check("fstat(socket)", unsafe {
        libc::fstat(fd.as_raw_fd(), &mut st)
    })?;
    Ok(st.st_ino)
}

/// Asks the kernel for the inode of the peer of the Unix socket with inode `ino`.
fn peer_inode(ino: u64) -> Result<u64, Error> {
    let ino32 = u32::try_from(ino).map_err(|_| Error::Syscall {
        call: "sock_diag",
        source: std::io::Error::other("socket inode does not fit the request"),
    })?;
    // SAFETY: plain socket(2) call.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    check("socket(NETLINK_SOCK_DIAG)", raw)?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let request = Request {
        len: std::mem::size_of::<Request>() as u32,
        kind: SOCK_DIAG_BY_FAMILY,
        flags: libc::NLM_F_REQUEST as u16,
        seq: 1,
        pid: 0,
        req: UnixDiagReq {
            family: libc::AF_UNIX as u8,
            protocol: 0,
            pad: 0,
            states: u32::MAX,
            ino: ino32,
            show: UDIAG_SHOW_PEER,
            // INET_DIAG_NOCOOKIE: look the socket up by inode alone.
            cookie: [u32::MAX, u32::MAX],
        },
    };
    // SAFETY: `request` is a plain repr(C) value readable for its whole size.
    let sent = unsafe {
        libc::send(
            sock.as_raw_fd(),
            (&request as *const Request).cast(),
            std::mem::size_of::<Request>(),
            0,
        )
    };
    if sent < 0 {
        return Err(Error::Syscall {
            call: "send(sock_diag)",
            source: std::io::Error::last_os_error(),
        });
    }
    let mut buf = [0u8; 1024];
    // SAFETY: `buf` is writable for its whole length.
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(Error::Syscall {
            call: "recv(sock_diag)",
            source: std::io::Error::last_os_error(),
        });
    }
    parse_peer(&buf[..n as usize])
}

/// Reads `UNIX_DIAG_PEER` out of one sock_diag answer.
fn parse_peer(msg: &[u8]) -> Result<u64, Error> {
    let bad = |what: &str| Error::Syscall {
        call: "sock_diag",
        source: std::io::Error::other(what.to_owned()),
    };
    let u16_at = |b: &[u8], at: usize| b.get(at..at + 2).map(|s| u16::from_ne_bytes([s[0], s[1]]));
    let u32_at = |b: &[u8], at: usize| {
        b.get(at..at + 4)
            .map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
    };
    let len = u32_at(msg, 0).ok_or_else(|| bad("short answer"))? as usize;
    let kind = u16_at(msg, 4).ok_or_else(|| bad("short answer"))?;
    if kind == NLMSG_ERROR {
        let errno = u32_at(msg, 16).map(|e| -(e as i32)).unwrap_or(0);
        return Err(Error::Syscall {
            call: "sock_diag",
            source: std::io::Error::from_raw_os_error(errno),
        });
    }
    let msg = msg
        .get(..len.min(msg.len()))
        .ok_or_else(|| bad("short answer"))?;
    // nlmsghdr (16) + unix_diag_msg (16), then rtattrs (len u16, type u16, payload, 4-aligned).
    let mut at = 32;
    while at + 4 <= msg.len() {
        let alen = usize::from(u16_at(msg, at).ok_or_else(|| bad("bad attribute"))?);
        let atype = u16_at(msg, at + 2).ok_or_else(|| bad("bad attribute"))?;
        if alen < 4 {
            return Err(bad("bad attribute length"));
        }
        if atype == UNIX_DIAG_PEER {
            return u32_at(msg, at + 4)
                .map(u64::from)
                .ok_or_else(|| bad("short peer attribute"));
        }
        at += (alen + 3) & !3;
    }
    Err(bad("the socket has no peer"))
}
