//! Peer credentials of a connected Unix socket, taken by the kernel at `connect()`.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::{Error, check};

/// `SO_PEERPIDFD` (Linux 6.5); not yet in every libc crate release.
const SO_PEERPIDFD: libc::c_int = 77;

/// What the kernel recorded about the process that connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
}

/// `SO_PEERCRED`: pid, uid and gid of the peer at connect time.
pub fn peer_cred(fd: BorrowedFd<'_>) -> Result<PeerCred, Error> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given; `fd` is an open socket.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    check("getsockopt(SO_PEERCRED)", ret)?;
    if cred.pid <= 0 {
        // pid 0: the peer is in another PID namespace we cannot see, or not a process at all.
        return Err(Error::Syscall {
            call: "getsockopt(SO_PEERCRED)",
            source: std::io::Error::other("the peer's pid is not visible from this PID namespace"),
        });
    }
    Ok(PeerCred {
        pid: cred.pid as u32,
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// `SO_PEERPIDFD`: a pidfd for the exact process that connected, so a recycled PID cannot stand in
/// for it. `Ok(None)` when the kernel does not offer the option (older than 6.5).
pub fn peer_pidfd(fd: BorrowedFd<'_>) -> Result<Option<OwnedFd>, Error> {
    let mut pidfd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `pidfd` and `len` are valid for writes of the sizes given; `fd` is an open socket.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&mut pidfd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if ret < 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ENOPROTOOPT) {
            return Ok(None);
        }
        return Err(Error::Syscall {
            call: "getsockopt(SO_PEERPIDFD)",
            source: err,
        });
    }
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(pidfd) }))
}
